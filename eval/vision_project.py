"""``lskd-vision-project``: the penultimate-layer picture of three classes for lskd-train checkpoints.

Müller et al. (2019) / Shen et al. (2021, Fig. 1): test images of three classes, their
penultimate activations projected onto the plane through the three classes' templates (rows of
the classifier), one panel per checkpoint (e.g. the teachers with and without label smoothing).

    lskd-vision-project --checkpoints runs/t_ls0.1/checkpoint_last.pt runs/t_ls0/checkpoint_last.pt \
        --classes Shirt T-shirt/top Sneaker --out runs/penultimate.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Subset

from lskd.errors import LSKDError, console_script, count_at_least
from lskd.output_files import check_writable
from lskd.projection import figure_path, project_onto_template_plane, save_projection_figure
from lskd.train.config import TrainConfig, from_dict
from lskd.vision.data import build_data, normalize


def class_ids(requested: Sequence[str], classes: Sequence[str]) -> list[int]:
    """Indices of the named classes (case-insensitive); an unknown name is reported with the known ones."""
    lookup = {name.lower(): index for index, name in enumerate(classes)}
    missing = [name for name in requested if name.lower() not in lookup]
    if missing:
        raise LSKDError(f"unknown class {', '.join(map(repr, missing))}; the classes are: {', '.join(classes)}")
    return [lookup[name.lower()] for name in requested]


@torch.no_grad()
def penultimate_points(checkpoint: str | Path, classes: Sequence[str], data_dir: str | None = None,
                       limit: int | None = None, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, dict, list[str]]:
    """(N, 2) projected activations of the test images of ``classes``, their class (0..2), the checkpoint's
    state and the classes' names as the data spells them."""
    from lskd.train.trainer import load_trained_model

    model, state = load_trained_model(checkpoint)
    config = from_dict(TrainConfig, state["config"])
    if data_dir:
        config.data.data_dir = data_dir
    config.data.test_limit = limit
    config.data.train_limit, config.data.imbalance_ratio = 1, 1.0  # only the test split is used: load little else
    data = build_data(config.data)
    ids = class_ids(classes, data.classes)
    labels = data.test.labels
    chosen = torch.nonzero(torch.isin(labels, torch.tensor(ids))).squeeze(1)
    dataset = data.test.dataset
    loader = DataLoader(Subset(dataset, chosen.tolist()), batch_size=batch_size, collate_fn=dataset.collate)
    features = [model.features(normalize(images, data.mean, data.std)) for images, _ in loader]
    points = project_onto_template_plane(torch.cat(features), model.classifier.weight[ids])
    which = torch.tensor([ids.index(int(label)) for label in labels[chosen]])
    return points, which, state, [data.classes[i] for i in ids]


def projection_figure(checkpoints: Sequence[str | Path], classes: Sequence[str], out: str | Path,
                      data_dir: str | None = None, limit: int | None = None) -> Path:
    """One panel per checkpoint, titled with its model and label smoothing (and its teacher's, for a student)."""
    panels, names = [], list(classes)
    for checkpoint in checkpoints:
        points, which, state, names = penultimate_points(checkpoint, classes, data_dir, limit)
        config = state["config"]
        title = f"{config['model']['name']}, LS {config['loss']['label_smoothing']:g}"
        if config["kd"]["alpha"] > 0:
            title += f", KD T={config['kd']['temperature']:g}"
        panels.append((title, points, which))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_projection_figure(panels, names, out)


@console_script("lskd-vision-project")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lskd-vision-project", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="lskd-train checkpoints, one panel each")
    parser.add_argument("--classes", nargs=3, required=True, metavar="NAME", help="three class names")
    parser.add_argument("--out", required=True, type=figure_path, help="picture file (.png, .pdf, .svg, ...)")
    parser.add_argument("--data-dir", help="the data, if not where the checkpoints were trained on")
    parser.add_argument("--limit", type=count_at_least(1), help="use only the first N test images")
    args = parser.parse_args(argv)
    check_writable(args.out.parent)  # before the activations of every checkpoint are computed
    print(projection_figure(args.checkpoints, args.classes, args.out, args.data_dir, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
