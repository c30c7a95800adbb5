"""One category end to end, and a whole run.

Data flows once per category:

    images -> backbone (once per image) -> [train] synthetic samples -> heads training
           -> Gaussian / kNN fit on normal embeddings -> validation + test scoring
           -> anomaly maps at the original size (saved as float16 TIFF) -> metrics -> reports

``Method`` holds the few decisions that the experimental versions change; each hook
says what v1.1 does. ``run(config)`` is what the main script calls.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import dataset_ad2
from anomalyvfm import __version__, metrics, model_io, plots, reporting, timing
from anomalyvfm.backbone import (FeatureExtractor, Features, autocast, iterate_images, load_backbone, normalize,
                                 resolve_device, target_size, to_input)
from anomalyvfm.config import Config
from anomalyvfm.heads import StackedLoRAHeads, projection_base
from anomalyvfm.scoring import (ScoreFusion, Scorer, anomaly_map, fit_scorer, scorer_from_state, top_patch_score)
from anomalyvfm.synthetic import make_synthetic_samples
from anomalyvfm.training import make_pairs, train_heads

log = logging.getLogger("anomalyvfm")

# Settings that change a category's model or metrics: a finished category is reused on
# rerun only if all of them match.
MODEL_SETTINGS = ("DATA_ROOT", "BACKBONE", "FEATURE_LAYERS", "IMAGE_SIZE", "LORA_RANK", "LORA_ALPHA", "EPOCHS",
                  "LEARNING_RATE", "SYNTHETIC_SAMPLES", "BATCH_SIZE", "SEED", "SCORER", "KNN_BANK_SIZE")
FPR_LIMITS = (0.05, 0.3)
PRO_BINS = 20_000  # streaming AU-PRO; agrees with the exact computation within 1e-3 (tests)
SCORE_SPLITS = ("validation", "test_public")


class PipelineError(ValueError):
    """A run was asked for something it cannot do (the message says what to change)."""


class Method:
    """The decisions that distinguish AnomalyVFM versions. v1.1 is this class as is."""

    name = "v1.1"
    needs_attention = False

    def lora_shape(self, config: Config, normal_tokens: torch.Tensor) -> tuple[int, float]:
        """LoRA (rank, alpha) for a category, given its normal tokens ``[N, D]``."""
        return config.LORA_RANK, config.LORA_ALPHA

    def image_sizes(self, config: Config) -> list[int]:
        """Shorter-side sizes at which images are scored; maps and scores are averaged over them."""
        return [config.IMAGE_SIZE]

    def patch_distances(self, distances: torch.Tensor, cls_distance: float,
                        attention: torch.Tensor | None) -> torch.Tensor:
        """An image's patch distances ``[gh, gw]`` before they become its anomaly map."""
        return distances

    def image_score(self, cls_z: float, patch_z: float) -> float:
        """Fuse the standardised CLS and top-patch distances into the image score."""
        return 0.5 * (cls_z + patch_z)


@dataclass
class ScaleModel:
    """Heads and scorers at one input size."""

    image_size: int
    heads: StackedLoRAHeads
    cls_scorer: Scorer
    patch_scorer: Scorer
    fusion: ScoreFusion | None = None
    losses: list[float] = field(default_factory=list)


@dataclass
class CategoryModel:
    """Everything needed to score new images of a category; saved under ``<cat>/model/``."""

    category: str
    scales: list[ScaleModel]
    image_threshold: float
    pixel_threshold: float
    settings: dict

    def save(self, folder: Path) -> None:
        for scale in self.scales:
            tensors = {f"heads.{name}": value for name, value in scale.heads.state_dict().items()}
            tensors |= {f"cls_scorer.{name}": value for name, value in scale.cls_scorer.state().items()}
            tensors |= {f"patch_scorer.{name}": value for name, value in scale.patch_scorer.state().items()}
            model_io.save_tensors(folder / f"scale_{scale.image_size}.safetensors", tensors)
        model_io.write_json_atomic(folder / "model.json", {
            "category": self.category, "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold, "settings": self.settings, "version": __version__,
            "scales": [{"image_size": s.image_size, "rank": s.heads.rank, "alpha": s.heads.alpha,
                        "fusion": s.fusion.state() if s.fusion else None} for s in self.scales]})

    @classmethod
    def load(cls, folder: Path) -> "CategoryModel":
        meta_path = folder / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"No saved model in {folder} (expected model.json and scale_*.safetensors); "
                                    "run the pipeline on this category first.")
        meta = model_io.read_json(meta_path)
        scales = []
        for entry in meta["scales"]:
            tensors = model_io.load_tensors(folder / f"scale_{entry['image_size']}.safetensors")
            part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            head_state = part("heads.")
            heads = StackedLoRAHeads(head_state["head1.base_weight"].shape[0], head_state["head3.base_weight"],
                                     rank=entry["rank"], alpha=entry["alpha"])
            heads.load_state_dict(head_state)
            kind = meta["settings"]["SCORER"]
            scales.append(ScaleModel(entry["image_size"], heads.eval(), scorer_from_state(kind, part("cls_scorer.")),
                                     scorer_from_state(kind, part("patch_scorer.")), ScoreFusion(**entry["fusion"])))
        return cls(meta["category"], scales, meta["image_threshold"], meta["pixel_threshold"], meta["settings"])


@dataclass
class ScoredImage:
    """One scored image: fused score, parts, and the map at the original size ``[H, W]``."""

    image_score: float
    cls_distances: list[float]
    top_patch: list[float]
    anomaly_map: np.ndarray


class Runner:
    """Holds the backbone and device for a run; fits and scores categories."""

    def __init__(self, config: Config, method: Method, *, backbone: torch.nn.Module | None = None,
                 progress: bool = True) -> None:
        self.config, self.method, self.progress = config, method, progress
        self.device = resolve_device(config.DEVICE)
        model = backbone if backbone is not None else load_backbone(config.BACKBONE)
        self.extractor = FeatureExtractor(model, config.FEATURE_LAYERS, attention=method.needs_attention).to(self.device)

    # -- backbone ---------------------------------------------------------------------------
    def features(self, paths: Sequence[Path], image_size: int, desc: str) -> Iterator[tuple[list[int], Features]]:
        """Backbone features of images on disk, batch by batch, with their indices."""
        batches = iterate_images(paths, image_size, self.extractor.patch_size, batch_size=self.config.BATCH_SIZE,
                                 num_workers=self.config.NUM_WORKERS)
        with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=not self.progress or None) as bar:
            while True:
                with timing.stage("load"):
                    batch = next(batches, None)
                if batch is None:
                    return
                indices, images = batch
                yield indices, self._forward(images)
                bar.update(len(indices))

    def _forward(self, images: torch.Tensor) -> Features:
        with timing.stage("backbone"), autocast(self.device):
            out = self.extractor(normalize(images.to(self.device)))
        return Features(out.cls.float().cpu(), out.patches.float().cpu(),
                        None if out.attention is None else out.attention.float().cpu())

    def forward_tensors(self, images: Sequence[torch.Tensor]) -> list[Features]:
        """Features of in-memory images ``[3, h, w]`` in [0, 1] (sizes may differ), one each."""
        order: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            order.setdefault(tuple(image.shape), []).append(index)
        out: list[Features | None] = [None] * len(images)
        for members in order.values():
            for start in range(0, len(members), self.config.BATCH_SIZE):
                batch = members[start:start + self.config.BATCH_SIZE]
                features = self._forward(torch.stack([images[i] for i in batch]))
                for row, index in enumerate(batch):
                    out[index] = Features(features.cls[row], features.patches[row])
        return out  # type: ignore[return-value]

    # -- fitting ----------------------------------------------------------------------------
    def fit_scale(self, train: Sequence[dataset_ad2.Sample], image_size: int) -> ScaleModel:
        """Backbone over the training images, synthetic samples, heads training, scorer fit."""
        config, paths = self.config, [s.path for s in train]
        cls_tokens = torch.zeros(len(train), self.extractor.dim)
        patch_grids: list[torch.Tensor] = [torch.empty(0)] * len(train)
        for indices, features in self.features(paths, image_size, f"features train @{image_size}"):
            cls_tokens[indices] = features.cls
            for row, index in enumerate(indices):
                patch_grids[index] = features.patches[row].half()  # half: train grids are the run's largest memory
        generator = torch.Generator().manual_seed(config.SEED)
        normal_sample = _sample_tokens(patch_grids, 60_000, generator)
        rank, alpha = self.method.lora_shape(config, normal_sample)
        heads = StackedLoRAHeads(self.extractor.dim, projection_base(normal_sample, self.extractor.dim, config.SEED),
                                 rank=rank, alpha=alpha)
        losses: list[float] = []
        if config.EPOCHS > 0 and config.SYNTHETIC_SAMPLES > 0:
            patch = self.extractor.patch_size
            load = lambda i: to_input(dataset_ad2.load_image(paths[i]), tuple(patch_grids[i].shape[:2] * np.array(patch)))
            with timing.stage("synthetic"):
                samples = make_synthetic_samples(load, len(train), config.SYNTHETIC_SAMPLES, config.SEED)
            synthetic = self.forward_tensors([s.image for s in samples])
            with timing.stage("training"):
                pairs = make_pairs(samples, torch.stack([f.cls for f in synthetic]), [f.patches for f in synthetic],
                                   cls_tokens, patch_grids)
                losses = train_heads(heads, pairs, normal_sample, epochs=config.EPOCHS, learning_rate=config.LEARNING_RATE,
                                 batch_size=config.BATCH_SIZE, seed=config.SEED, device=self.device,
                                 progress=self.progress)
        heads.cpu().eval()
        with timing.stage("fitting"):
            bank_limit = config.KNN_BANK_SIZE if config.SCORER == "knn" else 60_000
            fit_tokens = _sample_tokens(patch_grids, bank_limit or sum(g[..., 0].numel() for g in patch_grids), generator)
            cls_scorer = fit_scorer(config.SCORER, heads.embed(cls_tokens), bank_size=0, seed=config.SEED)
            patch_scorer = fit_scorer(config.SCORER, heads.embed(fit_tokens), bank_size=0, seed=config.SEED)
        return ScaleModel(image_size, heads, cls_scorer, patch_scorer, losses=losses)

    # -- scoring ----------------------------------------------------------------------------
    def raw_scores(self, scale: ScaleModel, paths: Sequence[Path], desc: str
                   ) -> tuple[np.ndarray, list[torch.Tensor], list[tuple[int, int]], np.ndarray]:
        """Per image: CLS distance ``[N]``, patch distance grids ``[gh, gw]``, input sizes, embeddings ``[N, 512]``."""
        cls_distances = np.zeros(len(paths))
        grids: list[torch.Tensor] = [torch.empty(0)] * len(paths)
        embeddings = np.zeros((len(paths), 512), dtype=np.float32)
        for indices, features in self.features(paths, scale.image_size, desc):
            with timing.stage("scoring"):
                batch, gh, gw, dim = features.patches.shape
                cls_embedding = scale.heads.embed(features.cls)
                cls_distance = scale.cls_scorer.distances(cls_embedding)
                distances = scale.patch_scorer.distances(scale.heads.embed(features.patches.reshape(-1, dim)))
                distances = distances.reshape(batch, gh, gw)
                for row, index in enumerate(indices):
                    cls_distances[index] = float(cls_distance[row])
                    attention = None if features.attention is None else features.attention[row]
                    grids[index] = self.method.patch_distances(distances[row], float(cls_distance[row]), attention)
                embeddings[indices] = cls_embedding.numpy()
        sizes = [(g.shape[0] * self.extractor.patch_size, g.shape[1] * self.extractor.patch_size) for g in grids]
        return cls_distances, grids, sizes, embeddings


def _sample_tokens(grids: Sequence[torch.Tensor], limit: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded random subsample of at most ``limit`` patch tokens from ``[gh, gw, D]`` grids, as float32."""
    counts = torch.tensor([g.shape[0] * g.shape[1] for g in grids])
    total = int(counts.sum())
    chosen = torch.randperm(total, generator=generator)[:limit].sort().values if limit < total else torch.arange(total)
    starts = torch.cumsum(counts, 0) - counts
    image_of = torch.searchsorted(torch.cumsum(counts, 0), chosen, right=True)
    out = []
    for image in image_of.unique().tolist():
        local = chosen[image_of == image] - starts[image]
        out.append(grids[image].reshape(-1, grids[image].shape[-1])[local].float())
    return torch.cat(out)


# -- scoring many images with a fitted model ---------------------------------------------------
@dataclass
class RawScores:
    """One scale's unfused outputs over a list of images (see ``Runner.raw_scores``)."""

    cls_distances: np.ndarray
    grids: list[torch.Tensor]
    input_sizes: list[tuple[int, int]]
    embeddings: np.ndarray

    def top_patch(self) -> np.ndarray:
        return np.array([top_patch_score(grid) for grid in self.grids])

    def subset(self, indices: Sequence[int]) -> "RawScores":
        return RawScores(self.cls_distances[list(indices)], [self.grids[i] for i in indices],
                         [self.input_sizes[i] for i in indices], self.embeddings[list(indices)])


def raw_scores(runner: Runner, scales: Sequence[ScaleModel], paths: Sequence[Path], desc: str) -> list[RawScores]:
    return [RawScores(*runner.raw_scores(scale, paths, f"{desc} @{scale.image_size}")) for scale in scales]


def fused_scores(method: Method, scales: Sequence[ScaleModel], raws: Sequence[RawScores]) -> np.ndarray:
    """Image scores ``[N]``: per scale the method's fusion of z-scores, averaged over scales."""
    per_scale = []
    for scale, raw in zip(scales, raws):
        fusion = scale.fusion
        cls_z = (raw.cls_distances - fusion.cls_mean) / fusion.cls_std
        patch_z = (raw.top_patch() - fusion.patch_mean) / fusion.patch_std
        per_scale.append([method.image_score(float(c), float(p)) for c, p in zip(cls_z, patch_z)])
    return np.mean(per_scale, axis=0) if per_scale else np.zeros(0)


def full_size_map(raws: Sequence[RawScores], index: int, original_size: tuple[int, int]) -> np.ndarray:
    """Image ``index``'s anomaly map ``[H, W]`` at its original size, averaged over scales."""
    maps = [anomaly_map(raw.grids[index], raw.input_sizes[index], original_size) for raw in raws]
    return maps[0] if len(maps) == 1 else np.mean(maps, axis=0)


def map_path(category_dir: Path, sample: dataset_ad2.Sample) -> Path:
    return category_dir / "maps" / Path(sample.relative_path).with_suffix(".tiff")


# -- a category end to end -----------------------------------------------------------------------
@dataclass
class CategoryOutcome:
    """What the reports need from a finished category."""

    metrics: dict
    scores: dict  # split -> {"scores": [N], "labels": [N]}
    image_threshold: float
    pro_curve: tuple[np.ndarray, np.ndarray]
    embeddings: tuple[np.ndarray, np.ndarray] | None  # ([N, 512], kind [N]: 0 validation, 1 test good, 2 test bad)
    losses: list[float]


def fit_and_score_category(runner: Runner, data: dataset_ad2.CategoryData, category_dir: Path,
                           notes: list[str]) -> CategoryModel:
    """Fit a category's model, then score validation and test_public and save their maps and scores."""
    config, method = runner.config, runner.method
    validation = data.validation
    if not validation:
        notes.append(f"{data.name}: no validation/good images; thresholds and score fusion use the training "
                     "images instead (biased low: expect more false alarms).")
        validation = data.train
    scales = [runner.fit_scale(data.train, size) for size in method.image_sizes(config)]
    scored = list(validation) + list(data.test_public)
    raws = raw_scores(runner, scales, [s.path for s in scored], "score")
    n_val = len(validation)
    for scale, raw in zip(scales, raws):
        val = raw.subset(range(n_val))
        scale.fusion = ScoreFusion.fit(val.cls_distances, val.top_patch())
    image_scores = fused_scores(method, scales, raws)

    rows = []
    for index, sample in enumerate(tqdm(scored, desc="anomaly maps", unit="img", leave=False,
                                        disable=not runner.progress or None)):
        split = "validation" if index < n_val else sample.split
        with timing.stage("maps"):
            full = full_size_map(raws, index, dataset_ad2.image_size(sample.path))
            model_io.write_map_tiff(map_path(category_dir, sample), full)
        rows.append({"relative_path": sample.relative_path, "split": split, "label": sample.label,
                     "lighting": sample.lighting, "image_score": float(image_scores[index])})
    _write_scores_csv(category_dir / "scores.csv", rows)
    embeddings = np.concatenate([raw.embeddings for raw in raws], axis=1)
    with model_io.atomic_path(category_dir / "embeddings.npy") as temporary:
        np.save(temporary, embeddings.astype(np.float16))

    val_maps = [map_path(category_dir, s) for s in validation]
    model = CategoryModel(data.name, scales, image_threshold=metrics.mean_plus_k_std(image_scores[:n_val]),
                          pixel_threshold=metrics.mean_plus_k_std(val_maps),
                          settings=model_settings(config, method))
    model.save(category_dir / "model")
    return model


def _write_scores_csv(path: Path, rows: list[dict]) -> None:
    with model_io.atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["relative_path", "split", "label", "lighting", "image_score"])
        writer.writeheader()
        writer.writerows(rows)


def read_scores_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [dict(row, label=int(row["label"]), image_score=float(row["image_score"]))
                for row in csv.DictReader(handle)]


PRELOAD_BYTES = 1 << 30  # maps of a category smaller than this (as float16) are read once, not once per metric


def _in_memory_if_small(paths: list[Path], samples: Sequence[dataset_ad2.Sample]) -> list:
    """The saved maps as float16 arrays when they fit in ``PRELOAD_BYTES``, else their paths.

    Several metrics each pass over all maps; decoding small maps once saves that, while
    AD 2-scale categories stay streamed from disk one map at a time.
    """
    total = sum(2 * h * w for h, w in (dataset_ad2.image_size(s.path) for s in samples))
    return [model_io.read_map(path, np.float16) for path in paths] if total <= PRELOAD_BYTES else paths


def evaluate_category(data: dataset_ad2.CategoryData, category_dir: Path) -> CategoryOutcome:
    """All metrics of a category from its saved scores and maps alone (no model needed)."""
    rows = read_scores_csv(category_dir / "scores.csv")
    by_path = {s.relative_path: s for s in data.test_public}
    validation = [r for r in rows if r["split"] == "validation"]
    test = [r for r in rows if r["split"] == "test_public"]
    missing = [r["relative_path"] for r in test if r["relative_path"] not in by_path]
    if missing:
        raise dataset_ad2.DatasetError(f"{category_dir / 'scores.csv'} lists test images that are not in the "
                                       f"dataset any more, e.g. {missing[0]}; rerun with --FORCE=true.")
    samples = [by_path[r["relative_path"]] for r in test]
    scores = np.array([r["image_score"] for r in test])
    labels = np.array([r["label"] for r in test])
    val_scores = np.array([r["image_score"] for r in validation])
    maps = _in_memory_if_small([map_path(category_dir, s) for s in samples], samples)
    masks = [s.mask_path for s in samples]
    val_maps = [category_dir / "maps" / Path(r["relative_path"]).with_suffix(".tiff") for r in validation]

    image_threshold = metrics.mean_plus_k_std(val_scores) if len(val_scores) else float("nan")
    pixel_threshold = metrics.mean_plus_k_std(val_maps) if val_maps else float("nan")
    pro = metrics.au_pro_multi(maps, masks, FPR_LIMITS, num_bins=PRO_BINS)
    result = {
        "image_auroc": metrics.image_auroc(scores, labels),
        "image_ap": metrics.image_ap(scores, labels),
        "class_f1": metrics.class_f1(scores, labels, image_threshold),
        "au_pro_0.05": pro[0.05],
        "au_pro_0.30": pro[0.3],
        "seg_f1": metrics.seg_f1(maps, masks, pixel_threshold),
        "by_lighting": metrics.by_lighting([s.lighting for s in samples], labels, scores, maps, masks,
                                           fpr_limit=0.05, num_bins=PRO_BINS),
        "n_train": len(data.train),
        "n_test_good": int((labels == 0).sum()),
        "n_test_bad": int((labels == 1).sum()),
        "seconds": model_io.read_json(category_dir / "fit.json")["seconds"] if (category_dir / "fit.json").is_file() else float("nan"),
    }
    embeddings = None
    embedding_file = category_dir / "embeddings.npy"
    if embedding_file.is_file():
        stored = np.load(embedding_file).astype(np.float32)
        kind = np.array([0] * len(validation) + [1 + r["label"] for r in test])
        embeddings = (stored, kind)
    losses = model_io.read_json(category_dir / "fit.json")["losses"] if (category_dir / "fit.json").is_file() else []
    return CategoryOutcome(result, {"validation": {"scores": val_scores}, "test_public": {"scores": scores, "labels": labels}},
                           image_threshold, metrics.pro_curve(maps, masks, num_bins=PRO_BINS), embeddings, losses)


# -- a whole run -----------------------------------------------------------------------------------
REPORT_FILES = ("performance_summary.txt", "results.csv", "metrics.json", "config.json", "roc_curves.png",
                "anomaly_scores.png", "sample_detections.png", "feature_analysis.png", "pro_curves.png",
                "training_loss.png")


def is_finished(category_dir: Path, config: Config, method: Method) -> bool:
    """True when ``category_dir`` holds a complete result made with the same model settings."""
    model_file = category_dir / "model" / "model.json"
    if not (model_file.is_file() and (category_dir / "scores.csv").is_file()):
        return False
    saved = model_io.read_json(model_file).get("settings", {})
    return saved == model_settings(config, method)


def model_settings(config: Config, method: Method) -> dict:
    return {name: getattr(config, name) for name in MODEL_SETTINGS} | {"METHOD": method.name}


def run(config: Config, method: Method | None = None, *, backbone: torch.nn.Module | None = None,
        progress: bool = True) -> dict[str, dict]:
    """Run every category of ``config``; returns ``{category: metrics}`` and writes ``RESULTS_DIR``.

    ``backbone``: an already built ``Dinov2Model`` (tests pass a tiny one); otherwise
    ``config.BACKBONE`` is loaded.
    """
    method = method or Method()
    if config.PREDICT:
        predict(config, method, backbone=backbone, progress=progress)
        return {}
    results_dir = Path(config.RESULTS_DIR)
    started = dt.datetime.now()
    history = results_dir / "history" / started.strftime("%Y%m%d-%H%M%S")
    for name in REPORT_FILES:
        _archive(results_dir / name, history / name)
    notes: list[str] = []
    skipped_files: list[tuple[str, str]] = []
    outcomes: dict[str, CategoryOutcome] = {}
    runner: Runner | None = None
    for category in config.CATEGORIES:
        with timing.stage("load"):
            data, unreadable = _readable_only(dataset_ad2.load_category(config.DATA_ROOT, category))
        skipped_files += unreadable
        category_dir = results_dir / category
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if config.EVALUATE_ONLY:
                if not (category_dir / "scores.csv").is_file():
                    raise PipelineError(f"EVALUATE_ONLY: no saved scores for {category!r} in {category_dir}; "
                                            "run without --EVALUATE_ONLY first.")
            elif is_finished(category_dir, config, method) and not config.FORCE:
                log.info("%s: finished earlier with the same settings; reusing %s (--FORCE=true reruns it)",
                         category, category_dir)
                if config.EXPORT_SUBMISSION:
                    runner = runner or Runner(config, method, backbone=backbone, progress=progress)
                    export_submission(runner, CategoryModel.load(category_dir / "model"), data, results_dir, notes)
            else:
                _archive(category_dir, history / category)
                runner = runner or Runner(config, method, backbone=backbone, progress=progress)
                start = time.perf_counter()
                torch.manual_seed(config.SEED)
                model = fit_and_score_category(runner, data, category_dir, notes)
                model_io.write_json_atomic(category_dir / "fit.json", {
                    "seconds": time.perf_counter() - start,
                    "losses": model.scales[0].losses if len(model.scales) == 1 else [s.losses for s in model.scales]})
                if config.EXPORT_SUBMISSION:
                    export_submission(runner, model, data, results_dir, notes)
            with timing.stage("metrics"):
                outcome = evaluate_category(data, category_dir)
        notes += [f"{category}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)]
        outcomes[category] = outcome
        model_io.write_json_atomic(category_dir / "metrics.json", outcome.metrics)
        m = outcome.metrics
        log.info("%-12s image AUROC %.4f | AU-PRO@0.05 %.4f | SegF1 %.4f | %d train, %d good, %d bad | %.1f s",
                 category, m["image_auroc"], m["au_pro_0.05"], m["seg_f1"], m["n_train"], m["n_test_good"],
                 m["n_test_bad"], m["seconds"])
    with timing.stage("reports"):
        write_reports(results_dir, outcomes, config, method, notes, skipped_files, started)
    return {category: outcome.metrics for category, outcome in outcomes.items()}


def _archive(path: Path, destination: Path) -> None:
    """Move an earlier run's output to ``results/history/<timestamp>/`` instead of overwriting it."""
    if path.exists():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(destination))


def _readable_only(data: dataset_ad2.CategoryData) -> tuple[dataset_ad2.CategoryData, list[tuple[str, str]]]:
    """Drop unreadable images (listed in the summary) rather than stopping a long run."""
    skipped: list[tuple[str, str]] = []
    for split in dataset_ad2.SPLITS:
        readable, bad = dataset_ad2.check_readable(data.split(split))
        setattr(data, split, readable)
        skipped += [(str(path), reason) for path, reason in bad]
    if not data.train:
        raise dataset_ad2.DatasetError(f"{data.root}/train/good has no readable image; cannot fit a model.")
    return data, skipped


def write_reports(results_dir: Path, outcomes: dict[str, CategoryOutcome], config: Config, method: Method,
                  notes: list[str], skipped_files: list[tuple[str, str]], started: dt.datetime) -> None:
    """The top-level results: summary, CSV, JSON, config and plots."""
    categories = {name: outcome.metrics for name, outcome in outcomes.items()}
    config_dict = config.to_dict() | {"METHOD": method.name}
    config.save(results_dir / "config.json")
    reporting.write_metrics_json(results_dir / "metrics.json", categories, config_dict)
    reporting.write_results_csv(results_dir / "results.csv", categories)
    test_scores = {n: (o.scores["test_public"]["scores"], o.scores["test_public"]["labels"]) for n, o in outcomes.items()}
    plots.plot_roc_curves(results_dir / "roc_curves.png", test_scores)
    plots.plot_score_distributions(results_dir / "anomaly_scores.png", test_scores,
                                   {n: o.image_threshold for n, o in outcomes.items()})
    plots.plot_pro_curves(results_dir / "pro_curves.png", {n: o.pro_curve for n, o in outcomes.items()})
    plots.plot_feature_analysis(results_dir / "feature_analysis.png",
                                {n: o.embeddings for n, o in outcomes.items() if o.embeddings is not None})
    plots.plot_training_loss(results_dir / "training_loss.png", {n: o.losses for n, o in outcomes.items()})
    examples = []
    for name in outcomes:
        examples += detection_examples(config, name, results_dir / name, count=1)
    plots.plot_sample_detections(results_dir / "sample_detections.png", examples)
    text = reporting.format_summary(categories, config=config_dict, warnings=notes, skipped_files=skipped_files,
                                    code_version=f"{__version__} ({method.name})",
                                    started=started.isoformat(timespec="seconds"),
                                    finished=dt.datetime.now().isoformat(timespec="seconds"),
                                    title=f"AnomalyVFM {method.name} performance summary")
    reporting.write_summary(results_dir / "performance_summary.txt", text)


def detection_examples(config: Config, category: str, category_dir: Path, count: int) -> list[dict]:
    """The ``count`` best- and worst-scored defective test images (and the top false alarm) for plotting."""
    rows = [r for r in read_scores_csv(category_dir / "scores.csv") if r["split"] == "test_public"]
    bad = sorted((r for r in rows if r["label"] == 1), key=lambda r: r["image_score"])
    good = sorted((r for r in rows if r["label"] == 0), key=lambda r: r["image_score"])
    picks = [("best", r) for r in bad[::-1][:count]] + [("worst", r) for r in bad[:count]]
    picks += [("false alarm?", r) for r in good[::-1][:1]]
    root = dataset_ad2.category_root(config.DATA_ROOT, category)
    threshold = model_io.read_json(category_dir / "model" / "model.json")["pixel_threshold"]
    examples = []
    for kind, row in picks:
        relative = Path(row["relative_path"])
        mask_file = root / "test_public" / "ground_truth" / "bad" / f"{relative.stem}_mask.png"
        examples.append({
            "title": f"{category} {kind}: {relative.name} (score {row['image_score']:.2f})",
            "image": dataset_ad2.load_image(root / relative),
            "mask": dataset_ad2.load_mask(mask_file) if row["label"] == 1 else None,
            "anomaly_map": model_io.read_map(category_dir / "maps" / relative.with_suffix(".tiff")),
            "threshold": threshold})
    return examples


def export_submission(runner: Runner, model: CategoryModel, data: dataset_ad2.CategoryData, results_dir: Path,
                      notes: list[str]) -> None:
    """Official MVTec AD 2 upload files: float16 TIFF maps at the original size and {0, 255} PNG masks."""
    for split in ("test_private", "test_private_mixed"):
        samples = data.split(split)
        if not samples:
            notes.append(f"{data.name}: EXPORT_SUBMISSION found no {split} images under {data.root}.")
            continue
        for folder in ("anomaly_images", "anomaly_images_thresholded"):
            _archive(results_dir / folder / data.name / split,
                     results_dir / "history" / dt.datetime.now().strftime("%Y%m%d-%H%M%S") / folder / data.name / split)
        raws = raw_scores(runner, model.scales, [s.path for s in samples], f"export {split}")
        for index, sample in enumerate(samples):
            full = full_size_map(raws, index, dataset_ad2.image_size(sample.path))
            model_io.write_map_tiff(results_dir / "anomaly_images" / data.name / split / f"{sample.stem}.tiff", full)
            model_io.write_mask_png(results_dir / "anomaly_images_thresholded" / data.name / split / f"{sample.stem}.png",
                                    full > model.pixel_threshold)


def predict(config: Config, method: Method, *, backbone: torch.nn.Module | None = None, progress: bool = True) -> Path:
    """Score new images (a file or a folder) with a saved category model; returns the output folder."""
    if len(config.CATEGORIES) != 1:
        raise PipelineError(f"PREDICT needs exactly one category, e.g. --CATEGORIES=can; got {config.CATEGORIES}.")
    category = config.CATEGORIES[0]
    model = CategoryModel.load(Path(config.RESULTS_DIR) / category / "model")
    if model.settings.get("METHOD") != method.name:
        raise PipelineError(f"The saved {category} model was made by {model.settings.get('METHOD')}, not {method.name}; "
                         "predict with the script that trained it.")
    paths = _prediction_inputs(Path(config.PREDICT))
    # The saved model fixes backbone, layers, image size and scorer; the run's config fixes the rest.
    run_config = config.replace(**{k: v for k, v in model.settings.items() if k in MODEL_SETTINGS})
    runner = Runner(run_config, method, backbone=backbone, progress=progress)
    raws = raw_scores(runner, model.scales, paths, "predict")
    scores = fused_scores(method, model.scales, raws)
    out = Path(config.RESULTS_DIR) / "predictions" / f"{category}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    rows = []
    for index, path in enumerate(paths):
        image = dataset_ad2.load_image(path)
        full = full_size_map(raws, index, image.shape[:2])
        model_io.write_map_tiff(out / "maps" / f"{path.stem}.tiff", full)
        model_io.write_mask_png(out / "masks" / f"{path.stem}.png", full > model.pixel_threshold)
        plots.save_overlay(out / "overlays" / f"{path.stem}.png", image, full, model.pixel_threshold)
        rows.append({"file": str(path), "image_score": f"{scores[index]:.6f}",
                     "image_threshold": f"{model.image_threshold:.6f}",
                     "anomalous": str(bool(scores[index] >= model.image_threshold)).lower(),
                     "anomalous_pixel_fraction": f"{float((full > model.pixel_threshold).mean()):.6f}"})
    with model_io.atomic_path(out / "predictions.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info("%d predictions for %s written to %s", len(rows), category, out)
    return out


def _prediction_inputs(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if target.is_dir():
        paths = sorted(p for p in target.iterdir() if p.suffix.lower() in dataset_ad2.IMAGE_EXTENSIONS)
        if paths:
            return paths
        raise FileNotFoundError(f"PREDICT={target}: the folder holds no images ({', '.join(dataset_ad2.IMAGE_EXTENSIONS)}).")
    raise FileNotFoundError(f"PREDICT={target}: no such file or folder.")
