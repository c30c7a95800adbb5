"""AnomalyVFM v1.1: frozen DINOv2 + three stacked LoRA heads + Mahalanobis scoring, on MVTec AD 2.

    python anomaly_vfm_v11_lora.py                        # every category under DATA_ROOT
    python anomaly_vfm_v11_lora.py --demo                 # generated demo dataset, end to end
    python anomaly_vfm_v11_lora.py --CATEGORIES=can,fabric --IMAGE_SIZE=224

Edit the constants below, or override any of them as --NAME=value (see README.md).
Results go to RESULTS_DIR: performance_summary.txt, results.csv, metrics.json, plots.
"""

# ----------------------------------------------------------------------------------------------
# Configuration. Every name below can be overridden on the command line as --NAME=value.
# ----------------------------------------------------------------------------------------------
# Data
DATA_ROOT = "data/mvtec_ad2"      # folder holding the category folders (<root>/<cat>/train/good, ...)
CATEGORIES = ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]
                                  # any category folders in the AD 2 layout; comma-separated on the command line
# Backbone
BACKBONE = "facebook/dinov2-base" # hub id (downloaded once, then cached) or a local checkpoint folder
FEATURE_LAYERS = [6, 8, 10]       # transformer blocks (from 1) whose tokens feed the heads; several are averaged.
                                  # Middle blocks localise far better than the last (docs/Feature_Layers.md)
IMAGE_SIZE = 448                  # shorter image side in pixels, a multiple of 14 (224: fast, 448: small defects)
# LoRA heads and their training
LORA_RANK = 16                    # rank of each head's low-rank update
LORA_ALPHA = 32.0                 # the update is scaled by LORA_ALPHA / LORA_RANK
EPOCHS = 30                       # passes over the synthetic samples; 0 keeps the heads untrained (the identity)
LEARNING_RATE = 3e-3              # AdamW; the heads learn to undo lighting and noise (docs/Training_Objective.md)
SYNTHETIC_SAMPLES = 90            # multiple of 3: equal thirds lighting / pose / noise, 2/3 with a pasted defect
BATCH_SIZE = 8                    # images per backbone batch and synthetic samples per training step
NUM_WORKERS = "auto"              # processes decoding images while the backbone runs, kept for the whole run:
                                  # auto (min(4, cores - 1); 0 on one core) | 0 (in-process) | any count
DEVICE = "auto"                   # auto | cpu | cuda | mps
SEED = 0                          # same seed, same machine: identical scores
# Scoring
SCORER = "knn"                    # knn (cosine distance to the nearest normal patch) | mahalanobis (Gaussian,
                                  # Ledoit-Wolf); knn localises better on every shared dataset (docs/Heads_and_Scoring.md)
KNN_BANK_SIZE = 20000             # knn only: normal patches kept in the memory bank (0 keeps every one; the full
                                  # bank costs far more than the backbone on a CPU, docs/Benchmark.md)
KNN_BANK_SAMPLING = "coreset"     # knn only: coreset (greedy k-center, as PatchCore: keeps rare normal patches)
                                  # | random (seeded subsample: no selection time, localises worse)
KNN_SHRINKAGE = 0.25              # knn only: below 1, the maps' cosine is taken after whitening by the normal patches'
                                  # covariance shrunk this far towards the identity (a Mahalanobis metric: better
                                  # maps on every shared dataset) | 1: plain cosine, as AnomalyDINO (docs/Heads_and_Scoring.md)
KNN_NUISANCE_WEIGHT = 0.0         # knn with KNN_SHRINKAGE below 1 only: that covariance also gets this much of the
                                  # scatter of how the synthetic lighting and noise samples move normal patches (a
                                  # token minus its regular-light twin), so those moves count as normal variation:
                                  # 1 helps an object under lighting changes, costs a texture whose defects are
                                  # changes of brightness (docs/Heads_and_Scoring.md) | 0: normal patches alone
KNN_IMAGE_BANK_SIZE = 5000        # knn with KNN_SHRINKAGE below 1 only: the image score's own plain-cosine search
                                  # runs against the bank's first this many patches (with coreset sampling a coreset
                                  # of that size): whitened distances rank images worse | 0: images scored on the
                                  # whitened distances, as the maps
CENTRE_MAPS = True                # true: each image's map is shifted by its own median patch distance (to the
                                  # validation images' typical median): one threshold then fits every image,
                                  # whatever its texture or light adds everywhere (docs/Heads_and_Scoring.md)
                                  # | false: the raw patch distances
DISCOUNT_SATURATED = True         # true: a patch's distance above its image's median counts in proportion to its
                                  # pixels the camera did not clip (an overexposed highlight shows light, not the
                                  # surface), in categories whose training images clip too (elsewhere a defect
                                  # brighter than the surface may be what clips; docs/Lighting_and_Thresholds.md)
                                  # | false: every patch counts fully
SCORING_PHASES = 2                # validation and test images scored this many times, the input cropped half a patch
                                  # (7 px) in between them, maps averaged: 1 (the image only) | 2 (also diagonally) | 4
                                  # (also right and down); each phase is one more backbone pass per image. At 448, 2
                                  # gains AU-PRO@0.05 +0.029 (tyre) and +0.019 (magnetic tiles) over 1, 4 another
                                  # +0.008 / +0.003 for twice the passes (docs/Heads_and_Scoring.md)
# Outputs and modes
RESULTS_DIR = "results"           # earlier results are moved to RESULTS_DIR/history/<time>/, never overwritten
FORCE = False                     # true: refit categories that already finished with the same settings
EVALUATE_ONLY = False             # true: recompute metrics from saved scores and maps, without the model
PREDICT = ""                      # image or folder: score it with the saved model of the one category in CATEGORIES
EXPORT_SUBMISSION = False         # true: write official TIFF maps + PNG masks for test_private(_mixed)
DEMO = False                      # true (or --demo): generate the demo dataset and run on it
# ----------------------------------------------------------------------------------------------

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere, import from the repo

from anomalyvfm.config import Config, ConfigError, apply_overrides, settings_help, wants_help  # noqa: E402

DEMO_ROOT = "data/demo_ad2"


def default_config() -> Config:
    """The constants above as a ``Config``."""
    return Config.from_constants(globals())


def help_text(prog: str, defaults: Config | None = None, usage: str = "") -> str:
    """``--help``: the settings, defaults and meanings read from the constants block above."""
    return settings_help(Path(__file__).read_text(encoding="utf-8"), defaults or default_config(), prog, usage)


def build_config(argv: Sequence[str], defaults: Config | None = None) -> Config:
    """Defaults, then the demo's settings if asked for, then the command line's overrides."""
    config = apply_overrides(defaults or default_config(), argv)
    if config.DEMO:
        demo = {"DATA_ROOT": DEMO_ROOT, "IMAGE_SIZE": 224}
        from anomalyvfm.demo_data import DEMO_CATEGORIES

        demo["CATEGORIES"] = list(DEMO_CATEGORIES)
        # The command line still wins over the demo's defaults.
        explicit = {arg[2:].partition("=")[0].upper() for arg in argv}
        config = config.replace(**{k: v for k, v in demo.items() if k not in explicit})
    return config


def run(config: Config, method=None, **options):
    """Run the pipeline with ``config`` (importable: tests and experiments call this)."""
    from anomalyvfm.pipeline import run as run_pipeline

    return run_pipeline(config, method, **options)


def _categories_at(data_root: str) -> list[str]:
    import dataset_ad2

    try:
        return dataset_ad2.list_categories(data_root)
    except dataset_ad2.DatasetError:
        return []


def _one_line(error: BaseException) -> str:
    """An error's message on one line (some carry indented hints on further lines)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _describe_os_error(error: OSError) -> str:
    where = f" {error.filename}" if error.filename else ""
    return (f"cannot access{where}: {error.strerror or error}; check that the path exists, that there is "
            "free disk space, and the permissions.")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _newer_than(path: Path, since: float) -> bool:
    """``path`` (a file, or a folder holding a file) was written at or after ``since`` (epoch seconds)."""
    if path.is_file():
        return path.stat().st_mtime >= since
    return path.is_dir() and any(f.stat().st_mtime >= since for f in path.rglob("*") if f.is_file())


def done_line(results_dir: Path, categories: Sequence[str], started: float, elapsed: float) -> str:
    """The last line of a run: time taken, where the summary is, and what this run wrote.

    ``categories``: the categories ``run()`` returned (none for PREDICT); ``started``: the run's
    start (epoch seconds), so that files of earlier runs in ``results_dir`` are not listed.
    """
    head = f"Done in {_duration(elapsed)}."
    predictions = [p for p in sorted((results_dir / "predictions").glob("*/predictions.csv"))
                   if p.stat().st_mtime >= started]
    if predictions:
        return f"{head} Predictions: {predictions[-1]} (with maps/, masks/ and overlays/ beside it)."
    if not categories:
        return f"{head} Nothing was written to {results_dir}."
    reports = sorted(p.name for p in results_dir.glob("*") if p.is_file() and p.stat().st_mtime >= started)
    plots = [name for name in reports if name.endswith(".png")]
    files = [name for name in reports if not name.endswith(".png") and name != "performance_summary.txt"]
    parts = [f"Summary: {results_dir / 'performance_summary.txt'}.",
             f"Also in {results_dir}: {', '.join(files)}, {len(plots)} plots ({', '.join(plots)});",
             f"per category (scores.csv, maps/, model/) in {results_dir}/<category>/ for {', '.join(categories)}."]
    exports = [str(results_dir / folder) for folder in ("anomaly_images", "anomaly_images_thresholded")
               if _newer_than(results_dir / folder, started)]
    if exports:
        parts.append(f"Submission files: {', '.join(exports)}.")
    return " ".join([head, *parts])


def main(argv: Sequence[str] | None = None, method=None, defaults: Config | None = None) -> int:
    """The command line. Expected failures print one ``error: ...`` line (what, where, what to do):
    exit 2 for a setting, 1 for data, backbone, results folder or files; real bugs keep their traceback."""
    started, start = time.time(), time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(help_text(Path(sys.argv[0]).name, defaults))
        return 0
    try:
        config = build_config(argv, defaults)
    except ConfigError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    import dataset_ad2
    from anomalyvfm.backbone import BackboneError
    from anomalyvfm.errors import PipelineError

    try:
        if config.DEMO and not _categories_at(config.DATA_ROOT):
            from anomalyvfm.demo_data import generate_demo_dataset

            generate_demo_dataset(config.DATA_ROOT)
            logging.info("Generated the demo dataset in %s", config.DATA_ROOT)
        if not config.PREDICT and not _categories_at(config.DATA_ROOT):
            print(f"error: no dataset found at DATA_ROOT={config.DATA_ROOT!r} (expected <root>/<category>/train/good).\n"
                  f"  MVTec AD 2 is available at {dataset_ad2.DOWNLOAD_URL}; unpack it and pass --DATA_ROOT=/path/to/mvtec_ad2.\n"
                  "  To try the pipeline first, run: python anomaly_vfm_v11_lora.py --demo", file=sys.stderr)
            return 2
        categories = run(config, method)
    except ConfigError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (dataset_ad2.DatasetError, BackboneError, PipelineError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {_describe_os_error(error)}", file=sys.stderr)
        return 1
    if categories:
        from anomalyvfm.report_html import write_report_html

        write_report_html(Path(config.RESULTS_DIR), config.DATA_ROOT)
    print(done_line(Path(config.RESULTS_DIR), list(categories), started, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
