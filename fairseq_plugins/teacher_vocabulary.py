"""The vocabulary of a teacher trained elsewhere: its SentencePiece model and fairseq dictionaries.

A student distilled from a teacher must see text cut into the teacher's pieces and numbered by the
teacher's dictionaries (word-level KD compares distributions over the teacher's target dictionary).
This module finds those three files for a teacher given as

* a model directory laid out as fairseq publishes models: a checkpoint (``model.pt``),
  ``dict.SRC.txt`` and ``dict.TGT.txt`` (or one ``dict.txt`` for both), and a SentencePiece model
  (``sentencepiece.bpe.model``, ``spm.model``, or the directory's only ``*.model``);
* a checkpoint: its ``cfg.task.data`` directory holds the dictionaries, and ``cfg.bpe`` names the
  SentencePiece model when it was trained with ``--bpe sentencepiece``; files beside the
  checkpoint count too.

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
#: Refuse a subword model when more than this share of its pieces is missing from a dictionary.
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


def find_teacher_vocabulary(teacher: str | Path, src: str, tgt: str, *, spm_model: str | Path | None = None,
                            src_dict: str | Path | None = None, tgt_dict: str | Path | None = None) -> TeacherVocabulary:
    """The vocabulary of ``teacher`` (a model directory or a checkpoint) for the pair ``src``-``tgt``.

    Raises :class:`TeacherVocabularyError` naming each missing file and where it was looked for, or a
    teacher trained on another language pair.
    """
    teacher = Path(teacher)
    if not teacher.exists():
        raise TeacherVocabularyError(f"teacher {teacher} does not exist (give a checkpoint or a model directory)")
    checkpoint = _checkpoint_in(teacher)
    places = [teacher] if teacher.is_dir() else [teacher.parent]
    named_spm = None
    if checkpoint is not None:
        data_dirs, named_spm = _what_the_checkpoint_names(checkpoint, src, tgt)
        places += data_dirs
    looked: dict[str, list[str]] = {}
    found = {
        "--spm-model": Path(spm_model) if spm_model else _first(
            looked.setdefault("--spm-model", []), ([named_spm] if named_spm else [])
            + [p / name for p in places for name in SPM_NAMES] + _only_model_file(places)),
        "--src-dict": Path(src_dict) if src_dict else _first(
            looked.setdefault("--src-dict", []), [p / name for p in places for name in (f"dict.{src}.txt", "dict.txt")]),
        "--tgt-dict": Path(tgt_dict) if tgt_dict else _first(
            looked.setdefault("--tgt-dict", []), [p / name for p in places for name in (f"dict.{tgt}.txt", "dict.txt")]),
    }
    missing = [flag for flag, path in found.items() if path is None]
    if missing:
        raise TeacherVocabularyError(
            f"teacher {teacher}: no " + "; no ".join(f"{flag[2:].replace('-', ' ')} (looked for {', '.join(looked[flag])})"
                                                      for flag in missing)
            + f"; give {' '.join(missing)} explicitly")
    for flag, path in found.items():
        if not path.is_file():
            raise TeacherVocabularyError(f"{flag} {path}: no such file")
    return TeacherVocabulary(found["--spm-model"], found["--src-dict"], found["--tgt-dict"], checkpoint)


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


def _what_the_checkpoint_names(checkpoint: Path, src: str, tgt: str) -> tuple[list[Path], Path | None]:
    """The data directories and the SentencePiece model a checkpoint's config names (relative paths are
    tried as given and beside the checkpoint); refuses a checkpoint trained on another language pair."""
    from fairseq_plugins.checkpoint import _get, load_fairseq_checkpoint

    cfg = load_fairseq_checkpoint(checkpoint).get("cfg") or {}
    task, bpe = _get(cfg, "task", {}), _get(cfg, "bpe", {})
    pair = (_get(task, "source_lang"), _get(task, "target_lang"))
    if all(pair) and pair != (src, tgt):
        raise TeacherVocabularyError(f"teacher {checkpoint} translates {pair[0]}-{pair[1]}, not {src}-{tgt}")
    data = [d for d in str(_get(task, "data") or "").split(os.pathsep) if d]
    spm = _get(bpe, "sentencepiece_model") if _get(bpe, "_name") == "sentencepiece" else None
    return [p for d in data for p in _resolved(d, checkpoint)], next(iter(_resolved(spm, checkpoint)), None) if spm else None


def _resolved(path: str, checkpoint: Path) -> list[Path]:
    given = Path(path)
    return [given] if given.is_absolute() else [given, checkpoint.parent / given]


def missing_piece_shares(vocabulary: TeacherVocabulary) -> dict[str, float]:
    """Per side, the share of the SentencePiece model's pieces (control pieces aside) that the
    dictionary does not hold; above :data:`MAX_MISSING_PIECES` the two were not made together."""
    import sentencepiece as spm
    from fairseq.data import Dictionary

    processor = spm.SentencePieceProcessor(model_file=str(vocabulary.spm_model))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())
              if not (processor.is_control(i) or processor.is_unknown(i))]
    shares = {}
    for side, path in (("source", vocabulary.src_dict), ("target", vocabulary.tgt_dict)):
        dictionary = Dictionary.load(str(path))
        shares[side] = sum(dictionary.index(p) == dictionary.unk() for p in pieces) / max(len(pieces), 1)
    return shares


def check_pieces_fit_dictionaries(vocabulary: TeacherVocabulary) -> dict[str, float]:
    """Refuse a SentencePiece model whose pieces are mostly absent from a dictionary, naming the share."""
    shares = missing_piece_shares(vocabulary)
    for side, share in shares.items():
        if share > MAX_MISSING_PIECES:
            path = vocabulary.src_dict if side == "source" else vocabulary.tgt_dict
            raise TeacherVocabularyError(
                f"{share:.0%} of the pieces of {vocabulary.spm_model} are not in the {side} dictionary {path}: "
                f"they were not made together (give the teacher's own --spm-model / dictionaries)")
    return shares


def unk_share(piece_lines: Iterable[str], dictionary_path: str | Path) -> tuple[int, int]:
    """(pieces that map to ``<unk>``, all pieces) over lines of space-separated SentencePiece pieces."""
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(str(dictionary_path))
    unknown = total = 0
    for line in piece_lines:
        pieces = line.split()
        total += len(pieces)
        unknown += sum(dictionary.index(p) == dictionary.unk() for p in pieces)
    return unknown, total
