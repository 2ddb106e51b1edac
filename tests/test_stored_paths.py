"""Paths a fairseq checkpoint stores as fairseq-train was given them are resolved from the checkpoint,
never from the directory a command happens to run in."""
from pathlib import Path

import pytest

from fairseq_plugins.checkpoint import resolve_stored_paths, training_directory


@pytest.mark.parametrize("save_dir, checkpoint, expected", [
    ("runs/x", "/work/runs/x/checkpoint_last.pt", "/work"),
    ("./runs/x/", "/work/runs/x/checkpoint_last.pt", "/work"),
    (".", "/work/checkpoint_last.pt", "/work"),
    ("runs/x", "/elsewhere/checkpoint_last.pt", None),  # moved: its directory no longer ends in runs/x
    ("/abs/runs/x", "/abs/runs/x/checkpoint_last.pt", None),  # absolute: nothing to infer (nor needed)
    ("../runs/x", "/work/runs/x/checkpoint_last.pt", None),
])
def test_the_training_directory_is_inferred_from_a_relative_save_dir(save_dir, checkpoint, expected):
    found = training_directory(checkpoint, {"checkpoint": {"save_dir": save_dir}})
    assert found == (Path(expected) if expected else None)


def test_stored_paths_resolve_the_same_from_any_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    for folder in ("data/bin", "data/shard1", "runs/x"):
        (work / folder).mkdir(parents=True)
    checkpoint, cfg = work / "runs" / "x" / "checkpoint_last.pt", {"checkpoint": {"save_dir": "runs/x"}}
    for cwd in (work, tmp_path):
        monkeypatch.chdir(cwd)
        warnings = []
        assert resolve_stored_paths("data", "data/bin:data/shard1", checkpoint, cfg, warnings) == \
            f"{work}/data/bin:{work}/data/shard1"
        assert resolve_stored_paths("teacher", "gone/t.pt", checkpoint, cfg, warnings) == "gone/t.pt"
        # the training directory, then the checkpoint's directory and 4 parents (the training directory once)
        assert warnings == [f"teacher gone/t.pt (relative to where fairseq-train ran) not found under {work}, "
                            f"{work}/runs/x, {work}/runs, {tmp_path}, {tmp_path.parent}"]


def test_a_teacher_with_another_dictionary_is_refused_from_any_directory(tmp_path, monkeypatch):
    """The teacher's own data (relative, where it was trained) gives the dictionary to compare."""
    from types import SimpleNamespace

    from fairseq.data import Dictionary

    from fairseq_plugins.teacher import TeacherError, check_dictionaries

    work = tmp_path / "work"
    (work / "data" / "bin").mkdir(parents=True)
    (work / "data" / "bin" / "dict.en.txt").write_text("▁a 5\n▁b 3\n", encoding="utf-8")
    (work / "data" / "bin" / "dict.de.txt").write_text("▁a 5\n", encoding="utf-8")
    student, source = Dictionary(), Dictionary()
    for symbol in ("▁a", "▁c"):
        student.add_symbol(symbol)
    source.add_symbol("▁a")
    task = SimpleNamespace(cfg=SimpleNamespace(data=str(tmp_path / "student"), source_lang="de", target_lang="en"),
                           target_dictionary=student, source_dictionary=source)
    state = {"model": {}, "cfg": {"task": {"data": "data/bin", "source_lang": "de", "target_lang": "en"},
                                  "checkpoint": {"save_dir": "teachers"}}}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TeacherError, match=r"first differences \(index, teacher, student\): \[\(5, '▁b', '▁c'\)\]"):
        check_dictionaries(str(work / "teachers" / "t.pt"), state, task)
