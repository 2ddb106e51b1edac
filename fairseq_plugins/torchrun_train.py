"""``torchrun ... -m fairseq_plugins.torchrun_train DATA [fairseq-train flags]``: fairseq-train under torchrun.

fairseq 0.12 reads torchrun's environment only for GPUs (it takes the rank modulo the CUDA device
count, which is 0 on a CPU machine). This passes the same environment explicitly, so one command
works with gloo on CPU and NCCL on GPU; everything else is fairseq's own distributed training.
"""
from __future__ import annotations

import os
import sys


def torchrun_flags(environ: dict[str, str]) -> list[str]:
    """fairseq's distributed flags for the process torchrun started (RANK, WORLD_SIZE, LOCAL_RANK)."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if missing:
        raise SystemExit(f"run me under torchrun (missing environment: {', '.join(missing)})")
    return ["--distributed-init-method", "env://", "--distributed-no-spawn",
            "--distributed-world-size", environ["WORLD_SIZE"], "--distributed-rank", environ["RANK"],
            "--device-id", environ["LOCAL_RANK"]]


def main() -> None:
    from fairseq_cli.train import cli_main

    sys.argv = [sys.argv[0], *sys.argv[1:], *torchrun_flags(dict(os.environ))]
    cli_main()


if __name__ == "__main__":
    main()
