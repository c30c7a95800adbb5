"""dataset_ad2: enumeration, lighting, nesting, image/mask decoding and every bad input, on generated data;
plus one integration test on the real magtile dataset in ../shared (skipped when absent)."""

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import dataset_ad2 as ad2
from anomalyvfm.demo_data import DEMO_CATEGORIES
from dataset_ad2 import DatasetError, UnreadableImageError

REPO = Path(__file__).resolve().parents[1]
MAGTILE = REPO.parent / "shared" / "datasets" / "magtile_ad2"
CYCLE = ["regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3", "shift_4"]


# -- enumeration -----------------------------------------------------------------------------------
def test_demo_categories_have_the_expected_samples(demo_root):
    assert ad2.list_categories(demo_root) == ["tiles", "washer", "weave"]
    for category in DEMO_CATEGORIES:
        data = ad2.load_category(demo_root, category)
        root = demo_root.absolute() / category
        assert (data.name, data.root) == (category, root)
        assert [len(data.split(s)) for s in ad2.SPLITS] == [24, 6, 16, 4, 4]
        assert [s.label for s in data.test_public] == [1] * 8 + [0] * 8  # "bad" sorts before "good"
        assert {s.label for s in data.test_private + data.test_private_mixed} == {-1}
        assert {s.label for s in data.train + data.validation} == {0}
        assert [s.lighting for s in data.test_public[8:]] == CYCLE + ["regular"]
        assert [s.lighting for s in data.test_private] == CYCLE[:4]
        assert {s.lighting for s in data.test_private_mixed} == {"mixed"}
        assert {s.lighting for s in data.train} == {"regular"}
        for split in ad2.SPLITS:
            for sample in data.split(split):
                assert sample.split == split and sample.category == category
                assert sample.path.is_absolute() and sample.path.is_file()
                assert sample.relative_path == sample.path.relative_to(root).as_posix()
                assert sample.stem == Path(sample.relative_path).stem
                if sample.label == 1:
                    assert sample.mask_path == root / "test_public/ground_truth/bad" / f"{sample.stem}_mask.png"
                    assert sample.mask_path.is_file()
                else:
                    assert sample.mask_path is None
        assert data.test_public[0].relative_path == "test_public/bad/000_regular.png"
        assert data.test_private_mixed[-1].relative_path == "test_private_mixed/003_mixed.png"


def test_list_samples_matches_load_category_and_is_sorted(demo_root):
    data = ad2.load_category(demo_root, "weave")
    for split in ad2.SPLITS:
        samples = ad2.list_samples(str(demo_root), "weave", split)
        assert samples == data.split(split)
        assert [s.relative_path for s in samples] == sorted(s.relative_path for s in samples)


def test_order_does_not_depend_on_creation_order(make_ad2_category):
    root = make_ad2_category(train=1)
    train = root / "widget" / "train" / "good"
    for stem in ("010_regular", "002_regular", "100_regular"):  # created out of order
        Image.new("RGB", (36, 20)).save(train / f"{stem}.png")
    first = ad2.list_samples(root, "widget", "train")
    assert [s.stem for s in first] == ["000_regular", "002_regular", "010_regular", "100_regular"]
    assert ad2.list_samples(root, "widget", "train") == first


@pytest.mark.parametrize("name, lighting", [
    ("003_shift_2.png", "shift_2"), ("000_regular.png", "regular"), ("12_overexposed.jpg", "overexposed"),
    ("007_underexposed.PNG", "underexposed"), ("001_mixed.png", "mixed"), ("/a/b/004_shift_4.png", "shift_4"),
    ("003_shift_5.png", "unknown"), ("regular.png", "unknown"), ("abc_regular.png", "unknown"),
    ("003_regular_mask.png", "unknown"), ("003_Regular.png", "unknown"), ("IMG_0001.png", "unknown")])
def test_lighting_of(name, lighting):
    assert ad2.lighting_of(name) == lighting


@pytest.mark.parametrize("relative_path, scene", [
    ("test_public/bad/003_shift_2.png", "test_public/bad/003"), ("test_public/bad/003_regular.png", "test_public/bad/003"),
    ("test_public/good/003_underexposed.png", "test_public/good/003"), ("test_private_mixed/000_mixed.png", "test_private_mixed/000"),
    ("train/good/IMG_0001.png", "train/good/IMG_0001"), ("test_public/bad/003_shift_5.png", "test_public/bad/003_shift_5")])
def test_scene_of_drops_the_lighting_only(relative_path, scene):
    assert ad2.scene_of(relative_path) == scene


def test_lighting_group():
    assert [ad2.lighting_group(x) for x in ad2.LIGHTING_CONDITIONS] == [
        "regular", "overexposed", "underexposed", "shift", "shift", "shift", "shift", "mixed"]
    assert ad2.lighting_group("unknown") == "unknown"


def test_single_and_double_nesting(make_ad2_category):
    make_ad2_category("flat")
    root = make_ad2_category("deep", nested=True)
    (root / "notes").mkdir()  # not a category: no train/good
    assert ad2.list_categories(root) == ["deep", "flat"]
    assert ad2.category_root(root, "flat") == root.absolute() / "flat"
    assert ad2.category_root(root, "deep") == root.absolute() / "deep" / "deep"
    flat, deep = ad2.load_category(root, "flat"), ad2.load_category(root, "deep")
    assert deep.root == root.absolute() / "deep" / "deep"
    for split in ad2.SPLITS:
        assert [s.relative_path for s in deep.split(split)] == [s.relative_path for s in flat.split(split)]
    assert [len(deep.split(s)) for s in ad2.SPLITS] == [3, 2, 4, 1, 1]
    assert deep.test_public[0].mask_path == deep.root / "test_public/ground_truth/bad/000_regular_mask.png"


def test_non_image_files_are_ignored_and_extensions_are_case_insensitive(make_ad2_category):
    root = make_ad2_category(train=2)
    train = root / "widget" / "train" / "good"
    for junk in (".DS_Store", "Thumbs.db", "README.txt", "._000_regular.png", "notes.png.txt"):
        (train / junk).write_bytes(b"junk")
    (train / "folder.png").mkdir()
    Image.new("RGB", (36, 20)).save(train / "002_regular.PNG")
    Image.new("RGB", (36, 20)).save(train / "003_regular.JPG", format="JPEG")
    Image.new("RGB", (36, 20)).save(train / "004_regular.tiff")
    (root / "widget" / "test_private" / "desktop.ini").write_text("x")
    data = ad2.load_category(root, "widget")
    assert [s.path.name for s in data.train] == [
        "000_regular.png", "001_regular.png", "002_regular.PNG", "003_regular.JPG", "004_regular.tiff"]
    assert [s.path.name for s in data.test_private] == ["000_regular.png"]


# -- images and masks ---------------------------------------------------------------------------------
def test_original_non_square_sizes_travel(demo_root, make_ad2_category):
    for sample in ad2.load_category(demo_root, "tiles").test_public[::5]:
        image = ad2.load_image(sample.path)
        assert ad2.image_size(sample.path) == image.shape[:2] == (168, 280)
        assert image.dtype == np.uint8 and image.shape == (168, 280, 3)
    root = make_ad2_category(size=(37, 61))
    sample = ad2.load_category(root, "widget").test_public[0]
    assert ad2.image_size(sample.path) == (37, 61)
    assert ad2.load_image(sample.path).shape == (37, 61, 3)
    assert ad2.load_mask(sample).shape == (37, 61)


def _grey_rgb(values) -> np.ndarray:
    """Expected RGB of a grey row: ``[1, N, 3]`` uint8 with equal channels."""
    return np.repeat(np.array([values], np.uint8)[:, :, None], 3, axis=2)


def _png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one), from ``[H, W, 3] uint16``."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_load_image_converts_every_mode_to_rgb_uint8(tmp_path):
    values16 = [0, 255, 256, 25700, 32768, 65535]
    expected16 = _grey_rgb([0, 0, 1, 100, 128, 255])  # v >> 8, not clipped at 255

    Image.fromarray(np.array([[0, 7, 255]], np.uint8)).save(tmp_path / "l.png")
    Image.fromarray(np.array([values16], np.uint16)).save(tmp_path / "i16.png")
    Image.frombytes("I;16B", (6, 1), np.array(values16, ">u2").tobytes()).save(tmp_path / "i16b.tif")
    Image.fromarray(np.array([[0, 25700, 65535, 70000, -5]], np.int32)).save(tmp_path / "i32.tif")
    palette = Image.new("P", (3, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0, 1, 2, 3] + [0] * 759)
    palette.putdata([2, 0, 1])
    palette.save(tmp_path / "p.png")
    Image.new("LA", (2, 1), (90, 0)).save(tmp_path / "la.png")
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (200, 150, 100, 128))
    rgba.save(tmp_path / "rgba.png")
    rgb16 = np.array([[[0, 256, 65535], [25700, 511, 32768]]], np.uint16)
    (tmp_path / "rgb16.png").write_bytes(_png_16bit_rgb(rgb16))

    cases = {
        "l.png": ("L", _grey_rgb([0, 7, 255])),
        "i16.png": ("I;16", expected16),
        "i16b.tif": ("I;16B", expected16),
        "i32.tif": ("I", _grey_rgb([0, 100, 255, 255, 0])),  # out-of-range 32-bit values are clipped
        "p.png": ("P", np.array([[[1, 2, 3], [10, 20, 30], [200, 100, 0]]], np.uint8)),
        "la.png": ("LA", _grey_rgb([90, 90])),
        "rgba.png": ("RGBA", np.array([[[10, 20, 30], [200, 150, 100]]], np.uint8)),  # alpha dropped
        "rgb16.png": ("RGB", np.array([[[0, 1, 255], [100, 1, 128]]], np.uint8)),
    }
    for name, (mode, expected) in cases.items():
        assert Image.open(tmp_path / name).mode == mode, name  # the file really has that mode
        image = ad2.load_image(tmp_path / name)
        assert image.dtype == np.uint8, name
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_load_mask_binarises_and_pairs_with_its_image(make_ad2_category, tmp_path):
    data = ad2.load_category(make_ad2_category(), "widget")
    bad, good = data.test_public[0], data.test_public[-1]
    expected = np.zeros((20, 36), bool)
    expected[2:6, 3:7] = True
    np.testing.assert_array_equal(ad2.load_mask(bad), expected)
    np.testing.assert_array_equal(ad2.load_mask(bad.mask_path), expected)
    assert good.label == 0 and not ad2.load_mask(good).any() and ad2.load_mask(good).shape == (20, 36)
    Image.fromarray(np.array([[0, 1, 128, 255]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(ad2.load_mask(tmp_path / "m.png"), [[False, True, True, True]])
    with pytest.raises(DatasetError) as error:
        ad2.load_mask(tmp_path / "m.png", expected_size=(2, 4))
    assert str(tmp_path / "m.png") in str(error.value) and "1x4" in str(error.value) and "2x4" in str(error.value)


def test_mask_of_another_size_names_both_files_and_sizes(make_ad2_category):
    sample = ad2.load_category(make_ad2_category(), "widget").test_public[0]
    Image.new("L", (30, 10)).save(sample.mask_path)
    with pytest.raises(DatasetError) as error:
        ad2.load_mask(sample)
    message = str(error.value)
    assert str(sample.mask_path) in message and str(sample.path) in message
    assert "10x30" in message and "20x36" in message


# -- bad input -----------------------------------------------------------------------------------------
def test_missing_data_root_says_where_to_get_the_dataset(tmp_path):
    missing = tmp_path / "no_such_root"
    for call in (lambda: ad2.load_category(missing, "can"), lambda: ad2.list_categories(missing)):
        with pytest.raises(DatasetError) as error:
            call()
        message = str(error.value)
        assert str(missing) in message and "does not exist" in message
        assert "https://www.mvtec.com/company/research/datasets/mvtec-ad-2" in message
        assert "DATA_ROOT" in message and "demo" in message


def test_data_root_that_is_a_file(tmp_path):
    archive = tmp_path / "mvtec_ad2.tar.gz"
    archive.write_bytes(b"not a folder")
    with pytest.raises(DatasetError, match="is a file, not a folder") as error:
        ad2.list_categories(archive)
    assert str(archive) in str(error.value) and "<root>/<category>/train/good" in str(error.value)


def test_missing_category_lists_the_categories_found(make_ad2_category):
    make_ad2_category("alpha")
    root = make_ad2_category("beta", nested=True)
    with pytest.raises(DatasetError) as error:
        ad2.load_category(root, "gamma")
    message = str(error.value)
    assert str(root.absolute() / "gamma") in message and "train/good" in message
    assert "Categories found in" in message and "alpha, beta" in message


def test_data_root_pointing_at_a_category_gets_a_hint(make_ad2_category):
    root = make_ad2_category("alpha")
    with pytest.raises(DatasetError, match="DATA_ROOT itself looks like a category folder") as error:
        ad2.load_category(root / "alpha", "alpha_typo")
    assert str(root.absolute()) in str(error.value)


def test_missing_or_empty_train_good(make_ad2_category):
    root = make_ad2_category()
    train = root.absolute() / "widget" / "train" / "good"
    shutil.rmtree(train)
    with pytest.raises(DatasetError, match="is missing") as error:
        ad2.load_category(root, "widget")
    assert str(train) in str(error.value) and "training images" in str(error.value)
    train.mkdir()
    (train / ".DS_Store").write_bytes(b"x")
    (train / "README.txt").write_text("x")
    with pytest.raises(DatasetError, match="has no images") as error:
        ad2.list_samples(root, "widget", "train")
    assert str(train) in str(error.value)


def test_bad_image_without_mask_names_the_expected_mask(make_ad2_category):
    root = make_ad2_category(test_bad=3)
    masks = root.absolute() / "widget" / "test_public" / "ground_truth" / "bad"
    (masks / "002_underexposed_mask.png").unlink()
    with pytest.raises(DatasetError) as error:
        ad2.load_category(root, "widget")
    message = str(error.value)
    assert str(masks / "002_underexposed_mask.png") in message and "002_underexposed.png" in message
    assert "1 defective test image(s) have no ground-truth mask" in message


def test_unknown_split_lists_the_valid_ones(make_ad2_category):
    root = make_ad2_category()
    for call in (lambda: ad2.list_samples(root, "widget", "test"),
                 lambda: ad2.load_category(root, "widget").split("test")):
        with pytest.raises(DatasetError, match="'test'") as error:
            call()
        assert ", ".join(ad2.SPLITS) in str(error.value)


def test_missing_optional_splits_are_empty(make_ad2_category):
    root = make_ad2_category(validation=0, test_good=0, test_bad=0, private=0, mixed=0)
    shutil.rmtree(root / "widget" / "test_public")
    shutil.rmtree(root / "widget" / "validation")
    data = ad2.load_category(root, "widget")
    assert [len(data.split(s)) for s in ad2.SPLITS] == [3, 0, 0, 0, 0]


def test_truncated_image_is_found_on_read_not_on_enumeration(make_ad2_category, demo_root, tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    root = tmp_path / "copy"
    shutil.copytree(demo_root / "washer", root / "washer")
    data = ad2.load_category(root, "washer")  # enumeration decodes nothing, so this still succeeds
    truncated, garbage, bad_mask = data.train[1], data.train[2], data.test_public[0]
    truncated.path.write_bytes(truncated.path.read_bytes()[:4000])
    garbage.path.write_bytes(b"this is not a PNG")
    bad_mask.mask_path.write_bytes(bad_mask.mask_path.read_bytes()[:60])
    for path in (truncated.path, garbage.path, bad_mask.mask_path):
        with pytest.raises(UnreadableImageError) as error:
            ad2.load_image(path)
        assert isinstance(error.value, DatasetError) and error.value.path == path
        assert str(path) in str(error.value) and "Expected a complete" in str(error.value)
    with pytest.raises(UnreadableImageError, match="truncated") as error:
        ad2.load_mask(bad_mask)
    # A mask is named as one, and the way out keeps its defective image evaluable.
    assert str(error.value).startswith(f"Cannot read mask {bad_mask.mask_path}: truncated")
    assert "replace it" in str(error.value) and "together with its defective test image" in str(error.value)


def test_without_leaves_out_the_named_images_of_every_split(make_ad2_category):
    data = ad2.load_category(make_ad2_category(), "widget")
    gone = [data.train[1].path, data.test_public[0].path, data.test_private[0].path]
    rest = data.without(gone)
    assert [len(data.split(s)) for s in ad2.SPLITS] == [3, 2, 4, 1, 1]
    assert [len(rest.split(s)) for s in ad2.SPLITS] == [2, 2, 3, 0, 1]
    assert not {s.path for split in ad2.SPLITS for s in rest.split(split)} & set(gone)
    assert (rest.root, rest.name) == (data.root, data.name) and len(data.train) == 3  # a copy


def test_import_needs_no_torch():
    code = "import sys, dataset_ad2; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- the real dataset --------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.skipif(not (MAGTILE / "magtile").is_dir(), reason=f"{MAGTILE} is absent")
def test_magtile_real_dataset():
    assert ad2.list_categories(MAGTILE) == ["magtile"]
    data = ad2.load_category(MAGTILE, "magtile")
    assert [len(data.split(s)) for s in ad2.SPLITS] == [571, 95, 674, 0, 0]
    bad = [s for s in data.test_public if s.label == 1]
    assert len(bad) == 388 and all(s.mask_path is not None for s in bad)
    assert {s.lighting for s in data.test_public} == {"regular"}
    for sample in bad[::97]:
        image, mask = ad2.load_image(sample.path), ad2.load_mask(sample)
        assert Image.open(sample.path).mode == "L"  # grayscale source ...
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3  # ... comes out RGB
        assert (image[..., 0] == image[..., 2]).all()
        assert mask.shape == image.shape[:2] == ad2.image_size(sample.path)
        assert mask.any() and not mask.all()
