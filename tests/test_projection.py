"""Penultimate-layer projection: the plane's geometry and the picture's size."""
import struct

import pytest
import torch

from lskd.projection import plane_basis, project_onto_template_plane, save_projection_figure


def test_templates_land_on_their_own_plane_coordinates():
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(3, 16, generator=g, dtype=torch.float64)
    coords = project_onto_template_plane(templates, templates)
    assert torch.allclose(coords[0], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    # distances within the plane are the templates' own distances
    assert (coords[1] - coords[0]).norm().item() == pytest.approx((templates[1] - templates[0]).norm().item(), rel=1e-9)
    assert (coords[2] - coords[1]).norm().item() == pytest.approx((templates[2] - templates[1]).norm().item(), rel=1e-9)
    origin, basis = plane_basis(templates)
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_component_off_the_plane_is_ignored():
    templates = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]])
    points = torch.tensor([[0.5, 0.25, 7.0], [0.5, 0.25, -3.0]])
    coords = project_onto_template_plane(points, templates)
    assert torch.allclose(coords, torch.tensor([[0.5, 0.25], [0.5, 0.25]], dtype=torch.float64))


def test_collinear_templates_are_refused():
    with pytest.raises(ValueError, match="collinear"):
        plane_basis(torch.tensor([[0.0, 0], [1.0, 1], [2.0, 2]]))
    for twice in ([[1.0, 2], [1.0, 2], [0.0, 5]], [[1.0, 2], [0.0, 5], [1.0, 2]], [[0.0, 5], [1.0, 2], [1.0, 2]]):
        with pytest.raises(ValueError, match="two of the three templates are the same"):  # NaN coordinates before
            plane_basis(torch.tensor(twice))


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_figure_has_one_panel_per_model_at_the_requested_size(tmp_path):
    g = torch.Generator().manual_seed(1)
    panels = [(f"model {i}", torch.randn(60, 2, generator=g), torch.arange(60) % 3) for i in range(2)]
    path = save_projection_figure(panels, ["shirt", "T-shirt/top", "sneaker"], tmp_path / "p.png",
                                  size_inches=(4.0, 3.0), dpi=50)
    assert png_size(path) == (2 * 4 * 50, 3 * 50)
