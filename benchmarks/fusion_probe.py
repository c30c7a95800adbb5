"""A retired candidate, kept measurable: the kNN map fused with the Gaussian's (issue 10, item 5).

    python benchmarks/fusion_probe.py tire_ad2@224 magtile_ad2@224 tire_ad2@448

For each ``dataset@size`` (a folder under ../shared/datasets, ``+lighting`` for its stressed copy):
the default heads and coreset bank (``fit_heads_and_scorer``, as ``run_quality``'s default row)
and a Gaussian on the same heads score validation and test; each scorer's patch distances are
z-scored with the validation patches' mean and std and mixed as ``(1 - w) z_knn + w z_gauss``.
Printed per weight: test image AUROC, AU-PRO@0.05/0.30 of the raw maps (as ``--CENTRE_MAPS=false``)
and AU-PRO@0.05 of the centred maps (the default), and AU-PRO@0.05 on the calibration set
(validation images plus synthetic defects pasted into them, ``synthetic.make_calibration_samples``):
the only data a run could choose ``w`` on.
Tokens come from run_quality's cache.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_quality  # noqa: E402
import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.backbone import to_input  # noqa: E402
from anomalyvfm.illumination import IlluminationRange  # noqa: E402
from anomalyvfm.scoring import GaussianScorer, anomaly_map, centred_grid, map_median_of, peak_score  # noqa: E402
from anomalyvfm.calibration import CALIBRATION_PAIRS  # noqa: E402
from anomalyvfm.synthetic import make_calibration_samples  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(cases: list[str]) -> int:
    try:
        parsed, extractor, backbone = run_quality.probe_setup(cases)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    for name, size in parsed:
        tokens = run_quality.case_tokens(extractor, backbone, name, size)
        train, validation, test = tokens["train"], tokens["validation"], tokens["test_public"]
        settings = defaults.replace(IMAGE_SIZE=size, SCORER="knn")
        with torch.inference_mode():
            synthetic = run_quality.synthetic_tokens(extractor, train, size, settings.SYNTHETIC_SAMPLES, settings.SEED)
        heads, knn, _, normal_sample = run_quality.fit_row(train, synthetic, settings)
        gaussian = GaussianScorer.fit(heads.embed(normal_sample), settings.SEED)
        illumination = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields)
        load = lambda i: to_input(dataset_ad2.load_image(validation.samples[i].path), validation.input_sizes[i])
        calibration = make_calibration_samples(load, len(validation.samples), CALIBRATION_PAIRS, settings.SEED)
        with torch.inference_mode():
            calibration_grids = run_quality.encoder(extractor, illumination)([s.image for s in calibration])
            distances = {(split, kind): run_quality.distance_grids(heads, scorer, grids)
                         for split, grids in (("validation", validation.patches), ("test", test.patches),
                                              ("calibration", calibration_grids))
                         for kind, scorer in (("knn", knn), ("gaussian", gaussian))}
        validation_values = {kind: torch.cat([g.flatten() for g in distances["validation", kind]])
                             for kind in ("knn", "gaussian")}
        spread = {kind: (values.mean().item(), values.std().item()) for kind, values in validation_values.items()}
        masks = run_quality.ground_truth_masks(test)
        labels = np.array([s.label for s in test.samples])
        calibration_masks = ([np.zeros(s, bool) for s in validation.input_sizes]
                             + [s.mask.numpy() for s in calibration])
        calibration_sizes = list(validation.input_sizes) + [tuple(s.mask.shape) for s in calibration]
        for weight in WEIGHTS:
            def mixed(split: str) -> list[torch.Tensor]:
                return [(1 - weight) * (a - spread["knn"][0]) / spread["knn"][1]
                        + weight * (b - spread["gaussian"][0]) / spread["gaussian"][1]
                        for a, b in zip(distances[split, "knn"], distances[split, "gaussian"])]
            test_grids, validation_grids = mixed("test"), mixed("validation")
            mixed_calibration = validation_grids + mixed("calibration")
            maps = [anomaly_map(g, s, o) for g, s, o in zip(test_grids, test.input_sizes, test.original_sizes)]
            reference = map_median_of(validation_grids)
            centred = [anomaly_map(centred_grid(g, reference), s, o)
                       for g, s, o in zip(test_grids, test.input_sizes, test.original_sizes)]
            calibration_maps = [anomaly_map(g, s, s) for g, s in zip(mixed_calibration, calibration_sizes)]
            scores = np.array([peak_score(g) for g in test_grids])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                pro = metrics.au_pro_multi(maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
                pro_centred = metrics.au_pro(centred, masks, 0.05, num_bins=run_quality.PRO_BINS)
                chosen_on = metrics.au_pro(calibration_maps, calibration_masks, 0.05, num_bins=run_quality.PRO_BINS)
            print(f"{name:22s} {size:4d} w_gauss {weight:.2f}  test: AUROC {metrics.image_auroc(scores, labels):.4f} "
                  f"AU-PRO@0.05 {pro[0.05]:.4f} @0.30 {pro[0.3]:.4f}, centred maps {pro_centred:.4f}  "
                  f"calibration set: AU-PRO@0.05 {chosen_on:.4f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
