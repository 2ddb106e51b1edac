"""The fairseq engine (beam search in-process, as ``fairseq-generate`` runs it) and opening either engine.

:class:`FairseqEngine` is :class:`lskd.decoding.TranslationEngine` over one binarized split: a
teacher or an ensemble (probabilities averaged), fairseq's ``SequenceGenerator`` with
``fairseq-generate``'s settings, and ``fairseq-generate``'s batches: the split in the order of
fairseq's batch iterator (by source length, then target length; seed 1), cut into groups of
``batch_size`` (and of ``max_batch_tokens``, if given). Decoding the whole split therefore gives
``fairseq-generate --required-batch-size-multiple 1``'s hypotheses exactly (tested). Both the
batches and the order within them matter: the length limit ``a * S + b`` depends on the batch's
longest source S, and a sentence's row in the batched matrix products changes their float
rounding, which flips near-ties of a weak model (sorting by length and id alone, with the same
batch boundaries, was measured to change hypotheses). A subset of ids (a chunk of a distillation)
keeps that order.

:func:`open_engine` opens the engine a command asks for: fairseq on the checkpoint(s), or
CTranslate2 on an export of the checkpoint (:mod:`fairseq_plugins.ctranslate2_export`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from lskd.checkpoint import CheckpointError
from lskd.ctranslate2_engine import CTranslate2Engine, load_export
from lskd.decoding import (DecodingOptions, EngineSettings, Hypothesis, Progress, TranslationEngine, length_batches,
                           refuse_ensemble)
from lskd.prepared import PreparedData
from lskd.provenance import sha256_file

#: ``fairseq-generate``'s ``--seed`` default, which orders sentences of equal lengths in a shuffled split
GENERATE_SEED = 1


class FairseqEngine:
    """fairseq's beam search over ``split`` of ``data`` with the teacher(s) at ``teacher_path`` (``a.pt:b.pt``)."""

    name = "fairseq"

    def __init__(self, data: PreparedData, split: str, teacher_path: str, options: DecodingOptions,
                 device: str = "cpu", max_source_tokens: int | None = None):
        from fairseq.dataclass.configs import GenerationConfig
        from omegaconf import OmegaConf

        from fairseq_plugins.tasks import accepted_positions, translation_task
        from fairseq_plugins.teacher import EVAL_ROLES, load_teachers

        self.task = translation_task(data.bin_dir, data.src, data.tgt)
        self.models, self.infos = load_teachers(teacher_path, self.task, EVAL_ROLES)
        self.device = torch.device(device)
        self.models = [m.to(self.device) for m in self.models]
        for model in self.models:  # as fairseq-generate does: beam-aware encoder-decoder attention
            model.prepare_for_inference_(OmegaConf.create({"generation": {"beam": options.beam}}))
        self.generator = self.task.build_generator(self.models, GenerationConfig(
            beam=options.beam, lenpen=options.lenpen, max_len_a=options.max_len_a, max_len_b=options.max_len_b,
            nbest=options.nbest))
        self.task.load_dataset(split)
        self.dataset = self.task.dataset(split)
        accepted = accepted_positions(self.task, self.models)[0]  # the source limit fairseq-generate applies
        self.max_source_tokens = min(accepted, max_source_tokens or accepted)
        self.options = options
        self.order = self._generate_order()
        self.decode_seconds = 0.0

    def _generate_order(self) -> list[int]:
        """Every sentence id in the order of ``fairseq-generate``'s batches (no size filter: too-long
        sentences are the caller's to set aside)."""
        iterator = self.task.get_batch_iterator(
            dataset=self.dataset, max_sentences=self.options.batch_size, required_batch_size_multiple=1,
            seed=GENERATE_SEED, num_workers=0, disable_iterator_cache=True)
        return [int(i) for batch in iterator.frozen_batches for i in batch]

    def source_tokens(self, sentence_id: int) -> int:
        return int(self.dataset.src_sizes[sentence_id])

    @torch.no_grad()
    def translate(self, ids: Sequence[int], progress: Progress | None = None) -> dict[int, list[Hypothesis]]:
        from fairseq import utils

        wanted = set(ids)
        ordered = [i for i in self.order if i in wanted]  # by source length already: the sort keeps this order
        results: dict[int, list[Hypothesis]] = {}
        for batch in length_batches(ordered, self.dataset.src_sizes, self.options.batch_size,
                                    self.options.max_batch_tokens):
            sample = self.dataset.collater([self.dataset[i] for i in batch])
            if self.device.type == "cuda":
                sample = utils.move_to_cuda(sample, self.device)
            began = time.perf_counter()
            hypos = self.task.inference_step(self.generator, self.models, sample)
            self.decode_seconds += time.perf_counter() - began
            for sid, nbest in zip(sample["id"].tolist(), hypos):
                results[sid] = [Hypothesis(self.task.target_dictionary.string(h["tokens"].int().cpu()), float(h["score"]))
                                for h in nbest[: self.options.nbest]]
            if progress:
                progress(len(sample["id"]))
        return results

    def describe(self) -> dict[str, Any]:
        return {"engine": "fairseq", "name": self.name, "quantization": "float32", "device": self.device.type,
                "threads": torch.get_num_threads(), "teachers": [vars(i) for i in self.infos]}


def open_engine(settings: EngineSettings, data: PreparedData, split: str, checkpoint: str, options: DecodingOptions,
                max_source_tokens: int | None = None) -> TranslationEngine:
    """The engine ``settings`` name, on ``split``: ``fairseq`` on ``checkpoint`` (``a.pt:b.pt``: an
    ensemble), or ``ctranslate2`` on ``settings.ctranslate2_model`` (an ``lskd-export`` directory,
    checked against the checkpoint and the data) or, without one, on the export kept next to the
    checkpoint, made on first use. The fairseq engine runs on torch's threads (the command sets them).
    """
    if settings.engine == "fairseq":
        return FairseqEngine(data, split, checkpoint, options, settings.device, max_source_tokens)
    from fairseq_plugins.ctranslate2_export import export_beside

    refuse_ensemble(checkpoint)
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    quantization = settings.quantization
    if settings.ctranslate2_model is not None:
        model = load_export(settings.ctranslate2_model)
        model.check_checkpoint(Path(checkpoint), sha256_file(checkpoint))
    else:
        model = export_beside(checkpoint, data, quantization or "float32")
    compute_type = quantization if quantization and quantization != model.quantization else None
    return CTranslate2Engine.on_split(model, data, split, options, device=settings.device,
                                      threads=settings.resolved_threads, compute_type=compute_type,
                                      max_source_tokens=max_source_tokens)
