"""Experiment configuration: a YAML file checked against dataclasses (OmegaConf structured configs,
:mod:`lskd.structured_config`), with ``--set a.b=c`` overrides.

Every key is declared below with its type and default, so a typo (``kd.temprature``) or a wrong
type (``schedule.epochs=ten``) stops the run at start with a message naming the key, instead of
being silently ignored hours later. :func:`validate` adds the ranges a type cannot say.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lskd.errors import file_in_the_way
from lskd.losses import validate_kd_args
from lskd.structured_config import (ConfigError, check_values, flatten, from_dict,  # noqa: F401 (from_dict: for its users)
                                    load_structured, refuse_non_finite)


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
    """The YAML file (or the defaults, for ``None``) with ``key.sub=value`` overrides applied in order,
    values read as YAML; raises :class:`ConfigError` naming the first key at fault."""
    checked = load_structured(TrainConfig, path, overrides)
    validate(checked)
    return checked


#: Keys with a fixed set of values (model.name: lskd.vision.models.MODELS) and keys with a lower bound.
CHOICES = {"data.name": ("fashion_mnist", "image_folder"), "optim.name": ("sgd", "adam", "adamw"),
           "schedule.name": ("cosine", "multistep", "constant"), "device": ("auto", "cpu", "cuda")}
AT_LEAST = {"model.width": 1, "data.imbalance_ratio": 1, "data.train_limit": 1, "data.test_limit": 1,
            "data.image_size": 1, "data.batch_size": 1, "data.eval_batch_size": 1, "data.num_workers": 0,
            "data.crop_padding": 0, "data.split_seed": 0, "schedule.epochs": 1, "kd.topk": 0, "eval_every": 1,
            "log_interval": 1, "seed": 0, "optim.momentum": 0, "optim.weight_decay": 0}


def validate(config: TrainConfig) -> None:
    """Values of the right type that still cannot make a run: one :class:`ConfigError` naming the key."""
    from lskd.vision.models import MODELS  # late: models import torch modules the config does not need

    refuse_non_finite(config)
    try:  # before the checks that name kd.teacher: a bad alpha is the first thing to fix
        validate_kd_args(config.kd.alpha, config.kd.temperature)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    check_values(config, {"model.name": tuple(sorted(MODELS)), **CHOICES}, AT_LEAST)
    schedule, kd = config.schedule, config.kd
    checks = [
        (config.data.name == "fashion_mnist" or config.data.data_dir, "data.name image_folder needs data.data_dir (or --data-dir)"),
        (config.optim.lr > 0, f"optim.lr must be > 0, got {config.optim.lr}"),
        (config.seed < 2**32, f"seed must be < 2**32 (numpy's seeds), got {config.seed}"),
        (config.optim.momentum > 0 or not config.optim.nesterov, "optim.nesterov needs optim.momentum > 0"),
        (schedule.gamma > 0, f"schedule.gamma must be > 0, got {schedule.gamma}"),
        (0 <= schedule.warmup_epochs <= schedule.epochs, "schedule.warmup_epochs must be in [0, schedule.epochs]"),
        (all(0 < m < schedule.epochs for m in schedule.milestones), "schedule.milestones must lie in (0, schedule.epochs)"),
        (0 <= config.loss.label_smoothing < 1, f"loss.label_smoothing must be in [0, 1), got {config.loss.label_smoothing}"),
        (kd.alpha == 0 or kd.teacher, f"kd.alpha = {kd.alpha} needs kd.teacher (a checkpoint written by lskd-train)"),
        (kd.alpha > 0 or not kd.teacher, "kd.teacher is set but kd.alpha = 0: the teacher would not be used"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    blocker = file_in_the_way(config.out_dir)
    if blocker is not None:
        raise ConfigError(f"out_dir {config.out_dir}: {blocker} is a file, not a directory")


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def experiment_differences(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Keys (other than :data:`RUNTIME_KEYS`) whose values differ: a checkpoint of another experiment."""
    old, new = flatten(saved), flatten(to_dict(current))
    return [f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}"
            for key in sorted(set(old) | set(new)) if key not in RUNTIME_KEYS and old.get(key) != new.get(key)]


def dump_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(config)
