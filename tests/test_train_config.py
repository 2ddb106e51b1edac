"""lskd-train's YAML configs: overrides, type checks and clear errors for keys and values that cannot work."""
from pathlib import Path

import pytest

from lskd.train.cli import main as train_main
from lskd.train.config import (ConfigError, TrainConfig, apply_override, experiment_differences, load_config,
                               to_dict)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_in_order_with_yaml_typed_values(tmp_path):
    path = write(tmp_path, "model: {name: resnet8}\nkd: {teacher: t.pt, alpha: 0.5}\nschedule: {milestones: [5]}\n")
    config = load_config(path, ["kd.temperature=2", "optim.lr=1e-3", "schedule.milestones=[10, 20]",
                                "data.train_limit=100", "data.train_limit=200", "seed=3"])
    assert config.model.name == "resnet8" and config.model.width == 16  # unset keys keep their defaults
    assert config.kd.temperature == 2.0 and isinstance(config.kd.temperature, float)
    assert config.optim.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string; a float key accepts it
    assert config.schedule.milestones == [10, 20] and config.data.train_limit == 200 and config.seed == 3
    assert load_config(path, ["kd.teacher=null", "kd.alpha=0"]).kd.teacher is None


@pytest.mark.parametrize("override, message", [
    ("kd.temprature=2", "unknown config key 'kd.temprature' .* did you mean 'temperature'"),
    ("optimizer.lr=0.1", "unknown config key 'optimizer'"),
    ("schedule.epochs=ten", "'schedule.epochs' must be int, got 'ten'"),
    ("schedule.epochs=2.5", "'schedule.epochs' must be int"),
    ("data.augment=3", "'data.augment' must be bool"),
    ("seed=true", "'seed' must be int, got True"),
    ("schedule.milestones=5", "'schedule.milestones' must be a list"),
    ("kd=3", "kd must be a mapping"),
    ("kd.temperature", "not KEY=VALUE"),
])
def test_unknown_keys_and_wrong_types_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["kd.alpha=1.5", "kd.teacher=t.pt"], r"kd alpha must be in \[0, 1\]"),
    (["kd.temperature=0", "kd.alpha=1", "kd.teacher=t.pt"], "temperature must be > 0"),
    (["kd.alpha=1"], "needs kd.teacher"),
    (["kd.teacher=t.pt"], "the teacher would not be used"),
    (["data.imbalance_ratio=0.5"], "imbalance_ratio must be >= 1"),
    (["loss.label_smoothing=1"], r"label_smoothing must be in \[0, 1\)"),
    (["model.name=resnet9"], "model.name 'resnet9' is not one of"),
    (["schedule.milestones=[40]", "schedule.epochs=30"], "milestones must lie in"),
    (["data.name=image_folder"], "needs data.data_dir"),
])
def test_values_that_cannot_make_a_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_override_into_a_scalar_is_refused():
    raw = {"seed": 1}
    with pytest.raises(ConfigError, match="seed is not a section"):
        apply_override(raw, "seed.x=2")


def test_runtime_keys_may_change_on_resume_but_experiment_keys_may_not():
    saved = to_dict(TrainConfig())
    moved = load_config(None, ["out_dir=elsewhere", "data.num_workers=2", "progress=false", "device=cpu"])
    assert experiment_differences(saved, moved) == []
    other = load_config(None, ["loss.label_smoothing=0.1", "seed=2"])
    assert experiment_differences(saved, other) == ["loss.label_smoothing: checkpoint 0.0, now 0.1",
                                                    "seed: checkpoint 1, now 2"]


@pytest.mark.parametrize("name", ["fmnist_teacher.yaml", "fmnist_student.yaml", "fmnist_binary.yaml"])
def test_shipped_configs_load(name):
    overrides = [] if name == "fmnist_teacher.yaml" else ["kd.teacher=runs/t/checkpoint_last.pt"]
    config = load_config(REPO / "configs" / name, overrides)
    assert config.data.name == "fashion_mnist"


def test_cli_prints_the_resolved_config_and_reports_errors_without_a_traceback(capsys):
    assert train_main([str(REPO / "configs" / "fmnist_teacher.yaml"), "--set", "seed=7", "loss.label_smoothing=0",
                       "--out-dir", "runs/x", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "seed: 7" in printed and "out_dir: runs/x" in printed and "label_smoothing: 0.0" in printed
    assert train_main([str(REPO / "configs" / "fmnist_teacher.yaml"), "--set", "kd.temprature=2"]) == 2
    assert "lskd-train: error: unknown config key 'kd.temprature'" in capsys.readouterr().err


def test_cli_data_dir_counts_before_validation_and_paths_stay_strings(capsys):
    assert train_main([str(REPO / "configs" / "fmnist_teacher.yaml"), "--set", "data.name=image_folder",
                       "--data-dir", "123", "--out-dir", "null", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "data_dir: '123'" in printed and "out_dir: 'null'" in printed
