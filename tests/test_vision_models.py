"""CIFAR-style ResNets and the ReActNet-style binary network, checked against direct computations."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lskd.vision.binary import BinaryConv2d, RPReLU, RSign, binary_sign
from lskd.vision.models import MODELS, build_model


@pytest.mark.parametrize("depth", [8, 14, 20, 32])
def test_resnet_has_depth_weighted_layers_and_exposes_its_penultimate_features(depth):
    torch.manual_seed(0)
    model = build_model(f"resnet{depth}", num_classes=10, in_channels=1, width=4).eval()
    convs3x3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3x3) + 1 == depth  # 6n + 1 convolutions plus the classifier (He et al. 2016)
    x = torch.randn(2, 1, 28, 28)
    features = model.features(x)
    assert features.shape == (2, 16)  # 4 x width
    torch.testing.assert_close(model(x), model.classifier(features))


def test_bad_depth_and_unknown_model_are_refused():
    with pytest.raises(ValueError, match="depth 6n \\+ 2"):
        MODELS["resnet20"].func(21, num_classes=10)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 10, 3)


def test_sign_is_plus_or_minus_one_and_its_gradient_passes_only_inside_the_ste_window():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = binary_sign(x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    upstream = torch.arange(1.0, 8.0)
    y.backward(upstream)
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 0]  # |x| <= 1 passes, |x| > 1 is cut


def test_rsign_thresholds_per_channel_and_learns_the_threshold():
    sign = RSign(2)
    with torch.no_grad():
        sign.threshold.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1, 1))
    x = torch.tensor([0.0, 0.6, 2.0, -2.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1).requires_grad_()
    y = sign(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    assert y[0, 0].flatten().tolist() == [-1, 1, 1, -1] and y[0, 1].flatten().tolist() == [1, 1, 1, -1]
    y.sum().backward()
    inside = ((x - sign.threshold).abs() <= 1).float()
    assert torch.equal(x.grad, inside)
    assert sign.threshold.grad.flatten().tolist() == (-inside.sum(dim=(0, 2, 3))).tolist()


def test_binary_conv_uses_sign_weights_scaled_by_their_mean_magnitude_with_a_clipped_ste():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(20)  # some weights beyond |w| = 1, where the STE is cut
    weights = conv.binary_weight()
    scale = conv.weight.abs().mean(dim=(1, 2, 3))
    for out_channel in range(4):
        values = set(weights[out_channel].unique().tolist())
        assert values <= {scale[out_channel].item(), -scale[out_channel].item()}
    x = torch.randn(2, 3, 5, 5)
    expected = F.conv2d(x, torch.sign(conv.weight.detach()) * scale.view(4, 1, 1, 1), padding=1)
    torch.testing.assert_close(conv(x), expected)
    conv(x).sum().backward()
    assert (conv.weight.grad[conv.weight.abs() > 1] == 0).all()
    assert (conv.weight.grad[conv.weight.abs() <= 1] != 0).any()


def test_rprelu_is_a_shifted_prelu():
    act = RPReLU(1)
    with torch.no_grad():
        act.shift_in.fill_(0.5)
        act.shift_out.fill_(-1.0)
    x = torch.tensor([-1.0, 0.0, 2.0]).view(1, 1, 1, 3)
    shifted = x - 0.5
    expected = torch.where(shifted > 0, shifted, 0.25 * shifted) - 1.0
    torch.testing.assert_close(act(x), expected)


def test_binary_network_convolves_only_plus_minus_one_activations_and_trains():
    torch.manual_seed(0)
    model = build_model("binary_resnet8", num_classes=10, in_channels=1, width=4)
    seen = []
    for module in model.modules():
        if isinstance(module, BinaryConv2d):
            module.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0]))
    logits = model(torch.randn(3, 1, 28, 28))
    assert len(seen) == 6  # two binary convolutions per block, three blocks
    for activations in seen:
        assert set(activations.unique().tolist()) <= {-1.0, 1.0}
    real = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert real[0] is model.stem[0] and real[-1] is model.classifier  # real-valued first and last layers
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
