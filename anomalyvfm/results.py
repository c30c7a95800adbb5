"""A run's results folder: who owns it, what is kept, how outputs replace earlier ones, and
whether a finished category can be reused.

- Ownership: ``RESULTS_DIR/.lock`` (JSON: PID, start time), created atomically with O_EXCL;
  a second run into the same folder stops at once (``ResultsBusyError``). A lock whose process
  is gone is taken over with a warning.
- Outputs are first written under ``RESULTS_DIR/.staging/``; ``publish`` then moves what they
  replace to ``RESULTS_DIR/history/<time>/`` and renames the new ones into place. So the
  previous outputs move only when their replacement is complete, and a failed run leaves the
  folder as it found it (its staging is removed).
- History folders are named to the microsecond, with a counter if that exists, and are
  created exclusively: two runs never share one and nothing in history is overwritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path

import dataset_ad2
from anomalyvfm import model_io
from anomalyvfm.calibration import PIXEL_RULE
from anomalyvfm.config import Config
from anomalyvfm.errors import PipelineError, ResultsBusyError
from anomalyvfm.evaluate import missing_maps, read_scores_csv, recorded_skips
from anomalyvfm.method import Method
from anomalyvfm.model import model_settings, read_model_meta

log = logging.getLogger("anomalyvfm")

LOCK_NAME = ".lock"
STAGING_NAME = ".staging"
# A lock file that cannot be parsed may be one that its owner is still writing; only an older one is stale.
UNREADABLE_LOCK_GRACE_SECONDS = 10.0


class ResultsFolder:
    """``RESULTS_DIR`` held by this run (a context manager: lock on enter, release and clean up on exit)."""

    def __init__(self, root: Path, started: dt.datetime) -> None:
        self.root, self.started = Path(root), started
        self.lock_file = self.root / LOCK_NAME
        self.staging_root = self.root / STAGING_NAME
        self.notes: list[str] = []  # warnings for the run summary (e.g. a stale lock taken over)
        self._history: Path | None = None

    # -- ownership ---------------------------------------------------------------------------
    def __enter__(self) -> "ResultsFolder":
        self.root.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": self.started.isoformat(timespec="seconds")})
        while True:
            try:
                handle = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(handle, "w") as lock:
                lock.write(record)
            break
        # A staging folder left by a killed run is garbage now that this run owns the folder.
        shutil.rmtree(self.staging_root, ignore_errors=True)
        return self

    def _take_over_if_stale(self) -> None:
        """Remove ``.lock`` if its process is gone, else raise ``ResultsBusyError``."""
        try:
            owner = json.loads(self.lock_file.read_text(encoding="utf-8"))
            pid, started, host = int(owner["pid"]), owner.get("started", "?"), owner.get("host")
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError, KeyError, TypeError):
            pid, started, host = None, "?", None
            try:
                age = dt.datetime.now().timestamp() - self.lock_file.stat().st_mtime
            except FileNotFoundError:
                return
            if age < UNREADABLE_LOCK_GRACE_SECONDS:
                raise ResultsBusyError(f"RESULTS_DIR {self.root} is being claimed by another run right now "
                                       f"({self.lock_file} is being written); wait for it or use another "
                                       "--RESULTS_DIR.") from None
        if pid is not None and host not in (None, socket.gethostname()):
            # A PID from another machine (a shared file system) cannot be checked from here.
            raise ResultsBusyError(f"RESULTS_DIR {self.root} is in use by a run on {host} (PID {pid}, started "
                                   f"{started}); wait for it to finish or use another --RESULTS_DIR (delete "
                                   f"{self.lock_file} only if no such run exists).")
        if pid is not None and _process_alive(pid):
            raise ResultsBusyError(f"RESULTS_DIR {self.root} is in use by another run (PID {pid}, started {started}); "
                                   f"wait for it to finish or use another --RESULTS_DIR (delete {self.lock_file} "
                                   "only if no such run exists).")
        # Rename before deleting: of two runs taking over at once, only one rename succeeds.
        claimed = self.lock_file.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.lock_file, claimed)
        except FileNotFoundError:
            return
        claimed.unlink()
        message = (f"took over the lock {self.lock_file} of a run that is no longer running "
                   f"(PID {pid if pid is not None else 'unknown'}, started {started})")
        log.warning("%s", message)
        self.notes.append(message[0].upper() + message[1:] + ".")

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.staging_root, ignore_errors=True)
        try:
            if json.loads(self.lock_file.read_text(encoding="utf-8")).get("pid") == os.getpid():
                self.lock_file.unlink()
        except (OSError, ValueError):
            pass  # not ours any more, or already gone: nothing to release

    # -- staging, history, publishing --------------------------------------------------------
    def staging(self, *parts: str) -> Path:
        """An empty folder under ``.staging/`` for outputs that will replace ``RESULTS_DIR/<parts>``."""
        folder = self.staging_root.joinpath(*parts)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def history(self) -> Path:
        """This run's history folder, created on first use; never one that exists already."""
        if self._history is None:
            base = self.root / "history" / self.started.strftime("%Y%m%d-%H%M%S-%f")
            base.parent.mkdir(parents=True, exist_ok=True)
            for counter in range(1, 10_000):
                candidate = base if counter == 1 else base.with_name(f"{base.name}-{counter}")
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                self._history = candidate
                break
            else:
                raise PipelineError(f"Cannot create a new history folder next to {base}; clean up {base.parent}.")
        return self._history

    def archive(self, path: Path) -> None:
        """Move ``path`` (inside RESULTS_DIR) to the history folder, at the same relative path."""
        if not path.exists():
            return
        destination = self.history() / path.relative_to(self.root)
        counter = 1
        while destination.exists():  # never move onto an existing name
            counter += 1
            destination = destination.with_name(f"{path.name}-{counter}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, destination)  # same file system: atomic, nothing copied

    def publish(self, staged: Path, target: Path) -> None:
        """Replace ``target`` with the complete ``staged`` file or folder, archiving what was there."""
        self.archive(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


# -- reuse of a finished category ---------------------------------------------------------------------
def dataset_fingerprint(data: dataset_ad2.CategoryData) -> str:
    """SHA-256 of the images a model is made from and evaluated on: relative path and byte size of
    every train, validation and test_public image and mask (listing and file sizes only, no pixels)."""
    lines = []
    for split in ("train", "validation", "test_public"):
        for sample in data.split(split):
            for path in (sample.path, sample.mask_path):
                if path is not None:
                    lines.append(f"{path.relative_to(data.root).as_posix()}\t{path.stat().st_size}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def reuse_problem(category_dir: Path, config: Config, method: Method, fingerprint: str) -> str | None:
    """None when ``category_dir`` holds a complete result of the same settings and dataset listing;
    otherwise why it must be refitted."""
    if not (category_dir / "model" / "model.json").is_file():
        return "it has no saved model"
    try:
        saved = read_model_meta(category_dir / "model")["settings"]
        fit_record = model_io.read_json(category_dir / "fit.json")
        recorded_skips(category_dir)  # a malformed list of unreadable images refits rather than fails
        rows = read_scores_csv(category_dir / "scores.csv")
    except FileNotFoundError as error:
        return f"{error.filename} is missing"
    except (PipelineError, ValueError) as error:
        return str(error)
    current = model_settings(config, method)
    changed = sorted(name for name in current if saved.get(name) != current[name])
    if changed:
        return f"settings changed: {', '.join(changed)}"
    if not isinstance(fit_record, dict) or fit_record.get("dataset") != fingerprint:
        return "the dataset's images changed since it was fitted (or the fit predates dataset fingerprints)"
    thresholds = fit_record.get("thresholds")
    rule = thresholds.get("pixel_rule") if isinstance(thresholds, dict) else None
    if rule != PIXEL_RULE:  # the saved pixel threshold is the old rule's: masks would mix two rules
        return f"its pixel threshold was chosen by another rule ({rule!r}; this version's: {PIXEL_RULE!r})"
    absent = missing_maps(category_dir, rows)
    if absent:
        return f"{absent[0]} is missing"
    return None
