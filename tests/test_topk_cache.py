"""The offline teacher cache on its own: write in any order, read by id, refuse what does not belong."""
import errno
import json
import os

import numpy as np
import pytest
import torch

from lskd.errors import LSKDError
from lskd.provenance import sha256_file
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


def test_a_truncated_or_zeroed_array_under_a_valid_manifest_is_refused_naming_it(tmp_path):
    """A second writer truncated the arrays of a finished cache (all-zero rows, same manifest): the student
    trained on it got NaN gradients at its first update."""
    write_cache(tmp_path)
    probs, indices = tmp_path / "probs.npy", tmp_path / "indices.npy"
    good = probs.read_bytes()
    probs.write_bytes(good[:128] + bytes(len(good) - 128))  # every row zero, the size unchanged
    with pytest.raises(TopKCacheError, match=rf"{tmp_path}: 1 file\(s\) do not match {MANIFEST}: probs.npy \(sha256 "
                                             rf"differs from the manifest's\); rebuild the cache with lskd-dump-topk"):
        TopKCache(tmp_path)
    probs.write_bytes(good)
    indices.write_bytes(indices.read_bytes()[:-8])  # a copy cut short
    with pytest.raises(TopKCacheError, match=rf"indices.npy \({128 + 4 * K * sum(LENGTHS) - 8} bytes, the manifest "
                                             rf"says {128 + 4 * K * sum(LENGTHS)}\)"):
        TopKCache(tmp_path)


def test_a_cache_that_certifies_no_files_is_refused_with_the_fix(tmp_path):
    """Caches written before manifests certified their arrays may be the truncated ones: not read."""
    write_cache(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["files"]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TopKCacheError, match=rf"{tmp_path / MANIFEST} certifies no arrays \(.*\): they cannot be checked; "
                                             rf"rebuild the cache with lskd-dump-topk --overwrite"):
        TopKCache(tmp_path)


def test_a_cache_being_replaced_stays_whole_until_the_new_one_is_complete(tmp_path):
    """The writer truncated a finished cache in place (open_memmap w+) before its own entries existed."""
    write_cache(tmp_path / "train")
    writer = TopKCacheWriter(tmp_path / "train", K, LENGTHS, {"data_sha256": "e" * 64, "teacher_sha256": ["t" * 64]})
    writer.write(0, *[2 * x for x in entry(0, LENGTHS[0])])
    old = TopKCache(tmp_path / "train")  # still the first cache, whole
    assert old.manifest["data_sha256"] == "d" * 64 and torch.equal(old.lookup([3], [1], 1)[0][0], entry(3, 1)[0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [f".train.partial-{os.getpid()}"]
    for sid in (1, 2, 3):
        writer.write(sid, *entry(sid, LENGTHS[sid]))
    manifest = writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # renamed into place, the old one removed
    new = TopKCache(tmp_path / "train")
    assert new.manifest == manifest and torch.equal(new.lookup([0], [2], 2)[0][0], 2 * entry(0, 2)[0])
    assert manifest["files"]["probs.npy"]["sha256"] == sha256_file(tmp_path / "train" / "probs.npy")


def test_a_full_disk_is_named_before_an_entry_is_written(tmp_path, monkeypatch):
    """The arrays were sparse: a page the disk could not hold was SIGBUS ("Bus error", exit 135) mid-pass."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(LSKDError, match=rf"{tmp_path}/\.train\.partial-\d+/indices.npy: not enough disk space for "
                                        rf"{128 + 4 * K * sum(LENGTHS)} bytes \(No space left on device\)"):
        TopKCacheWriter(tmp_path / "train", K, LENGTHS, {})


INPUTS = {"data_sha256": "d" * 64, "teacher_sha256": ["t" * 64], "k": K,
          "too_long": {"max_source_positions": 1024, "max_target_positions": 1024, "policy": "skip"}}


def test_a_split_is_kept_only_if_made_from_the_same_inputs(tmp_path, capsys):
    """A rerun recomputed every split, whatever was there; and only another teacher or k was noticed."""
    from data_prep.dump_topk import splits_to_compute

    write_cache(tmp_path / "valid", manifest=INPUTS)
    asked = {"valid": INPUTS, "test": dict(INPUTS, data_sha256="f" * 64)}
    assert splits_to_compute(tmp_path, asked, overwrite=False) == ["test"]  # valid: same inputs, kept
    assert splits_to_compute(tmp_path, asked, overwrite=True) == ["valid", "test"]  # afresh
    other = {"valid": dict(INPUTS, data_sha256="e" * 64,
                           too_long=dict(INPUTS["too_long"], max_source_positions=40))}
    with pytest.raises(TopKCacheError) as refused:
        splits_to_compute(tmp_path, other, overwrite=False)
    assert str(refused.value) == (
        f"{tmp_path / 'valid'} was made from other inputs: data sha256 (dddddddddddd -> eeeeeeeeeeee), too-long limits "
        f"(max_source_positions 1024, max_target_positions 1024, policy skip -> max_source_positions 40, "
        f"max_target_positions 1024, policy skip); pass --overwrite to recompute it, or choose another --out")
    probs = tmp_path / "valid" / "probs.npy"
    probs.write_bytes(probs.read_bytes()[:-2] + b"\0\0")  # the last entry zeroed, same inputs
    with pytest.raises(TopKCacheError, match=r"valid: 1 file\(s\) do not match manifest.json: probs.npy \(sha256"):
        splits_to_compute(tmp_path, asked, overwrite=False)


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
