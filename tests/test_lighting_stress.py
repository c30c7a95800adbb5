"""The lighting stress benchmark: AD 2-named re-lit variants, aligned masks, untouched train/validation."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import dataset_ad2 as ad2
from anomalyvfm.metrics import SAME_SCENES
from benchmarks import lighting_stress as stress

SIZE = (24, 32)  # (H, W)


def _texture(index: int, grayscale: bool) -> np.ndarray:
    """A left-to-right ramp 60..200 with a checker pattern: ``[H, W]`` or ``[H, W, 3]`` uint8, bright enough to clip."""
    ramp = np.linspace(60, 200, SIZE[1])[None, :].repeat(SIZE[0], 0)
    checker = 20 * ((np.arange(SIZE[0])[:, None] // 4 + np.arange(SIZE[1])[None, :] // 4 + index) % 2)
    grey = (ramp + checker - 10).astype(np.uint8)
    return grey if grayscale else np.stack([grey, (grey * 0.9).astype(np.uint8), (grey * 0.8).astype(np.uint8)], 2)


def _regular_category(root: Path, name: str = "part", *, grayscale: bool = False, test_good: int = 2,
                      test_bad: int = 2, stems: list[str] | None = None) -> Path:
    """A tiny category in regular light only (train 3, validation 2); bad images have a mask; returns the data root."""
    folder = root / name
    for sub, count in [("train/good", 3), ("validation/good", 2), ("test_public/good", test_good),
                       ("test_public/bad", test_bad)]:
        (folder / sub).mkdir(parents=True)
        for i in range(count):
            stem = stems[i] if stems and sub.startswith("test") else f"{i:03d}_regular"
            Image.fromarray(_texture(i, grayscale)).save(folder / sub / f"{stem}.png")
            if sub == "test_public/bad":
                mask = np.zeros(SIZE, np.uint8)
                mask[3 + i:9 + i, 5:12] = 255
                (folder / "test_public/ground_truth/bad").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(folder / "test_public/ground_truth/bad" / f"{stem}_mask.png")
    return root


def _pixels(path: Path) -> np.ndarray:
    return ad2.load_image(path).astype(np.float64)


@pytest.fixture
def stressed(tmp_path) -> tuple[Path, Path]:
    """(source data root, stressed data root) of an RGB category with every lighting."""
    source = _regular_category(tmp_path / "source")
    return source, stress.make_stressed_dataset(source, "part", tmp_path / "stressed", seed=3)


def test_every_variant_has_an_ad2_name_and_the_source_mask(stressed):
    source, out = stressed
    folder = out / "part" / "test_public"
    for kind in ("good", "bad"):
        for i in range(2):
            for lighting in ("regular", *stress.STRESS_LIGHTINGS):
                path = folder / kind / f"{i:03d}_{lighting}.png"
                assert path.is_file(), path
                assert ad2.lighting_of(path.name) == lighting
                if kind == "good":
                    continue
                mask = ad2.load_mask(folder / "ground_truth/bad" / f"{path.stem}_mask.png")
                source_mask = ad2.load_mask(source / "part/test_public/ground_truth/bad" / f"{i:03d}_regular_mask.png")
                assert np.array_equal(mask, source_mask)
                assert mask.shape == ad2.image_size(path) == SIZE
    assert (folder / "good/000_regular.png").resolve() == (source / "part/test_public/good/000_regular.png").resolve()


def test_train_and_validation_are_symlinks_to_the_untouched_source(stressed):
    source, out = stressed
    for split in ("train", "validation"):
        link = out / "part" / split
        assert link.is_symlink() and link.resolve() == (source / "part" / split).resolve()
    assert sorted(p.name for p in (source / "part/train/good").iterdir()) == [f"{i:03d}_regular.png" for i in range(3)]
    assert sorted(p.name for p in (source / "part/test_public/good").iterdir()) == ["000_regular.png",
                                                                                   "001_regular.png"]


def test_exposures_brighten_with_clipping_and_darken_without_going_black(stressed):
    source, out = stressed
    original = _pixels(source / "part/test_public/bad/001_regular.png")
    bright = _pixels(out / "part/test_public/bad/001_overexposed.png")
    dark = _pixels(out / "part/test_public/bad/001_underexposed.png")
    assert bright.mean() > 1.4 * original.mean()
    assert (bright == 255).mean() > 0.2 > (original == 255).mean()  # the bright end of the ramp saturates
    assert 0.2 * original.mean() < dark.mean() < 0.5 * original.mean()
    assert (dark == 0).mean() < 0.01 and len(np.unique(dark)) < len(np.unique(original))  # coarser, not black


@pytest.mark.parametrize("lighting", ["shift_1", "shift_2", "shift_3", "shift_4"])
def test_shifts_light_the_image_unevenly(tmp_path, lighting):
    # On a uniform grey image the variant is the illumination field itself (up to gamma and rounding).
    source = tmp_path / "source"
    _regular_category(source)
    for path in (source / "part/test_public").rglob("*_regular.png"):
        Image.fromarray(np.full((*SIZE, 3), 128, np.uint8)).save(path)
    out = stress.make_stressed_dataset(source, "part", tmp_path / "out", groups=["shift"])
    for kind in ("good", "bad"):
        for i in range(2):
            lit = _pixels(out / f"part/test_public/{kind}/{i:03d}_{lighting}.png").mean(axis=2)
            left_right = abs(lit[:, : SIZE[1] // 2].mean() - lit[:, SIZE[1] // 2:].mean())
            top_bottom = abs(lit[: SIZE[0] // 2].mean() - lit[SIZE[0] // 2:].mean())
            assert max(left_right, top_bottom) > 0.08 * 128, (kind, i)
            assert lit.min() > 20  # dimmed, never black


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    source = _regular_category(tmp_path / "source")
    runs = [stress.make_stressed_dataset(source, "part", tmp_path / name, seed=seed)
            for name, seed in [("a", 0), ("b", 0), ("c", 1)]]
    for lighting in stress.STRESS_LIGHTINGS:
        name = f"part/test_public/bad/000_{lighting}.png"
        first, again, other = (_pixels(run / name) for run in runs)
        assert np.array_equal(first, again)
        assert not np.array_equal(first, other)
    # Per image too: two sources with the same pixels still get different lights.
    assert not np.array_equal(_pixels(runs[0] / "part/test_public/good/000_shift_2.png"),
                              _pixels(runs[0] / "part/test_public/bad/000_shift_2.png"))


def test_load_category_counts_per_lighting_group(stressed):
    _, out = stressed
    data = ad2.load_category(out, "part")
    counts: dict[str, list[int]] = {}
    for sample in data.test_public:
        counts.setdefault(ad2.lighting_group(sample.lighting), [0, 0])[sample.label] += 1
        assert (sample.mask_path is not None) == (sample.label == 1)
    assert counts == {"regular": [2, 2], "overexposed": [2, 2], "underexposed": [2, 2], "shift": [8, 8]}
    assert len(data.train) == 3 and len(data.validation) == 2


def test_groups_and_variants_per_image_keep_it_small(tmp_path):
    source = _regular_category(tmp_path / "source", test_good=3, test_bad=3)
    out = stress.make_stressed_dataset(source, "part", tmp_path / "out", groups=["underexposed", "shift"],
                                       variants_per_image=2)
    lightings = [s.lighting for s in ad2.load_category(out, "part").test_public]
    assert lightings.count("regular") == 6 and len(lightings) == 6 * 3
    assert "overexposed" not in lightings
    # Rotation over the 5 lightings: image k gets lightings k and k + 1.
    good = sorted(p.name for p in (out / "part/test_public/good").iterdir())
    assert good == ["000_regular.png", "000_shift_1.png", "000_underexposed.png", "001_regular.png",
                    "001_shift_1.png", "001_shift_2.png", "002_regular.png", "002_shift_2.png", "002_shift_3.png"]


def test_grayscale_stays_grayscale_unless_tinted(tmp_path):
    source = _regular_category(tmp_path / "source", grayscale=True)
    out = stress.make_stressed_dataset(source, "part", tmp_path / "out")
    modes = {lighting: Image.open(out / f"part/test_public/good/000_{lighting}.png").mode
             for lighting in stress.STRESS_LIGHTINGS}
    assert modes == {"overexposed": "L", "underexposed": "L", "shift_1": "RGB", "shift_2": "L", "shift_3": "RGB",
                     "shift_4": "RGB"}


def test_names_not_of_the_ad2_form_get_numeric_ids(tmp_path):
    source = _regular_category(tmp_path / "source", test_good=2, test_bad=2, stems=["scan_a", "scan_b"])
    out = stress.make_stressed_dataset(source, "part", tmp_path / "out", groups=["overexposed"])
    data = ad2.load_category(out, "part")
    assert sorted((s.relative_path, s.lighting) for s in data.test_public if s.label == 1) == [
        ("test_public/bad/000_overexposed.png", "overexposed"), ("test_public/bad/000_regular.png", "regular"),
        ("test_public/bad/001_overexposed.png", "overexposed"), ("test_public/bad/001_regular.png", "regular")]
    manifest = json.loads((out / stress.MANIFEST).read_text())
    assert manifest["images"]["test_public/bad/001_overexposed.png"]["source"] == "test_public/bad/scan_b.png"


def test_refuses_a_non_empty_output_and_relit_sources(tmp_path, make_ad2_category):
    source = _regular_category(tmp_path / "source")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        stress.make_stressed_dataset(source, "part", tmp_path / "busy")
    already_lit = make_ad2_category("widget")  # its test images cycle through AD 2's lightings
    with pytest.raises(ad2.DatasetError, match="already under 'overexposed' light"):
        stress.make_stressed_dataset(already_lit, "widget", tmp_path / "out")
    with pytest.raises(ValueError, match="groups must be"):
        stress.make_stressed_dataset(source, "part", tmp_path / "out2", groups=["shift_1"])


def _fake_run(results: Path, data_root: Path, *, with_seg_f1: bool) -> None:
    """A run's outputs: maps equal to the masks except under the underexposed light (all zero there)."""
    data = ad2.load_category(data_root, "part")
    for sample in data.test_public:
        perfect = ad2.load_mask(sample).astype(np.float16)
        path = results / "part/maps" / Path(sample.relative_path).with_suffix(".tiff")
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, perfect * (sample.lighting != "underexposed"))
    (results / "part/model").mkdir(parents=True)
    (results / "part/model/model.json").write_text(json.dumps({"pixel_threshold": 0.5}))
    groups = ["regular", "overexposed", "underexposed", "shift"]
    by_lighting = {g: {"image_auroc": 1.0, "au_pro_0.05": 0.9, "n_good": 2 * (1 + 3 * (g == "shift")),
                       "n_bad": 2 * (1 + 3 * (g == "shift"))} | ({"seg_f1": 0.25} if with_seg_f1 else {})
                   | ({} if g == "regular" else {"regular_same_scenes_au_pro_0.05": 0.95}) for g in groups}
    metrics = {"image_auroc": 0.8, "au_pro_0.05": 0.7, "seg_f1": 0.6, "n_test_good": 14, "n_test_bad": 14,
               "by_lighting": by_lighting}
    (results / "metrics.json").write_text(json.dumps({"categories": {"part": metrics}}))


@pytest.mark.parametrize("with_seg_f1", [True, False])
def test_table_reads_metrics_json_and_fills_seg_f1_from_the_maps(stressed, tmp_path, with_seg_f1):
    _, out = stressed
    _fake_run(tmp_path / "results", out, with_seg_f1=with_seg_f1)
    table = stress.lighting_table(tmp_path / "results", out, "part")
    rows = table["rows"]
    assert list(rows) == ["regular", "overexposed", "underexposed", "shift", "overall"]
    expected = [0.25] * 4 if with_seg_f1 else [1.0, 1.0, 0.0, 1.0]
    assert [rows[g]["seg_f1"] for g in ["regular", "overexposed", "underexposed", "shift"]] == expected
    assert rows["overall"] == pytest.approx({"image_auroc": 0.8, "au_pro_0.05": 0.7, "regular_same_scenes_au_pro_0.05": math.nan,
                                             "seg_f1": 0.6, "n_good": 14, "n_bad": 14}, nan_ok=True)
    assert (table["pooled_image_auroc"], table["regular_image_auroc"]) == (0.8, 1.0)
    assert SAME_SCENES + "au_pro_0.05" in dict(stress.TABLE_COLUMNS)  # the key by_lighting writes
    markdown = stress.table_markdown(table)
    assert "| underexposed | 1.000 | 0.900 | 0.950 | " in markdown
    assert "| regular | 1.000 | 0.900 | n/a | " in markdown
    assert "| overall | 0.800 | 0.700 | n/a | 0.600 | 14 | 14 |" in markdown


def test_cli_writes_the_copy_and_needs_run_for_pipeline_settings(tmp_path, capsys):
    source = _regular_category(tmp_path / "source")
    assert stress.main([f"--data-root={source}", "--category=part", f"--out={tmp_path / 'out'}",
                        "--groups=overexposed"]) == 0
    assert sorted(p.name for p in (tmp_path / "out/part/test_public/good").iterdir()) == [
        "000_overexposed.png", "000_regular.png", "001_overexposed.png", "001_regular.png"]
    assert stress.main([f"--data-root={source}", "--category=part", f"--out={tmp_path / 'out'}"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        stress.main([f"--data-root={source}", "--category=part", f"--out={tmp_path / 'new'}", "--IMAGE_SIZE=224"])
