"""The figures of a run. Each function writes one PNG (atomically) and returns its path.

Every function accepts one category or many, and draws a visible "no data" note instead of
failing when a category (or everything) has nothing to plot: a run's reports must not die at
the last step because, say, one category has no defective test images.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from anomalyvfm.metrics.au_pro import normalised_pro_area  # noqa: E402
from anomalyvfm.model_io import save_figure_atomic  # noqa: E402

DPI = 120
DISPLAY_SIDE = 512  # long side, in pixels, of images shown in sample detections
MAX_DETECTION_PIXELS = 2_000_000  # about 1 MB of PNG for photographs
HEADLINE_FPR = 0.05  # MVTec AD 2's AU-PRO integration limit
# (kind, label, colour, marker) of embedding points: colour-blind-safe blue/orange/red, shapes as a second cue.
KIND_STYLES = ((0, "normal (validation)", "#0072B2", "o"), (1, "test good", "#009E73", "s"),
               (2, "test bad", "#D55E00", "^"))
# Line styles and markers cycled together, so equal curves stay distinguishable without colour.
LINE_STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P"))
DETECTION_SCALE_MAX = 2.0  # sample detections: colours end at 2 x the pixel threshold at most
DETECTION_CAPTION = (
    "Colour: anomaly map ÷ its category's pixel threshold (chosen on validation images with lighting variants and synthetic defects), one scale for all "
    "rows; white contour: where the map crosses the threshold (1.0); red frame: the whole map is above it.")


def _line_style(index: int) -> dict:
    """Line style and marker of the ``index``-th curve; markers are staggered along the line so that
    identical curves (e.g. two perfect ROCs) still show every curve's markers."""
    linestyle, marker = LINE_STYLES[index % len(LINE_STYLES)]
    return {"linestyle": linestyle, "marker": marker, "markersize": 6, "markevery": (0.03 * (index % 3), 0.1),
            "linewidth": 1.6, "alpha": 0.9}


def _legend_outside(ax: Axes, **options) -> None:
    """Legend to the right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **options)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    save_figure_atomic(fig, Path(path), dpi=DPI)
    return Path(path)


def _no_data(ax: Axes, note: str = "no data") -> None:
    ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")


def _grid(count: int, title: str, cell: tuple[float, float] = (4.0, 3.2)) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` (at least one) subplots, at most 4 per row; unused cells hidden."""
    columns = min(max(count, 1), 4)
    rows = math.ceil(max(count, 1) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(cell[0] * columns, cell[1] * rows + 0.4), squeeze=False)
    fig.suptitle(title)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:max(count, 1)]


def _finite_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` (``[N]`` each) without the positions where either is NaN/inf."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def plot_roc_curves(path: Path, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Image-level ROC of every category in one axes. ``scores``: ``{category: (scores [N], labels [N] 0/1)}``."""
    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.6", label="chance")
    drawn = 0
    for index, (name, (values, labels)) in enumerate(scores.items()):
        values, labels = _finite_pairs(values, labels)
        if len(np.unique(labels)) < 2:
            ax.plot([], [], " ", label=f"{name}: AUROC n/a (needs good and bad images)")
            continue
        fpr, tpr, _ = roc_curve(labels, values)
        # Earlier curves drawn wider, so that a later one lying exactly on top leaves them visible.
        style = _line_style(index) | {"linewidth": 1.4 + 2.0 * (len(scores) - 1 - index)}
        ax.plot(fpr, tpr, label=f"{name}: AUROC {roc_auc_score(labels, values):.3f} "
                                f"({int((labels == 0).sum())} good, {int((labels == 1).sum())} bad)", **style)
        drawn += 1
    if not drawn:
        _no_data(ax, "no data: no category has both good and bad test images")
    ax.set(xlim=(-0.01, 1), ylim=(0, 1.03), xlabel="false positive rate", ylabel="true positive rate",
           title="Image-level ROC (test_public)")
    ax.set_aspect("equal")
    _legend_outside(ax)
    return _save(fig, path)


def plot_score_distributions(path: Path, scores: dict[str, tuple[np.ndarray, np.ndarray]],
                             thresholds: dict[str, float]) -> Path:
    """Histograms of good vs bad image scores per category, with the ClassF1 threshold.

    ``scores``: ``{category: (scores [N], labels [N] 0/1)}``; ``thresholds``: ``{category: threshold}``.
    """
    fig, axes = _grid(len(scores), "Image anomaly scores (test_public)")
    if not scores:
        _no_data(axes[0])
    for ax, (name, (values, labels)) in zip(axes, scores.items()):
        values, labels = _finite_pairs(values, labels)
        threshold = thresholds.get(name, math.nan)
        counts = ", ".join(f"{int((labels == label).sum())} {kind}" for label, kind in ((0, "good"), (1, "bad")))
        ax.set(title=f"{name} ({counts})", xlabel="image anomaly score", ylabel="images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images: no half ticks
        if not len(values):
            _no_data(ax)
            continue
        # Shared bins so that the two histograms are comparable.
        bins = np.histogram_bin_edges(values, bins=min(30, max(10, len(values))))
        for label, colour, hatch in ((0, "#009E73", None), (1, "#D55E00", "//")):
            part = values[labels == label]
            if len(part):
                ax.hist(part, bins=bins, alpha=0.6, color=colour, hatch=hatch, edgecolor="white", linewidth=0.3)
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
    # One legend for every panel, above them, so no panel's bars are covered.
    handles = [Patch(facecolor="#009E73", alpha=0.6, label="good"),
               Patch(facecolor="#D55E00", alpha=0.6, hatch="//", label="bad"),
               Line2D([], [], color="black", linestyle="--", label="image threshold (ClassF1)")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    save_figure_atomic(fig, Path(path), dpi=DPI)
    return Path(path)


def _display_size(height: int, width: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the long side is at most ``DISPLAY_SIDE`` (PIL's order)."""
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``array`` (``[H, W, 3]`` uint8 or ``[H, W]`` float32) to ``size`` = ``(width, height)``."""
    if array.shape[1::-1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BOX))


def _relative_map(anomaly_map: np.ndarray, threshold: float, size: tuple[int, int]) -> np.ndarray:
    """``anomaly_map`` resized to ``size`` and divided by ``threshold`` (1.0 = on the threshold)."""
    return _resize(np.asarray(anomaly_map, dtype=np.float32), size) / np.float32(threshold)


def _colour_scale(relative_maps: list[np.ndarray]) -> Normalize:
    """One colour scale for maps ÷ threshold: their 1st to 99th percentile, always including 1.0 (the threshold)
    with some room on both sides, and at most ``DETECTION_SCALE_MAX`` (so a hot spot does not wash out the rest)."""
    finite = np.concatenate([m[np.isfinite(m)].ravel() for m in relative_maps] + [np.zeros(0, np.float32)])
    if not finite.size:
        return Normalize(vmin=0.0, vmax=DETECTION_SCALE_MAX)
    low, high = np.percentile(finite, [1, 99])
    return Normalize(vmin=min(float(low), 0.9), vmax=min(max(float(high), 1.1), DETECTION_SCALE_MAX))


def _draw_overlay(ax: Axes, image: np.ndarray, relative_map: np.ndarray, norm: Normalize) -> None:
    """The map (already ÷ threshold, at the image's display size) over the image, with what crosses 1.0 marked.

    Where the map crosses the threshold a white contour is drawn; when the whole map is above it
    (a contour would have nothing to enclose) the panel gets a red frame and a note instead.
    """
    ax.imshow(image)
    ax.axis("off")
    finite = relative_map[np.isfinite(relative_map)]
    if not finite.size:
        _no_data(ax, "no anomaly values")
        return
    ax.imshow(np.ma.masked_invalid(relative_map), cmap="jet", alpha=0.45, norm=norm)
    if finite.min() >= 1.0:
        height, width = relative_map.shape
        ax.add_patch(Rectangle((0, 0), width - 1, height - 1, fill=False, edgecolor="red", linewidth=4))
        ax.text(0.5, 0.04, "whole map above threshold", transform=ax.transAxes, ha="center", va="bottom",
                fontsize=7, color="white", bbox={"facecolor": "red", "edgecolor": "none", "pad": 1.5})
    elif finite.max() > 1.0:
        ax.contour(np.ma.masked_invalid(relative_map), levels=[1.0], colors="white", linewidths=1.2)


def _detection_layout(examples: list[dict]) -> tuple[float, list[float], list[str]]:
    """Figure width and row heights (inches, the last row being the colour bar and caption), and wrapped titles.

    Rows follow each image's aspect ratio (wide images get short rows); the panel width shrinks
    from 4 to 1.5 inches until the figure has at most ``MAX_DETECTION_PIXELS`` (photographs
    compress poorly in PNG).
    """
    ratios = [min(max(np.shape(e["image"])[0] / np.shape(e["image"])[1], 0.25), 1.0) for e in examples]
    for cell in np.arange(4.0, 1.49, -0.25):
        # ~18 characters of an 8 pt title per inch; each title line takes ~0.17 inch, plus a gap to the row above.
        titles = [textwrap.fill(e["title"], width=int(18 * cell)) for e in examples]
        heights = [cell * ratio + 0.45 + 0.17 * title.count("\n") for ratio, title in zip(ratios, titles)]
        heights.append(1.1)  # colour bar and caption
        if (3 * cell + 0.4) * sum(heights) * DPI ** 2 <= MAX_DETECTION_PIXELS:
            break
    return 3 * cell + 0.4, heights, titles


def plot_sample_detections(path: Path, examples: list[dict]) -> Path:
    """One row per example: image | ground truth | anomaly-map overlay with the predicted region.

    Each example: ``{"title": str, "image": [H, W, 3] uint8, "mask": [H, W] bool or None,
    "anomaly_map": [H, W] float, "threshold": float}``. Every map is divided by its own pixel
    threshold, so that all rows share one colour scale (one colour bar) on which 1.0 is the
    threshold. Images are shown at most ``DISPLAY_SIDE`` pixels on the long side, which keeps
    memory and file size small for 4224x1056 images.
    """
    if not examples:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        _no_data(ax, "no sample detections")
        ax.set_title("Sample detections")
        return _save(fig, path)
    width, heights, titles = _detection_layout(examples)
    images = [_resize(np.ascontiguousarray(e["image"]), _display_size(*np.shape(e["image"])[:2])) for e in examples]
    relative = [_relative_map(e["anomaly_map"], _usable_threshold(e["threshold"]), image.shape[1::-1])
                for e, image in zip(examples, images)]
    norm = _colour_scale(relative)
    fig = plt.figure(figsize=(width, sum(heights)))
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights, hspace=0.05, wspace=0.04,
                            left=0.01, right=0.99, top=1 - 0.1 / sum(heights), bottom=0.01)
    for row, (example, title, image, values) in enumerate(zip(examples, titles, images, relative)):
        image_ax, mask_ax, map_ax = (fig.add_subplot(grid[row, column]) for column in range(3))
        image_ax.imshow(image)
        image_ax.set_title(title, fontsize=8, loc="left")
        image_ax.axis("off")
        mask_ax.axis("off")
        mask_ax.set_title("ground truth", fontsize=8)
        if example["mask"] is None:
            _no_data(mask_ax, "no mask (good image)")
        else:
            # Box-averaging then "> 0" keeps defects thinner than one display pixel visible.
            mask = _resize(np.asarray(example["mask"], dtype=bool).astype(np.float32), image.shape[1::-1]) > 0
            mask_ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
        _draw_overlay(map_ax, image, values, norm)
        map_ax.set_title(f"anomaly map (pixel threshold {float(example['threshold']):.3g})", fontsize=8)
    footer = fig.add_subplot(grid[-1, :])
    footer.axis("off")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="jet"), cax=footer.inset_axes([0.25, 0.78, 0.5, 0.12]),
                       orientation="horizontal", extend="both")
    bar.ax.axvline(1.0, color="black", linewidth=2)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("anomaly map ÷ pixel threshold", fontsize=8, labelpad=1)
    footer.text(0.5, 0.3, textwrap.fill(DETECTION_CAPTION, width=int(width * 15)), transform=footer.transAxes,
                ha="center", va="top", fontsize=7.5)
    save_figure_atomic(fig, Path(path), dpi=DPI)
    return Path(path)


def _usable_threshold(threshold: float) -> float:
    """The pixel threshold, or 1.0 (maps shown unscaled) when it is undefined or not positive."""
    threshold = float(threshold)
    return threshold if math.isfinite(threshold) and threshold > 0 else 1.0


def save_overlay(path: Path, image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> Path:
    """One image's anomaly-map overlay (as in ``plot_sample_detections``), for predictions.

    ``image``: ``[H, W, 3]`` uint8; ``anomaly_map``: ``[H, W]`` float; ``threshold``: pixel threshold.
    """
    width, height = _display_size(*np.asarray(image).shape[:2])
    fig, ax = plt.subplots(figsize=(1.0 + 6 * width / max(width, height), 0.6 + 6 * height / max(width, height)))
    relative = _relative_map(anomaly_map, _usable_threshold(threshold), (width, height))
    norm = _colour_scale([relative])
    _draw_overlay(ax, _resize(np.ascontiguousarray(image), (width, height)), relative, norm)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="jet"),
                       cax=make_axes_locatable(ax).append_axes("right", size=0.1, pad=0.05), extend="both")
    bar.ax.axhline(1.0, color="black", linewidth=1.5)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(f"anomaly map ÷ pixel threshold {float(threshold):.3g}; white contour: 1.0", fontsize=9)
    return _save(fig, path)


def plot_feature_analysis(path: Path, embeddings: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """2-D PCA of image embeddings per category, fitted on that category's normal reference images.

    ``embeddings``: ``{category: (features [N, d], kind [N])}``, kind 0 = normal reference (validation images), 1 = test good, 2 = test bad.
    """
    fig, axes = _grid(len(embeddings), "CLS embeddings, PCA of normal images")
    if not embeddings:
        _no_data(axes[0])
    for ax, (name, (features, kinds)) in zip(axes, embeddings.items()):
        features = np.asarray(features, dtype=np.float64).reshape(len(kinds), -1)
        kinds = np.asarray(kinds)
        keep = np.isfinite(features).all(axis=1)
        features, kinds = features[keep], kinds[keep]
        train = features[kinds == 0]
        ax.set_title(name)
        if len(train) < 2 or features.shape[1] < 2:
            _no_data(ax, "no data: needs 2+ normal references\nand 2+ feature dimensions")
            continue
        centre = train.mean(axis=0)
        _, singular, components = np.linalg.svd(train - centre, full_matrices=False)
        variance = singular ** 2 / max((singular ** 2).sum(), 1e-300)
        projected = (features - centre) @ components[:2].T
        for kind, label, colour, marker in KIND_STYLES:
            points = projected[kinds == kind]
            if len(points):
                ax.scatter(points[:, 0], points[:, 1], s=36, alpha=0.75, color=colour, marker=marker,
                           edgecolors="white", linewidths=0.5, label=f"{label} ({len(points)})")
        ax.set(xlabel=f"PC1 ({variance[0]:.0%} of normal variance)", ylabel=f"PC2 ({variance[1]:.0%})")
    # One legend for all panels, above them: in a panel it would hide points.
    handles = [Line2D([], [], linestyle="", marker=marker, markersize=7, color=colour, markeredgecolor="white",
                      label=label) for _, label, colour, marker in KIND_STYLES]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    save_figure_atomic(fig, Path(path), dpi=DPI)
    return Path(path)


def plot_pro_curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], fpr_limit: float = 0.3) -> Path:
    """PRO vs FPR per category: left on [0, HEADLINE_FPR] (what AU-PRO@0.05 integrates), right up to ``fpr_limit``.

    ``curves``: ``{category: (fpr ascending [K], pro [K])}``; the legend gives AU-PRO@0.05 from the curve.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    drawn = 0
    for index, (name, (fpr, pro)) in enumerate(curves.items()):
        fpr, pro = _finite_pairs(fpr, pro)
        score = normalised_pro_area(fpr, pro, HEADLINE_FPR)
        label = f"{name}: AU-PRO@0.05 {'n/a' if math.isnan(score) else f'{score:.3f}'}"
        if not len(fpr):
            axes[0].plot([], [], " ", label=f"{label} (no curve)")
            continue
        for ax, limit in zip(axes, (HEADLINE_FPR, fpr_limit)):
            inside = fpr <= limit
            x, y = fpr[inside], pro[inside]
            if fpr[0] < limit < fpr[-1]:  # end the drawn curve exactly at the limit
                x, y = np.append(x, limit), np.append(y, np.interp(limit, fpr, pro))
            ax.plot(x, y, label=label, color=f"C{index}", **_line_style(index))
        drawn += 1
    if not drawn:
        _no_data(axes[0], "no data: no PRO curve")
    axes[0].set(xlim=(0, HEADLINE_FPR), ylim=(0, 1.02), xlabel="false positive rate (pixels of good images)",
                ylabel="per-region overlap (PRO)", title=f"FPR 0 to {HEADLINE_FPR:g}: the AU-PRO@0.05 headline range")
    axes[1].set(xlim=(0, fpr_limit), ylim=(0, 1.02), xlabel="false positive rate (pixels of good images)",
                title=f"FPR 0 to {fpr_limit:g} (AU-PRO@{fpr_limit:.2f})")
    axes[1].axvline(HEADLINE_FPR, color="0.4", linestyle="--", linewidth=1)
    axes[1].text(HEADLINE_FPR, 0.03, f" {HEADLINE_FPR:g}", color="0.3", fontsize=8)
    fig.suptitle("PRO curves (test_public)")
    if curves:  # the left panel holds every entry, also the "no curve" ones; the legend goes right of the right one
        axes[1].legend(*axes[0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0, fontsize=8)
    return _save(fig, path)


def plot_training_loss(path: Path, losses: dict[str, list[float]]) -> Path:
    """Mean training loss per epoch, one line per category. ``losses``: ``{category: [epochs]}``."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = 0
    for name, history in losses.items():
        values = np.asarray(history, dtype=np.float64)
        if not np.isfinite(values).any():
            ax.plot([], [], " ", label=f"{name}: no training losses")
            continue
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, linewidth=1.5, label=name)
        drawn += 1
    if not drawn:
        _no_data(ax, "no data: no training losses (e.g. EPOCHS=0 or reused models)")
    ax.set(xlabel="epoch", ylabel="mean loss", title="Training loss of the LoRA heads")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if losses:
        _legend_outside(ax)
    return _save(fig, path)


def _as_display_image(image: Any) -> np.ndarray:
    """``[H, W, 3]`` uint8, or a ``[3, h, w]`` float tensor/array in [0, 1], as ``[H, W, 3]`` uint8."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)  # a torch tensor
    if array.dtype != np.uint8:
        array = np.clip(np.rint(np.moveaxis(array, 0, -1) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def plot_synthetic_samples(path: Path, samples: list[dict]) -> Path:
    """A grid of training samples with their defect masks outlined in red.

    Each sample: ``{"image": [H, W, 3] uint8 or [3, h, w] float tensor in [0, 1], "mask": [H, W]
    bool or None (no defect), "title": str}``.
    """
    fig, axes = _grid(len(samples), "Synthetic training samples (red: defect mask)", cell=(3.0, 3.2))
    if not samples:
        axes[0].axis("off")
        _no_data(axes[0], "no synthetic samples")
    for ax, sample in zip(axes, samples):
        image = _as_display_image(sample["image"])
        ax.imshow(image)
        ax.axis("off")
        ax.set_title(textwrap.fill(sample["title"], width=36), fontsize=8)
        mask = sample.get("mask")
        if mask is None:
            ax.text(0.5, 0.03, "no mask", transform=ax.transAxes, ha="center", fontsize=7, color="white",
                    bbox={"facecolor": "0.3", "edgecolor": "none", "pad": 1.5})
            continue
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != image.shape[:2]:
            mask = _resize(mask, image.shape[1::-1])
        if mask.max() > 0 and mask.min() <= 0:
            ax.contour(mask > 0, levels=[0.5], colors="red", linewidths=1.3)
        elif mask.min() > 0:  # all defect: a contour would have nothing to enclose
            ax.add_patch(Rectangle((0, 0), image.shape[1] - 1, image.shape[0] - 1, fill=False, edgecolor="red",
                                   linewidth=3))
    return _save(fig, path)
