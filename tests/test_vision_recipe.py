"""recipes/fmnist_ls_kd.sh --dry-run: the whole vision grid, every command checked by lskd-train's own parser."""
import shlex
import subprocess
from collections import Counter
from pathlib import Path

from lskd.train.cli import parse_args
from lskd.train.config import load_config

REPO = Path(__file__).resolve().parent.parent


def dry_run(**env: str) -> list[list[str]]:
    result = subprocess.run(["bash", str(REPO / "recipes" / "fmnist_ls_kd.sh"), "--dry-run"],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def configs_of(commands: list[list[str]]):
    """(out_dir, resolved config) of every lskd-train command, parsed as lskd-train would."""
    for command in commands:
        if command[0] == "lskd-train":
            args = parse_args(command[1:])
            config = load_config(args.config, args.overrides)
            yield args.out_dir, config


def test_dry_run_lists_the_whole_grid():
    commands = dry_run(LSKD_SEEDS="1 2 3", TEMPERATURES="1 2 3 64", IMBALANCE_RATIOS="1 100")
    programs = Counter(c[0] for c in commands)
    # per split: 2 teachers; per seed: 2 teachers x 4 T x 2 students + 2 gold students
    assert programs["lskd-train"] == 2 * (2 + 3 * (2 * 4 * 2 + 2))
    assert programs["lskd-vision-project"] == 2 and commands[-1][0] == "lskd-report"
    runs = dict(configs_of(commands))
    teachers = {d: c for d, c in runs.items() if "/teacher_" in d}
    assert sorted((c.data.imbalance_ratio, c.loss.label_smoothing) for c in teachers.values()) == \
        [(1, 0), (1, 0.1), (100, 0), (100, 0.1)]
    students = [c for d, c in runs.items() if "/student_" in d and c.kd.alpha > 0]
    assert {c.kd.temperature for c in students} == {1, 2, 3, 64} and {c.seed for c in students} == {1, 2, 3}
    assert Counter(c.model.name for c in students) == {"resnet8": 48, "binary_resnet20": 48}
    for student in students:  # a student learns from a teacher of its own split, written by the recipe
        teacher_dir = student.kd.teacher.removesuffix("/checkpoint_last.pt")
        assert teachers[teacher_dir].data.imbalance_ratio == student.data.imbalance_ratio
    assert all(c.kd.teacher is None for d, c in runs.items() if "_gold_" in d)
    assert len(runs) == programs["lskd-train"]  # every run has its own directory


def test_dry_run_knobs_reach_every_command():
    commands = dry_run(LSKD_SEEDS="2", TEMPERATURES="64", IMBALANCE_RATIOS="10", EPOCHS="3", TRAIN_LIMIT="500",
                       KD_ALPHA="0.5", LSKD_DATA_DIR="/data/fmnist", TRAIN_EXTRA="data.num_workers=2")
    runs = list(configs_of(commands))
    assert len(runs) == 2 + (2 * 2 + 2)
    for out_dir, config in runs:
        assert "/lt10/" in out_dir and config.schedule.epochs == 3 and config.data.train_limit == 500
        assert config.data.num_workers == 2 and config.data.imbalance_ratio == 10
    assert {c.kd.alpha for _, c in runs if c.kd.teacher} == {0.5}
    train = [c for c in commands if c[0] == "lskd-train"]
    assert all(c[c.index("--data-dir") + 1] == "/data/fmnist" for c in train)
    project = next(c for c in commands if c[0] == "lskd-vision-project")
    assert project[project.index("--classes") + 1:][:3] == ["Shirt", "T-shirt/top", "Sneaker"]


def test_dry_run_under_torchrun():
    commands = dry_run(LSKD_SEEDS="1", TEMPERATURES="1", IMBALANCE_RATIOS="1", NPROC="4")
    train = [c for c in commands if c[0] == "torchrun"]
    assert len(train) == 2 + 2 * 2 + 2
    assert all(c[1:6] == ["--standalone", "--nproc_per_node", "4", "-m", "lskd.train.cli"] for c in train)
