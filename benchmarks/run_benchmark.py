"""Speed, memory and quality of AnomalyVFM, measured side by side in one run.

    python benchmarks/run_benchmark.py                       # shared magtile data + real ViT-S, IMAGE_SIZE=224
    python benchmarks/run_benchmark.py --data-root=/data/mvtec_ad2 --category=can --backbone=facebook/dinov2-base

Each measurement runs in a fresh subprocess, so every peak memory figure is that part's
own. Prints a Markdown table and writes benchmarks/latest.json.

- floor: the backbone alone, once over every image of the category (same loader, batching,
  image size): the least any pipeline must spend.
- pipeline: v1.1 end to end on the same category (fresh results folder), with its
  per-stage seconds; ratio = pipeline / floor.
- au_pro: exact versus streaming AU-PRO (benchmarks/bench_au_pro.py).
- quality: v1.1, v1.1 with untrained heads (EPOCHS=0), CLS-only Mahalanobis (the
  predecessor's method) and SCORER=knn.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomalyvfm.method import Method  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "magtile_ad2"
DEFAULT_BACKBONE = SHARED / "models" / "dinov2-small-imgfocus"
QUALITY_VARIANTS = {
    "v1.1": {},
    "v1.1 untrained heads": {"EPOCHS": 0},
    "CLS-only Mahalanobis": {"METHOD": "cls-only"},
    "SCORER=knn": {"SCORER": "knn"},
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _config(args: argparse.Namespace, results_dir: Path, **changes):
    import anomaly_vfm_v11_lora as v11

    return v11.default_config().replace(DATA_ROOT=str(args.data_root), CATEGORIES=[args.category],
                                        BACKBONE=str(args.backbone), IMAGE_SIZE=args.image_size,
                                        FEATURE_LAYERS=args.feature_layers or v11.FEATURE_LAYERS,
                                        RESULTS_DIR=str(results_dir), DEVICE=args.device, **changes)


def part_floor(args: argparse.Namespace) -> dict:
    """The backbone alone over every image of the category."""
    import dataset_ad2
    from anomalyvfm.fit import Runner

    config = _config(args, Path(tempfile.mkdtemp()))
    data = dataset_ad2.load_category(config.DATA_ROOT, args.category)
    paths = [s.path for split in ("train", "validation", "test_public") for s in data.split(split)]
    runner = Runner(config, Method(), progress=False)
    start = time.perf_counter()
    for _ in runner.features(paths, config.IMAGE_SIZE, "floor"):
        pass
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(paths), "images_per_second": len(paths) / seconds,
            "peak_rss_mib": _peak_rss_mib()}


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
    return {"seconds": seconds, "stages": dict(timing.seconds), "peak_rss_mib": _peak_rss_mib(),
            "images": metrics["n_train"] + metrics["n_test_good"] + metrics["n_test_bad"],
            "metrics": {key: metrics[key] for key in ("image_auroc", "au_pro_0.05", "au_pro_0.30", "seg_f1")}}


class ClsOnly(Method):
    """The predecessor's method: the image's CLS distance is its score and its (flat) map."""

    name = "cls-only"

    def patch_distances(self, distances: torch.Tensor, cls_distance: float, attention) -> torch.Tensor:
        return torch.full_like(distances, cls_distance)

    def image_score(self, cls_z: float, patch_z: float) -> float:
        return cls_z


def _subprocess(args: argparse.Namespace, part: str, variant: str = "") -> dict:
    command = [sys.executable, __file__, f"--part={part}", f"--variant={variant}", f"--data-root={args.data_root}",
               f"--category={args.category}", f"--backbone={args.backbone}", f"--image-size={args.image_size}",
               f"--device={args.device}"]
    if args.feature_layers:
        command.append(f"--feature-layers={','.join(map(str, args.feature_layers))}")
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"benchmark part {part} {variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); no GPU"


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}", f"Data: {report['data_root']} / {report['category']}, "
             f"backbone {report['backbone']}, IMAGE_SIZE={report['image_size']}", ""]
    floor, pipe = report["floor"], report["pipeline"]
    lines += ["| measurement | seconds | images/s | peak RSS (MiB) |", "|---|---:|---:|---:|",
              f"| backbone floor ({floor['images']} images) | {floor['seconds']:.1f} | {floor['images_per_second']:.2f} | {floor['peak_rss_mib']:.0f} |",
              f"| full pipeline v1.1 | {pipe['seconds']:.1f} | {pipe['images'] / pipe['seconds']:.2f} | {pipe['peak_rss_mib']:.0f} |",
              f"| **ratio pipeline / floor** | **{report['ratio']:.3f}** | | |", ""]
    lines += ["| stage | seconds | share |", "|---|---:|---:|"]
    for name, seconds in sorted(pipe["stages"].items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {seconds:.1f} | {seconds / pipe['seconds']:.1%} |")
    lines.append("")
    if report.get("au_pro"):
        lines += ["| AU-PRO case | method | seconds | peak RSS (MiB) | AU-PRO@0.05 |", "|---|---|---:|---:|---:|"]
        for row in report["au_pro"]["rows"]:
            lines.append(f"| {row['case']} | {row['method']} | {_fmt(row.get('seconds'), 2)} | "
                         f"{_fmt(row.get('peak_rss_mib'), 0)} | {_fmt(row.get('au_pro'), 6)} |")
        lines.append("")
    if report.get("quality"):
        lines += ["| variant | image AUROC | AU-PRO@0.05 | AU-PRO@0.30 | SegF1 | seconds |", "|---|---:|---:|---:|---:|---:|"]
        for name, row in report["quality"].items():
            m = row["metrics"]
            lines.append(f"| {name} | {_fmt(m['image_auroc'])} | {_fmt(m['au_pro_0.05'])} | {_fmt(m['au_pro_0.30'])} | "
                         f"{_fmt(m['seg_f1'])} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--category", default="magtile")
    parser.add_argument("--backbone", default=str(DEFAULT_BACKBONE))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--feature-layers", type=lambda text: [int(v) for v in text.split(",")], default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-quality", action="store_true", help="only speed, memory and AU-PRO")
    parser.add_argument("--skip-au-pro", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "latest.json")
    parser.add_argument("--part", default="", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        result = part_floor(args) if args.part == "floor" else part_pipeline(args, args.variant)
        print(json.dumps(result))
        return 0
    if not Path(args.data_root).is_dir():
        print(f"error: --data-root {args.data_root} does not exist", file=sys.stderr)
        return 2
    report = {"machine": machine(), "data_root": str(args.data_root), "category": args.category,
              "backbone": str(args.backbone), "image_size": args.image_size,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["floor"] = _subprocess(args, "floor")
    report["pipeline"] = _subprocess(args, "pipeline", "v1.1")
    report["ratio"] = report["pipeline"]["seconds"] / report["floor"]["seconds"]
    if not args.skip_au_pro:
        from benchmarks.bench_au_pro import benchmark_au_pro

        report["au_pro"] = benchmark_au_pro()
    if not args.skip_quality:
        report["quality"] = {"v1.1": report["pipeline"]}
        for variant in list(QUALITY_VARIANTS)[1:]:
            report["quality"][variant] = _subprocess(args, "pipeline", variant)
    from anomalyvfm.model_io import write_json_atomic

    write_json_atomic(args.output, report)
    print(markdown(report))
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
