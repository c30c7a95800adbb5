"""A whole run: every category of a ``Config``, then the top-level reports.

    checks (preflight) -> lock RESULTS_DIR -> plan: per category evaluate / reuse / fit
    -> backbone and image loader (only if something is fitted or exported) -> per category: fit
       into staging, evaluate, publish -> reports into staging, publish

The concerns live in their own modules: ``preflight`` (cheap checks), ``results`` (the
folder's lock, history and reuse rules), ``fit`` (backbone and fitting), ``model`` (the saved
model and how it scores), ``evaluate`` (metrics from saved files), ``predict`` (prediction and
export), ``summary`` (reports). ``Method`` (the experimental versions' hooks) and
``PipelineError`` are importable from here as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from contextlib import ExitStack
from pathlib import Path

import torch

from anomalyvfm import model_io, timing
from anomalyvfm.config import Config
from anomalyvfm.errors import PipelineError
from anomalyvfm.evaluate import CategoryOutcome, evaluate_category, missing_maps, read_scores_csv, recorded_skips
from anomalyvfm.fit import Runner, fit_category
from anomalyvfm.method import Method
from anomalyvfm.model import CategoryModel
from anomalyvfm.predict import export_submission, predict
from anomalyvfm.preflight import check_device, check_results_dir, load_categories, validation_warning
from anomalyvfm.results import ResultsFolder, dataset_fingerprint, reuse_problem
from anomalyvfm.summary import REPORT_FILES, write_reports

__all__ = ["Method", "PipelineError", "run"]

log = logging.getLogger("anomalyvfm")


def run(config: Config, method: Method | None = None, *, backbone: torch.nn.Module | None = None,
        progress: bool = True) -> dict[str, dict]:
    """Run every category of ``config``; returns ``{category: metrics}`` and writes ``RESULTS_DIR``.

    ``backbone``: an already built ``Dinov2Model`` (tests pass a tiny one); otherwise
    ``config.BACKBONE`` is loaded, and only when a category is fitted or exported.
    """
    method = method or Method()
    check_device(config.DEVICE)  # a missing GPU is a one-line error before anything else
    if config.PREDICT:
        predict(config, method, backbone=backbone, progress=progress)
        return {}
    categories = load_categories(config)
    results_dir = Path(config.RESULTS_DIR)
    check_results_dir(results_dir)
    started = dt.datetime.now()
    with ResultsFolder(results_dir, started) as results, ExitStack() as resources:
        fingerprints = {name: dataset_fingerprint(data) for name, data in categories.items()}
        to_fit = _plan(config, method, categories, results_dir, fingerprints)
        runner = None
        if to_fit or (config.EXPORT_SUBMISSION and not config.EVALUATE_ONLY):
            # One runner, hence one pool of decode workers, for the whole run; closed on any exit.
            runner = resources.enter_context(Runner(config, method, backbone=backbone, progress=progress))
        notes = list(results.notes)
        skipped_files: list[tuple[str, str]] = []
        outcomes: dict[str, CategoryOutcome] = {}
        for category, data in categories.items():
            category_dir = results_dir / category
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if category in to_fit:
                    folder = results.staging(category)
                    model = fit_category(runner, data, folder, fingerprints[category], notes)
                else:
                    folder = category_dir
                    if not config.EVALUATE_ONLY:
                        log.info("%s: finished earlier with the same settings and data; reusing %s "
                                 "(--FORCE=true refits it)", category, category_dir)
                    model = CategoryModel.load(category_dir / "model") if config.EXPORT_SUBMISSION else None
                # The fit's record of unreadable images (this run's, or an earlier one's for a reused category):
                # listed in the summary, and evaluated as if they were not there.
                skipped = recorded_skips(folder)
                data = data.without(Path(path) for path, _ in skipped)
                warning = validation_warning(data)
                notes += [warning] if warning else []
                with timing.stage("metrics"):
                    outcome = evaluate_category(data, folder)
                if category in to_fit:
                    model_io.write_json_atomic(folder / "metrics.json", outcome.metrics)
                    results.publish(folder, category_dir)  # the earlier folder moves to history only now
                else:
                    outcome.metrics["reused"] = True  # its seconds are the original fit's, shown as such
                if config.EXPORT_SUBMISSION and runner is not None:
                    skipped += export_submission(runner, model, data, results, notes)
            skipped_files += skipped
            notes += [f"{category}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)]
            outcomes[category] = outcome
            m = outcome.metrics
            log.info("%-12s image AUROC %.4f | AU-PRO@0.05 %.4f | SegF1 %.4f | %d train, %d good, %d bad | %s%.1f s",
                     category, m["image_auroc"], m["au_pro_0.05"], m["seg_f1"], m["n_train"], m["n_test_good"],
                     m["n_test_bad"], "reused, fit earlier in " if m.get("reused") else "",
                     m["seconds"] if m["seconds"] is not None else float("nan"))
        with timing.stage("reports"):
            for category in categories.keys() - to_fit:  # fitted ones got theirs before publishing
                model_io.write_json_atomic(results_dir / category / "metrics.json", outcomes[category].metrics)
            staged = results.staging("reports")
            write_reports(staged, results_dir, outcomes, config, method, notes, skipped_files, started)
            for name in REPORT_FILES:  # the previous reports move to history only now
                results.publish(staged / name, results_dir / name)
    return {category: outcome.metrics for category, outcome in outcomes.items()}


def _plan(config: Config, method: Method, categories: dict, results_dir: Path, fingerprints: dict[str, str]) -> set[str]:
    """The categories to fit. Every other one is checked now, before the long work: with
    EVALUATE_ONLY its scores and maps must exist; a reused one's model must load when exported."""
    to_fit = set()
    for category in categories:
        category_dir = results_dir / category
        if config.EVALUATE_ONLY:
            rows = read_scores_csv(category_dir / "scores.csv")
            absent = missing_maps(category_dir, rows)
            if absent:
                raise PipelineError(f"EVALUATE_ONLY: {absent[0]} is missing ({len(absent)} map(s) of {category!r}); "
                                    "run without --EVALUATE_ONLY to refit it.")
            continue
        problem = "--FORCE=true" if config.FORCE else reuse_problem(category_dir, config, method, fingerprints[category])
        if problem is None:
            if config.EXPORT_SUBMISSION:
                CategoryModel.load(category_dir / "model")  # fails now, not after other categories' fits
            continue
        if (category_dir / "model").exists() or config.FORCE:
            log.info("%s: refitting, because %s", category, problem)
        to_fit.add(category)
    return to_fit
