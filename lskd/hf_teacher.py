"""Sequence-level KD from a Hugging Face or CTranslate2 teacher: raw source text in, the student's pieces out.

Such a teacher has its own vocabulary and tokenizer (OPUS-MT's SentencePiece models, M2M-100's,
NLLB's), not the student's. :class:`TeacherEngine` therefore translates the *raw* source lines of
a split with the teacher's own tokenizer, detokenises each hypothesis, normalises it (NFC, one
space between words) and encodes it with the *student's* SentencePiece model, so the distilled
corpus is in the student's vocabulary. It is a :class:`lskd.decoding.TranslationEngine`, so
``data_prep.distill.run_chunks`` drives it as it drives the fairseq and CTranslate2 engines: by
sentence id, too-long sources left to the caller (:func:`lskd.decoding.is_too_long`).

Two backends run the search:

* ``ctranslate2`` (the default): a CTranslate2 directory as given, or a Hugging Face directory
  converted once by CTranslate2's own converter into a cache (:func:`converted_model`);
* ``transformers``: ``model.generate``, the reference.

Both take :class:`lskd.decoding.DecodingOptions` with fairseq's meaning: at most ``int(a * S + b)``
tokens before ``</s>``, S the batch's longest source in the teacher's tokens (``</s>`` and a
language token included), and never more than the teacher's own positions allow. Multilingual
teachers (M2M-100, NLLB, mBART-50) need the source and target language in their own codes (``de``,
``deu_Latn``): the source gets the language prefix and the target starts with the forced language
token (CTranslate2: ``target_prefix``; generate: ``forced_bos_token_id``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from lskd.corpus import has_visible_text, read_lines
from lskd.decoding import (DecodingOptions, EngineError, EngineSettings, Hypothesis, Progress, length_batches,
                           max_target_tokens)
from lskd.errors import name_ids
from lskd.output_files import certify, default_cache_dir, verify_files, writer_lock
from lskd.prepared import PreparedData
from lskd.provenance import read_json, write_json
from lskd.teacher_spec import TeacherSpec, TeacherSpecError, require_transformers

BACKENDS = ("ctranslate2", "transformers")
#: the record certifying a conversion in the cache (written last)
CONVERSION_JSON = "conversion.json"
#: CTranslate2 truncates longer inputs by default (``max_input_length``): the limit of a CTranslate2
#: directory, whose own maximum length no file beside it records
CTRANSLATE2_MAX_INPUT = 1024
#: NLLB's language codes (``deu_Latn``), which are its language tokens
_NLLB_CODE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")
#: M2M-100's language tokens in a CTranslate2 vocabulary (``__de__``)
_M2M_TOKEN = re.compile(r"__([a-z]{2,3})__")

logger = logging.getLogger(__name__)


def normalise_text(text: str) -> str:
    """NFC, and runs of whitespace as one space, without space at the ends: how a teacher's detokenised
    output is made comparable to prepared text before the student's SentencePiece model encodes it."""
    return " ".join(unicodedata.normalize("NFC", text).split())


class TeacherTokenizer(Protocol):
    """The teacher's own tokenizer, set up for one language pair."""

    #: tokens the target must start with (the forced language token), empty for a bilingual model
    target_prefix: list[str]

    def source_tokens(self, text: str) -> list[str]:
        """The tokens the model reads for ``text``: language prefix, pieces and ``</s>``."""

    def detokenize(self, tokens: Sequence[str]) -> str:
        """Text of a hypothesis's tokens (target prefix removed), special tokens left out."""


@dataclass(frozen=True)
class Languages:
    """``src``, ``tgt``: the model's own language codes (``de``, ``deu_Latn``), None for a bilingual model."""

    src: str | None = None
    tgt: str | None = None


def check_languages(known: dict[str, str], languages: Languages, teacher: Path) -> None:
    """A multilingual teacher (``known``: its codes -> language tokens) needs both codes, each one it
    knows; a bilingual one (no ``known``) takes none. Anything else is an :class:`EngineError` that
    lists a few of its codes."""
    given = [code for code in (languages.src, languages.tgt) if code is not None]
    if not known:
        if given:
            raise EngineError(f"{teacher} is not a multilingual model: it takes no language codes "
                              f"(given {', '.join(given)})")
        return
    examples = ", ".join(sorted(known)[:8]) + (f" and {len(known) - 8} more" if len(known) > 8 else "")
    if languages.src is None or languages.tgt is None:
        raise EngineError(f"{teacher} is multilingual: give its source and target language codes "
                          f"(--teacher-src-lang, --teacher-tgt-lang), e.g. {examples}")
    unknown = [code for code in (languages.src, languages.tgt) if code not in known]
    if unknown:
        raise EngineError(f"{teacher} does not know the language code(s) {', '.join(unknown)}; its codes "
                          f"include {examples}")


def hf_language_tokens(tokenizer: Any) -> dict[str, str]:
    """A Hugging Face tokenizer's language codes and their tokens: M2M-100 (``de`` -> ``__de__``),
    mBART-50 and NLLB (the code is the token); empty for a bilingual tokenizer."""
    codes = getattr(tokenizer, "lang_code_to_id", None)
    if codes and hasattr(tokenizer, "get_lang_token"):
        return {code: tokenizer.get_lang_token(code) for code in codes}
    if codes:
        return {code: code for code in codes}
    specials = getattr(tokenizer, "additional_special_tokens", None) or getattr(tokenizer, "extra_special_tokens", None)
    return {token: token for token in (specials or []) if isinstance(token, str) and _NLLB_CODE.fullmatch(token)}


class HuggingFaceTokenizer:
    """The tokenizer files of a Hugging Face model (``AutoTokenizer``), for one language pair."""

    def __init__(self, directory: Path, languages: Languages):
        require_transformers()
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.languages = hf_language_tokens(self.tokenizer)
        check_languages(self.languages, languages, directory)
        if languages.src is not None:
            self.tokenizer.src_lang = languages.src  # sets the source prefix (M2M-100, NLLB, mBART-50)
        self.target_prefix = [self.languages[languages.tgt]] if languages.tgt is not None else []

    def source_tokens(self, text: str) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer(text)["input_ids"])

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids(list(tokens))

    def detokenize(self, tokens: Sequence[str]) -> str:
        return self.tokenizer.decode(self.ids(tokens), skip_special_tokens=True)


class SentencePieceTokenizer:
    """The SentencePiece model(s) beside a CTranslate2 model: ``source.spm`` and ``target.spm``
    (OPUS-MT), or one model for both sides; ``</s>`` ends the source, as Marian's tokenizer does.
    Language tokens, where the vocabulary holds them (``__de__``, ``deu_Latn``), prefix the source."""

    def __init__(self, spec: TeacherSpec, languages: Languages):
        import sentencepiece as spm

        files = spec.files["tokenizer"]
        source, target = ("source.spm", "target.spm") if "source.spm" in files else \
            (next(f for f in files if f.endswith(".model")),) * 2
        self.source = spm.SentencePieceProcessor(model_file=str(spec.path / source))
        self.target = spm.SentencePieceProcessor(model_file=str(spec.path / target))
        self.languages = ctranslate2_language_tokens(spec.path)
        check_languages(self.languages, languages, spec.path)
        self.source_prefix = [self.languages[languages.src]] if languages.src is not None else []
        self.target_prefix = [self.languages[languages.tgt]] if languages.tgt is not None else []

    def source_tokens(self, text: str) -> list[str]:
        return self.source_prefix + self.source.encode(text, out_type=str) + ["</s>"]

    def detokenize(self, tokens: Sequence[str]) -> str:
        return self.target.decode([t for t in tokens if t not in ("</s>", "<s>", "<pad>", "<unk>")])


def ctranslate2_vocabulary(directory: Path) -> list[str]:
    """The target vocabulary of a CTranslate2 model directory (JSON list, or one token a line)."""
    for name in ("shared_vocabulary", "target_vocabulary"):
        if (directory / f"{name}.json").is_file():
            return json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
        if (directory / f"{name}.txt").is_file():
            return read_lines(directory / f"{name}.txt")
    return []


def ctranslate2_language_tokens(directory: Path) -> dict[str, str]:
    """Language codes of a CTranslate2 model from its vocabulary: M2M-100's ``__de__`` (code ``de``)
    and NLLB's ``deu_Latn``; empty for a bilingual model."""
    tokens: dict[str, str] = {}
    for token in ctranslate2_vocabulary(directory):
        match = _M2M_TOKEN.fullmatch(token)
        if match:
            tokens[match.group(1)] = token
        elif _NLLB_CODE.fullmatch(token):
            tokens[token] = token
    return tokens


def open_tokenizer(spec: TeacherSpec, languages: Languages) -> TeacherTokenizer:
    """The teacher's own tokenizer: its Hugging Face tokenizer files where it has them, else its
    SentencePiece model(s) (a CTranslate2 directory)."""
    files = spec.files["tokenizer"]
    if spec.kind == "huggingface" or "tokenizer_config.json" in files or "tokenizer.json" in files:
        return HuggingFaceTokenizer(spec.path, languages)
    return SentencePieceTokenizer(spec, languages)


def teacher_identity(spec: TeacherSpec) -> str:
    """sha256 over the teacher's configuration, tokenizer and weight files (their recorded hashes, in
    order): what a conversion depends on, and so the key of its cache entry."""
    return hashlib.sha256(json.dumps(spec.describe()["files"], sort_keys=True).encode()).hexdigest()


def converted_model(spec: TeacherSpec, quantization: str, cache: Path) -> Path:
    """The CTranslate2 conversion of the Hugging Face teacher ``spec`` with weights ``quantization``,
    kept in ``cache`` under the teacher's :func:`teacher_identity` and the quantization: converted on
    first use by CTranslate2's converter (beside its final place, then renamed into it, under a lock
    on the cache so two processes never convert the same model at once), reused while the teacher's
    files are the same, and checked against its ``conversion.json`` on every use."""
    identity = teacher_identity(spec)
    out = cache / f"{identity[:16]}-{quantization}"
    with writer_lock(cache, name=f".{out.name}.lock", wait=True):
        if not (out / CONVERSION_JSON).is_file():
            _convert(spec, quantization, identity, out)
        record = read_json(out / CONVERSION_JSON, required=("files", "teacher_identity"),
                           advice=f"delete {out} to convert the teacher again")
        verify_files(out, record["files"], CONVERSION_JSON, advice=f"delete {out} to convert the teacher again")
    return out


def _convert(spec: TeacherSpec, quantization: str, identity: str, out: Path) -> None:
    require_transformers()
    import ctranslate2

    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("converting %s to CTranslate2 (%s) into %s", spec.path, quantization, out)
    try:
        ctranslate2.converters.TransformersConverter(str(spec.path)).convert(str(partial), quantization=quantization,
                                                                              force=True)
    except (ValueError, NotImplementedError, KeyError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise TeacherSpecError(f"CTranslate2 {ctranslate2.__version__} cannot convert {spec.path} "
                               f"({spec.architecture}): {error}; translate with the transformers engine") from error
    files = certify(partial, [p.name for p in partial.iterdir() if p.is_file()])
    write_json(partial / CONVERSION_JSON, {"teacher": spec.describe(), "teacher_identity": identity,
                                           "quantization": quantization, "ctranslate2": ctranslate2.__version__,
                                           "files": files})
    shutil.rmtree(out, ignore_errors=True)  # a conversion without its record: left by a killed run
    os.replace(partial, out)


def hf_max_positions(config: dict[str, Any]) -> int | None:
    """The positions a Hugging Face translation model has (``max_position_embeddings``, or T5's
    ``n_positions``); None when its config records none."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


class Backend(Protocol):
    """The search of one engine on batches of the teacher's tokens."""

    name: str

    def search(self, sources: list[list[str]], prefix: list[str], options: DecodingOptions,
               max_tokens: int) -> list[list[tuple[list[str], float, int]]]:
        """Per source, the n-best as (tokens after ``prefix``, score, length the score was normalised by)."""


class CTranslate2Backend:
    """``ctranslate2.Translator`` on a model directory, loaded with ``compute_type`` (None: as stored,
    ``quantization``); on CPU ``threads`` batches side by side, one core each
    (:class:`lskd.ctranslate2_engine.CTranslate2Engine` says why)."""

    def __init__(self, model: Path, quantization: str, compute_type: str | None, device: str, threads: int):
        import ctranslate2

        self.model, self.device, self.threads = model, device, threads
        parallel = threads if device == "cpu" else 1
        self.translator = ctranslate2.Translator(str(model), device=device, compute_type=compute_type or "default",
                                                 inter_threads=parallel, intra_threads=threads // parallel)
        self.name = f"ctranslate2-{compute_type or quantization}"

    def search(self, sources: list[list[str]], prefix: list[str], options: DecodingOptions,
               max_tokens: int) -> list[list[tuple[list[str], float, int]]]:
        # CTranslate2 counts the target prefix in max_decoding_length, and stops at it without </s>
        outputs = self.translator.translate_batch(
            sources, target_prefix=[prefix] * len(sources) if prefix else None, beam_size=options.beam,
            num_hypotheses=options.nbest, length_penalty=options.lenpen, return_scores=True, max_input_length=0,
            max_decoding_length=max_tokens + len(prefix))
        return [[(tokens[len(prefix):], float(score), len(tokens) + 1)
                 for tokens, score in zip(output.hypotheses, output.scores)] for output in outputs]


class TransformersBackend:
    """``model.generate`` with the same beam, length penalty, n-best and length limit: the reference.
    Runs on torch's threads, which the command sets (a library never changes them)."""

    def __init__(self, directory: Path, tokenizer: HuggingFaceTokenizer, device: str):
        require_transformers()
        from transformers import AutoModelForSeq2SeqLM

        self.model = AutoModelForSeq2SeqLM.from_pretrained(str(directory)).to(device).eval()
        self.tokenizer, self.device, self.name = tokenizer, device, "transformers"
        self.pad = self.model.config.pad_token_id

    def search(self, sources: list[list[str]], prefix: list[str], options: DecodingOptions,
               max_tokens: int) -> list[list[tuple[list[str], float, int]]]:
        import torch

        ids = [self.tokenizer.ids(tokens) for tokens in sources]
        longest = max(len(row) for row in ids)
        input_ids = torch.tensor([row + [self.pad] * (longest - len(row)) for row in ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], device=self.device)
        forced = {"forced_bos_token_id": self.tokenizer.ids(prefix)[0]} if prefix else {}
        with torch.no_grad():
            output = self.model.generate(input_ids=input_ids, attention_mask=mask, num_beams=options.beam,
                                         num_return_sequences=options.nbest, length_penalty=options.lenpen,
                                         max_new_tokens=max_tokens + len(prefix) + 1, do_sample=False,
                                         early_stopping=True,  # done at `beam` finished hypotheses, as fairseq
                                         output_scores=True, return_dict_in_generate=True, **forced)
        hypotheses = []
        for row, score in zip(output.sequences.tolist(), self._scores(output, options.lenpen)):
            generated = [t for t in row[1:] if t != self.pad]  # after the decoder start token
            tokens = self.tokenizer.tokenizer.convert_ids_to_tokens(generated)
            hypotheses.append((tokens[len(prefix):], score, len(generated)))
        return [hypotheses[i * options.nbest:(i + 1) * options.nbest] for i in range(len(sources))]


    def _scores(self, output: Any, lenpen: float) -> list[float]:
        """generate's length-normalised scores; greedy search (beam 1) returns none: summed here from
        its per-step log-probabilities over the generated tokens (padding left out)."""
        if getattr(output, "sequences_scores", None) is not None:
            return [float(s) for s in output.sequences_scores.tolist()]
        steps = self.model.compute_transition_scores(output.sequences, output.scores, normalize_logits=True)
        generated = output.sequences[:, 1:] != self.pad
        totals = steps.masked_fill(~generated, 0).sum(-1)
        return [float(t) / max(int(n), 1) ** lenpen for t, n in zip(totals, generated.sum(-1))]


class TeacherEngine:
    """:class:`lskd.decoding.TranslationEngine` over raw source lines with a Hugging Face or CTranslate2 teacher.

    ``sources[i]``: the raw text of sentence ``i``. ``student_spm``: the student's SentencePiece model
    (the prepared data's ``spm.model``): every hypothesis is detokenised by the teacher,
    ``normalise``-d (default :func:`normalise_text`) and encoded with it. A source without visible
    text gets one empty hypothesis (score 0) without a search. ``max_source_tokens``: the longest source
    in the teacher's tokens it translates, the teacher's own positions unless given lower.
    Scores: the total log-probability normalised as fairseq's would be over the student's pieces and
    ``</s>``, so ``lskd.distilled_data.score_per_token`` gives the log-probability per student token.
    """

    def __init__(self, spec: TeacherSpec, tokenizer: TeacherTokenizer, backend: Backend, sources: Sequence[str],
                 student_spm: Path, options: DecodingOptions, max_positions: int | None,
                 max_source_tokens: int | None = None, normalise: Callable[[str], str] = normalise_text):
        import sentencepiece as spm

        self.spec, self.tokenizer, self.backend, self.options = spec, tokenizer, backend, options
        self.sources, self.normalise = sources, normalise
        self.student = spm.SentencePieceProcessor(model_file=str(student_spm))
        self.student_spm = student_spm
        self.tokens = [tokenizer.source_tokens(text) for text in sources]
        self.lengths = [len(tokens) for tokens in self.tokens]
        accepted = max_positions or CTRANSLATE2_MAX_INPUT
        self.max_source_tokens = min(accepted, max_source_tokens or accepted)
        # the decoder's positions hold its start token, the language token, the hypothesis and </s>
        self.max_target_tokens = accepted - 2 - len(tokenizer.target_prefix)
        self.decode_seconds = 0.0

    @property
    def name(self) -> str:
        return self.backend.name

    def source_tokens(self, sentence_id: int) -> int:
        return self.lengths[sentence_id]

    def translate(self, ids: Sequence[int], progress: Progress | None = None) -> dict[int, list[Hypothesis]]:
        return {i: [self._student_hypothesis(*h) for h in nbest]
                for i, nbest in self.translate_text(ids, progress).items()}

    def translate_text(self, ids: Sequence[int], progress: Progress | None = None
                       ) -> dict[int, list[tuple[str, float, int]]]:
        """``{id: n-best}`` as (the teacher's detokenised, ``normalise``-d text, its score, the length the
        score was normalised by): what :meth:`translate` encodes with the student's model, and what a
        teacher's BLEU scores. A source without visible text gets ``("", 0.0, 1)`` without a search."""
        too_long = [i for i in ids if self.lengths[i] > self.max_source_tokens]
        if too_long:
            raise EngineError(f"sentences longer than the teacher accepts ({self.max_source_tokens} tokens) were "
                              f"given to translate: ids {name_ids(too_long)}")
        results = {i: [("", 0.0, 1)] for i in ids if not has_visible_text(self.sources[i])}
        todo = [i for i in ids if i not in results]
        began = time.perf_counter()
        for batch in length_batches(todo, self.lengths, self.options.batch_size, self.options.max_batch_tokens):
            limit = min(max_target_tokens(self.options, max(self.lengths[i] for i in batch)), self.max_target_tokens)
            nbest = self.backend.search([self.tokens[i] for i in batch], self.tokenizer.target_prefix, self.options,
                                        limit)
            for i, hypotheses in zip(batch, nbest):
                results[i] = [(self.normalise(self.tokenizer.detokenize(tokens)), score, length)
                              for tokens, score, length in hypotheses]
            if progress:
                progress(len(batch))
        self.decode_seconds += time.perf_counter() - began
        if progress and len(results) > len(todo):
            progress(len(results) - len(todo))
        return results

    def _student_hypothesis(self, text: str, score: float, length: int) -> Hypothesis:
        """The teacher's hypothesis as the student's pieces, its score renormalised over them."""
        pieces = self.student.encode(text, out_type=str)
        lenpen = self.options.lenpen
        total = score * max(length, 1) ** lenpen
        return Hypothesis(" ".join(pieces), total / (len(pieces) + 1) ** lenpen)

    def describe(self) -> dict[str, Any]:
        """Engine, teacher (kind, architecture, files' sha256), languages and the student's SentencePiece model."""
        record = {"engine": "transformers" if self.backend.name == "transformers" else "ctranslate2",
                  "name": self.name, "teacher": self.spec.describe(),
                  "target_prefix": self.tokenizer.target_prefix, "student_spm": str(Path(self.student_spm).resolve()),
                  "max_source_tokens": self.max_source_tokens}
        if isinstance(self.backend, CTranslate2Backend):
            import ctranslate2

            record |= {"model": str(self.backend.model.resolve()), "device": self.backend.device,
                       "threads": self.backend.threads, "compute_type": self.backend.translator.compute_type,
                       "ctranslate2": ctranslate2.__version__}
        else:
            import transformers

            record |= {"device": self.backend.device, "transformers": transformers.__version__}
        return record


def open_teacher_engine(spec: TeacherSpec, sources: Sequence[str], student_spm: Path, options: DecodingOptions, *,
                        backend: str = "ctranslate2", languages: Languages = Languages(),
                        quantization: str | None = None, cache: Path | None = None, device: str = "cpu",
                        threads: int = 1, max_source_tokens: int | None = None,
                        normalise: Callable[[str], str] = normalise_text) -> TeacherEngine:
    """A :class:`TeacherEngine` for a Hugging Face or CTranslate2 teacher ``spec`` on ``sources``.

    ``backend``: ``ctranslate2`` (a Hugging Face teacher is converted into ``cache``, default
    :func:`default_conversion_cache`, with ``quantization``, default float32; a CTranslate2 directory
    is used as it is, loaded with ``quantization`` if given) or ``transformers`` (a Hugging Face
    directory only). Errors: a fairseq teacher, an unknown backend (:func:`check_engine`), language
    codes missing or unknown (:func:`check_languages`), a teacher CTranslate2 cannot convert,
    ``transformers`` not installed (names the extra)."""
    if spec.kind == "fairseq":
        raise EngineError(f"{spec.path} is a fairseq teacher: translate it with the fairseq or ctranslate2 engine")
    if backend not in BACKENDS:
        raise EngineError(f"unknown teacher engine {backend!r}: choose one of {', '.join(BACKENDS)}")
    check_engine(spec, EngineSettings(engine=backend))
    tokenizer = open_tokenizer(spec, languages)
    max_positions = hf_max_positions(spec.config) if spec.kind == "huggingface" else None
    if backend == "transformers":
        runner: Backend = TransformersBackend(spec.path, tokenizer, device)
    else:
        if spec.kind == "huggingface":
            model = converted_model(spec, quantization or "float32", cache or default_conversion_cache())
            runner = CTranslate2Backend(model, quantization or "float32", None, device, threads)
        else:
            runner = CTranslate2Backend(spec.path, "as-stored", quantization, device, threads)
    return TeacherEngine(spec, tokenizer, runner, sources, student_spm, options, max_positions, max_source_tokens,
                         normalise)


def default_conversion_cache() -> Path:
    """Where Hugging Face teachers converted for CTranslate2 are kept: ``ctranslate2/`` in LSKD's cache."""
    return default_cache_dir() / "ctranslate2"


def default_engine(spec: TeacherSpec) -> str:
    """The engine a teacher decodes with when none is named: fairseq for a fairseq checkpoint, else CTranslate2."""
    return "fairseq" if spec.kind == "fairseq" else "ctranslate2"


def check_engine(spec: TeacherSpec, settings: EngineSettings) -> None:
    """Refuse an engine that cannot run ``spec``: fairseq or an ``lskd-export`` (``--ctranslate2-model``)
    for a Hugging Face or CTranslate2 teacher, transformers for anything but a Hugging Face directory."""
    if spec.kind == "fairseq":
        if settings.engine == "transformers":
            raise EngineError(f"--engine transformers runs Hugging Face teachers; {spec.path} is a fairseq checkpoint "
                              f"(use --engine fairseq or ctranslate2)")
        return
    if settings.engine == "fairseq":
        raise EngineError(f"--engine fairseq runs fairseq checkpoints; {spec.path} is a {spec.kind} teacher "
                          f"({spec.architecture}): use --engine ctranslate2 or transformers")
    if settings.ctranslate2_model is not None:
        raise EngineError(f"--ctranslate2-model is an lskd-export of a fairseq checkpoint; {spec.path} is a "
                          f"{spec.kind} teacher, converted or read by LSKD itself: leave the flag out")
    if settings.engine == "transformers" and spec.kind != "huggingface":
        raise EngineError(f"{spec.path} is a CTranslate2 model: the transformers engine needs a Hugging Face "
                          f"model directory")


def teacher_engine_on_split(spec: TeacherSpec, data: PreparedData, split: str, options: DecodingOptions,
                            **settings: Any) -> TeacherEngine:
    """:func:`open_teacher_engine` on the raw source lines of ``split`` of a prepared directory (its
    ``raw/SPLIT.SRC``, one line per binarized sentence), with the data's SentencePiece model as the student's."""
    sources = read_lines(data.raw(split, data.src))
    if len(sources) != data.sentences(split):
        raise EngineError(f"{data.raw(split, data.src)} has {len(sources)} lines but {split} holds "
                          f"{data.sentences(split)} binarized sentences: the prepared directory is inconsistent")
    return open_teacher_engine(spec, sources, data.spm_model, options, **settings)
