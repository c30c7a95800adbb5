"""Which DINOv2 blocks feed the heads (``FEATURE_LAYERS``), measured on today's default (docs/Feature_Layers.md).

    python benchmarks/layer_probe.py tire_ad2@448 magtile_ad2@448
    python benchmarks/layer_probe.py --layer-sets="6,8,10;3,5,7;4,6" tire_ad2@448 magtile_ad2@448

The seed's ``[6, 8, 10]`` was chosen on one dataset at IMAGE_SIZE 224 with the Gaussian scorer of the time.
This probe scores every candidate of ``--layer-sets`` (``LAYER_SETS`` by default; the first is the reference)
with today's default scorer (coreset kNN, whitened, maps centred on their median, peak image score) on each case. Tokens: one backbone pass per split computes every
candidate not cached yet (``token_cache.cache_layer_sets``: the union of their blocks runs once), cached as the
quality benchmark caches the default's. Every row has untrained heads (``--EPOCHS=0``: trained heads would need
the synthetic samples encoded again for each candidate, and training moves AU-PRO@0.05 by about 0.002 at 448,
docs/Training_Objective.md) and one scoring phase (``--SCORING_PHASES=1``: a second would double the passes),
so each candidate is compared with the reference in the same row.

Printed per case and candidate: image AUROC, AU-PRO@0.05 and @0.30, SegF1 at validation mean + 3 std, and
AU-PRO@0.05 minus the reference's with its 95 % scene-bootstrap interval; then the mean over the cases.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_quality  # noqa: E402
import token_cache  # noqa: E402
import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
from anomalyvfm import metrics  # noqa: E402

LAYER_SETS = ([6, 8, 10], [4, 6, 8], [5, 7, 9], [6, 8], [8, 10], [7, 9, 11])
BOOTSTRAP_DRAWS = 2000


def layer_rows(tokens_of: Callable[[list[int]], dict[str, token_cache.SplitTokens]], size: int,
               layer_sets: Sequence[Sequence[int]], report: Callable[[tuple[int, ...], dict], None] = lambda *_: None
               ) -> dict[tuple[int, ...], dict]:
    """``{layers: metrics}`` of the untrained, one-phase default row for each of ``layer_sets`` on its tokens
    (``tokens_of(layers)``, loaded one set at a time); each row after the first has ``"difference"``: its
    AU-PRO@0.05 minus the first set's, with a scene-bootstrap interval. ``report`` gets each row when measured."""
    settings = v11.default_config().replace(IMAGE_SIZE=size, EPOCHS=0, SCORING_PHASES=1)
    rows: dict[tuple[int, ...], dict] = {}
    first_maps = masks = None
    for layers in layer_sets:
        tokens = tokens_of(layers)
        test = tokens["test_public"]
        masks = run_quality.ground_truth_masks(test) if masks is None else masks
        out = run_quality.row_outputs(tokens, None, settings.replace(FEATURE_LAYERS=list(layers)))
        labels = np.array([s.label for s in test.samples])
        scenes = [dataset_ad2.scene_of(s.relative_path) for s in test.samples]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            pro = metrics.au_pro_multi(out.test_maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
            row = {"image_auroc": metrics.image_auroc(out.scores, labels), "au_pro_0.05": pro[0.05],
                   "au_pro_0.30": pro[0.3],
                   "seg_f1": metrics.seg_f1(out.test_maps, masks, metrics.mean_plus_k_std(out.val_maps))}
            if first_maps is not None:
                row["difference"] = metrics.paired_au_pro_interval(out.test_maps, first_maps, masks, scenes, 0.05,
                                                                   num_bins=run_quality.PRO_BINS,
                                                                   resamples=BOOTSTRAP_DRAWS)
        first_maps = out.test_maps if first_maps is None else first_maps
        rows[tuple(layers)] = row
        report(tuple(layers), row)
    return rows


def row_line(case: str, layers: tuple[int, ...], row: dict, reference: Sequence[int]) -> str:
    """One printed row: ``row``'s metrics and, when it has one, its difference from the ``reference`` set's."""
    line = (f"{case:22s} FEATURE_LAYERS {','.join(map(str, layers)):9s} AUROC {row['image_auroc']:.4f} "
            f"AU-PRO@0.05 {row['au_pro_0.05']:.4f} @0.30 {row['au_pro_0.30']:.4f} SegF1 {row['seg_f1']:.4f}")
    if "difference" in row:
        found, first = row["difference"], ",".join(map(str, reference))
        line += f" | vs {first}: {found['difference']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]"
    return line


def parse_layer_sets(text: str) -> list[list[int]]:
    """``"6,8,10;4,6,8"`` -> ``[[6, 8, 10], [4, 6, 8]]``; ``ValueError`` naming the bad set."""
    sets = []
    for part in text.split(";"):
        try:
            layers = [int(block) for block in part.split(",")]
        except ValueError:
            raise ValueError(f"--layer-sets: {part!r} is not a comma-separated list of block numbers") from None
        if not layers or min(layers) < 1:
            raise ValueError(f"--layer-sets: {part!r} must name blocks counted from 1")
        sets.append(layers)
    return sets


def main(argv: list[str]) -> int:
    option = "--layer-sets="
    chosen = [arg for arg in argv if arg.startswith(option)]
    try:
        layer_sets = parse_layer_sets(chosen[-1][len(option):]) if chosen else [list(s) for s in LAYER_SETS]
        cases, extractor, backbone = run_quality.probe_setup([arg for arg in argv if not arg.startswith(option)])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not cases:
        print("usage: layer_probe.py DATASET@SIZE ...", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    every: dict[tuple[int, ...], list[dict]] = {tuple(layers): [] for layers in layer_sets}
    for name, size in cases:
        category, root = run_quality.case_root(name)
        token_cache.cache_layer_sets(extractor.backbone, str(root), category, backbone, size, layer_sets,
                                     batch_size=defaults.BATCH_SIZE)
        rows = layer_rows(lambda layers: token_cache.pipeline_tokens(None, str(root), category, backbone, size, layers),
                          size, layer_sets,
                          lambda layers, row: print(row_line(f"{name}@{size}", layers, row, layer_sets[0]), flush=True))
        for layers, row in rows.items():
            every[layers].append(row)
    if len(cases) > 1:
        for layers, rows in every.items():
            mean = {key: float(np.mean([row[key] for row in rows]))
                    for key in ("image_auroc", "au_pro_0.05", "au_pro_0.30", "seg_f1")}
            print(row_line("mean", layers, mean, layer_sets[0]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
