"""fairseq translation tasks over binarized data, and every sentence of a split in batches.

What LSKD's commands (top-k dumps, decoding, analysis) need from fairseq's task machinery, built
with fairseq's own parser and defaults so that it sees the data as ``fairseq-train`` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from lskd.checkpoint import CheckpointError
from lskd.prepared import PreparedData


def translation_task(data: str | Path, src: str | None, tgt: str | None):
    """A fairseq ``translation`` task over the binarized directory ``data`` (languages inferred when None)."""
    import fairseq_plugins  # noqa: F401  (safe checkpoint loading, LSKD's components)
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(data), "--task", "translation"]
    argv += ["--source-lang", src] if src else []
    argv += ["--target-lang", tgt] if tgt else []
    args = options.parse_args_and_arch(options.get_generation_parser(), argv)
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def task_and_model(checkpoint: str | Path, data: PreparedData) -> tuple[Any, torch.nn.Module, Any]:
    """The task over a prepared directory, the checkpoint's model on it (eval mode, CPU) and its
    :class:`fairseq_plugins.teacher.TeacherInfo` (sha256, label smoothing). A missing checkpoint is a
    :class:`lskd.checkpoint.CheckpointError`, found before the task is built."""
    from fairseq_plugins.teacher import load_teachers

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    task = translation_task(data.bin_dir, data.src, data.tgt)
    models, infos = load_teachers(str(checkpoint), task)
    return task, models[0], infos[0]


def split_batches(task, models: list[torch.nn.Module], split: str, max_tokens: int, device: torch.device,
                  desc: str) -> Iterator[dict]:
    """Every sentence of ``split`` once, unshuffled, in batches the models accept.

    ``required_batch_size_multiple=1`` and ``ignore_invalid_inputs=False``: no tail batch is dropped
    and an over-long sentence stops the run instead of being skipped. Shows a progress bar.
    """
    from fairseq import utils
    from tqdm import tqdm

    task.load_dataset(split)
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(
        dataset, max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models]),
        ignore_invalid_inputs=False, required_batch_size_multiple=1, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    with tqdm(total=len(dataset), unit="sent", desc=desc) as progress:
        for sample in batches:
            if device.type == "cuda":
                sample = utils.move_to_cuda(sample, device)
            yield sample
            progress.update(len(sample["id"]))
