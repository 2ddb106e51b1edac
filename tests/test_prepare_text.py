"""``lskd-prepare text``: the pipeline every corpus goes through, on a small synthetic corpus."""
import json

import pytest

from data_prep.cli import main as prepare_main
from data_prep.pipeline import PrepOptions, prepare_parallel
from lskd.corpus import CorpusError
from lskd.provenance import sha256_file

WORDS_DE = ["Haus", "Baum", "Hund", "Katze", "Wasser", "Brot", "Licht", "Weg", "Berg", "Stadt"]
WORDS_EN = ["house", "tree", "dog", "cat", "water", "bread", "light", "way", "mountain", "city"]


def make_corpus(directory, sizes=(60, 12, 9), empty_pairs_in_train=2):
    """Files PREFIX.de / PREFIX.en per split; the German side uses „German quotes“ to normalise."""
    directory.mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for split, size in zip(("train", "valid", "test"), sizes):
        de, en = [], []
        for i in range(size):
            a, b = i % 10, (i * 3 + 1) % 10
            de.append(f"„Das {WORDS_DE[a]} und der {WORDS_DE[b]}“ , sagt er {i}.")
            en.append(f'"The {WORDS_EN[a]} and the {WORDS_EN[b]}", he says {i}.')
        if split == "train":
            de += [""] * empty_pairs_in_train
            en += ["orphan"] * empty_pairs_in_train
        (directory / f"{split}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
        (directory / f"{split}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
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
    assert train["lines"] == 62 and train["dropped_empty_pairs"] == 2 and train["kept_pairs"] == 60
    assert train["source"]["sha256"] == sha256_file(f"{prefixes['train']}.de")
    assert record["options"] == {"src": "de", "tgt": "en", "vocab_size": 60, "spm_model_type": "unigram",
                                 "normalize_punctuation": True}
    assert record["outputs"]["binarized_sentences"] == {"train": 60, "valid": 12, "test": 9}
    assert {"fairseq", "torch", "sentencepiece", "sacremoses"} <= {k.replace("ve-", "") for k in record["versions"]}
    assert record["outputs"]["dict_sha256"] == sha256_file(out / "bin" / "dict.en.txt")


def test_joined_dictionary_and_line_counts_on_disk(prepared):
    _, out, _ = prepared
    assert (out / "bin" / "dict.de.txt").read_bytes() == (out / "bin" / "dict.en.txt").read_bytes()
    for split, n in (("train", 60), ("valid", 12), ("test", 9)):
        for directory in ("raw", "norm", "spm"):
            for lang in ("de", "en"):
                assert len((out / directory / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()) == n


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
    other = make_corpus(tmp_path / "other", sizes=(40, 5, 5), empty_pairs_in_train=0)
    with pytest.raises(CorpusError, match="already holds prepared data from different inputs.*--overwrite"):
        prepare_parallel(inputs_of(other), out, PrepOptions("de", "en", vocab_size=60), workers=1)
    # the existing preparation is intact after the refusal
    assert json.loads((out / "prep.json").read_text())["inputs"]["train"]["kept_pairs"] == 60


def test_overwrite_replaces_a_preparation(tmp_path):
    first = make_corpus(tmp_path / "a", sizes=(40, 5, 5), empty_pairs_in_train=0)
    second = make_corpus(tmp_path / "b", sizes=(30, 6, 4), empty_pairs_in_train=0)
    out = tmp_path / "out"
    prepare_parallel(inputs_of(first), out, PrepOptions("de", "en", vocab_size=50), workers=1)
    record = prepare_parallel(inputs_of(second), out, PrepOptions("de", "en", vocab_size=50), workers=1, overwrite=True)
    assert record["outputs"]["binarized_sentences"] == {"train": 30, "valid": 6, "test": 4}


def test_cli_reports_mismatched_files_clearly(tmp_path, capsys):
    prefixes = make_corpus(tmp_path / "c", sizes=(20, 5, 5), empty_pairs_in_train=0)
    with open(f"{prefixes['valid']}.en", "a", encoding="utf-8") as handle:
        handle.write("one line too many\n")
    code = prepare_main(["text", "--src", "de", "--tgt", "en", "--out", str(tmp_path / "out"),
                         *[f"--{s}={p}" for s, p in prefixes.items()]])
    assert code == 2
    err = capsys.readouterr().err
    assert "valid split: line counts differ" in err and "valid.de has 5 lines" in err and "valid.en has 6 lines" in err
    assert not (tmp_path / "out" / "prep.json").exists()
