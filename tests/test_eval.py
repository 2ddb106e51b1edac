"""lskd-eval and lskd-report: scoring, refusals, significance, analysis passes and the report."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eval.bleu import ordered, paired_bootstrap, score, score_files
from eval.cli import main as eval_main
from eval.report import build_rows, markdown_table, summary_lines, write_report
from lskd.corpus import CorpusError

HYPS = ["the cat sat on the mat", "a dog barks loudly at night", "he said that it was good", "no"]
REFS = ["the cat sat on a mat", "the dog barks loudly at night", "he said it was very good", "yes"]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_scores_equal_sacrebleu_cli(tmp_path):
    hyp, ref = write(tmp_path / "hyp.txt", HYPS), write(tmp_path / "ref.txt", REFS)
    ours = score_files(hyp, ref)
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "ter",
                          "-b", "-w", "2"], capture_output=True, text=True, check=True).stdout
    assert [ours["bleu"]["score"], ours["chrf"]["score"], ours["ter"]["score"]] == json.loads(cli)
    assert ours["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_count_mismatch_is_refused(tmp_path, capsys):
    hyp, ref = write(tmp_path / "hyp.txt", HYPS[:3]), write(tmp_path / "ref.txt", REFS)
    with pytest.raises(CorpusError, match="hyp.txt has 3 lines but .*ref.txt has 4"):
        score_files(hyp, ref)
    assert eval_main(["score", "--hyp", str(hyp), "--ref", str(ref)]) == 2
    assert "has 3 lines" in capsys.readouterr().err
    with pytest.raises(CorpusError, match="refusing to score a partial output"):
        score(HYPS[:2], REFS)


def test_missing_decoded_ids_are_named():
    with pytest.raises(CorpusError, match=r"3 hypotheses for 5 sentences; missing ids \[1, 4\], unexpected ids \[\]"):
        ordered({0: "a", 2: "b", 3: "c"}, range(5))
    assert ordered({1: "b", 0: "a"}, range(2)) == ["a", "b"]


def test_paired_bootstrap_finds_a_clearly_better_system():
    result = paired_bootstrap(HYPS * 5, REFS * 5, REFS * 5, samples=200)
    assert result["BLEU"]["system"] == pytest.approx(100.0) and result["BLEU"]["baseline"] < 60
    assert result["BLEU"]["p_value"] < 0.05 and result["chrF2"]["p_value"] < 0.05
    assert "bs:200" in result["BLEU"]["signature"]


def fake_bleu(path, bleu, system, sha, fingerprint="f" * 64):
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "scores": {m: {"score": bleu + i, "signature": f"{m}-sig", "text": ""} for i, m in enumerate(("bleu", "chrf", "ter"))},
        "split": "test", "sentences": 4, "checkpoint": {"path": f"/ckpt/{sha}.pt", "sha256": sha * 64},
        "data": {"fingerprint": fingerprint}, "system": system, "command": "lskd-eval bleu ...",
        "versions": {"ve-fairseq": "0.12.3", "sacrebleu": "2.6.0", "lskd": "0.1.0"},
    }
    path.write_text(json.dumps(record))


def test_report_renders_a_table_with_seed_statistics_and_stability(tmp_path):
    teacher = {"method": "CE", "label_smoothing": 0.1, "teacher_label_smoothing": None, "kd_temperature": None, "kd_alpha": None}
    student = {"method": "word-KD", "label_smoothing": 0.1, "teacher_label_smoothing": [0.1], "kd_temperature": 2.0,
               "kd_alpha": 0.5, "teacher_path": "/ckpt/a.pt"}
    fake_bleu(tmp_path / "teacher_ls0.1" / "eval" / "bleu-test.json", 20.0, teacher, "a")
    fake_bleu(tmp_path / "student_T2_seed1" / "eval" / "bleu-test.json", 10.0, student, "b")
    fake_bleu(tmp_path / "student_T2_seed2" / "eval" / "bleu-test.json", 12.0, student, "c")
    (tmp_path / "teacher_ls0.1" / "eval" / "stability-test.json").write_text(json.dumps({
        "one_minus_s": 0.3106, "ece_15_bins": 0.05, "classes": 10, "split": "test",
        "checkpoint": {"path": "/ckpt/a.pt", "sha256": "a" * 64}, "data": {"fingerprint": "f" * 64},
        "command": "lskd-eval stability ...", "versions": {}}))
    rows = build_rows(tmp_path)
    table = markdown_table(rows).splitlines()
    assert table[0] == "| system | method | teacher | LS | seeds | BLEU | chrF | TER | 1 - S | ECE |"
    assert table[2] == "| student_T2 | word-KD T=2 α=0.5 | LS 0.1 | 0.1 | 2 | 11.00 ± 1.41 | 12.00 ± 1.41 | 13.00 ± 1.41 | - | - |"
    assert table[3] == "| teacher_ls0.1 | CE | none | 0.1 | 1 | 20.00 | 21.00 | 22.00 | 0.3106 | 0.0500 |"
    assert summary_lines(rows) == ["teachers: LS 0.1: BLEU 20.00, 1 - S 0.3106, ECE 0.0500",
                                   "word-KD T=2 α=0.5 students: teacher LS 0.1: BLEU 11.00 ± 1.41"]
    report = write_report(tmp_path, note="tiny models")
    text = report.read_text()
    assert "vs temperature" not in text and not (tmp_path / "plots").exists()  # one temperature: nothing to plot
    assert "sha256 aaaaaaaaaaaa" in text and "bleu-sig" in text and "Settings: tiny models" in text

    fake_bleu(tmp_path / "student_T1_seed1" / "eval" / "bleu-test.json", 9.0, {**student, "kd_temperature": 1.0}, "d")
    text = write_report(tmp_path).read_text()
    assert "![BLEU vs temperature](plots/bleu_vs_temperature.png)" in text
    assert (tmp_path / "plots" / "bleu_vs_temperature.png").stat().st_size > 1000


def test_summary_compares_the_students_of_ls_and_plain_teachers(tmp_path):
    def ce(ls):
        return {"method": "CE", "label_smoothing": ls, "teacher_label_smoothing": None}

    def seqkd(teacher):
        return {"method": "seq-KD", "label_smoothing": 0, "teacher_label_smoothing": [0.1 if teacher == "a" else 0.0],
                "distill_beam": 1, "distill_teachers": [f"/ckpt/{teacher}.pt"]}

    fake_bleu(tmp_path / "teacher_ls0.1" / "eval" / "bleu-test.json", 20.0, ce(0.1), "a")
    fake_bleu(tmp_path / "teacher_ls0" / "eval" / "bleu-test.json", 19.0, ce(0.0), "b")
    fake_bleu(tmp_path / "student_seqkd_ls0.1_seed1" / "eval" / "bleu-test.json", 12.5, seqkd("a"), "c")
    fake_bleu(tmp_path / "student_seqkd_ls0_seed1" / "eval" / "bleu-test.json", 12.0, seqkd("b"), "d")
    fake_bleu(tmp_path / "student_gold_seed1" / "eval" / "bleu-test.json", 11.0, ce(0.0), "e")
    rows = build_rows(tmp_path)
    assert [r.system for r in rows if r.is_teacher] == ["teacher_ls0", "teacher_ls0.1"]
    lines = summary_lines(rows)
    assert lines[1] == ("seq-KD beam 1 students: teacher LS 0: BLEU 12.00 | teacher LS 0.1: BLEU 12.50 "
                        "(LS teacher - non-LS teacher: +0.50 BLEU on seed 1 alone: this compares two trained models, "
                        "not an LS teacher with a non-LS teacher; training variance is not measured (LSKD_SEEDS=\"1 2 3\" "
                        "trains every student per seed and tests the difference over seeds))")
    assert lines[2] == "CE students without a teacher: BLEU 11.00"


def test_report_without_records_is_an_error(tmp_path, capsys):
    from eval.report import main as report_main

    assert report_main([str(tmp_path)]) == 2
    assert "no bleu-*.json records" in capsys.readouterr().err


@pytest.mark.slow
def test_stability_and_projection_on_a_real_checkpoint(bible_slice, trained_checkpoint, tmp_path):
    from eval.analysis import projection_figure, stability_report
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    record = stability_report(trained_checkpoint, bible_slice, "valid", tmp_path, max_classes=50)
    targets = MMapIndexedDataset(str(bible_slice / "bin" / "valid.de-en.en"))
    assert record["positions"] == sum(len(targets[i]) for i in range(len(targets)))
    assert record["classes"] == 50 and 0 < record["one_minus_s"] < 1
    assert 0 <= record["ece_15_bins"] <= 1 and record["checkpoint"]["label_smoothing"] == 0.1
    assert json.loads((tmp_path / "stability-valid.json").read_text())["one_minus_s"] == record["one_minus_s"]
    png = projection_figure([trained_checkpoint, trained_checkpoint], bible_slice, "valid", ["▁the", "▁and", "▁of"],
                            tmp_path / "proj.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(CorpusError, match="not in the target dictionary"):
        projection_figure([trained_checkpoint], bible_slice, "valid", ["▁the", "▁and", "▁zzzunknownzzz"], tmp_path / "x.png")


def chinese_lines(count: int = 20, changed: int = 2) -> tuple[list[str], list[str]]:
    """``count`` Chinese reference lines (no spaces, as Chinese is written) and hypotheses that differ from
    them in ``changed`` characters each."""
    pool = "天地人日月山水火木金土风云雨雪花草鸟鱼虫马牛羊家国城门书画歌舞春夏秋冬东南西北大小多少"
    references = ["".join(pool[(7 * i + 3 * j) % len(pool)] for j in range(10 + i % 5)) for i in range(count)]
    hypotheses = []
    for i, line in enumerate(references):
        chars = list(line)
        for k in range(changed):
            chars[2 + 4 * k] = "们的了是在"[(i + k) % 5]
        hypotheses.append("".join(chars))
    return hypotheses, references


def sacrebleu_cli(ref, hyp, *options):
    return json.loads(subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu",
                                      "-b", "-w", "2", *options], capture_output=True, text=True, check=True).stdout)


def test_chinese_is_scored_with_the_tokenizer_sacrebleu_uses_for_chinese(tmp_path, capsys):
    hypotheses, references = chinese_lines()
    hyp, ref = write(tmp_path / "hyp.zh", hypotheses), write(tmp_path / "ref.zh", references)
    expected = sacrebleu_cli(ref, hyp, "-l", "en-zh")
    assert expected == sacrebleu_cli(ref, hyp, "--tokenize", "zh") and expected > 40  # two characters per line
    assert sacrebleu_cli(ref, hyp) == 0.0  # 13a: every line is one "word"
    for argv in (["--tgt-lang", "zh"], ["--tgt-lang", "zh-CN"], ["--tokenize", "zh"]):
        assert eval_main(["score", "--hyp", str(hyp), "--ref", str(ref), *argv]) == 0
        out = capsys.readouterr().out
        assert json.loads(out.splitlines()[-1])["bleu"] == expected and "tok:zh" in out
    scores = score_files(hyp, ref, tgt_lang="zh")
    assert scores["bleu"]["score"] == expected and "|tok:zh|" in scores["bleu"]["signature"]
    assert score_files(hyp, ref)["bleu"]["score"] == 0.0  # no language given: sacrebleu's default, as its CLI
    bootstrap = paired_bootstrap(references, hypotheses, references, samples=50, tgt_lang="zh")
    assert bootstrap["BLEU"]["system"] == pytest.approx(expected, abs=0.01) and "tok:zh" in bootstrap["BLEU"]["signature"]


def test_a_tokenizer_that_cannot_run_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from sacrebleu.tokenizers import tokenizer_ja_mecab

    monkeypatch.setattr(tokenizer_ja_mecab, "MeCab", None)  # as without sacrebleu[ja]
    hyp, ref = write(tmp_path / "hyp.ja", ["今日は良い天気です"]), write(tmp_path / "ref.ja", ["今日は悪い天気です"])
    assert eval_main(["score", "--hyp", str(hyp), "--ref", str(ref), "--tgt-lang", "ja"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install sacrebleu[ja]" in error and "--tokenize" in error
    assert eval_main(["score", "--hyp", str(hyp), "--ref", str(ref), "--tgt-lang", "ja", "--tokenize", "char"]) == 0
    assert "tok:char" in capsys.readouterr().out


def test_japanese_with_mecab_matches_sacrebleu_cli(tmp_path):
    pytest.importorskip("MeCab")
    pytest.importorskip("ipadic")
    hyp = write(tmp_path / "hyp.ja", ["今日は良い天気です", "私は学校へ行きました"])
    ref = write(tmp_path / "ref.ja", ["今日は悪い天気です", "私は学校に行きました"])
    ours = score_files(hyp, ref, tgt_lang="ja")["bleu"]
    assert ours["score"] == sacrebleu_cli(ref, hyp, "-l", "en-ja") and "tok:ja-mecab" in ours["signature"]


def test_the_tokenizer_choice_is_sacrebleus_own():
    import sacrebleu

    from lskd.scoring import DEFAULT_TOKENIZER, LANGUAGE_TOKENIZERS, bleu_tokenizer

    assert LANGUAGE_TOKENIZERS == sacrebleu.BLEU._TOKENIZER_MAP and DEFAULT_TOKENIZER == sacrebleu.BLEU.TOKENIZER_DEFAULT
    assert [bleu_tokenizer(lang) for lang in ("zh", "zh_TW", "ZH-cn", "ja", "ko", "de", None)] == \
        ["zh", "zh", "zh", "ja-mecab", "ko-mecab", "13a", "13a"]
    assert bleu_tokenizer("zh", "char") == "char"


@pytest.mark.slow
def test_bleu_of_a_chinese_target_is_tokenized_for_chinese(bible_en_zh, en_zh_checkpoint, tmp_path, capsys):
    """lskd-eval bleu takes the target language from prep.json, as sacrebleu -l en-zh does. It scores in NFC (the
    same numbers: this Chinese is in NFC) and names the references' fullwidth punctuation, which SentencePiece's
    NFKC folds, so that the model never writes it (issue 27)."""
    import unicodedata

    from lskd.corpus import read_lines

    assert eval_main(["bleu", "--checkpoint", str(en_zh_checkpoint), "--data", str(bible_en_zh), "--split", "valid",
                      "--beam", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "bleu-valid.json").read_text())
    assert "|tok:zh|" in record["scores"]["bleu"]["signature"]
    expected = sacrebleu_cli(record["references_file"], record["hypotheses_file"], "-l", "en-zh")
    assert record["scores"]["bleu"]["score"] == expected
    out = capsys.readouterr().out
    assert record["scores"]["bleu"]["unicode_form"] == "nfc" and "; unicode form: nfc)" in out
    references = read_lines(record["references_file"])
    folded = sum(unicodedata.normalize("NFKC", line) != line for line in references)
    warning = (f"{record['references_file']}: {folded} of {len(references)} lines "
               f"({100 * folded / len(references):.1f} %) hold compatibility characters")
    assert folded > len(references) / 2 and f"warning: {warning}" in out
    assert [w for w in record["warnings"] if w.startswith(warning)]


@pytest.mark.slow
def test_a_checkpoint_of_another_vocabulary_is_refused_as_a_checkpoint_not_a_teacher(trained_checkpoint, tmp_path,
                                                                                      capsys):
    """Before: lskd-eval spoke of a teacher and a student's data, and advised preparing the student's data."""
    from tests.conftest import run_module

    other = tmp_path / "other-vocabulary"
    run_module("data_prep.cli", "bible", "--out", str(other), "--limit-train", "300", "--vocab-size", "500",
               "--limit-test", "20")
    for command in ("stability", "bleu"):
        assert eval_main([command, "--checkpoint", str(trained_checkpoint), "--data", str(other), "--out",
                          str(tmp_path / command)]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"lskd-eval: error: checkpoint {trained_checkpoint} was trained with target dictionary "), error
        assert f"but the data's target dictionary is {other / 'bin' / 'dict.en.txt'} (504 types)" in error, error
        assert "teacher" not in error.replace("--teacher CHECKPOINT", ""), error


def fairseq_like_checkpoint(path, criterion: dict, data: str, save_dir: str):
    """The parts of a fairseq checkpoint that describe_system reads; paths stored as fairseq-train was given them."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "cfg": {"criterion": criterion, "task": {"data": data}, "model": {"arch": "transformer"},
                                     "checkpoint": {"save_dir": save_dir}, "common": {"seed": 1}},
                "optimizer_history": [{"num_updates": 4}]}, path)
    return path


@pytest.fixture
def relative_run(tmp_path):
    """A run directory whose students were trained (from ``work/``) with relative paths, as the README's
    commands are: a word-KD student, a seq-KD student, and the teacher and data they name."""
    work = tmp_path / "work"
    (work / "data" / "bin").mkdir(parents=True)
    (work / "distilled" / "bin").mkdir(parents=True)
    teacher = fairseq_like_checkpoint(work / "teachers" / "t.pt", {"_name": "label_smoothed_cross_entropy",
                                                                   "label_smoothing": 0.1}, "data/bin", "teachers")
    (work / "distilled" / "distill.json").write_text(json.dumps(
        {"teachers": [{"path": str(teacher), "label_smoothing": 0.1}], "options": {"beam": 1}}))
    kd = {"_name": "label_smoothed_cross_entropy_with_kd", "label_smoothing": 0.0, "kd_alpha": 0.5,
          "kd_temperature": 1.0, "teacher_path": "teachers/t.pt", "teacher_topk": 0, "teacher_topk_cache": None}
    ce = {"_name": "label_smoothed_cross_entropy", "label_smoothing": 0.0}
    fairseq_like_checkpoint(work / "runs" / "word_kd" / "checkpoint_last.pt", kd, "data/bin", "runs/word_kd")
    fairseq_like_checkpoint(work / "runs" / "seq_kd" / "checkpoint_last.pt", ce, "distilled/bin", "runs/seq_kd")
    # trained with an absolute --save-dir that is gone: found from the checkpoint's parents
    fairseq_like_checkpoint(work / "runs" / "moved_run" / "checkpoint_last.pt", kd, "data/bin", "/gone/word_kd")
    return work


def test_a_record_does_not_depend_on_the_directory_it_is_written_from(relative_run, tmp_path, monkeypatch):
    from eval.bleu import describe_system

    described = {}
    for cwd in (relative_run, tmp_path):
        monkeypatch.chdir(cwd)
        described[cwd] = {name: describe_system(relative_run / "runs" / name / "checkpoint_last.pt")
                          for name in ("word_kd", "seq_kd", "moved_run")}
    assert described[relative_run] == described[tmp_path]
    word_kd, seq_kd, moved = (described[tmp_path][name] for name in ("word_kd", "seq_kd", "moved_run"))
    assert word_kd["method"] == "word-KD" and word_kd["teacher_label_smoothing"] == [0.1]
    assert word_kd["teacher_path"] == str(relative_run / "teachers" / "t.pt") and word_kd["warnings"] == []
    assert word_kd["data"] == str(relative_run / "data" / "bin")
    assert seq_kd["method"] == "seq-KD" and seq_kd["teacher_label_smoothing"] == [0.1] and seq_kd["distill_beam"] == 1
    assert moved == word_kd


def test_a_path_that_cannot_be_resolved_is_a_warning_never_another_method(relative_run, tmp_path):
    from eval.bleu import describe_system

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("word_kd", "seq_kd"):
        (elsewhere / f"{name}.pt").write_bytes((relative_run / "runs" / name / "checkpoint_last.pt").read_bytes())
    word_kd, seq_kd = describe_system(elsewhere / "word_kd.pt"), describe_system(elsewhere / "seq_kd.pt")
    # the KD criterion with alpha > 0 is word-KD whatever is missing; its teacher's label smoothing is unknown
    assert word_kd["method"] == "word-KD" and word_kd["teacher_label_smoothing"] is None
    assert word_kd["warnings"][:2] == [
        f"teacher teachers/t.pt (relative to where fairseq-train ran) not found under {elsewhere}, "
        f"{', '.join(map(str, list(elsewhere.parents)[:4]))}",
        "training data data/bin (relative to where fairseq-train ran) not found under " + ", ".join(
            map(str, [elsewhere, *list(elsewhere.parents)[:4]]))]
    assert "teacher label smoothing unknown: its teacher checkpoint is not found" in word_kd["warnings"]
    # without its data a seq-KD student cannot be told from a CE one: unknown, never CE
    assert seq_kd["method"] == "unknown" and seq_kd["teacher_label_smoothing"] is None
    assert any(w.startswith("training data distilled/bin (relative to where") for w in seq_kd["warnings"])

    fake_bleu(tmp_path / "run" / "word_kd" / "eval" / "bleu-test.json", 10.0, word_kd, "a")
    fake_bleu(tmp_path / "run" / "seq_kd" / "eval" / "bleu-test.json", 9.0, seq_kd, "b")
    table = markdown_table(build_rows(tmp_path / "run")).splitlines()
    assert table[2].startswith("| seq_kd | unknown | unknown |") and table[3].startswith("| word_kd | word-KD T=1 α=0.5 | unknown |")
    text = write_report(tmp_path / "run").read_text()
    assert "## Warnings" in text and "- **word_kd**: teacher teachers/t.pt (relative to where fairseq-train ran)" in text


@pytest.mark.slow
def test_students_trained_with_relative_paths_are_recorded_alike_from_another_directory(bible_slice,
                                                                                        trained_checkpoint, tmp_path):
    """fairseq-train and lskd-distill-corpus given relative paths in one directory; lskd-eval bleu and
    lskd-report run in another: word-KD and seq-KD students keep their method and their teacher's LS."""
    from conftest import run_module, train_tiny

    from eval.bleu import describe_system

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "teachers").mkdir(parents=True)
    elsewhere.mkdir()
    (work / "data").symlink_to(bible_slice)
    (work / "teachers" / "t.pt").write_bytes(trained_checkpoint.read_bytes())  # label smoothing 0.1
    train_tiny(Path("data/bin"), Path("runs/word_kd"), "--criterion", "label_smoothed_cross_entropy_with_kd",
               "--teacher-path", "teachers/t.pt", "--kd-alpha", "0.5", updates=1, cwd=work)
    run_module("data_prep.distill", "--data", "data", "--teacher-path", "teachers/t.pt", "--out", "distilled",
               "--beam", "1", "--max-len-a", "0", "--max-len-b", "5", "--workers", "1", cwd=work)
    assert Path(json.loads((work / "distilled" / "distill.json").read_text())["teachers"][0]["path"]).is_absolute()
    train_tiny(Path("distilled/bin"), Path("runs/seq_kd"), "--criterion", "label_smoothed_cross_entropy", updates=1,
               cwd=work)
    records = {}
    for name in ("word_kd", "seq_kd"):
        checkpoint = work / "runs" / name / "checkpoint_last.pt"
        run_module("eval.cli", "bleu", "--checkpoint", str(checkpoint), "--data", str(bible_slice), "--split",
                   "valid", "--beam", "1", "--out", f"run/{name}/eval", cwd=elsewhere)
        records[name] = json.loads((elsewhere / "run" / name / "eval" / "bleu-valid.json").read_text())["system"]
        assert records[name] == json.loads(json.dumps(describe_system(checkpoint)))  # as from any directory
    assert records["word_kd"]["method"] == "word-KD" and records["word_kd"]["teacher_label_smoothing"] == [0.1]
    assert records["seq_kd"]["method"] == "seq-KD" and records["seq_kd"]["teacher_label_smoothing"] == [0.1]
    assert records["word_kd"]["warnings"] == records["seq_kd"]["warnings"] == []
    run_module("eval.report", "run", cwd=elsewhere)
    table = (elsewhere / "run" / "report.md").read_text()
    assert "| seq_kd | seq-KD beam 1 | LS 0.1 |" in table and "| word_kd | word-KD T=1 α=0.5 | LS 0.1 |" in table


def fake_speed(path, sha, int8_words, int8_mb, int8_bleu, fairseq_words=100.0):
    """An lskd-eval speed record: fairseq and CTranslate2 int8 at 1 thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engines = {"fairseq": {"parameters": 2_000_000, "size_bytes": 80e6, "bleu": {"score": int8_bleu + 0.1}},
               "ct2-int8": {"parameters": 2_000_000, "size_bytes": int8_mb * 1e6, "bleu": {"score": int8_bleu}}}
    runs = [{"engine": "fairseq", "threads": 1, "words_per_second": fairseq_words},
            {"engine": "ct2-int8", "threads": 1, "words_per_second": int8_words},
            {"engine": "ct2-int8", "threads": 2, "words_per_second": 2 * int8_words}]
    path.write_text(json.dumps({"checkpoint": {"path": f"/ckpt/{sha}.pt", "sha256": sha * 64}, "engines": engines,
                                "runs": runs, "split": "test", "data": {"fingerprint": "f" * 64}, "cores": 2,
                                "decoding": {"beam": 5}, "measurement": "how", "command": "lskd-eval speed ...",
                                "versions": {}}))


def test_report_has_size_and_speed_columns_a_line_per_student_and_the_trade_off_picture(tmp_path):
    teacher = {"method": "CE", "label_smoothing": 0.1, "teacher_label_smoothing": None}
    student = {"method": "word-KD", "label_smoothing": 0.0, "teacher_label_smoothing": [0.1], "kd_temperature": 1.0,
               "kd_alpha": 0.5, "teacher_path": "/ckpt/a.pt"}
    fake_bleu(tmp_path / "teacher_ls0.1" / "eval" / "bleu-test.json", 20.0, teacher, "a")
    fake_bleu(tmp_path / "student_seed1" / "eval" / "bleu-test.json", 15.0, student, "b")
    fake_speed(tmp_path / "teacher_ls0.1" / "eval" / "speed-test.json", "a", 400.0, 8.0, 19.9)
    fake_speed(tmp_path / "student_seed1" / "eval" / "speed-test.json", "b", 1200.0, 2.0, 14.8)
    # a CTranslate2 BLEU record is the system's int8 BLEU, not another seed of it
    record = json.loads((tmp_path / "student_seed1" / "eval" / "bleu-test.json").read_text())
    record["scores"]["bleu"]["score"], record["engine"] = 14.7, {"name": "ctranslate2-int8"}
    (tmp_path / "student_seed1" / "eval" / "bleu-test-ctranslate2-int8.json").write_text(json.dumps(record))
    rows = build_rows(tmp_path)
    table = markdown_table(rows).splitlines()
    assert table[0].endswith("| ECE | params | MB (int8) | words/s (int8, 1 thread) | int8 BLEU |")
    assert table[2] == "| student | word-KD T=1 α=0.5 | LS 0.1 | 0 | 1 | 15.00 | 16.00 | 17.00 | - | - | 2.00 M | 2.0 | 1200 | 14.70 |"
    assert table[3].endswith("| 20.00 | 21.00 | 22.00 | - | - | 2.00 M | 8.0 | 400 | 19.90 |")
    assert summary_lines(rows)[-1] == ("student: 3.0 x faster and 4.0 x smaller than its teacher teacher_ls0.1, at 75 % "
                                       "of its BLEU (CTranslate2 int8, 1 thread; BLEU with fairseq)")
    text = write_report(tmp_path).read_text()
    assert "![bleu_vs_words_per_second](plots/bleu_vs_words_per_second.png)" in text
    fake_bleu(tmp_path / "teacher_ls0.1" / "eval" / "bleu-test.json", 0.0, teacher, "a")  # an untrained teacher
    assert summary_lines(build_rows(tmp_path))[-1].startswith("student: 3.0 x faster and 4.0 x smaller than its "
                                                              "teacher teacher_ls0.1, at BLEU 15.00 to its 0.00 (")
    assert (tmp_path / "plots" / "bleu_vs_words_per_second.png").stat().st_size > 1000
    assert "- speed: checkpoint `/ckpt/b.pt`" in text and "ct2-int8 x 2" in text


def test_report_matches_records_by_checkpoint_and_split_and_names_what_it_leaves_out(tmp_path, caplog):
    teacher = {"method": "CE", "label_smoothing": 0.1, "teacher_label_smoothing": None}
    fake_bleu(tmp_path / "teacher_ls0.1" / "eval" / "bleu-test.json", 20.0, teacher, "a")
    fake_speed(tmp_path / "teacher_ls0.1" / "eval" / "speed-test.json", "a", 400.0, 8.0, 19.9)
    valid_speed = tmp_path / "teacher_ls0.1" / "eval" / "speed-valid.json"  # sorts after speed-test.json
    fake_speed(valid_speed, "a", 999.0, 8.0, 5.0)
    valid_speed.write_text(valid_speed.read_text().replace('"split": "test"', '"split": "valid"'))
    orphan = tmp_path / "student_seed1" / "eval" / "stability-test.json"  # its BLEU record is missing
    orphan.parent.mkdir(parents=True)
    orphan.write_text(json.dumps({"one_minus_s": 0.3, "ece_15_bins": 0.05, "split": "test",
                                  "checkpoint": {"path": "/ckpt/b.pt", "sha256": "b" * 64}}))
    with caplog.at_level("WARNING", logger="eval.report"):
        rows = build_rows(tmp_path)
    assert markdown_table(rows).splitlines()[2].endswith("| 8.0 | 400 | 19.90 |")  # the test split's, not valid's 999
    left_out = [r.getMessage() for r in caplog.records]
    assert len(left_out) == 2 and any(m.startswith(f"{valid_speed}: no BLEU record") for m in left_out)
    assert any(m.startswith(f"{orphan}: no BLEU record") and "split 'test'" in m for m in left_out)


def test_a_report_written_outside_the_run_shows_each_picture_once_with_paths_from_the_report(tmp_path):
    run = tmp_path / "runs" / "q"
    fake_bleu(run / "teacher_ls0.1" / "eval" / "bleu-test.json", 20.0, {"method": "CE", "label_smoothing": 0.1}, "a")
    fake_speed(run / "teacher_ls0.1" / "eval" / "speed-test.json", "a", 400.0, 8.0, 19.9)
    write_report(run)  # an earlier report in the run directory drew run/plots/bleu_vs_words_per_second.png
    (run / "plots" / "penultimate_a_b_c.png").write_bytes(b"\x89PNG")  # a picture of the run's own
    text = write_report(run, tmp_path / "runs" / "q_report.md").read_text()
    pictures = re.findall(r"!\[[^]]*\]\(([^)]*)\)", text)
    assert pictures == ["plots/bleu_vs_words_per_second.png", "q/plots/penultimate_a_b_c.png"], pictures
    elsewhere = write_report(run, tmp_path / "elsewhere" / "report.md").read_text()
    assert re.findall(r"!\[[^]]*\]\(([^)]*)\)", elsewhere) == ["plots/bleu_vs_words_per_second.png",
                                                                "../runs/q/plots/penultimate_a_b_c.png"]


def test_compare_says_when_there_is_no_difference_to_test(tmp_path, capsys):
    """Before: the same file as baseline and system printed p = 0.0010, which reads as significant."""
    hyp, ref, other = write(tmp_path / "h.txt", HYPS), write(tmp_path / "r.txt", REFS), write(tmp_path / "o.txt", REFS)
    assert eval_main(["compare", "--baseline", str(hyp), "--system", str(hyp), "--ref", str(ref), "--samples", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("the same score, no difference to test" in line and "p =" not in line for line in lines)
    assert eval_main(["compare", "--baseline", str(hyp), "--system", str(other), "--ref", str(ref), "--samples", "50"]) == 0
    assert all(re.search(r", p = 0\.\d{4}  \(", line) for line in capsys.readouterr().out.splitlines())


def test_compare_names_the_files_whose_line_counts_differ(tmp_path, capsys):
    hyp, ref = write(tmp_path / "h.txt", HYPS), write(tmp_path / "r.txt", REFS[:3])
    assert eval_main(["compare", "--baseline", str(hyp), "--system", str(hyp), "--ref", str(ref)]) == 2
    assert capsys.readouterr().err.strip() == (f"lskd-eval: error: a paired test needs the same number of lines in "
                                               f"every file: {hyp} has 4, {hyp} has 4, {ref} has 3")


def test_lskd_report_names_a_missing_run_directory(tmp_path, capsys):
    from eval.report import main as report_main

    assert report_main([str(tmp_path / "runs" / "quickstrat")]) == 2
    assert capsys.readouterr().err.strip() == f"lskd-report: error: {tmp_path / 'runs' / 'quickstrat'}: no such directory"


def test_lskd_eval_table_names_a_missing_record(tmp_path, capsys):
    from eval.cli import main as eval_main

    assert eval_main(["table", str(tmp_path / "bleu-tset.json")]) == 2  # a typo
    assert capsys.readouterr().err.strip() == f"lskd-eval: error: {tmp_path / 'bleu-tset.json'}: no such file"


def test_lskd_eval_table_names_the_command_that_wrote_a_record_of_another_kind(tmp_path, capsys):
    from eval.cli import main as eval_main

    record = write(tmp_path / "stability-test.json", [json.dumps({"command": "/venv/bin/lskd-eval stability --split test",
                                                                  "stability": 0.9})])
    assert eval_main(["table", str(record)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"lskd-eval: error: {record}: the record has no '"), error
    assert error.endswith("' (written by 'lskd-eval stability': another kind of record, or damaged); "
                          "rerun the command that wrote it"), error


@pytest.mark.parametrize("damage,message", [
    ("[]", "expected a JSON object, found a list"),
    ('{"scores": ', "not a readable JSON record"),
    ("drop scores", "the record has no 'scores.bleu.score'"),
])
def test_a_damaged_record_stops_the_report_naming_the_file(tmp_path, capsys, damage, message):
    from eval.report import main as report_main

    record = tmp_path / "teacher_ls0.1" / "eval" / "bleu-test.json"
    fake_bleu(record, 20.0, {"method": "CE", "label_smoothing": 0.1}, "a")
    if damage == "drop scores":
        damaged = json.loads(record.read_text())
        del damaged["scores"]
        damage = json.dumps(damaged)
    record.write_text(damage)
    assert report_main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"lskd-report: error: {record}: {message}"), error


def test_a_one_seed_ls_gap_says_whether_the_two_models_differ_never_that_it_is_resolved(tmp_path):
    """Issue 29: a paired bootstrap resamples sentences: it speaks of two trained models, not of LS teachers."""
    def seqkd(teacher):
        return {"method": "seq-KD", "label_smoothing": 0, "teacher_label_smoothing": [0.1 if teacher == "a" else 0.0],
                "distill_beam": 5, "distill_teachers": [f"/ckpt/{teacher}.pt"]}

    ref = write(tmp_path / "ref.txt", REFS * 10)
    for name, hyps, teacher, sha in (("student_ls0.1", REFS * 10, "a", "c"), ("student_ls0", HYPS * 10, "b", "d")):
        path = tmp_path / name / "eval" / "bleu-test.json"
        fake_bleu(path, 30.0 if teacher == "a" else 10.0, seqkd(teacher), sha)
        record = json.loads(path.read_text())
        record |= {"hypotheses_file": str(write(tmp_path / f"{name}.hyp", hyps)), "references_file": str(ref)}
        path.write_text(json.dumps(record))
    line = summary_lines(build_rows(tmp_path))[0]
    assert line.endswith("; paired bootstrap over test sentences p = 0.001: these two models differ on this test set)")
    assert "+20.00 BLEU on one seed: this compares two trained models" in line and "resolved" not in line
    write(tmp_path / "student_ls0.hyp", HYPS[:1] + (REFS * 10)[1:])  # now they differ in one sentence of 40
    line = summary_lines(build_rows(tmp_path))[0]
    assert re.search(r"paired bootstrap over test sentences p = 0\.[1-9]\d\d: these two models do not differ measurably", line), line
    write(tmp_path / "student_ls0.hyp", REFS * 10)  # and now in none
    assert summary_lines(build_rows(tmp_path))[0].endswith("paired bootstrap over test sentences: the same BLEU)")


def test_the_report_shows_the_loop_rate_length_ratio_and_what_was_left_out_of_a_distilled_corpus(tmp_path):
    from eval.bleu import distilled_data_summary

    manifest = {"counts": {"inputs": 1000, "outputs": 900, "decoded": 880, "loop_dropped": 70,
                           "length_ratio_copied_reference": 20, "too_long_dropped": 30},
                "filter": {"enabled": True}, "source_text": [{"lines": 400}],
                "quality": {"teacher_outputs": {"loop_rate": 0.218, "length_ratio": {"mean": 1.31}},
                            "references": {"loop_rate": 0.018, "length_ratio": {"mean": 1.02}},
                            "written": {"loop_rate": 0.0, "length_ratio": {"mean": 1.05}}}}
    summary = distilled_data_summary(manifest)
    assert summary["left_out"] == {"loop_dropped": 70, "length_ratio_copied_reference": 20, "too_long_dropped": 30}
    assert summary["source_text_lines"] == 400 and summary["teacher_outputs_loop_rate"] == 0.218
    seqkd = {"method": "seq-KD", "label_smoothing": 0, "teacher_label_smoothing": [0.1], "distill_beam": 5,
             "distilled_data": summary}
    fake_bleu(tmp_path / "student_seqkd" / "eval" / "bleu-test.json", 9.0, seqkd, "c")
    fake_bleu(tmp_path / "student_gold" / "eval" / "bleu-test.json", 8.0, {"method": "CE", "label_smoothing": 0}, "d")
    text = write_report(tmp_path).read_text()
    assert ("| student_seqkd | 21.8 % | 1.8 % | 1.31 | 1.02 | on | 1000 | 900 | 20 length ratio copied reference, "
            "70 loop dropped, 30 too long dropped |") in text
    assert text.count("| student_gold |") == 1  # in the results only
