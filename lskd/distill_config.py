"""The distillation pipeline's config: one small YAML file that records every choice, from the teacher
to the ship gate, checked before any work.

    python -m lskd.distill_config CONFIG.yaml [--set student.preset=tiny ...]   # check it, print it resolved
    python -m lskd.distill_config CONFIG.yaml --shell    # the same check; KEY=VALUE lines for recipes/distill.sh

A minimal config names the teacher, the languages and the data; every other key has a default::

    teacher: runs/quickstart/teacher_ls0.1/checkpoint_last.pt
    src: de
    tgt: en
    corpus: {prepared: data/bible-de-en-4k}
    student: {preset: base, updates: 2000}
    ship_gate: {metric: chrf, percent_of_teacher: 90}

Relative paths are read from the directory the command runs in (the recipes run from the repository
root). Keys are OmegaConf structured dataclasses (:mod:`lskd.structured_config`, as ``lskd-train``'s):
an unknown or mistyped key is refused naming the nearest known one. Then, one line each
(:class:`lskd.errors.LSKDError` subclasses): a value outside its range, an unknown student preset, a
language code the language identifier does not know (while the cleaning's ``language`` rule is on),
a ship gate that is not a metric and a number, a missing file.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from lskd.cleaning import CleaningOptions, check_languages
from lskd.decoding import ENGINES, QUANTIZATIONS
from lskd.distilled_data import FilterOptions
from lskd.errors import LSKDError, console_script, file_in_the_way
from lskd.prepared import load_prepared
from lskd.structured_config import ConfigError, check_values, load_structured, refuse_non_finite
from lskd.students import DEFAULT_PRESET, student_preset

#: Metrics a ship gate can compare with the teacher's: higher is better for each (TER is not).
GATE_METRICS = ("chrf", "bleu", "comet")


@dataclass
class CorpusConfig:
    """The parallel data: a directory made by ``lskd-prepare`` (``prepared``), or raw files, cleaned and
    then prepared: ``train``, ``valid``, ``test`` are prefixes (PREFIX.SRC and PREFIX.TGT), as
    ``lskd-prepare text`` reads them; only ``train`` is cleaned."""

    prepared: str | None = None
    train: str | None = None
    valid: str | None = None
    test: str | None = None


@dataclass
class DistillConfig:
    """The teacher's translation of the corpus and the monolingual text (``lskd-distill-corpus``)."""

    beam: int = 5
    engine: str = "ctranslate2"  # or fairseq
    quantization: str = "int8"  # CTranslate2's weights
    filter: bool = True  # leave out outputs that loop, have an odd length ratio or score lowest
    max_trigram_repeats: int = FilterOptions.max_trigram_repeats
    min_length_ratio: float = FilterOptions.min_length_ratio
    max_length_ratio: float = FilterOptions.max_length_ratio
    score_quantile: float = FilterOptions.score_quantile
    max_unknown_share: float = FilterOptions.max_unknown_share
    filtered: str = "drop"  # or copy-reference: what a left-out output becomes


@dataclass
class StudentConfig:
    preset: str = DEFAULT_PRESET  # lskd.students.PRESETS: tiny, base, quickstart
    updates: int = 2000  # the update budget
    validate_every: int = 200  # updates between validations (and checkpoints)
    patience: int = 5  # stop after this many validations without a better validation loss (0: never)
    seed: int = 1
    kd_alpha: float = 0.5  # word-level KD on top of the distilled data (0: none; needs the teacher's vocabulary)


@dataclass
class EvaluationConfig:
    """Teacher and student are scored on the corpus's test split (at ``beam``; speed at beam 1 and ``beam``)."""

    beam: int = 5
    comet_model: str | None = None  # a COMET model directory (needs unbabel-comet installed)


@dataclass
class ShipGate:
    """Ship the student if its ``metric`` on the test split is at least ``percent_of_teacher`` % of the teacher's."""

    metric: str = "chrf"
    percent_of_teacher: float = 90.0


@dataclass
class PipelineConfig:
    teacher: str = MISSING  # a fairseq checkpoint, or a model directory as fairseq publishes them (model.pt)
    src: str = MISSING  # language codes (ISO 639-1)
    tgt: str = MISSING
    run_dir: str = "runs/distill"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    monolingual: list[str] = field(default_factory=list)  # source-language text files, one sentence a line
    cleaning: CleaningOptions = field(default_factory=CleaningOptions)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    ship_gate: ShipGate = field(default_factory=ShipGate)


#: The knobs of the distillation's filter, as lskd.distilled_data.FilterOptions names them.
FILTER_KNOBS = ("max_trigram_repeats", "min_length_ratio", "max_length_ratio", "score_quantile", "max_unknown_share")
CHOICES = {"distill.engine": ENGINES, "distill.quantization": QUANTIZATIONS,
           "distill.filtered": ("drop", "copy-reference"), "ship_gate.metric": GATE_METRICS}
AT_LEAST = {"distill.beam": 1, "evaluation.beam": 1, "student.updates": 1, "student.validate_every": 1,
            "student.patience": 0, "student.seed": 0, "student.kd_alpha": 0}
#: the file of a model directory as fairseq publishes them (beside dict.SRC.txt, dict.TGT.txt, the SentencePiece model)
FAIRSEQ_MODEL_FILE = "model.pt"


def load_pipeline_config(path: str | Path | None, overrides: list[str] = ()) -> PipelineConfig:
    """The config file with ``key.sub=value`` overrides, checked (:func:`validate`): an
    :class:`lskd.errors.LSKDError` naming the first key or file at fault."""
    config = load_structured(PipelineConfig, path, overrides)
    validate(config)
    return config


def validate(config: PipelineConfig) -> None:
    """Values, then names (preset, languages), then files; the first problem as one line."""
    refuse_non_finite(config)
    check_values(config, CHOICES, AT_LEAST)
    checks = [
        (config.student.kd_alpha <= 1, f"student.kd_alpha must be in [0, 1], got {config.student.kd_alpha}"),
        (config.ship_gate.percent_of_teacher > 0,
         f"ship_gate.percent_of_teacher must be > 0 (e.g. 90: the student at 90 % of the teacher's "
         f"{config.ship_gate.metric}), got {config.ship_gate.percent_of_teacher}"),
        (config.ship_gate.metric != "comet" or config.evaluation.comet_model,
         "ship_gate.metric comet needs evaluation.comet_model (a COMET model directory)"),
        (config.ship_gate.metric != "comet" or comet_installed(),
         "ship_gate.metric comet needs unbabel-comet installed (pip install unbabel-comet)"),
        (config.src != config.tgt, f"src and tgt are both {config.src!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    with at_key("distill"):
        FilterOptions(enabled=True, **{name: getattr(config.distill, name) for name in FILTER_KNOBS})
    with at_key("student.preset"):
        student_preset(config.student.preset)
    config.cleaning.check(where="cleaning.")
    if "language" in config.cleaning.active_rules(2):
        for key in ("src", "tgt"):
            with at_key(key):
                check_languages([getattr(config, key)])
    check_files(config)


@contextmanager
def at_key(key: str) -> Iterator[None]:
    """An :class:`LSKDError` raised inside, of the same class, its message led by the config key ``key``."""
    try:
        yield
    except LSKDError as err:
        raise type(err)(f"{key}: {err}") from None


def check_files(config: PipelineConfig) -> None:
    """Every file and directory the config names exists (and is of the right kind), and the run
    directory can be made."""
    def need(path: str, key: str, exists: Callable[[Path], bool] = Path.is_file, kind: str = "file") -> None:
        if not exists(Path(path)):
            raise ConfigError(f"{key}: {path}: no such {kind}")

    def need_pair(prefix: str, key: str) -> None:
        for lang in (config.src, config.tgt):
            need(f"{prefix}.{lang}", key)

    need(config.teacher, "teacher", Path.exists, "file or directory")
    teacher_checkpoint(config.teacher)
    corpus = config.corpus
    raw = {"corpus.train": corpus.train, "corpus.valid": corpus.valid, "corpus.test": corpus.test}
    if corpus.prepared is not None:
        if any(raw.values()):
            raise ConfigError(f"corpus: give prepared or train/valid/test, not both (got prepared and "
                              f"{', '.join(key for key, value in raw.items() if value)})")
        with at_key("corpus.prepared"):
            prepared = load_prepared(corpus.prepared)
        if (prepared.src, prepared.tgt) != (config.src, config.tgt):
            raise ConfigError(f"corpus.prepared {corpus.prepared} is {prepared.src}-{prepared.tgt}, the config "
                              f"says src {config.src}, tgt {config.tgt}")
    else:
        missing = [key for key, value in raw.items() if not value]
        if missing:
            raise ConfigError(f"corpus: give prepared (a directory made by lskd-prepare) or all of train, valid, "
                              f"test (file prefixes); missing: {', '.join(missing)}")
        for key, prefix in raw.items():
            need_pair(prefix, key)
    for index, path in enumerate(config.monolingual):
        need(path, f"monolingual[{index}]")
    if config.evaluation.comet_model is not None:
        need(config.evaluation.comet_model, "evaluation.comet_model", Path.is_dir, "directory")
    blocker = file_in_the_way(config.run_dir)
    if blocker is not None:
        raise ConfigError(f"run_dir {config.run_dir}: {blocker} is a file, not a directory")


def teacher_checkpoint(teacher: str) -> str:
    """The fairseq checkpoint of ``teacher``: the file itself, or a model directory's ``model.pt``; a
    :class:`ConfigError` for anything else (a checkpoint is a torch zip file: no torch is loaded here)."""
    path = Path(teacher)
    checkpoint = path / FAIRSEQ_MODEL_FILE if path.is_dir() else path
    if path.is_dir() and not checkpoint.is_file():
        raise ConfigError(f"teacher: {teacher} is a directory without {FAIRSEQ_MODEL_FILE}: give a fairseq checkpoint "
                          f"or a model directory as fairseq publishes them ({FAIRSEQ_MODEL_FILE}, dict.SRC.txt, "
                          f"dict.TGT.txt, sentencepiece.bpe.model)")
    if not zipfile.is_zipfile(checkpoint):
        raise ConfigError(f"teacher: {checkpoint} is not a checkpoint LSKD can read (not a torch zip file, as "
                          f"torch.save writes them)")
    return str(checkpoint)


def comet_installed() -> bool:
    """Whether ``unbabel-comet`` (the module ``comet``) can be imported, without importing it (seconds)."""
    return importlib.util.find_spec("comet") is not None


def dump_yaml(config: PipelineConfig) -> str:
    return OmegaConf.to_yaml(config)


def shell_variables(config: PipelineConfig) -> list[str]:
    """The config as ``NAME=VALUE`` (or ``NAME=(VALUE ...)``) lines, each value shell-quoted, for
    ``eval`` in recipes/distill.sh: paths, the cleaning, distillation and student flags as arrays."""
    corpus, clean, distill, student = config.corpus, config.cleaning, config.distill, config.student
    clean_args = ["--max-length-ratio", clean.max_length_ratio, "--min-letter-ratio", clean.min_letter_ratio,
                  "--language-min-chars", clean.language_min_chars] + (["--skip", *clean.skip] if clean.skip else [])
    distill_args = ["--beam", distill.beam, "--engine", distill.engine]
    if distill.engine == "ctranslate2":
        distill_args += ["--quantization", distill.quantization]
    if distill.filter:
        distill_args += ["--filter", *[item for knob in FILTER_KNOBS for item in
                                       (f"--{knob.replace('_', '-')}", getattr(distill, knob))],
                         "--filtered", distill.filtered]
    checkpoint = teacher_checkpoint(config.teacher)
    criterion = ["--criterion", "label_smoothed_cross_entropy"]  # on the distilled data alone
    if student.kd_alpha > 0:  # word-level KD on top: the teacher online (it shares the student's vocabulary)
        criterion = ["--criterion", "label_smoothed_cross_entropy_with_kd", "--teacher-path", checkpoint,
                     "--kd-temperature", 1, "--kd-alpha", student.kd_alpha]
    values = {
        "TEACHER": checkpoint, "TEACHER_GIVEN": config.teacher, "SRC": config.src,
        "TGT": config.tgt, "RUN": config.run_dir, "PREPARED": corpus.prepared or "", "TRAIN": corpus.train or "",
        "VALID": corpus.valid or "", "TEST": corpus.test or "", "MONOLINGUAL": config.monolingual,
        "CLEAN_ARGS": clean_args, "DISTILL_ARGS": distill_args,
        "STUDENT_ARCH": student_preset(student.preset).fairseq_args(), "PRESET": student.preset,
        "CRITERION_ARGS": criterion + ["--label-smoothing", 0],
        "UPDATES": student.updates, "VALIDATE_EVERY": student.validate_every, "PATIENCE": student.patience,
        "SEED": student.seed, "KD_ALPHA": student.kd_alpha, "EVAL_BEAM": config.evaluation.beam,
        "COMET_MODEL": config.evaluation.comet_model or "", "GATE_METRIC": config.ship_gate.metric,
        "GATE_PERCENT": config.ship_gate.percent_of_teacher,
    }
    return [f"{name}=({' '.join(shlex.quote(str(item)) for item in value)})" if isinstance(value, list)
            else f"{name}={shlex.quote(str(value))}" for name, value in values.items()]


@console_script("python -m lskd.distill_config")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lskd.distill_config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the pipeline's YAML config")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override config keys, e.g. student.preset=tiny (values read as YAML)")
    parser.add_argument("--shell", action="store_true",
                        help="print NAME=VALUE lines (shell-quoted) for recipes/distill.sh instead of the YAML")
    args = parser.parse_args(argv)
    config = load_pipeline_config(args.config, args.overrides)
    print("\n".join(shell_variables(config)) if args.shell else dump_yaml(config).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
