"""lskd-eval and lskd-report: scoring, refusals, significance, analysis passes and the report."""
import json
import re
import subprocess
import sys

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
    with pytest.raises(CorpusError, match=r"3 hypotheses for 5 sentences; missing ids \[1, 4\]"):
        ordered({0: "a", 2: "b", 3: "c"}, 5)
    assert ordered({1: "b", 0: "a"}, 2) == ["a", "b"]


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
                        "(LS teacher - non-LS teacher: +0.50 BLEU)")
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


def test_the_ls_gap_says_whether_paired_bootstrap_resolves_it(tmp_path):
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
    assert line.endswith("(LS teacher - non-LS teacher: +20.00 BLEU, paired bootstrap p = 0.001: the difference is "
                         "resolved (p < 0.05))")
    write(tmp_path / "student_ls0.hyp", HYPS[:1] + (REFS * 10)[1:])  # now they differ in one sentence of 40
    line = summary_lines(build_rows(tmp_path))[0]
    assert re.search(r"paired bootstrap p = 0\.[1-9]\d\d: the difference is not resolved at this budget", line), line
    write(tmp_path / "student_ls0.hyp", REFS * 10)  # and now in none
    assert summary_lines(build_rows(tmp_path))[0].endswith("paired bootstrap: the same BLEU, no difference to resolve)")
