"""References and hypotheses score as the text they are, whatever Unicode form their files encode it in.

A model trained on SentencePiece pieces (NFKC) writes composed text; before, the same hypotheses
scored BLEU 94.54 against composed references, 31.08 against the same references decomposed (NFD)
and 68.44 with compatibility characters (ligatures, fullwidth digits), without a word of warning.
"""
import errno
import json
import unicodedata

import pytest
import sacrebleu

from eval.bleu import compare_files, file_warnings, format_table, paired_bootstrap, score, score_files
from eval.cli import main as eval_main
from lskd.corpus import read_lines
from lskd.errors import InvalidValueError
from lskd.unicode_form import ISSUES, normalize_lines, unicode_issues, unicode_warnings

REFERENCES = [
    "Die müden Bären schlafen früh in der Höhle über dem Fluss",
    "Die finale Prüfung findet am 12. März in München statt",
    "Der flinke Fuchs flieht über 3 Felder zur Brücke",
    "Wir trafen uns um 18 Uhr vor dem Café am Rhein",
    "Sie öffnete die Tür und grüßte die Nachbarn freundlich",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich",
    "Die Gebühren für 2 Führungen betragen 40 Euro",
    "Er fühlte sich müde und schläfrig nach der langen Fahrt",
]
HYPOTHESES = [*REFERENCES[:2], "Der flinke Fuchs flieht über 3 Felder zu der Brücke", *REFERENCES[3:7],
              "Er fühlte sich müde und schläfrig nach der Fahrt"]  # composed, as a SentencePiece-trained model writes
DECOMPOSED = [unicodedata.normalize("NFD", line) for line in REFERENCES[:6]] + REFERENCES[6:]  # 6 of 8 lines NFD


def compatibility_form(line: str) -> str:
    """``line`` with the ligatures ﬁ and ﬂ and fullwidth digits, which NFKC folds back."""
    line = line.replace("fi", "\ufb01").replace("fl", "\ufb02")
    return "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in line)


COMPATIBILITY = [compatibility_form(line) for line in REFERENCES]  # lines 2, 3, 4, 7 change: 4 of 8


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sacrebleu_scores(hypotheses, references, form=None):
    """BLEU, chrF and TER as sacrebleu computes them, on text brought to ``form`` (NFC, NFKC) or as it is."""
    if form:
        hypotheses, references = ([unicodedata.normalize(form, s) for s in side] for side in (hypotheses, references))
    return [round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
            round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2),
            round(sacrebleu.corpus_ter(hypotheses, [references]).score, 2)]


def figures(scores):
    return [scores[metric]["score"] for metric in ("bleu", "chrf", "ter")]


@pytest.fixture
def files(tmp_path):
    assert [unicodedata.normalize("NFKC", line) for line in COMPATIBILITY] == REFERENCES
    return {name: write(tmp_path / f"{name}.de", lines) for name, lines in
            (("hyp", HYPOTHESES), ("composed", REFERENCES), ("decomposed", DECOMPOSED), ("compatibility", COMPATIBILITY))}


def test_decomposed_references_score_as_composed_ones_by_default_and_are_named(files, capsys):
    expected = sacrebleu_scores(HYPOTHESES, REFERENCES, "NFC")
    assert sacrebleu_scores(HYPOTHESES, DECOMPOSED)[0] < expected[0] - 40  # the fault: decomposition costs BLEU
    assert figures(score_files(files["hyp"], files["composed"])) == expected
    scores = score_files(files["hyp"], files["decomposed"])
    assert figures(scores) == expected and {s["unicode_form"] for s in scores.values()} == {"nfc"}

    assert eval_main(["score", "--hyp", str(files["hyp"]), "--ref", str(files["decomposed"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1]) == dict(zip(("bleu", "chrf", "ter"), expected))
    assert all(line.endswith("; unicode form: nfc)") for line in out[:3]), out
    assert [line for line in out if line.startswith("warning: ")] == [
        f"warning: {files['decomposed']}: 6 of 8 lines (75.0 %) {ISSUES['not_nfc']}; both sides are scored in NFC"]
    assert eval_main(["score", "--hyp", str(files["hyp"]), "--ref", str(files["composed"])]) == 0
    assert "warning" not in capsys.readouterr().out  # clean files: no word


def test_compatibility_characters_score_as_folded_with_nfkc(files, capsys):
    folded = sacrebleu_scores(HYPOTHESES, REFERENCES, "NFKC")
    as_they_are = sacrebleu_scores(HYPOTHESES, COMPATIBILITY)
    assert as_they_are[0] < folded[0] - 20  # the fault: ligatures and fullwidth digits cost BLEU
    assert figures(score_files(files["hyp"], files["compatibility"])) == as_they_are  # NFC keeps them
    assert figures(score_files(files["hyp"], files["compatibility"], unicode_form="nfkc")) == folded
    assert figures(score_files(files["hyp"], files["decomposed"], unicode_form="nfkc")) == folded

    assert eval_main(["score", "--hyp", str(files["hyp"]), "--ref", str(files["compatibility"])]) == 0
    warning = f"warning: {files['compatibility']}: 4 of 8 lines (50.0 %) {ISSUES['compatibility']}; "
    assert f"{warning}scored as they are (nfc), correct translations lose n-grams: pass --unicode-form nfkc to " \
           f"score both sides in NFKC" in capsys.readouterr().out.splitlines()
    assert eval_main(["score", "--hyp", str(files["hyp"]), "--ref", str(files["compatibility"]),
                      "--unicode-form", "nfkc"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1])["bleu"] == folded[0] and "; unicode form: nfkc)" in out[0]
    assert f"{warning}both sides are scored in NFKC" in out


@pytest.mark.parametrize("references", [REFERENCES, DECOMPOSED, COMPATIBILITY], ids=["composed", "NFD", "NFKC-folded"])
def test_none_gives_sacrebleus_raw_numbers(references):
    scores = score(HYPOTHESES, references, unicode_form="none")
    assert figures(scores) == sacrebleu_scores(HYPOTHESES, references)
    assert all(s["unicode_form"] == "none" for s in scores.values())
    if references is REFERENCES:  # NFC text: the default changes no number
        assert figures(score(HYPOTHESES, references)) == figures(scores)


def test_compare_scores_both_systems_in_the_stated_form_and_names_the_file(files, tmp_path, capsys):
    baseline = write(tmp_path / "baseline.de", REFERENCES[:4] + HYPOTHESES[4:])  # a slightly different system
    composed = paired_bootstrap(read_lines(baseline), HYPOTHESES, REFERENCES, samples=20)
    result = compare_files(baseline, files["hyp"], files["decomposed"], samples=20)
    assert [result["BLEU"][k] for k in ("baseline", "system")] == [composed["BLEU"][k] for k in ("baseline", "system")]
    assert result["unicode_form"] == "nfc" and result["warnings"] == [
        f"{files['decomposed']}: 6 of 8 lines (75.0 %) {ISSUES['not_nfc']}; both sides are scored in NFC"]
    raw = compare_files(baseline, files["hyp"], files["decomposed"], samples=20, unicode_form="none")
    assert raw["unicode_form"] == "none"
    assert raw["BLEU"]["system"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [DECOMPOSED]).score)
    assert raw["warnings"][0].endswith("scored as they are (none), correct translations lose n-grams: pass "
                                       "--unicode-form nfc to score both sides in NFC")

    assert eval_main(["compare", "--baseline", str(baseline), "--system", str(files["hyp"]), "--ref",
                      str(files["decomposed"]), "--samples", "20"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.endswith("; unicode form: nfc)") for line in out[:2])
    assert f"system {composed['BLEU']['system']:.2f}" in out[0] and out[2] == f"warning: {result['warnings'][0]}"


def score_record(path, scores):
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"scores": scores, "sentences": len(HYPOTHESES)}))
    return path


def test_a_table_names_the_form_of_its_records(tmp_path):
    nfc = score_record(tmp_path / "a" / "eval" / "bleu-test.json", score(HYPOTHESES, REFERENCES))
    nfkc = score_record(tmp_path / "b" / "eval" / "bleu-test.json", score(HYPOTHESES, REFERENCES, unicode_form="nfkc"))
    assert format_table([nfc, nfkc]).splitlines()[-1] == "unicode form: nfc / nfkc"
    before = score(HYPOTHESES, REFERENCES)
    del before["bleu"]["unicode_form"]  # a record written before LSKD normalised: it scored the text as it was
    assert format_table([score_record(tmp_path / "c" / "eval" / "bleu-test.json", before)]).splitlines()[-1] == \
        "unicode form: none"


# ---- what a model cannot produce, counted by kind ------------------------------------------------------------

CLEAN = ["„Äpfel“ sind gesund, sagte er: heiß“", "naïve café in São Paulo", "château, Ærø, Œuvre", "plain ASCII",
         "Ç’est la vie", "ÄÖÜ äöü ß ẞ – — € ’"]  # Latin-1 letters before quotation marks are not mojibake


def test_encoding_damage_is_counted_by_kind():
    mojibake = [text.encode().decode("cp1252") for text in ("Ärger", "it’s", "Café")]  # 'Ã„rger', 'itâ€™s', 'CafÃ©'
    latin1 = ["don’t".encode().decode("latin-1")]  # 'donâ\x80\x99t': mojibake through C1 controls
    broken = ["ab\ufffdcd", "\ufffd\ufffd"]
    bom = ["\ufeffErste Zeile"]
    lines = CLEAN + mojibake + latin1 + broken + bom + ["Schlu\u00df mit ﬁx", unicodedata.normalize("NFD", "Öl")]
    assert unicode_issues(CLEAN) == {}
    assert unicode_issues(lines) == {"not_nfc": 1, "compatibility": 2, "replacement_character": 2, "byte_order_mark": 1,
                                     "c1_control": 1, "mojibake": 4}  # compatibility: 'ﬁx' and the ™ of 'â€™'
    assert unicode_issues(mojibake) == {"compatibility": 1, "mojibake": 3}


def test_a_file_with_a_byte_order_mark_and_lost_bytes_is_named_with_its_share(tmp_path):
    damaged = tmp_path / "ref.en"
    damaged.write_bytes("\ufeffIn the beginning\nwas the Word\nand the Word was \ufffd\n".encode())
    assert file_warnings([damaged]) == [
        f"{damaged}: 1 of 3 lines (33.3 %) {ISSUES['replacement_character']}; no Unicode form repairs this: decode the "
        f"file with its real encoding, or make it again",
        f"{damaged}: 1 of 3 lines (33.3 %) {ISSUES['byte_order_mark']}; no Unicode form removes it, and it joins the "
        f"first word of its line: write the file without it"]


def test_normal_forms_are_unicodes_own_and_an_unknown_one_is_refused(capsys):
    assert normalize_lines(DECOMPOSED, "nfc") == REFERENCES and normalize_lines(COMPATIBILITY, "nfkc") == REFERENCES
    assert normalize_lines(DECOMPOSED, "none") == DECOMPOSED
    with pytest.raises(InvalidValueError, match="unknown Unicode form 'nfd': choose one of nfc, nfkc, none"):
        normalize_lines(REFERENCES, "nfd")
    with pytest.raises(SystemExit) as stop:
        eval_main(["score", "--hyp", "h", "--ref", "r", "--unicode-form", "nfd"])
    assert stop.value.code == 2 and "--unicode-form: invalid choice: 'nfd'" in capsys.readouterr().err
    assert unicode_warnings({"clean": REFERENCES}, "nfc") == []


# ---- lskd-eval writes nothing it cannot write, and takes no infinite knob ---------------------------------------

def never(calls, name):
    """A stand-in for the function ``name`` that records in ``calls`` that it ran, and fails the test."""
    def called(*args, **kwargs):
        calls.append(name)
        raise AssertionError(f"{name} ran before the output location was checked")
    return called


def fake_loaded_model(*args, **kwargs):
    """What ``task_and_model`` returns, as far as lskd-eval stability uses it before its pass."""
    import torch

    return None, torch.nn.Identity(), None


#: per command: what it may do before the check (faked: no real checkpoint here), and the expensive work it must
#: not start (each an importable attribute)
WORK = {
    "bleu": ({"eval.bleu.describe_system": lambda checkpoint: {}}, ["fairseq_plugins.decoding.open_engine"]),
    "stability": ({"fairseq_plugins.tasks.task_and_model": fake_loaded_model,
                   "eval.analysis.checked_lengths": lambda *args: None}, ["eval.analysis.most_frequent_gold_classes"]),
    "project": ({"eval.analysis.panel_model": lambda *args: (None,) * 5}, ["eval.analysis.penultimate_points"]),
    "speed": ({}, ["fairseq_plugins.ctranslate2_export.export_beside", "eval.speed._run_child"]),
}


@pytest.mark.parametrize("command", sorted(WORK))
def test_a_read_only_output_fails_in_one_line_before_any_decoding(tmp_path, capsys, monkeypatch, command):
    """Before: lskd-eval bleu decoded the whole split, then failed to write its record. The disk is read-only
    by injection (EROFS): root ignores permission bits, so a chmod would not stop it."""
    from test_errors import fake_prepared, refuse_writes

    monkeypatch.delenv("LSKD_DEBUG", raising=False)
    checkpoint, disk = tmp_path / "model.pt", tmp_path / "disk"
    out = disk / "out"
    checkpoint.write_bytes(b"not read: faked")
    allowed, expensive = WORK[command]
    for target, fake in allowed.items():
        monkeypatch.setattr(target, fake)
    calls = []
    for target in expensive:
        monkeypatch.setattr(target, never(calls, target))
    flags = ["--checkpoints" if command == "project" else "--checkpoint", str(checkpoint), "--data",
             str(fake_prepared(tmp_path / "data")), "--out", str(out / "p.png" if command == "project" else out)]
    disk.mkdir()
    refuse_writes(monkeypatch, disk, errno.EROFS)
    assert eval_main([command, *flags]) == 2
    assert calls == []
    assert capsys.readouterr().err == f"lskd-eval: error: {out}: cannot write here (Read-only file system)\n"


@pytest.mark.parametrize("command,flag,value", [("bleu", "--lenpen", "inf"), ("bleu", "--max-len-a", "nan"),
                                                ("speed", "--lenpen", "-inf")])
def test_an_infinite_float_flag_is_refused_before_any_work(tmp_path, capsys, command, flag, value):
    with pytest.raises(SystemExit) as stop:
        eval_main([command, "--checkpoint", "c.pt", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "out"),
                   f"{flag}={value}"])
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    assert f"argument {flag}: expected a finite number, got '{value}'" in capsys.readouterr().err
