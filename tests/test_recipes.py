"""Recipes' --dry-run: the commands a GPU user would run, checked without running them."""
import shlex
import subprocess
from collections import Counter
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def dry_run(*args: str, **env: str) -> list[list[str]]:
    result = subprocess.run(["bash", str(REPO / "recipes" / "iwslt14_de_en.sh"), "--dry-run", *args],
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
