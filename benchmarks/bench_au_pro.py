"""Exact versus streaming AU-PRO, side by side: seconds and peak memory.

    python benchmarks/bench_au_pro.py            # both cases below (AD2 scale: ~2 GB of temp files)
    python benchmarks/bench_au_pro.py --quick    # small sizes, a smoke test

Cases (synthetic maps: smooth skewed noise, half of the images with 1-4 elliptic defects
scored higher by a random amount, some touching the border):

- (a) 50 maps of 1024 x 1024, float32, generated in memory by the measuring process.
- (b) an AD2-scale category: 200 maps of 2448 x 2048 written as float16 ``.npy`` files
  (masks as 0/255 PNG, None for good images) in a temp dir and passed as paths, so the
  streaming version holds one map at a time. The exact version is skipped when its
  estimated memory exceeds ``--exact-limit-gib`` (16 GiB).

Both methods compute ``au_pro_multi(..., (0.05, 0.3))``, streaming with ``DEFAULT_NUM_BINS``.
Memory: each measurement runs in a fresh subprocess, and peak memory is that process's
own peak resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read by the child at
its end (what ``RUSAGE_CHILDREN`` would show for it alone). It includes the interpreter and
imports and, in case (a), the 50 in-memory maps; "RSS before" is the child's RSS just before
the call, so the call's own extra memory is the difference. Seconds cover only the call
(for (b) including reading the files, which are likely still in the page cache).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anomalyvfm.metrics import DEFAULT_NUM_BINS, au_pro_multi  # noqa: E402

LIMITS = (0.05, 0.3)
# exact: the loaded float32 maps + their concatenation + allocator slack (9.1 measured in (b))
EXACT_FIXED_BYTES_PER_PIXEL = 10
EXACT_BYTES_PER_LEVEL = 28  # exact: per distinct score (indices, counts, values)


def synthetic_pair(seed: int, shape: tuple[int, int], defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """A ``[H, W]`` float32 anomaly map and its bool mask, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    height, width = shape
    coarse = rng.standard_normal((height // 32 + 2, width // 32 + 2)).astype(np.float32)
    scores = np.exp(0.5 * ndimage.zoom(coarse, 32, order=1)[:height, :width])  # smooth, right-skewed
    scores += 0.1 * rng.standard_normal(shape, dtype=np.float32)
    mask = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 5) if defective else 0):
        radii = rng.uniform(2, min(shape) / 12, size=2)
        centre = rng.uniform(0, 1, size=2) * shape
        top, left = np.maximum((centre - radii).astype(int), 0)
        bottom, right = np.minimum((centre + radii).astype(int) + 1, shape)
        rows, cols = np.ogrid[top:bottom, left:right]
        distance = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2
        inside = distance <= 1
        mask[top:bottom, left:right] |= inside
        scores[top:bottom, left:right] += rng.uniform(0.3, 2.0) * np.where(inside, 1.2 - 0.6 * distance, 0)
    return scores, mask


def _cases(quick: bool) -> dict[str, tuple[int, tuple[int, int]]]:
    if quick:
        return {"(a) 10 maps 256x256, in memory": (10, (256, 256)),
                "(b) 10 maps 612x512, float16 .npy paths": (10, (612, 512))}
    return {"(a) 50 maps 1024x1024, in memory": (50, (1024, 1024)),
            "(b) 200 maps 2448x2048, float16 .npy paths": (200, (2448, 2048))}


def write_category(directory: Path, count: int, shape: tuple[int, int]) -> tuple[list[str], list[str | None]]:
    """Write ``count`` float16 maps (.npy) and PNG masks into ``directory``; return their paths."""
    maps, masks = [], []
    for index in range(count):
        scores, mask = synthetic_pair(index, shape, defective=index % 2 == 0)
        maps.append(str(directory / f"{index:03d}.npy"))
        np.save(maps[-1], scores.astype(np.float16))
        masks.append(None)
        if mask.any():
            masks[-1] = str(directory / f"{index:03d}_mask.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks[-1])
    return maps, masks


def _rss_mib() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(job: dict) -> dict:
    """Run in the child: build or list the inputs, then time one ``au_pro_multi`` call."""
    if job["paths"]:
        maps, masks = job["paths"]
    else:
        pairs = [synthetic_pair(i, tuple(job["shape"]), defective=i % 2 == 0) for i in range(job["count"])]
        maps, masks = [p[0] for p in pairs], [p[1] for p in pairs]
        del pairs
    before = _rss_mib()
    start = time.perf_counter()
    result = au_pro_multi(maps, masks, LIMITS, num_bins=job["num_bins"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": before, "au_pro": result[0.05], "au_pro_0.3": result[0.3]}


def _in_subprocess(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--job", json.dumps(job)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"AU-PRO benchmark job failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def exact_estimate_gib(count: int, shape: tuple[int, int], float16: bool) -> float:
    """Estimated peak memory of the exact version: fixed bytes per pixel + bytes per distinct score."""
    pixels = count * shape[0] * shape[1]
    levels = min(pixels, 2 ** 16) if float16 else pixels  # float16 has at most 65536 distinct values
    return (pixels * EXACT_FIXED_BYTES_PER_PIXEL + levels * EXACT_BYTES_PER_LEVEL) / 2 ** 30


def benchmark_au_pro(quick: bool = False, num_bins: int = DEFAULT_NUM_BINS, exact_limit_gib: float = 16.0,
                     temp_root: str | None = None) -> dict:
    """Measure both methods on both cases; returns ``{"rows": [...], "max_abs_diff": ..., ...}``.

    Each row: case, method, seconds, peak_rss_mib, rss_before_mib, au_pro (at 0.05), au_pro_0.3,
    note (why a measurement was skipped). ``max_abs_diff``: largest |exact - streaming| over
    the cases measured both ways and both limits.
    """
    rows, differences = [], []
    directory = Path(tempfile.mkdtemp(prefix="bench-au-pro-", dir=temp_root))
    try:
        for case, (count, shape) in _cases(quick).items():
            from_disk = case.startswith("(b)")
            paths = write_category(directory, count, shape) if from_disk else None
            job = {"count": count, "shape": shape, "paths": paths}
            streaming = _in_subprocess(dict(job, num_bins=num_bins))
            estimate = exact_estimate_gib(count, shape, float16=from_disk)
            if estimate > exact_limit_gib:
                exact = {"seconds": None, "peak_rss_mib": None, "rss_before_mib": None, "au_pro": None,
                         "au_pro_0.3": None, "note": f"skipped: needs ~{estimate:.0f} GiB > {exact_limit_gib:g} GiB"}
            else:
                exact = _in_subprocess(dict(job, num_bins=None))
                differences += [abs(exact[key] - streaming[key]) for key in ("au_pro", "au_pro_0.3")]
            rows.append(dict(exact, case=case, method="exact"))
            rows.append(dict(streaming, case=case, method=f"streaming ({num_bins} bins)"))
            if paths:
                for path in paths[0] + [m for m in paths[1] if m]:
                    Path(path).unlink()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"rows": rows, "max_abs_diff": max(differences) if differences else None, "num_bins": num_bins,
            "memory": "peak RSS of a fresh subprocess per measurement (getrusage RUSAGE_SELF ru_maxrss in the child)"}


def markdown(report: dict) -> str:
    def fmt(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = ["| case | method | seconds | peak RSS (MiB) | RSS before (MiB) | AU-PRO@0.05 | AU-PRO@0.3 | note |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['case']} | {row['method']} | {fmt(row['seconds'], 2)} | {fmt(row['peak_rss_mib'], 0)} | "
                     f"{fmt(row['rss_before_mib'], 0)} | {fmt(row['au_pro'], 6)} | {fmt(row['au_pro_0.3'], 6)} | "
                     f"{row.get('note', '')} |")
    difference = report["max_abs_diff"]
    lines += ["", f"max |exact - streaming| (both limits, cases run both ways): "
                  f"{'n/a' if difference is None else f'{difference:.2e}'}", f"Memory: {report['memory']}."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--num-bins", type=int, default=DEFAULT_NUM_BINS)
    parser.add_argument("--exact-limit-gib", type=float, default=16.0)
    parser.add_argument("--temp-root", default=None, help="where to write case (b)'s files (default: system temp)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return 0
    print(markdown(benchmark_au_pro(args.quick, args.num_bins, args.exact_limit_gib, args.temp_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
