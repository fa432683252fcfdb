"""U-Net and feature CNN: shapes, size checks, skip connections, zero head, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_difftt.core.nets import ConvBlock, FeatureCNN, UNet, convolution, pointwise


@pytest.mark.parametrize(("ndim", "shape"), [(2, (32, 48)), (3, (16, 32, 16))])
def test_unet_keeps_the_spatial_shape(ndim, shape):
    net = UNet(ndim, in_channels=3, out_channels=5, width=4)
    out = net(torch.randn(2, 3, *shape))
    assert out.shape == (2, 5, *shape)


def test_unet_trains_on_the_smallest_input():
    # 16 voxels → a 1-voxel bottleneck, which torch's own instance norm refuses in training
    net = UNet(3, 2, 1, width=2).train()
    out = net(torch.randn(1, 2, 16, 16, 16))
    out.sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert net.head.weight.grad.abs().sum() > 0 and net.down[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(20, 32), (8, 16), (32, 33)])
def test_unet_rejects_sizes_that_are_not_multiples_of_16(shape):
    net = UNet(2, 1, 1, width=2)
    with pytest.raises(ValueError, match="multiple of 16") as info:
        net(torch.randn(1, 1, *shape))
    needed = tuple(max(16, -(-s // 16) * 16) for s in shape)
    assert str(needed) in str(info.value)


def test_unet_rejects_wrong_channels_and_arguments():
    with pytest.raises(ValueError, match=r"\(B, 2, \*S\)"):
        UNet(2, 2, 1)(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="width"):
        UNet(2, 2, 1, width=0)
    with pytest.raises(ValueError, match="ndim"):
        UNet(4)


def test_zero_head_gives_zero_output_and_head_gradients():
    net = UNet(2, 2, 3, width=4, zero_head=True)
    x = torch.randn(1, 2, 32, 32)
    out = net(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.pow(2).add(out).sum().backward()
    assert net.head.weight.grad.abs().sum() > 0


def test_instance_norm_makes_the_output_invariant_to_input_scale():
    # conv(s·x) = s·Wx + b; per-sample, per-channel normalisation removes both s and b
    net = UNet(2, 1, 2, width=4).eval()
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(net(7.0 * x), net(x), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(net(x + 1.0), net(x), atol=1e-3)  # not a trivial network


def test_output_depends_on_distant_input_through_the_bottleneck():
    net = UNet(2, 1, 1, width=4).eval()
    x = torch.zeros(1, 1, 64, 64, requires_grad=True)
    net(x)[0, 0, 0, 0].backward()
    # receptive field of 4 levels reaches the opposite corner region
    assert x.grad[0, 0, 32:, 32:].abs().sum() > 0


def test_conv_block_and_feature_cnn_shapes():
    assert ConvBlock(3, 2, 6)(torch.randn(1, 2, 5, 6, 7)).shape == (1, 6, 5, 6, 7)
    cnn = FeatureCNN(2, in_channels=1, features=10, width=4, levels=3)
    assert cnn(torch.randn(4, 1, 28, 28)).shape == (4, 10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_pointwise_is_the_1x1_convolution_with_its_gradients(ndim):
    torch.manual_seed(0)
    layer = pointwise(ndim, 3, 2).double()
    assert isinstance(layer, torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)
    assert layer.weight.shape == (2, 3, *([1] * ndim))  # a 1×1 convolution's checkpoint keys
    x = torch.randn(2, 3, *([5] * ndim), dtype=torch.float64, requires_grad=True)
    conv = F.conv2d if ndim == 2 else F.conv3d
    torch.testing.assert_close(layer(x), conv(x, layer.weight, layer.bias))
    assert torch.autograd.gradcheck(layer, (x,))
    torch.testing.assert_close(layer(x[0]), conv(x[0], layer.weight, layer.bias))  # unbatched


@pytest.mark.parametrize(("ndim", "batch"), [(2, 1), (3, 1), (3, 2)])
def test_onednn_convolution_is_atens_with_its_gradients(ndim, batch):
    """The 3×3 convolutions of the networks: float32 on the CPU through oneDNN (ATen's slow
    native kernel for a batch of one is the one it replaces) equal to ATen's convolution in
    value and gradient; float64 takes ATen's path (gradcheck); nn.Conv's checkpoint keys."""
    torch.manual_seed(0)
    layer = convolution(ndim, 4, 3, 3, padding=1)
    reference = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(4, 3, 3, padding=1)
    assert layer.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(layer.state_dict())
    # (1, 4, 8, 8, 8): channels × first two sizes = 256 ≤ 20480, ATen's native kernel
    x = torch.randn(batch, 4, *([8] * ndim), requires_grad=True)
    got, expected = layer(x), reference(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), (x, layer.weight, layer.bias))
    wanted = torch.autograd.grad(expected.square().sum(), (x, reference.weight, reference.bias))
    for a, b in zip(grads, wanted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    small = convolution(ndim, 2, 2, 3, padding=1).double()
    assert torch.autograd.gradcheck(small, (torch.randn(1, 2, *([4] * ndim), dtype=torch.float64,
                                                        requires_grad=True),))
    view = torch.randn(1, 4, *([9] * ndim))[:, :, 1:]  # a non-contiguous slab, as Interruptible
    torch.testing.assert_close(layer(view), reference(view), rtol=1e-5, atol=1e-5)
