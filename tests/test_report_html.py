"""report.html: parses, embeds or references only images that exist, and shows the chosen examples."""

import base64
import csv
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

import dataset_ad2
from anomalyvfm import model_io
from anomalyvfm.report_html import example_panels, write_report_html


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._in_kind = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attributes["src"])
        self.links += [value for name, value in attrs if name in ("href", "src") and tag != "img"]
        self._in_kind = tag == "td" and attributes.get("class") == "kind"

    def handle_data(self, data):
        if self._in_kind:
            self.cells.append(data)
            self._in_kind = False


def _fake_results(data_root: Path, results_dir: Path) -> None:
    category_dir = results_dir / "widget"
    rows = []
    for index, sample in enumerate(dataset_ad2.list_samples(data_root, "widget", "test_public")):
        height, width = dataset_ad2.image_size(sample.path)
        model_io.write_map_tiff(category_dir / "maps" / Path(sample.relative_path).with_suffix(".tiff"),
                                np.full((height, width), 0.5 + index, np.float32))
        rows.append([sample.relative_path, "test_public", sample.label, sample.lighting, 1.0 + index])
    with open(category_dir / "scores.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["relative_path", "split", "label", "lighting", "image_score"], *rows])
    model_io.write_json_atomic(category_dir / "model" / "model.json", {"pixel_threshold": 1.0})
    (results_dir / "results.csv").write_text("category,image_auroc,seconds\nwidget,0.9000,1.0\nMean,0.9000,1.0\n"
                                             "Total,,1.0\n")
    (results_dir / "performance_summary.txt").write_text("summary <text>")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(results_dir / "roc_curves.png")


def test_report_parses_and_every_image_exists(make_ad2_category, tmp_path):
    data_root = make_ad2_category(test_good=3, test_bad=2)
    results_dir = tmp_path / "results"
    _fake_results(data_root, results_dir)
    path = write_report_html(results_dir, data_root, examples_per_kind=2)
    assert path == results_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert "table" in parser.tags and "script" in parser.tags
    assert parser.links == []  # no external resource: scripts and styles are inline
    assert len(parser.images) == 1 + 6  # one plot, 2 false alarms + 2 missed + 2 best detections
    for source in parser.images:
        if source.startswith("data:image/png;base64,"):
            with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
                assert image.format == "PNG" and image.size[0] > 10
        else:
            assert not Path(source).is_absolute() and (results_dir / source).is_file()
    assert parser.cells == ["false alarm"] * 2 + ["missed defect"] * 2 + ["best detection"] * 2
    assert "summary &lt;text&gt;" in text and "widget" in text and 'data-value="' in text


def test_example_panels_outline_the_region_and_frame_a_map_wholly_above(tmp_path):
    image = np.full((50, 100, 3), 100, np.uint8)
    anomaly_map = np.zeros((50, 100), np.float32)
    anomaly_map[10:30, 20:60] = 2.0
    mask = np.zeros((50, 100), bool)
    mask[10:30, 20:60] = True
    sheet = np.asarray(example_panels(image, anomaly_map, mask, pixel_threshold=1.0))
    width = (sheet.shape[1] - 8) // 3
    assert sheet.shape[0] == 100 and (sheet[:, width + 4:2 * width + 4] == 255).all(axis=-1).sum() > 50  # outline
    assert (sheet[:, 2 * width + 8:, 0] > 150).sum() > 500  # red mask
    framed = np.asarray(example_panels(image, np.full((50, 100), 3.0, np.float32), None, pixel_threshold=1.0))
    assert (framed[0, width + 4:2 * width + 4] == (255, 0, 0)).all()
