"""Lighting stress benchmark: re-light a regular-light category the way MVTec AD 2's test set is lit.

    python benchmarks/lighting_stress.py --data-root=../shared/datasets/tire_ad2 --category=tire --out=/tmp/stress
    python benchmarks/lighting_stress.py --data-root=../shared/datasets/tire_ad2 --category=tire --out=/tmp/stress \\
        --run --BACKBONE=../shared/models/dinov2-small-imgfocus --IMAGE_SIZE=224 --EPOCHS=0

MVTec AD 2 trains and validates in regular light only and tests every scene under several
illuminations (``overexposed``, ``underexposed``, ``shift_1`` .. ``shift_4``: lighting shifts,
not position shifts). Datasets that only have regular light can be stressed the same way:
``make_stressed_dataset`` writes a copy in the AD 2 layout whose train/ and validation/ are
symlinks to the source (untouched, regular light) and whose test_public/ holds, for each test
image, the regular original (a symlink) and AD 2-named re-lit variants as lossless PNGs, each
with the source's ground-truth mask under its own name. Re-lighting is a per-pixel gain and
gamma, so masks stay aligned; every random choice is seeded by (seed, image, lighting).

- ``overexposed``: gain 1.6-2.2 and a slight gamma, clipped at 255.
- ``underexposed``: gain 0.25-0.45 and a slight gamma, with read noise and 8-bit quantisation.
- ``shift_1``: a colour cast per channel times a linear illumination ramp at a random angle.
- ``shift_2``: an off-centre spotlight (the light moved): bright near it, dim at the far side.
- ``shift_3``: a colour cast times a spotlight.
- ``shift_4``: a colour cast times a ramp times a vignette.
Every illumination field spans gains within [0.4, 1.6]. A grayscale source stays grayscale unless
a colour cast is applied (then it becomes RGB, as a tinted light would make it).

With ``--run`` the pipeline runs on the stressed copy (any ``--NAME=value`` of
``anomaly_vfm_v11_lora.py`` passes through) and a table per lighting group (image AUROC,
AU-PRO@0.05, SegF1, n_good, n_bad) is printed and written to ``lighting_stress.{json,md}`` in
the results folder (default ``<out>/results``). The stressed copy is data generated at run time:
never commit it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dataset_ad2  # noqa: E402

STRESS_LIGHTINGS: tuple[str, ...] = ("overexposed", "underexposed", "shift_1", "shift_2", "shift_3", "shift_4")
STRESS_GROUPS: tuple[str, ...] = ("overexposed", "underexposed", "shift")
GAIN_RANGE = (0.4, 1.6)  # the span of every illumination field of the shifts
MANIFEST = "stress_manifest.json"
_REGULAR_STEM = re.compile(r"^(\d+)_regular$")


# -- re-lighting ------------------------------------------------------------------------------------
def _coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``[H, 1]`` and ``[1, W]`` scaled to [0, 1] along each axis."""
    return ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None], \
        ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]


def _ramp(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A linear illumination gradient ``[H, W]`` at a random angle, from a dim to a bright side."""
    angle = float(rng.uniform(0, 2 * math.pi))
    low, high = float(rng.uniform(GAIN_RANGE[0], 0.7)), float(rng.uniform(1.2, GAIN_RANGE[1]))
    rows, cols = _coordinates(height, width)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    along = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    return low + (high - low) * along, {"ramp_angle_deg": math.degrees(angle), "ramp_gains": [low, high]}


def _spotlight(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A Gaussian pool of light ``[H, W]`` centred away from the image centre, dim far from it."""
    # Centre in an outer band of each axis, so the light visibly comes from one side.
    centre_y, centre_x = (float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.4) + 0.5) for _ in range(2))
    radius = float(rng.uniform(0.35, 0.7))  # in units of the image's extent
    peak, floor = float(rng.uniform(1.2, GAIN_RANGE[1])), float(rng.uniform(GAIN_RANGE[0], 0.7))
    rows, cols = _coordinates(height, width)
    falloff = np.exp(-((rows - centre_y) ** 2 + (cols - centre_x) ** 2) / (2 * radius ** 2))
    return floor + (peak - floor) * falloff, {"spot_centre_yx": [centre_y, centre_x], "spot_radius": radius,
                                              "spot_gains": [floor, peak]}


def _vignette(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Corners darker than the centre ``[H, W]`` (lens and light fall-off), down to 0.6-0.85 at the corners."""
    corner = float(rng.uniform(0.6, 0.85))
    rows, cols = _coordinates(height, width)
    distance = ((rows - 0.5) ** 2 + (cols - 0.5) ** 2) / 0.5  # 0 at the centre, 1 at the corners
    return 1 - (1 - corner) * distance, {"vignette_corner_gain": corner}


def _colour_cast(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Per-channel gains ``[3]`` of a tinted light (e.g. warm: red up, blue down), mean gain 1."""
    gains = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    gains /= gains.mean()
    return gains, {"colour_cast_rgb": gains.tolist()}


def _shift_field(lighting: str, height: int, width: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The spatial gain ``[H, W]`` (clipped to ``GAIN_RANGE``), the colour cast ``[3]`` or None, and the parameters."""
    parts = {"shift_1": ("cast", "ramp"), "shift_2": ("spot",), "shift_3": ("cast", "spot"),
             "shift_4": ("cast", "ramp", "vignette")}[lighting]
    makers = {"ramp": _ramp, "spot": _spotlight, "vignette": _vignette}
    field, cast, params = np.ones((height, width), np.float32), None, {}
    for part in parts:
        if part == "cast":
            cast, described = _colour_cast(rng)
        else:
            gain, described = makers[part](height, width, rng)
            field = field * gain
        params |= described
    return np.clip(field, *GAIN_RANGE), cast, params


def is_grayscale(image: np.ndarray) -> bool:
    """True when the three channels of ``image`` ``[H, W, 3]`` are equal (a grayscale picture)."""
    return np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 0], image[:, :, 2])


def relight(image: np.ndarray, lighting: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """``image`` ``[H, W, 3] uint8`` re-lit as ``lighting`` (of ``STRESS_LIGHTINGS``): ``([H, W, 3] uint8, params)``.

    The light is a gain per pixel (and channel) on the image's values, then a gamma; values clip
    at 0 and 255 and are rounded to 8 bits, as a camera would record them.
    """
    height, width = image.shape[:2]
    values = image.astype(np.float32) / 255
    gamma = float(rng.uniform(0.9, 1.1))  # a slightly different tone response under every light
    params: dict = {"gamma": gamma}
    noise = 0.0
    if lighting == "overexposed":
        params["gain"] = float(rng.uniform(1.6, 2.2))
        values = values * params["gain"]
    elif lighting == "underexposed":
        params["gain"] = float(rng.uniform(0.25, 0.45))
        params["read_noise_dn"] = float(rng.uniform(0.5, 1.5))  # sensor noise matters once the signal is small
        values = values * params["gain"]
        noise = params["read_noise_dn"]
    elif lighting in STRESS_LIGHTINGS:
        field, cast, described = _shift_field(lighting, height, width, rng)
        params |= described
        values = values * field[:, :, None] * (1 if cast is None else cast)
    else:
        raise ValueError(f"unknown stress lighting {lighting!r}; expected one of {', '.join(STRESS_LIGHTINGS)}")
    counts = np.clip(values, 0, 1) ** gamma * 255
    if noise:  # a grayscale (mono) camera has one noise value per pixel, a colour one one per channel
        shape = (height, width, 1) if is_grayscale(image) else counts.shape
        counts = counts + rng.normal(0, noise, shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, 255).astype(np.uint8), params


# -- the stressed copy ------------------------------------------------------------------------------
def stress_lightings(groups: Sequence[str] = STRESS_GROUPS) -> list[str]:
    """The AD 2 lighting names of ``groups`` (``shift`` is shift_1..shift_4), in ``STRESS_LIGHTINGS`` order."""
    unknown = set(groups) - set(STRESS_GROUPS)
    if unknown or not groups:
        raise ValueError(f"groups must be a non-empty subset of {', '.join(STRESS_GROUPS)}, got {list(groups)}")
    return [name for name in STRESS_LIGHTINGS if dataset_ad2.lighting_group(name) in groups]


def _image_ids(samples: list[dataset_ad2.Sample]) -> list[str]:
    """The AD 2 id of each sample of one folder: NNN of ``NNN_regular``, or, if any name is not of that
    form, the position in the folder (000, 001, ...) for all of them, so ids never collide."""
    matches = [_REGULAR_STEM.match(s.stem) for s in samples]
    if all(matches):
        return [m.group(1) for m in matches]
    return [f"{index:03d}" for index in range(len(samples))]


def _seed_for(seed: int, relative_path: str, lighting: str) -> np.random.Generator:
    """A generator that depends only on the seed, the image and the lighting (crc32 is stable across runs)."""
    return np.random.default_rng([seed, zlib.crc32(relative_path.encode()), STRESS_LIGHTINGS.index(lighting)])


def _save_png(pixels: np.ndarray, path: Path, grayscale_source: bool) -> None:
    """Lossless PNG; one channel when the source was grayscale and the light added no tint (no colour cast)."""
    untinted = grayscale_source and is_grayscale(pixels)
    Image.fromarray(pixels[:, :, 0] if untinted else pixels).save(path, compress_level=1)  # fast; still lossless


def make_stressed_dataset(source_root: str | Path, category: str, out_root: str | Path, *, seed: int = 0,
                          groups: Sequence[str] = STRESS_GROUPS, variants_per_image: int | None = None) -> Path:
    """Write the lighting-stressed copy of ``category`` under ``out_root``; returns ``out_root`` (a DATA_ROOT).

    ``out_root/<category>/train`` and ``validation`` are symlinks to the source's folders. For each
    image of ``test_public/{good,bad}`` (all in regular light; the source is found at either AD 2
    nesting) the copy holds ``<id>_regular.<ext>`` (a symlink to it) and ``<id>_<lighting>.png`` for
    the lightings of ``groups`` (``stress_lightings``); ``variants_per_image=k`` keeps only ``k`` of
    them per image, rotating with the image's position so that every lighting stays about equally
    frequent. A bad image's mask is symlinked as ``<variant stem>_mask.png`` beside the others.
    ``out_root/stress_manifest.json`` lists each variant's source and illumination parameters.
    Raises FileExistsError if ``out_root`` is a non-empty folder, ``dataset_ad2.DatasetError`` if a
    test image is not in regular light (re-lighting it would compound two lights).
    """
    lightings = stress_lightings(groups)
    if variants_per_image is not None and not 1 <= variants_per_image <= len(lightings):
        raise ValueError(f"variants_per_image must be in 1..{len(lightings)} for {list(groups)}, "
                         f"got {variants_per_image}")
    source = dataset_ad2.load_category(source_root, category)
    relit = [s for s in source.test_public if s.lighting not in ("regular", "unknown")]
    if relit:
        raise dataset_ad2.DatasetError(f"{relit[0].path} is already under {relit[0].lighting!r} light; the stress "
                                       "benchmark re-lights regular-light test images only.")
    out_root = Path(out_root).expanduser().absolute()
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise FileExistsError(f"{out_root} is not an empty folder; the stressed copy needs a new or empty one.")
    target = out_root / category
    target.mkdir(parents=True)
    for split in ("train", "validation"):
        if (source.root / split).is_dir():
            (target / split).symlink_to((source.root / split).resolve(), target_is_directory=True)
    manifest: dict = {"source": str(source.root.resolve()), "category": category, "seed": seed, "lightings": lightings,
                      "variants_per_image": variants_per_image, "images": {}}
    for folder in ("good", "bad"):
        samples = [s for s in source.test_public if s.path.parent.name == folder]
        (target / "test_public" / folder).mkdir(parents=True)
        if folder == "bad":
            (target / "test_public" / "ground_truth" / "bad").mkdir(parents=True)
        for position, (sample, image_id) in enumerate(zip(samples, _image_ids(samples))):
            chosen = lightings
            if variants_per_image is not None:
                chosen = [lightings[(position + k) % len(lightings)] for k in range(variants_per_image)]
            image = dataset_ad2.load_image(sample.path)
            grayscale = is_grayscale(image)
            outputs = {"regular": (target / "test_public" / folder / f"{image_id}_regular{sample.path.suffix}")}
            outputs["regular"].symlink_to(sample.path.resolve())
            for lighting in chosen:
                pixels, params = relight(image, lighting, _seed_for(seed, sample.relative_path, lighting))
                outputs[lighting] = target / "test_public" / folder / f"{image_id}_{lighting}.png"
                _save_png(pixels, outputs[lighting], grayscale)
                manifest["images"][outputs[lighting].relative_to(target).as_posix()] = {
                    "source": sample.relative_path, "lighting": lighting, "parameters": params}
            if sample.mask_path is not None:
                for path in outputs.values():
                    (target / "test_public" / "ground_truth" / "bad" / f"{path.stem}_mask.png").symlink_to(
                        sample.mask_path.resolve())
    (out_root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out_root


# -- the benchmark --------------------------------------------------------------------------------
# A group's regular-light AU-PRO on the same scenes is its fair reference: the whole regular group can hold
# other scenes (``metrics.by_lighting``, key ``metrics.SAME_SCENES + "au_pro_0.05"``; spelled out so that this
# CLI does not import the metrics at start); n/a for the regular group itself and the overall row.
TABLE_COLUMNS = (("image_auroc", "image AUROC"), ("au_pro_0.05", "AU-PRO@0.05"),
                 ("regular_same_scenes_au_pro_0.05", "AU-PRO@0.05 regular, same scenes"), ("seg_f1", "SegF1"),
                 ("n_good", "n_good"), ("n_bad", "n_bad"))


def _seg_f1_by_group(results_dir: Path, data_root: Path, category: str) -> dict[str, float]:
    """SegF1 per lighting group from the run's saved maps (``<results>/<cat>/maps/<test path>.tiff``) at the
    run's pixel threshold (``<results>/<cat>/model/model.json``), for metrics.json files without it."""
    from anomalyvfm import metrics

    category_dir = results_dir / category
    threshold = json.loads((category_dir / "model" / "model.json").read_text())["pixel_threshold"]
    members: dict[str, list[dataset_ad2.Sample]] = {}
    for sample in dataset_ad2.load_category(data_root, category).test_public:
        members.setdefault(dataset_ad2.lighting_group(sample.lighting), []).append(sample)
    return {group: metrics.seg_f1([category_dir / "maps" / Path(s.relative_path).with_suffix(".tiff") for s in chosen],
                                  [s.mask_path for s in chosen], threshold)
            for group, chosen in members.items()}


def lighting_table(results_dir: str | Path, data_root: str | Path, category: str) -> dict:
    """The benchmark's numbers from a finished run's ``<results_dir>/metrics.json``.

    ``{"category", "rows": {group or "overall": {"image_auroc", "au_pro_0.05", "regular_same_scenes_au_pro_0.05",
    "seg_f1", "n_good", "n_bad"}},
    "pooled_image_auroc", "regular_image_auroc", "seg_f1_source"}``: the per-group rows are metrics.json's
    ``by_lighting``; where it has no ``seg_f1`` the value is recomputed from the saved maps (``seg_f1_source``
    says which). "overall" is the whole stressed test set, so its image AUROC is the pooled one.
    """
    results_dir = Path(results_dir)
    result = json.loads((results_dir / "metrics.json").read_text())["categories"][category]
    rows = {group: dict(entry) for group, entry in result["by_lighting"].items()}
    source = "metrics.json by_lighting"
    if any("seg_f1" not in row for row in rows.values()):
        source = "recomputed from the saved maps at model.json's pixel_threshold"
        for group, value in _seg_f1_by_group(results_dir, Path(data_root), category).items():
            rows[group]["seg_f1"] = value
    rows["overall"] = {"image_auroc": result["image_auroc"], "au_pro_0.05": result["au_pro_0.05"],
                       "seg_f1": result["seg_f1"], "n_good": result["n_test_good"], "n_bad": result["n_test_bad"]}
    rows = {group: {key: row.get(key, math.nan) for key, _ in TABLE_COLUMNS} for group, row in rows.items()}
    regular = rows.get("regular", {}).get("image_auroc", math.nan)
    return {"category": category, "rows": rows, "pooled_image_auroc": result["image_auroc"],
            "regular_image_auroc": regular, "seg_f1_source": source}


def _cell(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def table_markdown(table: dict) -> str:
    """``lighting_table``'s numbers as a Markdown table and the pooled-versus-regular AUROC line."""
    lines = [f"Lighting stress benchmark: {table['category']}", "",
             "| lighting | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
             "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for group, row in table["rows"].items():
        lines.append(f"| {group} | " + " | ".join(_cell(row[key]) for key, _ in TABLE_COLUMNS) + " |")
    lines += ["", f"Image AUROC pooled over the whole stressed test set: {_cell(table['pooled_image_auroc'])} "
                  f"(regular light only: {_cell(table['regular_image_auroc'])}).",
              f"Per-group SegF1: {table['seg_f1_source']}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Any other --NAME=value is a setting of anomaly_vfm_v11_lora.py (with --run).")
    parser.add_argument("--data-root", required=True, help="the source DATA_ROOT (regular light)")
    parser.add_argument("--category", required=True)
    parser.add_argument("--out", required=True, help="new or empty folder for the stressed copy (its DATA_ROOT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", default=",".join(STRESS_GROUPS),
                        help=f"comma-separated subset of {','.join(STRESS_GROUPS)}")
    parser.add_argument("--variants-per-image", type=int, default=None,
                        help="re-lit variants per test image (default: every lighting of --groups)")
    parser.add_argument("--run", action="store_true", help="run the pipeline on the copy and report per lighting")
    args, pipeline_args = parser.parse_known_args(argv)
    overridden = {argument[2:].partition("=")[0].upper() for argument in pipeline_args}
    if pipeline_args and not args.run:
        parser.error(f"pipeline settings {' '.join(pipeline_args)} need --run")
    if overridden & {"DATA_ROOT", "CATEGORIES"}:
        parser.error("DATA_ROOT and CATEGORIES are the stressed copy's (--out, --category); do not set them")
    try:
        out = make_stressed_dataset(args.data_root, args.category, args.out, seed=args.seed,
                                    groups=[g.strip() for g in args.groups.split(",") if g.strip()],
                                    variants_per_image=args.variants_per_image)
    except (FileExistsError, ValueError) as error:  # DatasetError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"stressed copy of {args.category}: {out}")
    if not args.run:
        return 0
    import logging

    import anomaly_vfm_v11_lora as v11
    from anomalyvfm.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Results default to the copy's folder, not the repository's results/.
    defaults = [] if "RESULTS_DIR" in overridden else [f"--RESULTS_DIR={out / 'results'}"]
    try:
        config = v11.build_config([*defaults, *pipeline_args, f"--DATA_ROOT={out}", f"--CATEGORIES={args.category}"])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    v11.run(config)
    results_dir = Path(config.RESULTS_DIR)
    table = lighting_table(results_dir, out, args.category)
    markdown = table_markdown(table)
    (results_dir / "lighting_stress.json").write_text(json.dumps(table, indent=1))
    (results_dir / "lighting_stress.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
