"""lskd-train's YAML configs: overrides, type checks and clear errors for keys and values that cannot work."""
from pathlib import Path

import pytest

from lskd.train.cli import main as train_main
from lskd.train.config import ConfigError, TrainConfig, experiment_differences, from_dict, load_config, to_dict

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
    ("schedule.epochs=ten", "config key 'schedule.epochs': Value 'ten' .* could not be converted to Integer$"),
    ("schedule.epochs=2.5", "'schedule.epochs': Value '2.5' .* could not be converted to Integer"),
    ("data.augment=maybe", "'data.augment': Value 'maybe' is not a valid bool"),
    ("seed=true", "'seed': Value 'True' of type 'bool' could not be converted to Integer"),
    ("schedule.milestones=5", "'schedule.milestones': .*int is not a ListConfig, list or tuple"),
    ("schedule.milestones=[10, x]", r"'schedule.milestones\[1\]': Value 'x'"),
    ("kd=3", "'kd': .*int is not a subclass of KDConfig"),
    ("seed.x=2", "'seed': Value '{}' of type 'dict' could not be converted to Integer"),
    ("out_dir=null", "'out_dir': field 'out_dir' is not Optional"),
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
    (["optim.name=sgdd"], "optim.name 'sgdd' is not one of sgd, adam, adamw"),
    (["model.width=0"], "model.width must be >= 1, got 0"),
    (["data.train_limit=0"], "data.train_limit must be >= 1, got 0"),
    (["kd.topk=-1"], "kd.topk must be >= 0, got -1"),
    (["schedule.milestones=[40]", "schedule.epochs=30"], "milestones must lie in"),
    (["data.name=image_folder"], "needs data.data_dir"),
    (["seed=-1"], "seed must be >= 0, got -1"),  # before: numpy's ValueError traceback at the first epoch
    ([f"seed={2**32}"], r"seed must be < 2\*\*32"),
    (["optim.momentum=-0.1"], "optim.momentum must be >= 0"),  # before: torch's traceback after the data loaded
    (["optim.weight_decay=-1"], "optim.weight_decay must be >= 0"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov needs optim.momentum > 0"),
    (["schedule.gamma=0"], "schedule.gamma must be > 0, got 0"),  # before: a learning rate of 0, silently
    (["kd.temperature=.inf", "kd.alpha=1", "kd.teacher=t.pt"], "kd.temperature must be a finite number, got inf"),  # NaN losses
    (["data.imbalance_ratio=.nan"], "data.imbalance_ratio must be a finite number, got nan"),  # trained, NaN in metrics.json
    (["kd.alpha=1.5"], r"kd alpha must be in \[0, 1\], got 1.5"),  # before: "needs kd.teacher" first
    (["schedule.milestones=[10,"], r"override 'schedule.milestones=\[10,': the value is not valid YAML"),  # a traceback
])
def test_values_that_cannot_make_a_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_files_name_the_key_at_fault_in_one_line(tmp_path):
    for text, message in [("kd: {alpah: 1}\n", "unknown config key 'kd.alpah' .* did you mean 'alpha'"),
                          ("kd: 3\n", "config key 'kd': "), ("schedule: {epochs: [3]}\n", "config key 'schedule.epochs': "),
                          ("- a\n- b\n", "top level must be a mapping"), ("kd: {alpha: [1\n", "not valid YAML: .*line 1")]:
        with pytest.raises(ConfigError, match=message) as caught:
            load_config(write(tmp_path, text))
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="is empty: give the sections"):  # before: a run on every default
        load_config(write(tmp_path, "\n"))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("kd: {teacher: t\u00e9.pt}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{latin1}: not UTF-8 text"):  # before: UnicodeDecodeError naming no file
        load_config(latin1)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=f"out_dir {tmp_path}/a-file/run: {tmp_path}/a-file is a file"):
        load_config(None, [f"out_dir={tmp_path}/a-file/run"])  # before: FileExistsError in mkdir
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_checkpoints_config_is_checked_like_a_file():
    assert from_dict(TrainConfig, {"kd": {"alpha": 1, "teacher": "t.pt"}}).kd.alpha == 1.0
    with pytest.raises(ConfigError, match="unknown config key 'kd.alpah'"):
        from_dict(TrainConfig, {"kd": {"alpah": 1}})


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
