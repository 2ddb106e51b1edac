"""``lskd-prepare text``: the pipeline every corpus goes through, on a small synthetic corpus."""
import json
import re
from collections import Counter

import pytest

from data_prep.cli import main as prepare_main
from data_prep.pipeline import PrepOptions, prepare_parallel
from lskd.corpus import CorpusError, read_lines
from lskd.provenance import sha256_file

WORDS_DE = ["Haus", "Baum", "Hund", "Katze", "Wasser", "Brot", "Licht", "Weg", "Berg", "Stadt"]
WORDS_EN = ["house", "tree", "dog", "cat", "water", "bread", "light", "way", "mountain", "city"]


#: Characters that ``str.splitlines`` breaks at but that sit inside one line of real text.
LINE_BREAKS_INSIDE_A_LINE = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]
#: Pairs with a side that holds no text once normalised and encoded, and the reason prep.json gives.
EMPTY_SIDE_PAIRS = [
    ("", "orphan", "empty_source"),
    ("   ", "orphan", "empty_source"),
    ("\u200b", "zero-width space", "empty_source"),
    ("\u200d", "zero-width joiner", "empty_source"),  # encoded as pieces "▁" "\u200d"
    ("Glocke", "\x07", "empty_target"),
    ("Tür", "\u0085", "empty_target"),  # pieces "▁" "\x85"; fairseq splits "\x85" away as whitespace
    ("\ufeff", "\ufeff", "empty_both"),
]


def make_corpus(directory, sizes=(60, 12, 9), special_train_pairs=True):
    """Files PREFIX.de / PREFIX.en per split; the German side uses „German quotes“ to normalise.

    With ``special_train_pairs`` the training split also holds, after its ``sizes[0]`` ordinary
    pairs, one pair per character of LINE_BREAKS_INSIDE_A_LINE (inside both sides) and the
    EMPTY_SIDE_PAIRS, and its German file has ``\\r\\n`` line ends.
    """
    directory.mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for split, size in zip(("train", "valid", "test"), sizes):
        de, en = [], []
        for i in range(size):
            a, b = i % 10, (i * 3 + 1) % 10
            de.append(f"„Das {WORDS_DE[a]} und der {WORDS_DE[b]}“ , sagt er {i}.")
            en.append(f'"The {WORDS_EN[a]} and the {WORDS_EN[b]}", he says {i}.')
        end = "\n"
        if split == "train" and special_train_pairs:
            de += [f"Das Haus{char}der Baum {i}." for i, char in enumerate(LINE_BREAKS_INSIDE_A_LINE)]
            en += [f"The house{char}the tree {i}." for i, char in enumerate(LINE_BREAKS_INSIDE_A_LINE)]
            de += [pair[0] for pair in EMPTY_SIDE_PAIRS]
            en += [pair[1] for pair in EMPTY_SIDE_PAIRS]
            end = "\r\n"
        (directory / f"{split}.de").write_bytes("".join(line + end for line in de).encode("utf-8"))
        (directory / f"{split}.en").write_bytes("".join(line + "\n" for line in en).encode("utf-8"))
        prefixes[split] = directory / split
    return prefixes


def inputs_of(prefixes):
    return {split: (f"{p}.de", f"{p}.en") for split, p in prefixes.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    prefixes = make_corpus(root / "corpus")
    out = root / "out"
    record = prepare_parallel(inputs_of(prefixes), out, PrepOptions("de", "en", vocab_size=60), workers=1)
    return prefixes, out, record


def test_prep_json_records_inputs_options_counts_and_versions(prepared):
    prefixes, out, record = prepared
    on_disk = json.loads((out / "prep.json").read_text())
    assert on_disk == record
    train = record["inputs"]["train"]
    assert train["lines"] == 60 + 9 + 7 and train["kept_pairs"] == 60 + 9
    assert train["source"]["sha256"] == sha256_file(f"{prefixes['train']}.de")
    assert record["options"] == {"src": "de", "tgt": "en", "vocab_size": 60, "spm_model_type": "unigram",
                                 "normalize_punctuation": True}
    assert record["outputs"]["binarized_sentences"] == {"train": 69, "valid": 12, "test": 9}
    assert {"fairseq", "torch", "sentencepiece", "sacremoses"} <= {k.replace("ve-", "") for k in record["versions"]}
    assert record["outputs"]["dict_sha256"] == sha256_file(out / "bin" / "dict.en.txt")


def test_joined_dictionary_and_line_counts_on_disk(prepared):
    _, out, _ = prepared
    assert (out / "bin" / "dict.de.txt").read_bytes() == (out / "bin" / "dict.en.txt").read_bytes()
    for split, n in (("train", 69), ("valid", 12), ("test", 9)):
        for directory in ("raw", "norm", "spm"):
            for lang in ("de", "en"):
                assert len(read_lines(out / directory / f"{split}.{lang}")) == n


def test_line_break_characters_stay_inside_their_line(prepared):
    """U+2028 and the other ``str.splitlines`` breaks, and CRLF line ends, keep every pair aligned."""
    prefixes, out, _ = prepared
    raw_de, raw_en = read_lines(out / "raw" / "train.de"), read_lines(out / "raw" / "train.en")
    expected = [(f"Das Haus{c}der Baum {i}.", f"The house{c}the tree {i}.") for i, c in enumerate(LINE_BREAKS_INSIDE_A_LINE)]
    assert list(zip(raw_de, raw_en))[60:69] == expected
    assert all("\r" not in line for line in raw_de[:60])  # CRLF ends are line ends, not text


def test_sides_empty_after_normalisation_are_dropped_and_counted(prepared):
    """Emptiness is judged on what is binarized: every sentence holds a piece besides "▁" and </s>."""
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    _, out, record = prepared
    reasons = Counter(reason for _, _, reason in EMPTY_SIDE_PAIRS)
    assert record["inputs"]["train"]["dropped_pairs"] == {"empty_source": 4, "empty_target": 2, "empty_both": 1} == reasons
    assert record["inputs"]["valid"]["dropped_pairs"] == {"empty_source": 0, "empty_target": 0, "empty_both": 0}
    for lang in ("de", "en"):
        dictionary = Dictionary.load(str(out / "bin" / f"dict.{lang}.txt"))
        dataset = MMapIndexedDataset(str(out / "bin" / f"train.de-en.{lang}"))
        sentences = [[dictionary[i] for i in dataset[n].tolist()] for n in range(len(dataset))]
        assert len(sentences) == 69 and all(set(pieces) - {"\u2581", "</s>"} for pieces in sentences)


def test_punctuation_is_normalised_but_raw_is_untouched(prepared):
    _, out, _ = prepared
    raw = (out / "raw" / "test.de").read_text(encoding="utf-8").splitlines()[0]
    norm = (out / "norm" / "test.de").read_text(encoding="utf-8").splitlines()[0]
    assert raw == "„Das Haus und der Baum“ , sagt er 0."
    assert norm == '"Das Haus und der Baum" , sagt er 0.'


def test_rerun_with_same_inputs_is_a_no_op(prepared, capsys):
    prefixes, out, record = prepared
    before = (out / "bin" / "train.de-en.de.bin").stat().st_mtime_ns
    again = prepare_parallel(inputs_of(prefixes), out, PrepOptions("de", "en", vocab_size=60), workers=1)
    assert again == record
    assert (out / "bin" / "train.de-en.de.bin").stat().st_mtime_ns == before
    assert "already prepared" in capsys.readouterr().out


def test_out_dir_with_other_inputs_is_refused_unless_overwrite(prepared, tmp_path):
    _, out, _ = prepared
    other = make_corpus(tmp_path / "other", sizes=(40, 5, 5), special_train_pairs=False)
    with pytest.raises(CorpusError, match="already holds prepared data from different inputs.*--overwrite"):
        prepare_parallel(inputs_of(other), out, PrepOptions("de", "en", vocab_size=60), workers=1)
    # the existing preparation is intact after the refusal
    assert json.loads((out / "prep.json").read_text())["inputs"]["train"]["kept_pairs"] == 69


@pytest.mark.slow  # two fairseq-preprocess runs: 11 s of the fast suite's minute
def test_overwrite_replaces_a_preparation(tmp_path):
    first = make_corpus(tmp_path / "a", sizes=(40, 5, 5), special_train_pairs=False)
    second = make_corpus(tmp_path / "b", sizes=(30, 6, 4), special_train_pairs=False)
    out = tmp_path / "out"
    prepare_parallel(inputs_of(first), out, PrepOptions("de", "en", vocab_size=50), workers=1)
    record = prepare_parallel(inputs_of(second), out, PrepOptions("de", "en", vocab_size=50), workers=1, overwrite=True)
    assert record["outputs"]["binarized_sentences"] == {"train": 30, "valid": 6, "test": 4}


def test_cli_reports_mismatched_files_clearly(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    with open(f"{prefixes['valid']}.en", "a", encoding="utf-8") as handle:
        handle.write("one line too many\n")
    code = prepare_main(["text", "--src", "de", "--tgt", "en", "--out", str(tmp_path / "out"),
                         *[f"--{s}={p}" for s, p in prefixes.items()]])
    assert code == 2
    err = capsys.readouterr().err
    assert "valid split: line counts differ" in err and "valid.de has 5 lines" in err and "valid.en has 6 lines" in err
    assert not (tmp_path / "out" / "prep.json").exists()


def test_split_with_no_text_left_is_refused_naming_its_files(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 2, 5), special_train_pairs=False)
    (tmp_path / "c" / "valid.de").write_text("\u200b\n\ufeff\n", encoding="utf-8")
    code = prepare_main(["text", "--src", "de", "--tgt", "en", "--out", str(tmp_path / "out"), "--vocab-size", "60",
                         *[f"--{s}={p}" for s, p in prefixes.items()]])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lskd-prepare: error: valid split is empty after dropping pairs with an empty side")
    assert "valid.de" in err and "valid.en" in err and "\n" not in err


# -- a teacher's vocabulary (lskd-prepare text --teacher) -----------------------------------------------------------
def teacher_vocabulary_files(root, prefixes, joined=False, drop_target="\u2581sa", line_end="\n"):
    """An outside teacher's vocabulary made without lskd-prepare: a SentencePiece model trained on the
    punctuation-normalised training text with the sentencepiece API, and fairseq dictionaries of its
    pieces (one joined file, or one per side) written with ``line_end``; ``drop_target`` is left out
    of the target side."""
    import sentencepiece as spm
    from sacremoses import MosesPunctNormalizer

    root.mkdir(parents=True, exist_ok=True)
    lines = {lang: [MosesPunctNormalizer(lang=lang).normalize(line) for line in read_lines(f"{prefixes['train']}.{lang}")[:60]]
             for lang in ("de", "en")}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines["de"] + lines["en"]), model_prefix=str(root / "spm"),
                                   vocab_size=70, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(root / "spm.model"))
    counts = {lang: Counter(p for pieces in processor.encode(lines[lang], out_type=str) for p in pieces)
              for lang in lines}
    counts["en"].pop(drop_target)

    def write(path, counter):
        path.write_bytes("".join(f"{p} {n}{line_end}" for p, n in counter.most_common()).encode("utf-8"))
        return path

    if joined:
        joined_dict = write(root / "dict.txt", counts["de"] + counts["en"])
        return root / "spm.model", joined_dict, joined_dict
    return root / "spm.model", write(root / "dict.de.txt", counts["de"]), write(root / "dict.en.txt", counts["en"])


@pytest.fixture(scope="module")
def prepared_for_teacher(tmp_path_factory):
    from fairseq_plugins.teacher_vocabulary import TeacherVocabulary

    root = tmp_path_factory.mktemp("teacher_text")
    prefixes = make_corpus(root / "corpus")
    # CRLF dictionaries: fairseq-preprocess rewrites them with \n; bin/ must still hold the teacher's bytes
    vocabulary = TeacherVocabulary(*teacher_vocabulary_files(root / "teacher", prefixes, line_end="\r\n"), None)
    return prefixes, vocabulary, root / "out"


def test_a_teachers_vocabulary_encodes_binarizes_and_is_recorded(prepared_for_teacher, capsys):
    import sentencepiece as spm

    prefixes, vocabulary, out = prepared_for_teacher
    record = prepare_parallel(inputs_of(prefixes), out, PrepOptions("de", "en", vocab_size=None, spm_model_type=None),
                              vocabulary=vocabulary, workers=1)
    assert (out / "spm.model").read_bytes() == vocabulary.spm_model.read_bytes()
    assert (out / "bin" / "dict.de.txt").read_bytes() == vocabulary.src_dict.read_bytes()
    assert (out / "bin" / "dict.en.txt").read_bytes() == vocabulary.tgt_dict.read_bytes()
    processor = spm.SentencePieceProcessor(model_file=str(vocabulary.spm_model))
    for lang in ("de", "en"):
        want = [" ".join(p) for p in processor.encode(read_lines(out / "norm" / f"test.{lang}"), out_type=str)]
        assert read_lines(out / "spm" / f"test.{lang}") == want
    assert record["vocabulary"]["origin"] == "teacher" and record["vocabulary"]["teacher"] is None
    assert record["vocabulary"]["tgt_dict"] == {"path": str(vocabulary.tgt_dict.resolve()),
                                                "sha256": sha256_file(vocabulary.tgt_dict)}
    assert record["outputs"]["joined_dictionary"] is False
    assert record["outputs"]["binarized_sentences"] == {"train": 69, "valid": 12, "test": 9}
    # <unk>: the pieces that are not symbols of the dictionary file, counted here; "▁sa" (says) is in
    # every English sentence and not in the target dictionary
    symbols = {lang: {line.rsplit(" ", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()}
               for lang, path in (("de", vocabulary.src_dict), ("en", vocabulary.tgt_dict))}
    for split in ("train", "valid", "test"):
        for side, lang in (("source", "de"), ("target", "en")):
            pieces = [p for line in read_lines(out / "spm" / f"{split}.{lang}") for p in line.split()]
            unknown = sum(p not in symbols[lang] for p in pieces)
            assert record["outputs"]["unk"][split][side] == {"unk": unknown, "pieces": len(pieces),
                                                             "share": round(unknown / len(pieces), 6)}
        says = sum("says" in line for line in read_lines(out / "raw" / f"{split}.en"))
        assert record["outputs"]["unk"][split]["target"]["unk"] >= says > 0
    err = capsys.readouterr().err
    assert re.search(r"warning: \d+\.\d% of the test target pieces \(\d+ of \d+\) map to <unk> in .*dict.en.txt", err)
    assert "source pieces" not in err


def test_the_teachers_vocabulary_is_part_of_the_fingerprint(prepared_for_teacher, tmp_path, capsys):
    from fairseq_plugins.teacher_vocabulary import TeacherVocabulary

    prefixes, vocabulary, out = prepared_for_teacher
    options = PrepOptions("de", "en", vocab_size=None, spm_model_type=None)
    prepare_parallel(inputs_of(prefixes), out, options, vocabulary=vocabulary, workers=1)
    assert "already prepared" in capsys.readouterr().out
    other_target = tmp_path / "dict.en.txt"
    other_target.write_bytes(vocabulary.tgt_dict.read_bytes().replace(b"\r\n", b"\n"))  # same symbols, other file
    with pytest.raises(CorpusError, match="already holds prepared data from different inputs"):
        prepare_parallel(inputs_of(prefixes), out, options,
                         vocabulary=TeacherVocabulary(vocabulary.spm_model, vocabulary.src_dict, other_target, None))


@pytest.mark.slow  # seconds of subprocesses: keeps -m 'not slow' under a minute
def test_a_teachers_joined_dictionary_stays_joined(tmp_path):
    from fairseq_plugins.teacher_vocabulary import TeacherVocabulary

    prefixes = make_corpus(tmp_path / "corpus", sizes=(30, 5, 5), special_train_pairs=False)
    vocabulary = TeacherVocabulary(*teacher_vocabulary_files(tmp_path / "teacher", prefixes, joined=True), None)
    record = prepare_parallel(inputs_of(prefixes), tmp_path / "out", PrepOptions("de", "en", None, None),
                              vocabulary=vocabulary, workers=1)
    assert record["outputs"]["joined_dictionary"] is True
    for lang in ("de", "en"):
        assert (tmp_path / "out" / "bin" / f"dict.{lang}.txt").read_bytes() == vocabulary.src_dict.read_bytes()


def prepare_cli(tmp_path, prefixes, *args):
    return prepare_main(["text", "--src", "de", "--tgt", "en", "--out", str(tmp_path / "out"), "--workers", "1",
                         *[f"--{s}={p}" for s, p in prefixes.items()], *args])


def test_vocab_size_with_a_teacher_is_refused(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    assert prepare_cli(tmp_path, prefixes, "--teacher", str(tmp_path), "--vocab-size", "8000") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lskd-prepare: error: --vocab-size cannot be combined with --teacher: the vocabulary is the "
                   "teacher's own SentencePiece model and dictionaries")
    assert not (tmp_path / "out").exists()


def test_a_teacher_directory_without_vocabulary_names_what_is_missing(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "dict.en.txt").write_text("\u2581the 3\n", encoding="utf-8")
    assert prepare_cli(tmp_path, prefixes, "--teacher", str(teacher)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lskd-prepare: error: teacher {teacher}: no spm model (looked for ")
    assert f"no src dict (looked for {teacher}/dict.de.txt, {teacher}/dict.txt)" in err
    assert "no tgt dict" not in err and err.strip().endswith("give --spm-model --src-dict explicitly")


def test_a_subword_model_that_does_not_fit_the_dictionaries_is_refused(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    spm_model, src_dict, _ = teacher_vocabulary_files(tmp_path / "teacher", prefixes)
    foreign = tmp_path / "dict.xx.txt"
    foreign.write_text("".join(f"w{i} 1\n" for i in range(50)), encoding="utf-8")
    assert prepare_cli(tmp_path, prefixes, "--spm-model", str(spm_model), "--src-dict", str(foreign),
                       "--tgt-dict", str(foreign)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.match(rf"lskd-prepare: error: 100% of the pieces of {spm_model} are in neither the source dictionary "
                    rf"{foreign} nor the target dictionary {foreign}", err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # seconds of subprocesses: keeps -m 'not slow' under a minute
def test_a_too_small_vocabulary_is_one_line_and_a_corrected_rerun_is_accepted(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    assert prepare_cli(tmp_path, prefixes, "--vocab-size", "20") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    needed = re.search(r"give --vocab-size (\d+) or more", err)
    assert err.startswith(f"lskd-prepare: error: SentencePiece cannot train a unigram model of 20 pieces on "
                          f"{prefixes['train']}.de and {prefixes['train']}.en: the training text holds ")
    # the needed size: the characters of the normalised training text (a space is "▁"), <unk>, <s> and </s>
    from sacremoses import MosesPunctNormalizer

    characters = {c for lang in ("de", "en") for line in read_lines(f"{prefixes['train']}.{lang}")
                  for c in MosesPunctNormalizer(lang=lang).normalize(line).strip().replace(" ", "\u2581")}
    assert needed and int(needed[1]) == len(characters) + 3
    assert prepare_cli(tmp_path, prefixes, "--vocab-size", needed[1]) == 0
    assert json.loads((tmp_path / "out" / "prep.json").read_text())["outputs"]["binarized_sentences"]["train"] == 20


@pytest.mark.parametrize("damage", ['{"fingerprint": "ab', "[1, 2]"], ids=["truncated", "a-list"])
def test_a_damaged_prep_json_is_refused_naming_it(tmp_path, capsys, damage):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "prep.json").write_text(damage, encoding="utf-8")
    code = prepare_main(["text", "--src", "de", "--tgt", "en", "--out", str(out),
                         *[f"--{s}={p}" for s, p in prefixes.items()]])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lskd-prepare: error: {out / 'prep.json'}: ") and err.count("\n") == 1
    assert err.endswith(f"; the record is damaged: pass --overwrite to replace it and the data prepared in {out}, "
                        f"or choose another directory\n")
    assert (out / "prep.json").read_text(encoding="utf-8") == damage  # refused: nothing touched


@pytest.mark.slow  # one fairseq-preprocess run
def test_overwrite_replaces_a_damaged_prep_json(tmp_path):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "prep.json").write_text('{"fingerprint": "ab', encoding="utf-8")
    assert prepare_main(["text", "--src", "de", "--tgt", "en", "--out", str(out), "--vocab-size", "50",
                         "--workers", "1", "--overwrite", *[f"--{s}={p}" for s, p in prefixes.items()]]) == 0
    assert json.loads((out / "prep.json").read_text())["outputs"]["binarized_sentences"] == {"train": 20, "valid": 5,
                                                                                            "test": 5}


def test_one_language_on_both_sides_is_refused(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), special_train_pairs=False)
    code = prepare_main(["text", "--src", "de", "--tgt", "de", "--out", str(tmp_path / "out"),
                         *[f"--{s}={p}" for s, p in prefixes.items()]])
    assert code == 2
    assert capsys.readouterr().err == ("lskd-prepare: error: source and target language are both 'de': they must "
                                       "differ (each side's files are named SPLIT.de, one would overwrite the other)\n")
    assert not (tmp_path / "out").exists()
