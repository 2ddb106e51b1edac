"""Vision data without torchvision: IDX files, Fashion-MNIST, the long-tailed split, image folders, augmentation."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lskd.train.config import load_config
from lskd.vision.data import (FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, DataNotFoundError, augment_batch, build_data,
                              load_fashion_mnist, long_tail_counts, long_tail_indices, normalize, read_idx)

needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed: {FASHION_MNIST_INSTALL}")


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool) -> Path:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_against_hand_packed_files(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = write_idx(tmp_path / "images.idx", images, 0x08, compress)
    assert torch.equal(read_idx(path), torch.from_numpy(images))
    assert torch.equal(read_idx(path, limit=2), torch.from_numpy(images[:2]))
    ints = np.array([[-70000, 3], [5, 2**30]], dtype=np.int32)  # big-endian on disk
    assert read_idx(write_idx(tmp_path / "ints.idx", ints, 0x0C, compress)).tolist() == ints.tolist()


def test_idx_reader_refuses_other_files_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    path = write_idx(tmp_path / "cut.idx", np.zeros((4, 2), dtype=np.uint8), 0x08, False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated: 5 of 8"):
        read_idx(path)


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist(tmp_path, "train")
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "--data-dir" in str(err.value)


@needs_fashion_mnist
def test_fashion_mnist_is_the_real_balanced_dataset():
    test = load_fashion_mnist(None, "test")
    assert test.dataset.images.shape == (10000, 1, 28, 28) and test.dataset.images.dtype == torch.uint8
    assert test.class_counts() == [1000] * 10
    train = load_fashion_mnist(None, "train", limit=100)
    assert len(train.labels) == 100 and train.classes[0] == "T-shirt/top" and train.classes[7] == "Sneaker"


@pytest.mark.parametrize("ratio", [10, 100, 7.5])
def test_long_tail_counts_follow_the_exponential_profile(ratio):
    expected = [int(6000 * ratio ** (-i / 9)) for i in range(10)]
    assert long_tail_counts(6000, 10, ratio) == expected
    assert expected[0] == 6000 and expected[-1] == int(6000 / ratio)


@needs_fashion_mnist
def test_long_tailed_fashion_mnist_split_has_the_profile_counts_of_real_examples():
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").long()
    config = load_config(None, ["data.imbalance_ratio=100", "data.test_limit=10"])
    data = build_data(config.data)
    assert data.train.class_counts() == [int(6000 * 100 ** (-i / 9)) for i in range(10)]  # 6000 ... 60
    assert data.description["train_class_counts"] == data.train.class_counts()
    chosen = long_tail_indices(labels, 10, 100, seed=0)
    assert len(set(chosen.tolist())) == len(chosen) == sum(data.train.class_counts())
    assert torch.equal(data.train.labels, labels[chosen])  # the split's labels are those of the chosen examples
    other = long_tail_indices(labels, 10, 100, seed=1)
    assert not torch.equal(other, chosen)  # another split seed keeps other examples, same counts
    assert torch.bincount(labels[other]).tolist() == data.train.class_counts()


def test_bad_imbalance_ratios_are_refused():
    with pytest.raises(ValueError, match="finite number >= 1"):
        long_tail_counts(100, 10, 0.5)
    with pytest.raises(ValueError, match="finite number >= 1"):
        long_tail_counts(100, 10, float("inf"))
    with pytest.raises(ValueError, match="leaves the tail class no example"):
        long_tail_counts(50, 10, 100)


def test_image_folder_reads_resizes_and_numbers_classes_like_the_training_split(tmp_path):
    from PIL import Image

    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, count in (("train", 3), ("val", 1)):
        for name, colour in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (20 + i, 13), colour).save(tmp_path / split / name / f"{i}.png")
    config = load_config(None, ["data.name=image_folder", f"data.data_dir={tmp_path}", "data.test_split=val",
                                "data.image_size=8"])
    data = build_data(config.data)
    assert data.classes == ("cat", "dog") and data.in_channels == 3
    assert data.train.class_counts() == [3, 3] and data.test.labels.tolist() == [0, 1]
    image, label = data.test.dataset[1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and int(label) == 1
    assert image[:, 0, 0].tolist() == [0, 0, 255]  # a solid blue image stays solid blue after resizing
    (tmp_path / "val" / "bird").mkdir()
    with pytest.raises(ValueError, match="classes the training split lacks: bird"):
        build_data(config.data)


def test_an_unreadable_image_and_an_empty_class_folder_are_named(tmp_path):
    """Before: Pillow's UnidentifiedImageError traceback; an empty folder silently became a class with no images."""
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "0.png")
    (tmp_path / "train" / "cat" / "1.jpg").write_text("<html>not an image</html>")
    config = load_config(None, ["data.name=image_folder", f"data.data_dir={tmp_path}", "data.test_split=train"])
    dataset = build_data(config.data).train.dataset
    bad = dataset.files.index(tmp_path / "train" / "cat" / "1.jpg")
    with pytest.raises(ValueError, match=rf"{tmp_path}/train/cat/1.jpg: not a readable image \(.*\); remove or replace it"):
        dataset[bad]
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(DataNotFoundError, match=rf"{tmp_path}/train/bird: a class folder without images"):
        build_data(config.data)


def test_missing_image_folder_split_is_named(tmp_path):
    config = load_config(None, ["data.name=image_folder", f"data.data_dir={tmp_path}"])
    with pytest.raises(DataNotFoundError, match="image folder split not found"):
        build_data(config.data)


def test_augmentation_crops_a_window_of_the_padded_image_and_may_flip_it():
    images = torch.randint(0, 256, (16, 2, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    same = augment_batch(images, 0, False, torch.Generator().manual_seed(1))
    assert torch.equal(same, images)
    out = augment_batch(images, 2, True, torch.Generator().manual_seed(1))
    again = augment_batch(images, 2, True, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(len(images)):  # every output is some window of the padded image, possibly mirrored
        windows = [padded[n, :, dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(-1)) for w in windows)
    assert not torch.equal(out, images)


def test_normalize_scales_then_standardises_per_channel():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    expected = torch.tensor([[[[(0 - 0.5) / 0.25, (1 - 0.5) / 0.25]], [[(0.2 - 0.1) / 2, (0.4 - 0.1) / 2]]]])
    torch.testing.assert_close(normalize(images, (0.5, 0.1), (0.25, 2.0)), expected)
