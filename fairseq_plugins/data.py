"""Identity of a fairseq-binarized split: what a top-k cache or a distilled corpus was made from."""
from __future__ import annotations

import hashlib
from pathlib import Path

from lskd.provenance import sha256_file


def split_files(data_dir: str | Path, split: str, src: str, tgt: str) -> list[Path]:
    """The .bin/.idx files of a split for both languages (either pair direction in the names)."""
    data_dir = Path(str(data_dir).split(":")[0])
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        files = [data_dir / f"{split}.{pair}.{lang}.{ext}" for lang in (src, tgt) for ext in ("bin", "idx")]
        if all(f.is_file() for f in files):
            return files
    raise FileNotFoundError(f"no binarized '{split}' split for {src}-{tgt} in {data_dir}")


def dataset_sha256(task, split: str) -> str:
    """sha256 over the split's source and target files of a translation task."""
    files = split_files(task.cfg.data, split, task.cfg.source_lang, task.cfg.target_lang)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()
