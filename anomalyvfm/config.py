"""The configuration of a run, and strict ``--NAME=value`` command-line overrides.

The defaults live in one place only: the constants block at the top of
``anomaly_vfm_v11_lora.py``. ``Config`` gives them types, so that an override of the
wrong type, or for a name that does not exist, is an error that lists the valid names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

SCORERS = ("mahalanobis", "knn")
DEVICES = ("auto", "cpu", "cuda", "mps")


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
    RESULTS_DIR: str
    FORCE: bool
    EVALUATE_ONLY: bool
    PREDICT: str
    EXPORT_SUBMISSION: bool
    DEMO: bool

    def __post_init__(self) -> None:
        problems = []
        if self.IMAGE_SIZE <= 0 or self.IMAGE_SIZE % 14:
            problems.append(f"IMAGE_SIZE must be a positive multiple of 14 (DINOv2's patch size), got {self.IMAGE_SIZE}")
        if not self.FEATURE_LAYERS or min(self.FEATURE_LAYERS) < 1:
            problems.append(f"FEATURE_LAYERS must list transformer blocks counted from 1, got {self.FEATURE_LAYERS}")
        if self.SCORER not in SCORERS:
            problems.append(f"SCORER must be one of {', '.join(SCORERS)}, got {self.SCORER!r}")
        if self.DEVICE not in DEVICES:
            problems.append(f"DEVICE must be one of {', '.join(DEVICES)}, got {self.DEVICE!r}")
        if self.SYNTHETIC_SAMPLES < 0 or self.SYNTHETIC_SAMPLES % 3:
            problems.append(f"SYNTHETIC_SAMPLES must be a non-negative multiple of 3 (three stages), got {self.SYNTHETIC_SAMPLES}")
        for name in ("LORA_RANK", "BATCH_SIZE"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.NUM_WORKERS != "auto" and not (type(self.NUM_WORKERS) is int and self.NUM_WORKERS >= 0):
            problems.append(f"NUM_WORKERS must be 'auto' or an integer >= 0, got {self.NUM_WORKERS!r}")
        for name in ("EPOCHS", "KNN_BANK_SIZE"):
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
    values of the wrong type raise ``ConfigError`` listing the valid names.
    """
    hints = typing.get_type_hints(Config)
    by_lower = {name.lower(): name for name in hints}
    changes: dict[str, Any] = {}
    for argument in argv:
        if not argument.startswith("--"):
            raise ConfigError(f"Unexpected argument {argument!r}: expected --NAME=value. {_valid_names()}")
        key, has_value, raw = argument[2:].partition("=")
        name = by_lower.get(key.lower())
        if name is None:
            raise ConfigError(f"Unknown setting {key!r} in {argument!r}. {_valid_names()}")
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


def _valid_names() -> str:
    hints = typing.get_type_hints(Config)
    listing = ", ".join(f"{name} ({_type_name(kind)})" for name, kind in hints.items())
    return f"Valid settings: {listing}"
