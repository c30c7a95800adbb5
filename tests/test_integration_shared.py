"""Integration on real data: the pretrained DINOv2 ViT-S and the magnetic-tile dataset in
../shared (skipped when absent). A fixed subset keeps it to about a minute on a CPU."""

import os
from pathlib import Path

import numpy as np
import pytest

import anomaly_vfm_v11_lora as script
import dataset_ad2
from anomalyvfm.pipeline import run
from tests.conftest import SHARED_DATASET

pytestmark = pytest.mark.integration
SUBSET = {"train/good": 60, "validation/good": 15, "test_public/good": 30, "test_public/bad": 30}


@pytest.fixture(scope="module")
def magtile_subset(tmp_path_factory) -> Path:
    """Every k-th image of each split, linked (not copied) into a fresh AD 2 layout."""
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"shared dataset not found at {SHARED_DATASET}")
    source = dataset_ad2.category_root(SHARED_DATASET, "magtile")
    root = tmp_path_factory.mktemp("magtile") / "data"
    for split, count in SUBSET.items():
        files = sorted((source / split).glob("*.png"))
        (root / "magtile" / split).mkdir(parents=True)
        for path in files[:: max(1, len(files) // count)][:count]:
            os.symlink(path, root / "magtile" / split / path.name)
            if split == "test_public/bad":
                masks = root / "magtile" / "test_public" / "ground_truth" / "bad"
                masks.mkdir(parents=True, exist_ok=True)
                mask = source / "test_public" / "ground_truth" / "bad" / f"{path.stem}_mask.png"
                os.symlink(mask, masks / mask.name)
    return root


def test_magtile_loads_with_original_sizes():
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"shared dataset not found at {SHARED_DATASET}")
    data = dataset_ad2.load_category(SHARED_DATASET, "magtile")
    assert (len(data.train), len(data.validation), len(data.test_public)) == (571, 95, 674)
    sample = data.test_public[0]
    assert dataset_ad2.load_image(sample.path).shape[:2] == dataset_ad2.image_size(sample.path)


def test_real_backbone_finds_real_defects(magtile_subset, shared_backbone, tmp_path):
    config = script.default_config().replace(
        DATA_ROOT=str(magtile_subset), CATEGORIES=["magtile"], BACKBONE="unused: passed in", IMAGE_SIZE=224,
        RESULTS_DIR=str(tmp_path), DEVICE="cpu", SYNTHETIC_SAMPLES=30, EPOCHS=5)
    metrics = run(config, backbone=shared_backbone, progress=False)["magtile"]
    assert (metrics["n_train"], metrics["n_test_good"], metrics["n_test_bad"]) == (60, 30, 30)
    # Measured on this subset: image AUROC 0.872, AU-PRO@0.05 0.602; chance is 0.5 and ~0.025.
    assert metrics["image_auroc"] > 0.65
    assert metrics["au_pro_0.05"] > 0.2
    assert np.isfinite(metrics["seg_f1"])
