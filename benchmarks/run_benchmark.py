"""Speed, memory and quality of AnomalyVFM on every shared dataset, and at MVTec AD 2 scale.

    python benchmarks/run_benchmark.py                                  # every dataset, IMAGE_SIZE 224 and 448
    python benchmarks/run_benchmark.py --datasets=magtile_ad2 --image-sizes=224 --max-images=8   # a quick check

Each measurement runs in a fresh subprocess, so every peak memory figure is that part's
own. Prints Markdown tables and writes benchmarks/latest.json (paths relative to the
repository root) after every case; the cases an earlier run wrote there and this one does not
rerun are kept, each row with the date and commit it was measured at.

- floor: ONE FULL-DEPTH backbone pass (every block) over each image of the category, with
  the pipeline's loader and batching: what a user compares the pipeline with.
- pipeline: v1.1 end to end (fresh results folder), its per-stage seconds (anomalyvfm.timing)
  and metrics; ratio = pipeline / floor.
- AD 2 scale: generated 2448x2048 and 4224x1056 PNG categories (8 train, 4 validation, 4 good
  + 4 bad test images with masks) through the pipeline: decode, backbone, maps and metrics
  seconds and peak memory.
- au_pro: exact versus streaming AU-PRO (benchmarks/bench_au_pro.py).
- quality (--quality): v1.1 beside untrained heads, CLS-only Mahalanobis and SCORER=knn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomalyvfm.method import Method  # noqa: E402
from benchmarks.provenance import code_commit  # noqa: E402

SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"
DEFAULT_BACKBONE = SHARED / "models" / "dinov2-small-imgfocus"
# AD 2-scale generated categories: (name, (height, width)) as fabric and sheet_metal.
AD2_SCALE = (("generated_2448x2048", (2048, 2448)), ("generated_4224x1056", (1056, 4224)))
AD2_SCALE_COUNTS = {"train/good": 8, "validation/good": 4, "test_public/good": 4, "test_public/bad": 4}
QUALITY_VARIANTS = {
    "v1.1": {},
    "v1.1 untrained heads": {"EPOCHS": 0},
    "CLS-only Mahalanobis": {"METHOD": "cls-only"},
    "SCORER=knn": {"SCORER": "knn"},
}
MEMORY_TARGET_MIB = 4096


def relative(path: Path | str) -> str:
    """``path`` relative to the repository root (``../shared/...``), never absolute, for the JSON."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def _peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest child (a decode worker). Linux: KiB."""
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _config(args: argparse.Namespace, results_dir: Path, **changes):
    import anomaly_vfm_v11_lora as v11
    from anomalyvfm.config import apply_overrides

    defaults = apply_overrides(v11.default_config(), [f"--{setting}" for setting in args.config])
    return defaults.replace(DATA_ROOT=str(args.data_root), CATEGORIES=[args.category],
                                        BACKBONE=str(args.backbone), IMAGE_SIZE=args.image_size,
                                        FEATURE_LAYERS=args.feature_layers or v11.FEATURE_LAYERS,
                                        RESULTS_DIR=str(results_dir), DEVICE=args.device, **changes)


# -- the parts, each run in its own subprocess ---------------------------------------------------
def part_floor(args: argparse.Namespace) -> dict:
    """One full-depth backbone pass over train, validation and test_public, as the pipeline loads them."""
    import dataset_ad2
    from anomalyvfm.backbone import FeatureExtractor, ImageLoader, autocast, load_backbone, normalize, resolve_device

    config = _config(args, Path(tempfile.mkdtemp()))
    data = dataset_ad2.load_category(config.DATA_ROOT, args.category)
    paths = [s.path for split in ("train", "validation", "test_public") for s in data.split(split)]
    device = resolve_device(config.DEVICE)
    extractor = FeatureExtractor(load_backbone(config.BACKBONE), config.FEATURE_LAYERS, full_depth=True).to(device)
    start = time.perf_counter()
    with ImageLoader(config.NUM_WORKERS, batch_size=config.BATCH_SIZE, device=device) as loader:
        for _, images in loader.batches(paths, config.IMAGE_SIZE, extractor.patch_size):
            with autocast(device):
                extractor(normalize(images.to(device)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(paths), "images_per_second": len(paths) / seconds} | _peak_rss_mib()


def part_pipeline(args: argparse.Namespace, variant: str) -> dict:
    """One full pipeline run of ``variant`` in a fresh results folder."""
    from anomalyvfm import timing
    from anomalyvfm.pipeline import run

    changes = dict(QUALITY_VARIANTS[variant])
    method = ClsOnly() if changes.pop("METHOD", None) == "cls-only" else Method()
    config = _config(args, Path(tempfile.mkdtemp(prefix="anomalyvfm-bench-")), **changes)
    timing.reset()
    start = time.perf_counter()
    metrics = run(config, method, progress=False)[args.category]
    seconds = time.perf_counter() - start
    images = metrics["n_train"] + metrics["n_test_good"] + metrics["n_test_bad"]
    return {"seconds": seconds, "stages": dict(timing.seconds), "images": images,
            "metrics": {key: metrics[key] for key in ("image_auroc", "au_pro_0.05", "au_pro_0.30", "seg_f1")}
            } | _peak_rss_mib()


def part_decode(args: argparse.Namespace) -> dict:
    """Seconds to decode one image of the category, in this process alone (no workers)."""
    import dataset_ad2

    data = dataset_ad2.load_category(args.data_root, args.category)
    paths = [s.path for split in ("train", "validation", "test_public") for s in data.split(split)]
    start = time.perf_counter()
    for path in paths:
        dataset_ad2.load_image(path)
    return {"seconds_per_image": (time.perf_counter() - start) / len(paths), "images": len(paths)}


class ClsOnly(Method):
    """The predecessor's method: the image's CLS distance is its score and its (flat) map."""

    name = "cls-only"

    def patch_distances(self, distances: torch.Tensor, cls_distance: float, attention) -> torch.Tensor:
        return torch.full_like(distances, cls_distance)

    def image_score(self, cls_z: float, patch_z: float) -> float:
        return cls_z


def _subprocess(args: argparse.Namespace, data_root: Path, category: str, image_size: int, part: str,
                variant: str = "") -> dict:
    command = [sys.executable, __file__, f"--part={part}", f"--variant={variant}", f"--data-root={data_root}",
               f"--category={category}", f"--backbone={args.backbone}", f"--image-size={image_size}",
               f"--device={args.device}"]
    if args.feature_layers:
        command.append(f"--feature-layers={','.join(map(str, args.feature_layers))}")
    command += [f"--config={setting}" for setting in args.config]
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"benchmark part {part} {variant} on {category} @{image_size} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- data ------------------------------------------------------------------------------------------
def subset_root(data_root: Path, category: str, max_images: int, workspace: Path) -> Path:
    """A data root of links to the first ``max_images`` images of each split folder (and their masks)."""
    import dataset_ad2

    source = dataset_ad2.category_root(data_root, category)
    target = workspace / category
    for folder in sorted({p.parent for p in source.rglob("*") if p.suffix.lower() in dataset_ad2.IMAGE_EXTENSIONS}):
        if "ground_truth" in folder.parts:
            continue
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in dataset_ad2.IMAGE_EXTENSIONS)[:max_images]
        for image in images:
            link = target / image.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(image.resolve())
            mask = source / folder.relative_to(source).parent / "ground_truth" / folder.name / f"{image.stem}_mask.png"
            if mask.is_file():
                mask_link = target / mask.relative_to(source)
                mask_link.parent.mkdir(parents=True, exist_ok=True)
                mask_link.symlink_to(mask.resolve())
    return workspace


def generate_ad2_scale(root: Path, name: str, size: tuple[int, int], seed: int, max_images: int) -> None:
    """A category of textured ``size`` (H, W) PNGs; bad test images carry a bright blob and its mask.

    ``AD2_SCALE_COUNTS`` images per folder, at most ``max_images`` when that is not 0.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    rows, columns = np.ogrid[:height, :width]
    texture = (40 * np.sin(columns / 23.0) * np.cos(rows / 31.0)).astype(np.float32)[..., None]
    for folder, count in AD2_SCALE_COUNTS.items():
        (root / name / folder).mkdir(parents=True, exist_ok=True)
        for index in range(min(count, max_images or count)):
            noise = rng.normal(0, 6, (height // 8, width // 8, 3)).astype(np.float32)
            image = 120 + texture + np.kron(noise, np.ones((8, 8, 1), np.float32))[:height, :width]
            stem = f"{index:03d}_regular"
            if folder == "test_public/bad":
                mask = np.zeros(size, np.uint8)
                top, left = rng.integers(0, height - 200), rng.integers(0, width - 200)
                mask[top:top + 200, left:left + 200] = 255
                image[mask > 0] += 70
                (root / name / "test_public/ground_truth/bad").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / name / "test_public/ground_truth/bad" / f"{stem}_mask.png")
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name / folder / f"{stem}.png",
                                                                          compress_level=1)


# -- report ----------------------------------------------------------------------------------------
def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); no GPU"


SETTINGS_KEYS = ("backbone", "max_images", "config")  # rows measured otherwise are not merged


def settings_conflicts(earlier: dict, report: dict) -> list[str]:
    """The ``SETTINGS_KEYS`` whose values differ between an earlier report and this run's."""
    return [key for key in SETTINGS_KEYS if earlier.get(key) != report.get(key)]


def merged(earlier: dict | None, report: dict) -> dict:
    """``report`` plus what ``earlier`` (the output file it is about to replace) measured and this run did not.

    Dataset runs and AD 2-scale cases are matched by (dataset, IMAGE_SIZE), quality rows also by
    variant; the rerun ones are replaced, the others kept with their own ``measured`` (date, commit);
    the AU-PRO comparison is kept unless rerun. ``skipped_cases``: the cases skipped now or before
    that have no row. Called before every write, so a stopped run keeps every earlier row."""
    if not earlier:
        return report
    out = dict(report)
    keys = {"runs": ("dataset", "image_size"), "ad2_scale": ("dataset", "image_size"),
            "quality": ("dataset", "image_size", "variant")}
    for part, names in keys.items():
        fresh = {tuple(row[name] for name in names) for row in report[part]}
        kept = [dict(row, measured=row.get("measured", earlier.get("date", "unknown")),
                     machine=row.get("machine", earlier.get("machine", "unknown")))
                for row in earlier.get(part, []) if tuple(row[name] for name in names) not in fresh]
        out[part] = sorted(kept + report[part], key=lambda row: (row["dataset"], row["image_size"]))
    if not report.get("au_pro") and earlier.get("au_pro"):
        out["au_pro"] = dict(earlier["au_pro"], measured=earlier["au_pro"].get("measured", earlier.get("date", "unknown")))
    measured = {f"{Path(row['dataset']).name}@{row['image_size']}" for row in out["runs"]}
    out["skipped_cases"] = sorted((set(report["skipped_cases"]) | set(earlier.get("skipped_cases", []))) - measured)
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    subset = f", at most {report['max_images']} images per folder" if report["max_images"] else ""
    settings = f", settings {' '.join(report['config'])}" if report["config"] else ""
    skipped = f"; not run: {', '.join(report['skipped_cases'])}" if report.get("skipped_cases") else ""
    machines = sorted({row.get("machine", report["machine"]) for part in ("runs", "ad2_scale") for row in report.get(part, [])}
                      or {report["machine"]})
    lines = [f"Machine: {'; '.join(machines)}" + (" (each row's measured date says which)" if len(machines) > 1 else ""),
             f"Backbone: {report['backbone']}{subset}{settings}{skipped}", ""]
    stage_names = sorted({name for row in report["runs"] for name in row["pipeline"]["stages"]})
    lines += ["| dataset | IMAGE_SIZE | images | floor s | pipeline s | **ratio** | images/s | peak RSS MiB | "
              "heads+bank+score / backbone | " + " | ".join(f"{name} s" for name in stage_names) + " | measured |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(stage_names) + "---|"]
    for row in report["runs"]:
        floor, pipe = row["floor"], row["pipeline"]
        stages = " | ".join(f"{pipe['stages'].get(name, 0.0):.1f}" for name in stage_names)
        own = sum(pipe["stages"].get(name, 0.0) for name in ("training", "fitting", "scoring"))
        share = own / pipe["stages"]["backbone"] if pipe["stages"].get("backbone") else float("nan")
        lines.append(f"| {row['dataset']} | {row['image_size']} | {floor['images']} | {floor['seconds']:.1f} | "
                     f"{pipe['seconds']:.1f} | **{row['ratio']:.3f}** | {pipe['images'] / pipe['seconds']:.2f} | "
                     f"{max(pipe['peak_rss_mib'], floor['peak_rss_mib']):.0f} | {share:.0%} | {stages} | "
                     f"{row.get('measured', 'n/a')} |")
    lines.append("")
    lines += ["| dataset | IMAGE_SIZE | image AUROC | AU-PRO@0.05 | AU-PRO@0.30 | SegF1 |", "|---|---:|---:|---:|---:|---:|"]
    for row in report["runs"]:
        m = row["pipeline"]["metrics"]
        lines.append(f"| {row['dataset']} | {row['image_size']} | {_fmt(m['image_auroc'])} | {_fmt(m['au_pro_0.05'])} | "
                     f"{_fmt(m['au_pro_0.30'])} | {_fmt(m['seg_f1'])} |")
    lines.append("")
    if report.get("ad2_scale"):
        lines += [f"AD 2 scale (generated PNGs; {', '.join(f'{n} {k}' for k, n in AD2_SCALE_COUNTS.items())}); "
                  f"memory target {MEMORY_TARGET_MIB} MiB", "",
                  "| dataset | IMAGE_SIZE | decode s/image (1 process) | load wait s | backbone s | maps s | metrics s | "
                  "pipeline s | images/s | peak RSS MiB | worker peak MiB | measured |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in report["ad2_scale"]:
            pipe, stages = row["pipeline"], row["pipeline"]["stages"]
            lines.append(f"| {row['dataset']} | {row['image_size']} | {row['decode']['seconds_per_image']:.3f} | "
                         f"{stages.get('load', 0):.1f} | {stages.get('backbone', 0):.1f} | {stages.get('maps', 0):.1f} | "
                         f"{stages.get('metrics', 0):.1f} | {pipe['seconds']:.1f} | {pipe['images'] / pipe['seconds']:.2f} | "
                         f"{pipe['peak_rss_mib']:.0f} | {pipe['worker_peak_rss_mib']:.0f} | {row.get('measured', 'n/a')} |")
        lines.append("")
    if report.get("au_pro"):
        lines += [f"AU-PRO, exact against streaming (measured {report['au_pro'].get('measured', 'n/a')})", "",
                  "| AU-PRO case | method | seconds | peak RSS (MiB) | AU-PRO@0.05 |", "|---|---|---:|---:|---:|"]
        for row in report["au_pro"]["rows"]:
            lines.append(f"| {row['case']} | {row['method']} | {_fmt(row.get('seconds'), 2)} | "
                         f"{_fmt(row.get('peak_rss_mib'), 0)} | {_fmt(row.get('au_pro'), 6)} |")
        lines.append("")
    if report.get("quality"):
        lines += ["| dataset | IMAGE_SIZE | variant | image AUROC | AU-PRO@0.05 | AU-PRO@0.30 | SegF1 | seconds |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for row in report["quality"]:
            m = row["metrics"]
            lines.append(f"| {row['dataset']} | {row['image_size']} | {row['variant']} | {_fmt(m['image_auroc'])} | "
                         f"{_fmt(m['au_pro_0.05'])} | {_fmt(m['au_pro_0.30'])} | {_fmt(m['seg_f1'])} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def _comma_list(kind):
    return lambda text: [kind(value) for value in text.split(",") if value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=_comma_list(str), default=None,
                        help=f"folders under {relative(DATASETS)} (default: all)")
    parser.add_argument("--image-sizes", type=_comma_list(int), default=[224, 448])
    parser.add_argument("--max-images", type=int, default=0, help="at most this many images per folder (0: all)")
    parser.add_argument("--backbone", default=str(DEFAULT_BACKBONE))
    parser.add_argument("--feature-layers", type=_comma_list(int), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=value",
                        help="a pipeline setting for every run (repeatable), e.g. --config=EPOCHS=1 for a quick check")
    parser.add_argument("--skip-cases", type=_comma_list(str), default=[], metavar="DATASET@SIZE,...",
                        help="dataset cases not to run, e.g. magtile_ad2@448 (listed in the report as skipped)")
    parser.add_argument("--skip-ad2-scale", action="store_true")
    parser.add_argument("--skip-au-pro", action="store_true")
    parser.add_argument("--quality", action="store_true", help="also the quality variants on every dataset and size")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "latest.json")
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        parts = {"floor": part_floor, "decode": part_decode}
        result = parts[args.part](args) if args.part in parts else part_pipeline(args, args.variant)
        print(json.dumps(result))
        return 0

    import dataset_ad2
    from anomalyvfm.model_io import write_json_atomic

    found = sorted(d.name for d in DATASETS.iterdir() if d.is_dir()) if DATASETS.is_dir() else []
    names = args.datasets or found
    missing = [name for name in names if not (DATASETS / name).is_dir()]
    if not names or missing:
        print(f"error: no dataset {', '.join(missing) or ''} under {DATASETS}", file=sys.stderr)
        return 2
    known = {f"{name}@{size}" for name in names for size in args.image_sizes}
    unknown = [case for case in args.skip_cases if case not in known]
    if unknown:
        print(f"error: --skip-cases {', '.join(unknown)} is none of the cases to run ({', '.join(sorted(known))})",
              file=sys.stderr)
        return 2
    report = {"machine": machine(), "backbone": relative(args.backbone) if Path(args.backbone).exists() else args.backbone,
              "max_images": args.max_images, "config": args.config, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "skipped_cases": args.skip_cases,
              "runs": [], "ad2_scale": [],
              "quality": []}
    earlier = json.loads(args.output.read_text()) if args.output.is_file() else None
    conflicts = settings_conflicts(earlier, report) if earlier else []
    if conflicts:
        print(f"error: {relative(args.output)} holds rows measured with another "
              + ", ".join(f"{key} ({earlier.get(key)!r}, now {report[key]!r})" for key in conflicts)
              + "; its rows are kept and merged only with rows measured the same way. Pass --output=<another file> "
              "(nothing was run)", file=sys.stderr)
        return 2
    measured = f"{report['date'][:10]}, {code_commit()}"
    with tempfile.TemporaryDirectory(prefix="anomalyvfm-bench-data-") as workspace:
        for name in names:
            for category in dataset_ad2.list_categories(DATASETS / name):
                data_root = DATASETS / name
                if args.max_images:
                    data_root = subset_root(data_root, category, args.max_images, Path(workspace) / name)
                for size in args.image_sizes:
                    if f"{name}@{size}" in args.skip_cases:
                        continue
                    row = {"dataset": relative(DATASETS / name), "category": category, "image_size": size,
                           "floor": _subprocess(args, data_root, category, size, "floor"),
                           "pipeline": _subprocess(args, data_root, category, size, "pipeline", "v1.1"),
                           "measured": measured, "machine": report["machine"]}
                    row["ratio"] = row["pipeline"]["seconds"] / row["floor"]["seconds"]
                    report["runs"].append(row)
                    write_json_atomic(args.output, merged(earlier, report))  # after every case: a stopped run keeps what it measured
                    print(f"{name} @{size}: ratio {row['ratio']:.3f}", file=sys.stderr, flush=True)
                    if args.quality:
                        for variant in QUALITY_VARIANTS:
                            result = row["pipeline"] if variant == "v1.1" else _subprocess(
                                args, data_root, category, size, "pipeline", variant)
                            report["quality"].append({"dataset": row["dataset"], "image_size": size, "variant": variant,
                                                      "metrics": result["metrics"], "seconds": result["seconds"],
                                                      "measured": measured})
        if not args.skip_ad2_scale:
            generated = Path(workspace) / "ad2_scale"
            for seed, (name, shape) in enumerate(AD2_SCALE):
                generate_ad2_scale(generated, name, shape, seed, args.max_images)
                for size in args.image_sizes:
                    row = {"dataset": f"{name} (generated)", "image_size": size,
                           "decode": _subprocess(args, generated, name, size, "decode"),
                           "pipeline": _subprocess(args, generated, name, size, "pipeline", "v1.1"),
                           "measured": measured, "machine": report["machine"]}
                    report["ad2_scale"].append(row)
                    write_json_atomic(args.output, merged(earlier, report))
                    print(f"{name} @{size}: {row['pipeline']['seconds']:.1f} s", file=sys.stderr, flush=True)
    if not args.skip_au_pro:
        from benchmarks.bench_au_pro import benchmark_au_pro

        report["au_pro"] = dict(benchmark_au_pro(), measured=measured)
    report = merged(earlier, report)
    write_json_atomic(args.output, report)
    print(markdown(report))
    print(f"\nwritten: {relative(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
