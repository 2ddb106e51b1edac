"""The teacher and data the benchmarks measure by default: the quickstart's LS-0.1 teacher and its Bible data."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--data`` and ``--split``, defaulting to the quickstart's teacher on John."""
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs/quickstart/teacher_ls0.1/checkpoint_last.pt")
    parser.add_argument("--data", type=Path, default=REPO / "data/bible-de-en-4k")
    parser.add_argument("--split", default="test")


def parse_with_teacher(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse; stop with a message that says how to make the teacher when it is missing."""
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        sys.exit(f"{args.checkpoint} not found: run `bash recipes/quickstart.sh` or pass --checkpoint/--data")
    return args
