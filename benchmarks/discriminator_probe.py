"""A candidate for issue 10: a patch discriminator trained on the heads' embeddings, fused with the kNN map.

    python benchmarks/discriminator_probe.py tire_ad2@448 magtile_ad2@448

SimpleNet (feature-space Gaussian noise as anomalies) and GLASS (those plus synthetic defects with
masks) train a small discriminator on adapted frozen features and score patches by it. Here it sits
beside the product's kNN map instead of replacing it, so training can add to a strong baseline:

- features: the default row's embeddings (trained heads, ``run_quality.fit_row``), standardised per
  dimension with the normal training tokens' mean and std;
- normal: a seeded sample of the clean training tokens and the synthetic samples' normal tokens (a
  re-lit or noisy normal patch is normal);
- anomalous, per variant: normal tokens plus Gaussian noise of ``sigma`` per standardised dimension,
  the synthetic samples' pasted-defect tokens, or both;
- discriminator: D -> 256 -> 1 with a LeakyReLU, binary cross-entropy, Adam, ``STEPS`` steps of
  ``BATCH`` normal and ``BATCH`` anomalous tokens;
- fusion: each score's patch values z-scored on the validation images' patches and mixed as
  ``(1 - w) z_knn + w z_disc``, then the product's steps (clipped-highlight discount, centring on the
  validation median, maps at the original size, peak image score; the image score mixes the kNN's
  own image search with the discriminator the same way).

``w = 0`` is the default row's maps (up to an affine map per run, which AU-PRO ignores). Printed per
variant and weight: test AU-PRO@0.05 / @0.30, image AUROC, SegF1 at the validation rule, the
difference from ``w = 0`` with its 95 % scene-bootstrap interval, and AU-PRO@0.05 on the
calibration set (validation images plus synthetic defects pasted into them,
``synthetic.make_calibration_samples``): the only data a run could choose ``w`` on.
Tokens come from run_quality's cache.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_quality  # noqa: E402
import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.backbone import to_input  # noqa: E402
from anomalyvfm.calibration import CALIBRATION_PAIRS  # noqa: E402
from anomalyvfm.illumination import IlluminationRange  # noqa: E402
from anomalyvfm.metrics.bootstrap import paired_au_pro_draws, percentile_interval  # noqa: E402
from anomalyvfm.patch_model import sample_tokens  # noqa: E402
from anomalyvfm.scoring import anomaly_map, centred_grid, map_median_of, patch_grid, peak_score  # noqa: E402
from anomalyvfm.synthetic import make_calibration_samples  # noqa: E402

NORMAL_TOKENS = 200_000  # clean training tokens the discriminator sees (seeded sample)
STEPS = 1500
BATCH = 1024
HIDDEN = 256
LEARNING_RATE = 1e-3
VARIANTS = {  # name -> (noise sigma per standardised dimension or 0, use the pasted-defect tokens)
    "noise 0.25": (0.25, False),
    "noise 0.5": (0.5, False),
    "defects": (0.0, True),
    "defects + noise 0.25": (0.25, True),
}
WEIGHTS = (0.0, 0.1, 0.25, 0.5)


@dataclass
class Standardise:
    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def train_discriminator(normal: torch.Tensor, defects: torch.Tensor, sigma: float, seed: int) -> nn.Module:
    """An MLP whose logit is high for anomalous tokens: ``normal`` ``[n, D]`` and ``defects`` ``[m, D]``
    (empty: noise only) standardised tokens; anomalies are noisy normal tokens (``sigma`` > 0) and/or defects."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(normal.shape[1], HIDDEN), nn.LeakyReLU(0.2), nn.Linear(HIDDEN, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        positives = normal[torch.randint(len(normal), (BATCH,), generator=generator)]
        parts = []
        if sigma > 0:
            base = normal[torch.randint(len(normal), (BATCH,), generator=generator)]
            parts.append(base + sigma * torch.randn(base.shape, generator=generator))
        if len(defects):
            parts.append(defects[torch.randint(len(defects), (BATCH,), generator=generator)])
        negatives = torch.cat(parts)[torch.randperm(BATCH * len(parts), generator=generator)[:BATCH]]
        logits = model(torch.cat([positives, negatives])).squeeze(1)
        labels = torch.cat([torch.zeros(BATCH), torch.ones(BATCH)])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="DATASET@SIZE, e.g. tire_ad2@448 (+lighting for the stressed copy)")
    args = parser.parse_args(argv)
    try:
        parsed, extractor, backbone = run_quality.probe_setup(args.cases)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    for name, size in parsed:
        started = time.perf_counter()
        tokens = run_quality.case_tokens(extractor, backbone, name, size)
        train, validation, test = tokens["train"], tokens["validation"], tokens["test_public"]
        settings = defaults.replace(IMAGE_SIZE=size)
        with torch.inference_mode():
            synthetic = run_quality.synthetic_tokens(extractor, train, size, settings.SYNTHETIC_SAMPLES, settings.SEED)
        heads, knn, _, _ = run_quality.fit_row(train, synthetic, settings)
        illumination = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields)
        load = lambda i: to_input(dataset_ad2.load_image(validation.samples[i].path), validation.input_sizes[i])
        calibration = make_calibration_samples(load, len(validation.samples), CALIBRATION_PAIRS, settings.SEED)
        with torch.inference_mode():
            calibration_patches = run_quality.encoder(extractor, illumination)([s.image for s in calibration])
            clean = heads.embed(sample_tokens(train.patches, NORMAL_TOKENS, settings.SEED))
            standardise = Standardise(clean.mean(0), clean.std(0).clamp_min(1e-6))
            synthetic_embedded = standardise(heads.embed(synthetic.tokens))
            normal = torch.cat([standardise(clean), synthetic_embedded[synthetic.labels == 0]])
            defects = synthetic_embedded[synthetic.labels == 1]
            splits = {"validation": validation.patches, "test": test.patches, "calibration": calibration_patches}
            embedded = {split: [heads.embed(g.reshape(-1, g.shape[-1])) for g in grids] for split, grids in splits.items()}
            knn_maps = {split: [knn.distances(e) for e in values] for split, values in embedded.items()}
            # The image score's own search (plain cosine), or the map's distances where the scorer has none.
            knn_images = {split: [d if (d := knn.image_distances(e)) is not None else m
                                  for e, m in zip(embedded[split], knn_maps[split])]
                          for split in ("validation", "test")}
        shares = {"validation": run_quality.saturation(validation, train, settings),
                  "test": run_quality.saturation(test, train, settings), "calibration": None}
        shapes = {split: [g.shape[:2] for g in grids] for split, grids in splits.items()}
        masks = run_quality.ground_truth_masks(test)
        labels = np.array([s.label for s in test.samples])
        scenes = [dataset_ad2.scene_of(s.relative_path) for s in test.samples]
        calibration_masks = [np.zeros(s, bool) for s in validation.input_sizes] + [s.mask.numpy() for s in calibration]
        calibration_sizes = list(validation.input_sizes) + [tuple(s.mask.shape) for s in calibration]
        print(f"{name}@{size}: {len(normal)} normal and {len(defects)} pasted-defect training tokens; "
              f"setup {time.perf_counter() - started:.0f} s", flush=True)

        def zscored(values: dict[str, list[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
            reference = torch.cat(values["validation"])
            mean, std = reference.mean(), reference.std()
            return {split: [(v - mean) / std for v in grids] for split, grids in values.items()}

        z_knn = zscored(knn_maps)
        z_knn_images = zscored(knn_images)["test"]
        baseline_maps = None
        for variant, (sigma, use_defects) in VARIANTS.items():
            start = time.perf_counter()
            model = train_discriminator(normal, defects if use_defects else defects[:0], sigma, settings.SEED)
            with torch.inference_mode():
                z_disc = zscored({split: [model(standardise(e)).squeeze(1) for e in values]
                                  for split, values in embedded.items()})
            train_seconds = time.perf_counter() - start
            for weight in WEIGHTS:
                if weight == 0 and baseline_maps is not None:
                    continue
                def grids(split: str) -> list[torch.Tensor]:
                    share = shares[split] or [None] * len(z_knn[split])
                    return [patch_grid(((1 - weight) * a + weight * b).reshape(shape), s)
                            for a, b, shape, s in zip(z_knn[split], z_disc[split], shapes[split], share)]
                validation_grids, test_grids = grids("validation"), grids("test")
                reference = map_median_of(validation_grids)
                maps = [anomaly_map(centred_grid(g, reference), s, o)
                        for g, s, o in zip(test_grids, test.input_sizes, test.original_sizes)]
                validation_maps = [anomaly_map(centred_grid(g, reference), s, o)
                                   for g, s, o in zip(validation_grids, validation.input_sizes, validation.original_sizes)]
                calibration_maps = [anomaly_map(centred_grid(g, reference), s, s)
                                    for g, s in zip(validation_grids + grids("calibration"), calibration_sizes)]
                share = shares["test"] or [None] * len(test_grids)
                scores = np.array([peak_score(patch_grid(((1 - weight) * a + weight * b).reshape(shape), s))
                                   for a, b, shape, s in zip(z_knn_images, z_disc["test"], shapes["test"], share)])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
                    pro = metrics.au_pro_multi(maps, masks, (0.05, 0.3), num_bins=run_quality.PRO_BINS)
                    segf1 = metrics.seg_f1(maps, masks, metrics.mean_plus_k_std(validation_maps))
                    chosen_on = metrics.au_pro(calibration_maps, calibration_masks, 0.05,
                                               num_bins=run_quality.PRO_BINS)
                    if baseline_maps is None:
                        difference = ""
                    else:
                        first, second, draws = paired_au_pro_draws(maps, baseline_maps, masks, scenes, 0.05,
                                                                   num_bins=run_quality.PRO_BINS)
                        interval = percentile_interval(first - second, draws)
                        difference = (f" diff {interval['difference']:+.4f} "
                                      f"[{interval['low']:+.4f}, {interval['high']:+.4f}]")
                label = "w 0 (default row)" if weight == 0 else f"{variant} w {weight:.2f}"
                print(f"{name}@{size} {label:32s} AU-PRO@0.05 {pro[0.05]:.4f} @0.30 {pro[0.3]:.4f} "
                      f"AUROC {metrics.image_auroc(scores, labels):.4f} SegF1 {segf1:.4f}{difference} "
                      f"calibration AU-PRO@0.05 {chosen_on:.4f} (disc train {train_seconds:.0f} s)", flush=True)
                if weight == 0:
                    baseline_maps = maps
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
