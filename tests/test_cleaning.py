"""lskd-clean: every input line kept or dropped under the first rule it breaks, counted in a record."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from data_prep.clean import main as clean_main
from lskd.cleaning import CleaningOptions, clean_corpus, drop_reasons
from lskd.output_files import mismatched_files

GERMAN = ["Im Anfang schuf Gott die Himmel und die Erde.", "Und die Erde war wüst und leer.",
          "Der Hund schläft den ganzen Nachmittag im Garten.", "Wir fahren morgen früh mit dem Zug nach Berlin.",
          "Das Wetter ist heute kalt und regnerisch.", "Meine Schwester liest gern Bücher über Geschichte."]
ENGLISH = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void.",
           "The dog sleeps in the garden all afternoon.", "We are taking the train to Berlin early tomorrow.",
           "The weather is cold and rainy today.", "My sister likes to read books about history."]
FRENCH = "Le chat dort sur le canapé toute la journée."
SPANISH = "El perro duerme en el jardín toda la tarde."
GOOD = list(zip(GERMAN, ENGLISH))
NUMBERS = "12345 678 / 90 = 1.5 %"
INVISIBLE = "\u200b"  # a zero-width space: no visible character
#: A hand-made corpus, each line with the reason it must be dropped for (None: kept). Some lines break
#: two rules, to pin the order: a repeated empty line stays "empty", a repeated line of numbers is a
#: "duplicate" (checked before non_letters), a very short source is too short to be judged by language.
CORPUS = [
    (GOOD[0], None),
    (("   ", "Hello there, my friend."), "empty"),
    (GOOD[1], None),
    (GOOD[0], "duplicate"),
    ((NUMBERS, NUMBERS), "non_letters"),
    (GOOD[2], None),
    (("Ja.", "Yes, truly, indeed, this is certainly, without any doubt whatsoever, the case here."), "length_ratio"),
    ((GERMAN[3], FRENCH), "language"),
    (GOOD[3], None),
    ((INVISIBLE, INVISIBLE), "empty"),
    (GOOD[1], "duplicate"),
    ((SPANISH, ENGLISH[2]), "language"),
    ((NUMBERS, NUMBERS), "duplicate"),
    (GOOD[4], None),
    (GOOD[5], None),
    ((INVISIBLE, INVISIBLE), "empty"),
]
COUNTS = {"empty": 3, "duplicate": 3, "non_letters": 1, "length_ratio": 1, "language": 2}


def write_corpus(folder: Path, pairs, name: str = "corpus") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    source, target = folder / f"{name}.de", folder / f"{name}.en"
    source.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    target.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return source, target


def test_each_rule_counts_its_hand_made_lines_and_the_kept_lines_keep_their_order(tmp_path):
    assert sum(COUNTS.values()) + 6 == len(CORPUS)
    inputs = write_corpus(tmp_path / "in", [pair for pair, _ in CORPUS])
    record = clean_corpus(inputs, ["de", "en"], tmp_path / "out" / "train", CleaningOptions())
    assert record["dropped"] == COUNTS and record["kept"] == 6 and record["lines"] == len(CORPUS)
    assert record["rules"] == ["empty", "duplicate", "non_letters", "length_ratio", "language"]
    expected_lines = {rule: [n for n, (_, why) in enumerate(CORPUS, start=1) if why == rule] for rule in COUNTS}
    assert record["first_dropped_lines"] == expected_lines
    kept = [pair for pair, why in CORPUS if why is None]
    assert (tmp_path / "out" / "train.de").read_text(encoding="utf-8").splitlines() == [s for s, _ in kept]
    assert (tmp_path / "out" / "train.en").read_text(encoding="utf-8").splitlines() == [t for _, t in kept]
    assert record["language_identifier"]["identified_as"] == {"de": {"es": 1}, "en": {"fr": 1}}
    # the record is written last and certifies the outputs; nothing temporary is left beside them
    on_disk = json.loads((tmp_path / "out" / "train.clean.json").read_text(encoding="utf-8"))
    assert on_disk["dropped"] == COUNTS and set(on_disk["files"]) == {"train.de", "train.en"}
    assert mismatched_files(tmp_path / "out", on_disk["files"]) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".train.clean.json.lock")) == \
        ["train.clean.json", "train.de", "train.en"]
    assert on_disk["inputs"]["de"]["lines"] == len(CORPUS) and on_disk["inputs"]["de"]["path"] == str(inputs[0])


def test_a_skipped_rule_keeps_its_lines_for_the_next_rule_or_the_output(tmp_path):
    sides = [[s for (s, _), _ in CORPUS], [t for (_, t), _ in CORPUS]]
    reasons, judge = drop_reasons(sides, ["de", "en"], CleaningOptions(skip=["language", "duplicate"]))
    assert judge.rules == ["empty", "non_letters", "length_ratio"]
    # without duplicate, the repeated line of numbers falls to non_letters; language drops are kept
    expected = [None if why in ("language", "duplicate") else why for _, why in CORPUS]
    expected[12] = "non_letters"
    assert reasons == expected


def test_the_language_rule_on_german_english_and_french_sentences(tmp_path):
    german = [GERMAN[0], ENGLISH[1], GERMAN[2], FRENCH, "Oui, merci.", GERMAN[4]]
    source = tmp_path / "mono.txt"
    source.write_text("\n".join(german) + "\n", encoding="utf-8")
    record = clean_corpus([source], ["de"], tmp_path / "clean" / "mono", CleaningOptions())
    assert record["rules"] == ["empty", "duplicate", "non_letters", "language"]  # no length ratio in one side
    assert record["dropped"]["language"] == 2 and record["first_dropped_lines"]["language"] == [2, 4]
    assert record["language_identifier"]["identified_as"] == {"de": {"en": 1, "fr": 1}}
    # "Oui, merci." is French but shorter than language_min_chars (20): not judged, kept
    assert (tmp_path / "clean" / "mono.de").read_text(encoding="utf-8").splitlines() == \
        [GERMAN[0], GERMAN[2], "Oui, merci.", GERMAN[4]]
    english = [ENGLISH[0], GERMAN[1], ENGLISH[3]]
    reasons, _ = drop_reasons([english], ["en"], CleaningOptions())
    assert reasons == [None, "language", None]


def run_clean(capsys, *argv: str) -> tuple[int, str]:
    status = clean_main(list(argv))
    err = capsys.readouterr().err.strip()
    return status, err


def test_bad_inputs_are_one_line_each_before_any_output(tmp_path, capsys):
    source, target = write_corpus(tmp_path, GOOD)
    short = tmp_path / "short.en"
    short.write_text("".join(t + "\n" for t in ENGLISH[:4]), encoding="utf-8")
    latin1 = tmp_path / "latin1.en"
    latin1.write_bytes(("\n".join(ENGLISH[:2]) + "\n" + "Caf\u00e9 au lait, please.\n").encode("latin-1"))
    out = str(tmp_path / "out" / "train")
    cases = [
        ([str(tmp_path / "missing.de"), str(target), "--src", "de", "--tgt", "en"], f"{tmp_path}/missing.de: no such file"),
        ([str(source), str(short), "--src", "de", "--tgt", "en"],
         f"line counts differ: {source} has 6 lines, {short} has 4 lines"),
        ([str(source), str(target), "--src", "de", "--tgt", "xx"],
         r"language code 'xx' is not one py3langid identifies \(it knows \d+ ISO 639 codes, e.g. de, en, fr"),
        ([str(source), str(latin1), "--src", "de", "--tgt", "en"],
         f"{latin1}, line 3: not valid UTF-8 \\(byte 0xe9 at column 4\\)"),
        ([str(source), str(target), "--src", "de", "--tgt", "de"], "source and target are both 'de'"),
        ([str(source), "--src", "de", "--tgt", "en"], "give one file per language"),
        ([str(source), str(target), "--src", "de", "--tgt", "en", "--max-length-ratio", "0.5"],
         "max_length_ratio must be a finite number >= 1, got 0.5"),
    ]
    for argv, message in cases:
        status, err = run_clean(capsys, *argv, "--out", out)
        assert status == 2 and "\n" not in err and err.startswith("lskd-clean: error: "), (argv, err)
        assert re.search(message, err), (message, err)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("train*")), argv
    status, err = run_clean(capsys, str(source), str(target), "--src", "de", "--tgt", "en", "--out", str(source.with_suffix("")))
    assert status == 2 and f"{source} is an input" in err  # would overwrite what it reads


def test_the_console_script_writes_prefix_files_for_lskd_prepare_text(tmp_path, capsys):
    source, target = write_corpus(tmp_path / "in", [pair for pair, _ in CORPUS])
    status = clean_main([str(source), str(target), "--src", "de", "--tgt", "en", "--out", str(tmp_path / "train"),
                         "--skip", "language"])
    assert status == 0
    record = json.loads((tmp_path / "train.clean.json").read_text(encoding="utf-8"))
    assert record["kept"] == 8 and "language" not in record["dropped"] and record["options"]["skip"] == ["language"]
    assert "16 lines: kept 8; dropped: empty 3, duplicate 3, non_letters 1, length_ratio 1" in capsys.readouterr().out


def test_the_length_ratio_is_measured_against_the_corpus_median_so_chinese_is_not_dropped():
    english = ["In the beginning God created the heaven and the earth.", "The dog sleeps in the garden all afternoon.",
               "We are taking the train to Berlin early tomorrow.", "The weather is cold and rainy today.",
               "My sister likes to read books about history.", "Yes."]
    chinese = ["起初，神创造天地。", "狗整个下午都在花园里睡觉。", "我们明天一早坐火车去柏林。", "今天天气又冷又下雨。",
               "我姐姐喜欢读历史书。", "我们明天一早坐火车去柏林，然后去看我姐姐。"]
    # characters per side: 55/9, 43/13, 49/13, 36/10, 44/10, 4/21; Chinese ratios 0.16 to 0.30 against a
    # fixed bound of 3 would drop the first pair (1/0.16 = 6.1); the median is (13/49 + 10/36) / 2
    reasons, judge = drop_reasons([english, chinese], ["en", "zh"], CleaningOptions(skip=["language"]))
    assert judge.median == pytest.approx((13 / 49 + 10 / 36) / 2)
    assert reasons == [None, None, None, None, None, "length_ratio"]  # the last: 21/4 = 19 times the median
