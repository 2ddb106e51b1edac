"""Finding a teacher's own vocabulary (SentencePiece model, dictionaries) and refusing what does not fit."""
import re
from types import SimpleNamespace

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
    assert check_pieces_fit_dictionaries(vocabulary) == {"source": 0.0, "target": pytest.approx(1 / len(pieces)),
                                                         "both": 0.0}


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


def test_a_checkpoint_trained_on_prepared_data_finds_the_sentencepiece_model_of_that_preparation(tmp_path, spm_model):
    """The quickstart's teachers: trained on PREP/bin, with no --bpe; PREP holds prep.json and spm.model."""
    pieces = pieces_of(spm_model)
    prepared = tmp_path / "data" / "bible-de-en-4k"
    (prepared / "bin").mkdir(parents=True)
    write_dict(prepared / "bin" / "dict.de.txt", pieces)
    write_dict(prepared / "bin" / "dict.en.txt", pieces)
    (prepared / "spm.model").write_bytes(spm_model.read_bytes())
    checkpoint = tmp_path / "runs" / "teacher" / "checkpoint_last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": {}, "cfg": {"task": {"data": str(prepared / "bin"), "source_lang": "de",
                                              "target_lang": "en"}}}, checkpoint)
    with pytest.raises(TeacherVocabularyError, match="no spm model"):  # a folder that is no preparation
        find_teacher_vocabulary(checkpoint, "de", "en")
    (prepared / "prep.json").write_text("{}")
    vocabulary = find_teacher_vocabulary(checkpoint, "de", "en")
    assert (vocabulary.spm_model, vocabulary.src_dict) == (prepared / "spm.model", prepared / "bin" / "dict.de.txt")


def test_a_directory_without_vocabulary_names_what_is_missing_and_where_it_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherVocabularyError) as err:
        find_teacher_vocabulary(tmp_path / "empty", "de", "en")
    message = str(err.value)
    assert "no spm model (looked for " in message and "sentencepiece.bpe.model" in message
    assert "no src dict (looked for " in message and "dict.de.txt" in message and "dict.en.txt" in message
    assert message.endswith("give --spm-model --src-dict --tgt-dict explicitly")


def test_a_subword_model_mostly_absent_from_the_dictionaries_is_refused_with_the_share(tmp_path, spm_model):
    pieces = pieces_of(spm_model)
    other = [f"x{i}" for i in range(len(pieces))]
    teacher = model_dir(tmp_path / "m", spm_model, other, other[:3] + pieces[:2])
    with pytest.raises(TeacherVocabularyError, match=rf"{(len(pieces) - 2) / len(pieces):.0%} of the pieces of .*sentencepiece.bpe.model "
                                                     r"are in neither the source dictionary .*dict.de.txt nor the "
                                                     r"target dictionary .*dict.en.txt: they were not made together"):
        check_pieces_fit_dictionaries(find_teacher_vocabulary(teacher, "de", "en"))


def test_files_that_are_no_subword_model_or_dictionary_are_named(tmp_path, spm_model):
    pieces = pieces_of(spm_model)
    teacher = model_dir(tmp_path / "m", spm_model, pieces, pieces)
    (teacher / "dict.en.txt").write_text("\u2581the\n", encoding="utf-8")  # no count
    with pytest.raises(TeacherVocabularyError, match=r"m/dict.en.txt is not a fairseq dictionary: Incorrect dictionary"):
        check_pieces_fit_dictionaries(find_teacher_vocabulary(teacher, "de", "en"))
    (teacher / "sentencepiece.bpe.model").write_text("not a model")
    with pytest.raises(TeacherVocabularyError, match=r"m/sentencepiece.bpe.model is not a SentencePiece model"):
        check_pieces_fit_dictionaries(find_teacher_vocabulary(teacher, "de", "en"))


def test_a_joint_subword_model_with_separate_dictionaries_fits(tmp_path, spm_model):
    """Each side's dictionary holds only its language's pieces: most pieces are missing from one
    side, none from both."""
    pieces = pieces_of(spm_model)
    teacher = model_dir(tmp_path / "m", spm_model, pieces[:4], pieces[4:])
    shares = check_pieces_fit_dictionaries(find_teacher_vocabulary(teacher, "de", "en"))
    assert shares["target"] == pytest.approx(4 / len(pieces)) and shares["source"] > 0.5 and shares["both"] == 0


def test_unk_share_counts_pieces_the_dictionary_lacks_as_fairseq_splits_them(tmp_path):
    dictionary = write_dict(tmp_path / "dict.en.txt", ["▁the", "▁word", "<unk>x"])
    # fairseq splits at any whitespace, U+2028 included; "<unk>" itself and unknown pieces count
    assert unk_share(["▁the ▁word ▁was", "▁god", "", "▁the\u2028▁word  <unk>\t<unk>x"], dictionary) == (3, 8)


# -- the KD criterion's dictionary check (fairseq_plugins.teacher.check_dictionaries) -------------------------------
def student_task(data, src_symbols, tgt_symbols):
    """What check_dictionaries reads of a fairseq translation task: its data directory and dictionaries."""
    from fairseq.data import Dictionary

    data.mkdir(exist_ok=True)
    dictionaries = {}
    for lang, symbols in (("de", src_symbols), ("en", tgt_symbols)):
        dictionaries[lang] = Dictionary.load(str(write_dict(data / f"dict.{lang}.txt", symbols)))
    return SimpleNamespace(cfg=SimpleNamespace(data=str(data), source_lang="de", target_lang="en"),
                           source_dictionary=dictionaries["de"], target_dictionary=dictionaries["en"])


def teacher_state(data, model=None):
    return {"cfg": {"task": {"data": str(data), "source_lang": "de", "target_lang": "en"}}, "model": model or {}}


def test_a_teacher_with_another_target_dictionary_is_refused_naming_both_files(tmp_path):
    from fairseq_plugins.teacher import TeacherError, check_dictionaries

    teacher = student_task(tmp_path / "teacher-bin", ["▁a", "▁b"], ["▁the", "▁word", "▁god"])
    student = student_task(tmp_path / "student-bin", ["▁a", "▁b"], ["▁the", "▁god"])
    check_dictionaries("t.pt", teacher_state(tmp_path / "teacher-bin"), teacher)  # itself: accepted
    with pytest.raises(TeacherError) as err:
        check_dictionaries("t.pt", teacher_state(tmp_path / "teacher-bin"), student)
    message = str(err.value)
    assert re.search(r"teacher t.pt was trained with target dictionary .*teacher-bin/dict.en.txt \(7 types\) but the "
                     r"student's target dictionary is .*student-bin/dict.en.txt \(6 types\)", message)
    assert "(5, '▁word', '▁god'), (6, '▁god', None)" in message and "one target dictionary" in message


def test_a_teacher_with_another_source_dictionary_is_refused_for_online_kd(tmp_path):
    from fairseq_plugins.teacher import TeacherError, check_dictionaries

    student_task(tmp_path / "teacher-bin", ["▁x", "▁b"], ["▁the"])
    student = student_task(tmp_path / "student-bin", ["▁a", "▁b"], ["▁the"])
    with pytest.raises(TeacherError, match=r"source dictionary .*teacher-bin/dict.de.txt \(6 types\) but the student's "
                                           r"source dictionary is .*student-bin/dict.de.txt .*\(4, '▁x', '▁a'\).*"
                                           r"the teacher reads the student's source tokens"):
        check_dictionaries("t.pt", teacher_state(tmp_path / "teacher-bin"), student)


def test_a_published_model_directory_is_checked_with_the_dictionaries_beside_the_checkpoint(tmp_path):
    from fairseq_plugins.teacher import TeacherError, check_dictionaries

    student = student_task(tmp_path / "student-bin", ["▁a"], ["▁the"])
    model = tmp_path / "model"
    model.mkdir()
    write_dict(model / "dict.de.txt", ["▁a"])
    write_dict(model / "dict.en.txt", ["▁le"])
    state = teacher_state("/elsewhere/data-bin")  # where it was trained: not here
    with pytest.raises(TeacherError, match=r"target dictionary .*model/dict.en.txt"):
        check_dictionaries(str(model / "model.pt"), state, student)


def test_without_its_dictionaries_a_teacher_is_checked_by_its_embedding_sizes(tmp_path, caplog):
    from fairseq_plugins.teacher import TeacherError, check_dictionaries

    student = student_task(tmp_path / "student-bin", ["▁a"], ["▁the", "▁word"])  # 5 source, 6 target types
    lstm = {"encoder.embed_tokens.weight": torch.zeros(5, 2), "decoder.fc_out.weight": torch.zeros(6, 2)}  # an lstm's
    check_dictionaries("t.pt", teacher_state(tmp_path / "gone", lstm), student)
    assert "checked only the target vocabulary size (6)" in caplog.text
    with pytest.raises(TeacherError, match=r"teacher t.pt has 7 target types but the student's target dictionary "
                                           r".*student-bin/dict.en.txt has 6"):
        check_dictionaries("t.pt", teacher_state(tmp_path / "gone", lstm | {"decoder.fc_out.weight": torch.zeros(7, 2)}),
                           student)
    with pytest.raises(TeacherError, match=r"teacher t.pt has 9 source types but the student's source dictionary "
                                           r".*student-bin/dict.de.txt has 5"):
        check_dictionaries("t.pt", teacher_state(tmp_path / "gone", lstm | {"encoder.embed_tokens.weight": torch.zeros(9, 2)}),
                           student)
