"""Detection quality of AnomalyVFM against its baselines, on every dataset under ../shared/datasets.

    python benchmarks/run_quality.py                                   # every dataset, IMAGE_SIZE 224 and 448
    python benchmarks/run_quality.py --image-sizes=224 --datasets=tire_ad2 --rows="v1.1 (default),kNN full bank"

Each dataset's backbone tokens are computed once per image size and cached
(``benchmarks/token_cache.py``); every row then replays the same tokens through the product's
own code (``anomalyvfm.patch_model``, ``anomalyvfm.training``): heads training on synthetic
samples, scorer fit, patch distances, anomaly maps at the original image size, metrics.
So a row costs seconds to minutes, not a backbone pass, and every row sees identical inputs.
Validation and test tokens are also cached at each further scoring phase the chosen rows use
(``SCORING_PHASES``: the inputs cropped half a patch in, once per shift), and a row scores them as a
run does: phases stacked, maps moved back and averaged, the image score the mean of the phases' peaks.

Every dataset is measured twice: as it is (regular light), and as ``<dataset>+lighting``, its
lighting-stressed copy (``benchmarks/lighting_stress.py``: each test image re-lit the way MVTec
AD 2's test set is, train and validation untouched; generated once into benchmarks/.cache/stress/,
never committed), where AD 2's lighting changes are, and where the heads' training is meant to pay.

Rows: the current defaults of ``anomaly_vfm_v11_lora.py``; the same with untrained heads
(``--EPOCHS=0``); the AnomalyDINO reference (cosine 1-NN against the FULL memory bank of raw
tokens); and the candidates that decided the defaults (docs/Heads_and_Scoring.md). The
stressed copies run ``STRESS_ROWS`` (the full bank would take hours there).
Image score for every row: the peak patch distance above the image's median (``peak_score``), as the
product takes it (from the image score's own plain-cosine search where a whitened kNN has one,
``KNN_IMAGE_BANK_SIZE``). Maps: centred on the validation images' median patch distance as the
product's (``CENTRE_MAPS``), except in the row that turns it off. SegF1 threshold: validation
maps' mean + 3 std (the AD 2 paper's baseline rule). Writes benchmarks/quality.json and
benchmarks/quality.md; rows already in quality.json for other datasets, sizes or rows are kept,
so ``--rows`` / ``--datasets`` / ``--image-sizes`` can complete a table step by step (each row
records the commit it was measured at).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
import render_tables  # noqa: E402
from render_tables import fmt  # noqa: E402
import token_cache  # noqa: E402
from provenance import code_commit  # noqa: E402
from anomalyvfm import metrics, timing  # noqa: E402
from anomalyvfm.config import PATCH_SIZE, is_image_size  # noqa: E402
from anomalyvfm.backbone import FeatureExtractor, load_backbone, normalize, to_input  # noqa: E402
from anomalyvfm.heads import StackedLoRAHeads  # noqa: E402
from anomalyvfm.patch_model import HeadSettings, fit_heads_and_scorer, needs_synthetic_samples, sample_tokens  # noqa: E402
from anomalyvfm.scoring import MAX_FIT_TOKENS, Scorer  # noqa: E402
from anomalyvfm.scoring import (anomaly_map, centred_grid, clipping_is_normal, map_median_of,  # noqa: E402
                                patch_grid, peak_score, stacked_phases)
from anomalyvfm.synthetic import make_synthetic_samples  # noqa: E402
from anomalyvfm.training import TrainingTokens, training_tokens_of  # noqa: E402

SHARED = ROOT.parent / "shared"
SHARED_BACKBONE = SHARED / "models" / "dinov2-small-imgfocus"  # the probes' and --backbone's default
PRO_BINS = 20_000
STRESS_SUFFIX = render_tables.STRESS_SUFFIX  # one name, shared with the tables


# Row name -> settings that differ from the defaults.
ROWS: dict[str, dict] = {
    "v1.1 (default)": {},
    "v1.1 --EPOCHS=0": {"EPOCHS": 0},
    # Each image scored once, as it is: the default until 1.7.0.
    "v1.1 --SCORING_PHASES=1": {"SCORING_PHASES": 1},
    # Also cropped right and down: twice the default's backbone passes per validation and test image.
    "v1.1 --SCORING_PHASES=4": {"SCORING_PHASES": 4},
    # Every block from 5 to 9: the FEATURE_LAYERS candidate of benchmarks/layer_probe.py with the best mean among
    # those without a measured loss on either shared dataset in its untrained one-phase rows; not the default, as
    # its full row loses on the magnetic tiles (docs/Feature_Layers.md). Scored on its own tokens.
    "v1.1 --FEATURE_LAYERS=5,6,7,8,9": {"FEATURE_LAYERS": [5, 6, 7, 8, 9]},
    # Clipped highlights count as fully as any patch: the default until 1.5.0.
    "v1.1 --DISCOUNT_SATURATED=false": {"DISCOUNT_SATURATED": False},
    # The whitening also spreads along the synthetic lighting and noise moves (heads trained, as the default).
    "v1.1 --KNN_NUISANCE_WEIGHT=1": {"KNN_NUISANCE_WEIGHT": 1.0},
    # Whitened maps, image score from the same whitened distances (no search of its own).
    "v1.1 --KNN_IMAGE_BANK_SIZE=0": {"KNN_IMAGE_BANK_SIZE": 0},
    # Plain cosine for maps and image score: the default until whitening replaced it.
    "v1.1 --KNN_SHRINKAGE=1": {"KNN_SHRINKAGE": 1.0},
    "v1.1 --KNN_SHRINKAGE=1 --EPOCHS=0": {"KNN_SHRINKAGE": 1.0, "EPOCHS": 0},
    "v1.1 --KNN_SHRINKAGE=1 --CENTRE_MAPS=false": {"KNN_SHRINKAGE": 1.0, "CENTRE_MAPS": False},
    # The AnomalyDINO references: plain cosine on the raw tokens, every patch counted as it is, each image once.
    "kNN full bank": {"SCORER": "knn", "KNN_BANK_SIZE": 0, "EPOCHS": 0, "KNN_SHRINKAGE": 1.0,
                      "DISCOUNT_SATURATED": False, "SCORING_PHASES": 1},
    "kNN 20k random bank": {"SCORER": "knn", "KNN_BANK_SIZE": 20_000, "KNN_BANK_SAMPLING": "random", "EPOCHS": 0,
                            "KNN_SHRINKAGE": 1.0, "DISCOUNT_SATURATED": False, "SCORING_PHASES": 1},
    "kNN 10k coreset": {"SCORER": "knn", "KNN_BANK_SIZE": 10_000, "KNN_BANK_SAMPLING": "coreset", "KNN_SHRINKAGE": 1.0},
    "Gaussian (untrained heads)": {"SCORER": "mahalanobis", "EPOCHS": 0},
    "Gaussian (trained heads)": {"SCORER": "mahalanobis"},
}


STRESS_ROWS = ("v1.1 (default)", "v1.1 --EPOCHS=0", "v1.1 --SCORING_PHASES=1", "v1.1 --SCORING_PHASES=4",
               "v1.1 --FEATURE_LAYERS=5,6,7,8,9",
               "v1.1 --DISCOUNT_SATURATED=false", "v1.1 --KNN_NUISANCE_WEIGHT=1", "v1.1 --KNN_IMAGE_BANK_SIZE=0",
               "v1.1 --KNN_SHRINKAGE=1", "v1.1 --KNN_SHRINKAGE=1 --EPOCHS=0", "v1.1 --KNN_SHRINKAGE=1 --CENTRE_MAPS=false",
               "Gaussian (untrained heads)", "Gaussian (trained heads)")
STRESS_IMAGES = 800  # re-lit test images per stressed copy, at most: all six lightings of small test sets, one of large
AUROC_GAP_SEED = 0  # the scene bootstrap of the pooled-minus-regular image AUROC (``pooled_auroc_gap``)


def encoder(extractor: FeatureExtractor, illumination) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """Patch grids ``[gh, gw, D]`` of in-memory images ``[3, h, w]`` in [0, 1], through the run's
    illumination projection (an ``IlluminationRange``) and normalisation; one image at a time, as
    sizes may differ between images."""
    return lambda images: [extractor(normalize(illumination.apply(image[None]))).patches[0] for image in images]


def ground_truth_masks(test: token_cache.SplitTokens) -> list[np.ndarray | None]:
    """The test images' ground truth ``[H, W]`` bool (None for good images), decoded once per dataset."""
    return [None if s.mask_path is None else dataset_ad2.read_mask(s.mask_path) for s in test.samples]


def fit_row(train: token_cache.SplitTokens, synthetic: TrainingTokens | None, settings
            ) -> tuple[StackedLoRAHeads, Scorer, list[float], torch.Tensor]:
    """The heads and patch scorer ``settings`` give on cached training tokens, fitted as
    ``fit.Runner.fit_scale`` does: ``(heads, scorer, loss per epoch, the Gaussian's fit sample)``."""
    torch.manual_seed(settings.SEED)  # as fit_category: the heads' initialisation is the first draw
    normal_sample = sample_tokens(train.patches, MAX_FIT_TOKENS, settings.SEED)
    heads, scorer, losses = fit_heads_and_scorer(
        train.patches, normal_sample, synthetic if needs_synthetic_samples(settings) else None, scorer=settings.SCORER,
        knn_bank_size=settings.KNN_BANK_SIZE, knn_bank_sampling=settings.KNN_BANK_SAMPLING,
        knn_shrinkage=settings.KNN_SHRINKAGE, knn_nuisance_weight=settings.KNN_NUISANCE_WEIGHT,
        knn_image_bank_size=settings.KNN_IMAGE_BANK_SIZE,
        heads=HeadSettings(settings.LORA_RANK, settings.LORA_ALPHA, settings.EPOCHS, settings.LEARNING_RATE,
                           settings.BATCH_SIZE, settings.SEED), device=torch.device("cpu"))
    return heads, scorer, losses, normal_sample


def distance_grids(heads: StackedLoRAHeads, scorer: Scorer, patches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per image the patch distances ``[gh, gw]`` of its token grid ``[gh, gw, D]``, through ``heads`` and ``scorer``
    (the map's only; ``scored_grids`` adds the image score's)."""
    return [scorer.distances(heads.embed(g.reshape(-1, g.shape[-1]))).reshape(g.shape[:2]) for g in patches]


@dataclass
class Grids:
    """Per image the map's patch distances ``[gh, gw]`` and the image score's: the same grid unless the
    scorer searches for the image score on its own (``NearestNeighbourScorer.image_distances``)."""

    maps: list[torch.Tensor]
    images: list[torch.Tensor]

    def peaks(self) -> np.ndarray:
        """``[N]`` image scores, as ``fit.Runner`` computes them."""
        return np.array([peak_score(grid) for grid in self.images])


def scored_grids(heads: StackedLoRAHeads, scorer: Scorer, patches: list[torch.Tensor],
                 saturated: list[torch.Tensor] | None = None) -> Grids:
    """``Grids`` of token grids ``[gh, gw, D]`` through ``heads`` and ``scorer`` (as ``fit.Runner._score_batch``),
    discounted by each image's ``saturated`` shares ``[gh, gw]`` when given (``DISCOUNT_SATURATED``)."""
    maps, images = [], []
    for index, grid in enumerate(patches):
        share = None if saturated is None else saturated[index]
        embedded = heads.embed(grid.reshape(-1, grid.shape[-1]))
        maps.append(patch_grid(scorer.distances(embedded).reshape(grid.shape[:2]), share))
        image_distances = scorer.image_distances(embedded)
        images.append(maps[-1] if image_distances is None else patch_grid(image_distances.reshape(grid.shape[:2]), share))
    return Grids(maps, images)


def discounts_saturated(train: token_cache.SplitTokens, settings) -> bool:
    """Whether the row discounts saturated patches: ``DISCOUNT_SATURATED`` and the training images clip, as
    ``fit.Runner.fit_scale`` decides."""
    return settings.DISCOUNT_SATURATED and clipping_is_normal(train.saturated)


def saturation(split: token_cache.SplitTokens, train: token_cache.SplitTokens, settings) -> list[torch.Tensor] | None:
    """The split's saturated shares when the row discounts them (``discounts_saturated``), else None."""
    return split.saturated if discounts_saturated(train, settings) else None


def fitted_phase_grids(extractor: FeatureExtractor, tokens: dict[str, token_cache.SplitTokens], settings,
                       splits: Sequence[str] = ("validation", "test_public")) -> dict[str, list[Grids]]:
    """``{split: Grids at each of settings.SCORING_PHASES phases}`` (``phase_grids``) of the row ``settings`` give
    on cached ``tokens``: synthetic samples (cached, when the row uses them), heads and scorer fitted as
    ``evaluate_row`` does."""
    synthetic = None
    with torch.inference_mode():
        if needs_synthetic_samples(settings):
            synthetic = synthetic_tokens(extractor, tokens["train"], settings.IMAGE_SIZE, settings.SYNTHETIC_SAMPLES,
                                         settings.SEED)
    heads, scorer, _, _ = fit_row(tokens["train"], synthetic, settings)
    discount = discounts_saturated(tokens["train"], settings)
    with torch.inference_mode():
        return {split: phase_grids(heads, scorer, tokens[split], discount, settings.SCORING_PHASES) for split in splits}


def fitted_grids(extractor: FeatureExtractor, tokens: dict[str, token_cache.SplitTokens], settings
                 ) -> tuple[Grids, Grids]:
    """The validation and test images' ``Grids`` of the row ``settings`` give on cached ``tokens``
    (``fitted_phase_grids``), scored at the first phase only (the image itself, whatever ``SCORING_PHASES`` says)."""
    found = fitted_phase_grids(extractor, tokens, settings.replace(SCORING_PHASES=1))
    return found["validation"][0], found["test_public"][0]


def phases_needed(rows: Iterable[str]) -> int:
    """The most scoring phases any of ``rows`` (``ROWS`` names) scores: the phases their tokens must be cached with."""
    defaults = v11.default_config()
    return max(defaults.replace(**ROWS[row]).SCORING_PHASES for row in rows)


def parse_rows(text: str) -> list[str]:
    """``--rows``: comma-separated ``ROWS`` names, where a name may hold commas itself
    (``v1.1 --FEATURE_LAYERS=5,6,7,8,9``); ``ValueError`` naming what is not a row."""
    rows, pieces = [], [piece.strip() for piece in text.split(",")]
    while pieces:
        taken = next((count for count in range(len(pieces), 0, -1) if ",".join(pieces[:count]) in ROWS), 0)
        if not taken:
            if pieces[0]:
                raise ValueError(f"unknown row {pieces[0]!r} in --rows; valid: {list(ROWS)}")
            taken = 1  # an empty piece (a trailing comma)
        else:
            rows.append(",".join(pieces[:taken]))
        pieces = pieces[taken:]
    return rows


def rows_by_layers(rows: Iterable[str]) -> dict[tuple[int, ...], list[str]]:
    """``rows`` (``ROWS`` names) grouped by the ``FEATURE_LAYERS`` they encode with, in order of first use: each
    group needs its own tokens."""
    defaults = v11.default_config()
    groups: dict[tuple[int, ...], list[str]] = {}
    for row in rows:
        groups.setdefault(tuple(defaults.replace(**ROWS[row]).FEATURE_LAYERS), []).append(row)
    return groups


def synthetic_tokens(extractor: FeatureExtractor, train: token_cache.SplitTokens, image_size: int, count: int,
                     seed: int) -> TrainingTokens:
    """The synthetic samples' training tokens, made by the product's own code (as ``fit.Runner.fit_scale``); cached per
    dataset, size, count, seed, recipe and the backbone and blocks that encoded ``train``."""
    import anomalyvfm.illumination as illumination_module
    import anomalyvfm.synthetic as synthetic_module
    import anomalyvfm.training as training_module
    from anomalyvfm.illumination import IlluminationRange

    recipe = hashlib.sha1(b"".join(Path(m.__file__).read_bytes() for m in
                                   (synthetic_module, illumination_module, training_module))).hexdigest()[:10]
    # The training images' CLS tokens stand for the backbone and FEATURE_LAYERS the samples are encoded with.
    encoded_by = hashlib.sha1(train.cls.numpy().tobytes()).hexdigest()[:8]
    key = f"{train.samples[0].category}-{image_size}-{len(train.samples)}-{count}-{seed}-{recipe}-{encoded_by}"
    file = token_cache.CACHE_DIR / f"synthetic-{key}.pt"
    if file.is_file():
        return TrainingTokens(**torch.load(file, weights_only=True))
    load = lambda i: to_input(dataset_ad2.load_image(train.samples[i].path), train.input_sizes[i])
    samples = make_synthetic_samples(load, len(train.samples), count, seed)
    illumination = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields)  # as fit.Runner.fit_scale
    training = training_tokens_of(samples, encoder(extractor, illumination), train.patches, extractor.patch_size)
    token_cache.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(vars(training), file)
    return training


@dataclass
class RowOutputs:
    """What a row gives on cached tokens, as a run would write it: the validation and test images' anomaly
    maps ``[H, W]`` at their original sizes (centred as the product's when ``CENTRE_MAPS``), the test and validation
    images' scores ``[N]`` and ``[N_val]``, the loss per epoch, and the seconds spent on patch distances and on maps."""

    val_maps: list[np.ndarray]
    test_maps: list[np.ndarray]
    scores: np.ndarray
    val_scores: np.ndarray
    losses: list[float]
    score_seconds: float
    map_seconds: float


def phase_grids(heads: StackedLoRAHeads, scorer: Scorer, split: token_cache.SplitTokens, discount: bool,
                phases: int) -> list[Grids]:
    """``Grids`` of ``split`` at each of its first ``phases`` scoring phases (the image itself first, then
    ``split.phases``), discounted by the saturated shares when ``discount``. Raises ``ValueError`` when the split was
    cached with fewer phases (``token_cache.pipeline_tokens(phases=...)``)."""
    if phases - 1 > len(split.phases):
        raise ValueError(f"SCORING_PHASES {phases} needs tokens cached with phases={phases}; these have "
                         f"{1 + len(split.phases)}")
    sources = [(split.patches, split.saturated)] + [(p.patches, p.saturated) for p in split.phases[:phases - 1]]
    return [scored_grids(heads, scorer, patches, shares if discount else None) for patches, shares in sources]


def stacked_maps(phases: list[Grids]) -> list[torch.Tensor]:
    """Per image the map's grid as ``fit.Runner._score_batch`` keeps it (``scoring.stacked_phases``): ``[gh, gw]``
    for one phase, else ``[P, gh, gw]``; ``phases[0]`` sets each image's own grid."""
    return [stacked_phases([grids.maps[i] for grids in phases], own.shape) for i, own in enumerate(phases[0].maps)]


def row_outputs(tokens: dict[str, token_cache.SplitTokens], synthetic: TrainingTokens | None, settings) -> RowOutputs:
    """Fit with ``settings`` on cached tokens (``timing`` collects the fit's stages), score validation and test at
    ``settings.SCORING_PHASES`` phases (the tokens cached with at least as many)."""
    train, validation, test = tokens["train"], tokens["validation"], tokens["test_public"]
    timing.reset()
    heads, scorer, losses, _ = fit_row(train, synthetic, settings)
    start = time.perf_counter()
    discount = discounts_saturated(train, settings)
    # Both splits get the image score's search too, as in a run (validation peaks feed the score fusion).
    val_phases = phase_grids(heads, scorer, validation, discount, settings.SCORING_PHASES)
    val_grids = stacked_maps(val_phases)
    test_phases = phase_grids(heads, scorer, test, discount, settings.SCORING_PHASES)
    score_seconds = time.perf_counter() - start
    scores = np.mean([grids.peaks() for grids in test_phases], axis=0)  # as fit.Runner: the phases' mean peak
    val_scores = np.mean([grids.peaks() for grids in val_phases], axis=0)
    test_grids = stacked_maps(test_phases)
    start = time.perf_counter()
    # As fit.fit_category: maps centred on the validation images' median; image scores from the raw grids.
    reference = map_median_of(val_grids)
    centre = (lambda g: centred_grid(g, reference)) if settings.CENTRE_MAPS else (lambda g: g)
    val_maps = [anomaly_map(centre(g), s, o)
                for g, s, o in zip(val_grids, validation.input_sizes, validation.original_sizes)]
    test_maps = [anomaly_map(centre(g), s, o) for g, s, o in zip(test_grids, test.input_sizes, test.original_sizes)]
    return RowOutputs(val_maps, test_maps, scores, val_scores, losses, score_seconds, time.perf_counter() - start)


def evaluate_row(tokens: dict[str, token_cache.SplitTokens], masks: list[np.ndarray | None],
                 synthetic: TrainingTokens | None, settings) -> dict:
    """Fit with ``settings`` on cached tokens, score validation and test (``row_outputs``), compute every metric.

    ``masks``: ``ground_truth_masks(tokens["test_public"])``, decoded once per dataset.
    """
    test = tokens["test_public"]
    out = row_outputs(tokens, synthetic, settings)
    labels = np.array([s.label for s in test.samples])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        pro = metrics.au_pro_multi(out.test_maps, masks, (0.05, 0.3), num_bins=PRO_BINS)
        threshold = metrics.mean_plus_k_std(out.val_maps)
        lightings = [s.lighting for s in test.samples]
        scenes = [dataset_ad2.scene_of(s.relative_path) for s in test.samples]
        groups = metrics.by_lighting(lightings, labels, out.scores, out.test_maps, masks, num_bins=PRO_BINS,
                                     threshold=threshold, scenes=scenes)
        return {"image_auroc": metrics.image_auroc(out.scores, labels), "image_ap": metrics.image_ap(out.scores, labels),
                "au_pro_0.05": pro[0.05], "au_pro_0.30": pro[0.3],
                "seg_f1": metrics.seg_f1(out.test_maps, masks, threshold), "by_lighting": groups,
                **pooled_auroc_gap(out.scores, labels, lightings, scenes),
                "train_seconds": timing.seconds["training"], "fit_seconds": timing.seconds["fitting"],
                "score_seconds": out.score_seconds, "map_seconds": out.map_seconds, "losses": out.losses}


def pooled_auroc_gap(scores: np.ndarray, labels: np.ndarray, lightings: list[str], scenes: list[str]) -> dict:
    """On a test set with other lights than regular: ``{"image_auroc_gap": ...}``, the image AUROC over all
    test images minus that over the regular-light ones (issue 14's target: within 0.03), with its 95 %
    interval under a bootstrap of the scenes (``metrics.auroc_difference_interval``); else ``{}``."""
    regular = np.array([dataset_ad2.lighting_group(name) == "regular" for name in lightings])
    if regular.all() or not regular.any():
        return {}
    return {"image_auroc_gap": metrics.auroc_difference_interval(scores, labels, np.ones_like(regular), regular,
                                                                 scenes, seed=AUROC_GAP_SEED)}


def stressed_copy(dataset: str, category: str, data_root: Path) -> Path:
    """The lighting-stressed copy of a dataset (``lighting_stress.make_stressed_dataset``), made once."""
    import lighting_stress

    out = token_cache.CACHE_DIR / "stress" / dataset
    if (out / lighting_stress.MANIFEST).is_file():
        return out
    if out.exists():  # an interrupted earlier attempt
        shutil.rmtree(out)
    tests = len(dataset_ad2.load_category(data_root, category).test_public)
    variants = max(1, min(len(lighting_stress.STRESS_LIGHTINGS), STRESS_IMAGES // max(tests, 1)))
    return lighting_stress.make_stressed_dataset(data_root, category, out, variants_per_image=variants)


def parse_case(case: str, root: Path = SHARED / "datasets") -> tuple[str, int]:
    """``(dataset, size)`` of a probe's ``DATASET@SIZE`` argument: a folder under ``root``,
    ``+lighting`` for its stressed copy, SIZE a positive multiple of ``PATCH_SIZE`` (14). Raises ``ValueError``
    naming the valid datasets, or the size's rule, otherwise."""
    names = {name for name, _, _ in datasets_under(root)} if root.is_dir() else set()
    name, _, size = case.partition("@")
    if name.removesuffix(STRESS_SUFFIX) not in names or not size.isdigit():
        raise ValueError(f"{case!r} is not DATASET@SIZE with DATASET one of {sorted(names)} "
                         f"({STRESS_SUFFIX} for its lighting-stressed copy)")
    if not is_image_size(int(size)):
        raise ValueError(f"{case!r}: the size {size} is not a positive multiple of {PATCH_SIZE} (e.g. {name}@448)")
    return name, int(size)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` as ``[0, 1, 2]``: distinct non-negative integers, at least one."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() for part in parts):
        raise ValueError(f"--seeds expects comma-separated non-negative integers such as 0,1,2, got {text!r}")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds expects each seed once, got {text!r}")
    return seeds


def probe_setup(cases: list[str]) -> tuple[list[tuple[str, int]], FeatureExtractor, str]:
    """A probe's ``DATASET@SIZE`` arguments parsed (``parse_case``; ``ValueError`` before any work), and
    the shared backbone's feature extractor at the default FEATURE_LAYERS with the backbone's path."""
    parsed = [parse_case(case) for case in cases]
    backbone = str(SHARED_BACKBONE)
    return parsed, FeatureExtractor(load_backbone(backbone), v11.default_config().FEATURE_LAYERS), backbone


def case_root(dataset: str) -> tuple[str, Path]:
    """``(category, data_root)`` of a ``parse_case`` dataset; a ``+lighting`` dataset's stressed copy is made
    first if needed."""
    base = dataset.removesuffix(STRESS_SUFFIX)
    category, root = next((c, r) for name, c, r in datasets_under(SHARED / "datasets") if name == base)
    return category, (root if dataset == base else stressed_copy(base, category, root))


def case_tokens(extractor: FeatureExtractor, backbone: str, dataset: str, size: int, phases: int = 1,
                layers: Sequence[int] | None = None) -> dict[str, token_cache.SplitTokens]:
    """The cached tokens (``token_cache.pipeline_tokens``) of a ``parse_case`` dataset at ``size`` (``case_root``),
    validation and test with ``phases`` scoring phases, of the blocks ``layers`` (the default ``FEATURE_LAYERS``
    when None; ``extractor`` reads the same, ``extractor_for``)."""
    category, root = case_root(dataset)
    defaults = v11.default_config()
    return token_cache.pipeline_tokens(extractor, str(root), category, backbone, size,
                                       defaults.FEATURE_LAYERS if layers is None else layers,
                                       batch_size=defaults.BATCH_SIZE, phases=phases)


def extractor_for(extractor: FeatureExtractor | None, layers: Sequence[int]) -> FeatureExtractor | None:
    """``extractor``'s backbone reading the blocks ``layers``: ``extractor`` itself when it already does, or when
    it is None (every token cached)."""
    if extractor is None or list(extractor.layers) == list(layers):
        return extractor
    return FeatureExtractor(extractor.backbone, layers)


def datasets_under(root: Path) -> list[tuple[str, str, Path]]:
    """``(dataset, category, data_root)`` for every category of every dataset folder under ``root``."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for category in dataset_ad2.list_categories(folder):
            found.append((folder.name, category, folder))
    return found


def mean_rows(results: list[dict]) -> list[dict]:
    """Per (lighting, image size, row): the mean over the datasets that have it; ``lighting`` is
    "regular" for the datasets as they are and "stressed" for their re-lit copies."""
    keys = ("image_auroc", "au_pro_0.05", "au_pro_0.30", "seg_f1")
    groups: dict[tuple[str, int, str], list[dict]] = {}
    for entry in results:
        lighting = "stressed" if entry["dataset"].endswith(STRESS_SUFFIX) else "regular"
        groups.setdefault((lighting, entry["image_size"], entry["row"]), []).append(entry["metrics"])
    return [{"lighting": lighting, "image_size": size, "row": row, "datasets": len(group),
             **{k: float(np.mean([m[k] for m in group])) for k in keys}}
            for (lighting, size, row), group in groups.items()]


def parse_sizes(text: str) -> list[int]:
    """``--image-sizes`` ("224,448") as integers, each a positive multiple of ``PATCH_SIZE`` (14)."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if not part.isdigit() or not is_image_size(int(part)):
            raise ValueError(f"--image-sizes: {part!r} is not a positive multiple of {PATCH_SIZE} "
                             "(e.g. --image-sizes=224,448)")
        sizes.append(int(part))
    if not sizes:
        raise ValueError("--image-sizes is empty; give one or more sizes, e.g. --image-sizes=448")
    return sizes


def measure_case(default_extractor: FeatureExtractor, backbone: str, category: str, data_root: Path, size: int,
                 rows: Sequence[str], defaults) -> Iterator[tuple[str, dict, float]]:
    """Each of ``rows`` on one category at one size, as it finishes: ``(row, evaluate_row's metrics, seconds)``.

    The backbone's tokens come from the cache (one pass per blocks, split and size); rows that set FEATURE_LAYERS
    are scored on their own blocks' tokens and synthetic samples (``rows_by_layers``). Masks are decoded once."""
    masks = None
    for layers, layer_rows in rows_by_layers(rows).items():
        extractor = extractor_for(default_extractor, layers)
        tokens = token_cache.pipeline_tokens(extractor, str(data_root), category, backbone, size, list(layers),
                                             batch_size=defaults.BATCH_SIZE, phases=phases_needed(layer_rows))
        masks = ground_truth_masks(tokens["test_public"]) if masks is None else masks
        synthetic = None
        for row in layer_rows:
            settings = defaults.replace(IMAGE_SIZE=size, **ROWS[row])
            if needs_synthetic_samples(settings) and synthetic is None:
                with torch.inference_mode():
                    synthetic = synthetic_tokens(extractor, tokens["train"], size, settings.SYNTHETIC_SAMPLES,
                                                 settings.SEED)
            start = time.perf_counter()
            result = evaluate_row(tokens, masks, synthetic, settings)
            yield row, result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets-root", type=Path, default=SHARED / "datasets")
    parser.add_argument("--datasets", default="", help="comma-separated dataset folder names (default: all); "
                        "NAME+lighting alone measures only that dataset's lighting-stressed copy")
    parser.add_argument("--image-sizes", default="224,448")
    parser.add_argument("--backbone", default=str(SHARED_BACKBONE))
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "quality.json")
    parser.add_argument("--lighting-stress", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure each dataset's lighting-stressed copy (default: on)")
    args = parser.parse_args(argv)
    if not args.datasets_root.is_dir():
        print(f"error: --datasets-root {args.datasets_root} does not exist", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    try:
        chosen_rows = parse_rows(args.rows) or list(ROWS)
        sizes = parse_sizes(args.image_sizes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    wanted = {d.strip() for d in args.datasets.split(",") if d.strip()}
    default_extractor = FeatureExtractor(load_backbone(args.backbone), defaults.FEATURE_LAYERS)
    commit = code_commit()
    cases = []
    for dataset, category, data_root in datasets_under(args.datasets_root):
        stressed_only = dataset + STRESS_SUFFIX in wanted and dataset not in wanted
        if wanted and dataset not in wanted and not stressed_only:
            continue
        if not stressed_only:
            cases.append((dataset, category, data_root, chosen_rows))
        if args.lighting_stress or stressed_only:
            stress_rows = [row for row in chosen_rows if row in STRESS_ROWS]
            if stress_rows:
                cases.append((dataset + STRESS_SUFFIX, category, stressed_copy(dataset, category, data_root), stress_rows))
    results = []
    for dataset, category, data_root, rows in cases:
        for size in sizes:
            for row, result, seconds in measure_case(default_extractor, args.backbone, category, data_root, size, rows,
                                                     defaults):
                results.append({"dataset": dataset, "category": category, "image_size": size, "row": row,
                                "settings": ROWS[row], "commit": commit, "metrics": result})
                save(args.output, results, args.backbone, defaults, list(ROWS))
                lighting = " ".join(f"{group} {fmt(values['au_pro_0.05'])}" for group, values in
                                    result["by_lighting"].items()) if len(result["by_lighting"]) > 1 else ""
                print(f"{dataset:20s} {size:4d} {row:28s} AUROC {fmt(result['image_auroc'])} "
                      f"AU-PRO@0.05 {fmt(result['au_pro_0.05'])} @0.30 {fmt(result['au_pro_0.30'])} "
                      f"SegF1 {fmt(result['seg_f1'])} {lighting} ({seconds:.0f} s)", flush=True)
    print(render_tables.quality_datasets(save(args.output, results, args.backbone, defaults, list(ROWS))))
    return 0


def recorded_backbone(backbone: str) -> str:
    """The backbone as the benchmarks' JSON files record it: a local folder relative to the repository (no
    path of the measuring machine), a hub name as it is."""
    return os.path.relpath(Path(backbone).resolve(), ROOT) if Path(backbone).exists() else backbone


def save(output: Path, results: list[dict], backbone: str, defaults, row_order: list[str]) -> dict:
    """Write ``output`` (JSON) and its Markdown table beside it; rows of earlier runs (other datasets,
    sizes or rows) are kept, rerun ones replaced. Called after every row, so a stopped run keeps its rows."""
    if output.is_file():
        earlier = json.loads(output.read_text())["results"]
        fresh = {(e["dataset"], e["image_size"], e["row"]) for e in results}
        results = [e for e in earlier if (e["dataset"], e["image_size"], e["row"]) not in fresh] + results
    results = sorted(results, key=lambda e: (e["dataset"], e["image_size"],
                                             row_order.index(e["row"]) if e["row"] in row_order else len(row_order)))
    report = {"backbone": recorded_backbone(backbone),
              "feature_layers": defaults.FEATURE_LAYERS, "seed": defaults.SEED,
              "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d"), "results": results, "mean_rows": mean_rows(results)}
    output.write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(render_tables.quality_datasets(report) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(main())
