"""Penultimate-layer pictures (Müller et al. 2019; Shen et al. Figure 1).

For three classes, the activations x that feed the output layer (logit_v = w_v . x) are projected
onto the plane through the three class templates w_a, w_b, w_c. Label smoothing pulls each class
into a tight cluster at equal distance from the others' templates; without it, clusters are
wider and keep the similarity of related classes. Shared by the NMT and the vision side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from lskd.errors import InvalidValueError


def plane_basis(templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin and orthonormal (2, d) basis of the plane through three templates (3, d)."""
    if templates.shape[0] != 3:
        raise InvalidValueError(f"need exactly three class templates, got {templates.shape[0]}")
    origin = templates[0].double()
    first = templates[1].double() - origin
    second = templates[2].double() - origin
    if first.norm() == 0 or second.norm() == 0 or (second - first).norm() == 0:
        raise InvalidValueError("two of the three templates are the same (one class named twice?): they do not span a plane")
    u1 = first / first.norm()
    v = second - (second @ u1) * u1
    if v.norm() < 1e-12 * second.norm().clamp_min(1e-30):
        raise InvalidValueError("the three templates are collinear: they do not span a plane")
    return origin, torch.stack([u1, v / v.norm()])


def project_onto_template_plane(features: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """(N, d) activations -> (N, 2) coordinates in the plane through the three templates."""
    origin, basis = plane_basis(templates)
    return (features.double() - origin) @ basis.T


def figure_path(text: str) -> Path:
    """An argparse ``type`` for a picture to write: its suffix must be a format matplotlib saves
    (png, pdf, svg, ...), checked before any work (matplotlib would refuse it only at the end)."""
    import argparse

    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(text).suffix.lstrip(".").lower() not in formats:
        raise argparse.ArgumentTypeError(f"{text}: give a picture file ending in .{', .'.join(sorted(formats))}")
    return Path(text)


def save_projection_figure(
    panels: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    class_names: Sequence[str],
    path: str | Path,
    size_inches: tuple[float, float] = (5.0, 4.5),
    dpi: int = 100,
) -> Path:
    """One scatter panel per model, side by side: (title, (N, 2) coordinates, (N,) class 0..2)."""
    from matplotlib.figure import Figure  # not pyplot: no process-wide backend or figure registry

    width, height = size_inches
    figure = Figure(figsize=(width * len(panels), height), dpi=dpi)
    axes = figure.subplots(1, len(panels), squeeze=False)
    colours = ("tab:blue", "tab:orange", "tab:green")
    for axis, (title, points, labels) in zip(axes[0], panels):
        for cls, (name, colour) in enumerate(zip(class_names, colours)):
            chosen = points[labels == cls]
            axis.scatter(chosen[:, 0], chosen[:, 1], s=6, alpha=0.5, color=colour, label=f"{name} ({len(chosen)})")
        axis.set_title(title)
        axis.legend(loc="best", fontsize=8, markerscale=2)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
