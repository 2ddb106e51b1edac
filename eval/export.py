"""``lskd-export``: a fairseq checkpoint as a deployable CTranslate2 model.

Writes OUT/ with the CTranslate2 model (``model.bin``, vocabulary, ``config.json``), the data's
SentencePiece model (``sentencepiece.model``) and ``export.json`` (checkpoint sha256, data
fingerprint, quantization, parameters, bytes on disk, versions). Translate with it through
``lskd-eval bleu --engine ctranslate2 --ctranslate2-model OUT`` or ``lskd-distill-corpus``, or
directly with ``ctranslate2.Translator(OUT)`` on SentencePiece pieces.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lskd.decoding import QUANTIZATIONS
from lskd.errors import console_script, output_directory
from lskd.output_files import check_writable
from lskd.prepared import load_prepared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lskd-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="fairseq checkpoint (.pt); one model")
    parser.add_argument("--data", required=True, type=Path,
                        help="directory made by lskd-prepare: its dictionaries and SentencePiece model")
    parser.add_argument("--out", required=True, type=output_directory, help="directory for the CTranslate2 model")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                        help="weight type (default float32; int8: ~4x smaller and faster on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace another export in --out")
    return parser


@console_script("lskd-export")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = load_prepared(args.data)  # bad input is reported before fairseq is imported (seconds)
    check_writable(args.out.parent)  # where the export is staged, then renamed into --out
    from fairseq_plugins.ctranslate2_export import export_checkpoint

    model = export_checkpoint(args.checkpoint, data, args.out, args.quantization, args.overwrite)
    print(f"[lskd-export] {model.root}: {model.quantization}, {model.parameters:,} parameters, "
          f"{model.size_bytes / 1e6:.1f} MB on disk (checkpoint {args.checkpoint.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
