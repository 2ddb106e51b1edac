"""Input cleaning before the teacher sees the data: which pairs (or monolingual lines) to leave out, and why.

A teacher translating noise, and a student learning from it, waste the decoding budget and teach the
student the noise. These are the rules of the production pipelines (Mozilla's translations:
``pipeline/clean/tools/clean_parallel.py`` and its fastText language filter; OpusFilter's filters),
each counted in a record. As in Mozilla's script, a line is dropped for the **first** rule that fires,
in this order, so that every input line is kept or dropped with exactly one reason:

1. ``empty``: a side with no visible character (:func:`lskd.corpus.has_visible_text`: whitespace,
   zero-width spaces, byte-order marks): there is nothing to translate or learn;
2. ``duplicate``: the same line (every side equal, as read) as an earlier one that was not empty;
   repeats weigh a pair several times and cost decoding;
3. ``non_letters``: a side whose non-space characters are less than ``min_letter_ratio`` letters
   (Unicode categories L and M, so that CJK ideographs and Indic vowel signs count; Mozilla's script
   uses 0.5 too, with an alphabet per language): numbers, code, markup, tables;
4. ``length_ratio``: the target/source ratio of lengths in **characters** is more than
   ``max_length_ratio`` times (or less than one ``max_length_ratio``-th of) the corpus's median ratio,
   a misaligned pair. Not words: Chinese and Japanese have no spaces, a sentence is one "word". Not
   raw characters against a fixed bound (OpusFilter's ``LengthRatioFilter``): one Chinese character
   carries what three English letters do. On the Bible (31,102 verses, English against each
   language) the median character ratio is 1.04 for German, 0.82 Russian, 0.57 Arabic, 0.44 Japanese,
   0.30 Chinese: a fixed bound of 3 drops 63 % of English-Chinese verses, while 3 times the median
   drops at most 0.14 % for each of German, French, Russian, Arabic, Hindi, Japanese, Korean and
   Chinese (3 % of Bengali, whose verses there are often truncated). The median is taken over the
   lines with text on both sides, so it is robust to up to half of them being misaligned. Parallel
   data only;
5. ``language``: a side of at least ``language_min_chars`` characters that the language identifier
   (py3langid) does not assign to that side's language. Shorter sides are not judged: on a few
   characters ("Amen.", "OK") any identifier guesses. Last, because it is the slowest rule
   (about 0.3 ms a side here).

Any rule can be left out (``skip``). Cleaning is for training data and monolingual text; a test set
is never cleaned (dropping its hard sentences would flatter every score).

Why not OpusFilter, which has all of these filters: opusfilter 3.3.1 requires 19 packages (pandas,
lingua-language-detector, rapidfuzz, opustools, beautifulsoup4, subword-nmt, morfessor, graphviz,
scikit-learn, requests, a compiled Moses tokenizer, ...) for five rules of a few lines each; its
default language identifier is py3langid as here, but 3.3.1 loads it with
``LanguageIdentifier.from_pickled_model``, which py3langid 0.4 (what installs today) no longer has; and
its ``filter`` step keeps or drops without saying which rule fired first, which the record here must.
py3langid alone needs only numpy (already required) and ships its model (140 languages, 4.4 MB), so
it works offline.
"""
from __future__ import annotations

import difflib
import functools
import os
import statistics
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from lskd.corpus import has_visible_text, read_lines, read_parallel, write_lines
from lskd.errors import LSKDError
from lskd.output_files import certify, check_writable, file_record, writer_lock
from lskd.provenance import provenance, write_json

#: The rules, in the order they are checked: a dropped line is counted under the first that fires.
RULES = ("empty", "duplicate", "non_letters", "length_ratio", "language")
#: Line numbers of the first dropped lines the record lists per rule, for a look at what was dropped.
EXAMPLES = 10
RECORD_SUFFIX = ".clean.json"


class CleaningError(LSKDError, ValueError):
    """Cleaning that cannot run as asked: a knob out of range, an unknown rule or language, bad inputs."""


class UnknownLanguageError(CleaningError):
    """A language code the language identifier does not know."""


@dataclass
class CleaningOptions:
    """The knobs of the rules (a plain dataclass: it is also the ``cleaning`` section of the pipeline's
    config, :mod:`lskd.distill_config`)."""

    max_length_ratio: float = 3.0  # times the corpus's median target/source ratio in characters, either way
    min_letter_ratio: float = 0.5  # letters / non-space characters, each side
    language_min_chars: int = 20  # sides shorter than this (characters) are not judged by language
    skip: list[str] = field(default_factory=list)  # rules left out, e.g. [language]

    def check(self, where: str = "") -> None:
        """Refuse (:class:`CleaningError`, the knob's name after ``where``, e.g. ``cleaning.``) an unknown
        rule in ``skip`` (naming the nearest) or a knob that cannot work: a ratio bound below 1, a letter
        share outside [0, 1], a negative length."""
        for rule in self.skip:
            if rule not in RULES:
                close = difflib.get_close_matches(rule, RULES, n=1)
                raise CleaningError(f"{where}skip: unknown rule {rule!r} (the rules: {', '.join(RULES)})"
                                    + (f"; did you mean {close[0]!r}?" if close else ""))
        if not 1 <= self.max_length_ratio < float("inf"):
            raise CleaningError(f"{where}max_length_ratio must be a finite number >= 1, got {self.max_length_ratio}")
        if not 0 <= self.min_letter_ratio <= 1:
            raise CleaningError(f"{where}min_letter_ratio must be in [0, 1], got {self.min_letter_ratio}")
        if self.language_min_chars < 0:
            raise CleaningError(f"{where}language_min_chars must be >= 0, got {self.language_min_chars}")

    def active_rules(self, sides: int) -> list[str]:
        """The rules applied to lines of ``sides`` sides, in order (``length_ratio`` needs two)."""
        return [rule for rule in RULES if rule not in self.skip and (rule != "length_ratio" or sides == 2)]


@functools.cache
def language_identifier() -> Any:
    """py3langid's identifier over all its languages, loaded once (about 2 s). Our own instance: the
    module-level one of py3langid is shared by every caller in the process, and ``set_languages`` on
    it would change what everyone gets."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def check_languages(languages: Sequence[str]) -> None:
    """Refuse (:class:`UnknownLanguageError`) a code the identifier does not know, listing a few it does."""
    known = language_identifier().labels
    for code in languages:
        if code not in known:
            common = [c for c in ("de", "en", "fr", "es", "ru", "zh", "ja", "ar") if c in known]
            raise UnknownLanguageError(
                f"language code {code!r} is not one py3langid identifies (it knows {len(known)} ISO 639 codes, "
                f"e.g. {', '.join(common)}); give one of those, or skip the language rule "
                f"(cleaning.skip: [language]; lskd-clean --skip language)")


def letter_ratio(text: str) -> float:
    """The share of letters (Unicode L* and M*) among the non-space characters of ``text`` (1 if none)."""
    characters = [char for char in text if not char.isspace()]
    letters = sum(unicodedata.category(char)[0] in "LM" for char in characters)
    return letters / len(characters) if characters else 1.0


def length_ratio(source: str, target: str) -> float:
    """Target characters / source characters, surrounding whitespace left out (sides with text)."""
    return len(target.strip()) / len(source.strip())


def median_length_ratio(source: Sequence[str], target: Sequence[str]) -> float | None:
    """The median :func:`length_ratio` over the lines with text on both sides; None if there are none."""
    ratios = [length_ratio(s, t) for s, t in zip(source, target) if has_visible_text(s) and has_visible_text(t)]
    return statistics.median(ratios) if ratios else None


class LineJudge:
    """Says why a line (a tuple of its sides' text) is dropped, rule by rule in :data:`RULES`' order;
    remembers the lines it has seen, for ``duplicate``."""

    def __init__(self, sides: Sequence[Sequence[str]], languages: Sequence[str], options: CleaningOptions):
        self.languages, self.options = list(languages), options
        self.rules = options.active_rules(len(sides))
        self.median = median_length_ratio(*sides) if "length_ratio" in self.rules else None
        self.identifier = language_identifier() if "language" in self.rules else None
        self.seen: set[tuple[str, ...]] = set()
        self.identified_as: dict[str, Counter] = {lang: Counter() for lang in self.languages}

    def reason(self, line: tuple[str, ...]) -> str | None:
        """The first rule ``line`` breaks, or None to keep it."""
        return next((rule for rule in self.rules if getattr(self, f"_breaks_{rule}")(line)), None)

    def _breaks_empty(self, line: tuple[str, ...]) -> bool:
        return not all(has_visible_text(side) for side in line)

    def _breaks_duplicate(self, line: tuple[str, ...]) -> bool:
        if line in self.seen:
            return True
        self.seen.add(line)
        return False

    def _breaks_non_letters(self, line: tuple[str, ...]) -> bool:
        return any(letter_ratio(side) < self.options.min_letter_ratio for side in line)

    def _breaks_length_ratio(self, line: tuple[str, ...]) -> bool:
        relative = length_ratio(*line) / self.median
        return max(relative, 1 / relative) > self.options.max_length_ratio

    def _breaks_language(self, line: tuple[str, ...]) -> bool:
        wrong = False
        for side, lang in zip(line, self.languages):
            if len(side.strip()) >= self.options.language_min_chars:
                found = self.identifier.classify(side)[0]
                if found != lang:
                    self.identified_as[lang][found] += 1
                    wrong = True
        return wrong


def drop_reasons(sides: Sequence[Sequence[str]], languages: Sequence[str],
                 options: CleaningOptions) -> tuple[list[str | None], LineJudge]:
    """For each line of ``sides`` (one list of lines per side, aligned; one side for monolingual text,
    two for a parallel corpus), None to keep it or the first rule it breaks; and the judge, which holds
    the median ratio and what the identifier said of the lines in another language."""
    judge = LineJudge(sides, languages, options)
    return [judge.reason(line) for line in zip(*sides)], judge


def output_paths(out_prefix: str | os.PathLike, languages: Sequence[str]) -> tuple[list[Path], Path]:
    """``PREFIX.LANG`` for each side (as ``lskd-prepare text`` reads them) and the record ``PREFIX.clean.json``."""
    prefix = Path(out_prefix)
    return [prefix.parent / f"{prefix.name}.{lang}" for lang in languages], prefix.parent / f"{prefix.name}{RECORD_SUFFIX}"


def check_inputs(inputs: Sequence[Path], languages: Sequence[str], out_prefix: str | os.PathLike,
                 options: CleaningOptions) -> None:
    """Everything that can be checked before reading the data: one or two sides, each its own language,
    the options, the language codes (if the rule applies), inputs that exist and are not outputs."""
    if len(inputs) not in (1, 2) or len(inputs) != len(languages):
        raise CleaningError(f"give one file per language, one (monolingual) or two (parallel): "
                            f"{len(inputs)} file(s), languages {', '.join(languages) or 'none'}")
    if len(set(languages)) != len(languages):
        raise CleaningError(f"source and target are both {languages[0]!r}: the outputs PREFIX.LANG would be one file")
    options.check()
    if "language" in options.active_rules(len(inputs)):
        check_languages(languages)
    for path in inputs:
        if not path.is_file():
            raise CleaningError(f"{path}: no such file")
    outputs, _ = output_paths(out_prefix, languages)
    for path, output in zip(inputs, outputs):
        if output.resolve() == path.resolve():
            raise CleaningError(f"{output} is an input: give another output prefix")


def read_sides(inputs: Sequence[Path], name: str) -> list[list[str]]:
    """The lines of each input, strictly decoded (a bad byte names file and line); two sides must have
    the same number of lines, and none may be empty."""
    if len(inputs) == 1:
        lines = read_lines(inputs[0])
        if not lines:
            raise CleaningError(f"{inputs[0]} has no lines")
        return [lines]
    split = read_parallel(name, *inputs)
    return [split.source, split.target]


def clean_corpus(inputs: Sequence[str | os.PathLike], languages: Sequence[str], out_prefix: str | os.PathLike,
                 options: CleaningOptions) -> dict[str, Any]:
    """Clean one corpus: ``inputs`` (one file per side, aligned) in ``languages``; writes the kept lines, in
    order, to ``PREFIX.LANG`` (each written beside and renamed into place) and then the record
    ``PREFIX.clean.json`` (counts per rule, the first dropped line numbers, inputs and outputs with sizes
    and sha256, provenance); returns the record. Bad inputs are a :class:`CleaningError` (or
    :class:`lskd.corpus.CorpusError`) naming the file, before anything is written."""
    inputs = [Path(path) for path in inputs]
    check_inputs(inputs, languages, out_prefix, options)
    outputs, record_path = output_paths(out_prefix, languages)
    check_writable(record_path.parent)
    sides = read_sides(inputs, Path(out_prefix).name)
    with writer_lock(record_path.parent, name=f".{record_path.name}.lock"):
        reasons, judge = drop_reasons(sides, languages, options)
        record_path.unlink(missing_ok=True)  # a kill while the outputs are replaced leaves no record
        kept = [index for index, reason in enumerate(reasons) if reason is None]
        for side, output in zip(sides, outputs):
            temporary = output.parent / f".{output.name}.{os.getpid()}.tmp"
            write_lines(temporary, (side[index] for index in kept))
            os.replace(temporary, output)
        record = cleaning_record(inputs, languages, sides, reasons, judge, options)
        record["files"] = certify(record_path.parent, [output.name for output in outputs])
        write_json(record_path, record)
    return record


def cleaning_record(inputs: Sequence[Path], languages: Sequence[str], sides: Sequence[Sequence[str]],
                    reasons: Sequence[str | None], judge: LineJudge, options: CleaningOptions) -> dict[str, Any]:
    """What a cleaning did, without its output files: counts per rule (every line kept or dropped once),
    the first :data:`EXAMPLES` dropped line numbers (1-based) per rule, the median length ratio and, for
    ``language``, what the identifier said instead."""
    counts = Counter(reasons)
    examples: dict[str, list[int]] = {rule: [] for rule in judge.rules}
    for number, reason in enumerate(reasons, start=1):
        if reason is not None and len(examples[reason]) < EXAMPLES:
            examples[reason].append(number)
    record = {
        **provenance(),
        "inputs": {lang: {"path": str(path), "lines": len(side), **file_record(path)}
                   for lang, path, side in zip(languages, inputs, sides)},
        "options": asdict(options),
        "rules": judge.rules,
        "lines": len(reasons),
        "kept": counts[None],
        "dropped": {rule: counts[rule] for rule in judge.rules},
        "first_dropped_lines": examples,
        "length_ratio_median": judge.median,
    }
    if "language" in judge.rules:
        record["language_identifier"] = {"name": "py3langid", "version": metadata.version("py3langid"),
                                         "identified_as": {lang: dict(found.most_common())
                                                           for lang, found in judge.identified_as.items()}}
    return record
