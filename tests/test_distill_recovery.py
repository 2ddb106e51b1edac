"""lskd-distill-corpus is never silently wrong: outputs of other inputs, two writers, kills, unreadable sources, disk."""
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, run_module
from data_prep.distill import (MERGE_LOCK, DistillOptions, Candidate, _check_options, _shard_lock, build_parser,
                               chunk_ranges, collect, decide, finished, main as distill_main, merge_once, run_chunks)
from lskd.corpus import CorpusError
from lskd.distilled_data import FilterOptions, read_distilled, reason_to_drop, unknown_share
from lskd.errors import InvalidValueError
from lskd.output_files import OutputError, certify, writer_lock
from lskd.provenance import RecordError, write_json
from test_distill import FakeEngine, piece_model  # noqa: F401 (a fixture)

FAST = ["--beam", "2", "--max-len-a", "0", "--max-len-b", "5", "--chunk-size", "100", "--batch-size", "64",
        "--workers", "1"]
OLD, NEW = "a" * 64, "b" * 64


def decoded_chunks(out: Path, fingerprint: str, piece_model: Path) -> None:
    """Two chunks of one sentence each, decoded by a stand-in engine under ``fingerprint``."""
    from lskd.decoding import Hypothesis

    nbest = {i: [Hypothesis("▁the ▁light", -0.5)] for i in range(2)}
    run_chunks(FakeEngine(nbest), out, chunk_ranges(2, 1), None, piece_model, None, None, fingerprint=fingerprint)


def test_a_chunk_of_another_fingerprint_or_changed_since_is_refused_naming_it(tmp_path, piece_model):
    decoded_chunks(tmp_path, OLD, piece_model)
    assert [row["pieces"] for row in collect(tmp_path, 2, 1, fingerprint=OLD)] == ["▁the ▁light"] * 2
    with pytest.raises(CorpusError, match=r"000000000-000000001.jsonl was decoded under other inputs "
                                          r"\(fingerprint aaaaaaaaaaaa, this run's bbbbbbbbbbbb\)"):
        collect(tmp_path, 2, 1, fingerprint=NEW)
    second = tmp_path / "chunks" / "000000001-000000002.jsonl"
    second.write_text(second.read_text().replace("light", "night"))
    with pytest.raises(OutputError, match="000000001-000000002.jsonl \\(sha256 differs"):
        collect(tmp_path, 2, 1, fingerprint=OLD)


def test_chunks_of_other_prepared_data_are_refused_naming_it_and_overwrite_starts_afresh(tmp_path, piece_model):
    old, new = DistillOptions(data_fingerprint=OLD), DistillOptions(data_fingerprint=NEW)
    _check_options(tmp_path, old, overwrite=False)
    decoded_chunks(tmp_path, old.fingerprint, piece_model)
    with writer_lock(tmp_path, name=_shard_lock(1, 0)):  # a lock file: kept when starting afresh
        pass
    with pytest.raises(CorpusError, match=r"other options or inputs .*: the prepared data's fingerprint "
                                          r"\(aaaaaaaaaaaa -> bbbbbbbbbbbb\); use another --out or pass --overwrite"):
        _check_options(tmp_path, new, overwrite=False)
    assert len(list((tmp_path / "chunks").glob("*.jsonl"))) == 2
    _check_options(tmp_path, new, overwrite=True)
    assert not (tmp_path / "chunks").exists() and (tmp_path / _shard_lock(1, 0)).is_file()
    assert json.loads((tmp_path / "options.json").read_text())["data_fingerprint"] == NEW
    # options.json says the same inputs, but a chunk was decoded under others (copied in, say): refused too
    decoded_chunks(tmp_path, old.fingerprint, piece_model)
    with pytest.raises(CorpusError, match="a chunk, .*000000000-000000001.jsonl \\(decoded under fingerprint"):
        _check_options(tmp_path, new, overwrite=False)


def test_source_text_prepared_from_other_inputs_is_refused_naming_them(tmp_path):
    from data_prep.source_text import prepare_source_text
    from lskd.prepared import PreparedData
    from lskd.provenance import sha256_file

    mono = tmp_path / "mono.de"
    mono.write_text("Im Anfang war das Wort\n", encoding="utf-8")
    out = tmp_path / "source_text"
    out.mkdir()
    write_json(out / "prep.json", {"fingerprint": "f" * 64, "derived_from": {"fingerprint": OLD},
                                   "source_text": [{"sha256": sha256_file(mono)}], "outputs": {}})
    data = PreparedData(tmp_path / "data", {"fingerprint": NEW})  # the corpus, prepared anew
    with pytest.raises(CorpusError, match=r"source_text holds source text prepared from other inputs: the prepared "
                                          r"data's fingerprint \(aaaaaaaaaaaa -> bbbbbbbbbbbb\); pass --overwrite"):
        prepare_source_text(data, [mono], out)


@pytest.fixture
def quick_main(tmp_path, monkeypatch):
    """``main`` up to its locks and its checks of --out: a prepared-data record and a teacher that are
    never decoded (the teacher's description is a stand-in; the decoding and merge are replaced)."""
    import fairseq_plugins.teacher
    import data_prep.distill as distill

    data = tmp_path / "data"
    data.mkdir()
    write_json(data / "prep.json", {"fingerprint": OLD, "options": {"src": "de", "tgt": "en"},
                                    "outputs": {"bin_dir": "bin", "spm_model": "spm.model",
                                                "binarized_sentences": {"train": 2}}})
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"never read")
    calls = SimpleNamespace(teachers=0, distilled=0)

    def describe(path):
        calls.teachers += 1
        return [SimpleNamespace(sha256="t" * 64)]

    def distil(*args):
        calls.distilled += 1
        return 0

    monkeypatch.setattr(fairseq_plugins.teacher, "describe_teachers", describe)
    monkeypatch.setattr(distill, "_distil", distil, raising=False)

    def run(out: Path, *extra: str) -> int:
        return distill_main(["--data", str(data), "--teacher-path", str(teacher), "--out", str(out), *extra])

    run.calls = calls
    return run


def test_a_second_writer_is_refused_while_the_first_holds_the_directory(quick_main, tmp_path, capsys):
    out = tmp_path / "out"
    with writer_lock(out, name=_shard_lock(1, 0)), writer_lock(out, shared=True):  # what a running writer holds
        assert quick_main(out) == 2
    assert f"lskd-distill-corpus: error: {out} is being written by another process" in capsys.readouterr().err
    assert quick_main.calls.distilled == 0
    assert quick_main(out) == 0 and quick_main.calls.distilled == 1  # once it is gone


def test_shards_share_the_directory_but_the_same_shard_twice_and_overwrite_are_refused(quick_main, tmp_path, capsys):
    out = tmp_path / "out"
    with writer_lock(out, name=_shard_lock(2, 1)), writer_lock(out, shared=True):  # shard 1 of 2 runs
        assert quick_main(out, "--num-shards", "2", "--shard-id", "0") == 0 and quick_main.calls.distilled == 1
        assert quick_main(out, "--num-shards", "2", "--shard-id", "1") == 2
        assert "is being written by another process" in capsys.readouterr().err
        (out / "chunks").mkdir()
        (out / "chunks" / "000000000-000000001.jsonl").write_text("{}\n")  # shard 1's chunk
        assert quick_main(out, "--beam", "3", "--overwrite") == 2  # other options: to start afresh needs --out alone
        assert "is being written by another process" in capsys.readouterr().err
    assert (out / "chunks" / "000000000-000000001.jsonl").is_file()
    assert quick_main(out, "--beam", "3", "--overwrite") == 0 and not (out / "chunks").exists()


@pytest.mark.parametrize("error", [errno.EROFS, errno.ENOSPC])
def test_a_read_only_or_full_out_is_one_line_before_the_teacher_is_read(quick_main, tmp_path, monkeypatch, capsys,
                                                                        error):
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    out = tmp_path / "out"
    assert quick_main(out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lskd-distill-corpus: error: {out}: cannot write here ({os.strerror(error)})"]
    assert quick_main.calls.teachers == 0 and quick_main.calls.distilled == 0


@pytest.mark.parametrize("flag", ["--lenpen", "--max-len-a", "--min-length-ratio", "--max-length-ratio",
                                  "--score-quantile", "--max-unknown-share"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--data", "d", "--teacher-path", "t.pt", "--out", "o", f"{flag}={value}"])
    assert stop.value.code == 2 and f"expected a finite number, got '{value}'" in capsys.readouterr().err


def test_a_source_mostly_unknown_to_the_teacher_is_left_out_under_its_own_reason():
    # SentencePiece splits the word boundary off each word it cannot piece together: 3 of 3 text pieces unknown
    cyrillic, german = "▁ В ▁ начале ▁ Слово".split(), "▁im ▁anfang ▁war ▁das ▁wort".split()
    assert unknown_share(cyrillic, 3) == 1.0 and unknown_share(german, 0) == 0.0 and unknown_share(["▁"], 0) == 0.0
    on = FilterOptions(enabled=True)
    assert reason_to_drop(cyrillic, ["▁to"] * 3, -0.1, on, unknown_source=1.0) == "unknown_source"
    assert reason_to_drop(cyrillic, [], -0.1, on, unknown_source=1.0) == "empty_target"  # checked first
    assert reason_to_drop(cyrillic, ["▁to"] * 3, -0.1, FilterOptions(), unknown_source=1.0) is None  # without --filter
    assert reason_to_drop(german, german, -0.1, on, unknown_source=0.5) is None  # half is not mostly
    candidates = [Candidate(" ".join(cyrillic), "В начале Слово", "▁to ▁to ▁to", -0.1, unknown_pieces=3),
                  Candidate(" ".join(german), "Im Anfang war das Wort", "▁in ▁the ▁beginning ▁was ▁the", -0.1)]
    written, outcomes = decide(candidates, "drop", on, "drop", float("-inf"), 1.0)
    assert outcomes == ["unknown_source_dropped", "decoded"] and [c.raw_source for c, _, _ in written] == [
        "Im Anfang war das Wort"]
    with pytest.raises(InvalidValueError, match="--max-unknown-share 1.5"):
        FilterOptions(enabled=True, max_unknown_share=1.5)


def merged_directory(out: Path, fingerprint: str, pairs: int = 3) -> dict:
    """A finished merge: ``bin/`` and ``raw/`` files certified by ``distill.json``."""
    for name in ("bin", "raw"):
        (out / name).mkdir(parents=True, exist_ok=True)
    (out / "bin" / "train.de-en.en.bin").write_bytes(b"\1" * 8 * pairs)
    (out / "raw" / "train.en").write_text("pair\n" * pairs)
    manifest = {"fingerprint": fingerprint, "counts": {"outputs": pairs},
                "files": certify(out, ["bin/train.de-en.en.bin", "raw/train.en"])}
    write_json(out / "distill.json", manifest)
    return manifest


def test_a_leftover_merge_marker_blocks_nothing_and_a_finished_merge_is_not_redone(tmp_path):
    (tmp_path / "merge.lock").write_text("")  # what a merge killed under LSKD before flocks left behind
    merged = []
    manifest = merge_once(tmp_path, NEW, lambda: merged.append(1) or merged_directory(tmp_path, NEW))
    assert merged == [1] and manifest["fingerprint"] == NEW and not (tmp_path / "merge.lock").exists()
    assert merge_once(tmp_path, NEW, lambda: pytest.fail("merged again")) == manifest
    # another merge's result (other settings), or a certified file changed since: merged again
    assert finished(tmp_path, OLD) is None
    (tmp_path / "raw" / "train.en").write_text("pair\n")
    assert finished(tmp_path, NEW) is None
    assert merge_once(tmp_path, NEW, lambda: merged.append(2) or merged_directory(tmp_path, NEW)) and merged == [1, 2]


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_merger_that_finds_another_merging_waits_then_merges_only_if_needed(tmp_path, other_finishes):
    merged, results = [], []
    with writer_lock(tmp_path, name=MERGE_LOCK):  # another process merging
        waiter = threading.Thread(target=lambda: results.append(
            merge_once(tmp_path, NEW, lambda: merged.append(1) or merged_directory(tmp_path, NEW, pairs=4))))
        waiter.start()
        if other_finishes:
            merged_directory(tmp_path, NEW, pairs=3)
    waiter.join()
    assert merged == ([] if other_finishes else [1]) and results[0]["counts"]["outputs"] == (3 if other_finishes else 4)


def test_a_reader_refuses_distilled_files_that_do_not_match_their_manifest(tmp_path):
    from eval.bleu import _distillation_manifest

    merged_directory(tmp_path, NEW)
    assert read_distilled(tmp_path)["counts"]["outputs"] == 3
    (tmp_path / "bin" / "train.de-en.en.bin").write_bytes(b"\1" * 16)  # bin/ holds fewer pairs than it says
    with pytest.raises(OutputError, match=r"bin/train.de-en.en.bin \(16 bytes, the manifest says 24\)"):
        _distillation_manifest(str(tmp_path / "bin"))
    (tmp_path / "distill.json").unlink()
    with pytest.raises(RecordError, match="no such file"):
        read_distilled(tmp_path)


# ---- with a real teacher: kills at several points, re-prepared data, text the vocabulary lacks ----

KILLER = r"""
import os, signal, sys
import data_prep.distill as distill

point, argv = sys.argv[1], sys.argv[2:]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "decoding":  # the second chunk is written and certified, not yet renamed into place
    replace = os.replace
    os.replace = lambda src, dst: die() if str(dst).endswith("000000100-000000200.jsonl") else replace(src, dst)
elif point == "binarizing":
    distill.run_preprocess = die
elif point == "manifest":  # bin/ is in place, distill.json not yet written
    write_json = distill.write_json
    distill.write_json = lambda path, record: die() if str(path).endswith("distill.json") else write_json(path, record)
sys.exit(distill.main(argv))
"""


def bin_files(out: Path) -> dict[str, bytes]:
    """What fairseq-train reads of a distilled directory (its logs, which name paths, aside), and its texts."""
    return {str(p.relative_to(out)): p.read_bytes() for name in ("bin", "spm", "raw") for p in (out / name).iterdir()
            if not p.name.startswith("preprocess.")}


@pytest.fixture(scope="module")
def uninterrupted(bible_slice, trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert distill_main(["--data", str(bible_slice), "--teacher-path", str(trained_checkpoint), "--out", str(out),
                         *FAST]) == 0
    return out


@pytest.mark.slow
def test_the_corpus_splits_share_of_unknown_pieces_is_lskd_prepares_count(bible_slice, uninterrupted):
    recorded = json.loads((bible_slice / "prep.json").read_text())["outputs"]["unk"]["train"]["source"]
    assert read_distilled(uninterrupted)["unknown_source_pieces"] == recorded


@pytest.mark.slow
@pytest.mark.parametrize("point, killed_flags", [("decoding", []), ("binarizing", ["--union"]),
                                                 ("manifest", ["--union"])])
def test_killed_at_any_point_the_next_run_equals_an_uninterrupted_one(bible_slice, trained_checkpoint, uninterrupted,
                                                                       tmp_path, point, killed_flags):
    """Killed while decoding a fresh run, or while re-merging a finished one with other settings (--union):
    never a manifest that contradicts bin/, and the next run (past a leftover merge.lock) equals one run."""
    out = tmp_path / "out"
    if point != "decoding":
        shutil.copytree(uninterrupted, out)
    args = ["--data", str(bible_slice), "--teacher-path", str(trained_checkpoint), "--out", str(out), *FAST]
    killed = subprocess.run([sys.executable, "-c", KILLER, point, *args, *killed_flags], cwd=REPO,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    manifest = out / "distill.json"
    if manifest.is_file():  # a manifest left behind must describe the files beside it
        pairs = len((out / "raw" / "train.en").read_text(encoding="utf-8").splitlines())
        assert json.loads(manifest.read_text())["counts"]["outputs"] == pairs
    (out / "merge.lock").write_text("")  # as LSKD before flocks left it
    assert distill_main(args) == 0
    assert bin_files(out) == bin_files(uninterrupted)
    assert read_distilled(out)["counts"] == read_distilled(uninterrupted)["counts"] == {
        "inputs": 300, "outputs": 300, "decoded": 300}


@pytest.mark.slow
def test_data_prepared_anew_under_a_distillation_is_refused_and_overwrite_makes_the_right_pairs(
        bible_slice, trained_checkpoint, uninterrupted, tmp_path, capsys):
    """The training split cleaned of its first 50 pairs, distilled; then the data at the same path prepared
    anew (the whole split): refused naming the data; --overwrite pairs each source with its own translation."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            lines = (bible_slice / "raw" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines(keepends=True)
            (raw / f"{split}.{lang}").write_text("".join(lines[50:] if split == "train" else lines), encoding="utf-8")
    data = tmp_path / "data"
    run_module("data_prep.cli", "text", "--src", "de", "--tgt", "en", "--train", str(raw / "train"),
               "--valid", str(raw / "valid"), "--test", str(raw / "test"), "--spm-model", str(bible_slice / "spm.model"),
               "--src-dict", str(bible_slice / "bin" / "dict.de.txt"), "--tgt-dict", str(bible_slice / "bin" / "dict.en.txt"),
               "--workers", "1", "--out", str(data))
    cleaned = json.loads((data / "prep.json").read_text())["fingerprint"]
    out = tmp_path / "out"
    args = ["--data", str(data), "--teacher-path", str(trained_checkpoint), "--out", str(out), *FAST]
    assert distill_main(args + ["--max-chunks", "2"]) == 0  # 200 of the 250 cleaned sentences decoded
    shutil.rmtree(data)
    shutil.copytree(bible_slice, data)  # prepared anew, same path
    anew = json.loads((data / "prep.json").read_text())["fingerprint"]
    capsys.readouterr()
    assert distill_main(args) == 2
    assert f"the prepared data's fingerprint ({cleaned[:12]} -> {anew[:12]})" in capsys.readouterr().err
    assert distill_main(args + ["--overwrite"]) == 0
    assert bin_files(out) == bin_files(uninterrupted)


@pytest.mark.slow
def test_source_text_in_a_script_the_vocabulary_lacks_is_counted_warned_and_filtered(
        bible_slice, trained_checkpoint, tmp_path, capfd):
    from fairseq.data import Dictionary

    german = (bible_slice / "raw" / "test.de").read_text(encoding="utf-8").splitlines()[:16]
    russian = ["В начале было Слово", "и Слово было у Бога", "и Слово было Бог", "Оно было в начале у Бога"]
    mono = tmp_path / "mono.de"
    mono.write_text("\n".join(german[:8] + russian + german[8:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert distill_main(["--data", str(bible_slice), "--teacher-path", str(trained_checkpoint), "--out", str(out),
                         *FAST, "--source-text", str(mono), "--source-text-only", "--filter",
                         "--min-length-ratio", "0.01"]) == 0  # this barely trained teacher's outputs are short
    manifest = read_distilled(out)
    # counted here against the dictionary's symbols
    dictionary = Dictionary.load(str(bible_slice / "bin" / "dict.de.txt"))
    pieces = [line.split() for line in (out / "source_text" / "spm" / "train.de").read_text(encoding="utf-8").splitlines()]
    unknown = sum(dictionary.index(p) == dictionary.unk() for line in pieces for p in line)
    [record] = manifest["source_text"]
    assert record["unknown_pieces"] == {"unk": unknown, "pieces": sum(map(len, pieces)),
                                        "share": round(unknown / sum(map(len, pieces)), 6)}
    assert record["unknown_pieces"]["share"] > 0.01
    assert f"warning: {record['unknown_pieces']['share']:.1%} of the {mono.resolve()} source pieces" in capfd.readouterr().err
    assert manifest["counts"]["unknown_source_dropped"] == record["outcomes"]["unknown_source_dropped"] == 4
    kept = (out / "raw" / "train.de").read_text(encoding="utf-8").splitlines()
    assert not set(kept) & set(russian) and len(kept) == manifest["counts"]["outputs"]


@pytest.mark.slow
def test_the_ctranslate2_export_beside_a_teacher_is_remade_when_an_input_changed_saying_which(
        bible_slice, trained_checkpoint, piece_model, tmp_path, capsys):
    from fairseq_plugins.ctranslate2_export import export_beside
    from lskd.prepared import load_prepared
    from lskd.provenance import sha256_file

    teacher = tmp_path / "teacher" / "checkpoint.pt"
    teacher.parent.mkdir()
    shutil.copyfile(trained_checkpoint, teacher)
    first = export_beside(teacher, load_prepared(bible_slice), "float32")
    assert export_beside(teacher, load_prepared(bible_slice), "float32").root == first.root
    assert "exporting again" not in capsys.readouterr().err  # the same inputs: reused
    data = tmp_path / "data"
    shutil.copytree(bible_slice, data)
    shutil.copyfile(piece_model, data / "spm.model")  # the same dictionaries, another SentencePiece model
    again = export_beside(teacher, load_prepared(data), "float32")
    assert (f"was exported from other inputs (the SentencePiece model's sha256 ({sha256_file(bible_slice / 'spm.model')[:12]}"
            f" -> {sha256_file(piece_model)[:12]})): exporting again") in capsys.readouterr().err
    assert sha256_file(again.root / "sentencepiece.model") == sha256_file(piece_model)
