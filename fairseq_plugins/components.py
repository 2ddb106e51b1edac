"""Build fairseq's training components in-process from a ``fairseq-train`` command line.

For benchmarks and tests that drive fairseq's own Trainer step by step: the same parser, defaults
and registries as ``fairseq-train``, so what they measure is what a user runs.
"""
from __future__ import annotations

from typing import Any


def build_training_components(argv: list[str], splits: tuple[str, ...] = ("valid",)) -> tuple[Any, Any, Any, Any]:
    """(cfg, task, model, criterion) for ``fairseq-train ARGV``, with ``splits`` loaded."""
    import fairseq_plugins  # noqa: F401  (registers LSKD's components)
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    for split in splits:
        task.load_dataset(split)
    return cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)
