"""Student presets: each preset's flags build, in fairseq, the model they promise."""
from __future__ import annotations

from pathlib import Path

import pytest

from lskd.students import PRESETS, StudentPreset, UnknownPresetError, student_preset


def write_dictionary(path: Path, words: list[str]) -> int:
    """A fairseq dictionary file; returns its size with fairseq's four special symbols."""
    path.write_text("".join(f"{word} 1\n" for word in words), encoding="utf-8")
    return len(words) + 4


def expected_parameters(preset: StudentPreset, source_vocab: int, target_vocab: int | None) -> int:
    """A pre-norm fairseq transformer's parameters, counted by hand. Per encoder layer: self-attention
    (4 projections of d x d + d), two layer norms (2d each), FFN (d x f + f, f x d + d); per decoder
    layer the same plus encoder attention (4 d x d + 4d) and its layer norm; a final layer norm per side
    (pre-norm); sinusoidal positions (none). Embeddings: one V x d matrix shared by both sides and the
    output (``target_vocab`` None), or one per side, the decoder's tied to the output."""
    d, f = preset.embed_dim, preset.ffn_dim
    attention, norm, ffn = 4 * (d * d + d), 2 * d, d * f + f + f * d + d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    embeddings = source_vocab * d + (target_vocab * d if target_vocab is not None else 0)
    return embeddings + preset.encoder_layers * encoder_layer + preset.decoder_layers * decoder_layer + 2 * norm


def build(data: Path, preset: StudentPreset, joined: bool):
    from fairseq_plugins.components import build_training_components

    argv = [str(data), "--task", "translation", "--source-lang", "de", "--target-lang", "en", "--cpu",
            *preset.fairseq_args(joined_dictionary=joined)]
    return build_training_components(argv, splits=())[2]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_presets_flags_build_its_layers_and_parameters_in_fairseq(name, tmp_path):
    preset = PRESETS[name]
    words = [f"w{i}" for i in range(60)]
    vocab = write_dictionary(tmp_path / "dict.de.txt", words)
    write_dictionary(tmp_path / "dict.en.txt", words)
    model = build(tmp_path, preset, joined=True)
    assert len(model.encoder.layers) == preset.encoder_layers and len(model.decoder.layers) == preset.decoder_layers
    assert model.encoder.layers[0].self_attn.num_heads == model.decoder.layers[0].self_attn.num_heads == preset.attention_heads
    assert model.encoder.layers[0].normalize_before and model.decoder.layers[0].normalize_before  # CTranslate2: both sides alike
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(preset, vocab, None)


def test_separate_dictionaries_share_only_the_decoders_embeddings(tmp_path):
    preset = PRESETS["tiny"]
    source = write_dictionary(tmp_path / "dict.de.txt", [f"de{i}" for i in range(50)])
    target = write_dictionary(tmp_path / "dict.en.txt", [f"en{i}" for i in range(70)])
    model = build(tmp_path, preset, joined=False)
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(preset, source, target)


def test_presets_have_a_deep_encoder_and_a_shallow_decoder_and_unknown_names_are_refused():
    for name in ("tiny", "base"):
        assert student_preset(name).encoder_layers == 6 and student_preset(name).decoder_layers <= 2
    with pytest.raises(UnknownPresetError, match=r"unknown student preset 'bsae' \(the presets: tiny, base, "
                                                 r"quickstart\); did you mean 'base'\?"):
        student_preset("bsae")
