"""lskd-report on lskd-train's classification records: seeds as mean ± sd, the LS-teacher gap, provenance."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from eval.report import main as report_main
from eval.report import write_report
from eval.vision_report import classification_rows, classification_table, summary_lines

REPO = Path(__file__).resolve().parent.parent


def fake_record(path: Path, top1: float, sha: str, system: dict, ratio: float = 1.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "split": "test", "command": "lskd-train ...", "versions": {"torch": "2.13.0", "lskd": "0.1.0"},
        "scores": {"top1": top1, "top5": top1 + 5, "one_minus_s": 0.25, "ece_15_bins": 0.03},
        "checkpoint": {"path": f"/runs/{sha}.pt", "sha256": sha * 64},
        "data": {"name": "fashion_mnist", "fingerprint": "f" * 64, "imbalance_ratio": ratio, "train_examples": 60000},
        "system": {"seed": 1, "epochs": 30, **system},
    }))


def system(method="KD", model="resnet8", ls=0.0, teacher=None, temperature=None, alpha=None):
    return {"method": method, "model": model, "label_smoothing": ls, "kd_alpha": alpha, "kd_temperature": temperature,
            "teacher_label_smoothing": None if teacher is None else teacher[1],
            "teacher": None if teacher is None else {"sha256": teacher[0] * 64}}


def test_classification_report_tabulates_seeds_and_answers_the_papers_question(tmp_path):
    fake_record(tmp_path / "balanced/teacher_ls0.1/eval/classification-test.json", 92.0, "a", system("CE", "resnet20", 0.1))
    fake_record(tmp_path / "balanced/teacher_ls0/eval/classification-test.json", 91.0, "b", system("CE", "resnet20", 0.0))
    for seed, (top_a, top_b) in enumerate([(90.0, 89.0), (92.0, 89.5)], start=1):
        fake_record(tmp_path / f"balanced/student_cnn_ls0.1_T1_seed{seed}/eval/classification-test.json", top_a,
                    f"c{seed}", system(teacher=("a", 0.1), temperature=1.0, alpha=1.0))
        fake_record(tmp_path / f"balanced/student_cnn_ls0_T1_seed{seed}/eval/classification-test.json", top_b,
                    f"d{seed}", system(teacher=("b", 0.0), temperature=1.0, alpha=1.0))
    fake_record(tmp_path / "lt100/student_cnn_gold_seed1/eval/classification-test.json", 70.0, "e", system("CE"), 100)
    rows = classification_rows(tmp_path)
    table = classification_table(rows).splitlines()
    assert table[0] == ("| system | method | model | LS | teacher LS | T | alpha | data | seeds | top-1 | top-5 | "
                        "1 - S | ECE |")
    assert table[2] == ("| balanced/student_cnn_ls0.1_T1 | KD | resnet8 | 0 | 0.1 | 1 | 1 | balanced | 2 | "
                        "91.00 ± 1.41 | 96.00 ± 1.41 | 0.2500 | 0.0300 |")
    assert table[-1].startswith("| lt100/student_cnn_gold | CE | resnet8 | 0 | - | - | - | LT 100 | 1 | 70.00 |")
    assert summary_lines(rows) == [
        "balanced teachers: LS 0: top-1 91.00, 1 - S 0.2500, ECE 0.0300 | LS 0.1: top-1 92.00, 1 - S 0.2500, ECE 0.0300",
        "balanced resnet8 students, T=1: teacher LS 0.1 91.00 ± 1.41, LS 0 89.25 ± 0.35 (LS teacher - non-LS teacher: "
        "+1.75 top-1, mean over seeds 1, 2; 95 % CI [-7.78, +11.28]; paired t-test over seeds: t(1) = 2.33, p = 0.258: "
        "not resolved (p >= 0.05); the seeds vary the students only: one teacher per label smoothing taught them all, "
        "and the teachers' own training variance is not measured)",
    ]
    text = write_report(tmp_path, note="smoke").read_text()
    assert "vs temperature" not in text  # one temperature: nothing to plot
    fake_record(tmp_path / "balanced/student_cnn_ls0.1_T2_seed1/eval/classification-test.json", 88.0, "f",
                system(teacher=("a", 0.1), temperature=2.0, alpha=1.0))
    text = write_report(tmp_path, note="smoke").read_text()
    assert "## Results (image classification)" in text and "Settings: smoke" in text
    assert "![top-1 vs temperature](plots/top1_vs_temperature.png)" in text
    assert (tmp_path / "plots" / "top1_vs_temperature.png").stat().st_size > 1000
    assert "sha256 aaaaaaaaaaaa" in text and "torch 2.13.0" in text


def test_report_without_any_records_is_still_an_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no bleu-*.json records" in capsys.readouterr().err


@pytest.mark.slow
def test_recipe_runs_end_to_end_on_a_slice_and_reports(tmp_path):
    """The real recipe on 600 images, 1 epoch, tiny models: every stage, the picture and the report."""
    env = {**os.environ, "LSKD_RUN_DIR": str(tmp_path), "LSKD_SEEDS": "1", "TEMPERATURES": "1 64", "IMBALANCE_RATIOS": "1 10",
           "EPOCHS": "1", "TRAIN_LIMIT": "600", "OMP_NUM_THREADS": "1",
           "TRAIN_EXTRA": "model.width=4 data.test_limit=300 progress=false"}
    run = subprocess.run(["bash", str(REPO / "recipes" / "fmnist_ls_kd.sh")], capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    text = (tmp_path / "report.md").read_text()
    assert text.count("| balanced/") == 2 + 2 * 2 * 2 + 2 and text.count("| lt10/") == 12
    assert "LS teacher - non-LS teacher" in text and "penultimate_teachers" in text
    assert (tmp_path / "lt10" / "penultimate_teachers.png").stat().st_size > 1000
    again = subprocess.run(["bash", str(REPO / "recipes" / "fmnist_ls_kd.sh")], capture_output=True, text=True, env=env,
                           timeout=300)
    # every stage of a finished run is skipped: 2 x 12 trainings, 2 pictures and the report, nothing runs again
    assert again.returncode == 0 and "running" not in again.stdout
    assert again.stdout.count("done (same command and inputs), skipping") == 2 * 12 + 2 + 1
