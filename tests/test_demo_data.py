"""The demo generator: exact AD 2 layout, masks, applied lighting, determinism, speed, never overwriting."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import dataset_ad2 as ad2
from anomalyvfm import demo_data
from anomalyvfm.demo_data import DEMO_CATEGORIES, generate_demo_dataset

CYCLE = ["regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3", "shift_4"]
SMALL = dict(n_train=2, n_validation=1, n_test_good=2, n_test_bad=3, n_private=2)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_the_exact_ad2_layout(demo_root):
    assert DEMO_CATEGORIES == ("tiles", "weave", "washer")
    assert sorted(p.name for p in demo_root.iterdir()) == sorted(DEMO_CATEGORIES)
    for category in DEMO_CATEGORIES:
        expected = (
            [f"train/good/{i:03d}_regular.png" for i in range(24)]
            + [f"validation/good/{i:03d}_regular.png" for i in range(6)]
            + [f"test_public/good/{i:03d}_{CYCLE[i % 7]}.png" for i in range(8)]
            + [f"test_public/bad/{i:03d}_{CYCLE[i % 7]}.png" for i in range(8)]
            + [f"test_public/ground_truth/bad/{i:03d}_{CYCLE[i % 7]}_mask.png" for i in range(8)]
            + [f"test_private/{i:03d}_{CYCLE[i]}.png" for i in range(4)]
            + [f"test_private_mixed/{i:03d}_mixed.png" for i in range(4)])
        root = demo_root / category
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == sorted(expected)
        for name in expected[::9]:
            with Image.open(root / name) as image:
                assert image.size == (280, 168)  # (W, H): non-square, as given by image_size=(168, 280)
                assert image.mode == ("L" if name.endswith("_mask.png") else "RGB")


def test_masks_are_pixel_exact_non_empty_and_defects_visible(demo_root):
    for category in DEMO_CATEGORIES:
        bad = [s for s in ad2.load_category(demo_root, category).test_public if s.label == 1]
        assert len(bad) == 8
        for sample in bad:
            stored = np.asarray(Image.open(sample.mask_path))
            assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
            image, mask = ad2.load_image(sample.path).astype(float), ad2.load_mask(sample)
            assert mask.shape == image.shape[:2]
            assert 0.005 <= mask.mean() <= 0.05, f"{sample.path}: defect covers {mask.mean():.2%}"
            # the defect differs clearly from what surrounds it (in at least one colour channel)
            around = ndimage.binary_dilation(mask, iterations=4) & ~mask
            contrast = np.abs(image[mask].mean(axis=0) - image[around].mean(axis=0)).max()
            assert contrast > 20, f"{sample.path}: defect contrast {contrast:.1f}"


def test_lighting_is_applied(demo_root):
    for category in DEMO_CATEGORIES:
        good = ad2.load_category(demo_root, category).test_public[8:]
        brightness = {}
        for sample in good:
            brightness.setdefault(sample.lighting, []).append(ad2.load_image(sample.path).mean())
        regular = np.mean(brightness["regular"])
        assert np.mean(brightness["overexposed"]) > 1.25 * regular
        assert np.mean(brightness["underexposed"]) < 0.6 * regular
    # shift_k is a lighting change, as in AD 2: the same scene (same draws) under a tinted, uneven light,
    # not moved: every unclipped pixel is the regular one times the illumination field and the cast
    shape = (96, 128)
    regular, _ = demo_data._render("washer", shape, "regular", False, np.random.default_rng(5))
    for shift, (cast, field) in demo_data._SHIFTS.items():
        relit, _ = demo_data._render("washer", shape, shift, False, np.random.default_rng(5))
        expected = demo_data._illumination(field, shape)[..., None] * np.array(cast)
        usable = (regular > 40) & (relit < 250)
        ratio = relit[usable] / regular[usable]
        assert np.abs(ratio - expected[usable]).max() < 0.03, shift
        assert expected.max() - expected.min() > 0.3, shift  # uneven across the image


def test_normal_images_vary_a_little(demo_root):
    for category in DEMO_CATEGORIES:
        train = [ad2.load_image(s.path).astype(float) for s in ad2.load_category(demo_root, category).train[:6]]
        means = [image.mean() for image in train]
        assert max(means) - min(means) < 0.15 * np.mean(means)  # same kind of image ...
        assert all(np.abs(a - b).mean() > 1 for a, b in zip(train, train[1:]))  # ... never the same image


def test_default_generation_is_deterministic(demo_root, tmp_path):
    # Its speed is the benchmark's to report, not a test's to assert on a shared machine.
    root = generate_demo_dataset(tmp_path / "again")
    assert root == tmp_path / "again"
    assert _files(root) == _files(demo_root)  # same seed, same bytes


def test_another_seed_gives_other_images(tmp_path):
    first = _files(generate_demo_dataset(tmp_path / "a", ["weave"], seed=1, **SMALL))
    second = _files(generate_demo_dataset(tmp_path / "b", ["weave"], seed=2, **SMALL))
    assert first.keys() == second.keys() and len(first) == 15
    assert all(first[name] != second[name] for name in first if "ground_truth" not in name)
    assert any(first[name] != second[name] for name in first if "ground_truth" in name)


def test_custom_counts_and_size(tmp_path):
    root = generate_demo_dataset(tmp_path, ["washer"], n_train=2, n_validation=0, n_test_good=0, n_test_bad=7,
                                 n_private=0, image_size=(96, 200))
    data = ad2.load_category(root, "washer")
    assert [len(data.split(s)) for s in ad2.SPLITS] == [2, 0, 7, 0, 0]
    assert [s.lighting for s in data.test_public] == CYCLE
    assert all(ad2.image_size(s.path) == (96, 200) for s in data.train + data.test_public)
    assert ad2.list_categories(root) == ["washer"]


def test_refuses_to_overwrite_existing_data(tmp_path):
    generate_demo_dataset(tmp_path, ["tiles"], **SMALL)
    before = _files(tmp_path)
    with pytest.raises(ValueError) as error:
        generate_demo_dataset(tmp_path, ["tiles"], seed=5, **SMALL)
    assert isinstance(error.value, ad2.DatasetError)
    assert str(tmp_path / "tiles") in str(error.value) and "never overwrites" in str(error.value)
    # a user's folder stops the whole call before anything is written, even for other categories
    (tmp_path / "weave").mkdir()
    (tmp_path / "weave" / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="weave"):
        generate_demo_dataset(tmp_path, ["washer", "weave"], **SMALL)
    assert not (tmp_path / "washer").exists()
    assert _files(tmp_path) == before | {"weave/mine.txt": b"user data"}
    (tmp_path / "washer").mkdir()  # an empty folder is fine
    generate_demo_dataset(tmp_path, ["washer"], **SMALL)
    assert len(ad2.load_category(tmp_path, "washer").train) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="'bricks'.*tiles"):
        generate_demo_dataset(tmp_path, ["bricks"])
    with pytest.raises(ValueError, match="too small"):
        generate_demo_dataset(tmp_path, image_size=(32, 280))
    with pytest.raises(ValueError, match="n_train >= 1"):
        generate_demo_dataset(tmp_path, n_train=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file") as error:
        generate_demo_dataset(tmp_path / "file")
    assert str(tmp_path / "file") in str(error.value)
