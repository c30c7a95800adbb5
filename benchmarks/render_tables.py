"""Rewrite the measured-number tables of the docs from benchmarks/*.json, so they cannot drift.

    python benchmarks/render_tables.py           # rewrite every marked section
    python benchmarks/render_tables.py --check   # exit 1 if a document is out of date

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in the ``DOCUMENTS`` (README.md,
docs/README_ja.md, docs/Benchmark.md, ...); everything between the markers is replaced by
TABLES[NAME] rendered from the JSON files beside this script:

- latest.json (run_benchmark.py): speed, stages, memory, AD 2 scale, AU-PRO methods, rendered by
  ``run_benchmark.markdown`` (the tables the benchmark prints);
- seed_benchmark.json: the seed v1.1's benchmark (one dataset, before issues 10-14), kept as history;
- demo.json: the demo's measured wall time and numbers;
- versions.json (compare_versions.py): v1.1-v1.4 side by side;
- quality.json (run_quality.py): every dataset x image size x row of the quality benchmark;
  its section says so when the file does not exist yet;
- paired_rows.json (compare_rows.py): two rows' differences with their bootstrap intervals, one table per
  second row (``PAIRED_TABLES``), in the document that discusses that comparison.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOCUMENTS = (REPO / "README.md", REPO / "docs" / "README_ja.md", REPO / "docs" / "Benchmark.md",
             REPO / "docs" / "Heads_and_Scoring.md", REPO / "docs" / "Training_Objective.md",
             REPO / "docs" / "Lighting_and_Thresholds.md")
STRESS_SUFFIX = "+lighting"  # run_quality.py's name for a dataset's lighting-stressed copy
# A lighting group's AU-PRO on the regular-light images of its scenes: anomalyvfm.metrics.SAME_SCENES + "au_pro_0.05"
# (spelled out: rendering needs no metrics import).
SAME_SCENES_AU_PRO = "regular_same_scenes_au_pro_0.05"
SECTION = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def _load(name: str) -> dict | list | None:
    path = HERE / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _shown_path(path: str) -> str:
    """A path as the docs show it: relative to the repository's parent for ``shared/`` data, else its name."""
    parts = Path(path).parts
    if "shared" in parts:
        return "/".join(("..", *parts[parts.index("shared"):]))
    return Path(path).name if Path(path).is_absolute() else path


def quality_variants() -> str:
    report = _load("seed_benchmark.json")
    lines = [f"| method ({report['category']}, {_shown_path(report['backbone'])}, IMAGE_SIZE={report['image_size']}) "
             "| image AUROC | AU-PRO@0.05 | AU-PRO@0.30 | SegF1 | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["quality"].items():
        m = row["metrics"]
        lines.append(f"| {name} | {fmt(m['image_auroc'])} | {fmt(m['au_pro_0.05'])} | {fmt(m['au_pro_0.30'])} | "
                     f"{fmt(m['seg_f1'])} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def seed_benchmark() -> str:
    report = _load("seed_benchmark.json")
    floor, pipe = report["floor"], report["pipeline"]
    lines = [f"Machine: {report['machine']}. Data: {_shown_path(report['data_root'])} ({report['category']}), "
             f"backbone {_shown_path(report['backbone'])}, IMAGE_SIZE={report['image_size']}, {report['date']}.", "",
             "| measurement | seconds | images/s | peak RSS (MiB) |", "|---|---:|---:|---:|",
             f"| backbone floor ({floor['images']} images) | {floor['seconds']:.1f} | {floor['images_per_second']:.2f} "
             f"| {floor['peak_rss_mib']:.0f} |",
             f"| full pipeline v1.1 | {pipe['seconds']:.1f} | {pipe['images'] / pipe['seconds']:.2f} "
             f"| {pipe['peak_rss_mib']:.0f} |",
             f"| **ratio pipeline / floor** | **{report['ratio']:.3f}** | | |"]
    return "\n".join(lines)


def benchmark() -> str:
    """``run_benchmark.py``'s own tables, from latest.json."""
    report = _load("latest.json")
    if report is None:
        return "No `benchmarks/latest.json` yet: run `python benchmarks/run_benchmark.py`."
    sys.path.insert(0, str(HERE))
    import run_benchmark

    return run_benchmark.markdown(report)


def demo() -> str:
    report = _load("demo.json")
    lines = [f"`{report['command']}`: {report['wall_seconds'] / 60:.0f} min on {report['machine']}.", "",
             "| demo category | image AUROC | ClassF1 | AU-PRO@0.05 | SegF1 | SegF1 at mean + 3σ |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in report["categories"].items():
        lines.append(f"| {name} | {fmt(m['image_auroc'])} | {fmt(m['class_f1'])} | {fmt(m['au_pro_0.05'])} | "
                     f"{fmt(m['seg_f1'])} | {fmt(m['seg_f1_baseline_rule'])} |")
    return "\n".join(lines)


def versions() -> str:
    report = _load("versions.json")
    lines = [f"Data: {report['data']}.", "", "| version | image AUROC | AU-PRO@0.05 | SegF1 | seconds (fit + score) |",
             "|---|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['version']} | {fmt(row['image_auroc'])} | {fmt(row['au_pro_0.05'])} | "
                     f"{fmt(row['seg_f1'])} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def quality_datasets(report: dict | None = None) -> str:
    """The quality benchmark's table (``run_quality.py``): every dataset x image size x row, the means,
    and AU-PRO@0.05 per lighting group of the lighting-stressed copies."""
    report = report if report is not None else _load("quality.json")
    if report is None:
        return "No `benchmarks/quality.json` yet: run `python benchmarks/run_quality.py`."
    lines = [f"Backbone {_shown_path(report['backbone'])}, FEATURE_LAYERS {report['feature_layers']}, seed "
             f"{report['seed']}, {report['machine']}, {report['date']}. Image score: the peak patch distance above the image's median "
             "(`scoring.peak_score`; with a whitened kNN since 1.2.0 of the image score's own plain-cosine search, "
             "`KNN_IMAGE_BANK_SIZE`): the mean of the 3 highest patch distances in rows measured with anomalyvfm "
             "1.4.0 or later, the highest one in rows measured with 1.1.1 to 1.3.0; the mean of the top 1 % patch "
             "distances, uncentred, in rows measured before (the commit column says which); validation and test images "
             "scored at two phases (`SCORING_PHASES`, the default since 1.7.0; score s covers both) in rows measured "
             "with 1.7.0 or later (four in `v1.1 --SCORING_PHASES=4`), once in rows measured before, in "
             "`v1.1 --SCORING_PHASES=1` and in the kNN "
             "references; maps centred on the validation images' median patch distance (`CENTRE_MAPS`) except in "
             "the row that turns it off; SegF1 at validation mean + 3 std. `+lighting`: the dataset's "
             "lighting-stressed copy. train s: heads training; fit s: memory bank (coreset) or Gaussian fit; "
             "score s: distances of every validation and test patch; commit: the code the row was measured with.", "",
             "| dataset | size | row | image AUROC | AU-PRO@0.05 | AU-PRO@0.30 | SegF1 | train s | fit s | score s "
             "| commit |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for entry in report["results"]:
        m = entry["metrics"]
        lines.append(f"| {entry['dataset']} | {entry['image_size']} | {entry['row']} | {fmt(m['image_auroc'])} | "
                     f"{fmt(m['au_pro_0.05'])} | {fmt(m['au_pro_0.30'])} | {fmt(m['seg_f1'])} | "
                     f"{fmt(m['train_seconds'], 1)} | {fmt(m['fit_seconds'], 1)} | {fmt(m['score_seconds'], 1)} | "
                     f"{entry['commit']} |")
    lines += ["", "Mean over the datasets that have the row (regular: the datasets as they are; stressed: their "
              "re-lit copies):", "",
              "| lighting | size | row | datasets | image AUROC | AU-PRO@0.05 | AU-PRO@0.30 | SegF1 |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for entry in report["mean_rows"]:
        lines.append(f"| {entry['lighting']} | {entry['image_size']} | {entry['row']} | {entry['datasets']} | "
                     f"{fmt(entry['image_auroc'])} | {fmt(entry['au_pro_0.05'])} | {fmt(entry['au_pro_0.30'])} | "
                     f"{fmt(entry['seg_f1'])} |")
    stressed = [e for e in report["results"] if len(e["metrics"].get("by_lighting", {})) > 1]
    if stressed:
        groups = ("regular", "overexposed", "underexposed", "shift")
        lines += ["", "AU-PRO@0.05 per lighting group of the stressed copies. Worst gap: the lowest group minus "
                  "the whole regular group; same scenes: the lowest of each group minus the regular-light images "
                  "of that group's own scenes (a copy that re-lights each scene once gives every group other "
                  "scenes than the whole regular group; n/a where the row predates this column). Image AUROC, all "
                  "minus regular: over every test image of the copy minus over its regular-light ones, with the 95 % "
                  "interval of a bootstrap that resamples scenes (`metrics.auroc_difference_interval`; n/a where the "
                  "row predates it):", "",
                  f"| dataset | size | row | {' | '.join(groups)} | worst gap | worst gap, same scenes "
                  "| image AUROC, all minus regular |",
                  "|---|---:|---|" + "---:|" * 7]
        for entry in stressed:
            by_group = entry["metrics"]["by_lighting"]
            values = [by_group.get(g, {}).get("au_pro_0.05", float("nan")) for g in groups]
            paired = [by_group[g]["au_pro_0.05"] - by_group[g][SAME_SCENES_AU_PRO]
                      for g in groups[1:] if SAME_SCENES_AU_PRO in by_group.get(g, {})]
            lines.append(f"| {entry['dataset']} | {entry['image_size']} | {entry['row']} | "
                         f"{' | '.join(fmt(v) for v in values)} | {fmt(min(values[1:]) - values[0])} | "
                         f"{fmt(min(paired) if paired else None)} | {_gap(entry['metrics'].get('image_auroc_gap'))} |")
    return "\n".join(lines)


def _gap(gap: dict | None) -> str:
    """``-0.062 [-0.101, -0.024]``: an ``auroc_difference_interval`` with its interval; n/a without one."""
    return "n/a" if gap is None else paired_cell(gap, 3)


def quality_summary(report: dict | None = None) -> str:
    """The quality benchmark in one table per image size: AU-PRO@0.05 (image AUROC) of every row on every
    dataset, regular and lighting-stressed, and the mean over the regular datasets."""
    report = report if report is not None else _load("quality.json")
    if report is None:
        return "No `benchmarks/quality.json` yet: run `python benchmarks/run_quality.py`."
    lines = [f"`python benchmarks/run_quality.py`, backbone {_shown_path(report['backbone'])}, {report['date']}. "
             "Each cell: AU-PRO@0.05 (image AUROC); `+lighting`: the dataset's lighting-stressed copy; "
             "mean: over the datasets as they are (— where a row is missing on one of them). Rows measured before "
             "1.7.0 (`quality.md`'s commit column) score each image once: compare them with "
             "`v1.1 --SCORING_PHASES=1`, not with the default's two phases."]
    results = report["results"]
    for size in sorted({e["image_size"] for e in results}):
        here = [e for e in results if e["image_size"] == size]
        datasets = sorted({e["dataset"] for e in here}, key=lambda name: (name.endswith(STRESS_SUFFIX), name))
        rows = list(dict.fromkeys(e["row"] for e in here))
        cell = {(e["dataset"], e["row"]): e["metrics"] for e in here}
        regular = [d for d in datasets if not d.endswith(STRESS_SUFFIX)]
        means = {e["row"]: e for e in report["mean_rows"] if e["image_size"] == size
                 and e.get("lighting", "regular") == "regular" and e["datasets"] == len(regular)}
        lines += ["", f"| IMAGE_SIZE {size} | {' | '.join(datasets)} | mean |", "|---|" + "---:|" * (len(datasets) + 1)]
        for row in rows:
            cells = [f"{fmt(cell[(d, row)]['au_pro_0.05'])} ({fmt(cell[(d, row)]['image_auroc'], 3)})"
                     if (d, row) in cell else "—" for d in datasets]
            mean = means.get(row)
            cells.append(f"{fmt(mean['au_pro_0.05'])} ({fmt(mean['image_auroc'], 3)})" if mean else "—")
            lines.append(f"| {row} | {' | '.join(cells)} |")
    return "\n".join(lines)


def paired_cell(interval: dict, digits: int = 4) -> str:
    """``+0.0041 [-0.0050, +0.0132]``: a ``metrics.bootstrap`` difference and its interval, signed."""
    difference, low, high = (f"{interval[key]:+.{digits}f}" for key in ("difference", "low", "high"))
    return f"{difference} [{low}, {high}]"


def per_seed_cell(per_seed: list[dict], metric: str, digits: int = 4) -> str:
    """``+0.0081 / +0.0012 / +0.0046``: each seed's difference of ``metric``, in the order run."""
    return " / ".join(f"{s[metric]:+.{digits}f}" for s in per_seed)


def paired_rows(report: dict | None = None, second_row: str | None = None) -> str:
    """compare_rows.py's comparisons (those against ``second_row`` only, when given): per case both rows'
    AU-PRO@0.05 and image AUROC, the first minus the second with its bootstrap interval, and the mean over the cases.
    A comparison over several seeds shows the seed means and a column with each seed's AU-PRO@0.05 difference."""
    report = report if report is not None else _load("paired_rows.json")
    comparisons = [] if report is None else [c for c in report["comparisons"]
                                             if second_row is None or c["second"] == second_row]
    if not comparisons:
        return (f"No comparison{'' if second_row is None else f' against {second_row!r}'} in "
                "`benchmarks/paired_rows.json` yet: run `python benchmarks/compare_rows.py`.")
    lines = []
    for comparison in comparisons:
        first, second = comparison["first"], comparison["second"]
        seeds = comparison.get("training_seeds", [0])
        several = len(seeds) > 1
        seeds_flag = f"--seeds={','.join(map(str, seeds))} " if several else ""
        lines += [f"`python benchmarks/compare_rows.py {seeds_flag}--first=\"{first}\" --second=\"{second}\" "
                  f"{' '.join(e['case'] for e in comparison['cases'])}` (commit {comparison['commit']}, "
                  f"{comparison['date']}, backbone {_shown_path(comparison['backbone'])}): first minus second, "
                  f"{comparison['level'] * 100:.0f} % interval of {comparison['resamples']} scene-bootstrap draws"
                  + (f"; every value the mean over SEED {', '.join(map(str, seeds))}, each seed fitting both rows "
                     "anew." if several else "."), "",
                  f"| case | scenes | AU-PRO@0.05 {first} | {second} | difference |"
                  + (" per seed |" if several else "")
                  + f" image AUROC {first} | {second} | difference |",
                  "|---|---:|---:|---:|---|" + ("---|" if several else "") + "---:|---:|---|"]
        for entry in comparison["cases"]:
            lines.append(f"| {entry['case']} | {entry['scenes']} | {fmt(entry['first']['au_pro_0.05'])} | "
                         f"{fmt(entry['second']['au_pro_0.05'])} | {paired_cell(entry['au_pro_0.05'])} | "
                         + (f"{per_seed_cell(entry['per_seed'], 'au_pro_0.05')} | " if several else "")
                         + f"{fmt(entry['first']['image_auroc'])} | {fmt(entry['second']['image_auroc'])} | "
                         f"{paired_cell(entry['image_auroc'])} |")
        mean = comparison["mean"]
        seed_means = ""
        if several:  # each seed's difference averaged over the cases
            cases = comparison["cases"]
            by_seed = [{"au_pro_0.05": sum(e["per_seed"][i]["au_pro_0.05"] for e in cases) / len(cases)}
                       for i in range(len(seeds))]
            seed_means = f" {per_seed_cell(by_seed, 'au_pro_0.05')} |"
        lines += [f"| mean | | | | {paired_cell(mean['au_pro_0.05'])} |{seed_means} | | "
                  f"{paired_cell(mean['image_auroc'])} |", ""]
    return "\n".join(lines).rstrip("\n")


# The paired-row tables, by the second row they compare against: each lives in the document about that question.
PAIRED_TABLES = {"paired-rows": "v1.1 --EPOCHS=0", "paired-rows-saturation": "v1.1 --DISCOUNT_SATURATED=false"}
TABLES: dict[str, Callable[[], str]] = {"quality-variants": quality_variants, "benchmark": benchmark,
                                        "seed-benchmark": seed_benchmark, "demo": demo,
                                        "versions": versions, "quality-datasets": quality_datasets,
                                        "quality-summary": quality_summary,
                                        **{name: (lambda row=row: paired_rows(second_row=row))
                                           for name, row in PAIRED_TABLES.items()}}


def render(text: str) -> str:
    """``text`` with every marked section replaced by its freshly rendered table."""
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        return f"{match.group(1)}{TABLES[name]()}\n{match.group(4)}"

    return SECTION.sub(replace, text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        rendered = render(text)
        if rendered != text:
            stale.append(path.relative_to(REPO))
            if not check:
                path.write_text(rendered, encoding="utf-8")
    if stale:
        print(("out of date: " if check else "rewrote: ") + ", ".join(map(str, stale)))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
