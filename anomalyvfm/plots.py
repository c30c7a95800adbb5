"""The figures of a run. Each function writes one PNG (atomically) and returns its path.

Every function accepts one category or many, and draws a visible "no data" note instead of
failing when a category (or everything) has nothing to plot: a run's reports must not die at
the last step because, say, one category has no defective test images.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
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
THRESHOLD_LABEL = "threshold (val mean+3σ)"
KIND_STYLES = ((0, "normal (validation)", "tab:blue"), (1, "test good", "tab:green"), (2, "test bad", "tab:red"))


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
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.5", label="chance")
    drawn = 0
    for name, (values, labels) in scores.items():
        values, labels = _finite_pairs(values, labels)
        if len(np.unique(labels)) < 2:
            ax.plot([], [], " ", label=f"{name}: AUROC n/a (needs good and bad images)")
            continue
        fpr, tpr, _ = roc_curve(labels, values)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name}: AUROC {roc_auc_score(labels, values):.3f}")
        drawn += 1
    if not drawn:
        _no_data(ax, "no data: no category has both good and bad test images")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate",
           title="Image-level ROC (test_public)")
    ax.legend(loc="lower right", fontsize=8)
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
        ax.set(title=name, xlabel="image anomaly score", ylabel="images")
        if not len(values):
            _no_data(ax)
            continue
        # Shared bins so that the two histograms are comparable.
        bins = np.histogram_bin_edges(values, bins=30)
        for label, kind, colour in ((0, "good", "tab:green"), (1, "bad", "tab:red")):
            part = values[labels == label]
            if len(part):
                ax.hist(part, bins=bins, alpha=0.55, color=colour, label=f"{kind} (n={len(part)})")
        if math.isfinite(threshold):
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=THRESHOLD_LABEL)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _display_size(height: int, width: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the long side is at most ``DISPLAY_SIDE`` (PIL's order)."""
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``array`` (``[H, W, 3]`` uint8 or ``[H, W]`` float32) to ``size`` = ``(width, height)``."""
    if array.shape[1::-1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BOX))


def _draw_overlay(ax: Axes, image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> None:
    """Anomaly map (jet, with colorbar) over the image, and the predicted region's contour at ``threshold``.

    ``image``: ``[H, W, 3]`` uint8; ``anomaly_map``: ``[h, w]`` float (resized to the displayed image).
    """
    size = _display_size(*image.shape[:2])
    shown = _resize(np.ascontiguousarray(image), size)
    values = _resize(np.asarray(anomaly_map, dtype=np.float32), size)
    ax.imshow(shown)
    ax.axis("off")
    finite = values[np.isfinite(values)]
    if not finite.size:
        _no_data(ax, "no anomaly values")
        return
    low, high = float(finite.min()), float(finite.max())
    overlay = ax.imshow(np.ma.masked_invalid(values), cmap="jet", alpha=0.45, vmin=low, vmax=max(high, low + 1e-12))
    # A colorbar axes beside the image, as tall as the image whatever its aspect ratio.
    colorbar = ax.figure.colorbar(overlay, cax=make_axes_locatable(ax).append_axes("right", size=0.1, pad=0.05))
    colorbar.ax.tick_params(labelsize=7)
    if math.isfinite(threshold) and low < threshold < high:  # outside the range there is no contour to draw
        ax.contour(np.ma.masked_invalid(values), levels=[threshold], colors="white", linewidths=1.2)
        colorbar.ax.axhline(threshold, color="black", linewidth=1.5)


def _detection_layout(examples: list[dict]) -> tuple[float, list[float], list[str]]:
    """Figure width and row heights (inches), and the titles wrapped to the panel width.

    Rows follow each image's aspect ratio (wide images get short rows); the panel width shrinks
    from 4 to 1.5 inches until the figure has at most ``MAX_DETECTION_PIXELS`` (photographs
    compress poorly in PNG).
    """
    ratios = [min(max(np.shape(e["image"])[0] / np.shape(e["image"])[1], 0.25), 1.0) for e in examples]
    for cell in np.arange(4.0, 1.49, -0.25):
        # ~18 characters of an 8 pt title per inch; each title line takes ~0.15 inch.
        titles = [textwrap.fill(e["title"], width=int(18 * cell)) for e in examples]
        heights = [cell * ratio + 0.3 + 0.15 * title.count("\n") for ratio, title in zip(ratios, titles)]
        if (3 * cell + 1.2) * sum(heights) * DPI ** 2 <= MAX_DETECTION_PIXELS:
            break
    return 3 * cell + 1.2, heights, titles


def plot_sample_detections(path: Path, examples: list[dict]) -> Path:
    """One row per example: image | ground truth | anomaly-map overlay with the predicted contour.

    Each example: ``{"title": str, "image": [H, W, 3] uint8, "mask": [H, W] bool or None,
    "anomaly_map": [H, W] float, "threshold": float}``. Images are shown at most ``DISPLAY_SIDE``
    pixels on the long side, which keeps memory and file size small for 4224x1056 images.
    """
    if not examples:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        _no_data(ax, "no sample detections")
        ax.set_title("Sample detections")
        return _save(fig, path)
    width, heights, titles = _detection_layout(examples)
    fig, axes = plt.subplots(len(examples), 3, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for (image_ax, mask_ax, map_ax), example, title in zip(axes, examples, titles):
        image = _resize(np.ascontiguousarray(example["image"]), _display_size(*np.shape(example["image"])[:2]))
        image_ax.imshow(image)
        image_ax.set_title(title, fontsize=8)
        image_ax.axis("off")
        mask_ax.axis("off")
        mask_ax.set_title("ground truth", fontsize=8)
        if example["mask"] is None:
            _no_data(mask_ax, "no mask")
        else:
            # Box-averaging then "> 0" keeps defects thinner than one display pixel visible.
            mask = _resize(np.asarray(example["mask"], dtype=bool).astype(np.float32), image.shape[1::-1]) > 0
            mask_ax.imshow(mask, cmap="gray", vmin=0, vmax=1)
        threshold = float(example["threshold"])
        _draw_overlay(map_ax, image, example["anomaly_map"], threshold)
        map_ax.set_title(f"anomaly map, contour at {threshold:.3g}", fontsize=8)
    return _save(fig, path)


def save_overlay(path: Path, image: np.ndarray, anomaly_map: np.ndarray, threshold: float) -> Path:
    """One image's anomaly-map overlay (as in ``plot_sample_detections``), for predictions.

    ``image``: ``[H, W, 3]`` uint8; ``anomaly_map``: ``[H, W]`` float; ``threshold``: pixel threshold.
    """
    width, height = _display_size(*np.asarray(image).shape[:2])
    fig, ax = plt.subplots(figsize=(1.0 + 6 * width / max(width, height), 0.6 + 6 * height / max(width, height)))
    _draw_overlay(ax, np.asarray(image), anomaly_map, float(threshold))
    ax.set_title(f"anomaly map, contour at {float(threshold):.3g}", fontsize=9)
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
        for kind, label, colour in KIND_STYLES:
            points = projected[kinds == kind]
            if len(points):
                ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.6, color=colour, label=f"{label} ({len(points)})",
                           edgecolors="none")
        ax.set(xlabel=f"PC1 ({variance[0]:.0%} of normal variance)", ylabel=f"PC2 ({variance[1]:.0%})")
        ax.legend(fontsize=8, markerscale=2)
    return _save(fig, path)


def plot_pro_curves(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], fpr_limit: float = 0.3) -> Path:
    """PRO vs FPR up to ``fpr_limit`` per category, legend with AU-PRO@0.05 from the curve.

    ``curves``: ``{category: (fpr ascending [K], pro [K])}``.
    """
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.axvline(HEADLINE_FPR, color="0.4", linestyle="--", linewidth=1, label=f"FPR {HEADLINE_FPR} (headline limit)")
    drawn = 0
    for name, (fpr, pro) in curves.items():
        fpr, pro = _finite_pairs(fpr, pro)
        score = normalised_pro_area(fpr, pro, HEADLINE_FPR)
        label = f"{name}: AU-PRO@0.05 {'n/a' if math.isnan(score) else f'{score:.3f}'}"
        if not len(fpr):
            ax.plot([], [], " ", label=label)
            continue
        inside = fpr <= fpr_limit
        x, y = fpr[inside], pro[inside]
        if fpr[0] < fpr_limit < fpr[-1]:  # end the drawn curve exactly at the limit
            x, y = np.append(x, fpr_limit), np.append(y, np.interp(fpr_limit, fpr, pro))
        ax.plot(x, y, linewidth=1.5, marker="." if len(x) < 3 else None, label=label)
        drawn += 1
    if not drawn:
        _no_data(ax, "no data: no PRO curve")
    ax.set(xlim=(0, fpr_limit), ylim=(0, 1.02), xlabel="false positive rate (pixels of good images)",
           ylabel="per-region overlap (PRO)", title=f"PRO curves (test_public), FPR up to {fpr_limit:g}")
    ax.legend(loc="lower right", fontsize=8)
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
        ax.legend(fontsize=8)
    return _save(fig, path)
