"""``results/report.html``: one self-contained page to review a run in a browser.

Summary tables (``results.csv``, ``performance_summary.txt``), every plot of the results folder,
and per category the top false alarms, the missed defects and the best detections, each as
image | anomaly map | ground-truth mask, in tables sortable by score. Every image is embedded
as a base64 PNG and the sorting is a few lines of inline JavaScript: the file can be mailed or
opened offline, with no external resource.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

import dataset_ad2
from anomalyvfm import model_io
from anomalyvfm.model import mask_threshold

THUMBNAIL_SIDE = 200  # long side of each of the three panels, in pixels
MAP_SCALE = (0.5, 1.5)  # colours span 0.5 to 1.5 x the pixel threshold in every thumbnail
MAP_ALPHA = 0.55
# (kind, heading, label of the test images, highest score first)
EXAMPLE_KINDS = (("false alarm", "top false alarms (good images, highest scores)", 0, True),
                 ("missed defect", "missed defects (bad images, lowest scores)", 1, False),
                 ("best detection", "best detections (bad images, highest scores)", 1, True))

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; vertical-align: middle; }
th { background: #eee; cursor: pointer; user-select: none; }
th:first-child, td:first-child { text-align: left; }
td.kind { white-space: nowrap; }
tr.footer td { font-weight: bold; background: #f6f6f6; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

# Click a header to sort its table by that column (numbers numerically); click again to reverse.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (header, _, headers) {
  header.title = "click to sort";
  header.addEventListener("click", function () {
    var table = header.closest("table"), body = table.tBodies[0];
    var column = Array.prototype.indexOf.call(header.parentNode.children, header);
    var descending = header.dataset.order !== "desc";
    header.parentNode.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    header.dataset.order = descending ? "desc" : "asc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value || a.cells[column].textContent;
      var y = b.cells[column].dataset.value || b.cells[column].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _png_data_uri(image: Image.Image | bytes) -> str:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def _thumbnail_size(height: int, width: int) -> tuple[int, int]:
    scale = THUMBNAIL_SIDE / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def example_panels(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None,
                   pixel_threshold: float) -> Image.Image:
    """image | map ÷ threshold over the image (white outline where above 1.0, red frame if all of it is)
    | mask in red over the image ("no defect" for good images), side by side.

    ``image``: ``[H, W, 3]`` uint8; ``anomaly_map``: ``[H, W]`` float; ``mask``: ``[H, W]`` bool or None.
    """
    size = _thumbnail_size(*image.shape[:2])
    base = Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.BOX)
    pixels = np.asarray(base, dtype=np.float32)
    relative = np.asarray(Image.fromarray(np.asarray(anomaly_map, np.float32)).resize(size, Image.Resampling.BOX))
    relative = relative / np.float32(pixel_threshold if np.isfinite(pixel_threshold) and pixel_threshold > 0 else 1)
    low, high = MAP_SCALE
    colours = matplotlib.colormaps["jet"](np.clip((np.nan_to_num(relative) - low) / (high - low), 0, 1))[..., :3]
    blended = (1 - MAP_ALPHA) * pixels + MAP_ALPHA * 255 * colours
    above = np.nan_to_num(relative) >= 1.0
    if above.all():
        blended[:3], blended[-3:], blended[:, :3], blended[:, -3:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    else:
        blended[above & ~ndimage.binary_erosion(above)] = 255  # white outline of the region above the threshold
    map_panel = Image.fromarray(blended.astype(np.uint8))
    if mask is None:
        mask_panel = Image.fromarray((0.4 * pixels + 0.6 * 128).astype(np.uint8))
        ImageDraw.Draw(mask_panel).text((6, 6), "no defect (good image)", fill=(255, 255, 255))
    else:
        shown = np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
        tinted = pixels.copy()
        tinted[shown] = 0.35 * tinted[shown] + 0.65 * np.array([255, 0, 0])
        mask_panel = Image.fromarray(tinted.astype(np.uint8))
    gap = 4
    sheet = Image.new("RGB", (3 * size[0] + 2 * gap, size[1]), (255, 255, 255))
    for index, panel in enumerate((base, map_panel, mask_panel)):
        sheet.paste(panel, (index * (size[0] + gap), 0))
    return sheet


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


def _results_table(path: Path) -> str:
    if not path.is_file():
        return '<p class="note">no results.csv</p>'
    header, rows = _read_csv(path)
    body = [row for row in rows if row[0] not in ("Mean", "Total")]
    footer = [row for row in rows if row[0] in ("Mean", "Total")]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)

    def cells(row: list[str]) -> str:
        return "".join(f"<td>{html.escape(cell) or 'n/a'}</td>" for cell in row)

    return (f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(f"<tr>{cells(row)}</tr>" for row in body) + "</tbody><tfoot>"
            + "".join(f'<tr class="footer">{cells(row)}</tr>' for row in footer) + "</tfoot></table>")


def _category_section(results_dir: Path, category: str, data_root: Path, per_kind: int) -> str:
    category_dir = results_dir / category
    header, rows = _read_csv(category_dir / "scores.csv")
    tests = [dict(zip(header, row)) for row in rows]
    tests = [row for row in tests if row.get("split") == "test_public"]
    model_file = category_dir / "model" / "model.json"
    threshold = float(model_io.read_json(model_file)["pixel_threshold"]) if model_file.is_file() else float("nan")
    try:
        samples = {s.relative_path: s for s in dataset_ad2.list_samples(data_root, category, "test_public")}
    except dataset_ad2.DatasetError as error:
        return f'<h3>{html.escape(category)}</h3><p class="note">images unavailable: {html.escape(str(error))}</p>'
    table_rows = []
    for kind, _, label, highest_first in EXAMPLE_KINDS:
        chosen = sorted((r for r in tests if int(r["label"]) == label), key=lambda r: float(r["image_score"]),
                        reverse=highest_first)[:per_kind]
        for row in chosen:
            sample = samples.get(row["relative_path"])
            map_file = category_dir / "maps" / Path(row["relative_path"]).with_suffix(".tiff")
            if sample is None or not map_file.is_file():
                picture = '<span class="note">image or map missing</span>'
            else:
                mask = dataset_ad2.load_mask(sample) if sample.mask_path else None
                anomaly_map = model_io.read_map(map_file)
                # The map's own cut (model.mask_threshold), where its exported mask is cut
                cut = mask_threshold(anomaly_map, threshold) if np.isfinite(threshold) else threshold
                sheet = example_panels(dataset_ad2.load_image(sample.path), anomaly_map, mask, cut)
                picture = f'<img alt="{html.escape(row["relative_path"])}" src="{_png_data_uri(sheet)}">'
            score = float(row["image_score"])
            table_rows.append(f'<tr><td class="kind">{kind}</td><td>{html.escape(row["relative_path"])}</td>'
                              f'<td>{html.escape(row.get("lighting", ""))}</td>'
                              f'<td data-value="{score!r}">{score:.3f}</td><td>{picture}</td></tr>')
    if not table_rows:
        return f'<h3>{html.escape(category)}</h3><p class="note">no test_public images scored</p>'
    return (f'<h3>{html.escape(category)}</h3><p class="note">pixel threshold {threshold:.4g}; '
            f'up to {per_kind} of each: ' + "; ".join(heading for _, heading, _, _ in EXAMPLE_KINDS) + "</p>"
            '<table class="sortable"><thead><tr><th>kind</th><th>file</th><th>lighting</th><th>image score</th>'
            '<th>image | anomaly map ÷ threshold | ground truth</th></tr></thead><tbody>'
            + "".join(table_rows) + "</tbody></table>")


def write_report_html(results_dir: Path, data_root: str | Path, *, examples_per_kind: int = 3) -> Path:
    """Write ``results_dir/report.html`` from what a run left in ``results_dir``; returns its path.

    ``data_root``: the run's ``DATA_ROOT`` (the example images and masks are read from it);
    ``examples_per_kind``: how many false alarms, missed defects and best detections per category.
    """
    results_dir = Path(results_dir)
    summary = results_dir / "performance_summary.txt"
    plots = sorted(results_dir.glob("*.png"))
    categories = sorted(p.parent.name for p in results_dir.glob("*/scores.csv"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>AnomalyVFM report: {html.escape(results_dir.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>AnomalyVFM report</h1><p class=\"note\">{html.escape(str(results_dir))}, written "
        f"{dt.datetime.now().isoformat(timespec='seconds')}. Click a column header to sort.</p>",
        "<h2>Results on test_public</h2>", _results_table(results_dir / "results.csv"),
        "<p class=\"note\">Mean: averaged over categories; Total: train/good/bad/seconds summed. "
        "The full text summary, with the run's settings and warnings:</p>",
        f"<details><summary>performance_summary.txt</summary><pre>"
        f"{html.escape(summary.read_text(encoding='utf-8')) if summary.is_file() else 'missing'}</pre></details>",
        "<h2>Plots</h2>",
        *(f'<figure><img alt="{html.escape(p.name)}" src="{_png_data_uri(p.read_bytes())}">'
          f"<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in plots),
        "<h2>Examples per category</h2>",
        f'<p class="note">Middle panel: anomaly map ÷ the category\'s pixel threshold (chosen on validation '
        f"images with lighting variants and synthetic defects), jet colours from {MAP_SCALE[0]} (blue) to {MAP_SCALE[1]} (red) in every thumbnail; white outline: "
        "the region above the threshold (the predicted defect); red frame: the whole map is above it. Right panel: "
        "ground-truth defect in red.</p>",
        *(_category_section(results_dir, name, Path(data_root), examples_per_kind) for name in categories),
        f"<script>{SORT_SCRIPT}</script></body></html>",
    ]
    path = results_dir / "report.html"
    model_io.write_text_atomic(path, "\n".join(parts) + "\n")
    return path
