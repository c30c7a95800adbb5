"""The error a run raises for a request it cannot fulfil; the main script prints it as one line."""

from __future__ import annotations


class PipelineError(ValueError):
    """A run was asked for something it cannot do (the message says what, where and what to change)."""


class ResultsBusyError(PipelineError):
    """Another live run holds the lock of the same RESULTS_DIR."""
