"""The pipeline end to end on generated data with a tiny random DINOv2: every output file,
reruns that keep earlier results, prediction, export, evaluation from saved maps."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import anomaly_vfm_v11_lora as script
import dataset_ad2
from anomalyvfm import metrics, model_io
from anomalyvfm.model import PEAK_FLOOR, CategoryModel
from anomalyvfm.fit import Runner
from anomalyvfm.method import Method
from anomalyvfm.pipeline import PipelineError, run
from anomalyvfm.scoring import discount_saturated, padded_grid, shifted_inputs

METRIC_KEYS = {"image_auroc", "image_ap", "class_f1", "au_pro_0.05", "au_pro_0.30", "seg_f1", "by_lighting",
               "n_train", "n_test_good", "n_test_bad", "seconds", "seg_f1_baseline_rule", "class_f1_baseline_rule",
               "thresholds"}
PLOTS = ("roc_curves.png", "anomaly_scores.png", "sample_detections.png", "feature_analysis.png", "pro_curves.png")


@pytest.fixture(scope="module")
def finished_run(demo_root, tiny_backbone, tmp_path_factory):
    """One full run on two demo categories, shared by the tests below (they only read it)."""
    config = tiny_config(demo_root, tmp_path_factory.mktemp("run") / "results")
    return config, run(config, backbone=tiny_backbone, progress=False)


def tiny_config(demo_root: Path, results_dir: Path, **changes):
    settings = dict(DATA_ROOT=str(demo_root), CATEGORIES=dataset_ad2.list_categories(demo_root)[:2], IMAGE_SIZE=56,
                    FEATURE_LAYERS=[2], RESULTS_DIR=str(results_dir), DEVICE="cpu", NUM_WORKERS=0)
    return script.default_config().replace(**(settings | changes))


def _scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["relative_path"]: float(row["image_score"]) for row in csv.DictReader(handle)}


def test_run_writes_every_output_and_they_parse(finished_run):
    config, metrics = finished_run
    results = Path(config.RESULTS_DIR)
    document = json.loads((results / "metrics.json").read_text())
    assert set(document) == {"categories", "mean", "total", "config"}
    assert set(document["categories"]) == set(config.CATEGORIES)
    for category, values in document["categories"].items():
        assert set(values) == METRIC_KEYS
        assert values["n_test_bad"] > 0 and values["n_test_good"] > 0 and values["n_train"] > 0
        assert 0.0 <= values["image_auroc"] <= 1.0 and 0.0 <= values["au_pro_0.05"] <= 1.0
        assert values["image_auroc"] == pytest.approx(metrics[category]["image_auroc"])
        # SegF1 per lighting group, at the category's pixel threshold (the demo has every AD 2 lighting)
        assert {"regular", "overexposed", "underexposed", "shift"} <= set(values["by_lighting"])
        assert all(0.0 <= group["seg_f1"] <= 1.0 for group in values["by_lighting"].values() if group["n_bad"])
    assert document["config"]["IMAGE_SIZE"] == 56
    assert document["config"]["device_used"] == "cpu"
    with open(results / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["category"] for row in rows] == sorted(config.CATEGORIES) + ["Mean", "Total"]
    mean_auroc = np.mean([metrics[c]["image_auroc"] for c in config.CATEGORIES])
    assert float(rows[-2]["image_auroc"]) == pytest.approx(mean_auroc, abs=1e-4)
    summary = (results / "performance_summary.txt").read_text()
    assert all(category in summary for category in config.CATEGORIES) and "Mean" in summary
    assert json.loads((results / "config.json").read_text())["CATEGORIES"] == config.CATEGORIES
    for name in PLOTS:
        with Image.open(results / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_maps_have_the_original_size_and_the_model_files_are_safe(finished_run):
    config = finished_run[0]
    category = config.CATEGORIES[0]
    data = dataset_ad2.load_category(config.DATA_ROOT, category)
    folder = Path(config.RESULTS_DIR) / category
    for sample in data.test_public:
        saved = tifffile.imread(folder / "maps" / Path(sample.relative_path).with_suffix(".tiff"))
        assert saved.dtype == np.float16 and saved.shape == dataset_ad2.image_size(sample.path)
    model_files = sorted(p.name for p in (folder / "model").iterdir())
    assert model_files == ["model.json", "scale_56.safetensors"]
    model = CategoryModel.load(folder / "model")
    assert model.scales[0].heads.rank == 16 and np.isfinite(model.pixel_threshold)
    assert config.CENTRE_MAPS and np.isfinite(model.scales[0].map_median)  # saved, and loaded back


def test_trained_heads_detect_demo_defects(finished_run):
    _, metrics = finished_run
    # Even a tiny random backbone at 4x7 patches ranks the demo's defects above chance (deterministic:
    # seeded); the quality check with a real backbone is tests/test_integration_shared.py.
    assert np.mean([m["image_auroc"] for m in metrics.values()]) > 0.6


def test_a_clipped_highlight_counts_in_proportion_to_its_unclipped_pixels_in_map_and_score(finished_run, tiny_backbone):
    config = finished_run[0]
    model = CategoryModel.load(Path(config.RESULTS_DIR) / config.CATEGORIES[0] / "model")
    image = torch.rand(3, 56, 84, generator=torch.Generator().manual_seed(0)) * 0.8
    image[:, :14, :14] = 1.0     # patch (0, 0): every pixel clipped
    image[:, 14:21, 14:28] = 1.0  # patch (1, 1): half of them
    share = torch.zeros(4, 6)
    share[0, 0], share[1, 1] = 1.0, 0.5
    grids = {}
    for discount in (False, True):
        model.scales[0].discount_saturated = discount  # decided at fit time, from the training images
        # One scoring phase: the shares above are of the image's own patch grid.
        with Runner(config.replace(SCORING_PHASES=1), Method(), backbone=tiny_backbone, progress=False) as runner:
            raw = runner.raw_scores_of_images(model.scales[0], [image])
        grids[discount] = raw.grids[0]
    torch.testing.assert_close(grids[True], discount_saturated(grids[False], share))
    assert float(grids[True][0, 0]) == float(grids[False].median())


def test_clipped_highlights_are_discounted_only_where_the_training_images_clip(finished_run, make_ad2_category,
                                                                              tiny_backbone, tmp_path):
    config = finished_run[0]
    assert config.DISCOUNT_SATURATED  # the default; the demo's training images never clip, so it stays off there
    model_json = json.loads((Path(config.RESULTS_DIR) / config.CATEGORIES[0] / "model" / "model.json").read_text())
    assert [scale["discount_saturated"] for scale in model_json["scales"]] == [False]
    root = make_ad2_category(train=4, size=(28, 42))
    train_image = next((root / "widget" / "train" / "good").glob("*.png"))
    with Image.open(train_image) as image:
        highlighted = image.copy()
    highlighted.paste((255, 255, 255), (0, 0, 5, 5))  # one image in four with a clipped highlight
    highlighted.save(train_image)
    for discount in (True, False):
        results = tmp_path / f"results-{discount}"
        run(tiny_config(root, results, CATEGORIES=["widget"], IMAGE_SIZE=28, DISCOUNT_SATURATED=discount),
            backbone=tiny_backbone, progress=False)
        assert CategoryModel.load(results / "widget" / "model").scales[0].discount_saturated is discount


def test_same_seed_gives_identical_scores(finished_run, tiny_backbone, tmp_path):
    config = finished_run[0]
    again = config.replace(RESULTS_DIR=str(tmp_path / "again"), CATEGORIES=config.CATEGORIES[:1])
    run(again, backbone=tiny_backbone, progress=False)
    category = config.CATEGORIES[0]
    assert _scores(tmp_path / "again" / category / "scores.csv") == _scores(
        Path(config.RESULTS_DIR) / category / "scores.csv")


def test_rerun_keeps_earlier_results_and_skips_finished_categories(demo_root, tiny_backbone, tmp_path):
    config = tiny_config(demo_root, tmp_path / "results", CATEGORIES=dataset_ad2.list_categories(demo_root)[:1],
                         SYNTHETIC_SAMPLES=9, EPOCHS=1)
    run(config, backbone=tiny_backbone, progress=False)
    results = tmp_path / "results"
    category = config.CATEGORIES[0]
    first_summary = (results / "performance_summary.txt").read_text()
    fit_record = (results / category / "fit.json").read_text()

    run(config, backbone=tiny_backbone, progress=False)  # same settings: category reused, reports archived
    assert (results / category / "fit.json").read_text() == fit_record
    archived = list((results / "history").glob("*/performance_summary.txt"))
    assert [p.read_text() for p in archived] == [first_summary]

    run(config.replace(FORCE=True), backbone=tiny_backbone, progress=False)
    assert len(list((results / "history").glob(f"*/{category}/scores.csv"))) == 1
    assert len(list((results / "history").glob("*/performance_summary.txt"))) == 2


def test_evaluate_only_recomputes_the_same_metrics_from_saved_maps(finished_run, tmp_path):
    config, metrics = finished_run
    # Without any backbone: a run that needed one would fail to load "facebook/dinov2-base" offline.
    recomputed = run(config.replace(EVALUATE_ONLY=True), progress=False)
    for category in config.CATEGORIES:
        for key in ("image_auroc", "image_ap", "class_f1", "au_pro_0.05", "au_pro_0.30", "seg_f1"):
            assert recomputed[category][key] == pytest.approx(metrics[category][key], nan_ok=True)


def test_predict_reproduces_the_scores_of_the_full_run(finished_run, tiny_backbone):
    config = finished_run[0]
    category = config.CATEGORIES[0]
    root = dataset_ad2.category_root(config.DATA_ROOT, category)
    run(config.replace(CATEGORIES=[category], PREDICT=str(root / "test_public" / "bad")), backbone=tiny_backbone,
        progress=False)
    out = max((Path(config.RESULTS_DIR) / "predictions").glob(f"{category}-*"))
    saved = _scores(Path(config.RESULTS_DIR) / category / "scores.csv")
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((root / "test_public" / "bad").glob("*.png")))
    for row in rows:
        relative = f"test_public/bad/{Path(row['file']).name}"
        assert float(row["image_score"]) == pytest.approx(saved[relative], rel=1e-5)  # batching changes the last float32 bits
        assert row["anomalous"] in ("true", "false")
        stem = Path(row["file"]).stem
        assert (out / "overlays" / f"{stem}.png").is_file() and (out / "maps" / f"{stem}.tiff").is_file()


def test_summary_predict_and_export_share_the_model_thresholds(finished_run, tiny_backbone, tmp_path):
    """metrics.json, --PREDICT and the export all decide with model.json's thresholds; the baseline
    rule (validation mean + 3 std) is reported beside them, recomputed from the saved maps."""
    config, metrics_of = finished_run
    category = config.CATEGORIES[0]
    folder = Path(config.RESULTS_DIR) / category
    model = json.loads((folder / "model" / "model.json").read_text())
    reported = json.loads((Path(config.RESULTS_DIR) / "metrics.json").read_text())["categories"][category]
    assert reported["thresholds"]["pixel"] == model["pixel_threshold"]
    assert reported["thresholds"]["image"] == model["image_threshold"]
    calibration = json.loads((folder / "fit.json").read_text())["thresholds"]
    assert calibration["synthetic_defects"] > 0 and calibration["lighting_variants"] > 0
    assert calibration["pixel_threshold"] == model["pixel_threshold"]

    data = dataset_ad2.load_category(config.DATA_ROOT, category)
    test_maps = [model_io.read_map(folder / "maps" / Path(s.relative_path).with_suffix(".tiff")) for s in data.test_public]
    masks = [s.mask_path for s in data.test_public]
    def cut(values: np.ndarray) -> float:  # the pixel threshold, raised to the map's own floor
        median = float(np.median(values))
        return max(model["pixel_threshold"], median + PEAK_FLOOR * (float(values.max()) - median))

    assert reported["seg_f1"] == pytest.approx(metrics.seg_f1(test_maps, masks, [cut(m) for m in test_maps]))
    validation_maps = [model_io.read_map(folder / "maps" / Path(s.relative_path).with_suffix(".tiff"))
                       for s in data.validation]
    baseline = metrics.mean_plus_k_std(validation_maps)
    assert reported["thresholds"]["pixel_baseline_rule"] == pytest.approx(baseline)
    assert reported["seg_f1_baseline_rule"] == pytest.approx(metrics.seg_f1(test_maps, masks, baseline))

    bad = dataset_ad2.category_root(config.DATA_ROOT, category) / "test_public" / "bad"
    run(config.replace(CATEGORIES=[category], PREDICT=str(bad)), backbone=tiny_backbone, progress=False)
    out = max((Path(config.RESULTS_DIR) / "predictions").glob(f"{category}-*"))
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert float(row["image_threshold"]) == pytest.approx(model["image_threshold"], abs=1e-6)
        assert row["anomalous"] == str(float(row["image_score"]) >= model["image_threshold"]).lower()
        predicted_map = model_io.read_map(out / "maps" / f"{row['output_name']}.tiff")
        predicted_mask = np.asarray(Image.open(out / "masks" / f"{row['output_name']}.png")) > 0
        assert np.array_equal(predicted_mask, predicted_map >= cut(predicted_map))

    exported = config.replace(CATEGORIES=[category], EXPORT_SUBMISSION=True, RESULTS_DIR=str(tmp_path / "export"))
    shutil.copytree(folder, tmp_path / "export" / category)  # reused as fitted: same model, same thresholds
    run(exported, backbone=tiny_backbone, progress=False)
    for sample in data.split("test_private"):
        values = tifffile.imread(tmp_path / "export" / "anomaly_images" / category / "test_private" / f"{sample.stem}.tiff")
        png = tmp_path / "export" / "anomaly_images_thresholded" / category / "test_private" / f"{sample.stem}.png"
        values = values.astype(np.float32)
        assert np.array_equal(np.asarray(Image.open(png)) > 0, values >= cut(values))


def test_predict_needs_one_category(finished_run, tiny_backbone):
    config = finished_run[0]
    with pytest.raises(PipelineError, match="exactly one category"):
        run(config.replace(PREDICT=config.DATA_ROOT), backbone=tiny_backbone, progress=False)


def test_export_submission_writes_official_float16_tiffs(demo_root, tiny_backbone, tmp_path):
    config = tiny_config(demo_root, tmp_path / "results", CATEGORIES=dataset_ad2.list_categories(demo_root)[:1],
                         SYNTHETIC_SAMPLES=9, EPOCHS=1, EXPORT_SUBMISSION=True)
    run(config, backbone=tiny_backbone, progress=False)
    category = config.CATEGORIES[0]
    data = dataset_ad2.load_category(demo_root, category)
    for split in ("test_private", "test_private_mixed"):
        assert data.split(split), "the demo dataset has private test images"
        for sample in data.split(split):
            tiff = tmp_path / "results" / "anomaly_images" / category / split / f"{sample.stem}.tiff"
            values = tifffile.imread(tiff)
            assert values.dtype == np.float16 and values.ndim == 2
            assert values.shape == dataset_ad2.image_size(sample.path)
            png = tmp_path / "results" / "anomaly_images_thresholded" / category / split / f"{sample.stem}.png"
            mask = np.asarray(Image.open(png))
            assert mask.shape == values.shape and set(np.unique(mask)) <= {0, 255}


def test_main_without_dataset_explains_how_to_get_one(tmp_path, capsys):
    code = script.main([f"--DATA_ROOT={tmp_path / 'missing'}"])
    message = capsys.readouterr().err
    assert code == 2 and "mvtec.com" in message and "--demo" in message


def test_attention_is_only_computed_when_asked(tiny_backbone):
    from anomalyvfm.backbone import FeatureExtractor

    images = torch.rand(2, 3, 56, 84)
    plain = FeatureExtractor(tiny_backbone, [2])(images)
    assert plain.attention is None and plain.patches.shape == (2, 4, 6, tiny_backbone.config.hidden_size)
    assert plain.cls.shape == (2, tiny_backbone.config.hidden_size)


def test_main_demo_runs_end_to_end_from_the_command_line(tiny_backbone, tmp_path, monkeypatch, capsys):
    tiny_backbone.save_pretrained(tmp_path / "tiny-dinov2")
    monkeypatch.chdir(tmp_path)  # the demo dataset goes to ./data/demo_ad2
    code = script.main(["--demo", f"--BACKBONE={tmp_path / 'tiny-dinov2'}", "--FEATURE_LAYERS=2", "--IMAGE_SIZE=56",
                        "--CATEGORIES=weave", "--SYNTHETIC_SAMPLES=9", "--EPOCHS=1", "--NUM_WORKERS=0",
                        "--RESULTS_DIR=out"])
    assert code == 0
    assert (tmp_path / script.DEMO_ROOT / "weave" / "train" / "good").is_dir()
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(document["categories"]) == ["weave"] and document["config"]["DEMO"] is True
    assert (tmp_path / "out" / "report.html").is_file()
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("Done in ") and "report.html" in last_line and "out/performance_summary.txt" in last_line


def test_a_whitened_knn_is_saved_with_its_metric_and_predict_reproduces_it(demo_root, tiny_backbone, tmp_path):
    # An image bank as large as the bank: the image score's search is then exactly the plain run's.
    config = tiny_config(demo_root, tmp_path / "results", KNN_SHRINKAGE=0.25, KNN_IMAGE_BANK_SIZE=10**6, EPOCHS=1,
                         CATEGORIES=dataset_ad2.list_categories(demo_root)[:1])
    category = config.CATEGORIES[0]
    run(config, backbone=tiny_backbone, progress=False)
    saved = _scores(Path(config.RESULTS_DIR) / category / "scores.csv")
    plain = tiny_config(demo_root, tmp_path / "plain", KNN_SHRINKAGE=1.0, EPOCHS=1, CATEGORIES=[category])
    run(plain, backbone=tiny_backbone, progress=False)
    assert saved == pytest.approx(_scores(Path(plain.RESULTS_DIR) / category / "scores.csv"), rel=1e-5)
    defective = next(s for s in dataset_ad2.load_category(demo_root, category).test_public if s.label == 1)
    whitened_map, plain_map = (model_io.read_map(Path(c.RESULTS_DIR) / category / "maps" /
                                                 Path(defective.relative_path).with_suffix(".tiff")) for c in (config, plain))
    assert not np.allclose(whitened_map, plain_map, rtol=0.05)  # the maps use the whitened metric
    # Without an image bank the image score comes from the whitened distances too.
    maps_only = tiny_config(demo_root, tmp_path / "maps_only", KNN_SHRINKAGE=0.25, KNN_IMAGE_BANK_SIZE=0, EPOCHS=1,
                            CATEGORIES=[category])
    run(maps_only, backbone=tiny_backbone, progress=False)
    assert _scores(Path(maps_only.RESULTS_DIR) / category / "scores.csv") != pytest.approx(saved)
    bad = dataset_ad2.category_root(config.DATA_ROOT, category) / "test_public" / "bad"
    run(config.replace(PREDICT=str(bad)), backbone=tiny_backbone, progress=False)
    out = max((Path(config.RESULTS_DIR) / "predictions").glob(f"{category}-*"))
    with open(out / "predictions.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            assert float(row["image_score"]) == pytest.approx(saved[f"test_public/bad/{Path(row['file']).name}"], rel=1e-5)


def test_scoring_phases_add_the_half_patch_shifted_inputs_to_grids_and_peaks(finished_run, tiny_backbone):
    config = finished_run[0]
    scale = CategoryModel.load(Path(config.RESULTS_DIR) / config.CATEGORIES[0] / "model").scales[0]
    image = torch.rand(3, 56, 84, generator=torch.Generator().manual_seed(1))
    with Runner(config.replace(SCORING_PHASES=1), Method(), backbone=tiny_backbone, progress=False) as runner:
        own = runner.raw_scores_of_images(scale, [image])
        diagonal = runner.raw_scores_of_images(scale, [shifted_inputs(image[None], (7, 7), 14)[0]])
    with Runner(config.replace(SCORING_PHASES=2), Method(), backbone=tiny_backbone, progress=False) as runner:
        both = runner.raw_scores_of_images(scale, [image])
    assert tuple(both.grids[0].shape) == (2, 4, 6)  # the diagonal phase's 3 x 5 grid, its far edges repeated
    torch.testing.assert_close(both.grids[0][0], own.grids[0])
    torch.testing.assert_close(both.grids[0][1], padded_grid(diagonal.grids[0], (4, 6)))
    assert both.peaks[0] == pytest.approx((own.peaks[0] + diagonal.peaks[0]) / 2)
    assert both.cls_distances[0] == pytest.approx(own.cls_distances[0])  # the CLS token of the image itself


def test_a_run_with_four_phases_scores_from_disk_as_in_memory_and_predict_keeps_its_phases(demo_root, tiny_backbone,
                                                                                         tmp_path):
    category = dataset_ad2.list_categories(demo_root)[0]
    config = tiny_config(demo_root, tmp_path / "results", CATEGORIES=[category], SCORING_PHASES=4)
    run(config, backbone=tiny_backbone, progress=False)
    model = CategoryModel.load(tmp_path / "results" / category / "model")
    assert model.settings["SCORING_PHASES"] == 4
    bad = dataset_ad2.category_root(config.DATA_ROOT, category) / "test_public" / "bad"
    paths = sorted(bad.glob("*.png"))[:2]
    with Runner(config, Method(), backbone=tiny_backbone, progress=False) as runner:
        from_disk = runner.raw_scores(model.scales[0], paths, "test")
        in_memory = runner.raw_scores_of_images(
            model.scales[0], [_network_input(p, from_disk.input_sizes[i]) for i, p in enumerate(paths)])
    for index in range(len(paths)):
        assert tuple(from_disk.grids[index].shape)[0] == 4
        torch.testing.assert_close(from_disk.grids[index], in_memory.grids[index], rtol=1e-4, atol=1e-5)
    # --PREDICT with another SCORING_PHASES (1) on the command line scores as the saved model's settings say (4).
    run(config.replace(SCORING_PHASES=1, PREDICT=str(bad)), backbone=tiny_backbone, progress=False)
    out = max((tmp_path / "results" / "predictions").glob(f"{category}-*"))
    saved = _scores(tmp_path / "results" / category / "scores.csv")
    with open(out / "predictions.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            assert float(row["image_score"]) == pytest.approx(saved[f"test_public/bad/{Path(row['file']).name}"],
                                                              rel=1e-5)


def _network_input(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image on disk as the loader decodes it: ``[3, h, w]`` in [0, 1] at network input ``size``."""
    from anomalyvfm.backbone import to_input
    return to_input(dataset_ad2.load_image(path), size)
