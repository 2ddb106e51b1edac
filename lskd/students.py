"""Student presets a practitioner picks by name: Transformer shapes known to make fast CPU students.

The shape of the production students (Bergamot's students recipe, used by Mozilla's translations:
https://github.com/browsermt/students/tree/master/train-student/models; Kim et al. 2019, "From
Research to Production and Back: Ludicrously Fast Neural Machine Translation", WNGT): a **deep
encoder and a shallow decoder**. Decoding runs the decoder once per output token and the encoder
once per sentence, so decoder layers are what a user waits for; encoder layers are cheap at
inference and buy back quality. Bergamot's ``base`` is 6 encoder + 2 decoder layers of 512
dimensions (FFN 2048, 8 heads), its ``tiny11`` 6 + 2 of 256 (FFN 1536), both students of
transformer-big teachers (1024 dimensions), with tied embeddings.

Here the decoder layers are ordinary Transformer layers (Bergamot's SSRU decoder exists in neither
fairseq nor CTranslate2's fairseq converter), pre-norm (stabler at the quickstart's learning rate on
small data; CTranslate2 needs encoder and decoder to agree on it, and on the head count, which one
field each guarantees), and the widths are scaled to this project's teachers and CPUs: the
quickstart's teacher has 256 dimensions (3 + 3 layers, FFN 1024), so ``base`` takes half of it, as
Bergamot's base does of its teacher, and ``tiny`` a quarter with one decoder layer. ``quickstart``
is the quickstart's own student (3 + 3 layers of 128), for comparison.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from lskd.errors import LSKDError


class UnknownPresetError(LSKDError, ValueError):
    """A student preset name that is not one of :data:`PRESETS`."""


@dataclass(frozen=True)
class StudentPreset:
    """A fairseq ``transformer``: layer counts, model width (embeddings, attention) and FFN width, heads
    (both sides), dropout; pre-norm; embeddings shared (all, or the decoder's input and output)."""

    name: str
    encoder_layers: int
    decoder_layers: int
    embed_dim: int
    ffn_dim: int
    attention_heads: int
    dropout: float = 0.1
    about: str = ""

    def fairseq_args(self, joined_dictionary: bool = True) -> list[str]:
        """The ``fairseq-train`` model flags. ``joined_dictionary`` False (a teacher's vocabulary with two
        dictionaries, :attr:`lskd.prepared.PreparedData.joined_dictionary`): share only the decoder's
        input and output embeddings, as ``--share-all-embeddings`` needs one dictionary."""
        sharing = "--share-all-embeddings" if joined_dictionary else "--share-decoder-input-output-embed"
        args = ["--arch", "transformer"]
        for side, layers in (("encoder", self.encoder_layers), ("decoder", self.decoder_layers)):
            args += [f"--{side}-layers", str(layers), f"--{side}-embed-dim", str(self.embed_dim),
                     f"--{side}-ffn-embed-dim", str(self.ffn_dim), f"--{side}-attention-heads", str(self.attention_heads),
                     f"--{side}-normalize-before"]
        return args + [sharing, "--dropout", str(self.dropout)]


PRESETS = {preset.name: preset for preset in (
    StudentPreset("tiny", 6, 1, 64, 256, 2, about="a quarter of the quickstart teacher's width, one decoder layer"),
    StudentPreset("base", 6, 2, 128, 512, 4, about="half the quickstart teacher's width, Bergamot base's depths"),
    StudentPreset("quickstart", 3, 3, 128, 512, 4, about="the quickstart's student (recipes/lib.sh STUDENT_ARCH)"),
)}
DEFAULT_PRESET = "base"


def student_preset(name: str) -> StudentPreset:
    """The preset called ``name``; another name is an :class:`UnknownPresetError` listing the presets
    (and the nearest, for a typo)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        raise UnknownPresetError(f"unknown student preset {name!r} (the presets: {', '.join(PRESETS)})"
                                 + (f"; did you mean {close[0]!r}?" if close else ""))
    return PRESETS[name]
