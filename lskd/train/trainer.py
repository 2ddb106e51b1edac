"""One training loop for teachers (LS cross-entropy) and students (KD from a frozen teacher).

The loss is :func:`lskd.losses.word_kd_loss`, the fairseq criterion's: with ``kd.alpha = 0`` it is
fairseq's label-smoothed cross-entropy, with a teacher it adds ``alpha * T^2 * KL``. Evaluation
reports top-1/top-5, NLL, Shen et al.'s stability ``1 - S`` and the ECE with the accumulators of
:mod:`lskd.metrics`, summed over ranks.

Reproducibility: the shuffle is a function of (seed, epoch) (``DistributedSampler``, also for one
process), augmentation draws from a generator seeded by (seed, epoch, rank), and a checkpoint
keeps every rank's torch / CUDA / NumPy / Python generator states, so a resumed run continues
bit for bit like an uninterrupted one on CPU.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from lskd.checkpoint import load_checkpoint
from lskd.errors import InvalidValueError
from lskd.losses import KDLoss, topk_scores, word_kd_loss
from lskd.metrics import CalibrationAccumulator, StabilityAccumulator
from lskd.provenance import provenance, sha256_file, write_json
from lskd.train.config import (ConfigError, KDConfig, TrainConfig, dump_yaml, experiment_differences, from_dict,
                               to_dict)
from lskd.train.distributed import (DistEnv, all_reduce_sum_, broadcast_buffers_, gather_rng_states, pick_device,
                                    seed_everything, set_rng_state)
from lskd.vision.data import VisionData, augment_batch, build_data, normalize
from lskd.vision.models import build_model

CHECKPOINT_FORMAT = "lskd-train/1"
CHECKPOINT_NAME = "checkpoint_last.pt"
ECE_BINS = 15


def classification_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                        kd: KDConfig, label_smoothing: float) -> KDLoss:
    """The trainer's loss, summed over the batch: ``word_kd_loss`` on (N, C) logits.

    Without a teacher it is fairseq's label-smoothed cross-entropy; ``kd.topk`` keeps the teacher's
    k best classes (renormalised by the loss's temperature step), as the fairseq criterion does.
    """
    if teacher_logits is None:
        return word_kd_loss(student_logits, labels, None, alpha=0.0, temperature=1.0, epsilon=label_smoothing,
                            student_normalized=False)
    scores, indices = topk_scores(teacher_logits, kd.topk) if kd.topk else (teacher_logits.float(), None)
    return word_kd_loss(student_logits, labels, scores, alpha=kd.alpha, temperature=kd.temperature,
                        epsilon=label_smoothing, teacher_indices=indices, student_normalized=False)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Learning-rate multiplier after ``step`` updates: linear warm-up, then cosine / multistep / constant."""
    schedule = config.schedule
    warmup = schedule.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if schedule.name == "cosine":
        total = schedule.epochs * steps_per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1.0, total - warmup))))
    if schedule.name == "multistep":
        return schedule.gamma ** sum(step >= m * steps_per_epoch for m in schedule.milestones)
    return 1.0


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    optim = config.optim
    if optim.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


def augmentation_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, rank): nothing to carry across a resume."""
    mixed = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(mixed)


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint written by ``lskd-train``, in eval mode, and the checkpoint's state.

    Loaded with torch's safe unpickler (:func:`lskd.checkpoint.load_checkpoint`).
    """
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InvalidValueError(f"{path} is not a checkpoint written by lskd-train")
    config = from_dict(TrainConfig, state["config"])
    model = build_model(config.model.name, len(state["classes"]), state["in_channels"], config.model.width)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def load_teacher(path: str, data: VisionData, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen teacher (eval mode, no gradients) and what the result records say about it."""
    if not Path(path).is_file():
        raise ConfigError(f"kd.teacher: checkpoint not found: {path} (train the teacher with lskd-train first)")
    teacher, state = load_trained_model(path, device)
    if tuple(state["classes"]) != data.classes or state["in_channels"] != data.in_channels:
        raise ConfigError(f"kd.teacher {path} was trained on other data: classes {state['classes']} "
                          f"({state['in_channels']} channels), the student's are {list(data.classes)} ({data.in_channels})")
    teacher.requires_grad_(False)
    teacher_config = state["config"]
    epochs = teacher_config["schedule"]["epochs"]
    if state["epoch"] < epochs:
        print(f"[lskd-train] warning: teacher {path} has trained {state['epoch']} of {epochs} epochs", file=sys.stderr)
    return teacher, {"path": str(Path(path).resolve()), "sha256": sha256_file(path),
                     "label_smoothing": teacher_config["loss"]["label_smoothing"],
                     "model": teacher_config["model"]["name"], "width": teacher_config["model"]["width"],
                     "epochs": state["epoch"]}


class Trainer:
    """Builds data, model, (teacher), optimizer and schedule from a config; resumes from ``out_dir``."""

    def __init__(self, config: TrainConfig, env: DistEnv = DistEnv(), device: torch.device | None = None):
        self.config, self.env = config, env
        self.device = device or pick_device(config.device, env)
        self.out_dir = Path(config.out_dir)
        seed_everything(config.seed)
        self.data = build_data(config.data)
        if config.kd.topk > len(self.data.classes):
            raise ConfigError(f"kd.topk {config.kd.topk} exceeds the {len(self.data.classes)} classes")
        if config.data.batch_size % env.world_size:
            raise ConfigError(f"data.batch_size {config.data.batch_size} is not divisible by the {env.world_size} workers")
        self.model = build_model(config.model.name, len(self.data.classes), self.data.in_channels,
                                 config.model.width).to(self.device)
        self.teacher, self.teacher_info = None, None
        if config.kd.teacher:
            self.teacher, self.teacher_info = load_teacher(config.kd.teacher, self.data, self.device)
        self.train_loader, self.sampler = self.make_train_loader()
        self.eval_loader = self.make_eval_loader()
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, config))
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if env.distributed else None)
        self.epoch, self.step, self.history = 0, 0, []
        self.resumed = self.maybe_resume()
        self._writer = None

    # ---- data -------------------------------------------------------------------------------
    def make_train_loader(self) -> tuple[DataLoader, DistributedSampler]:
        dataset = self.data.train.dataset
        # a DistributedSampler also for one process: its shuffle is a function of (seed, epoch)
        sampler = DistributedSampler(dataset, num_replicas=self.env.world_size, rank=self.env.rank, shuffle=True,
                                     seed=self.config.seed)
        loader = DataLoader(dataset, batch_size=self.config.data.batch_size // self.env.world_size, sampler=sampler,
                            collate_fn=dataset.collate, num_workers=self.config.data.num_workers,
                            pin_memory=self.device.type == "cuda")
        return loader, sampler

    def make_eval_loader(self) -> DataLoader:
        """Rank r evaluates examples r, r + N, ...: no padding, so the summed counts cover the split once."""
        dataset = self.data.test.dataset
        shard = Subset(dataset, range(self.env.rank, len(dataset), self.env.world_size))
        return DataLoader(shard, batch_size=self.config.data.eval_batch_size, shuffle=False,
                          collate_fn=dataset.collate, num_workers=self.config.data.num_workers)

    def inputs(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float inputs on the device, augmented when a generator is given."""
        images = images.to(self.device, non_blocking=True)
        data = self.config.data
        if generator is not None and data.augment:
            images = augment_batch(images, data.crop_padding, data.hflip, generator)
        return normalize(images, self.data.mean, self.data.std)

    def progress(self, loader: DataLoader, description: str):
        """A tqdm bar on the main rank, shown only on a terminal (and when ``progress`` is on)."""
        return tqdm(loader, desc=description, unit="batch", leave=False,
                    disable=None if (self.config.progress and self.env.is_main) else True)

    # ---- training ---------------------------------------------------------------------------
    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[KDLoss, torch.Tensor]:
        """One update; returns the summed losses and the student's logits."""
        model = self.ddp or self.model
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
        logits = model(inputs)
        out = classification_loss(logits, labels, teacher_logits, self.config.kd, self.config.loss.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (out.loss / len(labels)).backward()  # mean over the local batch; DDP averages over ranks
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return out, logits

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard; statistics summed over ranks, per example."""
        self.model.train()
        self.sampler.set_epoch(epoch)
        generator = augmentation_generator(self.config.seed, epoch, self.env.rank)
        # summed on the device, read once per epoch: no host synchronisation per update
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, nll, kd, correct
        examples = 0
        start = time.perf_counter()
        for images, labels in self.progress(self.train_loader, f"epoch {epoch + 1}/{self.config.schedule.epochs}"):
            labels = labels.to(self.device, non_blocking=True)
            out, logits = self.train_step(self.inputs(images, generator), labels)
            with torch.no_grad():
                correct = logits.argmax(-1).eq(labels).sum()
                sums += torch.stack([out.loss.detach(), out.nll_loss.detach(), out.kd_loss.detach(), correct]).double()
            examples += len(labels)
            if self.step % self.config.log_interval == 0 and self.env.is_main:
                self.writer.add_scalar("train/loss", float(out.loss.detach()) / len(labels), self.step)
        seconds = time.perf_counter() - start
        sums = torch.cat([sums, sums.new_tensor([examples])])
        all_reduce_sum_([sums], self.device)
        loss, nll, kd, correct, examples = sums.tolist()
        return {"loss": loss / examples, "nll_loss": nll / examples, "kd_loss": kd / examples,
                "top1": 100.0 * correct / examples, "examples": int(examples), "seconds": seconds,
                "images_per_second": examples / seconds, "lr": self.scheduler.get_last_lr()[0]}

    # ---- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Top-1/top-5 (%), NLL (nats), ``1 - S``, ECE and entropy on the test split, summed over ranks."""
        broadcast_buffers_(self.model)
        self.model.eval()
        classes = len(self.data.classes)
        stability, calibration = StabilityAccumulator(classes), CalibrationAccumulator(ECE_BINS)
        top = min(5, classes)
        counts = torch.zeros(3, dtype=torch.float64)  # top-1 correct, top-k correct, summed NLL
        per_class = torch.zeros(2, classes, dtype=torch.float64)  # correct, examples
        for images, labels in self.progress(self.eval_loader, "evaluating"):
            log_probs = F.log_softmax(self.model(self.inputs(images)).float(), dim=-1).cpu()
            probs = log_probs.exp()
            stability.update(probs, labels)
            calibration.update(probs, labels, log_probs)
            hit = log_probs.topk(top, dim=-1).indices.eq(labels[:, None])
            counts += torch.stack([hit[:, 0].sum(), hit.any(-1).sum(), -log_probs.gather(-1, labels[:, None]).sum()]).double()
            per_class[0].index_add_(0, labels, hit[:, 0].double())
            per_class[1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        all_reduce_sum_([counts, per_class, *stability.state_tensors(), *calibration.state_tensors()], self.device)
        examples = calibration.total
        return {
            "top1": 100.0 * float(counts[0]) / examples, f"top{top}": 100.0 * float(counts[1]) / examples,
            "nll": float(counts[2]) / examples, "one_minus_s": stability.result(), f"ece_{ECE_BINS}_bins": calibration.ece(),
            "mean_entropy": calibration.mean_entropy(), "examples": int(examples),
            "per_class_top1": (100.0 * per_class[0] / per_class[1].clamp_min(1)).tolist(),
        }

    # ---- the run ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.schedule.epochs

    def fit(self, stop_after_epochs: int | None = None) -> list[dict[str, Any]]:
        """Train to ``schedule.epochs`` (or ``stop_after_epochs`` more, for time-sliced jobs); returns the history."""
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_yaml(self.config), encoding="utf-8")
        last = self.config.schedule.epochs
        if stop_after_epochs is not None:
            last = min(last, self.epoch + stop_after_epochs)
        while self.epoch < last:
            train = self.train_epoch(self.epoch)
            done = self.epoch + 1
            evaluated = done % self.config.eval_every == 0 or done == self.config.schedule.epochs
            self.epoch = done
            self.history.append({"epoch": done, "step": self.step, "train": train,
                                 "eval": self.evaluate() if evaluated else None})
            if self.env.is_main:
                self.log_epoch(self.history[-1])
            self.save_checkpoint()
        if self.env.is_main:
            self.write_metrics()
            if self.finished:
                self.write_eval_record()
        self.close()
        return self.history

    def close(self) -> None:
        """Flush and close the TensorBoard writer (for callers that drive ``train_epoch`` themselves)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def log_epoch(self, entry: dict[str, Any]) -> None:
        train, evaluation = entry["train"], entry["eval"]
        line = (f"epoch {entry['epoch']}/{self.config.schedule.epochs} | train loss {train['loss']:.4f} "
                f"top1 {train['top1']:.2f} | {train['images_per_second']:.0f} img/s | lr {train['lr']:.4g}")
        for key in ("loss", "nll_loss", "kd_loss", "top1", "lr"):
            self.writer.add_scalar(f"train/{key}", train[key], entry["epoch"])
        if evaluation:
            line += (f" | test top1 {evaluation['top1']:.2f} nll {evaluation['nll']:.4f} "
                     f"1-S {evaluation['one_minus_s']:.4f} ECE {evaluation[f'ece_{ECE_BINS}_bins']:.4f}")
            for key, value in evaluation.items():
                if not isinstance(value, list):
                    self.writer.add_scalar(f"test/{key}", value, entry["epoch"])
        self.writer.flush()
        print(f"[lskd-train] {line}", flush=True)

    @property
    def writer(self):
        """TensorBoard event files in ``out_dir/tensorboard`` (main rank only); a resume drops later stale points."""
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step if self.resumed else None)
        return self._writer

    # ---- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        """Everything a resume needs; written atomically by the main rank (all ranks give their RNG states)."""
        rng = gather_rng_states()
        if not self.env.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "config": to_dict(self.config), "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng, "history": self.history,
            "classes": list(self.data.classes), "in_channels": self.data.in_channels,
            "world_size": self.env.world_size,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def maybe_resume(self) -> bool:
        """Continue from ``out_dir/checkpoint_last.pt`` when it exists and describes this experiment."""
        if not self.checkpoint_path.is_file():
            return False
        state = load_checkpoint(self.checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{self.checkpoint_path} is not an lskd-train checkpoint; choose another out_dir")
        differences = experiment_differences(state["config"], self.config)
        if differences:
            raise ConfigError(f"{self.checkpoint_path} belongs to another experiment; use another out_dir or the "
                              f"same settings. Differences: " + "; ".join(differences))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        if state["world_size"] == self.env.world_size:
            set_rng_state(state["rng"][self.env.rank])
        elif self.env.is_main:
            print(f"[lskd-train] warning: checkpoint written by {state['world_size']} workers, resumed on "
                  f"{self.env.world_size}: random states are not restored", file=sys.stderr)
        if self.env.is_main:
            print(f"[lskd-train] resumed {self.checkpoint_path} at epoch {self.epoch}", flush=True)
        return True

    # ---- records ----------------------------------------------------------------------------
    def describe_system(self) -> dict[str, Any]:
        """How this model was trained, in the terms ``lskd-report`` tabulates."""
        kd = self.config.kd
        return {
            "method": "KD" if kd.alpha > 0 else "CE", "model": self.config.model.name, "width": self.config.model.width,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "label_smoothing": self.config.loss.label_smoothing,
            "teacher_label_smoothing": self.teacher_info["label_smoothing"] if self.teacher_info else None,
            "kd_alpha": kd.alpha if kd.alpha > 0 else None, "kd_temperature": kd.temperature if kd.alpha > 0 else None,
            "kd_topk": kd.topk if kd.alpha > 0 else None, "teacher": self.teacher_info,
            "seed": self.config.seed, "epochs": self.epoch, "world_size": self.env.world_size,
        }

    def write_metrics(self) -> None:
        write_json(self.out_dir / "metrics.json", {
            **provenance(), "config": to_dict(self.config), "system": self.describe_system(),
            "data": self.data.description, "finished": self.finished, "history": self.history,
        })

    def write_eval_record(self) -> None:
        """``eval/classification-test.json``: the final test scores, as ``lskd-report`` reads them."""
        final = self.history[-1]["eval"]
        (self.out_dir / "eval").mkdir(exist_ok=True)
        write_json(self.out_dir / "eval" / "classification-test.json", {
            **provenance(), "split": "test", "scores": final, "system": self.describe_system(),
            "checkpoint": {"path": str(self.checkpoint_path.resolve()), "sha256": sha256_file(self.checkpoint_path)},
            "data": self.data.description,
        })
