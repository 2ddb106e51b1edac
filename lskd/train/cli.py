"""``lskd-train CONFIG.yaml [--set key=value ...]``: train a teacher or distil a student.

    lskd-train configs/fmnist_teacher.yaml --set loss.label_smoothing=0.1 --out-dir runs/t_ls0.1
    lskd-train configs/fmnist_student.yaml --set kd.teacher=runs/t_ls0.1/checkpoint_last.pt kd.temperature=2
    torchrun --nproc_per_node 2 -m lskd.train.cli configs/fmnist_teacher.yaml --out-dir runs/t_ddp

Running it again on the same out_dir resumes from ``checkpoint_last.pt`` (a finished run only
rewrites its records); a checkpoint of another experiment there is refused.
"""
from __future__ import annotations

import argparse
import json
import sys

from lskd.errors import console_script, count_at_least
from lskd.output_files import check_writable
from lskd.train.config import dump_yaml, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lskd-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML experiment file (see configs/)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override config keys, e.g. kd.temperature=2 schedule.epochs=5 (values read as YAML)")
    parser.add_argument("--out-dir", help="run directory (checkpoints, metrics.json, tensorboard/); same as out_dir=")
    parser.add_argument("--data-dir", help="your own copy of the data; same as data.data_dir=")
    parser.add_argument("--stop-after-epochs", type=count_at_least(1), metavar="N",
                        help="stop after N more epochs (a resumable slice of the run, e.g. for time-limited jobs)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


@console_script("lskd-train")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = [f"{key}={json.dumps(value)}" for key, value in (("out_dir", args.out_dir), ("data.data_dir", args.data_dir))
                 if value]  # quoted: a path is always a string, even "123" or "null"
        config = load_config(args.config, args.overrides + paths)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        check_writable(config.out_dir)  # before the data is read and the first epoch trained
        from lskd.train.distributed import init_distributed
        from lskd.train.trainer import Trainer

        env, device = init_distributed(config.device)
        Trainer(config, env, device).fit(args.stop_after_epochs)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
