"""The configuration of a run, and strict ``--NAME=value`` command-line overrides.

The defaults live in one place only: the constants block at the top of
``anomaly_vfm_v11_lora.py``. ``Config`` gives them types, so that an override of the
wrong type, or for a name that does not exist, is an error pointing at ``--help``, whose
text (``settings_help``) is read from that same block: its group headers and trailing comments.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import math
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

SCORERS = ("mahalanobis", "knn")
BANK_SAMPLINGS = ("coreset", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCORING_PHASE_COUNTS = (1, 2, 4)
PATCH_SIZE = 14  # DINOv2's: every input size is a whole number of patches


def is_image_size(size: object) -> bool:
    """Whether ``size`` can be an input size: an int (not a bool) that is a positive multiple of ``PATCH_SIZE``."""
    return isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % PATCH_SIZE == 0


class ConfigError(ValueError):
    """A constant or command-line override has an invalid name or value."""


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Field names are the constants' names (see the main script)."""

    DATA_ROOT: str
    CATEGORIES: list[str]
    BACKBONE: str
    FEATURE_LAYERS: list[int]
    IMAGE_SIZE: int
    LORA_RANK: int
    LORA_ALPHA: float
    EPOCHS: int
    LEARNING_RATE: float
    SYNTHETIC_SAMPLES: int
    BATCH_SIZE: int
    NUM_WORKERS: int | str  # an int, or "auto"
    DEVICE: str
    SEED: int
    SCORER: str
    KNN_BANK_SIZE: int
    KNN_BANK_SAMPLING: str
    KNN_SHRINKAGE: float
    KNN_NUISANCE_WEIGHT: float
    KNN_IMAGE_BANK_SIZE: int
    CENTRE_MAPS: bool
    DISCOUNT_SATURATED: bool
    SCORING_PHASES: int
    RESULTS_DIR: str
    FORCE: bool
    EVALUATE_ONLY: bool
    PREDICT: str
    EXPORT_SUBMISSION: bool
    DEMO: bool

    def __post_init__(self) -> None:
        problems = []
        if not is_image_size(self.IMAGE_SIZE):
            problems.append(f"IMAGE_SIZE must be a positive multiple of {PATCH_SIZE} (DINOv2's patch size), "
                            f"got {self.IMAGE_SIZE}")
        if not self.FEATURE_LAYERS or min(self.FEATURE_LAYERS) < 1:
            problems.append(f"FEATURE_LAYERS must list transformer blocks counted from 1, got {self.FEATURE_LAYERS}")
        if self.SCORER not in SCORERS:
            problems.append(f"SCORER must be one of {', '.join(SCORERS)}, got {self.SCORER!r}")
        if self.KNN_BANK_SAMPLING not in BANK_SAMPLINGS:
            problems.append(f"KNN_BANK_SAMPLING must be one of {', '.join(BANK_SAMPLINGS)}, got {self.KNN_BANK_SAMPLING!r}")
        if not 0.0 < self.KNN_SHRINKAGE <= 1.0:
            problems.append(f"KNN_SHRINKAGE must be in (0, 1] (1: plain cosine), got {self.KNN_SHRINKAGE}")
        if not (math.isfinite(self.KNN_NUISANCE_WEIGHT) and self.KNN_NUISANCE_WEIGHT >= 0):
            problems.append(f"KNN_NUISANCE_WEIGHT must be a finite number >= 0 (0: none), got {self.KNN_NUISANCE_WEIGHT}")
        if self.SCORING_PHASES not in SCORING_PHASE_COUNTS:
            problems.append(f"SCORING_PHASES must be one of {', '.join(map(str, SCORING_PHASE_COUNTS))}, "
                            f"got {self.SCORING_PHASES}")
        elif self.SCORING_PHASES > 1 and self.IMAGE_SIZE < 28:
            problems.append(f"SCORING_PHASES above 1 needs an IMAGE_SIZE of at least 28 (a shifted phase drops one "
                            f"patch of the shorter side), got {self.IMAGE_SIZE}")
        if self.DEVICE not in DEVICES:
            problems.append(f"DEVICE must be one of {', '.join(DEVICES)}, got {self.DEVICE!r}")
        if self.SYNTHETIC_SAMPLES < 0 or self.SYNTHETIC_SAMPLES % 3:
            problems.append(f"SYNTHETIC_SAMPLES must be a non-negative multiple of 3 (three stages), got {self.SYNTHETIC_SAMPLES}")
        for name in ("LORA_RANK", "BATCH_SIZE"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.NUM_WORKERS != "auto" and not (type(self.NUM_WORKERS) is int and self.NUM_WORKERS >= 0):
            problems.append(f"NUM_WORKERS must be 'auto' or an integer >= 0, got {self.NUM_WORKERS!r}")
        for name in ("EPOCHS", "KNN_BANK_SIZE", "KNN_IMAGE_BANK_SIZE"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("LEARNING_RATE", "LORA_ALPHA"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):  # NaN fails every comparison
                problems.append(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.SEED < 0:
            problems.append(f"SEED must be >= 0 (torch and numpy seeds are unsigned), got {self.SEED}")
        if not self.CATEGORIES:
            problems.append("CATEGORIES must name at least one category")
        for category in self.CATEGORIES:
            # A category is a folder name under DATA_ROOT and RESULTS_DIR, never a path leading elsewhere.
            if not category or category in (".", "..") or "/" in category or "\\" in category:
                problems.append(f"CATEGORIES entries must be plain folder names, got {category!r}")
        if problems:
            raise ConfigError("Invalid configuration: " + "; ".join(problems) + ".")

    @classmethod
    def from_constants(cls, namespace: Mapping[str, Any]) -> "Config":
        """Build from a module's UPPER_CASE constants (other names are ignored)."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in namespace]
        if missing:
            raise ConfigError(f"Constants missing from the configuration block: {', '.join(missing)}")
        return cls(**{f.name: _copy(namespace[f.name]) for f in dataclasses.fields(cls)})

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save(self, path: Path) -> None:
        from anomalyvfm.model_io import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls(**json.loads(Path(path).read_text()))


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def apply_overrides(config: Config, argv: Sequence[str]) -> Config:
    """Apply ``--NAME=value`` arguments (NAME case-insensitive) to ``config``.

    Lists are comma-separated (``--CATEGORIES=can,fabric``); booleans are ``true``/``false``
    (a bare ``--NAME`` means true for a boolean). Unknown names, malformed arguments and
    values of the wrong type raise ``ConfigError``.
    """
    hints = typing.get_type_hints(Config)
    by_lower = {name.lower(): name for name in hints}
    changes: dict[str, Any] = {}
    for argument in argv:
        if not argument.startswith("--"):
            raise ConfigError(f"Unexpected argument {argument!r}: expected --NAME=value; see --help.")
        key, has_value, raw = argument[2:].partition("=")
        name = by_lower.get(key.lower())
        if name is None:
            close = difflib.get_close_matches(key.upper(), list(hints), n=1)
            suggestion = f" Did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"Unknown setting {key!r} in {argument!r}.{suggestion} See --help for every setting.")
        if not has_value:
            if hints[name] is not bool:
                raise ConfigError(f"{argument!r} needs a value: --{name}=<{_type_name(hints[name])}>")
            raw = "true"
        changes[name] = _parse(name, raw, hints[name])
    return config.replace(**changes) if changes else config


def _parse(name: str, raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        items = [item.strip() for item in raw.split(",") if item.strip()]
        return [_parse_scalar(name, item, item_type) for item in items]
    return _parse_scalar(name, raw, annotation)


def _parse_scalar(name: str, raw: str, kind: Any) -> Any:
    if isinstance(kind, types.UnionType):  # int | str: the first type that parses the value
        for option in typing.get_args(kind):
            try:
                return _parse_scalar(name, raw, option)
            except ConfigError:
                continue
        raise ConfigError(f"--{name}={raw!r} is not a valid {_type_name(kind)}")
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError
            return lowered == "true"
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--{name}={raw!r} is not a valid {_type_name(kind)}") from None


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, types.GenericAlias):
        return f"comma-separated list of {typing.get_args(annotation)[0].__name__}"
    return {bool: "true/false"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


HELP_FLAGS = ("-h", "--help")
_RULE = "# ---"  # the lines that open and close the constants block


def wants_help(argv: Sequence[str]) -> bool:
    return any(argument in HELP_FLAGS for argument in argv)


def documented_settings(source: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(group, [(NAME, meaning)])]`` from the constants block of a script's source text.

    Groups are the block's full-line comments at column 0 (``# Data``); a constant's meaning is
    its trailing comment plus the indented comment-only lines below it (their continuation).
    Tokenizing, rather than matching lines, keeps a ``#`` inside a string value out of the meaning.
    """
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    rules_seen = 0
    last_code_line = 0  # the last line holding code; a comment after it on the same line is trailing
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if token.string.startswith(_RULE):
                rules_seen += 1
                if rules_seen == 3:  # end of the block
                    break
            elif rules_seen == 2 and token.start[1] == 0:
                groups.append((text, []))
            elif rules_seen == 2 and groups and groups[-1][1]:
                entries = groups[-1][1]
                name, meaning = entries[-1]
                # On the constant's own line: its meaning; on a line of its own: a continuation.
                entries[-1] = (name, text if token.start[0] == last_code_line else f"{meaning} {text}".strip())
        elif rules_seen == 2 and token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            last_code_line = token.end[0]
            if token.type == tokenize.NAME and token.start[1] == 0 and groups and token.string.isupper():
                groups[-1][1].append((token.string, ""))
    return groups


def settings_help(source: str, defaults: "Config", prog: str, usage: str = "") -> str:
    """The ``--help`` text: every setting by group, with its type, default and meaning.

    ``source``: the text of the script holding the constants block (the one source of the
    meanings); ``defaults``: the values to show; ``usage``: extra lines printed after the usage line.
    """
    hints = typing.get_type_hints(Config)
    lines = [f"usage: {prog} [--NAME=value ...] [--demo] [-h | --help]", *([usage] if usage else []), "",
             "Every setting below is a constant at the top of anomaly_vfm_v11_lora.py; override it as --NAME=value",
             "(NAME case-insensitive, lists comma-separated, booleans true/false; a bare --NAME means true).", ""]
    for group, entries in documented_settings(source):
        lines.append(f"{group}:")
        for name, meaning in entries:
            if name not in hints:
                continue
            default = _setting_text(getattr(defaults, name))
            lines.append(f"  --{name}={default}  ({_type_name(hints[name])})")
            lines.append(textwrap.fill(meaning, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
        lines.append("")
    return "\n".join(lines)


def _setting_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else str(value)
