"""YAML configuration files checked against dataclasses (OmegaConf structured configs), shared by
``lskd-train`` (:mod:`lskd.train.config`) and the distillation pipeline (:mod:`lskd.distill_config`).

Every key is declared in a dataclass with its type and default, so a typo (``kd.temprature``) or a
wrong type (``schedule.epochs=ten``) stops the run at start with one line naming the key (and, for an
unknown key, the nearest known one), instead of being silently ignored hours later. Types, defaults
and YAML values (``1e-3`` is a float, ``[10, 20]`` a list, ``null`` None) are OmegaConf's; the checks
here add what a type cannot say (finite numbers, a fixed set of values, a lower bound).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from lskd.errors import LSKDError

T = TypeVar("T")


class ConfigError(LSKDError, ValueError):
    """A configuration that cannot describe a run: unknown key, wrong type or meaningless value."""


def load_structured(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Dataclass ``cls`` from the YAML file ``path`` (or the defaults, for ``None``) with ``key.sub=value``
    overrides applied in order, values read as YAML; raises :class:`ConfigError` naming the first key at
    fault (an unknown key with the nearest known one, a wrong type, a missing mandatory value)."""
    for override in overrides:  # OmegaConf would read a bare "kd.teacher" as kd.teacher=null
        if not override.partition("=")[1] or override.startswith("="):
            raise ConfigError(f"override {override!r} is not KEY=VALUE (e.g. kd.temperature=2)")
    config = OmegaConf.structured(cls)
    with config_errors():
        for key, value in read_yaml(path).items():  # section by section, so an error names its key
            OmegaConf.update(config, str(key), value, merge=True)
        for override in overrides:  # one by one, so an error names its override
            try:
                config.merge_with_dotlist([override])
            except yaml.YAMLError as err:
                raise ConfigError(f"override {override!r}: the value is not valid YAML ({' '.join(str(err).split())})") from None
        return OmegaConf.to_object(config)


def read_yaml(path: str | Path | None) -> DictConfig:
    """The file's top-level mapping (empty for ``None``), read by OmegaConf's YAML loader."""
    if path is None:
        return OmegaConf.create()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err})") from err
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got a list")
    if not raw:  # a blank file would start a run on every default
        raise ConfigError(f"{path} is empty: give the sections that make the experiment (see configs/)")
    return raw


def from_dict(cls: type[T], raw: dict[str, Any]) -> T:
    """Dataclass ``cls`` from a mapping (e.g. a checkpoint's config), refusing unknown keys and wrong types."""
    with config_errors():
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), raw))


@contextmanager
def config_errors() -> Iterator[None]:
    """OmegaConf's errors as a one-line :class:`ConfigError` naming the key (and, if unknown, the nearest known one)."""
    try:
        yield
    except (ConfigKeyError, ConfigAttributeError) as err:
        known = [f.name for f in dataclasses.fields(err.object_type)] if dataclasses.is_dataclass(err.object_type) else []
        close = difflib.get_close_matches(str(err.key), known, n=1)
        hint = (f" (known here: {', '.join(known)})" if known else "") + (f"; did you mean {close[0]!r}?" if close else "")
        raise ConfigError(f"unknown config key {err.full_key!r}{hint}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"config key {err.full_key or 'config'!r}: {str(err.msg).splitlines()[0]}") from None


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"kd": {"alpha": 1}}`` -> ``{"kd.alpha": 1}``: for comparing two configs key by key."""
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def value_at(config: Any, key: str) -> Any:
    """The value of a dotted ``key`` (``kd.alpha``) of a dataclass config."""
    return functools.reduce(getattr, key.split("."), config)


def refuse_non_finite(config: Any) -> None:
    """Refuse (:class:`ConfigError`, naming the key) a float of a dataclass config that is ``inf`` or
    ``nan``: both pass every comparison of :func:`check_values`, and make NaN losses or metrics later."""
    for key, number in flatten(dataclasses.asdict(config)).items():
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {number}")


def check_values(config: Any, choices: Mapping[str, Sequence[Any]], at_least: Mapping[str, float]) -> None:
    """Refuse (:class:`ConfigError`, naming the key) a value outside its ``choices`` (dotted key -> allowed
    values) or below its ``at_least`` bound (dotted key -> minimum; None passes)."""
    for key, allowed in choices.items():
        if value_at(config, key) not in allowed:
            raise ConfigError(f"{key} {value_at(config, key)!r} is not one of {', '.join(map(str, allowed))}")
    for key, minimum in at_least.items():
        if value_at(config, key) is not None and value_at(config, key) < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value_at(config, key)}")
