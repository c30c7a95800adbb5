"""One decode per image per run: the decode that feeds the backbone also finds unreadable files,
sizes come from headers, the synthetic samples reuse the decoded training inputs, and evaluation
decodes each mask once. Unreadable images are skipped and listed, and the run finishes.

Decodes are counted in-process (NUM_WORKERS=0) at ``dataset_ad2._open``, where every image and
mask file's pixels are decoded (``load_image``, ``read_mask``; ``image_size`` reads headers
only). The summary's sample_detections.png shows a few test images with their masks; those
decodes are counted apart."""

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anomaly_vfm_v11_lora as script
import dataset_ad2
from anomalyvfm import summary
from anomalyvfm.pipeline import run

FIGURE_EXAMPLES = 3  # detection_examples(count=1): best and worst defect, top false alarm


class Decodes:
    """Pixel decodes per path during a run: images, masks, and those made for the summary's example figure."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images: Counter[Path] = Counter()
        self.masks: Counter[Path] = Counter()
        self.figures: Counter[Path] = Counter()
        self._in_figure = False
        decode, examples = dataset_ad2._open, summary.detection_examples

        def counted(path, what="image"):
            counter = self.figures if self._in_figure else self.masks if what == "mask" else self.images
            counter[Path(path)] += 1
            return decode(path, what)

        def figure_examples(*args, **kwargs):
            self._in_figure = True
            try:
                return examples(*args, **kwargs)
            finally:
                self._in_figure = False

        monkeypatch.setattr(dataset_ad2, "_open", counted)
        monkeypatch.setattr(summary, "detection_examples", figure_examples)

    def reset(self) -> None:
        for counter in (self.images, self.masks, self.figures):
            counter.clear()


def _config(data_root: Path, results_dir: Path, **changes):
    settings = dict(DATA_ROOT=str(data_root), CATEGORIES=["widget"], IMAGE_SIZE=28, FEATURE_LAYERS=[2],
                    RESULTS_DIR=str(results_dir), DEVICE="cpu", NUM_WORKERS=0, EPOCHS=1, SYNTHETIC_SAMPLES=9)
    return script.default_config().replace(**(settings | changes))


def _noise_png(path: Path, size: tuple[int, int], seed: int) -> None:
    """Replace ``path`` by a PNG of noise ``size`` (H, W): distinct content per ``seed``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _truncate(path: Path) -> None:
    """Header intact, pixel data cut: found only by decoding."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 36, 3), dtype=np.uint8)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _skipped_section(results: Path) -> list[str]:
    """The "<path> — <reason>" items of the summary's Skipped files section."""
    text = (results / "performance_summary.txt").read_text(encoding="utf-8")
    return [line.strip().removeprefix("- ") for line in text.split("\nSkipped files\n", 1)[1].splitlines()
            if line.startswith("  - ")]


def test_each_image_is_decoded_once_per_run_and_each_mask_once_per_evaluation(make_ad2_category, tiny_backbone,
                                                                               tmp_path, monkeypatch):
    root = make_ad2_category(train=4, validation=5, test_good=3, test_bad=3)
    data = dataset_ad2.load_category(root, "widget")
    for index, sample in enumerate(data.train + data.validation + data.test_public):
        _noise_png(sample.path, (20, 36), index)  # distinct images, as a real dataset has
    scored = {s.path for s in data.train + data.validation + data.test_public}
    masks = {s.mask_path for s in data.test_public if s.mask_path}
    decodes = Decodes(monkeypatch)
    config = _config(root, tmp_path / "results")

    run(config, backbone=tiny_backbone, progress=False)  # fit: backbone passes, synthetic samples, evaluation
    assert decodes.images == Counter(dict.fromkeys(scored, 1))
    assert decodes.masks == Counter(dict.fromkeys(masks, 1))
    assert sum(decodes.figures.values()) <= 2 * FIGURE_EXAMPLES and set(decodes.figures) <= scored | masks

    for again in (config, config.replace(EVALUATE_ONLY=True)):  # reused, then evaluated only: no image decoded
        decodes.reset()
        metrics = run(again, backbone=tiny_backbone, progress=False)
        assert metrics["widget"]["n_train"] == 4
        assert decodes.images == Counter()
        assert decodes.masks == Counter(dict.fromkeys(masks, 1))
        assert sum(decodes.figures.values()) <= 2 * FIGURE_EXAMPLES


def test_unreadable_images_are_skipped_listed_and_the_run_finishes(make_ad2_category, tiny_backbone, tmp_path):
    root = make_ad2_category(train=4, validation=5, test_good=3, test_bad=3, private=2)
    data = dataset_ad2.load_category(root, "widget")
    broken_train, broken_private = data.train[1], data.test_private[0]
    broken_test = [s for s in data.test_public if s.label == 1][1]  # defective: its mask is not needed any more
    broken_train.path.write_bytes(b"not an image at all")
    _truncate(broken_test.path)
    _truncate(broken_private.path)
    results = tmp_path / "results"
    config = _config(root, results, EXPORT_SUBMISSION=True)

    metrics = run(config, backbone=tiny_backbone, progress=False)["widget"]
    assert (metrics["n_train"], metrics["n_test_good"], metrics["n_test_bad"]) == (3, 3, 2)
    assert np.isfinite(metrics["image_auroc"]) and np.isfinite(metrics["au_pro_0.05"])
    expected = [f"{broken_train.path} — not a readable image", f"{broken_test.path} — truncated or corrupt",
                f"{broken_private.path} — truncated or corrupt"]
    listed = _skipped_section(results)
    assert len(listed) == 3 and all(line.startswith(start) for line, start in zip(listed, expected))
    with open(results / "widget" / "scores.csv", newline="") as handle:
        rows = [row["relative_path"] for row in csv.DictReader(handle)]
    assert len(rows) == 5 + 5 and broken_test.relative_path not in rows
    assert not (results / "widget" / "maps" / Path(broken_test.relative_path).with_suffix(".tiff")).exists()
    exported = results / "anomaly_images" / "widget" / "test_private"
    assert sorted(p.stem for p in exported.iterdir()) == [data.test_private[1].stem]
    record = json.loads((results / "widget" / "fit.json").read_text())
    assert [path for path, _ in record["skipped"]] == [str(broken_train.path), str(broken_test.path)]

    # A reused category lists its fit's skipped files without decoding them again.
    run(config.replace(EXPORT_SUBMISSION=False), backbone=tiny_backbone, progress=False)
    assert [line.split(" — ")[0] for line in _skipped_section(results)] == [str(broken_train.path),
                                                                           str(broken_test.path)]


def test_only_unreadable_validation_images_fall_back_to_the_training_images(make_ad2_category, tiny_backbone,
                                                                           tmp_path):
    root = make_ad2_category(validation=1)
    data = dataset_ad2.load_category(root, "widget")
    data.validation[0].path.write_bytes(b"garbage")
    results = tmp_path / "results"
    run(_config(root, results, EPOCHS=0), backbone=tiny_backbone, progress=False)
    assert "widget: no readable validation/good image; thresholds and score fusion use the training images" in (
        results / "performance_summary.txt").read_text(encoding="utf-8")
    with open(results / "widget" / "scores.csv", newline="") as handle:
        validation = [row["relative_path"] for row in csv.DictReader(handle) if row["split"] == "validation"]
    assert validation == [s.relative_path for s in data.train]
    assert [line.split(" — ")[0] for line in _skipped_section(results)] == [str(data.validation[0].path)]


def test_no_readable_training_image_is_the_same_error_as_before(make_ad2_category, tiny_backbone, tmp_path):
    root = make_ad2_category(train=2)
    for sample in dataset_ad2.load_category(root, "widget").train:
        sample.path.write_bytes(b"garbage")
    category_root = dataset_ad2.category_root(root, "widget")
    with pytest.raises(dataset_ad2.DatasetError,
                       match=f"^{re.escape(str(category_root))}/train/good has no readable image; cannot fit a model.$"):
        run(_config(root, tmp_path / "results"), backbone=tiny_backbone, progress=False)


def test_an_unreadable_mask_stops_the_evaluation_naming_the_mask(make_ad2_category, tiny_backbone, tmp_path):
    root = make_ad2_category(test_bad=2)
    bad = dataset_ad2.load_category(root, "widget").test_public[0]
    _truncate(bad.mask_path)
    with pytest.raises(dataset_ad2.UnreadableImageError, match=f"^Cannot read mask {re.escape(str(bad.mask_path))}: truncated"):
        run(_config(root, tmp_path / "results", EPOCHS=0), backbone=tiny_backbone, progress=False)
