"""Candidates for how the default's maps are formed, kept measurable (issue 10; docs/Heads_and_Scoring.md).

    python benchmarks/scale_probe.py sizes tire_ad2@448 magtile_ad2@448     # fused with IMAGE_SIZE 224
    python benchmarks/scale_probe.py pooling tire_ad2@448 magtile_ad2@448
    python benchmarks/scale_probe.py blur tire_ad2+lighting@448 magtile_ad2+lighting@448

``sizes`` (multi-resolution fusion, as MuRF): the default row (trained heads, coreset kNN, centred maps)
at the case's size and at ``SECOND_SIZE``, each fitted on its own tokens; each size's centred maps at
the original image size and its image scores (``peak_score``) are z-scored on that size's validation images,
then mixed as ``w * first + (1 - w) * second`` for ``w`` in ``SIZE_WEIGHTS``.

``pooling`` (PatchCore's locally aware patch features): every token grid (train, validation, test) is
replaced by ``m * mean3x3 + (1 - m) * token`` (edges replicated) before the heads, the bank and the
scoring, for ``m`` in ``POOL_MIXES``; heads untrained (``--EPOCHS=0``: the synthetic samples' tokens
have no grid to pool), compared with the same row unpooled (``m = 0``).

``blur`` (the map's Gaussian blur, ``scoring.MAP_SIGMA``): the default row's centred maps made with each
sigma of ``MAP_SIGMAS`` (input pixels; 0: none). The image scores come from the patch grids and do not
change. On a lighting-stressed copy AU-PRO@0.05 is also printed per lighting group.

Printed per case and weight: test image AUROC, AU-PRO@0.05 and @0.30. Tokens come from run_quality's
cache (``benchmarks/token_cache.py``); every fit is the product's own code.
"""

from __future__ import annotations

import dataclasses
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
from anomalyvfm.scoring import anomaly_map, centred_grid, map_median_of  # noqa: E402

SECOND_SIZE = 224
SIZE_WEIGHTS = (1.0, 0.75, 0.5, 0.0)  # weight of the case's own size
POOL_MIXES = (0.0, 0.5, 1.0)
MAP_SIGMAS = (0.0, 4.0, 8.0, 16.0)
PROBES = ("sizes", "pooling", "blur")


def pooled_grid(grid: torch.Tensor, mix: float) -> torch.Tensor:
    """``[gh, gw, D]`` -> ``mix * (3 x 3 mean around each token) + (1 - mix) * grid``, edges replicated."""
    x = grid.float().permute(2, 0, 1)[None]
    mean = F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), 3, stride=1)[0].permute(1, 2, 0)
    return (mix * mean + (1 - mix) * grid.float()).to(grid.dtype)


def standardised_size(tokens: dict[str, token_cache.SplitTokens], extractor: FeatureExtractor, size: int
                      ) -> tuple[list[np.ndarray], np.ndarray]:
    """The default row at ``size``: test maps ``[H, W]`` (centred, original size) and image scores ``[N]``,
    each z-scored with its validation images' map values and image scores."""
    validation, test = tokens["validation"], tokens["test_public"]
    val_scored, test_scored = run_quality.fitted_grids(extractor, tokens, v11.default_config().replace(IMAGE_SIZE=size))
    val_grids, test_grids = val_scored.maps, test_scored.maps
    reference = map_median_of(val_grids)
    val_values = np.concatenate([anomaly_map(centred_grid(g, reference), s, o).ravel()
                                 for g, s, o in zip(val_grids, validation.input_sizes, validation.original_sizes)])
    mean, std = float(val_values.mean()), float(val_values.std())
    maps = [(anomaly_map(centred_grid(g, reference), s, o) - mean) / std
            for g, s, o in zip(test_grids, test.input_sizes, test.original_sizes)]
    val_scores = val_scored.peaks()
    scores = (test_scored.peaks() - val_scores.mean()) / val_scores.std()
    return maps, scores


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
        tokens = run_quality.case_tokens(extractor, backbone, name, size)
        masks = run_quality.ground_truth_masks(tokens["test_public"])
        if probe == "sizes":
            first = standardised_size(tokens, extractor, size)
            second = standardised_size(run_quality.case_tokens(extractor, backbone, name, SECOND_SIZE), extractor,
                                       SECOND_SIZE)
            labels = np.array([s.label for s in tokens["test_public"].samples])
            for weight in SIZE_WEIGHTS:
                maps = [weight * a + (1 - weight) * b for a, b in zip(first[0], second[0])]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                    pro = metrics.au_pro_multi(maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
                auroc = metrics.image_auroc(weight * first[1] + (1 - weight) * second[1], labels)
                print_row(case, f"w({size}) {weight:.2f}, w({SECOND_SIZE}) {1 - weight:.2f}", auroc, pro[0.05], pro[0.3])
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
