"""A directory made by ``lskd-prepare``, read through its ``prep.json``: where each file of it lies.

Decoding, distillation and analysis all start from such a directory; they find its language pair,
its binarized data, its SentencePiece model and its raw references here, in one place, instead of
each reading ``prep.json`` its own way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lskd.corpus import CorpusError
from lskd.provenance import read_json

PREP_JSON = "prep.json"


@dataclass(frozen=True)
class PreparedData:
    """``root``: the directory; ``record``: its ``prep.json`` (inputs, options, outputs, provenance)."""

    root: Path
    record: dict[str, Any]

    @property
    def src(self) -> str:
        return self.record["options"]["src"]

    @property
    def tgt(self) -> str:
        return self.record["options"]["tgt"]

    @property
    def fingerprint(self) -> str:
        """sha256 over the inputs' contents and the options: the identity of the prepared data."""
        return self.record["fingerprint"]

    @property
    def prep_json(self) -> Path:
        return (self.root / PREP_JSON).resolve()

    @property
    def bin_dir(self) -> Path:
        """fairseq-binarized splits and ``dict.SRC.txt`` / ``dict.TGT.txt``."""
        return self.root / self.record["outputs"]["bin_dir"]

    @property
    def spm_model(self) -> Path:
        return self.root / self.record["outputs"]["spm_model"]

    def dictionary(self, lang: str) -> Path:
        """The fairseq dictionary of ``lang`` (``bin/dict.LANG.txt``)."""
        return self.bin_dir / f"dict.{lang}.txt"

    @property
    def joined_dictionary(self) -> bool:
        """One dictionary for both sides: what ``lskd-prepare`` makes with its own SentencePiece model
        (and all it made before it recorded this); a teacher's vocabulary may have two."""
        return bool(self.record["outputs"].get("joined_dictionary", True))

    def raw(self, split: str, lang: str) -> Path:
        """The split's text as given (the references BLEU is scored against)."""
        return self.root / "raw" / f"{split}.{lang}"

    def pieces(self, split: str, lang: str) -> Path:
        """The split's normalised text as SentencePiece pieces, one sentence per line (what was binarized)."""
        return self.root / "spm" / f"{split}.{lang}"

    def sentences(self, split: str) -> int:
        """Binarized sentence pairs of ``split``; a split that was not prepared is a :class:`CorpusError`."""
        counts = self.record["outputs"]["binarized_sentences"]
        if split not in counts:
            raise CorpusError(f"{self.root} has no split '{split}' (it has {', '.join(counts)})")
        return counts[split]

    def provenance(self) -> dict[str, str]:
        """What a record derived from this data says about it."""
        return {"prep_json": str(self.prep_json), "fingerprint": self.fingerprint}


def load_prepared(root: str | Path) -> PreparedData:
    """Read ``root/prep.json``; a directory without one is a :class:`CorpusError` that says how to make it."""
    root = Path(root)
    path = root / PREP_JSON
    if not path.is_file():
        raise CorpusError(f"{root} has no {PREP_JSON}: prepare it with lskd-prepare first")
    return PreparedData(root, read_json(path, required=("outputs",)))
