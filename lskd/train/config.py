"""Experiment configuration: a YAML file, checked against dataclasses, with ``--set a.b=c`` overrides.

Every key is declared below with its type and default, so a typo (``kd.temprature``) or a wrong
type (``schedule.epochs=ten``) stops the run at start with a message naming the key, instead of
being silently ignored hours later.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lskd.losses import validate_kd_args


class ConfigError(ValueError):
    """A configuration that cannot describe a run: unknown key, wrong type or meaningless value."""


@dataclass
class ModelConfig:
    name: str = "resnet20"  # resnet8/14/20/32/44/56, binary_resnet8/14/20/32 (ReActNet-style)
    width: int = 16  # channels of the first stage; the stages have width, 2 width, 4 width


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # or image_folder (DATA_DIR/<split>/<class>/<image>)
    data_dir: str | None = None  # default for fashion_mnist: the Debian package's directory
    imbalance_ratio: float = 1.0  # n_max / n_min of the long-tailed training split; 1 = as it is
    split_seed: int = 0  # which examples of each class the long-tailed split keeps
    train_limit: int | None = None  # N training examples only (smoke runs, tests): Fashion-MNIST's first
    test_limit: int | None = None  # N, an image folder's fixed random N (split_seed)
    train_split: str = "train"  # image_folder sub-directories
    test_split: str = "test"
    image_size: int = 32  # image_folder: images are resized to image_size x image_size
    batch_size: int = 128  # global: divided among distributed workers
    eval_batch_size: int = 512
    num_workers: int = 0
    augment: bool = True  # random crop (zero padding crop_padding) and horizontal flip, in torch
    crop_padding: int = 2
    hflip: bool = True


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd, adam, adamw
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = False
    weight_decay: float = 5e-4


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine, multistep, constant; stepped every update
    epochs: int = 30
    warmup_epochs: float = 0.0  # linear warm-up from 0
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1


@dataclass
class LossConfig:
    label_smoothing: float = 0.0  # fairseq convention: eps spread over the C - 1 other classes


@dataclass
class KDConfig:
    teacher: str | None = None  # a checkpoint written by lskd-train; frozen
    alpha: float = 0.0  # weight of the KD term; 1 = soft labels only (Shen et al., ReActNet)
    temperature: float = 1.0
    topk: int = 0  # keep the teacher's k best classes, renormalised (0 = all)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    seed: int = 1
    out_dir: str = "runs/train"
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    log_interval: int = 50  # updates between TensorBoard loss points
    progress: bool = True  # tqdm bars (shown only on a terminal, on rank 0)


#: Keys that say where or how a run executes, not what it computes: a resumed run may change them.
RUNTIME_KEYS = frozenset({"out_dir", "device", "progress", "log_interval", "data.data_dir", "data.num_workers",
                          "data.eval_batch_size"})


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """The YAML file (or the defaults, for ``None``) with ``key.sub=value`` overrides applied, validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    config = from_dict(TrainConfig, raw)
    validate(config)
    return config


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b=c`` in the nested mapping; the value is read as YAML (``2``, ``0.1``, ``null``, ``[1, 2]``)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not KEY=VALUE (e.g. kd.temperature=2)")
    *sections, leaf = key.strip().split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {section} is not a section")
    node[leaf] = yaml.safe_load(text) if text.strip() else None


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and values of the wrong type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(unknown_key_message(prefix + str(key), known))
        if dataclasses.is_dataclass(hints[key]):
            values[key] = from_dict(hints[key], value or {}, f"{prefix}{key}.")
        else:
            values[key] = check_type(prefix + key, value, hints[key])
    return cls(**values)


def unknown_key_message(key: str, known: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {key!r} (known here: {', '.join(known)}){hint}"


def check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has type ``hint`` (int accepted for float; '1e-3'-style strings for float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return check_type(key, value, inner)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return [check_type(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ConfigError(f"config key {key!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def validate(config: TrainConfig) -> None:
    """Values that type-check but cannot make a run."""
    from lskd.vision.models import MODELS  # late: models import torch modules the config does not need

    checks = [
        (config.model.name in MODELS, f"model.name {config.model.name!r} is not one of {', '.join(sorted(MODELS))}"),
        (config.model.width >= 1, "model.width must be >= 1"),
        (config.data.name in ("fashion_mnist", "image_folder"), f"data.name {config.data.name!r} must be fashion_mnist or image_folder"),
        (config.data.imbalance_ratio >= 1, f"data.imbalance_ratio must be >= 1 (n_max / n_min), got {config.data.imbalance_ratio}"),
        (config.data.name == "fashion_mnist" or config.data.data_dir, "data.name image_folder needs data.data_dir (or --data-dir)"),
        (config.data.batch_size >= 1 and config.data.eval_batch_size >= 1, "batch sizes must be >= 1"),
        (config.data.train_limit is None or config.data.train_limit >= 1, "data.train_limit must be >= 1"),
        (config.data.test_limit is None or config.data.test_limit >= 1, "data.test_limit must be >= 1"),
        (config.data.crop_padding >= 0 and config.data.image_size >= 1, "data.crop_padding >= 0 and data.image_size >= 1"),
        (config.optim.name in ("sgd", "adam", "adamw"), f"optim.name {config.optim.name!r} must be sgd, adam or adamw"),
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (config.schedule.name in ("cosine", "multistep", "constant"), f"schedule.name {config.schedule.name!r} must be cosine, multistep or constant"),
        (config.schedule.epochs >= 1, "schedule.epochs must be >= 1"),
        (0 <= config.schedule.warmup_epochs <= config.schedule.epochs, "schedule.warmup_epochs must be in [0, epochs]"),
        (all(0 < m < config.schedule.epochs for m in config.schedule.milestones), "schedule.milestones must lie in (0, epochs)"),
        (0 <= config.loss.label_smoothing < 1, f"loss.label_smoothing must be in [0, 1), got {config.loss.label_smoothing}"),
        (config.kd.topk >= 0, "kd.topk must be >= 0 (0 = all classes)"),
        (config.kd.alpha == 0 or config.kd.teacher, f"kd.alpha = {config.kd.alpha} needs kd.teacher (a checkpoint written by lskd-train)"),
        (config.kd.alpha > 0 or not config.kd.teacher, "kd.teacher is set but kd.alpha = 0: the teacher would not be used"),
        (config.device in ("auto", "cpu", "cuda"), f"device {config.device!r} must be auto, cpu or cuda"),
        (config.eval_every >= 1 and config.log_interval >= 1, "eval_every and log_interval must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        validate_kd_args(config.kd.alpha, config.kd.temperature)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"kd": {"alpha": 1}}`` -> ``{"kd.alpha": 1}``: for comparing two configs key by key."""
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def experiment_differences(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Keys (other than :data:`RUNTIME_KEYS`) whose values differ: a checkpoint of another experiment."""
    old, new = flatten(saved), flatten(to_dict(current))
    return [f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
            for key in sorted(set(old) | set(new)) if key not in RUNTIME_KEYS and old.get(key) != new.get(key)]


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
