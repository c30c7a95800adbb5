"""Candidates for how the default's maps are formed, kept measurable (issue 10; docs/Heads_and_Scoring.md).

    python benchmarks/scale_probe.py sizes tire_ad2@448 magtile_ad2@448     # fused with IMAGE_SIZE 224
    python benchmarks/scale_probe.py pooling tire_ad2@448 magtile_ad2@448
    python benchmarks/scale_probe.py blur tire_ad2+lighting@448 magtile_ad2+lighting@448
    python benchmarks/scale_probe.py flip tire_ad2@448 magtile_ad2@448 tire_ad2+lighting@448
    python benchmarks/scale_probe.py position tire_ad2@448 magtile_ad2@448 tire_ad2+lighting@448
    python benchmarks/scale_probe.py shift tire_ad2@448 magtile_ad2@448

``sizes`` (multi-resolution fusion, as MuRF): the default row as a run scores it (trained heads, coreset kNN,
``SCORING_PHASES`` phases, centred maps; ``run_quality.row_outputs``) at the case's size and at ``SECOND_SIZE``, each
fitted on its own tokens; each size's maps at the original image size and its image scores are z-scored on that
size's validation images, then mixed as ``w * first + (1 - w) * second`` for ``w`` in ``SIZE_WEIGHTS``. Also printed:
SegF1 with the product's cut (the 99.9th percentile of the mixed validation maps, each test map raised to its own
floor, ``model.mask_threshold``) and at the best single threshold (``defect_class_probe.optimal_seg_f1``).

``pooling`` (PatchCore's locally aware patch features): every token grid (train, validation, test) is
replaced by ``m * mean3x3 + (1 - m) * token`` (edges replicated) before the heads, the bank and the
scoring, for ``m`` in ``POOL_MIXES``; heads untrained (``--EPOCHS=0``: the synthetic samples' tokens
have no grid to pool), compared with the same row unpooled (``m = 0``).

``blur`` (the map's Gaussian blur, ``scoring.MAP_SIGMA``): the default row's centred maps made with each
sigma of ``MAP_SIGMAS`` (input pixels; 0: none). The image scores come from the patch grids and do not
change. On a lighting-stressed copy AU-PRO@0.05 is also printed per lighting group.

``flip`` (test-time mirroring): every test image is also scored mirrored left-right (a copy of the case's
test_public/ with mirrored images and masks, made once under ``benchmarks/.cache/flip/``; train/ and
validation/ link to the case's own, so their tokens are shared). The mirrored image's patch grids are
mirrored back and averaged with the image's own, before centring and the peak, for the default row
fitted once. Printed: the image alone, the mirrored image alone (mirrored back) and their mean; on a
lighting-stressed copy also AU-PRO@0.05 per lighting group and the pooled minus regular-only image AUROC.

``position`` (a per-position prior, as PaDiM's per-position statistics, on the patch distances): the mean
over the validation images of each grid cell's distance above its image's median (``position_offsets``,
resampled to each image's grid), times ``w`` in ``POSITION_WEIGHTS``, is subtracted from every test grid
before centring and the peak (maps and image scores alike), for the default row fitted once. Also printed:
AU-PRO@0.05 minus that of ``w = 0`` with its 95 % interval (scene bootstrap, ``BOOTSTRAP_DRAWS``), and first
why a weight helps or hurts: how repeatable the map offsets are (``split_half_r``; their correlation with the
good test images' own offsets) and how much of a real defect's signal they would remove (``defect_offset_share``).

``shift`` (test-time sub-patch phases, the product's ``SCORING_PHASES``): every validation and test image is
also encoded with its network input cropped half a patch in (``scoring.PHASE_SHIFTS``: down-right, then
right and down; the last, partial patch dropped), cached by ``token_cache.pipeline_tokens(phases=4)``, so its
tokens sit between the unshifted ones. Each phase's patch grid is scored by the default row fitted once and
discounted as the product's; the phases are stacked, centred, upsampled, moved back and averaged as in a run
(``run_quality.phase_grids``, ``scoring.stacked_phases``, ``scoring.anomaly_map``). The image score is the
mean of the phases' peaks. Printed for the image alone, the diagonal phase alone, two phases (the default)
and four: also SegF1 at the validation rule (validation maps made the same way) and AU-PRO@0.05 minus the
image alone's with its 95 % scene-bootstrap interval. Each phase costs one more backbone pass per
image; unlike a mirror, a shift keeps the scene's orientation and light.

Printed per case and weight: test image AUROC, AU-PRO@0.05 and @0.30. Tokens come from run_quality's
cache (``benchmarks/token_cache.py``); every fit is the product's own code.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_quality  # noqa: E402
import token_cache  # noqa: E402
import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.metrics.lighting import ordered_groups  # noqa: E402
from anomalyvfm.backbone import FeatureExtractor  # noqa: E402
from anomalyvfm.scoring import (PHASE_SHIFTS, anomaly_map, centred_grid, map_median_of, phase_shifts,  # noqa: E402
                                stacked_phases)
from anomalyvfm.synthetic import DEFECT_TOKEN_FRACTION  # noqa: E402
from defect_class_probe import optimal_seg_f1, product_cuts  # noqa: E402
from PIL import Image  # noqa: E402

SECOND_SIZE = 224
SIZE_WEIGHTS = (1.0, 0.85, 0.7, 0.5, 0.0)  # weight of the case's own size
POOL_MIXES = (0.0, 0.5, 1.0)
MAP_SIGMAS = (0.0, 4.0, 8.0, 16.0)
PROBES = ("sizes", "pooling", "blur", "flip", "position", "shift")
POSITION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
BOOTSTRAP_DRAWS = 2000
FLIP_DIR = token_cache.CACHE_DIR / "flip"
FLIP_DONE = "flip_done.txt"


def pooled_grid(grid: torch.Tensor, mix: float) -> torch.Tensor:
    """``[gh, gw, D]`` -> ``mix * (3 x 3 mean around each token) + (1 - mix) * grid``, edges replicated."""
    x = grid.float().permute(2, 0, 1)[None]
    mean = F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), 3, stride=1)[0].permute(1, 2, 0)
    return (mix * mean + (1 - mix) * grid.float()).to(grid.dtype)


def standardised_size(tokens: dict[str, token_cache.SplitTokens], extractor: FeatureExtractor, size: int
                      ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The default row at ``size`` as a run scores it: validation and test maps ``[H, W]`` (centred, original size)
    and test image scores ``[N]``, each z-scored with the validation images' map values and image scores."""
    settings = v11.default_config().replace(IMAGE_SIZE=size)
    with torch.inference_mode():
        synthetic = run_quality.synthetic_tokens(extractor, tokens["train"], size, settings.SYNTHETIC_SAMPLES,
                                                 settings.SEED)
    out = run_quality.row_outputs(tokens, synthetic, settings)
    val_values = np.concatenate([m.ravel() for m in out.val_maps])
    mean, std = float(val_values.mean()), float(val_values.std())
    return ([(m - mean) / std for m in out.val_maps], [(m - mean) / std for m in out.test_maps],
            (out.scores - out.val_scores.mean()) / out.val_scores.std())


def print_row(case: str, label: str, image_auroc: float, au_pro_005: float, au_pro_030: float, extra: str = "") -> None:
    print(f"{case:22s} {label:32s} AUROC {image_auroc:.4f} AU-PRO@0.05 {au_pro_005:.4f} @0.30 {au_pro_030:.4f}{extra}",
          flush=True)


def blurred_maps(tokens: dict[str, token_cache.SplitTokens], extractor: FeatureExtractor, size: int
                 ) -> tuple[dict[float, list[np.ndarray]], np.ndarray]:
    """The default row's centred test maps ``[H, W]`` for each sigma of ``MAP_SIGMAS``, and its image scores ``[N]``."""
    test = tokens["test_public"]
    val_scored, test_scored = run_quality.fitted_grids(extractor, tokens, v11.default_config().replace(IMAGE_SIZE=size))
    reference = map_median_of(val_scored.maps)
    maps = {sigma: [anomaly_map(centred_grid(g, reference), s, o, sigma=sigma)
                    for g, s, o in zip(test_scored.maps, test.input_sizes, test.original_sizes)] for sigma in MAP_SIGMAS}
    return maps, test_scored.peaks()


def au_pro_by_group(maps: list[np.ndarray], masks: list[np.ndarray | None], lightings: list[str]) -> str:
    """`` | group AU-PRO@0.05`` per lighting group (shift_1..4 as one), empty for a regular-light test set."""
    groups = [dataset_ad2.lighting_group(lighting) for lighting in lightings]
    if set(groups) == {"regular"}:
        return ""
    parts = []
    for group in ordered_groups(groups):
        chosen = [i for i, g in enumerate(groups) if g == group]
        pro = metrics.au_pro_multi([maps[i] for i in chosen], [masks[i] for i in chosen], (0.05,),
                                   num_bins=run_quality.PRO_BINS)[0.05]
        parts.append(f"{group} {pro:.4f}")
    return " | " + " ".join(parts)


def print_test_row(case: str, label: str, maps: list[np.ndarray], scores: np.ndarray, masks: list[np.ndarray | None],
                   samples: list[dataset_ad2.Sample], extra: str = "") -> None:
    """``print_row`` of test maps ``[H, W]`` and image scores ``[N]``, with AU-PRO@0.05 per lighting group and
    the pooled minus regular-only image AUROC (with its interval) on a lighting-stressed copy, then ``extra``."""
    labels = np.array([s.label for s in samples])
    lightings = [s.lighting for s in samples]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        pro = metrics.au_pro_multi(maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
        groups = au_pro_by_group(maps, masks, lightings)
    gap = run_quality.pooled_auroc_gap(scores, labels, lightings,
                                       [dataset_ad2.scene_of(s.relative_path) for s in samples]).get("image_auroc_gap")
    if gap is not None:
        groups += f" | pooled - regular AUROC {gap['difference']:+.4f} [{gap['low']:+.4f}, {gap['high']:+.4f}]"
    print_row(case, label, metrics.image_auroc(scores, labels), pro[0.05], pro[0.3], groups + extra)


def mirrored_copy(dataset: str, data_root: Path, category: str) -> Path:
    """A DATA_ROOT whose ``category`` has the test_public images and masks of ``data_root``'s mirrored
    left-right (lossless PNGs, same stems), train/ and validation/ linked to the source's; made once."""
    out = FLIP_DIR / dataset
    if (out / FLIP_DONE).is_file():
        return out
    if out.exists():  # an interrupted earlier attempt
        shutil.rmtree(out)
    source = dataset_ad2.load_category(data_root, category)
    target = out / category
    target.mkdir(parents=True)
    for split in ("train", "validation"):
        (target / split).symlink_to((source.root / split).resolve(), target_is_directory=True)
    for sample in source.test_public:
        image = target / Path(sample.relative_path).with_suffix(".png")
        image.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(sample.path) as opened:
            opened.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, compress_level=1)
        if sample.mask_path is not None:
            mask = target / "test_public" / "ground_truth" / sample.path.parent.name / f"{sample.stem}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(sample.mask_path) as opened:
                opened.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mask)
    (out / FLIP_DONE).write_text(f"test_public of {source.root.resolve()} mirrored left-right\n")
    return out


def joined(first: token_cache.SplitTokens, second: token_cache.SplitTokens) -> token_cache.SplitTokens:
    """One split holding ``first``'s images, then ``second``'s (every per-image field concatenated)."""
    def both(a, b):
        return None if a is None or b is None else (torch.cat([a, b]) if isinstance(a, torch.Tensor) else a + b)
    return token_cache.SplitTokens(*(both(getattr(first, f.name), getattr(second, f.name))
                                     for f in dataclasses.fields(token_cache.SplitTokens)))


def flip_rows(tokens: dict[str, token_cache.SplitTokens], mirrored: token_cache.SplitTokens,
              extractor: FeatureExtractor, size: int) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """``{label: (centred test maps [H, W], image scores [N])}`` for the image alone, its mirror alone
    (grids mirrored back) and their mean, the default row fitted once on ``tokens``."""
    test = tokens["test_public"]
    count = len(test.samples)
    own = [Path(s.relative_path).with_suffix("").as_posix() for s in test.samples]
    if own != [Path(s.relative_path).with_suffix("").as_posix() for s in mirrored.samples]:
        raise ValueError("the mirrored copy's test images do not match the case's; delete benchmarks/.cache/flip/")
    both = dict(tokens, test_public=joined(test, mirrored))
    val_scored, test_scored = run_quality.fitted_grids(extractor, both, v11.default_config().replace(IMAGE_SIZE=size))
    reference = map_median_of(val_scored.maps)
    back = lambda grids: [g.flip(-1) for g in grids[count:]]  # noqa: E731 - [gh, gw]: mirror the columns back
    candidates = {"image alone": (test_scored.maps[:count], test_scored.images[:count]),
                  "mirror alone": (back(test_scored.maps), back(test_scored.images))}
    candidates["mean of both"] = tuple([(a + b) / 2 for a, b in zip(*pair)] for pair in zip(
        candidates["image alone"], candidates["mirror alone"]))
    return {label: ([anomaly_map(centred_grid(g, reference), s, o)
                     for g, s, o in zip(maps, test.input_sizes, test.original_sizes)],
                    run_quality.Grids(maps, images).peaks())
            for label, (maps, images) in candidates.items()}


def shift_rows(tokens: dict[str, token_cache.SplitTokens], extractor: FeatureExtractor, size: int
               ) -> dict[str, tuple[list[np.ndarray], list[np.ndarray], np.ndarray]]:
    """``{label: (validation maps, test maps [H, W], test image scores [N])}`` for the image alone, the diagonal
    shift alone, two phases and four, the default row fitted once on ``tokens`` (cached with four phases)."""
    settings = v11.default_config().replace(IMAGE_SIZE=size, SCORING_PHASES=len(PHASE_SHIFTS))
    scored = run_quality.fitted_phase_grids(extractor, tokens, settings)
    shifts = phase_shifts(len(PHASE_SHIFTS), extractor.patch_size)
    rows = {}
    for label, chosen in (("image alone", [0]), ("diagonal shift alone", [1]), ("2 phases (default)", [0, 1]),
                          ("4 phases", [0, 1, 2, 3])):
        # As run_quality.row_outputs, the own grid of each image is that of the unshifted phase.
        grids = {split: [stacked_phases([scored[split][k].maps[i] for k in chosen], own.shape)
                         for i, own in enumerate(scored[split][0].maps)] for split in scored}
        reference = map_median_of(grids["validation"])
        maps = {split: [anomaly_map(centred_grid(grid, reference), tokens[split].input_sizes[i],
                                    tokens[split].original_sizes[i], shifts=[shifts[k] for k in chosen])
                        for i, grid in enumerate(grids[split])] for split in grids}
        scores = np.mean([scored["test_public"][k].peaks() for k in chosen], axis=0)
        rows[label] = (maps["validation"], maps["test_public"], scores)
    return rows


def position_offsets(grids: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """``[gh, gw]``: the mean over ``grids`` (each ``[h, w]``, bilinearly resampled to ``shape`` where it differs)
    of each cell's value above its own grid's median."""
    resampled = [F.interpolate(g.float()[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
                 - g.float().median() for g in grids]
    return torch.stack(resampled).mean(0)


def split_half_r(grids: list[torch.Tensor], shape: tuple[int, int]) -> float:
    """Correlation over the cells of ``position_offsets`` of the even-numbered and of the odd-numbered ``grids``:
    how repeatable the offsets are across normal images (1: the same map)."""
    first, second = position_offsets(grids[0::2], shape), position_offsets(grids[1::2], shape)
    return float(np.corrcoef(first.ravel().numpy(), second.ravel().numpy())[0, 1])


def defect_offset_share(offsets: torch.Tensor, grids: list[torch.Tensor], masks: list[np.ndarray | None]) -> float:
    """Over the defective test images, the mean offset (``offsets`` ``[gh, gw]``, resampled to each grid) on their
    defect cells (a cell at least ``DEFECT_TOKEN_FRACTION`` covered by the mask, as ``synthetic.token_labels``)
    divided by those cells' mean distance above their grid's median: the share of a defect's signal the prior
    at ``w = 1`` would take away."""
    offset_sum, excess_sum = 0.0, 0.0
    for grid, mask in zip(grids, masks):
        if mask is None:
            continue
        shape = tuple(grid.shape)
        cover = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=shape, mode="area")[0, 0]
        cells = cover >= DEFECT_TOKEN_FRACTION
        if cells.any():
            resampled = F.interpolate(offsets[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
            offset_sum += float(resampled[cells].mean())
            excess_sum += float((grid.float() - grid.float().median())[cells].mean())
    return offset_sum / excess_sum


def position_rows(tokens: dict[str, token_cache.SplitTokens], masks: list[np.ndarray | None],
                  extractor: FeatureExtractor, size: int) -> tuple[dict[float, tuple[list[np.ndarray], np.ndarray]], str]:
    """``{w: (centred test maps [H, W], image scores [N])}`` with ``w`` times the validation images' per-position
    offsets subtracted from each test grid (maps and image-score grids each with their own offsets), and a line
    on the map offsets: ``split_half_r``, their correlation with the good test images' own, ``defect_offset_share``
    (``masks``: ``run_quality.ground_truth_masks`` of the test images)."""
    test = tokens["test_public"]
    val_scored, test_scored = run_quality.fitted_grids(extractor, tokens, v11.default_config().replace(IMAGE_SIZE=size))
    reference = map_median_of(val_scored.maps)
    offsets: dict[tuple[str, tuple[int, int]], torch.Tensor] = {}

    def less(kind: str, validation: list[torch.Tensor], grid: torch.Tensor, weight: float) -> torch.Tensor:
        key = (kind, tuple(grid.shape))
        if key not in offsets:
            offsets[key] = position_offsets(validation, key[1])
        return grid.float() - weight * offsets[key]

    shape = tuple(val_scored.maps[0].shape)
    offsets[("maps", shape)] = position_offsets(val_scored.maps, shape)
    good = [g for g, s in zip(test_scored.maps, test.samples) if s.label == 0]
    with_test = np.corrcoef(offsets[("maps", shape)].ravel().numpy(), position_offsets(good, shape).ravel().numpy())[0, 1]
    diagnostics = (f"@{size} map offsets on {shape[0]} x {shape[1]} cells: split-half r "
                   f"{split_half_r(val_scored.maps, shape):.3f}, r with the good test images' {with_test:.3f}, share of a "
                   f"defect's excess {defect_offset_share(offsets[('maps', shape)], test_scored.maps, masks):.3f}")
    rows = {}
    for weight in POSITION_WEIGHTS:
        maps = [anomaly_map(centred_grid(less("maps", val_scored.maps, g, weight), reference), s, o)
                for g, s, o in zip(test_scored.maps, test.input_sizes, test.original_sizes)]
        images = [less("images", val_scored.images, g, weight) for g in test_scored.images]
        rows[weight] = (maps, run_quality.Grids(maps=[], images=images).peaks())
    return rows, diagnostics


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in PROBES:
        print(f"usage: scale_probe.py {{{','.join(PROBES)}}} DATASET@SIZE ...", file=sys.stderr)
        return 2
    probe = argv[0]
    try:
        cases, extractor, backbone = run_quality.probe_setup(argv[1:])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    for name, size in cases:
        case = f"{name}@{size}"
        phases = {"shift": len(PHASE_SHIFTS), "sizes": defaults.SCORING_PHASES}.get(probe, 1)
        tokens = run_quality.case_tokens(extractor, backbone, name, size, phases=phases)
        masks = run_quality.ground_truth_masks(tokens["test_public"])
        if probe == "sizes":
            first = standardised_size(tokens, extractor, size)
            second = standardised_size(run_quality.case_tokens(extractor, backbone, name, SECOND_SIZE, phases=phases),
                                       extractor, SECOND_SIZE)
            labels = np.array([s.label for s in tokens["test_public"].samples])
            for weight in SIZE_WEIGHTS:
                validation_maps, maps = ([weight * a + (1 - weight) * b for a, b in zip(one, two)]
                                         for one, two in zip(first[:2], second[:2]))
                _, floors, cuts = product_cuts(validation_maps, maps)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                    pro = metrics.au_pro_multi(maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
                    segf1 = metrics.seg_f1(maps, masks, cuts)
                best = optimal_seg_f1(maps, masks, floors)
                auroc = metrics.image_auroc(weight * first[2] + (1 - weight) * second[2], labels)
                print_row(case, f"w({size}) {weight:.2f}, w({SECOND_SIZE}) {1 - weight:.2f}", auroc, pro[0.05],
                          pro[0.3], f" SegF1 {segf1:.4f} (test-optimal {best:.4f})")
            continue
        if probe == "flip":
            category, root = run_quality.case_root(name)
            mirrored = token_cache.pipeline_tokens(extractor, str(mirrored_copy(name, root, category)), category,
                                                   backbone, size, defaults.FEATURE_LAYERS,
                                                   batch_size=defaults.BATCH_SIZE)["test_public"]
            for label, (maps, scores) in flip_rows(tokens, mirrored, extractor, size).items():
                print_test_row(case, label, maps, scores, masks, tokens["test_public"].samples)
            continue
        if probe == "shift":
            samples = tokens["test_public"].samples
            scenes = [dataset_ad2.scene_of(s.relative_path) for s in samples]
            rows = shift_rows(tokens, extractor, size)
            single_maps = rows["image alone"][1]
            for label, (validation_maps, maps, scores) in rows.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                    segf1 = metrics.seg_f1(maps, masks, metrics.mean_plus_k_std(validation_maps))
                    extra = f" | SegF1 {segf1:.4f}"
                    if maps is not single_maps:
                        found = metrics.paired_au_pro_interval(maps, single_maps, masks, scenes, 0.05,
                                                               num_bins=run_quality.PRO_BINS,
                                                               resamples=BOOTSTRAP_DRAWS)
                        extra += f" | vs image alone: {found['difference']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]"
                print_test_row(case, label, maps, scores, masks, samples, extra)
            continue
        if probe == "position":
            samples = tokens["test_public"].samples
            scenes = [dataset_ad2.scene_of(s.relative_path) for s in samples]
            rows, diagnostics = position_rows(tokens, masks, extractor, size)
            print(diagnostics, flush=True)
            for weight, (maps, scores) in rows.items():
                extra = ""
                if weight:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                        found = metrics.paired_au_pro_interval(maps, rows[0.0][0], masks, scenes, 0.05,
                                                               num_bins=run_quality.PRO_BINS,
                                                               resamples=BOOTSTRAP_DRAWS)
                    extra = f" | vs w 0: {found['difference']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]"
                print_test_row(case, f"position prior w {weight:g}", maps, scores, masks, samples, extra)
            continue
        if probe == "blur":
            maps, scores = blurred_maps(tokens, extractor, size)
            samples = tokens["test_public"].samples
            auroc = metrics.image_auroc(scores, np.array([s.label for s in samples]))
            for sigma, sigma_maps in maps.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                    pro = metrics.au_pro_multi(sigma_maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
                    groups = au_pro_by_group(sigma_maps, masks, [s.lighting for s in samples])
                print_row(case, f"MAP_SIGMA {sigma:g}", auroc, pro[0.05], pro[0.3], groups)
            continue
        for mix in POOL_MIXES:
            pooled = {split: dataclasses.replace(t, patches=[pooled_grid(g, mix) for g in t.patches]) if mix else t
                      for split, t in tokens.items()}
            result = run_quality.evaluate_row(pooled, masks, None, defaults.replace(IMAGE_SIZE=size, EPOCHS=0))
            print_row(case, f"EPOCHS=0, 3x3 mean mix {mix:.2f}", result["image_auroc"], result["au_pro_0.05"],
                      result["au_pro_0.30"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
