"""The vocabulary of a teacher trained elsewhere: its SentencePiece model and fairseq dictionaries.

A student distilled from a teacher must see text cut into the teacher's pieces and numbered by the
teacher's dictionaries (word-level KD compares distributions over the teacher's target dictionary).
This module finds those three files for a teacher given as

* a model directory laid out as fairseq publishes models: a checkpoint (``model.pt``),
  ``dict.SRC.txt`` and ``dict.TGT.txt`` (or one ``dict.txt`` for both), and a SentencePiece model
  (``sentencepiece.bpe.model``, ``spm.model``, or the directory's only ``*.model``);
* a checkpoint: its ``cfg.task.data`` directory holds the dictionaries, and ``cfg.bpe`` names the
  SentencePiece model when it was trained with ``--bpe sentencepiece``; files beside the
  checkpoint count too, and so does the ``spm.model`` of the ``lskd-prepare`` directory whose ``bin/``
  it was trained on.

Explicit paths override what is found. Whatever cannot be found is named in the error, with every
place that was looked at.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from lskd.errors import LSKDError
from lskd.provenance import sha256_file

#: SentencePiece model names of fairseq's published models, in order of preference.
SPM_NAMES = ("sentencepiece.bpe.model", "spm.model", "sentencepiece.model")
#: Refuse a subword model when more than this share of its pieces is in neither dictionary.
MAX_MISSING_PIECES = 0.5


class TeacherVocabularyError(LSKDError):
    """A teacher's vocabulary that cannot be found or does not fit together."""


@dataclass(frozen=True)
class TeacherVocabulary:
    """The teacher's SentencePiece model and its source and target dictionaries (fairseq format)."""

    spm_model: Path
    src_dict: Path
    tgt_dict: Path
    teacher: Path | None  # the checkpoint, when one was found

    @property
    def joined(self) -> bool:
        """One dictionary for both sides (the files are identical)."""
        return self.src_dict.resolve() == self.tgt_dict.resolve() or sha256_file(self.src_dict) == sha256_file(self.tgt_dict)

    def record(self) -> dict[str, Any]:
        """Where the vocabulary came from, for ``prep.json``: paths and sha256 of the three files."""
        files = {"spm_model": self.spm_model, "src_dict": self.src_dict, "tgt_dict": self.tgt_dict}
        return {
            **{name: {"path": str(path.resolve()), "sha256": sha256_file(path)} for name, path in files.items()},
            "joined_dictionary": self.joined,
            "teacher": str(self.teacher.resolve()) if self.teacher else None,
        }


def find_teacher_vocabulary(teacher: str | Path | None, src: str, tgt: str, *, spm_model: str | Path | None = None,
                            src_dict: str | Path | None = None, tgt_dict: str | Path | None = None) -> TeacherVocabulary:
    """The vocabulary of ``teacher`` (a model directory or a checkpoint) for the pair ``src``-``tgt``;
    without a teacher, the three files must all be given.

    Raises :class:`TeacherVocabularyError` naming each missing file and where it was looked for, or a
    teacher trained on another language pair.
    """
    teacher = Path(teacher) if teacher else None
    if teacher is not None and not teacher.exists():
        raise TeacherVocabularyError(f"teacher {teacher} does not exist (give a checkpoint or a model directory)")
    checkpoint = _checkpoint_in(teacher) if teacher else None
    places = [] if teacher is None else [teacher] if teacher.is_dir() else [teacher.parent]
    named_spm: list[Path] = []
    if checkpoint is not None:
        from fairseq_plugins.checkpoint import load_fairseq_checkpoint

        cfg = load_fairseq_checkpoint(checkpoint).get("cfg") or {}
        _check_language_pair(checkpoint, cfg, src, tgt)
        places += checkpoint_data_dirs(checkpoint, cfg)
        named_spm = _named_sentencepiece_model(checkpoint, cfg)
    looked: dict[str, list[str]] = {}
    found = {
        "--spm-model": Path(spm_model) if spm_model else _first(
            looked.setdefault("--spm-model", []), named_spm
            + [p / name for p in places + prepared_roots(places) for name in SPM_NAMES] + _only_model_file(places)),
        "--src-dict": Path(src_dict) if src_dict else _first(
            looked.setdefault("--src-dict", []), dictionary_candidates(places, src)),
        "--tgt-dict": Path(tgt_dict) if tgt_dict else _first(
            looked.setdefault("--tgt-dict", []), dictionary_candidates(places, tgt)),
    }
    missing = [flag for flag, path in found.items() if path is None]
    if missing:
        whose = f"teacher {teacher}" if teacher else "no --teacher"
        what = "; no ".join(f"{flag[2:].replace('-', ' ')}" + (f" (looked for {', '.join(looked[flag])})" if looked[flag] else "")
                            for flag in missing)
        raise TeacherVocabularyError(f"{whose}: no {what}; give {' '.join(missing)} explicitly")
    for flag, path in found.items():
        if not path.is_file():
            raise TeacherVocabularyError(f"{flag} {path}: no such file")
    return TeacherVocabulary(found["--spm-model"], found["--src-dict"], found["--tgt-dict"], checkpoint)


def prepared_roots(places: Iterable[Path]) -> list[Path]:
    """The ``lskd-prepare`` directories (a ``prep.json`` beside the data) whose ``bin/`` is among ``places``:
    a checkpoint trained on ``PREP/bin`` (the quickstart's teachers) has its SentencePiece model in ``PREP``."""
    return [place.parent for place in places if (place.parent / "prep.json").is_file()]


def checkpoint_dictionary(checkpoint: str | Path, cfg: Any, lang: str) -> Path | None:
    """The dictionary file of ``lang`` a fairseq checkpoint was trained with: beside it (a published
    model directory) or in the data directory its config names; None when neither holds one."""
    checkpoint = Path(checkpoint)
    return _first([], dictionary_candidates([checkpoint.parent, *checkpoint_data_dirs(checkpoint, cfg)], lang))


def dictionary_candidates(places: Iterable[Path], lang: str) -> list[Path]:
    """Where fairseq keeps the dictionary of ``lang``, in order: ``dict.LANG.txt``, then a joined ``dict.txt``."""
    return [place / name for place in places for name in (f"dict.{lang}.txt", "dict.txt")]


def checkpoint_data_dirs(checkpoint: Path, cfg: Any) -> list[Path]:
    """The data directories a checkpoint's ``cfg.task.data`` names (relative ones as given and beside it)."""
    from fairseq_plugins.checkpoint import config_value

    data = str(config_value(config_value(cfg, "task", {}), "data") or "")
    return [path for directory in data.split(os.pathsep) if directory for path in _resolved(directory, checkpoint, cfg)]


def _checkpoint_in(teacher: Path) -> Path | None:
    if teacher.is_file():
        return teacher
    if (teacher / "model.pt").is_file():
        return teacher / "model.pt"
    candidates = sorted(teacher.glob("*.pt"))
    return candidates[0] if len(candidates) == 1 else None


def _only_model_file(places: Iterable[Path]) -> list[Path]:
    """A directory's ``*.model`` file when it holds exactly one (a SentencePiece model by another name)."""
    found = []
    for place in places:
        models = sorted(place.glob("*.model")) if place.is_dir() else []
        found += models if len(models) == 1 else []
    return found


def _first(looked: list[str], candidates: Iterable[Path]) -> Path | None:
    for candidate in candidates:
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate
    return None


def _check_language_pair(checkpoint: Path, cfg: Any, src: str, tgt: str) -> None:
    from fairseq_plugins.checkpoint import config_value

    task = config_value(cfg, "task", {})
    pair = (config_value(task, "source_lang"), config_value(task, "target_lang"))
    if all(pair) and pair != (src, tgt):
        raise TeacherVocabularyError(f"teacher {checkpoint} translates {pair[0]}-{pair[1]}, not {src}-{tgt}")


def _named_sentencepiece_model(checkpoint: Path, cfg: Any) -> list[Path]:
    """Where the SentencePiece model of a checkpoint trained with ``--bpe sentencepiece`` may lie."""
    from fairseq_plugins.checkpoint import config_value

    bpe = config_value(cfg, "bpe", {})
    model = config_value(bpe, "sentencepiece_model") if config_value(bpe, "_name") == "sentencepiece" else None
    return _resolved(model, checkpoint, cfg) if model else []


def _resolved(path: str, checkpoint: Path, cfg: Any) -> list[Path]:
    """Where a path stored in a checkpoint's config may lie: as stored when absolute, else under each of
    :func:`fairseq_plugins.checkpoint.search_bases` (never the current directory)."""
    from fairseq_plugins.checkpoint import search_bases

    given = Path(path)
    return [given] if given.is_absolute() else [Path(os.path.normpath(base / given)) for base in search_bases(checkpoint, cfg)]


def missing_piece_shares(vocabulary: TeacherVocabulary) -> dict[str, float]:
    """Shares of the SentencePiece model's pieces (control pieces aside) that the source dictionary,
    the target dictionary, and both of them do not hold.

    A joint model with separate dictionaries leaves each side's dictionary without the other
    language's pieces, so only ``both`` says whether model and dictionaries were made together.
    """
    processor = load_sentencepiece_model(vocabulary.spm_model)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())
              if not (processor.is_control(i) or processor.is_unknown(i))]
    missing = {}
    for side, path in (("source", vocabulary.src_dict), ("target", vocabulary.tgt_dict)):
        dictionary = load_dictionary(path)
        missing[side] = {p for p in pieces if dictionary.index(p) == dictionary.unk()}
    missing["both"] = missing["source"] & missing["target"]
    return {side: len(absent) / max(len(pieces), 1) for side, absent in missing.items()}


def load_sentencepiece_model(path: str | Path):
    """A ``SentencePieceProcessor``; a file that is none is a :class:`TeacherVocabularyError` naming it."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise TeacherVocabularyError(f"{path} is not a SentencePiece model ({err})") from err


def load_dictionary(path: str | Path):
    """A fairseq ``Dictionary``; a file that is none is a :class:`TeacherVocabularyError` naming it."""
    from fairseq.data import Dictionary

    try:
        return Dictionary.load(str(path))
    except Exception as err:  # fairseq raises ValueError, RuntimeError or a bare Exception (encoding)
        raise TeacherVocabularyError(f"{path} is not a fairseq dictionary: {err}") from err


def check_pieces_fit_dictionaries(vocabulary: TeacherVocabulary) -> dict[str, float]:
    """Refuse a SentencePiece model whose pieces are mostly in neither dictionary, naming the share;
    returns :func:`missing_piece_shares`."""
    shares = missing_piece_shares(vocabulary)
    if shares["both"] > MAX_MISSING_PIECES:
        raise TeacherVocabularyError(
            f"{shares['both']:.0%} of the pieces of {vocabulary.spm_model} are in neither the source dictionary "
            f"{vocabulary.src_dict} nor the target dictionary {vocabulary.tgt_dict}: they were not made together "
            f"(give the teacher's own --spm-model, --src-dict and --tgt-dict)")
    return shares


def unk_share(piece_lines: Iterable[str], dictionary_path: str | Path) -> tuple[int, int]:
    """(pieces that map to ``<unk>``, all pieces) over lines of space-separated SentencePiece pieces,
    split as ``fairseq-preprocess`` splits them (``fairseq.tokenizer.tokenize_line``; ``</s>`` not counted)."""
    counts = unk_counts(piece_lines, dictionary_path)
    return sum(unknown for unknown, _ in counts), sum(total for _, total in counts)


def unk_counts(piece_lines: Iterable[str], dictionary_path: str | Path) -> list[tuple[int, int]]:
    """Per line, (pieces that map to ``<unk>``, all pieces), counted as :func:`unk_share` counts them."""
    from fairseq.data import Dictionary
    from fairseq.tokenizer import tokenize_line

    dictionary = Dictionary.load(str(dictionary_path))
    counts = []
    for line in piece_lines:
        pieces = tokenize_line(line)
        counts.append((sum(dictionary.index(p) == dictionary.unk() for p in pieces), len(pieces)))
    return counts
