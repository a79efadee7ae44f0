"""The tiny pipelines of tests/tiny_pipelines.py build offline and run deterministically on CPU."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import tiny_pipelines as tp  # noqa: E402  (tests/ is on sys.path under pytest's rootdir import mode)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tensors here are tiny, so intra-op threading buys nothing, and on a shared, oversubscribed
    # CPU the OpenMP barriers of a 2-thread pool can slow these runs down by 10-100x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(pipe, kwargs, seed):
    return tp.output_of(pipe(**kwargs, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_tiny_pipeline_is_deterministic(family):
    pipe, kwargs = tp.build(family)
    assert "generator" not in kwargs
    assert kwargs["num_inference_steps"] == tp.DEFAULT_STEPS
    assert kwargs["output_type"] == "pt"
    model = tp.denoiser(pipe)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert next(model.parameters()).dtype == torch.float32

    first = _run(pipe, kwargs, seed=0)
    second = _run(pipe, kwargs, seed=0)

    assert isinstance(first, torch.Tensor)
    assert first.ndim == 5  # (batch, frames, channels, height, width)
    assert first.shape == (1, kwargs["num_frames"], 3, kwargs["height"], kwargs["width"])
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_build_is_seeded(family):
    rng_before = torch.random.get_rng_state()
    pipe_a, kwargs_a = tp.build(family, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "build() must not disturb the global RNG"
    pipe_b, kwargs_b = tp.build(family, seed=3)
    pipe_c, _ = tp.build(family, seed=4)

    sd_a, sd_b, sd_c = (tp.denoiser(p).state_dict() for p in (pipe_a, pipe_b, pipe_c))
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert any(not torch.equal(sd_a[k], sd_c[k]) for k in sd_a)

    assert kwargs_a.keys() == kwargs_b.keys()
    for key, value in kwargs_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, kwargs_b[key]), key
        elif key != "image":  # PIL images compare by identity; their pixels come from the same seed
            assert value == kwargs_b[key], key
