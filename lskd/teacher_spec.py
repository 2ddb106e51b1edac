"""A teacher given by path, recognised from its content: a fairseq checkpoint, a Hugging Face model
directory or a CTranslate2 model directory, and what a record says about it.

The translation teachers practitioners have are fairseq checkpoints (a file, read by
``fairseq_plugins.teacher``), Hugging Face sequence-to-sequence models (OPUS-MT's Marian, M2M-100,
NLLB: a directory as ``save_pretrained`` or a hub download writes it) and their CTranslate2
conversions (``model.bin`` with the tokenizer beside it, as Argos Translate and OpusDistillery ship
them). Which one a path is comes from the files it holds, never from its name. Every record that
names a teacher gives :meth:`TeacherSpec.describe`: its kind, architecture, and the size and sha256
of each of its configuration, tokenizer and weight files. Reading a spec needs neither fairseq nor
``transformers``; only translating with a Hugging Face model does (:func:`require_transformers`).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lskd.errors import LSKDError
from lskd.output_files import certify

KINDS = ("fairseq", "huggingface", "ctranslate2")
#: the extra that installs what a Hugging Face teacher needs (setup.py's ``hf``)
HF_EXTRA = "pip install 'lskd[hf]'"

HF_CONFIG_FILES = ("config.json", "generation_config.json")
#: weights as save_pretrained writes them: one file, or shards listed in an index
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: every file a tokenizer of a translation model may read
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "source.spm", "target.spm", "sentencepiece.bpe.model", "sentencepiece.model",
                   "spiece.model", "spm.model")
#: the tokenizer files a model type cannot do without (any one of the tuples, all of its files)
REQUIRED_TOKENIZER_FILES = {
    "marian": (("source.spm", "target.spm", "vocab.json"),),
    "m2m_100": (("tokenizer.json",), ("sentencepiece.bpe.model", "vocab.json"), ("sentencepiece.bpe.model",
                                                                                  "tokenizer_config.json")),
}
#: what any other model type needs: a tokenizers file, or a SentencePiece model with its tokenizer config
DEFAULT_TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer_config.json", "spiece.model"),
                           ("tokenizer_config.json", "sentencepiece.bpe.model"),
                           ("tokenizer_config.json", "vocab.json"))
CT2_MODEL = "model.bin"
CT2_VOCABULARIES = ("shared_vocabulary.json", "shared_vocabulary.txt", "source_vocabulary.json",
                    "target_vocabulary.json", "source_vocabulary.txt", "target_vocabulary.txt", "config.json")
#: SentencePiece files a CTranslate2 directory may carry: one per side, or one shared
CT2_SENTENCEPIECE = (("source.spm", "target.spm"), ("sentencepiece.model",), ("sentencepiece.bpe.model",),
                     ("spm.model",))
#: a Hugging Face tokenizer beside a CTranslate2 model (``ct2-transformers-converter --copy_files``)
CT2_HF_TOKENIZER = (("tokenizer.json",), ("tokenizer_config.json",))

#: the head of an architecture name and what a model with it is, for a refusal
_NOT_TRANSLATION = (
    (("ForSequenceClassification", "ForTokenClassification", "ForImageClassification", "ForAudioClassification",
      "ForMultipleChoice"), "a classifier"),
    (("ForCausalLM", "LMHeadModel"), "a decoder-only language model"),
    (("ForMaskedLM", "ForPreTraining"), "a masked language model (an encoder)"),
    (("ForQuestionAnswering",), "a question-answering model"),
)


class TeacherSpecError(LSKDError, ValueError):
    """A teacher path that is not a usable translation teacher; the message says what was looked for."""


@dataclass(frozen=True)
class TeacherSpec:
    """A recognised teacher. ``kind``: one of :data:`KINDS`; ``architecture``: the Hugging Face class
    (``MarianMTModel``), CTranslate2's model spec (``TransformerSpec``), or None for fairseq (its
    reader, ``fairseq_plugins.teacher``, says); ``files``: ``{group: [names]}`` relative to ``path``
    (a directory; for fairseq, the checkpoint's folder) with groups ``config``, ``tokenizer``, ``weights``."""

    kind: str
    path: Path
    architecture: str | None
    model_type: str | None
    files: dict[str, tuple[str, ...]]

    @property
    def root(self) -> Path:
        """The directory the file names are relative to."""
        return self.path.parent if self.kind == "fairseq" else self.path

    @property
    def config(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` (empty for the other kinds)."""
        return read_config(self.path) if self.kind == "huggingface" else {}

    def describe(self) -> dict[str, Any]:
        """For records: ``{"kind", "path", "architecture", "model_type", "files": {group: {name: {"bytes",
        "sha256"}}}}`` (sha256 of every configuration, tokenizer and weight file)."""
        return {"kind": self.kind, "path": str(self.path.resolve()), "architecture": self.architecture,
                "model_type": self.model_type,
                "files": {group: certify(self.root, names) for group, names in self.files.items()}}


def read_teacher_spec(path: str | Path) -> TeacherSpec:
    """Recognise the teacher at ``path`` from its content.

    A file: a fairseq checkpoint. A directory with ``model.bin``: a CTranslate2 model (its tokenizer,
    SentencePiece models or Hugging Face tokenizer files, beside it). A directory with ``config.json``
    and weights: a Hugging Face model, which must be an encoder-decoder translation model with its
    tokenizer files. Anything else is a :class:`TeacherSpecError` saying what was looked for.
    """
    path = Path(path)
    if path.is_file():
        return TeacherSpec("fairseq", path, None, None, {"weights": (path.name,)})
    if not path.is_dir():
        raise TeacherSpecError(f"teacher not found: {path}")
    if (path / CT2_MODEL).is_file():
        return _ctranslate2_spec(path)
    if (path / "config.json").is_file() and _weight_files(path):
        return _huggingface_spec(path)
    raise TeacherSpecError(
        f"{path} is not a teacher LSKD knows: looked for a fairseq checkpoint (a file), a Hugging Face model "
        f"directory (config.json with {' or '.join(HF_WEIGHT_FILES + HF_WEIGHT_INDEXES)}) or a CTranslate2 "
        f"model directory ({CT2_MODEL}); it holds {_listing(path)}")


def read_config(path: Path) -> dict[str, Any]:
    """``path/config.json`` as a dict; unreadable JSON is a :class:`TeacherSpecError` naming it."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TeacherSpecError(f"{path / 'config.json'}: not a readable JSON configuration ({error})") from error
    if not isinstance(config, dict):
        raise TeacherSpecError(f"{path / 'config.json'}: expected a JSON object")
    return config


def require_transformers() -> None:
    """Refuse (one line naming the extra) when ``transformers`` is not installed."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise TeacherSpecError(f"a Hugging Face teacher needs the transformers package, which is not installed: "
                               f"{HF_EXTRA}") from None


def _listing(path: Path, shown: int = 8) -> str:
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return "nothing"
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _weight_files(path: Path) -> tuple[str, ...]:
    """The weight files of a Hugging Face directory: a single file, or an index and the shards it lists."""
    for index in HF_WEIGHT_INDEXES:
        if (path / index).is_file():
            try:
                shards = set(json.loads((path / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise TeacherSpecError(f"{path / index}: not a readable weight index ({error})") from error
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                raise TeacherSpecError(f"{path}: weight shards listed in {index} are missing: {', '.join(missing)}")
            return (index, *sorted(shards))
    return tuple(name for name in HF_WEIGHT_FILES if (path / name).is_file())[:1]


def _architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    return str(architectures[0]) if architectures else str(config.get("model_type", "unknown"))


def not_a_translation_model(config: dict[str, Any]) -> str | None:
    """What the model of ``config`` is when it is not an encoder-decoder translation model, else None."""
    architecture = _architecture(config)
    for heads, what in _NOT_TRANSLATION:
        if architecture.endswith(heads):
            return what
    if not config.get("is_encoder_decoder", False):
        return "not an encoder-decoder model (config.json: is_encoder_decoder is not true)"
    return None


def _present_groups(path: Path, alternatives: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The first group of ``alternatives`` whose files are all in ``path``, else None."""
    return next((group for group in alternatives if all((path / name).is_file() for name in group)), None)


def _huggingface_spec(path: Path) -> TeacherSpec:
    config = read_config(path)
    architecture, model_type = _architecture(config), config.get("model_type")
    what = not_a_translation_model(config)
    if what is not None:
        raise TeacherSpecError(f"{path} holds {architecture} (model_type {model_type}): {what}, not an "
                               f"encoder-decoder translation model")
    alternatives = REQUIRED_TOKENIZER_FILES.get(model_type, DEFAULT_TOKENIZER_FILES)
    if _present_groups(path, alternatives) is None:
        wanted = " or ".join(" + ".join(group) for group in alternatives)
        raise TeacherSpecError(f"{path}: the tokenizer files of {architecture} are missing: looked for {wanted} "
                               f"(save the tokenizer with save_pretrained into the model's directory)")
    return TeacherSpec("huggingface", path, architecture, model_type,
                       {"config": _present(path, HF_CONFIG_FILES), "tokenizer": _present(path, TOKENIZER_FILES),
                        "weights": _weight_files(path)})


def _present(path: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in names if (path / name).is_file())


def _ctranslate2_spec(path: Path) -> TeacherSpec:
    tokenizer = _present_groups(path, CT2_HF_TOKENIZER + CT2_SENTENCEPIECE)
    if tokenizer is None:
        looked = " or ".join(" + ".join(group) for group in CT2_HF_TOKENIZER + CT2_SENTENCEPIECE)
        raise TeacherSpecError(f"{path} is a CTranslate2 model ({CT2_MODEL}) without a tokenizer: looked for "
                               f"{looked} beside it (copy the original model's tokenizer files there)")
    return TeacherSpec("ctranslate2", path, ctranslate2_spec_name(path / CT2_MODEL), None,
                       {"config": _present(path, CT2_VOCABULARIES), "tokenizer": _present(path, TOKENIZER_FILES),
                        "weights": (CT2_MODEL,)})


def ctranslate2_spec_name(model_bin: Path) -> str:
    """The model spec a CTranslate2 ``model.bin`` was written for (``TransformerSpec``), from its header:
    a uint32 format version, then (version >= 2) the spec name as a uint16 length and bytes."""
    try:
        with open(model_bin, "rb") as handle:
            (version,) = struct.unpack("<I", handle.read(4))
            if version < 2:
                return "unknown"
            (length,) = struct.unpack("<H", handle.read(2))
            return handle.read(length).rstrip(b"\0").decode("utf-8")
    except (OSError, struct.error, UnicodeDecodeError) as error:
        raise TeacherSpecError(f"{model_bin}: not a readable CTranslate2 model ({error})") from error
