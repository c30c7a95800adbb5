"""Detection quality of AnomalyVFM against its baselines, on every dataset under ../shared/datasets.

    python benchmarks/run_quality.py                                   # every dataset, IMAGE_SIZE 224 and 448
    python benchmarks/run_quality.py --image-sizes=224 --datasets=tire_ad2 --rows="v1.1 (default),kNN full bank"

Each dataset's backbone tokens are computed once per image size and cached
(``benchmarks/token_cache.py``); every row then replays the same tokens through the product's
own code (``anomalyvfm.patch_model``): heads training on synthetic samples, scorer fit,
validation calibration, patch distances, anomaly maps at the original image size, metrics.
So a row costs seconds to minutes, not a backbone pass, and every row sees identical inputs.

Rows: the current defaults of ``anomaly_vfm_v11_lora.py``; the same with untrained heads
(``--EPOCHS=0``); the AnomalyDINO reference (cosine 1-NN against the FULL memory bank of raw
tokens); and the candidates that decided the defaults (docs/Heads_and_Scoring.md).
Image score for every row: mean of the top 1 % patch distances. SegF1 threshold: validation
maps' mean + 3 std (the AD 2 paper's baseline rule). Writes benchmarks/quality.json and
benchmarks/quality.md; rows already in quality.json for other datasets, sizes or rows are kept,
so ``--rows`` / ``--datasets`` / ``--image-sizes`` can complete a table step by step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

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
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.backbone import FeatureExtractor, load_backbone, normalize, to_input  # noqa: E402
from anomalyvfm.patch_model import HeadSettings, fit_heads_and_scorer, sample_tokens  # noqa: E402
from anomalyvfm.scoring import MAX_FIT_TOKENS  # noqa: E402
from anomalyvfm.scoring import anomaly_map, top_patch_score  # noqa: E402
from anomalyvfm.synthetic import make_synthetic_samples, token_labels  # noqa: E402
from anomalyvfm.training import make_training_tokens  # noqa: E402

SHARED = ROOT.parent / "shared"
PRO_BINS = 20_000


def rows_for(defaults) -> dict[str, dict]:
    """Row name -> settings that differ from the defaults."""
    return {
        "v1.1 (default)": {},
        "v1.1 --EPOCHS=0": {"EPOCHS": 0},
        "kNN full bank": {"SCORER": "knn", "KNN_BANK_SIZE": 0, "EPOCHS": 0},
        "Gaussian (untrained heads)": {"SCORER": "mahalanobis", "EPOCHS": 0},
        "Gaussian (trained heads)": {"SCORER": "mahalanobis"},
        "Gaussian (trained heads; LR 1e-3)": {"SCORER": "mahalanobis", "LEARNING_RATE": 1e-3},
        "kNN 20k bank": {"SCORER": "knn", "KNN_BANK_SIZE": 20_000, "EPOCHS": 0},
    }


def synthetic_tokens(extractor: FeatureExtractor, train: token_cache.SplitTokens, image_size: int, count: int,
                     seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Patch grids ``[gh, gw, D]`` and token labels ``[gh, gw]`` of the synthetic samples (cached)."""
    import anomalyvfm.illumination as illumination_module
    import anomalyvfm.synthetic as synthetic_module
    from anomalyvfm.illumination import IlluminationRange

    recipe = hashlib.sha1(Path(synthetic_module.__file__).read_bytes()
                          + Path(illumination_module.__file__).read_bytes()).hexdigest()[:10]
    key = f"{train.samples[0].category}-{image_size}-{len(train.samples)}-{count}-{seed}-{recipe}"
    file = token_cache.CACHE_DIR / f"synthetic-{key}.pt"
    if file.is_file():
        stored = torch.load(file, weights_only=True)
        return stored["patches"], stored["labels"]
    load = lambda i: to_input(dataset_ad2.load_image(train.samples[i].path), train.input_sizes[i])
    samples = make_synthetic_samples(load, len(train.samples), count, seed)
    illumination = IlluminationRange.of(train.channel_mean, train.channel_std)  # as fit.Runner.fit_scale
    patches, labels = [], []
    for sample in samples:  # sizes may differ between images: one at a time keeps it simple
        features = extractor(normalize(illumination.apply(sample.image[None])))
        patches.append(features.patches[0].half())
        labels.append(token_labels(sample.mask, extractor.patch_size))
    token_cache.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"patches": patches, "labels": labels}, file)
    return patches, labels


def evaluate_row(tokens: dict[str, token_cache.SplitTokens], synthetic: tuple[list, list] | None, settings) -> dict:
    """Fit with ``settings`` on cached tokens, score validation and test, compute every metric."""
    train, validation, test = tokens["train"], tokens["validation"], tokens["test_public"]
    start = time.perf_counter()
    training = make_training_tokens(*synthetic) if synthetic is not None and settings.EPOCHS > 0 else None
    normal_sample = sample_tokens(train.patches, MAX_FIT_TOKENS, settings.SEED)
    heads, scorer, losses = fit_heads_and_scorer(
        train.patches, normal_sample, training, scorer=settings.SCORER, knn_bank_size=settings.KNN_BANK_SIZE,
        heads=HeadSettings(settings.LORA_RANK, settings.LORA_ALPHA, settings.EPOCHS, settings.LEARNING_RATE,
                           settings.BATCH_SIZE, settings.SEED), device=torch.device("cpu"))
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()

    def grids(split: token_cache.SplitTokens) -> list[torch.Tensor]:
        return [scorer.distances(heads.embed(g.reshape(-1, g.shape[-1]))).reshape(g.shape[:2]) for g in split.patches]

    val_grids, test_grids = grids(validation), grids(test)
    score_seconds = time.perf_counter() - start
    start = time.perf_counter()
    val_maps = [anomaly_map(g, s, o) for g, s, o in zip(val_grids, validation.input_sizes, validation.original_sizes)]
    test_maps = [anomaly_map(g, s, o) for g, s, o in zip(test_grids, test.input_sizes, test.original_sizes)]
    map_seconds = time.perf_counter() - start
    labels = np.array([s.label for s in test.samples])
    masks = [s.mask_path for s in test.samples]
    scores = np.array([top_patch_score(g) for g in test_grids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        pro = metrics.au_pro_multi(test_maps, masks, (0.05, 0.3), num_bins=PRO_BINS)
        threshold = metrics.mean_plus_k_std(val_maps)
        return {"image_auroc": metrics.image_auroc(scores, labels), "image_ap": metrics.image_ap(scores, labels),
                "au_pro_0.05": pro[0.05], "au_pro_0.30": pro[0.3],
                "seg_f1": metrics.seg_f1(test_maps, masks, threshold),
                "fit_seconds": fit_seconds, "score_seconds": score_seconds, "map_seconds": map_seconds,
                "losses": losses}


def datasets_under(root: Path) -> list[tuple[str, str, Path]]:
    """``(dataset, category, data_root)`` for every category of every dataset folder under ``root``."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for category in dataset_ad2.list_categories(folder):
            found.append((folder.name, category, folder))
    return found


def mean_rows(results: list[dict]) -> list[dict]:
    keys = ("image_auroc", "au_pro_0.05", "au_pro_0.30", "seg_f1")
    groups: dict[tuple[int, str], list[dict]] = {}
    for entry in results:
        groups.setdefault((entry["image_size"], entry["row"]), []).append(entry["metrics"])
    return [{"image_size": size, "row": row, "datasets": len(group),
             **{k: float(np.mean([m[k] for m in group])) for k in keys}}
            for (size, row), group in groups.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets-root", type=Path, default=SHARED / "datasets")
    parser.add_argument("--datasets", default="", help="comma-separated dataset folder names (default: all)")
    parser.add_argument("--image-sizes", default="224,448")
    parser.add_argument("--backbone", default=str(SHARED / "models" / "dinov2-small-imgfocus"))
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "quality.json")
    args = parser.parse_args(argv)
    if not args.datasets_root.is_dir():
        print(f"error: --datasets-root {args.datasets_root} does not exist", file=sys.stderr)
        return 2
    defaults = v11.default_config()
    all_rows = rows_for(defaults)
    chosen_rows = [r.strip() for r in args.rows.split(",") if r.strip()] or list(all_rows)
    unknown = [r for r in chosen_rows if r not in all_rows]
    if unknown:
        print(f"error: unknown rows {unknown}; valid: {list(all_rows)}", file=sys.stderr)
        return 2
    wanted = {d.strip() for d in args.datasets.split(",") if d.strip()}
    torch.manual_seed(defaults.SEED)
    backbone = load_backbone(args.backbone)
    extractor = FeatureExtractor(backbone, defaults.FEATURE_LAYERS)
    results = []
    for dataset, category, data_root in datasets_under(args.datasets_root):
        if wanted and dataset not in wanted:
            continue
        for size in (int(s) for s in args.image_sizes.split(",")):
            tokens = token_cache.load_or_compute(extractor, str(data_root), category, args.backbone, size,
                                                 defaults.FEATURE_LAYERS, batch_size=defaults.BATCH_SIZE)
            with torch.inference_mode():
                tokens = token_cache.with_illumination_projection(extractor, tokens)
            synthetic = None
            for row in chosen_rows:
                settings = defaults.replace(IMAGE_SIZE=size, **all_rows[row])
                if settings.EPOCHS > 0 and synthetic is None:
                    with torch.inference_mode():
                        synthetic = synthetic_tokens(extractor, tokens["train"], size, settings.SYNTHETIC_SAMPLES,
                                                     settings.SEED)
                start = time.perf_counter()
                result = evaluate_row(tokens, synthetic, settings)
                entry = {"dataset": dataset, "category": category, "image_size": size, "row": row,
                         "settings": all_rows[row], "metrics": result}
                results.append(entry)
                print(f"{dataset:12s} {size:4d} {row:32s} AUROC {fmt(result['image_auroc'])} "
                      f"AU-PRO@0.05 {fmt(result['au_pro_0.05'])} @0.30 {fmt(result['au_pro_0.30'])} "
                      f"SegF1 {fmt(result['seg_f1'])} ({time.perf_counter() - start:.0f} s)", flush=True)
    # Rows of earlier runs (other datasets, sizes or rows) are kept; rerun ones are replaced.
    if args.output.is_file():
        earlier = json.loads(args.output.read_text())["results"]
        fresh = {(e["dataset"], e["image_size"], e["row"]) for e in results}
        results = [e for e in earlier if (e["dataset"], e["image_size"], e["row"]) not in fresh] + results
        results.sort(key=lambda e: (e["dataset"], e["image_size"], list(all_rows).index(e["row"])
                                    if e["row"] in all_rows else len(all_rows)))
    report = {"backbone": os.path.relpath(Path(args.backbone).resolve(), ROOT) if Path(args.backbone).exists()
              else args.backbone,
              "feature_layers": defaults.FEATURE_LAYERS, "seed": defaults.SEED,
              "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d"), "results": results, "mean_rows": mean_rows(results)}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = render_tables.quality_datasets(report)
    args.output.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
