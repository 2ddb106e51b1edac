"""recipes/distill.sh: from a teacher to a shippable student in one command, driven by one YAML config.

The dry run and the config's refusals (fast); every stage with stand-ins for the commands: a changed
config entry reruns only the stages that depend on it, and a second run on the same run directory is
refused; the whole recipe on a tiny fairseq teacher, uninterrupted and killed twice (slow)."""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO

RECIPE = REPO / "recipes" / "distill.sh"
BIN = str(Path(sys.executable).parent)


def environment(tmp_path: Path, stubs: bool = False) -> Path:
    """A virtual environment that recipes/env.sh takes as installed: this interpreter's, under another
    name (its pyvenv.cfg and packages), so the recipe installs nothing; with ``stubs``, a stand-in for
    every command the recipe runs, which records its call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    digest = subprocess.run(["sha256sum", str(REPO / "setup.py")], capture_output=True, text=True).stdout[:16]
    (venv / ".lskd-installed").write_text(f"{digest} \n")
    if stubs:
        (venv / "bin" / "stub").write_text(STUB)
        (venv / "bin" / "stub").chmod(0o755)
        for name in ("lskd-clean", "lskd-prepare", "lskd-distill-corpus", "fairseq-train", "lskd-eval", "lskd-export",
                     "lskd-ship-report"):
            (venv / "bin" / name).symlink_to("stub")
    return venv


STUB = r"""#!/bin/bash
# A stand-in for the LSKD and fairseq commands: records its call; lskd-prepare writes a prep.json,
# fairseq-train a checkpoint.
echo "$(basename "$0") $*" >> "$STUB_CALLS"
arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
if [ "$(basename "$0")" = lskd-prepare ]; then
  mkdir -p "$(arg --out "$@")"
  echo '{"options": {"src": "de", "tgt": "en"}, "outputs": {"bin_dir": "bin", "joined_dictionary": true}}' > "$(arg --out "$@")/prep.json"
fi
[ "$(basename "$0")" != fairseq-train ] || echo "$*" > "$(arg --save-dir "$@")/checkpoint_best.pt"
"""


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A teacher model directory (model.pt a zip file, as torch writes them), raw De-En prefixes and
    monolingual text, and distill.yaml naming them."""
    (tmp_path / "teacher").mkdir()
    with zipfile.ZipFile(tmp_path / "teacher" / "model.pt", "w") as checkpoint:
        checkpoint.writestr("archive/data.pkl", b"")
    (tmp_path / "raw").mkdir()
    for name in ("train", "valid", "test"):
        for lang in ("de", "en"):
            (tmp_path / "raw" / f"{name}.{lang}").write_text("a\n")
    (tmp_path / "raw" / "mono.de").write_text("Guten Morgen.\n")
    (tmp_path / "distill.yaml").write_text(f"""\
teacher: {tmp_path}/teacher
src: de
tgt: en
run_dir: {tmp_path}/run
corpus: {{train: {tmp_path}/raw/train, valid: {tmp_path}/raw/valid, test: {tmp_path}/raw/test}}
monolingual: [{tmp_path}/raw/mono.de]
student: {{preset: tiny, updates: 300, patience: 2}}
""")
    return tmp_path


def recipe(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RECIPE), *args], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", **(env or {})})


def test_the_dry_run_prints_every_stage_with_the_configs_choices_and_makes_nothing(inputs):
    result = recipe("--dry-run", str(inputs / "distill.yaml"), "distill.beam=4", "evaluation.beam=3")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    programs = [" ".join(c[:2]) if c[0] == "lskd-eval" else c[0] for c in commands]
    assert programs == ["lskd-clean", "lskd-clean", "lskd-prepare", "lskd-distill-corpus", "fairseq-train",
                        "lskd-eval bleu", "lskd-eval speed", "lskd-eval speed", "lskd-eval bleu", "lskd-eval speed",
                        "lskd-eval speed", "lskd-eval compare", "lskd-export", "lskd-ship-report"]
    by_program = {p: c for p, c in zip(programs, commands)}
    teacher = str(inputs / "teacher" / "model.pt")
    assert by_program["lskd-prepare"][by_program["lskd-prepare"].index("--teacher") + 1] == str(inputs / "teacher")
    distill = by_program["lskd-distill-corpus"]
    assert distill[distill.index("--beam") + 1] == "4" and distill[distill.index("--teacher-path") + 1] == teacher
    assert distill[distill.index("--source-text") + 1] == f"{inputs}/run/clean/mono0.de" and "--filter" in distill
    from fairseq import options  # the student's flags parse as fairseq-train reads them
    train = options.parse_args_and_arch(options.get_training_parser(), input_args=by_program["fairseq-train"][1:])
    assert (train.encoder_layers, train.decoder_layers, train.encoder_embed_dim) == (6, 1, 64)  # the tiny preset
    assert (train.max_update, train.patience, train.teacher_path, train.kd_alpha) == (300, 2, teacher, 0.5)
    speed_beams = [c[c.index("--beam") + 1] for c in commands if c[:2] == ["lskd-eval", "speed"]]
    assert speed_beams == ["1", "3", "1", "3"]
    assert all(c[c.index("--threads") + 1] == "1" for c in commands if c[:2] == ["lskd-eval", "speed"])
    assert not (inputs / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("student.prest=tiny", "unknown config key 'student.prest' (known here: preset, updates, validate_every, patience, "
                           "seed, kd_alpha); did you mean 'preset'?"),
    ("student.preset=bsae", "student.preset: unknown student preset 'bsae' (the presets: tiny, base, quickstart); "
                            "did you mean 'base'?"),
    ("teacher={tmp}/raw/train.de", "teacher: {tmp}/raw/train.de is not a checkpoint LSKD can read (not a torch zip file, as "
                             "torch.save writes them)"),
    ("monolingual=[raw/nope.de]", "monolingual[0]: raw/nope.de: no such file"),
    ("ship_gate.metric=ter", "ship_gate.metric 'ter' is not one of chrf, bleu, comet"),
])
def test_a_bad_config_is_one_line_before_any_work(inputs, override, message):
    override, message = override.format(tmp=inputs), message.format(tmp=inputs)  # the recipe reads paths from the repository root
    result = recipe(str(inputs / "distill.yaml"), override,
                    env={"LSKD_VENV": str(environment(inputs, stubs=True)), "STUB_CALLS": str(inputs / "calls")})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"python -m lskd.distill_config: error: {message}\n"
    assert not (inputs / "run").exists() and not (inputs / "calls").exists()


def stamps(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*.done")}


@pytest.mark.slow  # seconds of subprocesses: keeps -m 'not slow' under a minute
def test_a_changed_config_entry_reruns_only_the_stages_that_depend_on_it_and_one_run_at_a_time(inputs):
    env = {"LSKD_VENV": str(environment(inputs, stubs=True)), "STUB_CALLS": str(inputs / "calls")}
    run = inputs / "run"

    def distill(*overrides: str) -> set[str]:
        before = stamps(run) if run.exists() else {}
        result = recipe(str(inputs / "distill.yaml"), *overrides, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return {name for name, mtime in stamps(run).items() if before.get(name) != mtime}

    everything = distill()
    assert len(everything) == 14 and Counter(line.split()[0] for line in (inputs / "calls").read_text().splitlines()) == {
        "lskd-clean": 2, "lskd-prepare": 1, "lskd-distill-corpus": 1, "fairseq-train": 1, "lskd-eval": 7,
        "lskd-export": 1, "lskd-ship-report": 1}
    assert distill() == set()
    assert distill("ship_gate.percent_of_teacher=80") == {"ship/ship.done"}
    student = {"student/train.done", "eval/student/bleu-test.done", "eval/student/beam1/speed-test.done",
               "eval/student/beam5/speed-test.done", "eval/compare.done", "export/export.done", "ship/ship.done"}
    assert distill("ship_gate.percent_of_teacher=80", "student.updates=400") == student
    assert distill("ship_gate.percent_of_teacher=80", "student.updates=400", "distill.score_quantile=0.1") == \
        student | {"distilled/distill.done"}
    cleaned = distill("ship_gate.percent_of_teacher=80", "student.updates=400", "distill.score_quantile=0.1",
                      "cleaning.min_letter_ratio=0.6")
    assert cleaned == everything  # both cleanings, then every stage reads what they made

    with open(run / ".distill.lock", "a") as lock:  # another run holds the run directory
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls = (inputs / "calls").read_text()
        refused = recipe(str(inputs / "distill.yaml"), env=env)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (f"distill.sh: error: {run} is in use by another run of distill.sh (lock {run}/.distill.lock): "
                              "wait for it, or give another run_dir\n")
    assert (inputs / "calls").read_text() == calls  # nothing ran


# --- The whole recipe on a tiny fairseq teacher ---------------------------------------------------------

@pytest.fixture
def tiny_teacher(bible_slice, trained_checkpoint, tmp_path) -> Path:
    """The 4-update fixture teacher published as fairseq publishes models, a small slice of its corpus as
    raw files (test: 20 verses of John; monolingual: 10 others), and smoke.yaml, a smoke profile."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    shutil.copy(trained_checkpoint, teacher / "model.pt")
    for lang in ("de", "en"):
        shutil.copy(bible_slice / "bin" / f"dict.{lang}.txt", teacher)
    shutil.copy(bible_slice / "spm.model", teacher / "sentencepiece.bpe.model")
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, lines in (("train", slice(0, 150)), ("valid", slice(0, 20)), ("test", slice(0, 20))):
        for lang in ("de", "en"):
            text = (bible_slice / "raw" / f"{split}.{lang}").read_text().splitlines()[lines]
            (raw / f"{split}.{lang}").write_text("\n".join(text) + "\n")
    mono = (bible_slice / "raw" / "test.de").read_text().splitlines()[-10:]
    (raw / "mono.de").write_text("\n".join(mono) + "\n")
    (tmp_path / "smoke.yaml").write_text(f"""\
teacher: {teacher}
src: de
tgt: en
corpus: {{train: {raw}/train, valid: {raw}/valid, test: {raw}/test}}
monolingual: [{raw}/mono.de]
distill: {{beam: 2, filtered: copy-reference}}   # the 4-update teacher loops: the gold pairs stand in
student: {{preset: tiny, updates: 8, validate_every: 4, patience: 3}}
evaluation: {{beam: 1}}   # speed at beam 1 only: two measurements per model
""")
    return tmp_path


def start(tmp_path: Path, run: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(RECIPE), str(tmp_path / "smoke.yaml"), f"run_dir={run}"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={"PATH": f"{BIN}:/usr/bin:/bin", "LSKD_VENV": str(tmp_path / "venv")})


def finish(recipe_run: subprocess.Popen) -> str:
    out, _ = recipe_run.communicate()
    assert recipe_run.returncode == 0, out[-5000:]
    return out


def kill_once_there(recipe_run: subprocess.Popen, path: Path) -> None:
    """SIGKILL the whole recipe (every stage it started) as soon as ``path`` exists, as a lost machine would."""
    deadline = time.monotonic() + 600  # a guard against a hang, not a measurement
    while not path.exists() and recipe_run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert recipe_run.poll() is None, f"the recipe ended before {path} appeared"
    os.killpg(recipe_run.pid, signal.SIGKILL)
    recipe_run.communicate()


def quality(run: Path) -> dict:
    """What must not depend on a kill: every score, output text, size and the verdict (not the timings)."""
    ship = json.loads((run / "ship" / "ship.json").read_text())
    speed = {who: [{k: row[k] for k in ("beam", "parameters", "size_bytes", "bleu_int8", "bleu_float32")}
                   for row in ship["speed"][who]] for who in ("teacher", "student")}
    texts = {name: (run / name).read_text() for name in ("distilled/raw/train.en", "eval/student/test.hyp.en",
                                                         "eval/teacher/test.hyp.en", "clean/train.de", "clean/mono0.de")}
    return {"scores": ship["scores"], "percent": ship["percent_of_teacher"], "gate": ship["gate"],
            "smaller": ship["smaller"], "speed": speed, "texts": texts}


@pytest.mark.slow
def test_the_whole_recipe_decides_from_its_records_and_a_killed_run_ends_the_same(tiny_teacher):
    environment(tiny_teacher)
    whole = tiny_teacher / "whole"
    printed = finish(start(tiny_teacher, whole))
    # the report's first lines, against the records they name, computed here
    ship = json.loads((whole / "ship" / "ship.json").read_text())
    teacher, student = (json.loads((whole / "eval" / who / "bleu-test.json").read_text()) for who in ("teacher", "student"))
    speeds = {who: json.loads((whole / "eval" / who / "beam1" / "speed-test.json").read_text()) for who in ("teacher", "student")}
    words = {who: next(r["words_per_second"] for r in s["runs"] if (r["engine"], r["threads"]) == ("ct2-int8", 1))
             for who, s in speeds.items()}
    size = {who: s["engines"]["ct2-int8"]["size_bytes"] for who, s in speeds.items()}
    chrf = 100 * student["scores"]["chrf"]["score"] / teacher["scores"]["chrf"]["score"]
    first = (f"student: {words['student'] / words['teacher']:.2f} x faster, {size['teacher'] / size['student']:.2f} x "
             f"smaller, at {chrf:.2f} % of the teacher's chrF (")
    lines = (whole / "ship" / "ship.md").read_text().splitlines()
    assert lines[0].startswith(first) and lines[0] == ship["headline"][0]
    assert lines[1] == f"ship gate chrF >= 90 % of the teacher's: {'passed' if chrf >= 90 else 'not passed'}"
    assert printed.splitlines()[-3:-1] == lines[:2]  # the run ends with them
    assert ship["records"]["student_scores"] == str(whole / "eval" / "student" / "bleu-test.json")
    assert [row["beam"] for row in ship["speed"]["student"]] == [1] and ship["beam"] == 1
    assert (whole / "export" / "student-int8" / "model.bin").is_file()
    distilled = (whole / "distilled" / "raw" / "train.en").read_text().splitlines()
    assert len(distilled) == len((whole / "clean" / "train.en").read_text().splitlines())  # every pair accounted for

    killed = tiny_teacher / "killed"
    kill_once_there(start(tiny_teacher, killed), killed / "distilled.log")
    assert not (killed / "distilled" / "distill.done").exists()  # killed while distilling
    kill_once_there(start(tiny_teacher, killed), killed / "student" / "checkpoint_last.pt")
    assert (killed / "distilled" / "distill.done").exists() and not (killed / "student" / "train.done").exists()
    rerun = finish(start(tiny_teacher, killed))
    assert "distill: done (same command and inputs), skipping" in rerun
    assert "fairseq-train" in rerun and "training afresh" not in rerun  # resumed from the checkpoint it left
    assert quality(killed) == quality(whole)
