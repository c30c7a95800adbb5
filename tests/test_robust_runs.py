"""Runs that never lose a result, and every bad input a clear one-line error before the long work
(issue 11). Generated data, the tiny random DINOv2, EPOCHS=0: each run takes seconds."""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anomaly_vfm_v11_lora as script
import dataset_ad2
from anomalyvfm import metrics, model_io
from anomalyvfm.method import Method
from anomalyvfm.calibration import PIXEL_RULE
from anomalyvfm.model import SCORING_VERSION, SETTINGS_ADDED, anomalous_pixels
from anomalyvfm.pipeline import PipelineError, run
from anomalyvfm.results import ResultsFolder


def _config(data_root: Path, results_dir: Path, categories=("widget",), **changes):
    settings = dict(DATA_ROOT=str(data_root), CATEGORIES=list(categories), IMAGE_SIZE=28, FEATURE_LAYERS=[2],
                    RESULTS_DIR=str(results_dir), DEVICE="cpu", NUM_WORKERS=0, EPOCHS=0, SYNTHETIC_SAMPLES=0)
    return script.default_config().replace(**(settings | changes))


def _argv(config) -> list[str]:
    """The command line of ``config``'s run-relevant settings."""
    names = ("DATA_ROOT", "CATEGORIES", "IMAGE_SIZE", "FEATURE_LAYERS", "RESULTS_DIR", "DEVICE", "NUM_WORKERS",
             "EPOCHS", "SYNTHETIC_SAMPLES", "BACKBONE")
    as_text = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return [f"--{name}={as_text(getattr(config, name))}" for name in names]


def _snapshot(results: Path) -> dict[str, bytes]:
    """Every file under ``results`` except history/, by relative path."""
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] != "history"}


def _one_error_line(captured: str) -> str:
    lines = [line for line in captured.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured, captured
    return lines[0]


@pytest.fixture
def saved_backbone(tiny_backbone, tmp_path) -> Path:
    folder = tmp_path / "tiny-dinov2"
    tiny_backbone.save_pretrained(folder)
    return folder


# -- a run owns its results folder ------------------------------------------------------------------
class _PausedMethod(Method):
    """v1.1, paused inside the fit until the test lets it continue."""

    def __init__(self) -> None:
        self.fitting, self.resume = threading.Event(), threading.Event()

    def lora_shape(self, config, normal_tokens):
        self.fitting.set()
        assert self.resume.wait(120)
        return super().lora_shape(config, normal_tokens)


def test_a_second_run_into_the_same_folder_exits_at_once_and_the_first_loses_nothing(
        make_ad2_category, tiny_backbone, tmp_path, capsys):
    config = _config(make_ad2_category(), tmp_path / "results")
    method, failures = _PausedMethod(), []
    first = threading.Thread(target=lambda: failures.extend(
        _capture(lambda: run(config, method, backbone=tiny_backbone, progress=False))))
    first.start()
    try:
        assert method.fitting.wait(120)
        start = time.perf_counter()
        code = script.main(_argv(config))
        assert code == 1 and time.perf_counter() - start < 5
        line = _one_error_line(capsys.readouterr().err)
        assert f"RESULTS_DIR {tmp_path / 'results'} is in use by another run (PID {os.getpid()}" in line
    finally:
        method.resume.set()
        first.join()
    assert not failures
    results = tmp_path / "results"
    assert (results / "performance_summary.txt").is_file() and (results / "widget" / "scores.csv").is_file()
    assert not (results / ".lock").exists() and not (results / "history").exists()


def _capture(action) -> list[BaseException]:
    try:
        action()
    except BaseException as error:  # noqa: BLE001 - reported to the test's thread
        return [error]
    return []


def test_a_stale_lock_is_taken_over_with_a_warning(make_ad2_category, tiny_backbone, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    results = tmp_path / "results"
    results.mkdir()
    (results / ".lock").write_text(json.dumps({"pid": dead.pid, "started": "2020-01-01T00:00:00"}))
    run(_config(make_ad2_category(), results), backbone=tiny_backbone, progress=False)
    summary = (results / "performance_summary.txt").read_text()
    assert f"lock {results / '.lock'} of a run that is no longer running (PID {dead.pid}" in summary
    assert not (results / ".lock").exists()


def test_history_folders_of_runs_started_in_the_same_instant_never_collide(tmp_path):
    import datetime as dt

    started = dt.datetime(2024, 1, 2, 3, 4, 5, 6)
    folders = []
    for _ in range(3):
        with ResultsFolder(tmp_path, started) as results:
            (tmp_path / "report.txt").write_text(f"run {len(folders)}")
            results.archive(tmp_path / "report.txt")
            folders.append(results.history())
    assert len(set(folders)) == 3
    assert sorted((f / "report.txt").read_text() for f in folders) == ["run 0", "run 1", "run 2"]


# -- checks before the long work ----------------------------------------------------------------------
def test_failed_runs_leave_results_byte_identical(make_ad2_category, tiny_backbone, tmp_path):
    data_root = make_ad2_category()
    results = tmp_path / "results"
    config = _config(data_root, results)
    run(config, backbone=tiny_backbone, progress=False)
    before = _snapshot(results)
    (tmp_path / "no-config").mkdir()
    failing = [
        (config.replace(CATEGORIES=["widget", "missing"]), tiny_backbone, dataset_ad2.DatasetError),
        (config.replace(FEATURE_LAYERS=[99], FORCE=True), tiny_backbone, Exception),
        (config.replace(BACKBONE=str(tmp_path / "no-config"), FORCE=True), None, Exception),
        (config.replace(CATEGORIES=["widget", "other"], EVALUATE_ONLY=True), None, Exception),
    ]
    make_ad2_category("other")
    for bad, backbone, error in failing:
        with pytest.raises(error):
            run(bad, backbone=backbone, progress=False)
        assert _snapshot(results) == before
    assert not (results / "history").exists() and not (results / ".lock").exists()


def test_a_wrong_size_rgb_mask_fails_in_seconds_naming_the_file(make_ad2_category, tmp_path, capsys):
    data_root = make_ad2_category()
    mask = data_root / "widget" / "test_public" / "ground_truth" / "bad" / "001_overexposed_mask.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(mask)
    config = _config(data_root, tmp_path / "results", BACKBONE=str(tmp_path / "never-loaded"))
    start = time.perf_counter()
    assert script.main(_argv(config)) == 1
    assert time.perf_counter() - start < 5
    line = _one_error_line(capsys.readouterr().err)
    assert f"Mask {mask} is 20x30 (HxW)" in line and "20x36" in line
    assert not (tmp_path / "results").exists()


def test_a_missing_second_category_fails_in_seconds_before_any_fit(make_ad2_category, tmp_path, capsys):
    data_root = make_ad2_category()
    config = _config(data_root, tmp_path / "results", categories=("widget", "gadget"),
                     BACKBONE=str(tmp_path / "never-loaded"))
    start = time.perf_counter()
    assert script.main(_argv(config)) == 1
    assert time.perf_counter() - start < 5
    line = _one_error_line(capsys.readouterr().err)
    assert f"Category 'gadget' not found: expected the folder {data_root / 'gadget'}" in line
    assert not (tmp_path / "results").exists()


def test_rgb_masks_are_read_the_same_by_the_data_layer_and_the_metrics(make_ad2_category):
    data_root = make_ad2_category()
    mask = data_root / "widget" / "test_public" / "ground_truth" / "bad" / "000_regular_mask.png"
    grey = dataset_ad2.load_mask(mask)
    Image.fromarray(np.stack([grey * 255, grey * 0, grey * 0], axis=2).astype(np.uint8)).save(mask)
    assert np.array_equal(dataset_ad2.load_mask(mask), grey)
    anomaly_map = grey.astype(np.float32)
    assert metrics.seg_f1([anomaly_map], [mask], 0.5) == 1.0


# -- a finished category is verified before reuse ----------------------------------------------------
def test_a_deleted_map_or_an_added_image_refits_only_that_category(make_ad2_category, tiny_backbone, tmp_path):
    make_ad2_category("alpha")
    data_root = make_ad2_category("beta")
    results = tmp_path / "results"
    config = _config(data_root, results, categories=("alpha", "beta"))
    run(config, backbone=tiny_backbone, progress=False)
    fits = lambda: {c: (results / c / "fit.json").read_text() for c in ("alpha", "beta")}
    first = fits()

    run(config.replace(DATA_ROOT=str(data_root) + "/"), backbone=tiny_backbone, progress=False)
    assert fits() == first  # a trailing slash is the same DATA_ROOT

    (results / "alpha" / "maps" / "test_public" / "bad" / "000_regular.tiff").unlink()
    run(config, backbone=tiny_backbone, progress=False)
    second = fits()
    assert second["alpha"] != first["alpha"] and second["beta"] == first["beta"]
    assert (results / "alpha" / "maps" / "test_public" / "bad" / "000_regular.tiff").is_file()

    Image.new("RGB", (36, 20), (7, 7, 7)).save(data_root / "beta" / "test_public" / "good" / "009_regular.png")
    metrics_by_category = run(config, backbone=tiny_backbone, progress=False)
    third = fits()
    assert third["alpha"] == second["alpha"] and third["beta"] != second["beta"]
    assert metrics_by_category["beta"]["n_test_good"] == 3
    assert len(list((results / "history").glob("*/alpha/fit.json"))) == 1
    assert len(list((results / "history").glob("*/beta/fit.json"))) == 1


# -- one-line errors from the command line ------------------------------------------------------------
@pytest.mark.parametrize("argument, message", [
    ("--DEVICE=mps", "error: DEVICE='mps' but this machine has no Apple MPS device available to torch; "
                     "use --DEVICE=auto or --DEVICE=cpu."),
    ("--LEARNING_RATE=nan", "error: Invalid configuration: LEARNING_RATE must be a finite number > 0, got nan."),
    ("--LORA_ALPHA=nan", "error: Invalid configuration: LORA_ALPHA must be a finite number > 0, got nan."),
    ("--SEED=-1", "error: Invalid configuration: SEED must be >= 0 (torch and numpy seeds are unsigned), got -1."),
    ("--CATEGORIES=../widget", "error: Invalid configuration: CATEGORIES entries must be plain folder names, "
                               "got '../widget'."),
])
def test_bad_settings_print_one_line_and_exit_2(make_ad2_category, tmp_path, capsys, argument, message):
    if argument == "--DEVICE=mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    config = _config(make_ad2_category(), tmp_path / "results")
    assert script.main(_argv(config) + [argument]) == 2
    assert _one_error_line(capsys.readouterr().err) == message
    assert not (tmp_path / "results").exists()


def test_a_results_dir_that_is_a_file_or_read_only_is_one_line(make_ad2_category, tmp_path, capsys, monkeypatch):
    data_root = make_ad2_category()
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    assert script.main(_argv(_config(data_root, target))) == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: RESULTS_DIR {target} is a file, not a folder; pass --RESULTS_DIR=<a folder> or move the file away.")

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse writes as it would for a user
        import tempfile

        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == read_only:
                raise PermissionError(13, "Permission denied", str(read_only))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        assert script.main(_argv(_config(data_root, read_only))) == 1
    finally:
        read_only.chmod(0o755)
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: RESULTS_DIR {read_only} is not writable ({read_only}: Permission denied); fix its permissions "
        "or pass another --RESULTS_DIR.")


@pytest.fixture
def finished(make_ad2_category, tiny_backbone, saved_backbone, tmp_path):
    """A finished one-category run whose backbone the command line can load."""
    config = _config(make_ad2_category(), tmp_path / "results", BACKBONE=str(saved_backbone))
    run(config, backbone=tiny_backbone, progress=False)
    return config


@pytest.mark.parametrize("content", ["", "{not json"])
def test_an_empty_or_corrupt_model_json_is_one_line(finished, capsys, content):
    model_file = Path(finished.RESULTS_DIR) / "widget" / "model" / "model.json"
    model_file.write_text(content)
    image = next((Path(finished.DATA_ROOT) / "widget" / "test_public" / "bad").glob("*.png"))
    assert script.main(_argv(finished) + [f"--PREDICT={image}"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {model_file} is empty or not valid JSON (")
    assert line.endswith("); refit the category with --FORCE=true or delete its folder.")


def test_nan_in_scores_csv_is_one_line_naming_file_and_row(finished, capsys):
    scores_file = Path(finished.RESULTS_DIR) / "widget" / "scores.csv"
    lines = scores_file.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:-1] + ["nan"])
    scores_file.write_text("\n".join(lines) + "\n")
    assert script.main(_argv(finished) + ["--EVALUATE_ONLY"]) == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {scores_file} row 4: image_score is 'nan', expected a finite number; "
        "rerun the category with --FORCE=true.")


def test_nan_in_a_saved_map_is_one_line_naming_the_file(finished, capsys):
    map_file = Path(finished.RESULTS_DIR) / "widget" / "maps" / "test_public" / "good" / "000_regular.tiff"
    values = model_io.read_map(map_file)
    values[0, 0] = np.nan
    model_io.write_map_tiff(map_file, values)
    assert script.main(_argv(finished) + ["--EVALUATE_ONLY"]) == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {map_file} holds NaN or infinite values; rerun the category with --FORCE=true.")


def test_a_nan_score_is_refitted_not_reused(finished, tiny_backbone, caplog):
    scores_file = Path(finished.RESULTS_DIR) / "widget" / "scores.csv"
    rows = scores_file.read_text().splitlines()
    rows[2] = ",".join(rows[2].split(",")[:-1] + ["nan"])
    scores_file.write_text("\n".join(rows) + "\n")
    with caplog.at_level("INFO", logger="anomalyvfm"):
        run(finished, backbone=tiny_backbone, progress=False)
    assert f"widget: refitting, because {scores_file} row 3: image_score is 'nan'" in caplog.text
    assert "nan" not in scores_file.read_text()


# -- untrusted folders ---------------------------------------------------------------------------------
def _edit_model_json(config, change) -> Path:
    model_file = Path(config.RESULTS_DIR) / "widget" / "model" / "model.json"
    meta = json.loads(model_file.read_text())
    change(meta)
    model_file.write_text(json.dumps(meta))
    return model_file


@pytest.mark.parametrize("change, problem", [
    (lambda m: m["scales"][0].update(image_size="../../../etc/passwd"),
     "scales[].image_size must be a positive multiple of 14, got '../../../etc/passwd'"),
    (lambda m: m["scales"][0].update(image_size=15), "scales[].image_size must be a positive multiple of 14, got 15"),
    (lambda m: m.update(pixel_threshold="high"), "'pixel_threshold' must be a finite number, got 'high'"),
    (lambda m: m["settings"].update(SCORER="pickle"), "settings.SCORER must be one of mahalanobis, knn, got 'pickle'"),
    (lambda m: m["scales"][0].pop("map_median"), "scales[].map_median must be a finite number or null, got '(missing)'"),
    (lambda m: m["scales"][0].update(map_median="0.2"), "scales[].map_median must be a finite number or null, got '0.2'"),
    (lambda m: m["scales"][0].update(discount_saturated=1),
     "scales[].discount_saturated must be true or false, got 1"),
    (lambda m: (m.pop("scoring_version"), m.update(version="1.1.0")),
     f"it was saved by anomalyvfm 1.1.0, which scores images differently (scoring_version 1, this version reads {SCORING_VERSION})"),
])
def test_model_json_fields_are_validated(finished, tiny_backbone, change, problem):
    model_file = _edit_model_json(finished, change)
    image = next((Path(finished.DATA_ROOT) / "widget" / "test_public" / "bad").glob("*.png"))
    with pytest.raises(PipelineError) as error:
        run(finished.replace(PREDICT=str(image)), backbone=tiny_backbone, progress=False)
    assert str(error.value) == (f"{model_file} is not a valid model description: {problem}; refit the category "
                                "with --FORCE=true or delete its folder.")


def test_a_result_of_an_older_scoring_version_is_refitted_not_reused(finished, tiny_backbone, caplog):
    _edit_model_json(finished, lambda m: m.pop("scoring_version"))
    with caplog.at_level("INFO", logger="anomalyvfm"):
        run(finished, backbone=tiny_backbone, progress=False)
    assert "widget: refitting, because" in caplog.text and "scores images differently" in caplog.text
    model_file = Path(finished.RESULTS_DIR) / "widget" / "model" / "model.json"
    assert json.loads(model_file.read_text())["scoring_version"] == SCORING_VERSION


def test_a_result_whose_pixel_threshold_came_from_another_rule_is_refitted(finished, tiny_backbone, caplog):
    fit_file = Path(finished.RESULTS_DIR) / "widget" / "fit.json"
    record = json.loads(fit_file.read_text())
    record["thresholds"]["pixel_rule"] = "midpoint(F1 synthetic, mean+3σ with lighting)"  # the rule until 1.8.0
    fit_file.write_text(json.dumps(record))
    with caplog.at_level("INFO", logger="anomalyvfm"):
        run(finished, backbone=tiny_backbone, progress=False)
    assert "widget: refitting, because its pixel threshold was chosen by another rule" in caplog.text
    assert json.loads(fit_file.read_text())["thresholds"]["pixel_rule"] == PIXEL_RULE


def test_a_model_saved_before_a_setting_was_added_is_read_with_the_value_it_was_fitted_with(finished, tiny_backbone,
                                                                                            caplog):
    assert finished.KNN_NUISANCE_WEIGHT == SETTINGS_ADDED["KNN_NUISANCE_WEIGHT"]  # the fit reproduces the older models
    model_file = _edit_model_json(finished, lambda m: m["settings"].pop("KNN_NUISANCE_WEIGHT"))
    with caplog.at_level("INFO", logger="anomalyvfm"):
        run(finished, backbone=tiny_backbone, progress=False)
    assert "widget: finished earlier with the same settings and data; reusing" in caplog.text
    assert "KNN_NUISANCE_WEIGHT" not in json.loads(model_file.read_text())["settings"]  # reused as it was
    image = next((Path(finished.DATA_ROOT) / "widget" / "test_public" / "bad").glob("*.png"))
    run(finished.replace(PREDICT=str(image)), backbone=tiny_backbone, progress=False)  # accepted, not refused
    # Another value is another model: refitted.
    caplog.clear()
    with caplog.at_level("INFO", logger="anomalyvfm"):
        run(finished.replace(KNN_NUISANCE_WEIGHT=1.0), backbone=tiny_backbone, progress=False)
    assert "widget: refitting, because settings changed: KNN_NUISANCE_WEIGHT" in caplog.text


def test_a_model_saved_before_saturated_patches_were_discounted_predicts_as_before_and_is_refitted_on_rerun(
        finished, tiny_backbone, caplog):
    assert finished.DISCOUNT_SATURATED != SETTINGS_ADDED["DISCOUNT_SATURATED"]  # today's default differs from then
    _edit_model_json(finished, lambda m: m["settings"].pop("DISCOUNT_SATURATED"))
    image = next((Path(finished.DATA_ROOT) / "widget" / "test_public" / "bad").glob("*.png"))
    run(finished.replace(PREDICT=str(image)), backbone=tiny_backbone, progress=False)  # scored as fitted, not refused
    with caplog.at_level("INFO", logger="anomalyvfm"):
        run(finished, backbone=tiny_backbone, progress=False)
    assert "widget: refitting, because settings changed: DISCOUNT_SATURATED" in caplog.text


def test_the_saved_model_does_not_choose_the_backbone(finished, tiny_backbone):
    model_file = _edit_model_json(finished, lambda m: m["settings"].update(BACKBONE="someone/else"))
    image = next((Path(finished.DATA_ROOT) / "widget" / "test_public" / "bad").glob("*.png"))
    with pytest.raises(PipelineError, match="pass --BACKBONE=someone/else to use it") as error:
        run(finished.replace(PREDICT=str(image)), backbone=tiny_backbone, progress=False)
    assert str(model_file) in str(error.value)


def test_scores_csv_paths_must_stay_in_the_category_folder(finished):
    scores_file = Path(finished.RESULTS_DIR) / "widget" / "scores.csv"
    text = scores_file.read_text()
    first = text.splitlines()[1].split(",")[0]
    scores_file.write_text(text.replace(first, "../../outside/x.png", 1))
    with pytest.raises(PipelineError, match=r"row 2: relative_path '../../outside/x.png' must not contain '\.\.'"):
        run(finished.replace(EVALUATE_ONLY=True), progress=False)


# -- outputs, thresholds, warnings ---------------------------------------------------------------------
def test_predict_keeps_inputs_that_share_a_stem_apart(finished, tiny_backbone, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    bad = next((Path(finished.DATA_ROOT) / "widget" / "test_public" / "bad").glob("*.png"))
    Image.open(bad).save(folder / "x.png")
    Image.open(bad).convert("L").save(folder / "x.jpg")
    run(finished.replace(PREDICT=str(folder)), backbone=tiny_backbone, progress=False)
    out = next((Path(finished.RESULTS_DIR) / "predictions").glob("widget-*"))
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["x_jpg.tiff", "x_png.tiff"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["x_jpg.png", "x_png.png"]
    with open(out / "predictions.csv", newline="") as handle:
        assert [row["output_name"] for row in csv.DictReader(handle)] == ["x_jpg", "x_png"]


def test_few_validation_images_warn_and_scores_stay_bounded(make_ad2_category, tiny_backbone, tmp_path):
    config = _config(make_ad2_category(validation=1), tmp_path / "results")
    run(config, backbone=tiny_backbone, progress=False)
    summary = (tmp_path / "results" / "performance_summary.txt").read_text()
    assert "widget: only 1 validation image(s) (fewer than 5)" in summary
    assert "has (almost) no spread" in summary
    with open(tmp_path / "results" / "widget" / "scores.csv", newline="") as handle:
        scores = [abs(float(row["image_score"])) for row in csv.DictReader(handle)]
    assert max(scores) < 1e3


def test_one_threshold_rule_at_saved_precision(finished):
    model = json.loads((Path(finished.RESULTS_DIR) / "widget" / "model" / "model.json").read_text())
    saved = model_io.read_map(next((Path(finished.RESULTS_DIR) / "widget" / "maps").rglob("*.tiff")))
    threshold = float(np.float16(model["pixel_threshold"]))
    assert anomalous_pixels(np.array([[threshold]], np.float32), threshold).all()  # equal counts as anomalous
    assert np.array_equal(model_io.saved_precision(saved), saved)  # saved maps are float16 values


def test_atomic_writes_respect_the_umask_without_changing_it(tmp_path):
    previous = os.umask(0o027)
    try:
        model_io.write_text_atomic(tmp_path / "a.txt", "x")
        assert os.umask(0o027) == 0o027  # unchanged by the write
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
