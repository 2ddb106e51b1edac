"""lskd-distill-corpus: one output per input in order, resume, shards, dictionaries, policies."""
import json
import subprocess
import sys

import pytest

from conftest import run_module, train_tiny
from data_prep.distill import DistillOptions, chunk_ranges, collect, main as distill_main, run_chunks, shard_chunks
from lskd.decoding import Hypothesis
from lskd.scoring import bleu_metric

FAST = ["--beam", "2", "--max-len-a", "0", "--max-len-b", "5", "--chunk-size", "300", "--batch-size", "128",
        "--workers", "1"]


@pytest.fixture(scope="module")
def slice_1001(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    run_module("data_prep.cli", "bible", "--out", str(data), "--limit-train", "1001", "--vocab-size", "600")
    train_tiny(data / "bin", root / "teacher", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1")
    return data, root / "teacher" / "checkpoint_last.pt"


@pytest.fixture(scope="module", params=["fairseq", "ctranslate2"])
def engine(request):
    """Every contract holds for both engines."""
    return request.param


@pytest.fixture(scope="module")
def uninterrupted(slice_1001, engine, tmp_path_factory):
    data, teacher = slice_1001
    out = tmp_path_factory.mktemp("full") / "out"
    assert distill_main(["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST,
                         "--engine", engine]) == 0
    return out


def files(out):
    return {name: (out / name).read_bytes() for name in ("spm/train.en", "spm/train.de", "raw/train.en",
                                                          "bin/train.de-en.en.bin", "bin/train.de-en.en.idx")}


@pytest.mark.slow
def test_one_line_per_input_in_input_order(slice_1001, engine, uninterrupted):
    data, _ = slice_1001
    manifest = json.loads((uninterrupted / "distill.json").read_text())
    assert manifest["engine"]["name"] == {"fairseq": "fairseq", "ctranslate2": "ctranslate2-float32"}[engine]
    assert manifest["options"]["engine"] == engine
    assert manifest["counts"] == {"inputs": 1001, "outputs": 1001, "decoded": 1001}
    assert len((uninterrupted / "raw" / "train.en").read_text(encoding="utf-8").splitlines()) == 1001
    # the source side is the original source, line by line
    assert (uninterrupted / "raw" / "train.de").read_bytes() == (data / "raw" / "train.de").read_bytes()
    assert manifest["teachers"][0]["label_smoothing"] == 0.1
    assert "distilled_vs_reference" in manifest and manifest["distilled_vs_reference"]["signature"].startswith("nrefs:1")


@pytest.mark.slow
def test_binarized_data_uses_the_original_dictionaries(slice_1001, uninterrupted):
    data, _ = slice_1001
    for lang in ("de", "en"):
        assert (uninterrupted / "bin" / f"dict.{lang}.txt").read_bytes() == (data / "bin" / f"dict.{lang}.txt").read_bytes()
    assert (uninterrupted / "bin" / "valid.de-en.en.bin").read_bytes() == (data / "bin" / "valid.de-en.en.bin").read_bytes()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(slice_1001, engine, uninterrupted, tmp_path, capsys):
    data, teacher = slice_1001
    out = tmp_path / "out"
    args = ["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST, "--engine", engine]
    assert distill_main(args + ["--max-chunks", "1"]) == 0
    assert len(list((out / "chunks").glob("*.jsonl"))) == 1 and not (out / "bin").exists()
    other = "fairseq" if engine == "ctranslate2" else "ctranslate2"
    assert distill_main(args + ["--engine", other]) == 2  # a resume decodes as the run it continues
    assert "holds a distillation with other options" in capsys.readouterr().err
    assert distill_main(args) == 0
    assert files(out) == files(uninterrupted)


@pytest.mark.slow
def test_two_shards_merged_equal_one_run(slice_1001, engine, uninterrupted, tmp_path):
    data, teacher = slice_1001
    out = tmp_path / "out"
    args = ["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST, "--num-shards", "2",
            "--engine", engine]
    assert distill_main(args + ["--shard-id", "0"]) == 0
    assert not (out / "bin").exists()  # shard 1's chunks are still missing
    assert distill_main(args + ["--shard-id", "1"]) == 0
    assert files(out) == files(uninterrupted)


@pytest.mark.slow
def test_too_long_sources_follow_the_policy_and_are_counted(slice_1001, engine, tmp_path):
    data, teacher = slice_1001
    lengths = [len(line.split()) + 1 for line in (data / "spm" / "train.de").read_text(encoding="utf-8").splitlines()]
    limit = sorted(lengths)[900]  # about 100 sentences are longer
    too_long = sum(n > limit for n in lengths)
    for policy, outputs in (("copy-reference", 1001), ("drop", 1001 - too_long)):
        out = tmp_path / policy
        assert distill_main(["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST,
                             "--max-source-tokens", str(limit), "--too-long", policy, "--engine", engine]) == 0
        counts = json.loads((out / "distill.json").read_text())["counts"]
        assert counts["outputs"] == outputs and counts["decoded"] == 1001 - too_long
        assert len((out / "raw" / "train.en").read_text(encoding="utf-8").splitlines()) == outputs
    copied = (tmp_path / "copy-reference" / "raw" / "train.en").read_text(encoding="utf-8").splitlines()
    reference = (data / "raw" / "train.en").read_text(encoding="utf-8").splitlines()
    first_long = next(i for i, n in enumerate(lengths) if n > limit)
    assert copied[first_long] == reference[first_long]


@pytest.mark.slow
def test_seq_inter_and_union(slice_1001, engine, tmp_path):
    data, teacher = slice_1001
    out = tmp_path / "inter"
    assert distill_main(["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST,
                         "--nbest", "2", "--seq-inter", "--union", "--engine", engine]) == 0
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["counts"]["outputs"] == 2002 and manifest["options"]["seq_inter"]
    assert distill_main(["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST]) == 2


def test_chunks_and_shards_cover_every_id_once():
    chunks = chunk_ranges(1001, 300)
    assert chunks == [(0, 300), (300, 600), (600, 900), (900, 1001)]
    shards = shard_chunks(chunks, 3, 0) + shard_chunks(chunks, 3, 1) + shard_chunks(chunks, 3, 2)
    assert sorted(shards) == chunks


class FakeEngine:
    """Stands in for the teacher's engine: a fixed n-best list per sentence, best model score first."""

    name, max_source_tokens, decode_seconds = "fake", 100, 0.0

    def __init__(self, nbest: dict[int, list[Hypothesis]]):
        self.nbest = nbest

    def source_tokens(self, sentence_id: int) -> int:
        return 1

    def translate(self, ids, progress=None) -> dict[int, list[Hypothesis]]:
        return {i: self.nbest[i] for i in ids}


@pytest.fixture(scope="module")
def piece_model(tmp_path_factory):
    """A tiny SentencePiece model whose pieces are whole words (so pieces read back as the words)."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("spm")
    words = "the light shines in the darkness and the darkness has not overcome it".split()
    (root / "text").write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))) + "\n")
    spm.SentencePieceTrainer.train(input=str(root / "text"), model_prefix=str(root / "spm"), vocab_size=13,
                                   model_type="word", minloglevel=2)
    return root / "spm.model"


@pytest.mark.parametrize("seq_inter", [False, True])
def test_seq_inter_keeps_the_hypothesis_closest_to_the_reference_not_the_best_scoring(tmp_path, piece_model, seq_inter):
    references = ["the light shines in the darkness", "the darkness has not overcome it"]
    nbest = {0: [Hypothesis("▁the ▁darkness ▁has ▁not", -0.1), Hypothesis("▁the ▁light ▁shines ▁in ▁the ▁darkness", -0.9)],
             1: [Hypothesis("▁the ▁darkness ▁has ▁not ▁overcome ▁it", -0.2), Hypothesis("▁the ▁light", -0.3)]}
    sentence_bleu = bleu_metric(tokenize="13a", sentence=True) if seq_inter else None
    run_chunks(FakeEngine(nbest), tmp_path, chunk_ranges(2, 1), references, piece_model, sentence_bleu, None,
               fingerprint="f")
    kept = [row["pieces"] for row in collect(tmp_path, 2, 1, fingerprint="f")]
    # Seq-Inter: the second hypothesis of sentence 0 equals its reference; the first of sentence 1 does
    assert kept == [nbest[0][1].pieces if seq_inter else nbest[0][0].pieces, nbest[1][0].pieces]



@pytest.mark.parametrize("tokenize", ["13a", "zh"])
def test_seq_inter_on_chinese_compares_characters_with_sacrebleus_zh_tokenizer(tmp_path, tokenize):
    import sentencepiece as spm

    references = ["我们今天去公园散步", "他在家里读书写字"]
    far, close = ["他们明天回学校上课", "我们出门买菜做饭"], ["我们今天去公园玩", "他在家里读书画画"]
    (tmp_path / "text").write_text("\n".join(references + far + close) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text"), model_prefix=str(tmp_path / "spm"), vocab_size=40,
                                   model_type="char", minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    pieces = [" ".join(processor.encode(line, out_type=str)) for line in far + close]
    nbest = {i: [Hypothesis(pieces[i], -0.1), Hypothesis(pieces[2 + i], -0.5)] for i in range(2)}  # far scores best
    run_chunks(FakeEngine(nbest), tmp_path, chunk_ranges(2, 2), references, tmp_path / "spm.model",
               bleu_metric(tokenize=tokenize, sentence=True), None, fingerprint="f")
    kept = [row["pieces"] for row in collect(tmp_path, 2, 2, fingerprint="f")]
    # 13a sees each line as one word: every hypothesis scores 0 and the best-scoring one stays
    assert kept == (pieces[2:] if tokenize == "zh" else pieces[:2])


@pytest.mark.slow
def test_distilled_vs_reference_bleu_of_a_chinese_target_is_tokenized_for_chinese(bible_en_zh, en_zh_checkpoint,
                                                                                   tmp_path):
    out = tmp_path / "distilled"
    assert distill_main(["--data", str(bible_en_zh), "--teacher-path", str(en_zh_checkpoint), "--out", str(out),
                         "--beam", "2", "--nbest", "2", "--seq-inter", "--max-len-b", "5", "--workers", "1"]) == 0
    manifest = json.loads((out / "distill.json").read_text())
    assert manifest["options"]["bleu_tokenize"] == "zh" and "|tok:zh|" in manifest["distilled_vs_reference"]["signature"]
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(bible_en_zh / "raw" / "train.zh"), "-i",
                          str(out / "raw" / "train.zh"), "-l", "en-zh", "-b", "-w", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert manifest["distilled_vs_reference"]["bleu"] == float(cli)


def test_a_distillation_begun_before_an_option_existed_resumes_with_its_default(tmp_path):
    from dataclasses import asdict

    from data_prep.distill import _check_options
    from lskd.corpus import CorpusError

    written = asdict(DistillOptions(beam=2))
    del written["bleu_tokenize"]  # options.json of a run begun before the option existed
    (tmp_path / "options.json").write_text(json.dumps(written))
    _check_options(tmp_path, DistillOptions(beam=2), overwrite=False)  # 13a, as that run's Seq-Inter used
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "000000000-000001000.jsonl").write_text("{}\n")
    with pytest.raises(CorpusError, match="other options"):
        _check_options(tmp_path, DistillOptions(beam=2, bleu_tokenize="zh"), overwrite=False)


def test_the_options_of_a_run_that_decoded_nothing_are_replaced(tmp_path):
    """A run refused after writing options.json (a split the data lacks, say) must not block the corrected run."""
    from dataclasses import asdict

    from data_prep.distill import _check_options
    from lskd.corpus import CorpusError

    (tmp_path / "options.json").write_text(json.dumps(asdict(DistillOptions(split="nosuch"))))
    _check_options(tmp_path, DistillOptions(split="valid"), overwrite=False)
    assert json.loads((tmp_path / "options.json").read_text())["split"] == "valid"
    decoded = tmp_path / "source_text" / "chunks" / "000000000-000000010.jsonl"  # a source-text chunk counts too
    decoded.parent.mkdir(parents=True)
    decoded.write_text("{}\n")
    with pytest.raises(CorpusError, match="holds a distillation with other options"):
        _check_options(tmp_path, DistillOptions(split="test"), overwrite=False)
    assert json.loads((tmp_path / "options.json").read_text())["split"] == "valid" and decoded.is_file()


def test_a_source_text_file_with_a_bad_byte_or_no_line_stops_before_anything_is_written(tmp_path):
    from data_prep.source_text import check_source_text
    from lskd.corpus import CorpusError

    bad = tmp_path / "mono.de"
    bad.write_bytes("Im Anfang war das Wort\nund das Wort war bei Gott\n".encode() + b"und Gott war \xff das Wort\n")
    with pytest.raises(CorpusError, match=r"mono.de, line 3"):
        check_source_text(bad)
    empty = tmp_path / "empty.de"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty.de: empty file"):
        check_source_text(empty)


@pytest.mark.slow
def test_monolingual_text_every_line_accounted_resumed_and_sharded_alike(slice_1001, tmp_path):
    """John's 879 German verses as monolingual text, with two empty lines and a training source: every line
    is decoded or counted as empty, the file is recorded by sha256, and a resumed or sharded run equals one run."""
    from lskd.provenance import sha256_file

    data, teacher = slice_1001
    verses = (data / "raw" / "test.de").read_text(encoding="utf-8").splitlines()
    training_source = (data / "raw" / "train.de").read_text(encoding="utf-8").splitlines()[5]
    mono = tmp_path / "john.de"
    mono.write_text("\n".join(verses[:400] + ["", training_source, "\u200b"] + verses[400:]) + "\n", encoding="utf-8")
    args = ["--data", str(data), "--teacher-path", str(teacher), *FAST, "--source-text", str(mono)]
    assert distill_main(args + ["--out", str(tmp_path / "one"), "--source-text-only"]) == 0
    manifest = json.loads((tmp_path / "one" / "distill.json").read_text())
    assert manifest["counts"] == {"inputs": 882, "outputs": 880, "decoded": 880, "empty_source_dropped": 2}
    [record] = manifest["source_text"]
    assert record["sha256"] == sha256_file(mono) and record["lines"] == 882 and record["empty"] == 2
    assert record["in_training_sources"] == 1 and record["outcomes"] == {"decoded": 880}
    assert (tmp_path / "one" / "raw" / "train.de").read_text(encoding="utf-8").splitlines() == \
        verses[:400] + [training_source] + verses[400:]
    assert manifest["distilled_vs_reference"] is None and manifest["quality"]["references"]["pairs"] == 0

    resumed = args + ["--out", str(tmp_path / "resumed"), "--source-text-only"]
    assert distill_main(resumed + ["--max-chunks", "1"]) == 0 and not (tmp_path / "resumed" / "distill.json").exists()
    assert distill_main(resumed) == 0
    for shard in ("0", "1"):
        assert distill_main(args + ["--out", str(tmp_path / "shards"), "--source-text-only", "--num-shards", "2",
                                    "--shard-id", shard]) == 0
    for run in ("resumed", "shards"):
        assert files(tmp_path / run) == files(tmp_path / "one"), run

    # with the parallel split: its 1001 pairs first, then the text's
    assert distill_main(args + ["--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "distill.json").read_text())
    assert both["counts"] == {"inputs": 1001 + 882, "outputs": 1001 + 880, "decoded": 1001 + 880,
                              "empty_source_dropped": 2}
    assert (tmp_path / "both" / "raw" / "train.de").read_text(encoding="utf-8").splitlines() == \
        training_source_lines(data) + verses[:400] + [training_source] + verses[400:]


def training_source_lines(data):
    return (data / "raw" / "train.de").read_text(encoding="utf-8").splitlines()


@pytest.mark.slow
def test_filter_counts_every_reason_and_copy_reference_keeps_the_gold_pair(slice_1001, engine, uninterrupted, tmp_path):
    import shutil
    from collections import Counter

    data, teacher = slice_1001
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)  # every chunk is decoded: only the merge runs again
    args = ["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *FAST, "--engine", engine,
            "--filter", "--min-length-ratio", "0.1", "--max-length-ratio", "0.5", "--score-quantile", "0.1"]
    # the outcome of each row, computed here independently of lskd.distilled_data
    decoded_under = DistillOptions(**json.loads((out / "options.json").read_text())).fingerprint
    rows = collect(out, 1001, 300, fingerprint=decoded_under)
    sources = (data / "spm" / "train.de").read_text(encoding="utf-8").splitlines()
    scores = sorted(r["score"] for r in rows)  # lenpen 1: fairseq's score is already per token
    threshold = scores[int(0.1 * len(scores))]
    expected = Counter()
    for row in rows:
        target, source = row["pieces"].split(), sources[row["id"]].split()
        trigrams = Counter(tuple(target[i:i + 3]) for i in range(len(target) - 2))
        if not target:
            expected["empty_target"] += 1
        elif trigrams and max(trigrams.values()) > 3:
            expected["loop"] += 1
        elif not 0.1 <= len(target) / len(source) <= 0.5:
            expected["length_ratio"] += 1
        elif row["score"] < threshold:
            expected["low_score"] += 1
    # this barely trained teacher says one word five times (--max-len-b 5): no trigram more than 3 times
    assert expected["length_ratio"] and expected["low_score"]
    for filtered, outcome in (("drop", "dropped"), ("copy-reference", "copied_reference")):
        assert distill_main(args + ["--filtered", filtered]) == 0
        manifest = json.loads((out / "distill.json").read_text())
        counts = manifest["counts"]
        assert {k[:-len(outcome) - 1]: n for k, n in counts.items() if k.endswith(outcome)} == dict(expected)
        kept = 1001 - sum(expected.values())
        assert counts["decoded"] == kept and counts["outputs"] == (kept if filtered == "drop" else 1001)
        assert len((out / "raw" / "train.en").read_text(encoding="utf-8").splitlines()) == counts["outputs"]
        assert manifest["filter"]["score_threshold"] == round(threshold, 4)
    # copied pairs are the gold ones: the distilled corpus now holds some references verbatim
    references = (data / "raw" / "train.en").read_text(encoding="utf-8").splitlines()
    written = (out / "raw" / "train.en").read_text(encoding="utf-8").splitlines()
    assert sum(w == r for w, r in zip(written, references)) >= sum(expected.values())
