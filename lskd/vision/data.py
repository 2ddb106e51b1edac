"""Image data without torchvision: Fashion-MNIST (IDX files), long-tailed splits, image folders.

Batches leave the loader as uint8 tensors (N, C, H, W); :func:`augment_batch` and
:func:`normalize` turn them into training inputs in torch, batch-wise, so augmentation costs a
few tensor operations per batch rather than Python work per image.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from lskd.errors import InvalidValueError, LSKDError
from lskd.provenance import sha256_file

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get update && sudo apt-get install dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Pixel mean and standard deviation of the 60,000 training images (scaled to [0, 1]).
FASHION_MNIST_MEAN_STD = ((0.2860,), (0.3530,))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataNotFoundError(LSKDError, FileNotFoundError):
    """Data missing on disk; the message says how to get it."""


def read_idx(path: str | Path, limit: int | None = None) -> torch.Tensor:
    """An IDX file (optionally gzipped) as a tensor; ``limit`` reads only the first items (fast for slices)."""
    path = Path(path)
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"  # gzip's magic, whatever the file is called
    with (gzip.open if compressed else open)(path, "rb") as handle:
        magic = handle.read(4)
        if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
            raise InvalidValueError(f"{path} is not an IDX file (magic bytes {magic.hex()})")
        dtype, ndim = np.dtype(_IDX_DTYPES[magic[2]]), magic[3]
        shape = list(np.frombuffer(handle.read(4 * ndim), dtype=">u4").astype(np.int64))
        if limit is not None:
            shape[0] = min(shape[0], limit)
        expected = int(np.prod(shape)) * dtype.itemsize
        payload = handle.read(expected)
    if len(payload) != expected:
        raise InvalidValueError(f"{path} is truncated: {len(payload)} of {expected} data bytes")
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


@dataclass
class ImageSet:
    """A split as a dataset: ``labels`` (N,) int64, class names, and a way to take a subset."""

    dataset: "TensorImages | ImageFolder"
    classes: tuple[str, ...]

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.labels

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.dataset.subset(indices), self.classes)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor; a batch is one indexing operation (``__getitems__``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise InvalidValueError(f"need uint8 images (N, C, H, W) and N labels, got {tuple(images.shape)} {images.dtype}, {len(labels)}")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[indices], self.labels[indices])

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch  # __getitems__ already made the batch


class ImageFolder(Dataset):
    """``ROOT/<class>/<image>`` read with Pillow, converted to RGB and resized to ``size`` x ``size``."""

    def __init__(self, files: list[Path], labels: torch.Tensor, size: int):
        self.files, self.labels, self.size = files, labels.long(), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[index]) as image:
                image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
                pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as error:  # Pillow's traceback would not say what to do
            raise InvalidValueError(f"{self.files[index]}: not a readable image ({error}); remove or replace it") from error
        return pixels.permute(2, 0, 1).contiguous(), self.labels[index]

    def subset(self, indices: torch.Tensor) -> "ImageFolder":
        return ImageFolder([self.files[i] for i in indices.tolist()], self.labels[indices], self.size)

    collate = staticmethod(default_collate)


def fashion_mnist_file(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataNotFoundError(
        f"Fashion-MNIST not found: no {stem}[.gz] in {data_dir}. Install the Debian package with\n"
        f"    {FASHION_MNIST_INSTALL}\n"
        f"(it puts the IDX files in {FASHION_MNIST_DIR}), or pass --data-dir DIR with your own copy of "
        f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or not)")


def fashion_mnist_files(data_dir: str | Path | None) -> dict[str, Path]:
    data_dir = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    stems = {f"{split}_{kind}": f"{prefix}-{kind}-{idx}-ubyte" for split, prefix in (("train", "train"), ("test", "t10k"))
             for kind, idx in (("images", "idx3"), ("labels", "idx1"))}
    return {key: fashion_mnist_file(data_dir, stem) for key, stem in stems.items()}


def load_fashion_mnist(data_dir: str | Path | None, split: str, limit: int | None = None) -> ImageSet:
    """The ``train`` (60,000) or ``test`` (10,000) split; ``limit``: its first N examples."""
    files = fashion_mnist_files(data_dir)
    images = read_idx(files[f"{split}_images"], limit)
    labels = read_idx(files[f"{split}_labels"], limit)
    if images.dim() != 3 or len(images) != len(labels):
        raise InvalidValueError(f"Fashion-MNIST {split}: {tuple(images.shape)} images for {len(labels)} labels")
    return ImageSet(TensorImages(images.unsqueeze(1), labels), FASHION_MNIST_CLASSES)


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """CIFAR-LT's exponential profile: class i keeps ``int(n_max * ratio ** (-i / (C - 1)))`` examples.

    Class 0 is the head (n_max), class C - 1 the tail (n_max / ratio), as in Cao et al. (2019).
    """
    if not ratio >= 1 or not np.isfinite(ratio):
        raise InvalidValueError(f"imbalance ratio must be a finite number >= 1 (n_max / n_min), got {ratio}")
    if num_classes < 2:
        return [n_max] * num_classes
    counts = [int(n_max * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)]
    if counts[-1] < 1:
        raise InvalidValueError(f"imbalance ratio {ratio} leaves the tail class no example (n_max = {n_max})")
    return counts


def long_tail_indices(labels: torch.Tensor, num_classes: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """Indices of a long-tailed subset: per class, a seeded random choice of its profile count.

    ``n_max`` is the smallest class size, so every class can supply its count. The result is
    sorted, so the subset keeps the original order.
    """
    sizes = torch.bincount(labels, minlength=num_classes)
    counts = long_tail_counts(int(sizes.min()), num_classes, ratio)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    chosen = [order[labels[order] == cls][:count] for cls, count in enumerate(counts)]
    return torch.cat(chosen).sort().values


def image_folder_split(root: str | Path, split: str, size: int, classes: Sequence[str] | None = None) -> ImageSet:
    """``ROOT/SPLIT/<class>/<image>``; ``classes`` (the training split's) fixes the label numbering."""
    directory = Path(root) / split
    if not directory.is_dir():
        raise DataNotFoundError(f"image folder split not found: {directory} (expected {directory}/<class>/<image>)")
    found = sorted(p.name for p in directory.iterdir() if p.is_dir())
    training = classes is None  # the training split defines the classes
    classes = tuple(classes) if classes is not None else tuple(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise InvalidValueError(f"{directory} has classes the training split lacks: {', '.join(unknown[:5])}")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = directory / name
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
        if not images and training:
            raise DataNotFoundError(f"{folder}: a class folder without images ({', '.join(IMAGE_EXTENSIONS)}); "
                                    f"a class needs training images, or remove the folder")
        files += images
        labels += [label] * len(images)
    if not files:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {directory}/<class>/")
    return ImageSet(ImageFolder(files, torch.tensor(labels), size), classes)


def seeded_slice(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A fixed random subset of ``limit`` examples (an image folder is sorted by class, so not its head)."""
    if limit is None or limit >= len(images.labels):
        return images
    order = torch.randperm(len(images.labels), generator=torch.Generator().manual_seed(seed))
    return images.subset(order[:limit].sort().values)


@dataclass
class VisionData:
    """Both splits, the normalisation and a description of the data for every result record."""

    train: ImageSet
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def in_channels(self) -> int:
        return len(self.mean)


def build_data(config: Any) -> VisionData:
    """The train and test splits a :class:`lskd.train.config.DataConfig` describes."""
    if config.name == "fashion_mnist":
        train = load_fashion_mnist(config.data_dir, "train", config.train_limit)
        test = load_fashion_mnist(config.data_dir, "test", config.test_limit)
        mean, std = FASHION_MNIST_MEAN_STD
        fingerprint = files_fingerprint(fashion_mnist_files(config.data_dir).values(), content=True)
    else:
        train = seeded_slice(image_folder_split(config.data_dir, config.train_split, config.image_size), config.train_limit, config.split_seed)
        test = seeded_slice(image_folder_split(config.data_dir, config.test_split, config.image_size, train.classes),
                            config.test_limit, config.split_seed)
        mean, std = IMAGENET_MEAN_STD
        fingerprint = files_fingerprint(train.dataset.files + test.dataset.files, content=False)
    if config.imbalance_ratio > 1:
        train = train.subset(long_tail_indices(train.labels, len(train.classes), config.imbalance_ratio, config.split_seed))
    description = {
        "name": config.name, "dir": str(Path(config.data_dir or FASHION_MNIST_DIR).resolve()), "fingerprint": fingerprint,
        "imbalance_ratio": config.imbalance_ratio, "split_seed": config.split_seed,
        "train_limit": config.train_limit, "test_limit": config.test_limit,
        "train_examples": len(train.labels), "test_examples": len(test.labels),
        "train_class_counts": train.class_counts(), "classes": list(train.classes),
    }
    return VisionData(train, test, mean, std, description)


def files_fingerprint(paths: Sequence[Path] | Any, content: bool) -> str:
    """sha256 over the files' names and contents (or, for large trees, names and sizes)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(Path(path).name if content else str(path)))
        if content:
            digest.update(bytes.fromhex(sha256_file(path)))
        else:
            digest.update(str(Path(path).stat().st_size).encode())
    return digest.hexdigest()


def augment_batch(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image, in a few batch operations.

    Works on any dtype (uint8 included); ``generator`` (CPU) makes it reproducible.
    """
    n, _, height, width = images.shape
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1], then standardised per channel."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - mean_t).div_(std_t)
