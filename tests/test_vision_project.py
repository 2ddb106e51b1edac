"""lskd-vision-project: the three-class penultimate-layer picture of lskd-train checkpoints."""
import pytest
import torch

from lskd.projection import plane_basis
from lskd.train.config import load_config
from lskd.train.trainer import Trainer
from lskd.vision.data import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, normalize, read_idx
from eval.vision_project import main as project_main
from eval.vision_project import penultimate_points

pytestmark = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason=f"Fashion-MNIST is not installed: {FASHION_MNIST_INSTALL}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    Trainer(load_config(None, ["model.name=resnet8", "model.width=4", "data.train_limit=128", "data.test_limit=32",
                               "schedule.epochs=1", "loss.label_smoothing=0.1", f"out_dir={out}", "progress=false"])).fit()
    return out / "checkpoint_last.pt"


def test_points_are_the_three_classes_activations_in_the_template_plane(checkpoint):
    points, which, state, names = penultimate_points(checkpoint, ["shirt", "T-SHIRT/TOP", "Sneaker"], limit=300)
    assert names == ["Shirt", "T-shirt/top", "Sneaker"]  # as the data spells them, whatever the case asked
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 300).long()
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", 300).unsqueeze(1)
    keep = (labels == 6) | (labels == 0) | (labels == 7)
    assert len(points) == int(keep.sum())
    assert which.tolist() == [[6, 0, 7].index(int(c)) for c in labels[keep]]
    from lskd.train.trainer import load_trained_model

    model, _ = load_trained_model(checkpoint)
    with torch.no_grad():
        features = model.features(normalize(images[keep], (0.2860,), (0.3530,))).double()
    origin, basis = plane_basis(model.classifier.weight[[6, 0, 7]].detach())
    torch.testing.assert_close(points, (features - origin) @ basis.T)


def test_cli_draws_one_panel_per_checkpoint_and_names_unknown_classes(checkpoint, tmp_path, capsys):
    out = tmp_path / "picture.png"
    assert project_main(["--checkpoints", str(checkpoint), str(checkpoint), "--classes", "Shirt", "T-shirt/top",
                         "Sneaker", "--out", str(out), "--limit", "200"]) == 0
    assert out.stat().st_size > 1000
    assert project_main(["--checkpoints", str(checkpoint), "--classes", "Shirt", "Tshirt", "Sneaker",
                         "--out", str(out)]) == 2
    assert "unknown class 'Tshirt'; the classes are: T-shirt/top" in capsys.readouterr().err
