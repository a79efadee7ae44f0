"""Fidelity metrics against hand-computed values."""

import math

import pytest
import torch

from lightcache.metrics import flicker, psnr, ssim


def video(seed=0, shape=(4, 3, 24, 32)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_identical_videos():
    v = video()
    assert psnr(v, v) == math.inf
    assert ssim(v, v) == pytest.approx(1.0, abs=1e-12)
    assert flicker(v, v) == 0.0


def test_psnr_of_known_error():
    v = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    assert psnr(v + 0.1, v) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01 → 20 dB
    # pooled over the clip: one frame off by 0.2, the other exact → MSE 0.02 → 16.99 dB
    w = v.clone()
    w[0] += 0.2
    assert psnr(w, v) == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-9)


def test_ssim_of_constant_frames_is_the_luminance_term():
    a, b = 0.3, 0.6
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # zero variance: the structure terms are 1
    x, y = (torch.full((2, 3, 16, 16), val, dtype=torch.float64) for val in (a, b))
    assert ssim(x, y) == pytest.approx(expected, rel=1e-9)


def test_ssim_averages_frames():
    ref = video()
    noisy = ref.clone()
    noisy[1:] = ref[1:] + 0.2 * torch.randn(ref[1:].shape, generator=torch.Generator().manual_seed(1))
    per = [ssim(noisy[i : i + 1], ref[i : i + 1]) for i in range(4)]
    assert per[0] == pytest.approx(1.0) and all(p < 0.9 for p in per[1:])
    assert ssim(noisy, ref) == pytest.approx(sum(per) / 4, rel=1e-12)


def test_flicker_counts_frame_to_frame_departures():
    ref = torch.zeros(3, 1, 12, 12)
    v = ref.clone()
    v[1] += 0.3  # up at frame 1 and down at frame 2: |0.3| + |-0.3| over 2 differences
    assert flicker(v, ref) == pytest.approx(0.3)
    assert flicker(ref + 0.5, ref) == 0.0  # a constant offset does not flicker


def test_batch_dimension_and_bad_input():
    v = video(shape=(2, 4, 3, 16, 16))
    assert psnr(v, v) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        psnr(v, v[:1])
    with pytest.raises(ValueError, match="frames, channels"):
        ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="11×11"):
        ssim(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="video"):
        psnr(torch.zeros(2, 3, 16, 16, dtype=torch.int64), torch.zeros(2, 3, 16, 16))
