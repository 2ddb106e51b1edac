"""Translating the sentences of a split with a decoding engine: one interface, three engines.

``lskd-eval bleu``, ``lskd-eval speed`` and ``lskd-distill-corpus`` translate sentence ids of one
split of a ``lskd-prepare`` directory through a :class:`TranslationEngine`. Two engines implement
it: fairseq's beam search in-process (``fairseq_plugins.decoding.FairseqEngine``, what
``fairseq-generate`` runs) and CTranslate2 on an exported model
(:class:`lskd.ctranslate2_engine.CTranslate2Engine`); a Hugging Face or CTranslate2 teacher
translates raw text with CTranslate2 or ``transformers`` (:class:`lskd.hf_teacher.TeacherEngine`).
All take the same :class:`DecodingOptions` with fairseq's meaning (beam, length penalty, maximum
length ``a * source length + b``) and return SentencePiece pieces, so that callers never see which
engine ran.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from lskd.errors import LSKDError

ENGINES = ("fairseq", "ctranslate2", "transformers")
#: the engines that run in torch (its threads, its CUDA)
TORCH_ENGINES = ("fairseq", "transformers")
#: CTranslate2 weight types an export or a load can use (``ctranslate2.converters`` ``quantization``).
QUANTIZATIONS = ("int8", "int8_float32", "float32", "float16", "bfloat16")


class EngineError(LSKDError, ValueError):
    """An engine that cannot decode with these models or settings; the message says why."""


def refuse_ensemble(checkpoint: str | Path, what: str = "--engine ctranslate2") -> None:
    """CTranslate2 runs one model: an ensemble (``a.pt:b.pt``, fairseq's convention) is an :class:`EngineError`."""
    if ":" in str(checkpoint):
        raise EngineError(f"{what} with the ensemble {checkpoint}: CTranslate2 runs one model; "
                          f"the fairseq engine (--engine fairseq) averages ensembles")


@dataclass(frozen=True)
class DecodingOptions:
    """How to search, with fairseq's meaning for every knob (``fairseq-generate``'s flags of the same name).

    ``max_len_a``, ``max_len_b``: at most ``int(a * S + b)`` target tokens before ``</s>``, where S
    is the longest source of the batch in tokens including ``</s>`` (fairseq's SequenceGenerator).
    ``batch_size``: sentences per batch; ``max_batch_tokens`` (optional): also at most this many
    source tokens (padding included) per batch.
    """

    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    nbest: int = 1
    batch_size: int = 64
    max_batch_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.beam < 1 or not 1 <= self.nbest <= self.beam:
            raise EngineError(f"beam {self.beam} and n-best {self.nbest}: need 1 <= n-best <= beam")
        if self.batch_size < 1:
            raise EngineError(f"--batch-size {self.batch_size} must be at least 1")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise EngineError(f"--max-batch-tokens {self.max_batch_tokens} must be at least 1")
        # the shortest source is one piece and </s> (S = 2); a limit below 1 fails inside fairseq's search
        # (an assertion) and would give CTranslate2 empty outputs
        if self.max_len_a < 0 or int(self.max_len_a * 2 + self.max_len_b) < 1:
            raise EngineError(f"--max-len-a {self.max_len_a} --max-len-b {self.max_len_b}: the length limit "
                              f"int(a * S + b) must allow a target token for every source (a >= 0, int(2a + b) >= 1)")


@dataclass(frozen=True)
class Hypothesis:
    """``pieces``: target SentencePiece pieces separated by spaces, without ``</s>``; ``score``: the
    engine's length-normalised log-probability (natural log), used only to rank an n-best list."""

    pieces: str
    score: float


@dataclass(frozen=True)
class EngineSettings:
    """Which engine decodes, on which device, with how many threads.

    ``quantization``: CTranslate2's weight type (``None``: the given export's, else float32);
    ``ctranslate2_model``: an ``lskd-export`` directory (``None``: the export kept next to the
    checkpoint, made on first use); ``threads``: 0 means :func:`default_threads`.
    """

    engine: str = "fairseq"
    device: str = "cpu"
    threads: int = 0
    quantization: str | None = None
    ctranslate2_model: Path | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise EngineError(f"unknown engine {self.engine!r}: choose one of {', '.join(ENGINES)}")
        if self.engine != "ctranslate2" and (self.quantization not in (None, "float32") or self.ctranslate2_model):
            raise EngineError("--quantization and --ctranslate2-model belong to --engine ctranslate2")
        check_threads([self.threads])

    @property
    def resolved_threads(self) -> int:
        return self.threads or default_threads()


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`EngineSettings`, the same in every command that decodes."""
    parser.add_argument("--engine", choices=ENGINES,
                        help="fairseq: beam search in fairseq (what fairseq-generate runs; ensembles); "
                             "ctranslate2: CTranslate2 on an export of the checkpoint, or on a Hugging Face teacher "
                             "converted once into LSKD's cache; transformers: a Hugging Face teacher's generate "
                             "(default: fairseq for a fairseq checkpoint, ctranslate2 for another teacher)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS,
                        help="CTranslate2 weight type (default: float32, or the --ctranslate2-model export's)")
    parser.add_argument("--ctranslate2-model", type=Path,
                        help="a directory made by lskd-export (default: export the checkpoint next to it on first use)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the decoder (default 0: OMP_NUM_THREADS, else all cores)")
    parser.add_argument("--gpu", action="store_true", help="decode on the GPU (default: CPU)")


def engine_settings(args: argparse.Namespace, default: str = "fairseq") -> EngineSettings:
    """The settings of :func:`add_engine_arguments`' flags; ``default``: the engine when ``--engine`` is not given."""
    engine = args.engine or default
    if args.gpu:
        check_cuda(engine)
    return EngineSettings(engine=engine, device="cuda" if args.gpu else "cpu", threads=args.threads,
                          quantization=args.quantization, ctranslate2_model=args.ctranslate2_model)


def check_cuda(engine: str) -> None:
    """``--gpu`` where ``engine`` (``fairseq``, ``transformers``: torch; ``ctranslate2``: its own CUDA
    build) sees no CUDA device is an :class:`EngineError` before any work, instead of torch's "not compiled with CUDA"
    assertion or CTranslate2's "CUDA failed" traceback after the model was read or exported."""
    if engine == "ctranslate2":
        import ctranslate2

        devices = ctranslate2.get_cuda_device_count()
    else:
        import torch

        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == 0:
        raise EngineError(f"--gpu: {engine} sees no CUDA device on this machine (leave out --gpu to run on the CPU)")


def set_decoder_threads(settings: EngineSettings) -> None:
    """For console scripts, before they open an engine: this process's thread settings for ``settings``.

    fairseq and transformers: torch's threads (``--threads``; 0 keeps torch's default). CTranslate2 on CPU:
    ``MKL_NUM_THREADS`` 1 when it is set higher (e.g. by a launcher for fairseq-train), because the
    engine translates ``--threads`` batches side by side, one core each, and MKL would also split
    every small product inside each (measured, quickstart teacher, int8, beam 5, 2 threads: one
    sentence 80 ms instead of 25). These are process-wide, so library code never calls this.
    """
    if settings.engine in TORCH_ENGINES:
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
    elif settings.device == "cpu" and os.environ.get("MKL_NUM_THREADS", "1") != "1":
        logging.getLogger(__name__).info("MKL_NUM_THREADS=%s -> 1: CTranslate2 gives each batch one core",
                                         os.environ["MKL_NUM_THREADS"])
        os.environ["MKL_NUM_THREADS"] = "1"


#: called with the number of sentences a batch just translated (a progress bar's ``update``)
Progress = Callable[[int], Any]


class TranslationEngine(Protocol):
    """A model opened on one split: translates sentence ids of it, best hypothesis first."""

    #: ``fairseq``, or ``ctranslate2-QUANTIZATION``: names records and output files
    name: str
    #: the longest source, in tokens with ``</s>``, it translates (longer ones are the caller's to handle)
    max_source_tokens: int
    #: seconds spent inside the search itself (comparable to ``fairseq-generate``'s own timer)
    decode_seconds: float

    def source_tokens(self, sentence_id: int) -> int:
        """Length of a source sentence in tokens, ``</s>`` included."""

    def translate(self, ids: Sequence[int], progress: Progress | None = None) -> dict[int, list[Hypothesis]]:
        """``{id: n-best list}`` for every id (none may be too long); ``progress`` is told each batch's size."""

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the engine: its name, quantization, threads, device, model."""


def is_too_long(engine: TranslationEngine, sentence_id: int) -> bool:
    return engine.source_tokens(sentence_id) > engine.max_source_tokens


def max_target_tokens(options: DecodingOptions, longest_source_tokens: int) -> int:
    """fairseq's length limit for a batch: ``int(a * S + b)`` tokens before ``</s>``."""
    return int(options.max_len_a * longest_source_tokens + options.max_len_b)


def length_batches(ids: Sequence[int], lengths: Sequence[int], batch_size: int,
                   max_tokens: int | None = None) -> list[list[int]]:
    """``ids`` in batches of similar length: sorted by length (stable), cut at ``batch_size``
    sentences or when ``max_tokens`` (padded: batch size x longest) would be exceeded."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in sorted(ids, key=lambda i: lengths[i]):
        if batch and (len(batch) == batch_size or (max_tokens and (len(batch) + 1) * lengths[i] > max_tokens)):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def pieces_to_text(pieces: str) -> str:
    """Detokenize space-separated SentencePiece pieces exactly as ``fairseq-generate --post-process
    sentencepiece`` does (``fairseq.data.data_utils.post_process``), so both engines' text matches it."""
    return pieces.replace(" ", "").replace("\u2581", " ").strip()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    return len(os.sched_getaffinity(0))


def default_threads() -> int:
    """Threads a decoder uses when none are given: ``OMP_NUM_THREADS`` (as torch does), else the
    cores this process may run on."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cores()


def check_threads(counts: Sequence[int]) -> None:
    """Refuse thread counts below 0 (0: all cores) or above the cores this process may use: more
    threads than cores only slow a decoder down, and CTranslate2 aborts the process on absurd ones."""
    cores = available_cores()
    bad = [n for n in counts if not 0 <= n <= cores]
    if bad or not counts:
        raise EngineError(f"--threads {' '.join(map(str, counts))}: give thread counts from 1 to the {cores} "
                          f"cores this process may use, or 0 for all of them")
