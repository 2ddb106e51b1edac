"""The offline teacher cache on its own: write in any order, read by id, refuse what does not belong."""
import numpy as np
import pytest
import torch

from lskd.topk_cache import MANIFEST, TopKCache, TopKCacheError, TopKCacheWriter, splits_of_another_teacher

K = 3
LENGTHS = [2, 0, 4, 1]  # sentence 1 has no target token at all


def entry(sentence_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A distinct, recognisable entry per sentence: indices 10*id + position + rank, decreasing probabilities."""
    indices = torch.tensor([[10 * sentence_id + t + r for r in range(K)] for t in range(length)], dtype=torch.long)
    probs = torch.tensor([[0.5, 0.25, 0.125]] * length).reshape(length, K)
    return indices.reshape(length, K), probs


def write_cache(directory, order=(3, 0, 2, 1), manifest=None):
    writer = TopKCacheWriter(directory, K, LENGTHS, manifest or {"data_sha256": "d" * 64, "teacher_sha256": ["t" * 64]})
    for sid in order:
        writer.write(sid, *entry(sid, LENGTHS[sid]))
    return writer.close()


def test_entries_written_in_any_order_are_read_back_by_id_with_padding(tmp_path):
    manifest = write_cache(tmp_path)
    assert manifest["k"] == K and manifest["sentences"] == 4 and manifest["tokens"] == sum(LENGTHS)
    cache = TopKCache(tmp_path)
    indices, log_probs = cache.lookup([2, 0], [4, 2], max_length=5)
    assert indices.shape == (2, 5, K) and log_probs.shape == (2, 5, K)
    assert torch.equal(indices[0, :4], entry(2, 4)[0]) and torch.equal(indices[1, :2], entry(0, 2)[0])
    assert torch.allclose(log_probs[0, :4], torch.log(torch.tensor([0.5, 0.25, 0.125])).expand(4, K))
    # padding: index 0, log-probability 0
    assert not indices[1, 2:].any() and not log_probs[1, 2:].any() and not log_probs[0, 4:].any()


def test_storage_is_int32_indices_and_fp16_probabilities(tmp_path):
    write_cache(tmp_path)
    assert np.load(tmp_path / "indices.npy").dtype == np.int32
    assert np.load(tmp_path / "probs.npy").dtype == np.float16
    assert (tmp_path / "indices.npy").stat().st_size - 128 == 4 * K * sum(LENGTHS)  # 128-byte .npy header


def test_a_sentence_without_an_entry_leaves_no_finished_cache(tmp_path):
    with pytest.raises(TopKCacheError, match=r"1 of 4 sentences have no teacher entry \(ids: 2\)"):
        write_cache(tmp_path, order=(0, 1, 3))
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(TopKCacheError, match="is not a finished top-k cache"):
        TopKCache(tmp_path)


def test_an_entry_of_the_wrong_length_is_refused(tmp_path):
    writer = TopKCacheWriter(tmp_path, K, LENGTHS, {})
    with pytest.raises(TopKCacheError, match=r"sentence 0: expected 2 target tokens x k=3, got \(3, 3\)"):
        writer.write(0, *entry(0, 3))


def test_other_data_teacher_or_vocabulary_is_refused(tmp_path):
    write_cache(tmp_path, manifest={"data": "bin:train", "data_sha256": "d" * 64, "teacher_sha256": ["t" * 64]})
    cache = TopKCache(tmp_path)
    cache.check(data_sha256="d" * 64, vocab_size=100, teacher_sha256=["t" * 64])  # its own data and teacher
    with pytest.raises(TopKCacheError, match="was built for data dddddddddddd .*not for this data \\(eeeeeeeeeeee\\)"):
        cache.check(data_sha256="e" * 64)
    with pytest.raises(TopKCacheError, match="was built with teacher"):
        cache.check(data_sha256="d" * 64, teacher_sha256=["u" * 64])
    with pytest.raises(TopKCacheError, match="k=3 is larger than the vocabulary \\(2\\)"):
        cache.check(data_sha256="d" * 64, vocab_size=2)


def test_lookup_refuses_unknown_ids_and_lengths_of_other_data(tmp_path):
    write_cache(tmp_path)
    cache = TopKCache(tmp_path)
    with pytest.raises(TopKCacheError, match="sentence id 4 is not in the top-k cache \\(4 sentences\\)"):
        cache.lookup([4], [1], 1)
    with pytest.raises(TopKCacheError, match="sentence 3: the cache has 1 target tokens but the data has 2"):
        cache.lookup([3], [2], 2)


def test_skipped_sentences_take_no_space_are_recorded_and_refused_at_lookup(tmp_path):
    writer = TopKCacheWriter(tmp_path, K, LENGTHS, {}, skipped=[2], skip_reason="source > 40 tokens")
    for sid in (3, 0, 1):
        writer.write(sid, *entry(sid, LENGTHS[sid]))
    with pytest.raises(TopKCacheError, match="sentence 2 is recorded as skipped: it takes no entry"):
        writer.write(2, *entry(2, LENGTHS[2]))
    manifest = writer.close()  # complete without sentence 2
    assert manifest["skipped"] == {"count": 1, "ids": [2], "reason": "source > 40 tokens"}
    assert manifest["sentences"] == 4 and manifest["tokens"] == sum(LENGTHS) - LENGTHS[2]
    assert (tmp_path / "indices.npy").stat().st_size - 128 == 4 * K * (sum(LENGTHS) - LENGTHS[2])
    cache = TopKCache(tmp_path)
    indices, _ = cache.lookup([3, 0], [1, 2], max_length=2)  # the others are where they were written
    assert torch.equal(indices[0, :1], entry(3, 1)[0]) and torch.equal(indices[1, :2], entry(0, 2)[0])
    with pytest.raises(TopKCacheError, match=r"sentence 2 has no entry in top-k cache .*: it was skipped when the cache "
                                             r"was built \(source > 40 tokens\), yet the trainer asked for it"):
        cache.lookup([0, 2], [2, 4], max_length=4)


def test_a_skip_does_not_excuse_a_missing_sentence_and_must_be_in_the_split(tmp_path):
    writer = TopKCacheWriter(tmp_path, K, LENGTHS, {}, skipped=[2])
    writer.write(0, *entry(0, LENGTHS[0]))
    with pytest.raises(TopKCacheError, match=r"2 of 4 sentences have no teacher entry \(ids: 1, 3\)"):
        writer.close()
    with pytest.raises(TopKCacheError, match=r"skipped sentence ids 4, 7 are not in the split \(4 sentences\)"):
        TopKCacheWriter(tmp_path, K, LENGTHS, {}, skipped=[7, 1, 4])


def test_splits_of_another_teacher_or_k_are_found_and_a_bad_k_is_named(tmp_path):
    write_cache(tmp_path / "train")
    write_cache(tmp_path / "valid", manifest={"data_sha256": "v" * 64, "teacher_sha256": ["u" * 64]})
    (tmp_path / "test").mkdir()  # unfinished (no manifest): nobody's yet
    assert splits_of_another_teacher(tmp_path, ["t" * 64], K) == [tmp_path / "valid"]
    assert splits_of_another_teacher(tmp_path, ["t" * 64], K + 1) == [tmp_path / "train", tmp_path / "valid"]
    assert splits_of_another_teacher(tmp_path / "none-yet", ["t" * 64], K) == []
    manifest = tmp_path / "train" / MANIFEST
    manifest.write_text(manifest.read_text().replace(f'"k": {K}', '"k": "eight"'))
    with pytest.raises(TopKCacheError, match=f"{manifest}: k = 'eight' is not a count"):
        TopKCache(tmp_path / "train")


def test_a_truncated_array_is_named(tmp_path):
    write_cache(tmp_path)
    probs = tmp_path / "probs.npy"
    probs.write_bytes(probs.read_bytes()[:-8])  # a copy cut short
    with pytest.raises(TopKCacheError, match=f"{probs}: unreadable"):  # numpy's message named no file
        TopKCache(tmp_path)


def test_a_damaged_split_is_named_and_replaced_with_overwrite(tmp_path, capsys):
    from data_prep.dump_topk import replace_other_teachers_splits

    write_cache(tmp_path / "train")
    write_cache(tmp_path / "valid")
    manifest = tmp_path / "valid" / MANIFEST
    manifest.write_text(manifest.read_text()[:40])  # cut short
    with pytest.raises(TopKCacheError) as refused:
        replace_other_teachers_splits(tmp_path, ["t" * 64], K, overwrite=False)
    assert str(refused.value).startswith(f"{manifest}: not a readable JSON record (")
    assert str(refused.value).endswith(f"; the split's manifest is damaged: pass --overwrite to replace "
                                       f"{tmp_path / 'valid'}, or choose another --out")
    assert manifest.exists()
    replace_other_teachers_splits(tmp_path, ["t" * 64], K, overwrite=True)
    assert not (tmp_path / "valid").exists() and (tmp_path / "train" / MANIFEST).exists()  # the good split is kept
    assert f"removing {tmp_path / 'valid'} (its {MANIFEST} is damaged)" in capsys.readouterr().out


def test_a_prepared_folder_instead_of_its_bin_is_named(tmp_path, capsys):
    from data_prep.dump_topk import main as dump_main

    prep = tmp_path / "prep"
    (prep / "bin").mkdir(parents=True)
    for lang in ("de", "en"):
        (prep / "bin" / f"dict.{lang}.txt").write_text("a 1\n")
    common = ["--teacher-path", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "cache")]
    assert dump_main([str(prep), *common]) == 2
    assert capsys.readouterr().err == (f"lskd-dump-topk: error: {prep} holds no fairseq dictionaries; give its "
                                       f"binarized data, {prep / 'bin'}\n")
    assert dump_main([str(prep / "bin"), "--source-lang", "fr", *common]) == 2
    assert capsys.readouterr().err == (f"lskd-dump-topk: error: --source-lang fr: {prep / 'bin' / 'dict.fr.txt'} does "
                                       f"not exist; {prep / 'bin'} has dictionaries for de, en\n")
    (prep / "bin").rename(tmp_path / "elsewhere")  # no bin/ to suggest
    assert dump_main([str(prep), *common]) == 2
    assert "give fairseq-binarized data (dict.LANG.txt" in capsys.readouterr().err
