"""Teacher analysis for fairseq checkpoints: stability ``1 - S``, calibration, penultimate pictures.

Classes are gold target tokens; a model's distribution at a position is taken under teacher
forcing. For a large vocabulary, stability is restricted to the ``max_classes`` most frequent gold
tokens of the split (memory: max_classes x V x 8 bytes).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from lskd.corpus import CorpusError
from lskd.errors import name_ids
from lskd.metrics import CalibrationAccumulator, StabilityAccumulator
from lskd.output_files import check_writable
from lskd.prepared import PreparedData, load_prepared
from lskd.projection import project_onto_template_plane, save_projection_figure
from lskd.provenance import provenance, write_json
from lskd.too_long import LengthCheck

DEFAULT_MAX_CLASSES = 1000


def most_frequent_gold_classes(task, split: str, limit: int, leave_out: Sequence[int] = ()) -> torch.Tensor:
    """The ``limit`` most frequent target tokens of ``split`` (padding and the sentences ``leave_out`` excluded)."""
    task.load_dataset(split)
    dataset = task.dataset(split).tgt
    counts = torch.zeros(len(task.target_dictionary), dtype=torch.long)
    left_out = set(leave_out)
    for i in range(len(dataset)):
        if i not in left_out:
            counts += torch.bincount(dataset[i].long(), minlength=len(counts))
    counts[task.target_dictionary.pad()] = 0
    seen = int((counts > 0).sum())
    return counts.argsort(descending=True)[: min(limit, seen)]


def checked_lengths(task, model, split: str, too_long: str, what: str):
    """The split's sentences too long for ``model`` (:func:`fairseq_plugins.tasks.check_lengths`), after
    the ``too_long`` policy: ``error`` stops naming them, ``skip`` leaves them out of ``what``."""
    from fairseq_plugins.tasks import check_lengths

    lengths = check_lengths(task, [model], split)
    lengths.enforce(too_long, hint=f"pass --too-long skip to leave them out of {what}")
    return lengths


def stability_report(checkpoint: Path, data_dir: Path, split: str, out_dir: Path, max_classes: int = DEFAULT_MAX_CLASSES,
                     max_tokens: int = 4096, device: str = "cpu", too_long: str = "error") -> dict[str, Any]:
    """One teacher-forced pass: stability ``1 - S``, ECE (15 bins), accuracy and entropy; writes JSON.

    Sentence pairs longer than the model accepts stop it (naming them) unless ``too_long="skip"``;
    the record's ``too_long``, ``sentences`` and ``warnings`` then say which were left out. The classes
    are counted over the sentences used. A location where the record cannot be written is an
    :class:`lskd.output_files.OutputError` once the checkpoint is read, before the pass."""
    from fairseq_plugins.tasks import split_batches, task_and_model
    from fairseq_plugins.teacher import teacher_log_probs

    data = load_prepared(data_dir)
    data.sentences(split)  # a split it lacks is named now, not as fairseq's "Dataset not found" traceback
    task, model, info = task_and_model(checkpoint, data)
    model.to(device)
    lengths = checked_lengths(task, model, split, too_long, "the statistics (the record lists them)")
    check_writable(out_dir)
    dictionary = task.target_dictionary
    classes = most_frequent_gold_classes(task, split, max_classes, lengths.too_long)
    stability = StabilityAccumulator(len(dictionary), classes=classes)
    calibration = CalibrationAccumulator(15)
    for sample in split_batches(task, lengths, max_tokens, torch.device(device), f"stability {split}"):
        log_probs = teacher_log_probs([model], sample["net_input"])
        mask = sample["target"].ne(dictionary.pad())
        kept, gold = log_probs[mask], sample["target"][mask]
        probs = kept.exp()
        stability.update(probs, gold)
        calibration.update(probs, gold, kept)
    per_class = stability.per_class()
    record = {
        "split": split,
        "sentences": lengths.kept,
        "too_long": lengths.record(too_long),
        "warnings": [lengths.left_out_warning()] if lengths.too_long else [],
        "one_minus_s": stability.result(),
        "classes": len(per_class),
        "max_classes": max_classes,
        "positions": int(calibration.total),
        "ece_15_bins": calibration.ece(),
        "accuracy": calibration.accuracy(),
        "mean_entropy_bits": calibration.mean_entropy() / math.log(2),
        "per_class_variance": {dictionary[c]: v for c, v in sorted(per_class.items(), key=lambda kv: -kv[1])},
        "checkpoint": {"path": info.path, "sha256": info.sha256, "label_smoothing": info.label_smoothing,
                       "num_updates": info.num_updates},
        "data": data.provenance(),
        **provenance(),
    }
    write_json(out_dir / f"stability-{split}.json", record)
    return record


def panel_model(checkpoint: Path, data: PreparedData, split: str, tokens: Sequence[str],
                too_long: str = "error") -> tuple[Any, torch.nn.Module, Any, LengthCheck, list[int]]:
    """``(task, model, info, lengths, token ids)`` of one panel: the checkpoint read, its sentences too long
    for it handled by the ``too_long`` policy, ``tokens`` found in its target dictionary (else a
    :class:`CorpusError`)."""
    from fairseq_plugins.tasks import task_and_model

    task, model, info = task_and_model(checkpoint, data)
    lengths = checked_lengths(task, model, split, too_long, "the picture")
    if lengths.too_long:  # the picture has no record to list them in
        print(f"warning: {len(lengths.too_long)} of {lengths.sentences} sentences of {split} are too long for "
              f"{checkpoint} and left out of its panel: ids {name_ids(lengths.too_long)}")
    dictionary = task.target_dictionary
    ids = [dictionary.index(t) for t in tokens]
    missing = [t for t, i in zip(tokens, ids) if i == dictionary.unk()]
    if missing:
        raise CorpusError(f"token(s) {missing} are not in the target dictionary (SentencePiece pieces start with '▁')")
    return task, model, info, lengths, ids


@torch.no_grad()
def penultimate_points(task: Any, model: torch.nn.Module, lengths: LengthCheck, ids: Sequence[int],
                       max_tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) plane coordinates and (N,) class indices of decoder states whose gold token is one of the
    dictionary ``ids``, over the sentences of ``lengths.split`` that ``lengths`` keeps."""
    from fairseq_plugins.tasks import split_batches
    from fairseq_plugins.teacher import decoder_features, output_embeddings

    split = lengths.split
    templates = output_embeddings(model)[ids]
    features, labels = [], []
    for sample in split_batches(task, lengths, max_tokens, torch.device("cpu"), f"features {split}"):
        hidden = decoder_features(model, sample["net_input"])
        for cls, token in enumerate(ids):
            where = sample["target"].eq(token)
            features.append(hidden[where])
            labels.append(torch.full((int(where.sum()),), cls))
    points = project_onto_template_plane(torch.cat(features), templates)
    return points, torch.cat(labels)


def projection_figure(checkpoints: Sequence[Path], data_dir: Path, split: str, tokens: Sequence[str], out: Path,
                      too_long: str = "error") -> Path:
    """Side-by-side projections, one panel per checkpoint, titled with its label smoothing. Every checkpoint is
    read and checked (:func:`panel_model`) and a location where the picture cannot be written is an
    :class:`lskd.output_files.OutputError`, before any decoder state is computed."""
    data = load_prepared(data_dir)
    data.sentences(split)  # a split it lacks is named now, not as fairseq's "Dataset not found" traceback
    models = [(checkpoint, *panel_model(checkpoint, data, split, tokens, too_long)) for checkpoint in checkpoints]
    check_writable(out.parent)
    panels = []
    for checkpoint, task, model, info, lengths, ids in models:
        points, labels = penultimate_points(task, model, lengths, ids)
        panels.append((f"{Path(checkpoint).parent.name} (label smoothing {info.label_smoothing})", points, labels))
    return save_projection_figure(panels, tokens, out)
