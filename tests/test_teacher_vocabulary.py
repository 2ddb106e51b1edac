"""Finding a teacher's own vocabulary (SentencePiece model, dictionaries) and refusing what does not fit."""
import pytest
import torch

from fairseq_plugins.teacher_vocabulary import (TeacherVocabularyError, check_pieces_fit_dictionaries,
                                                find_teacher_vocabulary, unk_share)

WORDS = "in the beginning was the word and the word was with god and the word was god".split()


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("spm")
    (root / "text").write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) + "\n")
    spm.SentencePieceTrainer.train(input=str(root / "text"), model_prefix=str(root / "m"), vocab_size=25,
                                   model_type="unigram", minloglevel=2)
    return root / "m.model"


def pieces_of(model) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model))
    return [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]  # <unk>, <s>, </s> aside


def write_dict(path, symbols):
    path.write_text("".join(f"{s} 1\n" for s in symbols), encoding="utf-8")
    return path


def model_dir(root, spm_model, src_symbols, tgt_symbols, spm_name="sentencepiece.bpe.model"):
    root.mkdir()
    (root / spm_name).write_bytes(spm_model.read_bytes())
    write_dict(root / "dict.de.txt", src_symbols)
    write_dict(root / "dict.en.txt", tgt_symbols)
    return root


def test_a_published_model_directory_is_read_with_separate_dictionaries(tmp_path, spm_model):
    pieces = pieces_of(spm_model)
    teacher = model_dir(tmp_path / "wmt", spm_model, pieces, pieces[:-1])
    vocabulary = find_teacher_vocabulary(teacher, "de", "en")
    assert vocabulary.spm_model == teacher / "sentencepiece.bpe.model"
    assert (vocabulary.src_dict, vocabulary.tgt_dict) == (teacher / "dict.de.txt", teacher / "dict.en.txt")
    assert not vocabulary.joined
    record = vocabulary.record()
    assert record["tgt_dict"]["path"].endswith("dict.en.txt") and len(record["spm_model"]["sha256"]) == 64
    assert check_pieces_fit_dictionaries(vocabulary) == {"source": 0.0, "target": pytest.approx(1 / len(pieces))}


def test_explicit_paths_override_and_an_spm_model_by_another_name_is_found(tmp_path, spm_model):
    pieces = pieces_of(spm_model)
    teacher = model_dir(tmp_path / "m", spm_model, pieces, pieces, spm_name="spm.32k.model")
    other = write_dict(tmp_path / "other.en.txt", pieces)
    vocabulary = find_teacher_vocabulary(teacher, "de", "en", tgt_dict=other)
    assert vocabulary.spm_model == teacher / "spm.32k.model" and vocabulary.tgt_dict == other


def test_a_checkpoint_leads_to_its_data_directory_and_its_sentencepiece_model(tmp_path, spm_model):
    pieces = pieces_of(spm_model)
    data = tmp_path / "data-bin"
    data.mkdir()
    write_dict(data / "dict.de.txt", pieces)
    write_dict(data / "dict.en.txt", pieces)
    checkpoint = tmp_path / "ckpt" / "checkpoint_best.pt"
    checkpoint.parent.mkdir()
    torch.save({"model": {}, "cfg": {"task": {"data": str(data), "source_lang": "de", "target_lang": "en"},
                                     "bpe": {"_name": "sentencepiece", "sentencepiece_model": str(spm_model)}}},
               checkpoint)
    vocabulary = find_teacher_vocabulary(checkpoint, "de", "en")
    assert (vocabulary.spm_model, vocabulary.src_dict, vocabulary.teacher) == (spm_model, data / "dict.de.txt", checkpoint)
    assert vocabulary.joined  # identical files
    with pytest.raises(TeacherVocabularyError, match="translates de-en, not en-de"):
        find_teacher_vocabulary(checkpoint, "en", "de")


def test_a_directory_without_vocabulary_names_what_is_missing_and_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherVocabularyError) as err:
        find_teacher_vocabulary(tmp_path / "empty", "de", "en")
    message = str(err.value)
    assert "no spm model (looked for " in message and "sentencepiece.bpe.model" in message
    assert "no src dict (looked for " in message and "dict.de.txt" in message and "dict.en.txt" in message
    assert message.endswith("give --spm-model --src-dict --tgt-dict explicitly")


def test_a_subword_model_mostly_absent_from_the_dictionary_is_refused_with_the_share(tmp_path, spm_model):
    pieces = pieces_of(spm_model)
    teacher = model_dir(tmp_path / "m", spm_model, pieces, [f"x{i}" for i in range(len(pieces))])
    with pytest.raises(TeacherVocabularyError, match=r"100% of the pieces of .* are not in the target dictionary"):
        check_pieces_fit_dictionaries(find_teacher_vocabulary(teacher, "de", "en"))


def test_unk_share_counts_pieces_the_dictionary_lacks(tmp_path):
    dictionary = write_dict(tmp_path / "dict.en.txt", ["▁the", "▁word"])
    assert unk_share(["▁the ▁word ▁was", "▁god", ""], dictionary) == (2, 4)
