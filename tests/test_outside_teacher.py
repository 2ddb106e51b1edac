"""Distilling a teacher trained elsewhere: its own SentencePiece model, separate dictionaries, another architecture.

The "outside" teachers are built here without lskd-prepare: a SentencePiece model trained with the
sentencepiece API on one slice of the Bible, ``fairseq-preprocess`` with separate dictionaries, and
``fairseq-train`` with a post-norm ``transformer_iwslt_de_en`` and an ``lstm``. Another slice is
then prepared with ``lskd-prepare text --teacher`` and a pre-norm student (the quickstart's) is
distilled from them: online, from an ensemble of both, from a top-k cache, and on a sequence-level
KD corpus; ``lskd-eval`` scores it on the separate-dictionary data.
"""
import json
import re
import shutil
from collections import Counter

import pytest

from conftest import TINY_TRANSFORMER, run_module, train_tiny

pytestmark = pytest.mark.slow

SRC, TGT = "de", "en"
#: Post-norm, separate embeddings, a feed-forward layer 4x the width (the student's is 2x).
IWSLT_TEACHER = ["--arch", "transformer_iwslt_de_en", "--encoder-layers", "1", "--decoder-layers", "1",
                 "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "128",
                 "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
LSTM_TEACHER = ["--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                "--encoder-hidden-size", "32", "--decoder-embed-dim", "32", "--decoder-hidden-size", "32",
                "--decoder-out-embed-dim", "32"]
#: The quickstart's student, pre-norm; separate dictionaries share only the decoder's embeddings.
STUDENT = [flag for flag in TINY_TRANSFORMER if flag != "--share-all-embeddings"] + [
    "--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed"]
KD = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5"]


def write_side(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def normalised(lines, lang):
    from sacremoses import MosesPunctNormalizer

    normalizer = MosesPunctNormalizer(lang=lang)
    return [normalizer.normalize(line).strip() for line in lines]


@pytest.fixture(scope="module")
def verses():
    from data_prep.bible import extract_parallel, fetch_bible_db

    return extract_parallel(fetch_bible_db(), "e", "k")  # Elberfelder -> King James


@pytest.fixture(scope="module")
def outside(verses, tmp_path_factory):
    """Two teachers trained on verses 0-399, the way a fairseq user outside LSKD would, and the
    iwslt teacher published as a model directory (model.pt, dict.de.txt, dict.en.txt, sentencepiece.bpe.model)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("outside")
    train, valid = verses["train"][:400], verses["valid"][:40]
    spm.SentencePieceTrainer.train(sentence_iterator=iter([s for pair in train for s in pair]),
                                   model_prefix=str(root / "sentencepiece.bpe"), vocab_size=400, model_type="bpe",
                                   minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(root / "sentencepiece.bpe.model"))
    (root / "spm").mkdir()
    for split, pairs in (("train", train), ("valid", valid)):
        for side, lang in enumerate((SRC, TGT)):
            write_side(root / "spm" / f"{split}.{lang}", [" ".join(p) for p in processor.encode(
                [pair[side] for pair in pairs], out_type=str)])
    run_module("fairseq_cli.preprocess", "--source-lang", SRC, "--target-lang", TGT, "--trainpref",
               str(root / "spm" / "train"), "--validpref", str(root / "spm" / "valid"), "--destdir",
               str(root / "data-bin"), "--workers", "1")
    teachers = {}
    for name, arch in (("iwslt", IWSLT_TEACHER), ("lstm", LSTM_TEACHER)):
        train_tiny(root / "data-bin", root / name, "--criterion", "label_smoothed_cross_entropy",
                   "--label-smoothing", "0.1", updates=6, arch=arch)
        teachers[name] = root / name / "checkpoint_last.pt"
    model = root / "wmt-style"
    model.mkdir()
    shutil.copy(teachers["iwslt"], model / "model.pt")
    for name in (f"dict.{SRC}.txt", f"dict.{TGT}.txt"):
        shutil.copy(root / "data-bin" / name, model / name)
    shutil.copy(root / "sentencepiece.bpe.model", model / "sentencepiece.bpe.model")
    return {"model_dir": model, **teachers}


@pytest.fixture(scope="module")
def student_data(verses, outside, tmp_path_factory):
    """Verses 1000-1299 (and 30 valid, 30 test), prepared with ``lskd-prepare text --teacher``."""
    root = tmp_path_factory.mktemp("student")
    slices = {"train": verses["train"][1000:1300], "valid": verses["valid"][40:70], "test": verses["test"][:30]}
    for split, pairs in slices.items():
        for side, lang in enumerate((SRC, TGT)):
            write_side(root / f"{split}.{lang}", [pair[side] for pair in pairs])
    run_module("data_prep.cli", "text", "--src", SRC, "--tgt", TGT, "--out", str(root / "data"),
               "--teacher", str(outside["model_dir"]),
               *[f"--{split}={root / split}" for split in slices], "--workers", "1")
    return root / "data", slices


def test_the_student_corpus_is_cut_and_numbered_as_the_teacher_would(outside, student_data):
    import sentencepiece as spm
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    from lskd.prepared import load_prepared
    from lskd.provenance import sha256_file

    data, slices = student_data
    model = outside["model_dir"]
    prepared = load_prepared(data)
    processor = spm.SentencePieceProcessor(model_file=str(model / "sentencepiece.bpe.model"))
    assert prepared.spm_model.read_bytes() == (model / "sentencepiece.bpe.model").read_bytes()
    assert not prepared.joined_dictionary
    for lang in (SRC, TGT):
        assert prepared.dictionary(lang).read_bytes() == (model / f"dict.{lang}.txt").read_bytes()
    assert prepared.dictionary(SRC).read_bytes() != prepared.dictionary(TGT).read_bytes()
    for split, pairs in slices.items():
        for side, lang in enumerate((SRC, TGT)):
            lines = normalised([pair[side] for pair in pairs], lang)
            want = [" ".join(p) for p in processor.encode(lines, out_type=str)]
            assert prepared.pieces(split, lang).read_text(encoding="utf-8").splitlines() == want, (split, lang)
            # and the token ids are those of the teacher's own dictionary
            dictionary = Dictionary.load(str(model / f"dict.{lang}.txt"))
            binarized = MMapIndexedDataset(str(prepared.bin_dir / f"{split}.{SRC}-{TGT}.{lang}"))
            assert [binarized[i].tolist() for i in range(len(binarized))] == [
                dictionary.encode_line(line, add_if_not_exist=False).tolist() for line in want]

    record = prepared.record
    vocabulary = record["vocabulary"]
    assert vocabulary["origin"] == "teacher" and vocabulary["teacher"] == str((model / "model.pt").resolve())
    for name, path in (("spm_model", model / "sentencepiece.bpe.model"), ("src_dict", model / f"dict.{SRC}.txt"),
                       ("tgt_dict", model / f"dict.{TGT}.txt")):
        assert vocabulary[name] == {"path": str(path.resolve()), "sha256": sha256_file(path)}
    assert record["options"]["vocab_size"] is None
    # <unk>: pieces of the prepared text that are not symbols of the teacher's dictionary, counted here
    for split in slices:
        for side, lang in (("source", SRC), ("target", TGT)):
            symbols = {line.rsplit(" ", 1)[0] for line in (model / f"dict.{lang}.txt").read_text().splitlines()}
            pieces = Counter(p in symbols for line in prepared.pieces(split, lang).read_text().splitlines()
                             for p in line.split())
            assert record["outputs"]["unk"][split][side]["unk"] == pieces[False], (split, side)
            assert record["outputs"]["unk"][split][side]["pieces"] == pieces[False] + pieces[True]


@pytest.fixture(scope="module")
def topk_cache(outside, student_data, tmp_path_factory):
    from data_prep.dump_topk import main as dump_main

    cache = tmp_path_factory.mktemp("cache")
    data, _ = student_data
    assert dump_main([str(data / "bin"), "--teacher-path", f"{outside['iwslt']}:{outside['lstm']}", "--k", "4",
                      "--out", str(cache)]) == 0
    return cache


@pytest.mark.parametrize("teacher", ["iwslt", "lstm", "ensemble", "cache"])
def test_a_prenorm_student_learns_from_a_teacher_of_another_architecture(teacher, outside, student_data, topk_cache,
                                                                         tmp_path):
    data, _ = student_data
    teacher_args = {
        "iwslt": ["--teacher-path", str(outside["iwslt"])],
        "lstm": ["--teacher-path", str(outside["lstm"])],
        "ensemble": ["--teacher-path", f"{outside['iwslt']}:{outside['lstm']}"],
        "cache": ["--teacher-topk-cache", str(topk_cache)],
    }[teacher]
    result = train_tiny(data / "bin", tmp_path / "student", *KD, *teacher_args, updates=3, arch=STUDENT)
    log = result.stdout + result.stderr
    train_line = [line for line in log.splitlines() if "| train |" in line][-1]
    valid_line = [line for line in log.splitlines() if "| valid |" in line][-1]
    for metric in ("kd_loss", "nll_loss"):
        assert re.search(rf"\b{metric} [\d.]+", train_line), (teacher, metric, train_line)
    for metric in ("kd_loss", "teacher_entropy", "teacher_agree"):  # the teacher's diagnostics: at validation
        assert re.search(rf"\b{metric} [\d.]+", valid_line), (teacher, metric, valid_line)
    assert "no target dictionary found" not in log and "no source dictionary found" not in log


def test_online_kd_scores_are_the_teachers_own_on_its_own_encoding(outside, student_data):
    """The criterion's teacher distribution on a student batch equals the teacher loaded by fairseq
    on its own data directory, fed that batch: ids mean the same pieces to both."""
    import torch
    from fairseq import checkpoint_utils

    from conftest import REPO
    from fairseq_plugins.components import build_training_components
    from fairseq_plugins.teacher import teacher_log_probs

    data, _ = student_data
    _, task, _, criterion = build_training_components(
        [str(data / "bin"), "--user-dir", str(REPO / "fairseq_plugins"), *STUDENT, "--cpu", "--optimizer", "adam",
         "--lr", "1e-3", "--max-tokens", "1024", *KD, "--teacher-path", str(outside["lstm"])])
    task.load_dataset("valid")
    sample = next(iter(task.get_batch_iterator(task.dataset("valid"), max_tokens=1024).next_epoch_itr(shuffle=False)))
    (own,), _ = checkpoint_utils.load_model_ensemble([str(outside["lstm"])])  # built on the teacher's data-bin
    own.eval()
    assert type(own).__name__ == "LSTMModel" and type(criterion._teachers[0]).__name__ == "LSTMModel"
    with torch.no_grad():
        want = own.get_normalized_probs(own(**sample["net_input"]), log_probs=True)
    assert torch.allclose(teacher_log_probs(criterion._teachers, sample["net_input"]), want, atol=1e-6)


def test_sequence_level_kd_and_evaluation_on_separate_dictionaries(verses, outside, student_data, tmp_path):
    from data_prep.distill import main as distill_main
    from eval.cli import main as eval_main
    from lskd.prepared import load_prepared

    data, slices = student_data
    prepared = load_prepared(data)
    out = tmp_path / "distilled"
    # monolingual German: verses 2000-2199, an empty line, and one of the student corpus's own sources
    monolingual = [pair[0] for pair in verses["train"][2000:2200]] + ["", slices["train"][0][0]]
    write_side(tmp_path / "mono.de", monolingual)
    assert distill_main(["--data", str(data), "--teacher-path", str(outside["lstm"]), "--out", str(out),
                         "--split", "train", "--beam", "1", "--workers", "1", "--source-text",
                         str(tmp_path / "mono.de")]) == 0
    for lang in (SRC, TGT):  # binarized with the teacher's dictionaries, byte for byte
        assert (out / "bin" / f"dict.{lang}.txt").read_bytes() == prepared.dictionary(lang).read_bytes()
    manifest = json.loads((out / "distill.json").read_text())
    # every line in is a pair out but the empty one: the parallel split's, then the text's
    assert manifest["counts"] == {"inputs": len(slices["train"]) + 202, "outputs": len(slices["train"]) + 201,
                                  "decoded": len(slices["train"]) + 201, "empty_source_dropped": 1}
    assert manifest["source_text"][0]["in_training_sources"] == 1
    assert (out / "raw" / f"train.{SRC}").read_text(encoding="utf-8").splitlines() == \
        [pair[0] for pair in slices["train"]] + monolingual[:200] + monolingual[201:]

    student = tmp_path / "student"
    train_tiny(out / "bin", student, "--criterion", "label_smoothed_cross_entropy", updates=3, arch=STUDENT)
    checkpoint = student / "checkpoint_last.pt"
    assert eval_main(["bleu", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "eval"),
                      "--beam", "1"]) == 0
    assert json.loads((tmp_path / "eval" / "bleu-test.json").read_text())["sentences"] == len(slices["test"])
    assert eval_main(["stability", "--checkpoint", str(checkpoint), "--data", str(data),
                      "--out", str(tmp_path / "eval")]) == 0
    frequent = [line.split()[0] for line in prepared.dictionary(TGT).read_text(encoding="utf-8").splitlines()
                if line.startswith("\u2581")][:3]
    # one panel per checkpoint: the pre-norm student and the lstm teacher (its output layer is fc_out)
    assert eval_main(["project", "--checkpoints", str(checkpoint), str(outside["lstm"]), "--data", str(data),
                      "--tokens", *frequent, "--out", str(tmp_path / "picture.png")]) == 0
    assert (tmp_path / "picture.png").stat().st_size > 0
