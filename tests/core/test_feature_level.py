"""The decoder level the heads of a flow model read (``feature_level``): shapes, the untrained
identity, the block-centre geometry of the pose level, gradients, configs and bad values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
from napari_difftt.core.flow.grid import affine_of_index
from napari_difftt.core.flow.velocity import VelocitySpace
from napari_difftt.core.models import (
    TemplateTransformer,
    _block_centres,
    _block_means,
    pose_mask_on_image,
)
from napari_difftt.core.nets import UNet, space_to_depth
from napari_difftt.core.prior import GeneralisedGaussianPrior, grid_axes
from napari_difftt.core.train import TrainConfig, Trainer
from napari_difftt.core.train.config import FRESH_SMOOTHNESS, FRESH_SMOOTHNESS_2D_HALF

_SPACE = VelocitySpace("bspline", factor=2, lattice=2, bound=16.0)


@pytest.mark.parametrize("level", [1, 2])
def test_unet_stops_its_decoder_at_the_level(level):
    full, cut = UNet(3, 2, 5, width=2), UNet(3, 2, 5, width=2, feature_level=level)
    x = torch.rand(1, 2, 32, 32, 32)
    assert cut(x).shape == (1, 5, *(32 // 2**level,) * 3)
    assert cut.features(x).shape == (1, 2 * 2**level, *(32 // 2**level,) * 3)
    assert len(cut.up) == len(full.up) - level
    # the blocks it keeps are the full network's first ones, under the same checkpoint keys
    kept = {k: v.shape for k, v in cut.state_dict().items()
            if not k.startswith(("head", "fuse"))}
    assert all(full.state_dict()[k].shape == shape for k, shape in kept.items())


@pytest.mark.parametrize("ndim", [2, 3])
def test_space_to_depth_turns_each_block_into_channels(ndim):
    factor, shape = 2, (4, 6, 2)[:ndim]
    x = torch.arange(3 * math.prod(shape), dtype=torch.float32).reshape(1, 3, *shape)
    folded = space_to_depth(x, factor)
    assert folded.shape == (1, 3 * factor**ndim, *(s // factor for s in shape))
    for channel in range(3):
        for offset, within in enumerate(itertools.product(range(factor), repeat=ndim)):
            picked = x[(0, channel, *(slice(o, None, factor) for o in within))]
            assert torch.equal(folded[0, channel * factor**ndim + offset], picked)
    if ndim == 2:  # torch's own 2D rearrangement orders channels the same way
        assert torch.equal(folded, torch.nn.functional.pixel_unshuffle(x, factor))
    with pytest.raises(ValueError, match="multiples of 4"):
        space_to_depth(x, 4)


@pytest.mark.parametrize("level", [1, 2])
def test_fine_skips_fold_every_finer_encoder_level_into_the_heads_grid(level):
    net = UNet(3, 2, 5, width=2, feature_level=level)
    assert net.fine_skips
    folded = sum(2 * 2**k * 2 ** (3 * (level - k)) for k in range(level))
    assert net.fuse[0].weight.shape == (2 * 2**level, 2 * 2**level + folded, 1, 1, 1)
    x = torch.rand(1, 2, 32, 32, 32, requires_grad=True)
    features = net.features(x)
    assert features.shape == (1, 2 * 2**level, *(32 // 2**level,) * 3)
    # one image voxel reaches its own feature voxel through the folded full-resolution level
    # alone when the decoder's path is cut off
    with torch.no_grad():
        net.fuse[0].weight[:, : 2 * 2**level] = 0
    features = net.features(x)
    features[0, :, 1, 1, 1].sum().backward()
    step = 2**level
    block = x.grad[0, :, step:2 * step, step:2 * step, step:2 * step]
    assert float(block.abs().min()) > 0
    assert not UNet(3, 2, 5, width=2).fine_skips  # level 0: nothing to fold
    assert UNet(3, 2, 5, width=2, feature_level=1, fine_skips=False).fuse is None
    with pytest.raises(ValueError, match="fine_skips must be True or False"):
        UNet(3, 2, 5, width=2, feature_level=1, fine_skips="yes")


@pytest.mark.parametrize("ndim", [2, 3])
def test_level_one_returns_the_prior_at_initialisation_with_the_identity_pose(ndim):
    prior = GeneralisedGaussianPrior(ndim, mean=[0.1] * ndim, radii=[0.35] * ndim, beta=2.0)
    model = TemplateTransformer("bch", ndim=ndim, prior=prior, width=2, velocity=_SPACE,
                                pose=True, feature_level=1)
    shape = (32,) * ndim
    result = model(torch.rand(2, 1, *shape))
    assert torch.equal(result.probability, result.prior)
    assert torch.equal(result.displacement, torch.zeros(2, ndim, *shape))
    eye = torch.eye(ndim + 1).expand(2, -1, -1)
    assert torch.allclose(result.pose, eye, atol=1e-5)
    assert result.pose_mask.shape == (2, 1, *(16,) * ndim)  # on the features' grid
    assert pose_mask_on_image(result).shape == (2, 1, *shape)


def test_the_pose_level_sees_block_means_and_block_centres():
    """The feature grid's voxel j covers image voxels 2j, 2j + 1: its plane coordinates are their
    means, and the posed prior's whitened offsets there are M i + b at i = 2j + ½ — the mean of
    the image voxels' offsets, since M i + b is affine."""
    shape, step = (8, 12, 4), 2
    prior_map = torch.rand(1, 1, *shape)
    axes = grid_axes(shape, (3, 0, 1), (20, 12, 6))
    pooled, planes = _block_means(prior_map, axes, step)
    assert torch.allclose(pooled, torch.nn.functional.avg_pool3d(prior_map, 2))
    for plane, axis in zip(planes, axes, strict=True):
        assert torch.allclose(plane, (axis[0::2] + axis[1::2]) / 2)
    matrix, bias = torch.randn(2, 3, 3), torch.randn(2, 3)
    fine = affine_of_index(matrix, bias, shape)
    centres = _block_centres(matrix, bias, shape, step)
    assert torch.allclose(centres, torch.nn.functional.avg_pool3d(fine, 2), atol=1e-5)


def test_level_one_trains_every_part_and_its_pose_mask_reaches_the_image_grid():
    model = TemplateTransformer("bch", ndim=3, width=2, velocity=_SPACE, pose=True,
                                feature_level=1)
    with torch.no_grad():
        model.net.head.weight.normal_(std=0.1)
        model.pose_head.head.weight.normal_(std=0.1)
        model.force_gain.fill_(0.01)
    result = model(torch.rand(1, 1, 32, 32, 32))
    mask = pose_mask_on_image(result)
    assert float(mask.detach().min()) >= 0 and float(mask.detach().max()) <= 1
    (result.probability.square().mean() + mask.mean()).backward()
    for name in ("net.down.0.0.weight", "net.head.weight", "pose_head.head.weight",
                 "force_gain"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    assert not any(name.startswith("net.up.3") for name, _ in model.named_parameters())


def test_the_level_is_kept_by_the_config_and_old_configs_read_level_zero():
    model = TemplateTransformer("bch", ndim=2, width=2, velocity=_SPACE, pose=True,
                                feature_level=1)
    again = TemplateTransformer.from_config(model.config())
    again.load_state_dict(model.state_dict())
    assert again.feature_level == 1 and again.net.fine_skips
    old = model.config() | {"feature_level": 0}
    del old["feature_level"]
    assert TemplateTransformer.from_config(old).feature_level == 0


def test_configs_written_before_the_fine_skips_rebuild_without_them():
    """A level-1 checkpoint of the first half-resolution heads (no ``fine_skips`` entry) loads
    into the network it was: no fusion block, the same state-dict keys and outputs."""
    before = TemplateTransformer("bch", ndim=2, width=2, velocity=_SPACE, pose=True,
                                 feature_level=1, fine_skips=False)
    with torch.no_grad():
        before.net.head.weight.normal_(std=0.1)
    config = before.config()
    assert config["fine_skips"] is False
    del config["fine_skips"]
    again = TemplateTransformer.from_config(config)
    again.load_state_dict(before.state_dict())  # strict: no missing or unexpected keys
    image = torch.rand(1, 1, 32, 32)
    assert torch.equal(again(image).probability, before(image).probability)
    assert TemplateTransformer("bch", ndim=2, width=2, velocity=_SPACE).config()[
        "fine_skips"] is False  # level 0 has nothing to fold


@pytest.mark.parametrize(("options", "message"), [
    ({"kind": "unet", "feature_level": 1}, "must be 0 for kind='unet'"),
    ({"feature_level": 3}, "feature_level must be one of"),
    ({"feature_level": True}, "feature_level must be one of"),
    ({"feature_level": 1, "velocity": VelocitySpace("dense", factor=1)},
     "cannot be pooled into this velocity space's blocks of 1"),
    ({"feature_level": 2, "velocity": _SPACE}, "blocks of 2 voxels"),
])
def test_bad_levels_are_refused_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        TemplateTransformer(**{"kind": "bch", "ndim": 2, "width": 2, **options})


def test_train_config_resolves_checks_and_records_the_level():
    assert TrainConfig(patch_size=(32, 32)).resolved_feature_level() == 1
    assert TrainConfig(patch_size=(32, 32, 32)).resolved_feature_level() == 1
    # a space of 1-voxel blocks cannot pool half-resolution features: its default is level 0
    assert TrainConfig(patch_size=(32, 32, 32), velocity="dense",
                       velocity_factor=1).resolved_feature_level() == 0
    assert TrainConfig(kind="unet", patch_size=(32, 32)).resolved_feature_level() == 0
    with pytest.raises(ValueError, match="for kind='unet'"):
        TrainConfig(kind="unet", patch_size=(32, 32), feature_level=1)
    with pytest.raises(ValueError, match="blocks of 1 voxels"):
        TrainConfig(patch_size=(32, 32), velocity="dense", velocity_factor=1, feature_level=1)
    recorded = TrainConfig(patch_size=(32, 32), feature_level=1).to_dict()
    del recorded["feature_level"]  # a run recorded before the field: level 0
    assert TrainConfig.from_dict(recorded).feature_level == 0


def _samples() -> list[Sample]:
    phantoms = [make_phantom((32, 32), seed=seed) for seed in range(2)]
    return [Sample(normalise_intensity(p.image), p.labels, p.spacing, f"c{i}")
            for i, p in enumerate(phantoms)]


def test_a_fine_tune_keeps_its_inits_level_and_refuses_another(tmp_path):
    samples = _samples()

    def config(**changes) -> TrainConfig:
        return TrainConfig(**{"patch_size": (32, 32), "width": 2, "pieces": 2, "iterations": 1,
                              "device": "cpu", "calibrate": False, **changes})

    Trainer(config(feature_level=1, checkpoint=str(tmp_path / "a.pt")), samples).run()
    tuned = Trainer(config(init=str(tmp_path / "a.pt")), samples)
    assert tuned.config.feature_level == 1
    tuned.run()
    assert tuned.model.feature_level == 1
    with pytest.raises(ValueError, match="reads decoder level 1"):
        Trainer(config(init=str(tmp_path / "a.pt"), feature_level=0), samples)


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_fresh_3d_run_on_painted_slices_reads_the_full_resolution_decoder(ndim):
    """Level 1 is the default on dense labels (in 2D with λ = 0.1); on sparse ones a fresh 3D
    run takes level 0 and the general λ (as measured) and says so, unless a level was given;
    a 2D one keeps level 1."""
    shape = (32,) * ndim
    phantoms = [make_phantom(shape, seed=seed) for seed in range(2)]
    dense = [Sample(normalise_intensity(p.image), p.labels, p.spacing, f"d{i}")
             for i, p in enumerate(phantoms)]
    sparse = []
    for sample in dense:
        labels = np.full_like(sample.labels, 255)
        labels[16] = sample.labels[16]  # one painted slice (row in 2D)
        sparse.append(Sample(sample.image, labels, sample.spacing, sample.name))
    config = TrainConfig(patch_size=shape, width=2, iterations=1, device="cpu")
    fresh = Trainer(config, dense).config
    assert fresh.feature_level == 1
    assert fresh.smoothness == (FRESH_SMOOTHNESS_2D_HALF if ndim == 2 else FRESH_SMOOTHNESS)
    said = []
    painted = Trainer(config, sparse, log=said.append).config
    if ndim == 2:
        assert painted.feature_level == 1 and painted.smoothness == FRESH_SMOOTHNESS_2D_HALF
        assert not any("feature level" in line for line in said)
        return
    assert painted.feature_level == 0 and painted.smoothness == FRESH_SMOOTHNESS
    assert any("feature level 0, not the default 1" in line for line in said)
    explicit = TrainConfig(patch_size=shape, width=2, iterations=1, device="cpu",
                           feature_level=1)
    assert Trainer(explicit, sparse).config.feature_level == 1


def test_painted_rows_in_a_space_of_one_voxel_blocks_stay_at_level_zero():
    """The sparse level never lifts a run above its default (a space the half-resolution
    features cannot be pooled into resolves to 0)."""
    phantoms = [make_phantom((32, 32), seed=seed) for seed in range(2)]
    sparse = []
    for i, p in enumerate(phantoms):
        labels = np.full_like(p.labels, 255)
        labels[16] = p.labels[16]
        sparse.append(Sample(normalise_intensity(p.image), labels, p.spacing, f"s{i}"))
    config = TrainConfig(patch_size=(32, 32), width=2, iterations=1, device="cpu",
                         velocity="dense", velocity_factor=1)
    assert Trainer(config, sparse).config.feature_level == 0
