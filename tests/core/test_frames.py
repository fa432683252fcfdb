"""Lazy flow frames: closed-form paths, the prior at t = 0, Φ at t = 1, caching, array access."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_difftt.core.flow import exp
from napari_difftt.core.flow.frames import FlowFrames, piecewise_path, stationary_path, warp_prior
from napari_difftt.core.flow.grid import compose, identity, warp

SHAPE = (6, 7, 8)


def constant(vector, shape=SHAPE) -> torch.Tensor:
    """Constant velocity ``(1, n, *shape)`` float64: exp of it is the same translation."""
    field = torch.tensor(vector, dtype=torch.float64).view(1, -1, *[1] * len(shape))
    return field.expand(1, len(shape), *shape).clone()


def smooth(seed: int, shape=SHAPE, amplitude=1.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, len(shape), *[3] * len(shape), generator=generator, dtype=torch.float64)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    fine = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return amplitude * fine


def blob(shape=SHAPE) -> np.ndarray:
    x = identity(shape, dtype=torch.float64).numpy()
    centre = np.array([(s - 1) / 2 for s in shape]).reshape(-1, *[1] * len(shape))
    return np.exp(-((x - centre) ** 2).sum(0) / 6.0).astype(np.float32)


def test_piecewise_path_of_translations_is_piecewise_linear():
    a, b = 1.2, -0.8
    path = piecewise_path(torch.stack([constant([a, 0, 0]), constant([0, b, 0])], dim=1))
    expectations = [(0.0, (0, 0)), (0.25, (a / 2, 0)), (0.5, (a, 0)), (0.75, (a, b / 2)),
                    (1.0, (a, b))]
    for t, expected in expectations:
        u = path(t)
        assert u.shape == (1, 3, *SHAPE)
        torch.testing.assert_close(u[0, 0], torch.full(SHAPE, expected[0], dtype=torch.float64))
        torch.testing.assert_close(u[0, 1], torch.full(SHAPE, expected[1], dtype=torch.float64))
        torch.testing.assert_close(u[0, 2], torch.zeros(SHAPE, dtype=torch.float64))


def test_piecewise_path_follows_the_pieces_in_order():
    v1, v2 = smooth(1), smooth(2)
    path = piecewise_path(torch.stack([v1, v2], dim=1))
    torch.testing.assert_close(path(0.5), exp(v1))
    torch.testing.assert_close(path(0.25), exp(0.5 * v1))
    torch.testing.assert_close(path(1.0), compose(exp(v2), exp(v1)))
    torch.testing.assert_close(path(0.75), compose(exp(0.5 * v2), exp(v1)))
    # the other order is a different flow: the test above would catch swapped pieces
    assert not torch.allclose(path(1.0), compose(exp(v1), exp(v2)), atol=1e-3)


def test_stationary_path_is_exp_of_t_v_and_returns_the_given_endpoint():
    v = smooth(3)
    path = stationary_path(v)
    torch.testing.assert_close(path(0.0), torch.zeros_like(v))
    torch.testing.assert_close(path(0.5), exp(0.5 * v))
    torch.testing.assert_close(path(1.0), exp(v))
    endpoint = exp(v, squarings=3)
    assert stationary_path(v, endpoint)(1.0) is endpoint


def test_stationary_frames_compose_one_exponential_within_tolerance_of_one_per_frame(
    monkeypatch,
):
    """Frames of ``steps`` = K − 1 are exp(v/steps) composed k times: one exponential for all of
    them, and within 2 % of |u| of the per-frame exp(t·v) they replace (measured: 1.7 %)."""
    from napari_difftt.core.flow import frames as frames_module

    v = smooth(4, shape=(24, 20, 22), amplitude=4.0)
    times = np.linspace(0.0, 1.0, 12)
    separate = [exp(float(t) * v) for t in times]
    calls = []
    real_exp = frames_module.exp
    monkeypatch.setattr(frames_module, "exp", lambda *a, **k: calls.append(1) or real_exp(*a, **k))
    path = stationary_path(v, steps=len(times) - 1)
    composed = [path(float(t)) for t in times]
    assert len(calls) == 1  # one exponential, then compositions
    largest = float(separate[-1].abs().max())
    for t, one, other in zip(times, composed, separate, strict=True):
        assert float((one - other).abs().max()) <= 0.02 * largest, t
    torch.testing.assert_close(composed[0], torch.zeros_like(v))
    torch.testing.assert_close(composed[1], exp(v / 11))  # the step itself
    torch.testing.assert_close(composed[3], compose(compose(exp(v / 11), exp(v / 11)),
                                                    exp(v / 11)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not a multiple of 1/11"):
        path(0.5)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        stationary_path(v, steps=0)


def test_frames_start_at_the_prior_and_end_at_the_warped_prior():
    v = smooth(4).float()
    prior = blob()
    frames = FlowFrames(stationary_path(v), 5, warp_prior(prior), SHAPE)
    np.testing.assert_allclose(frames[0], prior, atol=1e-6)
    expected = warp(torch.from_numpy(prior)[None, None], exp(v))[0, 0].numpy()
    np.testing.assert_allclose(frames[4], expected, atol=1e-6)
    np.testing.assert_allclose(frames.displacement(4), exp(v)[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(frames.times, [0, 0.25, 0.5, 0.75, 1.0])


def test_frames_of_a_translation_shift_a_ramp_linearly_in_t():
    prior = identity(SHAPE)[2].numpy()  # S(x) = x along the last axis
    frames = FlowFrames(stationary_path(constant([0, 0, 2.0]).float()), 3, warp_prior(prior), SHAPE)
    for k, t in enumerate(frames.times):
        shift = 2.0 * t
        inside = slice(0, SHAPE[2] - 2)  # x + shift still inside the image
        np.testing.assert_allclose(frames[k][..., inside], prior[..., inside] + shift, atol=1e-5)


def test_frames_are_lazy_and_cached():
    calls = []

    def render(u):
        calls.append(float(u[0, 0, 0, 0, 0]))
        return np.zeros(SHAPE, np.float32)

    frames = FlowFrames(stationary_path(constant([1.0, 0, 0])), 10, render, SHAPE)
    assert frames.computed == 0 and frames.shape == (10, *SHAPE) and frames.ndim == 4
    frames[3]
    frames[3]
    frames[(3, slice(None), 2, slice(1, 4))]
    assert frames.computed == 1 and len(calls) == 1
    np.testing.assert_allclose(calls, [3 / 9])


def test_cache_evicts_the_least_recently_used_frame():
    per_frame = 4 * int(np.prod(SHAPE)) * 4  # frame + 3-component displacement, float32
    frames = FlowFrames(stationary_path(constant([1.0, 0, 0])), 5, warp_prior(blob()), SHAPE,
                        cache_bytes=2 * per_frame)
    assert frames.cache_size == 2
    frames[0], frames[1], frames[0], frames[2]  # 1 is now the least recently used: evicted
    assert frames.computed == 3
    frames[0]
    assert frames.computed == 3
    frames[1]
    assert frames.computed == 4


def test_array_access_matches_the_stacked_frames():
    frames = FlowFrames(stationary_path(smooth(5).float()), 4, warp_prior(blob()), SHAPE)
    stack = np.asarray(frames)
    assert stack.shape == (4, *SHAPE) and stack.dtype == np.float32 and frames.size == stack.size
    np.testing.assert_array_equal(frames[1:3, 2], stack[1:3, 2])
    np.testing.assert_array_equal(frames[2, ..., 1], stack[2, ..., 1])
    np.testing.assert_array_equal(frames[..., 3, :], stack[..., 3, :])
    np.testing.assert_array_equal(frames[-1], stack[3])
    assert len(list(frames)) == 4


def test_frames_work_in_2d():
    shape = (9, 10)
    v1, v2 = smooth(6, shape).float(), smooth(7, shape).float()
    prior = blob(shape)
    frames = FlowFrames(piecewise_path(torch.stack([v1, v2], dim=1)), 3, warp_prior(prior), shape)
    assert frames.shape == (3, *shape)
    np.testing.assert_allclose(frames[0], prior, atol=1e-6)
    np.testing.assert_allclose(frames.displacement(1), exp(v1)[0].numpy(), atol=1e-6)
    end = compose(exp(v2), exp(v1))[0].numpy()
    np.testing.assert_allclose(frames.displacement(2), end, atol=1e-5)


def test_bad_arguments_are_named():
    path = stationary_path(constant([1.0, 0, 0]))
    with pytest.raises(ValueError, match="t must be in"):
        path(1.5)
    with pytest.raises(ValueError, match="count"):
        FlowFrames(path, 1, warp_prior(blob()), SHAPE)
    with pytest.raises(ValueError, match="velocities"):
        piecewise_path(constant([1.0, 0, 0]))
    with pytest.raises(ValueError, match="endpoint"):
        stationary_path(constant([1.0, 0, 0]), constant([1.0, 0], shape=(4, 4)))
    with pytest.raises(IndexError, match="out of range"):
        FlowFrames(path, 3, warp_prior(blob()), SHAPE)[3]


def test_threads_share_a_frame_and_cached_frames_never_wait():
    import threading
    import time

    started, release = threading.Event(), threading.Event()

    def render(u):
        if float(u[0, 0, 0, 0, 0]) > 0.9:  # the last frame: slow, until released
            started.set()
            release.wait(5)
        return np.zeros(SHAPE, np.float32)

    frames = FlowFrames(stationary_path(constant([1.0, 0, 0])), 3, render, SHAPE)
    frames[0]
    workers = [threading.Thread(target=frames.frame, args=(2,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    assert started.wait(5)
    begin = time.perf_counter()
    frames[0]  # cached: answered while frame 2 is still being rendered
    assert time.perf_counter() - begin < 0.5 and frames.computed == 1
    release.set()
    for worker in workers:
        worker.join(5)
    assert frames.computed == 2  # both threads got frame 2 from one render
