"""The distillation pipeline's config: every choice in one YAML file, refused in one line before any work."""
from __future__ import annotations

import json
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest

from lskd.cleaning import UnknownLanguageError
from lskd.distill_config import PipelineConfig, dump_yaml, load_pipeline_config, main
from lskd.errors import LSKDError
from lskd.structured_config import ConfigError
from lskd.students import UnknownPresetError


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    """A teacher, a prepared De-En directory, raw corpus prefixes, monolingual text and a test set, with
    relative paths (read from the working directory, as the recipes run)."""
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile("teacher.pt", "w") as checkpoint:  # what torch.save writes: a zip file
        checkpoint.writestr("archive/data.pkl", b"")
    Path("not_a_checkpoint.pt").write_bytes(b"checkpoint")
    Path("teacher_dir").mkdir()
    Path("prepared").mkdir()
    Path("prepared/prep.json").write_text(json.dumps({"options": {"src": "de", "tgt": "en"}, "outputs": {}}))
    Path("raw").mkdir()
    for name in ("train", "valid", "test", "news"):
        for lang in ("de", "en"):
            Path(f"raw/{name}.{lang}").write_text("a\n")
    Path("mono.de").write_text("Guten Morgen.\n")
    return tmp_path


MINIMAL = "teacher: teacher.pt\nsrc: de\ntgt: en\ncorpus: {prepared: prepared}\n"
FULL = """\
teacher: teacher.pt
src: de
tgt: en
run_dir: runs/mine
corpus: {train: raw/train, valid: raw/valid, test: raw/test}
monolingual: [mono.de]
cleaning: {max_length_ratio: 2.5, min_letter_ratio: 0.6, language_min_chars: 30, skip: [duplicate]}
distill: {beam: 4, engine: fairseq, quantization: float32, filter: false, score_quantile: 0.1, filtered: copy-reference}
student: {preset: tiny, updates: 300, seed: 2, kd_alpha: 0}
evaluation: {beam: 1}
ship_gate: {metric: bleu, percent_of_teacher: 85}
"""


def write(text: str, name: str = "distill.yaml") -> Path:
    Path(name).write_text(text, encoding="utf-8")
    return Path(name)


def test_a_full_config_round_trips_and_a_minimal_one_takes_the_defaults(files):
    config = load_pipeline_config(write(FULL))
    assert config.corpus.train == "raw/train" and config.corpus.prepared is None and config.monolingual == ["mono.de"]
    assert config.cleaning.skip == ["duplicate"] and config.cleaning.language_min_chars == 30
    assert config.distill.engine == "fairseq" and config.distill.score_quantile == 0.1 and not config.distill.filter
    assert config.student.preset == "tiny" and config.student.updates == 300
    assert config.evaluation.beam == 1
    assert (config.ship_gate.metric, config.ship_gate.percent_of_teacher) == ("bleu", 85.0)
    again = load_pipeline_config(write(dump_yaml(config), "resolved.yaml"))  # what the checker prints, read back
    assert again == config
    minimal = load_pipeline_config(write(MINIMAL))
    defaults = PipelineConfig(teacher="teacher.pt", src="de", tgt="en")
    defaults.corpus.prepared = "prepared"
    assert minimal == defaults
    assert (minimal.student.preset, minimal.distill.engine, minimal.ship_gate.metric) == ("base", "ctranslate2", "chrf")


@pytest.mark.parametrize("overrides, error, message", [
    (["student.prest=tiny"], ConfigError, r"unknown config key 'student.prest' .*; did you mean 'preset'\?"),
    (["cleaning.max_lenght_ratio=2"], ConfigError, "unknown config key 'cleaning.max_lenght_ratio' .* did you mean 'max_length_ratio'"),
    (["techer=t.pt"], ConfigError, "unknown config key 'techer' .* did you mean 'teacher'"),
    (["student.updates=many"], ConfigError, "config key 'student.updates': Value 'many' .* could not be converted to Integer"),
    (["student.preset=bsae"], UnknownPresetError, r"student.preset: unknown student preset 'bsae' \(the presets: "
                                                  r"tiny, base, quickstart\); did you mean 'base'\?"),
    (["src=xx"], UnknownLanguageError, r"src: language code 'xx' is not one py3langid identifies \(it knows \d+ "
                                       r"ISO 639 codes, e.g. de, en"),
    (["tgt=english"], UnknownLanguageError, "tgt: language code 'english'"),
    (["ship_gate.metric=blue"], ConfigError, "ship_gate.metric 'blue' is not one of chrf, bleu, comet"),
    (["ship_gate.metric=ter"], ConfigError, "ship_gate.metric 'ter' is not one of"),  # lower is better: no "% of teacher"
    (["ship_gate.percent_of_teacher=ninety"], ConfigError,
     "config key 'ship_gate.percent_of_teacher': Value 'ninety' .* could not be converted to Float"),
    (["ship_gate.percent_of_teacher=0"], ConfigError, "ship_gate.percent_of_teacher must be > 0"),
    (["ship_gate.percent_of_teacher=.inf"], ConfigError, "ship_gate.percent_of_teacher must be a finite number"),
    (["ship_gate.metric=comet"], ConfigError, "ship_gate.metric comet needs evaluation.comet_model"),
    (["ship_gate.metric=comet", "evaluation.comet_model=raw"], ConfigError,  # unbabel-comet is not installed here
     "ship_gate.metric comet needs unbabel-comet installed"),
    (["distill.engine=marian"], ConfigError, "distill.engine 'marian' is not one of fairseq, ctranslate2"),
    (["distill.beam=0"], ConfigError, "distill.beam must be >= 1, got 0"),
    (["distill.min_length_ratio=3"], LSKDError, "distill: length ratio bounds 3.0, 2.5"),
    (["student.kd_alpha=2"], ConfigError, r"student.kd_alpha must be in \[0, 1\]"),
    (["cleaning.skip=[langauge]"], LSKDError, "cleaning.skip: unknown rule 'langauge' .* did you mean 'language'"),
    (["cleaning.min_letter_ratio=1.5"], LSKDError, r"cleaning.min_letter_ratio must be in \[0, 1\]"),
    (["tgt=de"], ConfigError, "src and tgt are both 'de'"),
    (["teacher=missing.pt"], ConfigError, "teacher: missing.pt: no such file or directory"),
    (["monolingual=[mono.de, mono2.de]"], ConfigError, r"monolingual\[1\]: mono2.de: no such file"),
    (["teacher=not_a_checkpoint.pt"], ConfigError, "teacher: not_a_checkpoint.pt is not a checkpoint LSKD can read"),
    (["teacher=teacher_dir"], ConfigError, "teacher: teacher_dir is a directory without model.pt"),
    (["student.patience=-1"], ConfigError, "student.patience must be >= 0, got -1"),
    (["evaluation.comet_model=comet"], ConfigError, "evaluation.comet_model: comet: no such directory"),
    (["corpus.prepared=raw"], LSKDError, "corpus.prepared: raw has no prep.json"),
    (["corpus.train=raw/train"], ConfigError, "corpus: give prepared or train/valid/test, not both"),
    (["corpus.prepared=null", "corpus.train=raw/train", "corpus.valid=raw/valid"], ConfigError,
     "missing: corpus.test"),
    (["corpus.prepared=null", "corpus.train=raw/nope", "corpus.valid=raw/valid", "corpus.test=raw/test"],
     ConfigError, "corpus.train: raw/nope.de: no such file"),
    (["src=fr", "cleaning.skip=[language]"], ConfigError, "corpus.prepared prepared is de-en, the config says src fr"),
    (["run_dir=mono.de/run"], ConfigError, "run_dir mono.de/run: mono.de is a file"),
])
def test_each_refusal_is_one_line_naming_the_key(files, overrides, error, message):
    with pytest.raises(error, match=message) as caught:
        load_pipeline_config(write(MINIMAL), overrides)
    assert "\n" not in str(caught.value)


def test_a_missing_mandatory_key_and_a_language_the_identifier_lacks_when_its_rule_is_off(files):
    with pytest.raises(ConfigError, match="config key 'teacher': .*missing mandatory value: teacher"):
        load_pipeline_config(write("src: de\ntgt: en\ncorpus: {prepared: prepared}\n"))
    Path("prepared/prep.json").write_text(json.dumps({"options": {"src": "de", "tgt": "xx"}, "outputs": {}}))
    config = load_pipeline_config(write(MINIMAL), ["tgt=xx", "cleaning.skip=[language]"])
    assert config.tgt == "xx"  # no language rule, no identifier to know it


def test_the_checker_prints_the_resolved_config_or_one_error_line(files, capsys):
    assert main([str(write(MINIMAL)), "--set", "student.preset=tiny"]) == 0
    printed = capsys.readouterr().out
    assert "preset: tiny" in printed and "percent_of_teacher: 90.0" in printed and "engine: ctranslate2" in printed
    assert main([str(write(MINIMAL)), "--set", "student.preset=bsae"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m lskd.distill_config: error: student.preset: unknown student preset 'bsae'")
    assert err.count("\n") == 1


def test_the_shell_lines_read_back_as_the_config_in_bash(files):
    """recipes/distill.sh evals these lines: every value, arrays included, must survive bash's quoting,
    and a model directory's teacher is its model.pt."""
    Path("teacher_dir/model.pt").write_bytes(Path("teacher.pt").read_bytes())
    Path("mono it's.de").write_text("Guten Tag.\n")
    config = write(FULL.replace("teacher.pt", "teacher_dir").replace("[mono.de]", "[mono.de, \"mono it's.de\"]")
                   .replace("filter: false", "filter: true"))
    lines = subprocess.run(["python", "-m", "lskd.distill_config", str(config), "--shell"], capture_output=True,
                           text=True, check=True, cwd=files, env={"PATH": str(Path(__import__("sys").executable).parent)})
    shown = subprocess.run(["bash", "-c", lines.stdout + '\nprintf "%s\\n" "$TEACHER" "${MONOLINGUAL[@]}" '
                            '"${DISTILL_ARGS[*]}" "${CLEAN_ARGS[*]}" "${STUDENT_ARCH[*]}" "$RUN" "$PREPARED"'],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown[:3] == ["teacher_dir/model.pt", "mono.de", "mono it's.de"]
    assert shlex.split(shown[3]) == ["--beam", "4", "--engine", "fairseq", "--filter", "--max-trigram-repeats", "3",
                                     "--min-length-ratio", "0.4", "--max-length-ratio", "2.5", "--score-quantile", "0.1",
                                     "--max-unknown-share", "0.5", "--filtered", "copy-reference"]
    assert shown[4] == "--max-length-ratio 2.5 --min-letter-ratio 0.6 --language-min-chars 30 --skip duplicate"
    assert shown[5].startswith("--arch transformer --encoder-layers 6 --encoder-embed-dim 64") and shown[6:] == ["runs/mine", ""]
