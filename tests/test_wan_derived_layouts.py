"""Trial calls of the Wan-derived families (SkyReels-V2, Wan VACE, Wan Animate): every argument that
depends on the latent's size follows the pooled latent, and the model runs on the result.

Denoisers only (built from the tiny pipelines' configs), one forward each: about 2 s on 2 cores.
"""

import pytest
import torch

from lightcache.models import adapter_for
from lightcache.models.layout import pool_to
from lightcache.policies.precisecache import downsample

from tiny_pipelines import _Seeder

FACTORS = (2, 4, 4)  # PreciseCache's default trial_downsample


def _pooled(den, x):
    return downsample(x, FACTORS, adapter_for(den).layout.patch_multiple(den))


def _run(den, args, kwargs):
    with torch.no_grad():
        return den(*args, **dict(kwargs, return_dict=False))[0]


def test_skyreels_v2_diffusion_forcing_timesteps_follow_the_pooled_frames():
    """Diffusion forcing passes one timestep per latent frame: the trial's are those of the frames
    each pooled frame starts at (finished frames keep theirs)."""
    from tiny_families.skyreels_v2 import transformer

    den = transformer(_Seeder(0), 4, 16).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 5, 4, 4, generator=g)
    t = torch.tensor([[0.0, 0.0, 300.0, 600.0, 900.0]])
    kw = dict(hidden_states=x, timestep=t, encoder_hidden_states=torch.randn(1, 8, 16, generator=g),
              enable_diffusion_forcing=True, fps=[1])
    pooled = _pooled(den, x)
    assert tuple(pooled.shape[2:]) == (3, 2, 2)
    args, t_kw = adapter_for(den).trial_call(den, (), kw, pooled)
    assert t_kw["hidden_states"] is pooled
    # nearest over 5 -> 3 frames: source frames 0, 1, 3
    assert torch.equal(t_kw["timestep"], torch.tensor([[0.0, 0.0, 600.0]]))
    assert _run(den, args, t_kw).shape == pooled.shape


def test_skyreels_v2_causal_blocks_keep_the_pooled_frames_a_multiple_of_the_block():
    from tiny_families.skyreels_v2 import transformer

    den = transformer(_Seeder(0), 4, 16, num_frame_per_block=2).eval()
    assert adapter_for(den).layout.patch_multiple(den) == (2, 2, 2)
    x = torch.randn(1, 4, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    pooled = _pooled(den, x)
    assert pooled.shape[2] % 2 == 0
    t = torch.full((1, 6), 500.0)
    kw = dict(hidden_states=x, timestep=t, encoder_hidden_states=torch.randn(1, 8, 16), enable_diffusion_forcing=True,
              fps=[1])
    args, t_kw = adapter_for(den).trial_call(den, (), kw, pooled)
    assert t_kw["timestep"].shape == (1, pooled.shape[2])
    assert _run(den, args, t_kw).shape == pooled.shape  # the causal mask is built for the pooled frames


def test_wan_vace_trial_call_pools_the_control_latents_like_the_latent():
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(0)
    den = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, vace_layers=[0, 1],
        vace_in_channels=6,
    ).eval()
    g = torch.Generator().manual_seed(0)
    x, control = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 6, 3, 8, 8, generator=g)
    kw = dict(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 8, 16, generator=g),
              control_hidden_states=control, control_hidden_states_scale=torch.ones(2))
    pooled = _pooled(den, x)
    args, t_kw = adapter_for(den).trial_call(den, (), kw, pooled)
    assert torch.equal(t_kw["control_hidden_states"], pool_to(control, tuple(pooled.shape[2:])))
    assert _run(den, args, t_kw).shape == pooled.shape
    kw["control_hidden_states"] = control[..., :4]
    with pytest.raises(ValueError, match="Wan VACE: control_hidden_states of shape"):
        adapter_for(den).trial_call(den, (), kw, pooled)


def test_wan_animate_trial_call_resizes_pose_latents_and_face_video():
    """Pose latents: one frame fewer than the pooled latent; face video: 4 (T' - 2) + 1 frames of
    its own, so the face adapter gets one motion frame per pooled latent frame."""
    try:
        from tiny_families import wan_animate as animate
    except ImportError:  # not collected by the matrix yet (see tests/tiny_families/_wan_animate.py)
        from tiny_families import _wan_animate as animate

    pipe, _ = animate.build(_Seeder(0))
    den = pipe.transformer.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 5, 8, 8, generator=g)  # character frame + 4 video frames
    pose = torch.randn(1, 4, 4, 8, 8, generator=g)
    face = torch.rand(1, 3, 13, animate.FACE, animate.FACE, generator=g) * 2 - 1
    kw = dict(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 8, 16, generator=g),
              encoder_hidden_states_image=torch.randn(1, 17, 16, generator=g), pose_hidden_states=pose,
              face_pixel_values=face)
    pooled = _pooled(den, x)
    frames = pooled.shape[2]
    assert frames == 3
    args, t_kw = adapter_for(den).trial_call(den, (), kw, pooled)
    assert torch.equal(t_kw["pose_hidden_states"], pool_to(pose, (frames - 1, *pooled.shape[3:])))
    assert torch.equal(t_kw["face_pixel_values"], face[:, :, [0, 2, 5, 7, 10]])  # nearest, 13 -> 5 frames
    assert _run(den, args, t_kw).shape == (1, 4, *pooled.shape[2:])
    with pytest.raises(ValueError, match="Wan Animate: a trial latent needs at least 2 latent frames"):
        adapter_for(den).trial_call(den, (), kw, pooled[:, :, :1])
