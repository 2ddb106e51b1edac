"""sacreBLEU's BLEU, chrF and TER for a target language, tokenized as sacrebleu's command line does.

BLEU counts word n-grams, so its tokenizer must suit the target: ``sacrebleu -l SRC-TGT`` uses
``zh`` for Chinese, ``ja-mecab`` for Japanese, ``ko-mecab`` for Korean and ``13a`` otherwise
(:func:`bleu_tokenizer`; the signature records it as ``tok:``).
With ``13a`` a Chinese sentence, written without spaces, is one "word", and a hypothesis that
differs from its reference in one character scores 0. chrF and TER keep sacrebleu's defaults, as
the command line does.
"""
from __future__ import annotations

import re

import sacrebleu
from sacrebleu.metrics.base import Metric

from lskd.errors import LSKDError

#: The names ``--tokenize`` accepts (sacrebleu's BLEU tokenizers).
TOKENIZERS: tuple[str, ...] = tuple(sacrebleu.BLEU.TOKENIZERS)
#: The BLEU tokenizer of a target language for which sacrebleu's command line has one, and otherwise.
LANGUAGE_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
DEFAULT_TOKENIZER = "13a"


class ScoringError(LSKDError):
    """A BLEU tokenizer that cannot run here (a missing optional package) or that does not exist."""


def language_code(lang: str | None) -> str:
    """The primary language subtag that sacrebleu's tokenizer choice keys on: ``zh-CN``, ``zh_TW`` -> ``zh``."""
    return re.split(r"[-_]", lang.strip().lower())[0] if lang else ""


def bleu_tokenizer(tgt_lang: str | None, tokenize: str | None = None) -> str:
    """The BLEU tokenizer's name: ``tokenize`` if given, else sacrebleu's command line's choice for the
    target language (``zh``, ``ja-mecab``, ``ko-mecab``, else ``13a``)."""
    if tokenize is not None and tokenize not in TOKENIZERS:
        raise ScoringError(f"unknown BLEU tokenizer {tokenize!r}; sacrebleu has {', '.join(TOKENIZERS)}")
    return tokenize or LANGUAGE_TOKENIZERS.get(language_code(tgt_lang), DEFAULT_TOKENIZER)


def bleu_metric(tgt_lang: str | None = None, tokenize: str | None = None, sentence: bool = False) -> sacrebleu.BLEU:
    """sacrebleu's BLEU with :func:`bleu_tokenizer`'s tokenizer.

    ``sentence``: sentence-level BLEU as :func:`sacrebleu.sentence_bleu` computes it (effective order).
    Raises :class:`ScoringError` naming the package to install when the tokenizer needs one
    (``ja-mecab``: ``sacrebleu[ja]``, ``ko-mecab``: ``sacrebleu[ko]``), and for an unknown name.
    """
    name = bleu_tokenizer(tgt_lang, tokenize)
    try:
        return sacrebleu.BLEU(tokenize=name, trg_lang=language_code(tgt_lang), effective_order=sentence)
    except RuntimeError as err:  # sacrebleu's mecab tokenizers without their packages
        install = next((line.strip() for line in str(err).splitlines() if "pip install" in line), str(err).strip())
        raise ScoringError(f"sacrebleu's BLEU tokenizer {name} (for target language {tgt_lang or '?'}) needs packages "
                           f"that are not installed: {install}; install them, or choose another tokenizer with "
                           f"--tokenize (e.g. char)") from err


def corpus_metrics(tgt_lang: str | None = None, tokenize: str | None = None) -> dict[str, Metric]:
    """``{"bleu", "chrf", "ter"}``: the corpus metrics of every LSKD record, BLEU tokenized for ``tgt_lang``."""
    return {"bleu": bleu_metric(tgt_lang, tokenize), "chrf": sacrebleu.CHRF(), "ter": sacrebleu.TER()}
