"""Hugging Face and CTranslate2 teachers: recognised from their files, refused with one line when they
cannot translate, and translating raw text into the student's pieces with either engine.

The teachers are built here (tests/hf_models.py): a tiny Marian, trained a few hundred updates on
short Bible verses so that its outputs are peaked (random weights make both engines loop, each its
own way), and an untrained tiny M2M-100 for the language codes. No network but the Bible database,
which the other tests fetch once: the tests that build a model are marked slow.
"""
from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import pytest

from hf_models import bible_pairs, build_m2m100, build_marian, save, train_briefly, train_sentencepiece
from lskd.decoding import DecodingOptions, EngineError, is_too_long
from lskd.hf_teacher import (CONVERSION_JSON, Languages, converted_model, ctranslate2_language_tokens,
                             normalise_text, open_teacher_engine, teacher_engine_on_split)
from lskd.output_files import OutputError
from lskd.prepared import load_prepared
from lskd.provenance import sha256_file
from lskd.teacher_spec import TeacherSpecError, read_teacher_spec, require_transformers

#: verses the tiny Marian is trained on, and as many it never saw: the sentences the engines translate
TRAINED, UNSEEN = 64, 64


@pytest.fixture(scope="session")
def verses() -> list[tuple[str, str]]:
    return bible_pairs(count=600)


@pytest.fixture(autouse=True)
def torch_on_one_thread():
    """torch on one thread, then as it was: several times faster on a shared machine (training and generate)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def marian(verses, tmp_path_factory) -> Path:
    """A trained tiny Marian teacher (64 positions: longer sources are too long), saved as a hub download is.
    Its training takes 10 to 50 seconds: the tests that use it are marked slow. Trained once a session:
    tests/test_hf_distill.py imports this fixture, which pytest then sets up once more for that module."""
    pytest.importorskip("transformers")
    import torch

    out = tmp_path_factory.getbasetemp() / "marian"
    if (out / "opus-mt-de-en" / "config.json").is_file():
        return out / "opus-mt-de-en"
    threads = torch.get_num_threads()  # session-scoped: the autouse one-thread fixture has not run yet
    torch.set_num_threads(1)
    model, tokenizer = build_marian(out / "build", verses)
    loss = train_briefly(model, tokenizer, verses[:TRAINED], steps=300)
    torch.set_num_threads(threads)
    assert loss < 1.0, f"the tiny Marian did not learn its verses (loss {loss})"
    return save(model, tokenizer, out / "opus-mt-de-en")


@pytest.fixture(scope="session")
def m2m(verses, tmp_path_factory) -> Path:
    """An untrained tiny M2M-100 over German, English and French (the language codes are what is tested)."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("m2m")
    french = [t for _, t in bible_pairs("e", "l", count=200)]
    model, tokenizer = build_m2m100(out / "build", {"de": [s for s, _ in verses[:200]],
                                                    "en": [t for _, t in verses[:200]], "fr": french})
    return save(model, tokenizer, out / "m2m100")


@pytest.fixture(scope="session")
def student_spm(verses, tmp_path_factory) -> Path:
    """The student's own SentencePiece model (another vocabulary than the teacher's)."""
    out = tmp_path_factory.mktemp("student")
    return train_sentencepiece([t for _, t in verses] + [s for s, _ in verses], out / "spm", 300)


def sources(verses) -> list[str]:
    return [s for s, _ in verses[:TRAINED]] + [s for s, _ in verses[300:300 + UNSEEN]]


def student_pieces(spm_model: Path, text: str) -> str:
    import sentencepiece as spm

    return " ".join(spm.SentencePieceProcessor(model_file=str(spm_model)).encode(normalise_text(text), out_type=str))


# --- recognising a teacher ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_teacher_is_recognised_from_its_files_and_described_with_their_sha256(marian, tmp_path):
    spec = read_teacher_spec(marian)
    assert (spec.kind, spec.architecture, spec.model_type) == ("huggingface", "MarianMTModel", "marian")
    described = spec.describe()
    assert described["files"]["weights"]["model.safetensors"]["sha256"] == sha256_file(marian / "model.safetensors")
    assert described["files"]["config"]["config.json"]["sha256"] == sha256_file(marian / "config.json")
    assert set(described["files"]["tokenizer"]) >= {"source.spm", "target.spm", "vocab.json"}
    misnamed = tmp_path / "teacher.pt"  # a name that looks like a fairseq checkpoint does not matter
    shutil.copytree(marian, misnamed)
    assert read_teacher_spec(misnamed).kind == "huggingface"
    checkpoint = tmp_path / "model.bin"  # nor does a file named as CTranslate2's weights
    checkpoint.write_bytes(b"fairseq")
    assert read_teacher_spec(checkpoint).kind == "fairseq"
    converted = converted_model(spec, "float32", tmp_path / "cache")
    shutil.copy(marian / "source.spm", converted / "source.spm")
    shutil.copy(marian / "target.spm", converted / "target.spm")
    ct2 = read_teacher_spec(converted)
    assert (ct2.kind, ct2.architecture) == ("ctranslate2", "TransformerSpec")
    assert ct2.describe()["files"]["weights"]["model.bin"]["sha256"] == sha256_file(converted / "model.bin")


def write_config(directory: Path, **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(b"weights")
    return directory


@pytest.mark.parametrize("config, what", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "a decoder-only language model"),
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "a decoder-only language model"),
    ({"architectures": ["BertForSequenceClassification"], "model_type": "bert"}, "a classifier"),
    ({"architectures": ["BartForSequenceClassification"], "model_type": "bart", "is_encoder_decoder": True},
     "a classifier"),
    ({"architectures": ["BertModel"], "model_type": "bert"}, "not an encoder-decoder model"),
])
def test_a_model_that_does_not_translate_is_refused_saying_what_it_is(tmp_path, config, what):
    with pytest.raises(TeacherSpecError, match=what) as error:
        read_teacher_spec(write_config(tmp_path / "model", **config))
    assert config["architectures"][0] in str(error.value) and "\n" not in str(error.value)


def test_a_directory_of_no_known_kind_is_refused_saying_what_was_looked_for(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")  # a config alone is not a Hugging Face model
    with pytest.raises(TeacherSpecError, match="looked for a fairseq checkpoint .*\\(config.json with model.safetensors"
                                               ".*CTranslate2 model directory \\(model.bin\\); it holds config.json, "
                                               "weights.npz"):
        read_teacher_spec(tmp_path)
    with pytest.raises(TeacherSpecError, match="teacher not found"):
        read_teacher_spec(tmp_path / "missing")


def test_missing_tokenizer_files_are_named(tmp_path):
    teacher = write_config(tmp_path / "teacher", architectures=["MarianMTModel"], model_type="marian",
                           is_encoder_decoder=True)
    for name in ("vocab.json", "source.spm", "tokenizer_config.json"):  # target.spm is missing
        (teacher / name).write_text("{}")
    with pytest.raises(TeacherSpecError, match="tokenizer files of MarianMTModel are missing: looked for "
                                               "source.spm \\+ target.spm \\+ vocab.json"):
        read_teacher_spec(teacher)


def test_a_ctranslate2_directory_without_a_tokenizer_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 8)
    (tmp_path / "shared_vocabulary.json").write_text("[]")
    with pytest.raises(TeacherSpecError, match="CTranslate2 model \\(model.bin\\) without a tokenizer: looked for "
                                               "tokenizer.json or tokenizer_config.json or source.spm \\+ target.spm"):
        read_teacher_spec(tmp_path)


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an import of a missing package does
    with pytest.raises(TeacherSpecError,
                       match=r"transformers package, which is not installed: pip install 'lskd\[hf\]'"):
        require_transformers()


# --- translating -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def pretrained(teacher: Path, src_lang: str | None):
    """The tokenizer (for ``src_lang``) and model of a teacher directory, loaded once: reference_generate is
    also called sentence by sentence."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    if src_lang:
        tokenizer.src_lang = src_lang
    return tokenizer, AutoModelForSeq2SeqLM.from_pretrained(teacher).eval()


def reference_generate(teacher: Path, texts: list[str], beam: int, lenpen: float, max_new_tokens: int,
                       nbest: int = 1, src_lang: str | None = None, **forced) -> list[list[str]]:
    """``generate`` called directly, as its documentation shows, with the engine's search settings."""
    import torch

    tokenizer, model = pretrained(teacher, src_lang)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**batch, num_beams=beam, num_return_sequences=nbest, length_penalty=lenpen,
                                max_new_tokens=max_new_tokens, early_stopping=True, do_sample=False, **forced)
    # after the decoder's start token and the forced language token, if any
    decoded = tokenizer.batch_decode(output[:, 2 if forced else 1:], skip_special_tokens=True)
    return [decoded[i * nbest:(i + 1) * nbest] for i in range(len(texts))]


@pytest.mark.slow
def test_the_transformers_engine_gives_what_generate_gives_in_the_students_pieces(marian, student_spm, verses):
    texts = sources(verses)[::4]
    # a length limit that does not depend on the batch's longest source: int(0 * S + 30) tokens before </s>
    options = DecodingOptions(beam=4, nbest=2, lenpen=0.6, max_len_a=0, max_len_b=30, batch_size=len(texts))
    engine = open_teacher_engine(read_teacher_spec(marian), texts, student_spm, options, backend="transformers")
    translated = engine.translate(range(len(texts)))
    expected = reference_generate(marian, texts, beam=4, lenpen=0.6, max_new_tokens=31, nbest=2)
    assert [[h.pieces for h in translated[i]] for i in range(len(texts))] == \
        [[student_pieces(student_spm, t) for t in nbest] for nbest in expected]
    assert len({h[0].pieces for h in translated.values()}) > 4, "the teacher gives (nearly) one output for all"


@pytest.mark.slow
def test_ctranslate2_float32_agrees_with_generate_on_at_least_99_percent(marian, student_spm, verses, tmp_path):
    texts = sources(verses)
    options = DecodingOptions(beam=4, batch_size=16)
    outputs = {}
    for backend in ("transformers", "ctranslate2"):
        engine = open_teacher_engine(read_teacher_spec(marian), texts, student_spm, options, backend=backend,
                                     cache=tmp_path)
        hypotheses = engine.translate(range(len(texts)))
        outputs[backend] = [hypotheses[i][0].pieces for i in range(len(texts))]
    same = sum(a == b for a, b in zip(outputs["transformers"], outputs["ctranslate2"]))
    assert same >= 0.99 * len(texts), f"{same} of {len(texts)} hypotheses identical"


@pytest.mark.slow
def test_a_ctranslate2_directory_translates_with_its_sentencepiece_models(marian, student_spm, verses, tmp_path):
    """A CTranslate2 model shipped with OPUS-MT's source.spm/target.spm (no Hugging Face tokenizer) gives
    what the conversion of the Hugging Face directory gives."""
    texts = sources(verses)[:24]
    options = DecodingOptions(beam=3, batch_size=8)
    from_hf = open_teacher_engine(read_teacher_spec(marian), texts, student_spm, options, cache=tmp_path / "cache")
    shipped = tmp_path / "argos-de-en"
    shutil.copytree(from_hf.backend.model, shipped)
    for name in ("source.spm", "target.spm"):
        shutil.copy(marian / name, shipped / name)
    ct2 = open_teacher_engine(read_teacher_spec(shipped), texts, student_spm, options)
    assert type(ct2.tokenizer).__name__ == "SentencePieceTokenizer"
    assert [ct2.source_tokens(i) for i in range(len(texts))] == [from_hf.source_tokens(i) for i in range(len(texts))]
    ours, theirs = ct2.translate(range(len(texts))), from_hf.translate(range(len(texts)))
    assert [ours[i][0].pieces for i in range(len(texts))] == [theirs[i][0].pieces for i in range(len(texts))]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ctranslate2", "transformers"])
def test_every_line_is_accounted_for_with_empty_and_too_long_ones(marian, student_spm, verses, tmp_path, backend):
    """data_prep.distill's chunks, unchanged, over a teacher engine: one row per input line, in order;
    too long by the teacher's own 64 positions, and empty lines translated to nothing."""
    from data_prep.distill import collect, run_chunks

    long_line = " ".join(s for s, _ in verses[:6])
    texts = [verses[0][0], "", long_line, verses[1][0], "   ", verses[2][0], long_line]
    engine = open_teacher_engine(read_teacher_spec(marian), texts, student_spm, DecodingOptions(beam=2, batch_size=2),
                                 backend=backend, cache=tmp_path / "cache")
    assert engine.max_source_tokens == 64  # config.json's max_position_embeddings
    assert [is_too_long(engine, i) for i in range(len(texts))] == [False, False, True, False, False, False, True]
    run_chunks(engine, tmp_path / "out", [(0, 4), (4, 7)], None, student_spm, None, None, fingerprint="hf")
    rows = collect(tmp_path / "out", len(texts), 4, fingerprint="hf")
    assert [r["id"] for r in rows] == list(range(len(texts)))
    assert [r["status"] for r in rows] == ["decoded"] * 2 + ["too-long"] + ["decoded"] * 3 + ["too-long"]
    assert rows[1]["pieces"] == rows[4]["pieces"] == "" and all(rows[i]["pieces"] for i in (0, 3, 5))
    with pytest.raises(EngineError, match="longer than the teacher accepts \\(64 tokens\\).*ids 2, 6"):
        engine.translate(range(len(texts)))


@pytest.mark.slow
def test_a_split_of_prepared_data_is_read_as_raw_text(marian, student_spm, verses, tmp_path):
    data = tmp_path / "prepared"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "train.de").write_text("".join(f"{s}\n" for s, _ in verses[:3]), encoding="utf-8")
    shutil.copy(student_spm, data / "spm.model")
    (data / "prep.json").write_text(json.dumps({"options": {"src": "de", "tgt": "en"}, "outputs": {
        "spm_model": "spm.model", "bin_dir": "bin", "binarized_sentences": {"train": 3, "test": 5}}}))
    prepared = load_prepared(data)
    engine = teacher_engine_on_split(read_teacher_spec(marian), prepared, "train", DecodingOptions(beam=2),
                                     backend="transformers")
    assert len(engine.translate(range(3))) == 3
    assert engine.describe()["teacher"]["architecture"] == "MarianMTModel"
    with pytest.raises(EngineError, match="has 0 lines but test holds 5"):
        (data / "raw" / "test.de").write_text("")
        teacher_engine_on_split(read_teacher_spec(marian), prepared, "test", DecodingOptions(), backend="transformers")


# --- the conversion cache ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_conversion_is_reused_for_the_same_weights_and_redone_for_others(marian, tmp_path, monkeypatch):
    import lskd.hf_teacher as hf_teacher

    conversions = []
    convert = hf_teacher._convert
    monkeypatch.setattr(hf_teacher, "_convert", lambda *a: conversions.append(a[0].path) or convert(*a))
    cache = tmp_path / "cache"
    first = converted_model(read_teacher_spec(marian), "float32", cache)
    assert converted_model(read_teacher_spec(marian), "float32", cache) == first and len(conversions) == 1
    int8 = converted_model(read_teacher_spec(marian), "int8", cache)
    assert int8 != first and len(conversions) == 2
    retrained = tmp_path / "retrained"
    shutil.copytree(marian, retrained)
    from safetensors.torch import load_file, save_file

    weights = load_file(retrained / "model.safetensors")
    name = next(n for n in weights if n.endswith("fc1.weight"))
    weights[name] = weights[name] + 0.01
    save_file(weights, retrained / "model.safetensors", metadata={"format": "pt"})
    other = converted_model(read_teacher_spec(retrained), "float32", cache)
    assert other not in (first, int8) and conversions == [marian, marian, retrained]
    with open(first / "model.bin", "r+b") as handle:  # a damaged cache entry is named, not used
        handle.write(b"XXXX")
    with pytest.raises(OutputError, match=f"model.bin \\(sha256 differs from the manifest's\\); delete {first}"):
        converted_model(read_teacher_spec(marian), "float32", cache)
    assert json.loads((other / CONVERSION_JSON).read_text())["teacher"]["path"] == str(retrained.resolve())


# --- multilingual teachers ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_multilingual_teacher_takes_its_own_language_codes(m2m, student_spm):
    spec = read_teacher_spec(m2m)
    options = DecodingOptions(beam=2, max_len_a=0, max_len_b=5)
    french = "Au commencement Dieu"  # the saved tokenizer's source language is German (de)
    engine = open_teacher_engine(spec, [french], student_spm, options, backend="transformers",
                                 languages=Languages("fr", "de"))
    assert engine.tokenizer.source_tokens(french)[0] == "__fr__"
    assert engine.tokenizer.target_prefix == ["__de__"]
    from transformers import AutoTokenizer

    expected = reference_generate(m2m, [french], beam=2, lenpen=1.0, max_new_tokens=7, src_lang="fr",
                                  forced_bos_token_id=AutoTokenizer.from_pretrained(m2m).get_lang_id("de"))
    assert engine.translate([0])[0][0].pieces == student_pieces(student_spm, expected[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("languages, message", [
    (Languages(), "is multilingual: give its source and target language codes .* e.g. af, am, ar"),
    (Languages("de", None), "is multilingual: give its source and target language codes"),
    (Languages("de", "xx"), "does not know the language code\\(s\\) xx; its codes include af, am, ar"),
    (Languages("deu_Latn", "fra_Latn"), "does not know the language code\\(s\\) deu_Latn, fra_Latn"),
])
def test_a_multilingual_teacher_without_its_codes_is_refused_listing_some(m2m, student_spm, languages, message):
    with pytest.raises(EngineError, match=message):
        open_teacher_engine(read_teacher_spec(m2m), ["x"], student_spm, DecodingOptions(), backend="transformers",
                            languages=languages)


@pytest.mark.slow
def test_a_bilingual_teacher_takes_no_language_codes(marian, student_spm):
    with pytest.raises(EngineError, match="is not a multilingual model: it takes no language codes \\(given de, en\\)"):
        open_teacher_engine(read_teacher_spec(marian), ["x"], student_spm, DecodingOptions(), backend="transformers",
                            languages=Languages("de", "en"))


def test_a_ctranslate2_vocabulary_names_its_languages(tmp_path):
    (tmp_path / "shared_vocabulary.json").write_text(json.dumps(["<s>", "</s>", "__de__", "__en__", "deu_Latn",
                                                                 "▁and", "__x__", "de"]))
    assert ctranslate2_language_tokens(tmp_path) == {"de": "__de__", "en": "__en__", "deu_Latn": "deu_Latn"}


def test_outputs_are_normalised_before_the_students_model_encodes_them():
    assert normalise_text(" Cafe\u0301  au\tlait \n") == "Caf\u00e9 au lait"
