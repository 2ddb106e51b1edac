"""Sentences longer than a model accepts: one decision (fairseq's filter), one policy per command.

Fast tests build a few binarized sentence pairs of known lengths; the slow ones train tiny teachers
with small ``--max-source-positions``/``--max-target-positions`` on the Bible slice, whose verses are
longer, and check the top-k cache, a student trained on it, ``lskd-eval bleu`` and ``stability``.
"""
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import REPO, train_tiny
from lskd.errors import name_ids
from lskd.too_long import LengthCheck, TooLongError

# lengths in tokens, end of sentence included (what fairseq's dataset sizes hold)
SOURCE = [3, 6, 2, 9, 4, 5]
TARGET = [4, 2, 7, 3, 5, 5]


def binarize(directory, lang, lengths, split="train", vocabulary=5):
    """A binarized side of ``split`` with sentences of the given lengths (the last token is EOS)."""
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    dictionary = Dictionary()
    for i in range(vocabulary):
        dictionary.add_symbol(f"w{i}")
    dictionary.save(str(directory / f"dict.{lang}.txt"))
    prefix = directory / f"{split}.de-en.{lang}"
    builder = MMapIndexedDatasetBuilder(f"{prefix}.bin", dtype=np.int32)
    for length in lengths:
        builder.add_item(torch.tensor([dictionary.index("w0")] * (length - 1) + [dictionary.eos()], dtype=torch.int32))
    builder.finalize(f"{prefix}.idx")


def model_accepting(source, target):
    return SimpleNamespace(max_positions=lambda: (source, target))


@pytest.fixture
def task(tmp_path):
    from fairseq_plugins.tasks import translation_task

    binarize(tmp_path, "de", SOURCE)
    binarize(tmp_path, "en", TARGET)
    return translation_task(tmp_path, "de", "en", max_positions=(8, 100))


def test_accepted_positions_are_the_tightest_of_task_and_models(task):
    from fairseq_plugins.tasks import accepted_positions

    assert accepted_positions(task, [model_accepting(100, 6)]) == (8, 6)  # the task's source limit, the model's target
    assert accepted_positions(task, [model_accepting(5, 100), model_accepting(100, 6)]) == (5, 6)  # an ensemble


def test_too_long_on_either_side_is_fairseqs_decision(task):
    from fairseq_plugins.tasks import check_lengths

    lengths = check_lengths(task, [model_accepting(5, 6)], "train")
    expected = tuple(i for i in range(len(SOURCE)) if SOURCE[i] > 5 or TARGET[i] > 6)
    assert lengths.too_long == expected == (1, 2, 3)
    assert (lengths.max_positions, lengths.sentences, lengths.kept) == ((5, 6), 6, 3)
    # what fairseq itself batches with these limits: the same sentences are missing
    batches = task.get_batch_iterator(task.dataset("train"), max_tokens=100, max_positions=(5, 6),
                                      ignore_invalid_inputs=True).next_epoch_itr(shuffle=False)
    batched = sorted(i for sample in batches for i in sample["id"].tolist())
    assert batched == sorted(set(range(6)) - set(expected))
    # source side only (sequence-level KD decodes sources; the reference length does not matter)
    assert check_lengths(task, [], "train", max_positions=(5, None)).too_long == (1, 3)


def test_split_batches_leaves_out_exactly_the_too_long_and_batches_a_sentence_above_max_tokens(task):
    from fairseq_plugins.tasks import check_lengths, split_batches

    lengths = check_lengths(task, [model_accepting(5, 6)], "train")
    batches = list(split_batches(task, lengths, max_tokens=2, device=torch.device("cpu"), desc="test"))
    assert sorted(i for sample in batches for i in sample["id"].tolist()) == [0, 4, 5]  # fairseq alone would stop: 5 > 2


def test_the_error_names_count_limits_and_first_ids_and_the_policy_flag():
    lengths = LengthCheck("test", (40, 30), 100, tuple(range(3, 53)))
    with pytest.raises(TooLongError) as error:
        lengths.enforce("error", hint="pass --too-long skip")
    message = str(error.value)
    assert message.startswith("50 of 100 'test' sentences are longer than the model accepts "
                              "(source > 40 or target > 30 tokens, end of sentence included): ids 3, 4, 5,")
    assert message.endswith("21, 22 and 30 more; pass --too-long skip") and "\n" not in message
    lengths.enforce("skip", hint="unused")  # the other policy leaves them to the caller
    LengthCheck("test", (40, 30), 100, ()).enforce("error", hint="unused")  # nothing too long: no error
    with pytest.raises(TooLongError, match="'drop' is not one of error, skip"):
        lengths.enforce("drop", hint="unused")
    assert lengths.record("skip") == {"policy": "skip", "max_source_positions": 40, "max_target_positions": 30,
                                      "sentences": 100, "skipped": 50, "skipped_ids": list(range(3, 53))}
    assert lengths.left_out_warning().startswith("50 of 100 'test' sentences used: 50 longer than the model accepts")
    assert LengthCheck("train", (40, None), 10, (1,)).limits == "source > 40 tokens"


def test_name_ids_shows_the_first_twenty_and_how_many_more():
    assert name_ids([4, 7]) == "4, 7"
    assert name_ids(range(25)) == ", ".join(map(str, range(20))) + " and 5 more"
    assert name_ids([]) == ""


# -- slow: real teachers, caches, students and evaluations ------------------------------------------

LIMIT = 60  # the Bible slice has verses longer than this on both sides, in every split


def sizes(data, split):
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    sides = [MMapIndexedDataset(str(data / "bin" / f"{split}.de-en.{lang}")) for lang in ("de", "en")]
    return [np.array(side.sizes) for side in sides]  # copied while the memory maps are open


def too_long(data, split, limit=LIMIT):
    """Ids longer than ``limit`` on either side, straight from the binarized sizes."""
    source, target = sizes(data, split)
    return [i for i in range(len(source)) if source[i] > limit or target[i] > limit]


@pytest.fixture(scope="module")
def short_teacher(bible_slice, tmp_path_factory):
    """A teacher that accepts LIMIT positions a side (fairseq-train leaves longer training pairs out)."""
    save_dir = tmp_path_factory.mktemp("short-teacher")
    train_tiny(bible_slice / "bin", save_dir, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
               "--max-source-positions", str(LIMIT), "--max-target-positions", str(LIMIT),
               "--skip-invalid-size-inputs-valid-test")
    return save_dir / "checkpoint_last.pt"


def one_error_line(capsys, prog):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err[-1]) and err[-1].startswith(f"{prog}: error: ") and "Traceback" not in "\n".join(err), err[-3:]
    return err[-1]


@pytest.mark.slow
def test_a_top_k_cache_skips_what_fairseq_train_skips_and_a_student_trains_on_it(bible_slice, short_teacher, tmp_path,
                                                                                 capsys):
    from data_prep.dump_topk import main as dump_main
    from lskd.topk_cache import TopKCache, TopKCacheError

    data = bible_slice / "bin"
    args = [str(data), "--teacher-path", str(short_teacher), "--k", "4"]
    assert dump_main([*args, "--out", str(tmp_path / "cache")]) == 0
    for split in ("train", "valid"):
        manifest = json.loads((tmp_path / "cache" / split / "manifest.json").read_text())
        expected = too_long(bible_slice, split)
        assert 0 < len(expected) < manifest["sentences"]
        assert manifest["skipped"]["ids"] == expected and manifest["skipped"]["count"] == len(expected)
        assert manifest["too_long"] == {"policy": "skip", "max_source_positions": LIMIT, "max_target_positions": LIMIT}
        target = sizes(bible_slice, split)[1]
        assert manifest["tokens"] == int(target.sum() - target[expected].sum())  # no space for skipped sentences
        cache = TopKCache(tmp_path / "cache" / split)
        with pytest.raises(TopKCacheError, match=rf"sentence {expected[0]} has no entry .* skipped when the cache was "
                                                 rf"built \(source > {LIMIT} or target > {LIMIT} tokens\)"):
            cache.lookup([expected[0]], [int(target[expected[0]])], int(target[expected[0]]))
    printed = capsys.readouterr().out
    assert f"train: {len(too_long(bible_slice, 'train'))} sentences skipped" in printed
    assert f"--max-source-positions {LIMIT} --max-target-positions {LIMIT} --skip-invalid-size-inputs-valid-test" in printed

    # a batch smaller than the longest kept sentence: each long one is batched alone, the entries are the same
    assert dump_main([*args, "--out", str(tmp_path / "small"), "--splits", "valid", "--max-tokens", "8"]) == 0
    big, small = TopKCache(tmp_path / "cache" / "valid"), TopKCache(tmp_path / "small" / "valid")
    assert np.array_equal(big.offsets, small.offsets)
    assert np.allclose(np.asarray(big.probs, np.float32), np.asarray(small.probs, np.float32), atol=2e-3)

    # the other policy stops with one line naming the ids
    assert dump_main([*args, "--out", str(tmp_path / "strict"), "--too-long", "error"]) == 2
    line = one_error_line(capsys, "lskd-dump-topk")
    assert f"of 300 'train' sentences are longer than the model accepts (source > {LIMIT} or target > {LIMIT}" in line
    assert f"ids {name_ids(too_long(bible_slice, 'train'))}; pass --too-long skip" in line

    student = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5",
               "--teacher-topk-cache", str(tmp_path / "cache")]
    # fairseq-train's default limits (1024) would batch skipped sentences: refused at start, naming the flags
    refused = subprocess.run([sys.executable, "-m", "fairseq_cli.train", str(data), "--user-dir",
                              str(REPO / "fairseq_plugins"), "--arch", "transformer", "--cpu", "--max-tokens", "1024",
                              "--optimizer", "adam", "--save-dir", str(tmp_path / "refused"), *student],
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert (f"pass --max-source-positions {LIMIT} --max-target-positions {LIMIT} --skip-invalid-size-inputs-valid-test"
            in refused.stderr), refused.stderr[-2000:]
    # with them, two epochs: every kept sentence is looked up, no skipped one is ever asked for
    result = train_tiny(data, tmp_path / "student", *student, "--max-source-positions", str(LIMIT),
                        "--max-target-positions", str(LIMIT), "--skip-invalid-size-inputs-valid-test", "--max-epoch", "2",
                        updates=1000)
    log = result.stdout + result.stderr
    for split in ("train", "valid"):  # fairseq's own count of what it leaves out is the cache's
        assert f"{len(too_long(bible_slice, split))} samples have invalid sizes and will be skipped" in log
    assert "done training" in log and re.search(r"\| valid \|.*kd_loss [\d.]+", log)


@pytest.mark.slow
def test_bleu_and_stability_name_the_too_long_sentences_or_leave_them_out_on_request(bible_slice, short_teacher,
                                                                                      tmp_path, capsys):
    from eval.bleu import format_table, score_files
    from eval.cli import main as eval_main
    from lskd.corpus import read_lines

    expected = too_long(bible_slice, "valid")
    kept = [i for i in range(110) if i not in set(expected)]
    common = ["--checkpoint", str(short_teacher), "--data", str(bible_slice), "--split", "valid", "--out", str(tmp_path)]
    for command in (["bleu", "--beam", "1"], ["stability"]):
        assert eval_main([*command, *common]) == 2
        line = one_error_line(capsys, "lskd-eval")
        assert f"{len(expected)} of 110 'valid' sentences are longer than the model accepts" in line
        assert f"ids {name_ids(expected)}; pass --too-long skip" in line

    assert eval_main(["bleu", "--beam", "1", *common, "--too-long", "skip"]) == 0
    record = json.loads((tmp_path / "bleu-valid.json").read_text())
    assert record["sentences"] == len(kept) and record["too_long"]["skipped_ids"] == expected
    assert record["warnings"] == [f"{len(kept)} of 110 'valid' sentences used: {len(expected)} longer than the model "
                                  f"accepts (source > {LIMIT} or target > {LIMIT} tokens) left out, ids {name_ids(expected)}"]
    references = read_lines(bible_slice / "raw" / "valid.en")
    assert read_lines(record["references_file"]) == [references[i] for i in kept]
    assert len(read_lines(record["hypotheses_file"])) == len(kept)
    rescored = score_files(record["hypotheses_file"], record["references_file"], "en")
    assert rescored["bleu"]["score"] == record["scores"]["bleu"]["score"]
    assert record["warnings"][0] in format_table([tmp_path / "bleu-valid.json"])

    assert eval_main(["stability", *common, "--too-long", "skip"]) == 0
    record = json.loads((tmp_path / "stability-valid.json").read_text())
    target = sizes(bible_slice, "valid")[1]
    assert record["positions"] == int(target[kept].sum()) and record["sentences"] == len(kept)
    assert record["too_long"]["skipped_ids"] == expected and record["warnings"]

    words = [line.split()[0] for line in read_lines(bible_slice / "bin" / "dict.en.txt") if line.startswith("▁")][:3]
    picture = ["project", "--checkpoints", str(short_teacher), "--data", str(bible_slice), "--split", "valid",
               "--tokens", *words, "--out", str(tmp_path / "p.png")]
    capsys.readouterr()
    assert eval_main([*picture, "--too-long", "skip"]) == 0  # no record: a warning names what the picture leaves out
    assert (f"warning: {len(expected)} of 110 sentences of valid are too long for {short_teacher} and left out of "
            f"its panel: ids {name_ids(expected)}") in capsys.readouterr().out
