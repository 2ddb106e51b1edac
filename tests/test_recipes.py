"""Recipes: the --dry-run commands a GPU user would run, and the smoke quickstart end to end."""
import json
import shlex
import subprocess
from collections import Counter
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent


def dry_run(*args: str, recipe: str = "iwslt14_de_en.sh", **env: str) -> list[list[str]]:
    result = subprocess.run(["bash", str(REPO / "recipes" / recipe), "--dry-run", *args],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_iwslt14_dry_run_lists_the_whole_grid():
    commands = dry_run("/data/de-en.tgz", SEEDS="1 2 3", TEMPERATURES="1 2 3 64")
    programs = Counter(c[0] for c in commands)
    # 2 teachers; per teacher and seed: 4 word-KD + 1 seq-KD student; 3 gold baselines
    assert programs["fairseq-train"] == 2 + 2 * 3 * (4 + 1) + 3
    assert programs["lskd-distill-corpus"] == 2
    assert programs["lskd-eval"] == 2 + (2 + 2 * 3 * 5 + 3)  # stability for teachers, BLEU for all
    assert commands[0][:2] == ["lskd-prepare", "iwslt14"] and commands[-1][0] == "lskd-report"
    temperatures = {c[c.index("--kd-temperature") + 1] for c in commands if "--kd-temperature" in c}
    assert temperatures == {"1", "2", "3", "64"}


def test_iwslt14_dry_run_commands_parse_with_fairseqs_own_parser():
    from fairseq import options

    commands = dry_run("/data/de-en.tgz", SEEDS="1", TEMPERATURES="2", FAIRSEQ_EXTRA="--distributed-world-size 2")
    trains = [c[1:] for c in commands if c[0] == "fairseq-train"]
    kd = [c for c in trains if "label_smoothed_cross_entropy_with_kd" in c]
    assert len(kd) == 2
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=kd[0])
    assert (args.arch, args.lr, args.dropout, args.max_tokens) == ("transformer_iwslt_de_en", [5e-4], 0.3, 4096)
    assert (args.kd_temperature, args.kd_alpha, args.distributed_world_size) == (2.0, 0.5, 2)
    assert args.teacher_path.endswith("teacher_ls0.1/checkpoint_last.pt")


def test_iwslt14_without_an_archive_says_how_to_call_it():
    result = subprocess.run(["bash", str(REPO / "recipes" / "iwslt14_de_en.sh"), "--dry-run"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "usage: bash recipes/iwslt14_de_en.sh" in result.stderr


def test_iwslt14_dry_run_shards_sequence_level_decoding():
    commands = dry_run("/data/de-en.tgz", SEEDS="1", DISTILL_SHARDS="2")
    distill = [c for c in commands if c[0] == "lskd-distill-corpus"]
    assert [(c[c.index("--shard-id") + 1], c[c.index("--num-shards") + 1]) for c in distill] == [("0", "2"), ("1", "2")] * 2


def test_bible_temperature_sweep_dry_run_lists_every_student_and_parses():
    from fairseq import options

    commands = dry_run(recipe="bible_temperature_sweep.sh", SEEDS="1 2", TEMPERATURES="1 2 3 64")
    trains = [c[1:] for c in commands if c[0] == "fairseq-train"]
    assert len(trains) == 2 + 2 * 2 * 4 + 2  # teachers; per seed 4 T x 2 teachers; a gold student per seed
    assert Counter(c[1] for c in commands if c[0] == "lskd-eval") == {"bleu": len(trains), "stability": 2}
    kd = [options.parse_args_and_arch(options.get_training_parser(), input_args=c) for c in trains
          if "label_smoothed_cross_entropy_with_kd" in c]
    assert Counter((a.kd_temperature, a.teacher_path.split("/")[-2]) for a in kd) == {
        (t, f"teacher_ls{ls}"): 2 for t in (1.0, 2.0, 3.0, 64.0) for ls in ("0.1", "0")}
    assert {(a.encoder_embed_dim, a.label_smoothing, a.kd_alpha) for a in kd} == {(128, 0.0, 0.5)}
    assert commands[-1][:2] == ["lskd-report", "runs/bible_temperature_sweep"]


def test_bible_temperature_sweep_can_reuse_the_quickstarts_teachers():
    commands = dry_run(recipe="bible_temperature_sweep.sh", SEEDS="1", TEMPERATURES="2", LSKD_TEACHERS="runs/quickstart")
    trains = [c for c in commands if c[0] == "fairseq-train"]
    assert len(trains) == 2 + 1  # no teacher is trained
    assert all("runs/quickstart/teacher_ls" in c[c.index("--teacher-path") + 1] for c in trains if "--teacher-path" in c)


def test_quickstart_dry_run_lists_teachers_students_and_report():
    commands = dry_run(recipe="quickstart.sh")
    programs = Counter(" ".join(c[:2]) if c[0] == "lskd-eval" else c[0] for c in commands)
    assert programs == {"lskd-prepare": 1, "fairseq-train": 2 + 5, "lskd-distill-corpus": 2, "lskd-eval bleu": 7,
                        "lskd-eval stability": 7, "lskd-eval project": 1, "lskd-eval table": 1, "lskd-report": 1}
    seqkd = [c for c in commands if c[0] == "fairseq-train" and c[1].endswith("/bin") and "distilled_ls" in c[1]]
    assert sorted(c[1] for c in seqkd) == ["runs/quickstart/distilled_ls0.1/bin", "runs/quickstart/distilled_ls0/bin"]
    distill = [c for c in commands if c[0] == "lskd-distill-corpus"]
    assert all(c[c.index("--beam") + 1] == "1" for c in distill)
    smoke = dry_run(recipe="quickstart.sh", LSKD_PROFILE="smoke")
    assert smoke[0][-2:] == ["--limit-train", "1000"]
    assert {c[c.index("--max-update") + 1] for c in smoke if c[0] == "fairseq-train"} == {"30"}


@pytest.mark.parametrize("outputs,sharing", [
    ({"joined_dictionary": True}, "--share-all-embeddings"),
    ({}, "--share-all-embeddings"),  # prepared before prep.json recorded it: always joined
    ({"joined_dictionary": False}, "--share-decoder-input-output-embed"),  # lskd-prepare --teacher, separate dictionaries
])
def test_a_prepared_corpus_with_separate_dictionaries_shares_only_the_decoders_embeddings(tmp_path, outputs, sharing):
    (tmp_path / "prep.json").write_text(json.dumps({"outputs": outputs}))
    trains = [c for c in dry_run(recipe="quickstart.sh", LSKD_PREPARED=str(tmp_path)) if c[0] == "fairseq-train"]
    assert len(trains) == 2 + 5 and all(c[1].startswith(str(tmp_path)) or "distilled" in c[1] for c in trains)
    other = ({"--share-all-embeddings", "--share-decoder-input-output-embed"} - {sharing}).pop()
    assert all(sharing in c and other not in c for c in trains)


def run_quickstart(run_dir: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(run_dir.parent), "LSKD_PROFILE": "smoke",
           "LSKD_RUN_DIR": str(run_dir), "LSKD_DATA_DIR": str(data_dir)}
    result = subprocess.run(["bash", str(REPO / "recipes" / "quickstart.sh")], capture_output=True, text=True,
                            env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_smoke_quickstart_end_to_end_fills_the_report_and_reruns_nothing(tmp_path):
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    first = run_quickstart(run_dir, data_dir).stdout
    systems = {"teacher_ls0.1", "teacher_ls0", "student_gold", "student_wordkd_ls0.1_T1", "student_wordkd_ls0_T1",
               "student_seqkd_ls0.1", "student_seqkd_ls0"}
    table = [line for line in (run_dir / "report.md").read_text().splitlines() if line.startswith("| ")]
    header, rows = [c.strip() for c in table[0].strip("|").split("|")], table[1:]
    assert header == ["system", "method", "teacher", "LS", "seeds", "BLEU", "chrF", "TER", "1 - S", "ECE"]
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")] for row in rows}
    assert set(cells) == systems
    for name, row in cells.items():
        assert len(row) == len(header) and all(c not in ("", "-", "n/a") for c in row), (name, row)
        assert all(float(c) >= 0 for c in row[5:]), (name, row)  # BLEU, chrF, TER, 1 - S, ECE are numbers
    assert cells["student_seqkd_ls0.1"][1:3] == ["seq-KD beam 1", "LS 0.1"]
    assert cells["student_wordkd_ls0_T1"][1:3] == ["word-KD T=1 α=0.5", "LS 0"]
    assert cells["student_gold"][1:3] == ["CE", "none"]
    # the five-line summary: teachers, the two KD methods by teacher, the gold baseline, the report
    summary = first.splitlines()[-5:]
    assert summary[0].startswith("teachers: ") and summary[-1] == f"report: {run_dir}/report.md"
    assert sum("(LS teacher - non-LS teacher: " in line for line in summary) == 2
    # nothing lost: the distilled corpora hold one target per training source
    for ls in ("0.1", "0"):
        assert len((run_dir / f"distilled_ls{ls}" / "raw" / "train.en").read_text().splitlines()) == 1000
    checkpoints = {p: p.stat().st_mtime_ns for p in run_dir.rglob("checkpoint_last.pt")}
    assert len(checkpoints) == 7

    second = run_quickstart(run_dir, data_dir).stdout
    assert "training (log" not in second and "decoding the training sources" not in second
    assert second.count("skipping") >= 7 + 7 + 7 + 2  # trained, scored, analysed; distilled
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("checkpoint_last.pt")} == checkpoints
