"""LTX-2: a denoiser with two output streams (video = the sample, audio = ``audio_sample``).

The matrix (tests/test_matrix.py) checks the video of the tiny LTX2Pipeline under every policy and
plan. Here: the audio stream -- bit-identical when nothing is reused, reused with the video's
decisions the way the policy reuses the sample (EasyCache: input + the branch's last change;
PreciseCache: the last prediction), through the store (swap gives the device store's result);
the pipeline's three guidance calls a step; the denoiser alone with ``return_dict`` True and
False; a policy that cannot reuse further streams refused at enable(); the video VAE's sliced
decode (exact) and its refusal of a causal mode it was not planned for.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lightcache
from lightcache import EasyCache, MemoryPlan, PreciseCache
from lightcache.engine import session_of

from tiny_pipelines import build, denoiser_calls

STEPS = 4


@pytest.fixture(scope="module")
def tiny():
    return build("ltx2")


def run(pipe, kwargs, **extra):
    out = pipe(**dict(kwargs, num_inference_steps=STEPS, **extra), generator=torch.Generator().manual_seed(0))
    return out.frames, out.audio


@pytest.fixture(scope="module")
def reference(tiny):
    pipe, kwargs = tiny
    return run(pipe, kwargs)


class CallLog:
    """Every denoiser call's audio input and output and whether its first block ran outside a
    trial forward (a reused call does not run it); hooks outside lightcache's, so they see what
    the pipeline sees."""

    def __init__(self, model):
        self.model = model
        self.calls = []
        self._ran = False
        self._handles = [
            model.register_forward_hook(self._after, with_kwargs=True),
            model.transformer_blocks[0].register_forward_pre_hook(self._block),
        ]

    def _block(self, module, args):
        session = session_of(self.model)
        if session is None or not session.in_trial:  # PreciseCache's trial runs the blocks too
            self._ran = True

    def _after(self, module, args, kwargs, out):
        audio_out = out[1] if isinstance(out, tuple) else out.audio_sample
        self.calls.append((kwargs["audio_hidden_states"].clone(), audio_out.clone(), self._ran))
        self._ran = False

    def remove(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("policy", [EasyCache(threshold=0.0, warmup_steps=0), PreciseCache(alpha=0.0)],
                         ids=["easycache", "precisecache"])
def test_lossless_policy_gives_the_plain_video_and_audio(tiny, reference, policy):
    pipe, kwargs = tiny
    lightcache.enable(pipe, policy=policy, memory=MemoryPlan(swap="on", cache_dtype="fp8"))
    try:
        frames, audio = run(pipe, kwargs)
    finally:
        lightcache.disable(pipe)
    assert torch.equal(frames, reference[0]) and torch.equal(audio, reference[1])


@pytest.mark.parametrize(
    "policy,kind",
    [(EasyCache(threshold=10.0, warmup_steps=1), "delta"), (PreciseCache(alpha=1.0, warmup_ratio=0.25), "output")],
    ids=["easycache", "precisecache"],
)
def test_reused_audio_follows_the_policys_reuse_and_swap_keeps_it(tiny, reference, policy, kind):
    """A reused call's audio is input + (output - input) of the last computed call (EasyCache) or
    that call's output (PreciseCache), exactly (fp32); a swapped store gives the same video and
    audio as the device store."""
    pipe, kwargs = tiny
    results = {}
    for plan in (None, MemoryPlan(swap="on")):
        lightcache.enable(pipe, policy=policy, memory=plan)
        log = CallLog(pipe.transformer)
        try:
            results[plan is None] = run(pipe, kwargs)
            report = lightcache.report(pipe)
        finally:
            log.remove()
            lightcache.disable(pipe)
        ran = [r for _, _, r in log.calls]
        assert len(ran) == STEPS and ran[0] and not all(ran)  # something is reused
        assert report.calls_reused == ran.count(False)
        last = None
        for x_a, out_a, computed in log.calls:
            if computed:
                last = (x_a, out_a)
                continue
            expected = x_a + (last[1] - last[0]) if kind == "delta" else last[1]
            assert torch.equal(out_a, expected)
    assert torch.equal(results[True][0], results[False][0]) and torch.equal(results[True][1], results[False][1])
    assert not torch.equal(results[True][1], reference[1])  # the reuse changed the audio


def test_three_guidance_calls_a_step_follow_the_leader(tiny):
    """With spatio-temporal and modality guidance on, the pipeline calls the denoiser three times
    a step ("cond_uncond", "uncond_stg", "uncond_modality"): lossless gives the plain outputs; when
    reusing, every call of a step follows the step's first."""
    pipe, kwargs = tiny
    guided = dict(stg_scale=1.0, modality_scale=2.0, spatio_temporal_guidance_blocks=[1])
    plain = run(pipe, kwargs, **guided)
    lightcache.enable(pipe, policy=EasyCache(threshold=0.0, warmup_steps=0))
    try:
        lossless = run(pipe, kwargs, **guided)
    finally:
        lightcache.disable(pipe)
    assert torch.equal(lossless[0], plain[0]) and torch.equal(lossless[1], plain[1])

    lightcache.enable(pipe, policy=EasyCache(threshold=10.0, warmup_steps=1))
    log = CallLog(pipe.transformer)
    try:
        run(pipe, kwargs, **guided)
    finally:
        log.remove()
        lightcache.disable(pipe)
    ran = [r for _, _, r in log.calls]
    assert len(ran) == 3 * STEPS
    steps = [ran[i : i + 3] for i in range(0, len(ran), 3)]
    assert all(len(set(s)) == 1 for s in steps) and steps[0] == [True] * 3 and [False] * 3 in steps


def test_denoiser_alone_returns_both_streams_with_and_without_return_dict(tiny):
    """Driven by hand through cache_context(step_index=...): a reused call returns the output
    class with both fields (return_dict True) or the 2-tuple (False), the audio by the formula."""
    from diffusers.models.transformers.transformer_ltx2 import AudioVisualModelOutput

    pipe, kwargs = tiny
    model = pipe.transformer
    (args, call), = denoiser_calls(pipe, kwargs, n=1)
    def inputs(i):  # the latents move a little every step, as in a pipeline
        return dict(call, hidden_states=call["hidden_states"] * (1 + 0.01 * i),
                    audio_hidden_states=call["audio_hidden_states"] * (1 + 0.01 * i))

    for return_dict in (True, False):
        lightcache.enable(model, policy=EasyCache(threshold=10.0, warmup_steps=1))
        outs = []
        try:
            for i in range(4):
                with model.cache_context("cond_uncond", step_index=i, num_inference_steps=4):
                    outs.append(model(*args, **dict(inputs(i), return_dict=return_dict)))
            report = lightcache.report(model)
        finally:
            lightcache.disable(model)
        # step 0 warm-up, step 1 computed (the rate needs two computed calls), step 2 reused, the
        # last step computed
        assert [d.computed for d in report.decisions] == [True, True, False, True]
        if return_dict:
            assert all(isinstance(o, AudioVisualModelOutput) for o in outs)
            audio = [o.audio_sample for o in outs]
        else:
            assert all(isinstance(o, tuple) and len(o) == 2 for o in outs)
            audio = [o[1] for o in outs]
        a1, a2 = inputs(1)["audio_hidden_states"], inputs(2)["audio_hidden_states"]
        assert torch.equal(audio[2], a2 + (audio[1] - a1))


def test_a_policy_that_cannot_reuse_further_streams_is_refused_at_enable(tiny):
    pipe, _ = tiny

    @dataclasses.dataclass(frozen=True)
    class OneStreamOnly(EasyCache):
        extra_stream_reuse = None

    with pytest.raises(ValueError, match=r"OneStreamOnly cannot reuse LTX2VideoTransformer3DModel's further output "
                                         r"streams \(audio_sample\)"):
        lightcache.enable(pipe, policy=OneStreamOnly())
    assert session_of(pipe.transformer) is None


def test_sliced_video_decode_is_exact_and_refuses_another_causal_mode(tiny):
    """17 frames = 3 latent frames decoded in 3 slices with the decoder's receptive field as margin
    (≤ 1e-5 of the whole decode); a decode call asking for causal convs the plan did not plan for
    is refused."""
    pipe, kwargs = tiny
    plain = run(pipe, kwargs, num_frames=17)
    lightcache.enable(pipe, memory=MemoryPlan(decode_slices=3))
    try:
        sliced = run(pipe, kwargs, num_frames=17)
        z = torch.randn(1, pipe.vae.config.latent_channels, 3, 4, 4)
        assert pipe.vae.decoder.is_causal  # the tiny VAE's (diffusers' default): causal=False changes nothing
        pipe.vae.decode(z, causal=False)
    finally:
        lightcache.disable(pipe)
    pipe.vae.decoder.is_causal = False  # centred convs: a call asking for causal ones is refused
    lightcache.enable(pipe, memory=MemoryPlan(decode_slices=3))
    try:
        with pytest.raises(ValueError, match=r"causal=True but the decoder's is_causal is False"):
            pipe.vae.decode(z, causal=True)
    finally:
        lightcache.disable(pipe)
        pipe.vae.decoder.is_causal = True
    assert (sliced[0] - plain[0]).abs().max() <= 1e-5
    assert torch.equal(sliced[1], plain[1])  # the audio is not sliced
