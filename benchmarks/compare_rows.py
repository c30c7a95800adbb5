"""Is one row of the quality benchmark better than another, or is the difference noise?

    python benchmarks/compare_rows.py tire_ad2@448 magtile_ad2@448
    python benchmarks/compare_rows.py --first="v1.1 (default)" --second="v1.1 --EPOCHS=0" tire_ad2+lighting@448
    python benchmarks/compare_rows.py --seeds=0,1,2 tire_ad2@448 magtile_ad2@448

Both rows (``run_quality.ROWS``; default: the product against its untrained heads, issue 10's
"training must earn its place") are fitted on the same cached tokens with the product's own code
(``run_quality.row_outputs``) and score the same test images. Per case: AU-PRO@0.05 and image
AUROC of each row, and the first minus the second with the 95 % interval of a bootstrap that
resamples the test scenes (``metrics.paired_au_pro_draws`` / ``paired_auroc_draws``; a scene is
one image, or on a lighting-stressed copy all lights of one image; 2 000 seeded draws). Then the
mean over the cases, whose interval averages the cases' draws one by one (the cases' test sets
are drawn independently). An interval that excludes 0 is a difference this test set can tell
from noise; one that includes it is not.

``--seeds=0,1,2`` repeats the comparison with each ``SEED`` (synthetic samples, the heads'
initialisation and batches, the coreset's start and the fit subsamples all follow it): a case's
difference is then the mean over the seeds, its interval that of the seed-averaged difference (the
scene draws are the same for every seed, so they average draw by draw), and each seed's difference
is kept beside it. The scene bootstrap measures the test set's noise; the spread over seeds measures
the noise of the fit itself, which one seed cannot show.

Writes ``benchmarks/paired_rows.json`` (a comparison of other rows, cases or seeds already there is
kept, the same one replaced) and prints the table that docs/Training_Objective.md shows
(``render_tables.py``, table ``paired-rows``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
import render_tables  # noqa: E402
import run_quality  # noqa: E402
from provenance import code_commit  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.metrics.bootstrap import paired_au_pro_draws, paired_auroc_draws, percentile_interval  # noqa: E402
from anomalyvfm.patch_model import needs_synthetic_samples  # noqa: E402

OUTPUT = ROOT / "benchmarks" / "paired_rows.json"
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
METRICS = ("au_pro_0.05", "image_auroc")


def compare_case(extractor, backbone: str, case: str, first: str, second: str, seeds: Sequence[int] = (0,)
                 ) -> tuple[dict, dict[str, np.ndarray]]:
    """Both rows on one ``DATASET@SIZE`` case, once per ``SEED`` in ``seeds``: ``(entry for paired_rows.json,
    {metric: bootstrap draws of the seed-averaged difference})``."""
    dataset, size = run_quality.parse_case(case)
    defaults = v11.default_config().replace(IMAGE_SIZE=size)
    # A row that sets FEATURE_LAYERS is scored on its own blocks' tokens.
    groups = run_quality.rows_by_layers((first, second))
    extractors = {layers: run_quality.extractor_for(extractor, layers) for layers in groups}
    tokens_of = {layers: run_quality.case_tokens(extractors[layers], backbone, dataset, size,
                                                 run_quality.phases_needed(rows), list(layers))
                 for layers, rows in groups.items()}
    layers_of = {row: layers for layers, rows in groups.items() for row in rows}
    test = tokens_of[layers_of[first]]["test_public"]
    masks = run_quality.ground_truth_masks(test)
    labels = np.array([s.label for s in test.samples])
    scenes = [dataset_ad2.scene_of(s.relative_path) for s in test.samples]
    per_seed, seed_draws = [], []
    for seed in seeds:
        outputs, synthetic = {}, {}
        for row in (first, second):
            settings = defaults.replace(SEED=seed).replace(**run_quality.ROWS[row])
            layers, tokens = layers_of[row], tokens_of[layers_of[row]]
            if needs_synthetic_samples(settings) and layers not in synthetic:
                with torch.inference_mode():
                    synthetic[layers] = run_quality.synthetic_tokens(extractors[layers], tokens["train"], size,
                                                                     settings.SYNTHETIC_SAMPLES, settings.SEED)
            outputs[row] = run_quality.row_outputs(tokens, synthetic.get(layers), settings)
        a, b = outputs[first], outputs[second]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            # Each row's value and the draws of the difference, from one read of its maps. The resampling
            # seed is fixed (SEED), so every training seed sees the same draws of the scenes.
            found = {"au_pro_0.05": paired_au_pro_draws(a.test_maps, b.test_maps, masks, scenes, 0.05,
                                                        num_bins=run_quality.PRO_BINS, resamples=RESAMPLES, seed=SEED),
                     "image_auroc": paired_auroc_draws(a.scores, b.scores, labels, scenes, resamples=RESAMPLES,
                                                       seed=SEED)}
        per_seed.append({"seed": seed, **{side: {name: f[index] for name, f in found.items()}
                                          for index, side in enumerate(("first", "second"))},
                         **{name: f[0] - f[1] for name, f in found.items()}})
        seed_draws.append({name: f[2] for name, f in found.items()})
    averaged = {name: seed_average(per_seed, seed_draws, name) for name in METRICS}
    entry = {"case": case, "scenes": len(set(scenes)), "images": len(scenes),
             **{side: {name: float(np.mean([s[side][name] for s in per_seed])) for name in METRICS}
                for side in ("first", "second")},
             **{name: percentile_interval(*found, LEVEL) for name, found in averaged.items()}, "per_seed": per_seed}
    return entry, {name: found[1] for name, found in averaged.items()}


def seed_average(per_seed: list[dict], seed_draws: list[dict[str, np.ndarray]], metric: str
                 ) -> tuple[float, np.ndarray]:
    """``metric``'s difference averaged over the seeds, and its bootstrap draws averaged draw by draw
    (``[resamples]``; empty when some seed's difference is undefined, as ``paired_*_draws`` returns it)."""
    if any(len(d[metric]) == 0 for d in seed_draws):
        return float("nan"), np.empty(0)
    return float(np.mean([s[metric] for s in per_seed])), np.stack([d[metric] for d in seed_draws]).mean(0)


def mean_interval(entries: list[dict], draws: list[dict[str, np.ndarray]], metric: str) -> dict:
    """The mean over the cases of ``metric``'s difference, its interval from the cases' draws averaged one by one."""
    stacked = np.stack([d[metric] for d in draws])  # [cases, resamples]; NaN where a draw was undefined
    return percentile_interval(float(np.mean([e[metric]["difference"] for e in entries])), stacked.mean(0), LEVEL)


def save(comparison: dict, output: Path = OUTPUT) -> dict:
    """Add ``comparison`` to ``output`` (replacing one of the same rows, cases and seeds) and write it."""
    report = json.loads(output.read_text()) if output.is_file() else {"comparisons": []}

    def key(c: dict) -> tuple:
        return c["first"], c["second"], [e["case"] for e in c["cases"]], c.get("training_seeds", [0])

    report["comparisons"] = [c for c in report["comparisons"] if key(c) != key(comparison)] + [comparison]
    output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="+", help="DATASET@SIZE (a folder under ../shared/datasets, +lighting for "
                        "its stressed copy)")
    parser.add_argument("--first", default="v1.1 (default)")
    parser.add_argument("--second", default="v1.1 --EPOCHS=0")
    parser.add_argument("--seeds", default="0", help="comma-separated SEED values, each fitting both rows "
                        "anew; the differences are averaged over them (default: 0)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        seeds = run_quality.parse_seeds(args.seeds)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    unknown = [row for row in (args.first, args.second) if row not in run_quality.ROWS]
    if unknown or args.first == args.second:
        print(f"error: --first and --second must be two different rows of {list(run_quality.ROWS)}, got "
              f"{args.first!r} and {args.second!r}", file=sys.stderr)
        return 2
    try:
        _, extractor, backbone = run_quality.probe_setup(args.cases)  # every case checked before any work
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start, commit = time.perf_counter(), code_commit()
    entries, draws = [], []
    for case in args.cases:
        entry, found = compare_case(extractor, backbone, case, args.first, args.second, seeds)
        entries.append(entry)
        draws.append(found)
        print(f"{case}: {render_tables.paired_cell(entry['au_pro_0.05'])} AU-PRO@0.05, "
              f"{render_tables.paired_cell(entry['image_auroc'])} image AUROC"
              + (f" (per seed {render_tables.per_seed_cell(entry['per_seed'], 'au_pro_0.05')})"
                 if len(seeds) > 1 else ""), flush=True)
    comparison = {"first": args.first, "second": args.second, "commit": commit, "date": time.strftime("%Y-%m-%d"),
                  "backbone": run_quality.recorded_backbone(backbone), "resamples": RESAMPLES, "level": LEVEL,
                  "seed": SEED, "training_seeds": seeds, "cases": entries,
                  "mean": {metric: mean_interval(entries, draws, metric) for metric in METRICS},
                  "seconds": round(time.perf_counter() - start)}
    print(render_tables.paired_rows(save(comparison, args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
