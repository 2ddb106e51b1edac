"""Recipes: the --dry-run commands a GPU user would run, the one "already done" rule (`once` in
recipes/lib.sh) on fake commands, and the smoke quickstart end to end."""
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent


def dry_run(*args: str, recipe: str = "iwslt14_de_en.sh", **env: str) -> list[list[str]]:
    result = subprocess.run(["bash", str(REPO / "recipes" / recipe), "--dry-run", *args],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("recipe,args", [("quickstart.sh", ["--dryrun"]), ("fmnist_ls_kd.sh", ["--dryrun"]),
                                         ("bible_temperature_sweep.sh", ["--dry-run", "extra"]),
                                         ("iwslt14_de_en.sh", ["--dryrun", "/data/de-en.tgz"])])
def test_a_misspelled_flag_stops_a_recipe_before_anything_runs(tmp_path, recipe, args):
    """Before: `fmnist_ls_kd.sh --dryrun` ignored the flag and began the real run (a venv, then training)."""
    result = subprocess.run(["bash", str(REPO / "recipes" / recipe), *args], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LSKD_RUN_DIR": str(tmp_path / "run")})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"{recipe}: error: ") and "usage: bash " in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made: no venv, no run directory


@pytest.mark.parametrize("recipe,args,knob,value,kind", [
    ("quickstart.sh", [], "LSKD_STUDENT_UPDATES", "5e2", "integers"),
    ("quickstart.sh", [], "LSKD_KD_ALPHA", "half", "numbers"),
    ("bible_temperature_sweep.sh", [], "TEMPERATURES", "1 two 3", "numbers"),
    ("fmnist_ls_kd.sh", [], "LSKD_SEEDS", "1 -2", "integers"),
    ("quickstart.sh", [], "LSKD_SEEDS", "1 two", "integers"),
    ("bible_temperature_sweep.sh", [], "LSKD_TEACHER_SEEDS", "1 all", "integers"),
    ("iwslt14_de_en.sh", ["/data/de-en.tgz"], "DISTILL_SHARDS", "two", "integers"),
])
def test_a_knob_that_is_not_a_number_stops_the_recipe_naming_it(recipe, args, knob, value, kind):
    """Before: the dry run printed the commands and a real run failed minutes later in fairseq's parser."""
    result = subprocess.run(["bash", str(REPO / "recipes" / recipe), "--dry-run", *args], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", knob: value})
    bad = next(v for v in value.split() if not v.replace(".", "", 1).isdigit())
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{recipe}: error: {knob} must hold {kind}, got '{bad}'\n"


@pytest.mark.parametrize("recipe", ["quickstart.sh", "bible_temperature_sweep.sh"])
def test_an_absolute_run_directory_trains_on_an_absolute_data_directory(recipe):
    """fairseq records both paths as given; with an absolute --save-dir a relative data path could not be
    found again (the report warned, and a word-KD student's teacher was checked by vocabulary size only)."""
    trainings = [c for c in dry_run(recipe=recipe, LSKD_RUN_DIR="/abs/run") if c[0] == "fairseq-train"]
    assert all(Path(c[1]).is_absolute() for c in trainings), trainings  # seq-KD students: /abs/run/distilled_*
    assert str(REPO / "data" / "bible-de-en-4k" / "bin") in {c[1] for c in trainings}
    relative = [c for c in dry_run(recipe=recipe) if c[0] == "fairseq-train"]
    assert not any(Path(c[1]).is_absolute() for c in relative)  # a relative run directory keeps its paths


@pytest.mark.parametrize("recipe", ["bible_temperature_sweep.sh", "fmnist_ls_kd.sh"])
def test_the_old_seeds_knob_still_works_with_a_deprecation_line(recipe):
    def seeds_of(**env: str) -> tuple[set[str], str]:
        result = subprocess.run(["bash", str(REPO / "recipes" / recipe), "--dry-run"], capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", **env})
        assert result.returncode == 0, result.stderr
        dirs = {re.search(r"_seed(\d+)(?:\s|$)", line).group(1) for line in result.stdout.splitlines()
                if re.search(r"student_\S*_seed\d+(?:\s|$)", line)}
        return dirs, result.stderr

    assert seeds_of(SEEDS="4 5") == ({"4", "5"}, f"{recipe}: SEEDS is deprecated and will be removed: use LSKD_SEEDS\n")
    assert seeds_of(LSKD_SEEDS="6") == ({"6"}, "")
    assert seeds_of(LSKD_SEEDS="6", SEEDS="4 5")[0] == {"6"}  # the new name wins


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

    commands = dry_run(recipe="bible_temperature_sweep.sh", LSKD_SEEDS="1 2", TEMPERATURES="1 2 3 64")
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
    commands = dry_run(recipe="bible_temperature_sweep.sh", LSKD_SEEDS="1", TEMPERATURES="2", LSKD_TEACHERS="runs/quickstart")
    trains = [c for c in commands if c[0] == "fairseq-train"]
    assert len(trains) == 2 + 1  # no teacher is trained
    assert all("runs/quickstart/teacher_ls" in c[c.index("--teacher-path") + 1] for c in trains if "--teacher-path" in c)


def test_quickstart_dry_run_lists_teachers_students_and_report():
    commands = dry_run(recipe="quickstart.sh")
    programs = Counter(" ".join(c[:2]) if c[0] == "lskd-eval" else c[0] for c in commands)
    assert programs == {"lskd-prepare": 1, "fairseq-train": 2 + 5, "lskd-distill-corpus": 2, "lskd-eval bleu": 7,
                        "lskd-eval stability": 7, "lskd-eval speed": 7, "lskd-eval project": 1, "lskd-eval table": 1,
                        "lskd-report": 1}
    seqkd = [c for c in commands if c[0] == "fairseq-train" and c[1].endswith("/bin") and "distilled_ls" in c[1]]
    assert sorted(c[1] for c in seqkd) == ["runs/quickstart/distilled_ls0.1/bin", "runs/quickstart/distilled_ls0/bin"]
    distill = [c for c in commands if c[0] == "lskd-distill-corpus"]
    assert all(c[c.index("--beam") + 1] == "5" and c[c.index("--engine") + 1] == "ctranslate2"
               and c[c.index("--quantization") + 1] == "int8" and "--filter" in c and "--filtered" not in c
               for c in distill)
    speed = [c for c in commands if c[:2] == ["lskd-eval", "speed"]]
    assert all(c[c.index("--engines") + 1:c.index("--threads")] == ["fairseq", "ct2-int8"] for c in speed)
    smoke = dry_run(recipe="quickstart.sh", LSKD_PROFILE="smoke")
    assert smoke[0][-4:] == ["--limit-train", "1000", "--limit-test", "200"]
    assert {c[c.index("--max-update") + 1] for c in smoke if c[0] == "fairseq-train"} == {"30"}


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_quickstart_trains_every_student_per_seed_from_the_same_teachers():
    """Issue 29: LSKD_SEEDS="1 2 3": 5 students per seed from the two seed-1 teachers, one decoding per teacher;
    the first seed's paths and commands are those of the one-seed run (an existing run is not redone)."""
    commands = dry_run(recipe="quickstart.sh", LSKD_SEEDS="1 2 3")
    one_seed = dry_run(recipe="quickstart.sh")
    assert all(c in commands for c in one_seed if c[0] != "lskd-report")  # unchanged but the report's note
    trains = [c for c in commands if c[0] == "fairseq-train"]
    teachers = [c for c in trains if "/teacher_ls" in arg(c, "--save-dir")]
    assert sorted((arg(c, "--save-dir"), arg(c, "--seed")) for c in teachers) == [
        ("runs/quickstart/teacher_ls0", "1"), ("runs/quickstart/teacher_ls0.1", "1")]
    students = {arg(c, "--save-dir").removeprefix("runs/quickstart/"): c for c in trains if c not in teachers}
    assert sorted(students) == sorted(f"student_{kind}_seed{seed}" for seed in (1, 2, 3) for kind in (
        "seqkd_ls0.1", "seqkd_ls0", "wordkd_ls0.1_T1", "wordkd_ls0_T1", "gold"))
    assert all(arg(c, "--seed") == name[-1] for name, c in students.items())
    for ls in ("0.1", "0"):  # the same teacher and the same decoding for every seed
        assert {arg(students[f"student_wordkd_ls{ls}_T1_seed{s}"], "--teacher-path") for s in (1, 2, 3)} == {
            f"runs/quickstart/teacher_ls{ls}/checkpoint_last.pt"}
        assert {students[f"student_seqkd_ls{ls}_seed{s}"][1] for s in (1, 2, 3)} == {f"runs/quickstart/distilled_ls{ls}/bin"}
    assert len([c for c in commands if c[0] == "lskd-distill-corpus"]) == 2
    evaluated = Counter((c[1], arg(c, "--checkpoint").split("/")[2]) for c in commands if c[:2] in (
        ["lskd-eval", "bleu"], ["lskd-eval", "stability"], ["lskd-eval", "speed"]))
    assert all(evaluated[("bleu", name)] == 1 for name in students)
    # the first seed's students are analysed and measured; the other seeds' BLEU is what the test over seeds needs
    assert {name for (kind, name) in evaluated if kind == "speed"} == {n for n in students if n.endswith("seed1")} | {
        "teacher_ls0.1", "teacher_ls0"}
    assert "seeds 1 2 3; every seed taught by the seed-1 teachers" in arg(commands[-1], "--note")


def test_quickstart_with_teacher_seeds_trains_a_teacher_pair_per_seed():
    commands = dry_run(recipe="quickstart.sh", LSKD_TEACHER_SEEDS="1 2")
    trains = {arg(c, "--save-dir").removeprefix("runs/quickstart/"): c for c in commands if c[0] == "fairseq-train"}
    assert {name: arg(c, "--seed") for name, c in trains.items() if name.startswith("teacher")} == {
        "teacher_ls0.1": "1", "teacher_ls0": "1", "teacher_ls0.1_seed2": "2", "teacher_ls0_seed2": "2"}
    for ls in ("0.1", "0"):  # seed s learns from the teachers of seed s; seed 1 keeps the one-seed paths
        assert arg(trains[f"student_wordkd_ls{ls}_T1_seed2"], "--teacher-path") == f"runs/quickstart/teacher_ls{ls}_seed2/checkpoint_last.pt"
        assert arg(trains[f"student_wordkd_ls{ls}_T1_seed1"], "--teacher-path") == f"runs/quickstart/teacher_ls{ls}/checkpoint_last.pt"
        assert trains[f"student_seqkd_ls{ls}_seed2"][1] == f"runs/quickstart/distilled_ls{ls}_seed2/bin"
    distill = {arg(c, "--teacher-path"): arg(c, "--out") for c in commands if c[0] == "lskd-distill-corpus"}
    assert distill["runs/quickstart/teacher_ls0_seed2/checkpoint_last.pt"] == "runs/quickstart/distilled_ls0_seed2"
    assert len(distill) == 4 and len(trains) == 4 + 2 * 5
    assert sum(c[0] == "fairseq-train" for c in commands) == len(trains)  # no directory trained twice


@pytest.mark.parametrize("recipe", ["quickstart.sh", "bible_temperature_sweep.sh"])
@pytest.mark.parametrize("env,message", [
    ({"LSKD_TEACHER_SEEDS": "1 2", "LSKD_SEEDS": "1 3"}, "error: LSKD_TEACHER_SEEDS='1 2' must be the students' seeds "
     "(LSKD_SEEDS='1 3'): the students of seed s learn from the teachers of seed s"),
    ({"LSKD_SEEDS": "1 2 1"}, "error: LSKD_SEEDS repeats seed 1"),
])
def test_seeds_that_cannot_pair_are_refused(recipe, env, message):
    result = subprocess.run(["bash", str(REPO / "recipes" / recipe), "--dry-run"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", **env})
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"{recipe}: {message}\n")


def test_the_sweep_trains_teachers_per_seed_with_lskd_teacher_seeds():
    commands = dry_run(recipe="bible_temperature_sweep.sh", LSKD_TEACHER_SEEDS="1 2", TEMPERATURES="1 64")
    kd = [c for c in commands if c[0] == "fairseq-train" and "--teacher-path" in c]
    assert Counter((arg(c, "--seed"), arg(c, "--teacher-path").split("/")[2]) for c in kd) == {
        (seed, teacher): 2 for seed, suffix in (("1", ""), ("2", "_seed2")) for teacher in
        (f"teacher_ls0.1{suffix}", f"teacher_ls0{suffix}")}
    scored = Counter((c[1], arg(c, "--checkpoint").split("/")[2]) for c in commands if c[0] == "lskd-eval")
    assert scored[("stability", "teacher_ls0.1")] == 1 and scored[("bleu", "teacher_ls0.1_seed2")] == 1
    assert ("stability", "teacher_ls0.1_seed2") not in scored


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


def run_quickstart(run_dir: Path, data_dir: Path, **knobs: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(run_dir.parent), "LSKD_PROFILE": "smoke",
           "LSKD_RUN_DIR": str(run_dir), "LSKD_DATA_DIR": str(data_dir), **knobs}
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
    report = (run_dir / "report.md").read_text()
    results, distilled = report.split("## Results")[1].split("## Distilled data")
    table = [line for line in results.splitlines() if line.startswith("| ")]
    header, rows = [c.strip() for c in table[0].strip("|").split("|")], table[1:]
    assert header == ["system", "method", "teacher", "LS", "seeds", "BLEU", "chrF", "TER", "1 - S", "ECE",
                      "params", "MB (int8)", "words/s (int8, 1 thread)", "int8 BLEU"]
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")] for row in rows}
    assert set(cells) == systems
    for name, row in cells.items():
        assert len(row) == len(header) and all(c not in ("", "-", "n/a") for c in row), (name, row)
        # BLEU, chrF, TER, 1 - S, ECE, MB, words/s, int8 BLEU are numbers; parameters in millions
        assert all(float(c) >= 0 for c in row[5:10] + row[11:]) and row[10].endswith(" M"), (name, row)
    assert cells["student_seqkd_ls0.1"][1:3] == ["seq-KD beam 5", "LS 0.1"]
    assert cells["student_wordkd_ls0_T1"][1:3] == ["word-KD T=1 α=0.5", "LS 0"]
    assert cells["student_gold"][1:3] == ["CE", "none"]
    # the summary: teachers, the two KD methods by teacher (with a paired bootstrap verdict), the gold
    # baseline, each taught student against its teacher, the report
    lines = first.splitlines()
    summary = lines[max(i for i, line in enumerate(lines) if line.startswith("teachers: ")):]
    assert summary[-1] == f"report: {run_dir}/report.md" and len(summary) == 1 + 2 + 1 + 4 + 1
    assert sum("(LS teacher - non-LS teacher: " in line and "paired bootstrap over test sentences" in line
               and "on seed 1 alone: this compares two trained models" in line and "resolved" not in line
               for line in summary) == 2
    assert sum(" x faster and " in line and "smaller than its teacher teacher_ls" in line for line in summary) == 4
    assert (run_dir / "plots" / "bleu_vs_words_per_second.png").is_file()
    # nothing lost: the distilled corpora hold one target per training source (a 30-update teacher loops on
    # every sentence: the gold pairs stand in, counted, and the report says so)
    for ls in ("0.1", "0"):
        assert len((run_dir / f"distilled_ls{ls}" / "raw" / "train.en").read_text().splitlines()) == 1000
        assert re.search(rf"\| student_seqkd_ls{ls} \| [\d.]+ % \| [\d.]+ % \| .* \| on \| 1000 \| 1000 \| ", distilled)
    checkpoints = {p: p.stat().st_mtime_ns for p in run_dir.rglob("checkpoint_last.pt")}
    assert len(checkpoints) == 7

    second = run_quickstart(run_dir, data_dir).stdout
    assert ": running " not in second
    # prepared; trained, scored, analysed, measured; distilled; the picture, the table, the report
    assert second.count("(same command and inputs), skipping") == 1 + 7 + 7 + 7 + 7 + 2 + 3
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("checkpoint_last.pt")} == checkpoints

    # Issue 29: a second seed in the same run directory reuses the teachers, their decodings and seed 1's
    # students, trains and scores (BLEU only) seed 2's five students, and the report tests the gap over seeds
    third = run_quickstart(run_dir, data_dir, LSKD_SEEDS="1 2").stdout
    assert third.count("/train: running fairseq-train") == 5 and third.count("_seed2/train: running") == 5
    assert third.count("/eval/bleu-test: running lskd-eval") == 5
    assert "distill: running" not in third and "stability-test: running" not in third
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    lines = third.splitlines()
    summary = lines[max(i for i, line in enumerate(lines) if line.startswith("teachers: ")):]
    verdicts = [line for line in summary if "(LS teacher - non-LS teacher: " in line]
    assert len(verdicts) == 2 and all(
        "BLEU, mean over seeds 1, 2; 95 % CI [" in line and "bootstrap" not in line
        and ("paired t-test over seeds: t(1) = " in line or "the paired t-test is undefined" in line)
        and "one teacher per label smoothing taught them all" in line for line in verdicts), verdicts
    report = (run_dir / "report.md").read_text()
    assert re.search(r"\| student_seqkd_ls0 \| seq-KD beam 5 \| LS 0 \| 0 \| 2 \| [\d.]+ ± [\d.]+ \|", report)


def once(cwd: Path, *args: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    """`once ARGS...` from recipes/lib.sh, run in cwd."""
    return subprocess.run(["bash", "-c", f'source {shlex.quote(str(REPO / "recipes" / "lib.sh"))}; once "$@"', "once", *args],
                          capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "LSKD_DRY_RUN": "1" if dry_run else "0"})


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """tmp_path with ./fake (appends its arguments to runs.txt; exits $FAKE_STATUS), ./stuck (writes
    started, then sleeps) and an input file ckpt."""
    (tmp_path / "fake").write_text('#!/bin/bash\necho "$*" >> runs.txt\nexit "${1#status=}"\n')
    (tmp_path / "stuck").write_text("#!/bin/bash\ntouch started\nsleep 600\n")
    for script in ("fake", "stuck"):
        (tmp_path / script).chmod(0o755)
    (tmp_path / "ckpt").write_text("a")
    return tmp_path


def runs(cwd: Path) -> list[str]:
    path = cwd / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_a_stage_runs_again_only_when_its_arguments_or_inputs_change(fake):
    stage = ("s/train.done", "s/train.log", "ckpt", "--", "./fake", "status=0", "--max-update", "10")
    assert once(fake, *stage).returncode == 0 and runs(fake) == ["status=0 --max-update 10"]
    assert (fake / "s/train.done").read_text().startswith("command: ./fake status=0 --max-update 10\ninput: ckpt 1 ")
    again = once(fake, *stage)
    assert again.returncode == 0 and len(runs(fake)) == 1 and "skipping" in again.stdout
    more = once(fake, *stage[:-1], "20")  # a changed MAX_UPDATE
    assert len(runs(fake)) == 2 and "changed since the last run" in more.stdout
    assert once(fake, *stage[:-1], "20").returncode == 0 and len(runs(fake)) == 2
    (fake / "ckpt").write_text("bb")  # another input: its size differs
    once(fake, *stage[:-1], "20")
    assert len(runs(fake)) == 3
    os.utime(fake / "ckpt", ns=(10**9, 10**9))  # same size, another modification time
    once(fake, *stage[:-1], "20")
    assert len(runs(fake)) == 4
    assert once(fake, *stage[:-1], "20").returncode == 0 and len(runs(fake)) == 4


def test_a_failed_stage_leaves_no_stamp_and_runs_again(fake):
    assert once(fake, "s.done", "s.log", "--", "./fake", "status=0").returncode == 0
    for attempt in (1, 2):
        failed = once(fake, "s.done", "s.log", "--", "./fake", "status=3")
        assert failed.returncode == 1 and "./fake failed; last lines of s.log" in failed.stdout
        assert not (fake / "s.done").exists() and len(runs(fake)) == 1 + attempt
    assert once(fake, "s.done", "-", "--", "./fake", "status=4").returncode == 4  # on the terminal: its own status
    assert not (fake / "s.done").exists()


def test_a_killed_stage_leaves_no_stamp_and_runs_again(fake):
    assert once(fake, "s.done", "s.log", "--", "./fake", "status=0").returncode == 0
    recipe = subprocess.Popen(["bash", "-c", f'source {shlex.quote(str(REPO / "recipes" / "lib.sh"))}; once s.done s.log -- ./stuck'],
                              cwd=fake, start_new_session=True, env={"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 60  # a guard against a hang, not a measurement
    while not (fake / "started").exists() and recipe.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(recipe.pid, signal.SIGKILL)  # the whole recipe, as a kill -9 or a lost machine would
    recipe.wait()
    assert (fake / "started").exists() and sorted(p.name for p in fake.glob("s.done*")) == []
    assert once(fake, "s.done", "s.log", "--", "./fake", "status=0").returncode == 0 and len(runs(fake)) == 2


@pytest.mark.slow  # seven seconds of sleeping jobs: keeps -m 'not slow' under a minute
def test_waiting_for_a_core_or_for_the_jobs_shows_every_running_stages_progress(tmp_path):
    """at_most and wait_all print, once a minute (here once a second), what each stage logging under the
    run directory last reported: fairseq-train's num_updates, a progress bar's last refresh."""
    script = f"""source {shlex.quote(str(REPO / "recipes" / "lib.sh"))}
    mkdir -p run/a run/b
    background bash -c 'for i in 1 2 3 4; do echo "epoch 001 | num_updates $((i * 50))" >> run/a/train.log; sleep 1; done'
    background bash -c 'for i in 1 2 3 4 5 6 7; do printf "\\rtranslating test: %d%%" $((i * 14)) >> run/b/eval.log; sleep 1; done'
    at_most 2 run
    echo "a core is free"
    wait_all students run"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "LSKD_PROGRESS_SECONDS": "1"})
    assert result.returncode == 0, result.stderr
    waiting, _, rest = result.stdout.partition("a core is free")
    assert "... waiting for a free core: 2 job(s) running" in waiting
    assert re.search(r"run/a/train.log: num_updates \d+", waiting) and re.search(r"run/b/eval.log: translating test: \d+%", waiting)
    assert "... students: 1 job(s) running" in rest and re.search(r"run/b/eval.log: translating test: [5-9]\d%", rest)


def test_a_dry_run_prints_the_stage_and_runs_nothing(fake):
    printed = once(fake, "s.done", "s.log", "ckpt", "--", "./fake", "status=0", "a b", dry_run=True)
    assert printed.returncode == 0 and shlex.split(printed.stdout) == ["./fake", "status=0", "a b"]
    assert runs(fake) == [] and not (fake / "s.done").exists()


STUB = r"""#!/bin/bash
# A stand-in for the LSKD and fairseq commands: records its call, writes what the recipe reads next.
name=$(basename "$0")
echo "$name $* CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-}" >> "$STUB_CALLS"
arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
case $name in
  lskd-prepare) mkdir -p "$(arg --out "$@")"; echo "$*" > "$(arg --out "$@")/prep.json" ;;
  fairseq-train) mkdir -p "$(arg --save-dir "$@")"; echo "$*" > "$(arg --save-dir "$@")/checkpoint_last.pt" ;;
  lskd-distill-corpus)  # every shard waits for all the others: shards run one after the other never get past
    out=$(arg --out "$@"); shards=$(arg --num-shards "$@"); mkdir -p "$out"; touch "$out/started.$(arg --shard-id "$@")"
    for _ in $(seq 400); do [ "$(ls "$out"/started.* | wc -l)" -ge "$shards" ] && break; sleep 0.05; done
    [ "$(ls "$out"/started.* | wc -l)" -ge "$shards" ] || { echo "the other shards never started" >&2; exit 3; }
    echo merged > "$out/distill.json" ;;
esac
"""


def fake_environment(tmp_path: Path) -> Path:
    """A virtual environment recipes/env.sh takes as installed (with [plots]), whose python is this one."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    digest = hashlib.sha256((REPO / "setup.py").read_bytes()).hexdigest()[:16]
    (venv / ".lskd-installed").write_text(f"{digest} plots\n")
    return venv


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is here")
def test_a_gpu_recipe_without_a_cuda_device_stops_before_its_first_stage(tmp_path):
    """Before: fairseq-train fell back to the CPU without a word; the first --gpu command failed hours later."""
    result = subprocess.run(["bash", str(REPO / "recipes" / "iwslt14_de_en.sh"), str(tmp_path / "de-en.tgz")],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "LSKD_VENV": str(fake_environment(tmp_path)),
                                 "LSKD_RUN_DIR": str(tmp_path / "run"), "LSKD_DATA_DIR": str(tmp_path / "data")})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("iwslt14_de_en.sh: error: LSKD_DEVICE=gpu, but torch sees no CUDA device here "
                             "(LSKD_DEVICE=cpu runs on the CPU)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["venv"]


@pytest.mark.parametrize("tokens,missing", [("▁a house ▁b", "; not there: house"), ("▁a ▁b", "")])
def test_picture_tokens_are_checked_as_soon_as_the_data_exists(tmp_path, tokens, missing):
    """Before: a piece not in the dictionary stopped the quickstart at its last stage, after the whole run."""
    data = tmp_path / "data"
    (data / "bin").mkdir(parents=True)
    (data / "prep.json").write_text(json.dumps({"options": {"src": "de", "tgt": "en"}, "outputs": {"bin_dir": "bin"}}))
    (data / "bin" / "dict.en.txt").write_text("▁a 5\n▁b 3\n▁c 2\n", encoding="utf-8")
    result = subprocess.run(["bash", str(REPO / "recipes" / "quickstart.sh")], capture_output=True, text=True,
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "LSKD_VENV": str(fake_environment(tmp_path)),
                                               "LSKD_PREPARED": str(data), "LSKD_RUN_DIR": str(tmp_path / "run"),
                                               "LSKD_PICTURE_TOKENS": tokens})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.endswith(f"quickstart.sh: error: LSKD_PICTURE_TOKENS='{tokens}' must be three pieces of "
                                  f"{data}/bin/dict.en.txt (SentencePiece pieces that begin a word start with ▁)"
                                  f"{missing}\n"), result.stderr
    assert not (tmp_path / "run").exists()  # no teacher trained


def test_a_run_directory_keeps_one_seed_design(tmp_path):
    """A student directory keeps its checkpoint when its teacher changes: seed 2's students of the seed-1
    teachers must not be taken for students of the seed-2 teachers (or the other way round)."""
    data = tmp_path / "data"
    (data / "bin").mkdir(parents=True)
    (data / "prep.json").write_text(json.dumps({"options": {"src": "de", "tgt": "en"}, "outputs": {"bin_dir": "bin"}}))
    (data / "bin" / "dict.en.txt").write_text("▁a 5\n▁b 3\n▁c 2\n", encoding="utf-8")
    venv, run = fake_environment(tmp_path), tmp_path / "run"

    def quickstart(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / "recipes" / "quickstart.sh")], capture_output=True, text=True,
                              cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "LSKD_VENV": str(venv), "LSKD_PREPARED": str(data),
                                                 "LSKD_RUN_DIR": str(run), "LSKD_PICTURE_TOKENS": "▁a ▁b ▁c", **env})

    (run / "student_gold_seed2").mkdir(parents=True)  # made by the seed-1 teachers, before the design was recorded
    refused = quickstart(LSKD_TEACHER_SEEDS="1 2")
    assert (refused.returncode, refused.stderr) == (2, (
        f"quickstart.sh: error: {run} holds students of every seed taught by the seed-1 teachers ({run}/seed_design); "
        "for students of seed s taught by the teachers of seed s (LSKD_TEACHER_SEEDS) give another LSKD_RUN_DIR\n"))
    assert sorted(p.name for p in run.iterdir()) == ["student_gold_seed2"]  # nothing trained, nothing recorded
    (run / "student_gold_seed2").rmdir()
    started = quickstart(LSKD_TEACHER_SEEDS="1 2")  # the design is recorded, then training starts (no fairseq here)
    assert started.returncode == 1 and "teacher training failed" in started.stderr
    assert (run / "seed_design").read_text() == "students of seed s taught by the teachers of seed s (LSKD_TEACHER_SEEDS)\n"
    assert quickstart(LSKD_SEEDS="1 2").returncode == 2  # now the shared teachers' students are refused here
    assert quickstart(LSKD_SEEDS="1").returncode == 1  # one seed is the same under both designs: it goes on


@pytest.mark.slow  # seconds of subprocesses: keeps -m 'not slow' under a minute
def test_iwslt14_recipe_runs_its_shards_side_by_side_and_reruns_only_what_changed(tmp_path):
    """The whole recipe, not a dry run, with stand-ins for every command in a fake environment."""
    venv = fake_environment(tmp_path)
    (venv / "bin" / "stub").write_text(STUB)
    (venv / "bin" / "stub").chmod(0o755)
    for name in ("lskd-prepare", "fairseq-train", "lskd-eval", "lskd-distill-corpus", "lskd-report"):
        (venv / "bin" / name).symlink_to("stub")
    calls = tmp_path / "calls.txt"

    def recipe(**env: str) -> Counter:
        before = calls.read_text().splitlines() if calls.exists() else []
        result = subprocess.run(["bash", str(REPO / "recipes" / "iwslt14_de_en.sh"), str(tmp_path / "de-en.tgz")],
                                capture_output=True, text=True, env={
                                    "PATH": "/usr/bin:/bin", "LSKD_VENV": str(venv), "STUB_CALLS": str(calls),
                                    "LSKD_RUN_DIR": str(tmp_path / "run"), "LSKD_DATA_DIR": str(tmp_path / "data"),
                                    "SEEDS": "1", "TEMPERATURES": "2", "DISTILL_SHARDS": "2", "LSKD_DEVICE": "cpu",
                                    "CUDA_VISIBLE_DEVICES": "3,5", **env})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        new = calls.read_text().splitlines()[len(before):]
        return Counter(" ".join(line.split()[:2]) if line.startswith("lskd-eval") else line.split()[0] for line in new)

    first = recipe()
    # 2 teachers; per teacher 1 word-KD + 1 seq-KD student; 1 gold student; 2 shards per teacher
    assert first == {"lskd-prepare": 1, "fairseq-train": 7, "lskd-eval bleu": 7, "lskd-eval stability": 2,
                     "lskd-distill-corpus": 4, "lskd-report": 1}
    shards = [line.split() for line in calls.read_text().splitlines() if line.startswith("lskd-distill-corpus")]
    assert {(c[c.index("--shard-id") + 1], c[-1]) for c in shards} == {
        ("0", "CUDA_VISIBLE_DEVICES=3"), ("1", "CUDA_VISIBLE_DEVICES=5")}  # one GPU each, round robin
    assert all(line.endswith("CUDA_VISIBLE_DEVICES=3,5") for line in calls.read_text().splitlines()
               if line.startswith("fairseq-train"))
    assert recipe() == {}  # every stage done with the same command and inputs
    # a larger MAX_UPDATE: every model trains on, so it is scored again, the teachers' corpora are
    # decoded again, and the report is rewritten; the data stays
    assert recipe(MAX_UPDATE="60000") == {"fairseq-train": 7, "lskd-eval bleu": 7, "lskd-eval stability": 2,
                                          "lskd-distill-corpus": 4, "lskd-report": 1}
