"""Which image score survives AD 2's lighting changes (issue 14; docs/Heads_and_Scoring.md).

    python benchmarks/image_score_probe.py tire_ad2+lighting@448 magtile_ad2+lighting@448
    python benchmarks/image_score_probe.py --seeds=0,1,2 tire_ad2+lighting@448

The default row (trained heads, coreset kNN) is fitted once per case on cached tokens, and its
test images' patch distance grids are turned into image scores in each of ``VARIANTS``' ways, at each of
the default's scoring phases (``SCORING_PHASES``) and averaged over them, as the product averages its peaks.
Printed per case and variant: image AUROC over all test images (pooled) and within each lighting
group. On a lighting-stressed copy (``<dataset>+lighting``, ``benchmarks/lighting_stress.py``)
the ``regular`` group is the dataset's own test set, so "pooled against regular" is issue 14's
target. Tokens come from run_quality's cache (``benchmarks/token_cache.py``); every fit is the
product's own code. ``--seeds=0,1,2`` fits the row once per ``SEED`` (synthetic samples, heads,
coreset) and adds, per variant, each seed's pooled minus regular-light AUROC and their mean: with
few good test images one seed's AUROC can be a lucky or unlucky draw of the fit.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_quality  # noqa: E402
import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.metrics.lighting import ordered_groups  # noqa: E402
from anomalyvfm.scoring import PEAK_PATCHES, peak_score  # noqa: E402


def top_percent_mean(grid: torch.Tensor, fraction: float = 0.01) -> float:
    """Mean of the highest ``fraction`` of a ``[gh, gw]`` grid (at least one value): AnomalyDINO's score."""
    flat = grid.flatten()
    return float(flat.topk(max(1, int(round(fraction * flat.numel())))).values.mean())


VARIANTS: dict[str, Callable[[torch.Tensor], float]] = {
    "top 1 % (before 1.1.1)": top_percent_mean,
    "top 1 % - median": lambda g: top_percent_mean(g) - float(g.median()),
    "max": lambda g: float(g.max()),
    "max - median (1.1.1 to 1.3.0)": partial(peak_score, patches=1),
    **{f"top {count} - median" + (" (peak_score since 1.4.0)" if count == PEAK_PATCHES else ""):
       partial(peak_score, patches=count) for count in (2, 3, 4, 5, 6, 8)},
}


def variant_aurocs(phases: list[list[torch.Tensor]], labels: np.ndarray, groups: np.ndarray, order: list[str]
                   ) -> dict[str, tuple[float, list[float]]]:
    """Per ``VARIANTS`` entry: image AUROC over all images and within each group of ``order``, from the test
    images' patch distance grids ``[gh, gw]`` at each scoring phase (``phases[p][i]``; an image's score is the
    mean over its phases; ``labels``, ``groups`` ``[N]``)."""
    found = {}
    for variant, score in VARIANTS.items():
        scores = np.mean([[score(g) for g in grids] for grids in phases], axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            found[variant] = (metrics.image_auroc(scores, labels),
                              [metrics.image_auroc(scores[groups == g], labels[groups == g]) for g in order])
    return found


def phase_score_grids(extractor, tokens: dict, settings) -> list[list[torch.Tensor]]:
    """The image score's grids ``[gh, gw]`` of the test images at each of ``settings.SCORING_PHASES`` phases
    (``[phase][image]``), the row fitted on cached ``tokens`` as ``run_quality.row_outputs`` fits it."""
    phases = run_quality.fitted_phase_grids(extractor, tokens, settings, splits=("test_public",))["test_public"]
    return [grids.images for grids in phases]


def gap_table(by_seed: dict[int, dict[str, tuple[float, list[float]]]], order: list[str]) -> str:
    """Per variant: each seed's pooled minus ``regular``-group AUROC, then the mean over the seeds of the
    pooled AUROC, the regular group's and their difference."""
    seeds, regular = list(by_seed), order.index("regular")
    lines = ["| image score | " + " | ".join(f"SEED {s}" for s in seeds) + " | mean pooled | mean regular | mean gap |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for variant in VARIANTS:
        pooled = np.array([by_seed[s][variant][0] for s in seeds])
        regular_light = np.array([by_seed[s][variant][1][regular] for s in seeds])
        lines.append(f"| {variant} | " + " | ".join(f"{g:+.4f}" for g in pooled - regular_light)
                     + f" | {pooled.mean():.4f} | {regular_light.mean():.4f} | {(pooled - regular_light).mean():+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", help="DATASET@SIZE (+lighting for a dataset's stressed copy)")
    parser.add_argument("--seeds", default="0", help="comma-separated SEED values, one fit each (default: 0)")
    args = parser.parse_args(argv)
    try:
        seeds = run_quality.parse_seeds(args.seeds)
        parsed, extractor, backbone = run_quality.probe_setup(args.cases)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    for name, size in parsed:
        tokens = run_quality.case_tokens(extractor, backbone, name, size, defaults.SCORING_PHASES)
        samples = tokens["test_public"].samples
        labels = np.array([s.label for s in samples])
        groups = np.array([dataset_ad2.lighting_group(s.lighting) for s in samples])
        order = ordered_groups(list(groups))
        by_seed = {}
        for seed in seeds:
            grids = phase_score_grids(extractor, tokens, defaults.replace(IMAGE_SIZE=size, SEED=seed))
            by_seed[seed] = variant_aurocs(grids, labels, groups, order)  # the product's score grids
            print(f"\n{name}@{size}, SEED {seed}, {defaults.SCORING_PHASES} scoring phases\n\n| image score | pooled | " + " | ".join(order) + " |\n|---|---:|"
                  + "---:|" * len(order))
            for variant, (pooled, within) in by_seed[seed].items():
                print(f"| {variant} | {pooled:.4f} | " + " | ".join(f"{v:.4f}" for v in within) + " |", flush=True)
        if len(seeds) > 1 and "regular" in order:
            print(f"\n{name}@{size}, pooled minus regular-light image AUROC per seed\n\n{gap_table(by_seed, order)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
