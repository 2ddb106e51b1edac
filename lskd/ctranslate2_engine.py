"""The CTranslate2 engine: an exported model directory (``export.json``) and translation with it.

``lskd-export`` (``fairseq_plugins.ctranslate2_export``) writes a CTranslate2 model converted from
a fairseq checkpoint, the SentencePiece model and ``export.json``: which checkpoint (sha256) and
which vocabulary (the dictionaries' sha256) it came from. Here it is read back, checked against
the data it is about to translate, and run with ``ctranslate2.Translator`` on the prepared
SentencePiece pieces. Imports nothing of fairseq or torch: a deployed student needs neither.

The search mirrors fairseq's (:class:`lskd.decoding.DecodingOptions`): CTranslate2's beam search
with ``length_penalty`` = fairseq's ``--lenpen`` (both divide the log-probability by the length,
``</s>`` included, to that power), ``min_decoding_length`` 1 (fairseq forbids ``</s>`` at the
first step) and a per-batch ``max_decoding_length`` from fairseq's ``a * S + b`` rule. In float32
the two engines then agree but for two measured differences, both negligible for a trained model:

* at the first step CTranslate2 renormalises the distribution without ``</s>``, fairseq does not:
  every hypothesis's log-probability moves by the same ``-log(1 - P(</s>))``, which changes nothing
  at ``lenpen`` 0 but can reorder hypotheses of different lengths under length normalisation when
  ``P(</s>)`` at the first step is not tiny (an untrained model);
* a hypothesis that reaches the length limit: fairseq appends a forced ``</s>`` and ranks with its
  probability, CTranslate2 stops without it, so the last tokens can differ.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lskd.decoding import DecodingOptions, EngineError, Hypothesis, Progress, length_batches, max_target_tokens
from lskd.prepared import PreparedData
from lskd.provenance import read_json, sha256_file

EXPORT_JSON = "export.json"
SENTENCEPIECE_MODEL = "sentencepiece.model"
#: what the engine and the checks read from ``export.json``
EXPORT_RECORD_KEYS = ("checkpoint.path", "checkpoint.sha256", "dictionaries", "quantization", "model.parameters",
                      "model.max_source_positions", "model.max_target_positions", "size_bytes.total")


class ExportMismatchError(EngineError):
    """An exported model that was made from another checkpoint or for another vocabulary."""


@dataclass(frozen=True)
class ExportedModel:
    """``root``: a directory written by ``lskd-export``; ``record``: its ``export.json``."""

    root: Path
    record: dict[str, Any]

    @property
    def quantization(self) -> str:
        return self.record["quantization"]

    @property
    def checkpoint_sha256(self) -> str:
        return self.record["checkpoint"]["sha256"]

    @property
    def max_source_tokens(self) -> int:
        """The longest source (tokens with ``</s>``) the model has positions for."""
        return int(self.record["model"]["max_source_positions"])

    @property
    def max_target_tokens(self) -> int:
        """The longest hypothesis (tokens before ``</s>``) the model has positions for, as fairseq's bound."""
        return int(self.record["model"]["max_target_positions"]) - 1

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of what a deployment needs: weights, vocabularies, configuration, SentencePiece model."""
        return int(self.record["size_bytes"]["total"])

    @property
    def parameters(self) -> int:
        return int(self.record["model"]["parameters"])

    def check_checkpoint(self, checkpoint: Path, sha256: str) -> None:
        """Refuse an export made from another checkpoint than ``checkpoint``, naming both."""
        if sha256 != self.checkpoint_sha256:
            raise ExportMismatchError(
                f"{self.root} was exported from {self.record['checkpoint']['path']} (sha256 "
                f"{self.checkpoint_sha256[:12]}), not from {checkpoint} (sha256 {sha256[:12]}): export this "
                f"checkpoint with lskd-export, or give the export that matches it")

    def check_vocabulary(self, data: PreparedData) -> None:
        """Refuse to translate ``data`` with an export whose dictionaries are not the data's, naming both."""
        for lang, recorded in self.record["dictionaries"].items():
            ours = data.dictionary(lang)
            sha = sha256_file(ours) if ours.is_file() else "missing"
            if sha != recorded["sha256"]:
                raise ExportMismatchError(
                    f"{self.root} was exported with the vocabulary {recorded['path']} (sha256 "
                    f"{recorded['sha256'][:12]}), but the data's is {ours} (sha256 {sha[:12]}): "
                    f"export the model with --data {data.root}")


def load_export(root: str | Path) -> ExportedModel:
    """Read ``root/export.json``; a directory without one is an :class:`EngineError` saying how to make it."""
    root = Path(root)
    path = root / EXPORT_JSON
    if not path.is_file():
        raise EngineError(f"{root} has no {EXPORT_JSON}: make a CTranslate2 model with lskd-export")
    return ExportedModel(root, read_json(path, required=EXPORT_RECORD_KEYS))


def directory_bytes(root: Path) -> int:
    """Bytes of the files directly in ``root`` (an export is flat)."""
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


class CTranslate2Engine:
    """:class:`lskd.decoding.TranslationEngine` over an exported model and the source pieces of a split.

    ``sources[i]``: the pieces of sentence ``i``. ``compute_type``: CTranslate2's weight type at
    load (``None``: as exported; another type converts the weights on load). Sentences are sorted by
    length and batched (:func:`lskd.decoding.length_batches`), each batch with its own length limit,
    as fairseq's batches.

    ``threads`` on CPU: that many batches are translated side by side, one core each (CTranslate2's
    ``inter_threads``; ``intra_threads`` 1), because splitting one batch's small matrices over cores
    does not pay: on the quickstart's teacher, 2 cores gave 107 sentences/s as two parallel batches
    and 47 as one batch on two threads, against 51 on one core (int8, beam 5, John, batches of 64;
    ``benchmarks/decode_engines.py`` shows the resulting ratios).
    A single sentence thus runs on one core. On a GPU, ``threads`` is ``intra_threads`` (host work).
    """

    def __init__(self, model: ExportedModel, sources: Sequence[Sequence[str]], options: DecodingOptions,
                 device: str = "cpu", threads: int = 1, compute_type: str | None = None,
                 max_source_tokens: int | None = None):
        import ctranslate2

        self.model, self.sources, self.options, self.device, self.threads = model, sources, options, device, threads
        self.compute_type = compute_type
        self.parallel_batches = threads if device == "cpu" else 1
        self.translator = ctranslate2.Translator(str(model.root), device=device, compute_type=compute_type or "default",
                                                 inter_threads=self.parallel_batches,
                                                 intra_threads=threads // self.parallel_batches)
        self.lengths = [len(pieces) + 1 for pieces in sources]  # + </s>, which CTranslate2 appends as fairseq does
        accepted = model.max_source_tokens
        self.max_source_tokens = min(accepted, max_source_tokens or accepted)
        self.decode_seconds = 0.0

    @classmethod
    def on_split(cls, model: ExportedModel, data: PreparedData, split: str, options: DecodingOptions,
                 **settings: Any) -> "CTranslate2Engine":
        """The engine over ``split`` of a prepared directory (its ``spm/SPLIT.SRC`` pieces), after
        checking that the model was exported for this data's vocabulary."""
        from lskd.corpus import read_lines

        model.check_vocabulary(data)
        sources = [line.split() for line in read_lines(data.pieces(split, data.src))]
        if len(sources) != data.sentences(split):
            raise EngineError(f"{data.pieces(split, data.src)} has {len(sources)} lines but {split} holds "
                              f"{data.sentences(split)} binarized sentences: the prepared directory is inconsistent")
        return cls(model, sources, options, **settings)

    def source_tokens(self, sentence_id: int) -> int:
        return self.lengths[sentence_id]

    @property
    def name(self) -> str:
        return f"ctranslate2-{self.compute_type or self.model.quantization}"

    def translate(self, ids: Sequence[int], progress: Progress | None = None) -> dict[int, list[Hypothesis]]:
        options = self.options
        batches = length_batches(ids, self.lengths, options.batch_size, options.max_batch_tokens)
        began = time.perf_counter()
        # Every batch is queued at once; CTranslate2 translates `inter_threads` of them side by side.
        pending = [self.translator.translate_batch(
            [self.sources[i] for i in batch], beam_size=options.beam, num_hypotheses=options.nbest,
            length_penalty=options.lenpen, min_decoding_length=1, return_scores=True, max_input_length=0,
            max_decoding_length=min(max_target_tokens(options, max(self.lengths[i] for i in batch)),
                                    self.model.max_target_tokens), asynchronous=True) for batch in batches]
        results: dict[int, list[Hypothesis]] = {}
        for batch, outputs in zip(batches, pending):
            for i, output in zip(batch, outputs):
                output = output.result()
                results[i] = [Hypothesis(" ".join(tokens), float(score))
                              for tokens, score in zip(output.hypotheses, output.scores)]
            if progress:
                progress(len(batch))
        self.decode_seconds += time.perf_counter() - began
        return results

    def describe(self) -> dict[str, Any]:
        import ctranslate2

        return {"engine": "ctranslate2", "name": self.name, "quantization": self.compute_type or self.model.quantization,
                "export_quantization": self.model.quantization, "compute_type": self.translator.compute_type, "device": self.device, "threads": self.threads,
                "parallel_batches": self.parallel_batches,
                "model": str(self.model.root.resolve()), "checkpoint_sha256": self.model.checkpoint_sha256,
                "ctranslate2": ctranslate2.__version__}
