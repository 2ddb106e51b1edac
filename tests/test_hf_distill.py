"""Sequence-level KD from a Hugging Face teacher through the commands: ``lskd-distill-corpus`` with the
tiny Marian (tests/hf_models.py) on the Bible slice's validation split with both engines, the refusals
that keep a wrong teacher, engine or language pair out, and ``lskd-eval bleu`` scoring the teacher.

The fast tests use stand-in directories (a config and empty files are all a teacher's recognition
reads); those that translate need the Bible database and the trained Marian, and are marked slow.
"""
from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest

from data_prep.distill import main as distill_main, student_normaliser
from data_prep.dump_topk import main as dump_topk_main
from eval.cli import main as eval_main
from fairseq_plugins.teacher import TeacherError, split_teacher_paths
from lskd.prepared import load_prepared
from test_errors import fake_prepared
from test_hf_teacher import m2m, marian, reference_generate, verses  # noqa: F401  (fixtures)

#: the search of every run here: its length limit does not depend on the batch (int(0 * S + 20) tokens)
SEARCH = ["--beam", "2", "--max-len-a", "0", "--max-len-b", "20"]
DISTIL = [*SEARCH, "--chunk-size", "40", "--workers", "1", "--split", "valid"]
#: transformers: one sentence a batch, as the reference generate runs (padding could flip a near-tie)
BATCH = {"transformers": "1", "ctranslate2": "16"}


def stand_in_marian(directory: Path) -> Path:
    """The files by which a Marian directory is recognised (none is read further before the refusals)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"architectures": ["MarianMTModel"], "model_type": "marian",
                                                       "is_encoder_decoder": True}))
    for name in ("model.safetensors", "source.spm", "target.spm", "vocab.json"):
        (directory / name).write_bytes(b"")
    return directory


def one_error_line(capsys, command: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), lines
    return lines[0]


# --- refusals before any work ------------------------------------------------------------------------------


def test_word_level_kd_from_a_hugging_face_directory_is_refused_pointing_to_sequence_level_kd(tmp_path, capsys):
    """Before: fairseq's loader failed on a directory (IsADirectoryError) in lskd-dump-topk and the criterion."""
    teacher, data = stand_in_marian(tmp_path / "opus-mt-de-en"), fake_prepared(tmp_path / "data")
    assert dump_topk_main([str(data / "bin"), "--teacher-path", str(teacher), "--source-lang", "de", "--target-lang",
                           "en", "--k", "2", "--out", str(tmp_path / "topk")]) == 2
    error = one_error_line(capsys, "lskd-dump-topk")
    assert (f"{teacher} is a huggingface model directory (MarianMTModel): word-level KD from a Hugging Face or "
            f"CTranslate2 teacher is not supported yet") in error
    assert f"lskd-distill-corpus --teacher-path {teacher}" in error
    with pytest.raises(TeacherError, match="word-level KD from a Hugging Face"):  # the criterion's reading
        split_teacher_paths(f"{tmp_path / 'other.pt'}:{teacher}")
    assert split_teacher_paths(str(teacher), fairseq_only=False) == [str(teacher)]


@pytest.mark.parametrize("flags, message", [
    (["--engine", "fairseq"], "--engine fairseq runs fairseq checkpoints; {teacher} is a huggingface teacher "
                              "(MarianMTModel): use --engine ctranslate2 or transformers"),
    (["--ctranslate2-model", "export"], "--ctranslate2-model is an lskd-export of a fairseq checkpoint; {teacher} is "
                                        "a huggingface teacher"),
    (["--engine", "transformers", "--quantization", "int8"], "--quantization and --ctranslate2-model belong to "
                                                             "--engine ctranslate2"),
])
def test_an_engine_that_cannot_run_a_hugging_face_teacher_is_refused(tmp_path, capsys, flags, message):
    teacher = stand_in_marian(tmp_path / "opus-mt-de-en")
    argv = ["--data", str(fake_prepared(tmp_path / "data")), "--teacher-path", str(teacher),
            "--out", str(tmp_path / "out")]
    assert distill_main(argv + flags) == 2
    assert message.format(teacher=teacher) in one_error_line(capsys, "lskd-distill-corpus")
    assert not (tmp_path / "out").exists()
    if flags[0] == "--engine" and flags[1] == "fairseq":  # lskd-eval bleu reads the teacher alike
        assert eval_main(["bleu", "--checkpoint", str(teacher), "--data", str(tmp_path / "data"), "--out",
                          str(tmp_path / "eval"), *flags]) == 2
        assert message.format(teacher=teacher) in one_error_line(capsys, "lskd-eval")


@pytest.mark.parametrize("flags, message", [
    (["--engine", "transformers"], "--engine transformers runs Hugging Face teachers; {teacher} is a fairseq "
                                   "checkpoint"),
    (["--teacher-src-lang", "de", "--teacher-tgt-lang", "en"],
     "--teacher-src-lang and --teacher-tgt-lang are a multilingual Hugging Face or CTranslate2 teacher's; "
     "{teacher} is a fairseq checkpoint"),
    ([], "an ensemble (--teacher-path a:b) is of fairseq checkpoints; {hf} is a huggingface model directory"),
])
def test_a_fairseq_teacher_takes_neither_the_transformers_engine_nor_language_codes(tmp_path, capsys, flags, message):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"never read")
    hf = stand_in_marian(tmp_path / "opus-mt-de-en")
    path = f"{teacher}:{hf}" if not flags else str(teacher)
    assert distill_main(["--data", str(fake_prepared(tmp_path / "data")), "--teacher-path", path,
                         "--out", str(tmp_path / "out"), *flags]) == 2
    assert message.format(teacher=teacher, hf=hf) in one_error_line(capsys, "lskd-distill-corpus")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("punctuation", [True, False])
def test_a_teachers_output_is_normalised_as_the_corpus_was_prepared(tmp_path, punctuation):
    data = fake_prepared(tmp_path / "data")
    record = json.loads((data / "prep.json").read_text())
    record["options"]["normalize_punctuation"] = punctuation
    (data / "prep.json").write_text(json.dumps(record))
    output = "\u00abCafe\u0301\u00bb  ,  he said \u2013 \u201cyes\u201d ."  # decomposed, typographic quotes
    expected = as_prepared_target(output) if punctuation else "\u00abCaf\u00e9\u00bb , he said \u2013 \u201cyes\u201d ."
    assert student_normaliser(load_prepared(data))(output) == expected
    assert (as_prepared_target(output) == expected) == punctuation  # Moses changes this line: the choice shows


# --- distilling the tiny Marian ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled(bible_slice, marian, tmp_path_factory):  # noqa: F811
    """The validation split (Ruth and Philemon) distilled by the Marian with each engine."""
    root = tmp_path_factory.mktemp("hf-distill")
    outs = {}
    for engine in ("transformers", "ctranslate2"):
        outs[engine] = root / engine
        assert distill_main(["--data", str(bible_slice), "--teacher-path", str(marian), "--out", str(outs[engine]),
                             "--engine", engine, "--batch-size", BATCH[engine], *DISTIL]) == 0
    return outs


@pytest.fixture(scope="module")
def generated(bible_slice, marian):  # noqa: F811
    """``{id: output}``: ``generate`` on each raw validation source alone that the teacher's 64 positions
    hold, called as its documentation shows (beam 2, 20 tokens and ``</s>``): the reference output."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(marian)
    sources = (bible_slice / "raw" / "valid.de").read_text(encoding="utf-8").splitlines()
    return {i: reference_generate(marian, [s], beam=2, lenpen=1.0, max_new_tokens=21)[0][0]
            for i, s in enumerate(sources) if len(tokenizer(s)["input_ids"]) <= 64}


def chunk_rows(out: Path) -> list[dict]:
    return [json.loads(line) for chunk in sorted((out / "chunks").glob("*.jsonl"))
            for line in chunk.read_text(encoding="utf-8").splitlines()]


def as_prepared_target(text: str) -> str:
    """What lskd-prepare makes of an English line (Moses punctuation normalisation), from NFC text with
    single spaces: computed here without LSKD's code."""
    from sacremoses import MosesPunctNormalizer

    return MosesPunctNormalizer(lang="en").normalize(" ".join(unicodedata.normalize("NFC", text).split())).strip()


@pytest.mark.slow
def test_every_line_is_accounted_for_with_either_engine(bible_slice, distilled, marian):  # noqa: F811
    sentences = len((bible_slice / "raw" / "valid.de").read_text(encoding="utf-8").splitlines())
    for engine, out in distilled.items():
        manifest = json.loads((out / "distill.json").read_text())
        counts = manifest["counts"]
        assert counts["inputs"] == sentences and sum(n for k, n in counts.items() if k not in ("inputs", "outputs")) \
            == sentences, counts
        assert counts["too_long_copied_reference"] > 0 and counts["decoded"] > 0  # the teacher's 64 positions
        assert counts["outputs"] == len((out / "raw" / "train.en").read_text(encoding="utf-8").splitlines())
        assert [r["id"] for r in chunk_rows(out)] == list(range(sentences))
        teacher = manifest["teachers"][0]
        assert (teacher["kind"], teacher["architecture"]) == ("huggingface", "MarianMTModel")
        assert teacher["path"] == str(marian.resolve()) and "model.safetensors" in teacher["files"]["weights"]
        assert manifest["engine"]["engine"] == engine == manifest["options"]["engine"]
        assert manifest["options"]["quantization"] == (None if engine == "transformers" else "float32")


@pytest.mark.slow
def test_the_transformers_engine_gives_the_students_pieces_of_generates_output(bible_slice, distilled, generated):
    import sentencepiece as spm

    student = spm.SentencePieceProcessor(model_file=str(bible_slice / "spm.model"))
    decoded = [r for r in chunk_rows(distilled["transformers"]) if r["status"] == "decoded"]
    assert len(decoded) > 20
    assert [r["pieces"] for r in decoded] == \
        [" ".join(student.encode(as_prepared_target(generated[r["id"]]), out_type=str)) for r in decoded]
    assert len({r["pieces"] for r in decoded}) > len(decoded) // 2, "the teacher gives (nearly) one output for all"


@pytest.mark.slow
def test_ctranslate2_float32_agrees_with_the_transformers_engine_on_99_percent(distilled):
    reference, ours = (chunk_rows(distilled[engine]) for engine in ("transformers", "ctranslate2"))
    assert [r["status"] for r in reference] == [r["status"] for r in ours]
    decoded = [(a["pieces"], b["pieces"]) for a, b in zip(reference, ours) if a["status"] == "decoded"]
    same = sum(a == b for a, b in decoded)
    assert same >= 0.99 * len(decoded), f"{same} of {len(decoded)} identical"


@pytest.mark.slow
def test_resuming_with_another_teacher_or_language_pair_is_refused(bible_slice, marian, m2m, tmp_path,  # noqa: F811
                                                                   capsys):
    from safetensors.torch import load_file, save_file

    def run(teacher: Path, out: Path, *extra: str) -> int:
        return distill_main(["--data", str(bible_slice), "--teacher-path", str(teacher), "--out", str(out),
                             *DISTIL, "--max-chunks", "1", *extra])

    assert run(marian, tmp_path / "marian") == 0
    capsys.readouterr()
    retrained = tmp_path / "retrained"  # the same files but one weight
    shutil.copytree(marian, retrained)
    weights = load_file(retrained / "model.safetensors")
    name = next(n for n in weights if n.endswith("fc1.weight"))
    save_file(weights | {name: weights[name] + 0.01}, retrained / "model.safetensors", metadata={"format": "pt"})
    assert run(retrained, tmp_path / "marian") == 2
    error = one_error_line(capsys, "lskd-distill-corpus")
    assert "holds a distillation with other options or inputs" in error
    assert "the teacher's sha256" in error
    capsys.readouterr()

    assert run(m2m, tmp_path / "m2m") == 2  # a multilingual teacher without its codes, before --out is made
    assert "is multilingual: give its source and target language codes (--teacher-src-lang, --teacher-tgt-lang), " \
           "e.g. af, am, ar" in one_error_line(capsys, "lskd-distill-corpus")
    assert not (tmp_path / "m2m").exists()
    # the tiny M2M-100's vocab.json lacks the rows of its made-up words, which CTranslate2's converter refuses
    assert run(m2m, tmp_path / "m2m", "--engine", "transformers", "--teacher-src-lang", "de", "--teacher-tgt-lang",
               "en") == 0
    capsys.readouterr()
    assert run(m2m, tmp_path / "m2m", "--engine", "transformers", "--teacher-src-lang", "de", "--teacher-tgt-lang",
               "fr") == 2
    assert "--teacher-tgt-lang" in one_error_line(capsys, "lskd-distill-corpus")


@pytest.mark.slow
def test_lskd_eval_bleu_scores_the_teacher_on_the_raw_references(bible_slice, marian, generated,  # noqa: F811
                                                                  tmp_path):
    import sacrebleu

    assert eval_main(["bleu", "--checkpoint", str(marian), "--data", str(bible_slice), "--split", "valid",
                      "--out", str(tmp_path), "--too-long", "skip", *SEARCH]) == 0  # CTranslate2, float32
    record = json.loads((tmp_path / "bleu-valid-ctranslate2-float32.json").read_text())
    references = (bible_slice / "raw" / "valid.en").read_text(encoding="utf-8").splitlines()
    skipped = set(record["too_long"]["skipped_ids"])
    kept = [i for i in range(len(references)) if i not in skipped]
    assert skipped and kept == sorted(generated) and record["sentences"] == len(kept)
    hypotheses = (tmp_path / "valid-ctranslate2-float32.hyp.en").read_text(encoding="utf-8").splitlines()
    same = sum(h == " ".join(generated[i].split()) for h, i in zip(hypotheses, kept))
    assert len(hypotheses) == len(kept) and same >= 0.99 * len(kept), f"{same} of {len(kept)} as generate's"
    expected = sacrebleu.corpus_bleu(hypotheses, [[references[i] for i in kept]]).score
    assert record["scores"]["bleu"]["score"] == round(expected, 2)
    assert (record["checkpoint"]["kind"], record["checkpoint"]["architecture"]) == ("huggingface", "MarianMTModel")
    assert len(record["checkpoint"]["sha256"]) == 64 and "model.safetensors" in record["checkpoint"]["files"]["weights"]
