# --- dataset fixtures ---
# The demo dataset and tiny hand-made MVTec AD 2 categories (dataset_ad2 / demo_data tests).
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_TEST_LIGHTING = ("regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3", "shift_4")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Root of the default demo dataset, generated once per test session (read-only for tests)."""
    from anomalyvfm.demo_data import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture
def make_ad2_category(tmp_path):
    """Factory writing a tiny category in the AD 2 layout; returns its data root (``tmp_path/"data"``).

    Images are ``size`` (H, W) RGB PNGs; bad test images get a 0/255 mask with a 4x4 defect.
    ``nested=True`` puts the category at ``<root>/<name>/<name>/`` like doubly unpacked archives.
    """

    def make(name: str = "widget", *, nested: bool = False, train: int = 3, validation: int = 2,
             test_good: int = 2, test_bad: int = 2, private: int = 1, mixed: int = 1,
             size: tuple[int, int] = (20, 36)) -> Path:
        data_root = tmp_path / "data"
        folder = data_root / name / name if nested else data_root / name
        plan = [("train/good", train, False), ("validation/good", validation, False),
                ("test_public/good", test_good, True), ("test_public/bad", test_bad, True),
                ("test_private", private, True), ("test_private_mixed", mixed, False)]
        for sub, count, cycle in plan:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                lighting = "mixed" if sub == "test_private_mixed" else _TEST_LIGHTING[i % 7] if cycle else "regular"
                stem = f"{i:03d}_{lighting}"
                Image.new("RGB", size[::-1], (10 * i, 100, 200)).save(folder / sub / f"{stem}.png")
                if sub == "test_public/bad":
                    mask = np.zeros(size, np.uint8)
                    mask[2:6, 3:7] = 255
                    (folder / "test_public/ground_truth/bad").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(folder / "test_public/ground_truth/bad" / f"{stem}_mask.png")
        return data_root

    return make
# --- end of dataset fixtures ---


# --- model fixtures ---
def make_tiny_dinov2(num_hidden_layers: int):
    """A randomly initialised DINOv2 (hidden size 32), seeded: real architecture, no download."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=num_hidden_layers, num_attention_heads=2, mlp_ratio=2,
                          image_size=56, patch_size=14)
    return Dinov2Model(config).eval()


@pytest.fixture(scope="session")
def tiny_backbone():
    """A 2-block tiny DINOv2 (``make_tiny_dinov2``)."""
    return make_tiny_dinov2(2)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_BACKBONE = SHARED / "models" / "dinov2-small-imgfocus"
SHARED_DATASET = SHARED / "datasets" / "magtile_ad2"


@pytest.fixture(scope="session")
def shared_backbone():
    """The real pretrained DINOv2 ViT-S in ../shared (skips when absent)."""
    if not (SHARED_BACKBONE / "model.safetensors").is_file():
        pytest.skip(f"real backbone not found at {SHARED_BACKBONE}")
    from anomalyvfm.backbone import load_backbone

    return load_backbone(str(SHARED_BACKBONE))
# --- end of model fixtures ---
