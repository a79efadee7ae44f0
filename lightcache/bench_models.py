"""Realistic-size random-weight configurations for ``lightcache bench`` (speed and memory only).

The numbers are the published diffusers configs of each checkpoint: block counts, heads, widths,
latent and text-embedding channels of the denoiser, the VAE and, for SVD, the CLIP image encoder.
Weights are random and the text encoders are replaced by random ``prompt_embeds`` of the published
shape, so nothing is downloaded. Random weights make fidelity meaningless; the bench reports speed
and memory only for these.

Each configuration has two scales:
  * ``"full"``: the published sizes (billions of parameters; GPU only);
  * ``"tiny"``: the same classes, block types and pipeline code with layer counts, widths and the
    clip shrunk (a few seconds on CPU), so that the builders and the bench's path through them are
    tested on machines without a GPU.
A scale is the full config with the tiny overrides merged in one level deep (per component).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict

import torch

SCALES = ("full", "tiny")


@dataclass(frozen=True)
class RealisticConfig:
    label: str  # published model name
    params: str  # nominal size of the denoiser, for messages
    build: Callable  # (cfg, device, dtype, generator) -> (pipe, call kwargs without generator)
    full: dict  # component -> constructor kwargs; "text" and "call" hold input shapes and call kwargs
    tiny: dict  # overrides of ``full`` per component for the tiny scale
    family: str = "dit"

    def config(self, scale: str) -> dict:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if scale == "full":
            return {k: dict(v) for k, v in self.full.items()}
        return {k: {**v, **self.tiny.get(k, {})} for k, v in self.full.items()}


@contextlib.contextmanager
def _on(device):
    """Construct modules directly on ``device`` (a 14 B model never passes through host memory)."""
    with torch.device(device):
        yield


def _cast(model, dtype):
    """``model`` in ``dtype``, keeping the modules diffusers keeps in fp32 (``_keep_in_fp32_modules``: Wan's
    norms, RoPE, time embedder) in fp32, as ``from_pretrained(torch_dtype=...)`` does."""
    if dtype == torch.float32:
        return model
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # ModelMixin.to warns about exactly what is undone below
    try:
        model.to(dtype)
    finally:
        dlogging.set_verbosity(level)
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and keep.intersection(name.split(".")):
            t.data = t.data.float()
    return model


def _embeds(g, device, dtype, *shape):
    return torch.randn(*shape, generator=g).to(device, dtype)


def _mask(seq, device):
    return torch.ones(1, seq, dtype=torch.long, device=device)


# ---------------------------------------------------------------------------------------------
# builders (one per pipeline family; the same code runs both scales)
# ---------------------------------------------------------------------------------------------


def _build_wan(c, device, dtype, g):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    with _on(device):
        tr = _cast(WanTransformer3DModel(**c["denoiser"]), dtype)
        vae = AutoencoderKLWan(**c["vae"])  # Wan's VAE runs in fp32 in the reference pipelines
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr,
                       scheduler=UniPCMultistepScheduler(**c["scheduler"]))
    t = c["text"]
    kw = dict(prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              negative_prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]), **c["call"])
    return pipe, kw


def _build_hunyuan(c, device, dtype, g):
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    with _on(device):
        tr = _cast(HunyuanVideoTransformer3DModel(**c["denoiser"]), dtype)
        vae = _cast(AutoencoderKLHunyuanVideo(**c["vae"]), dtype)
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=tr, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(**c["scheduler"]),
                                text_encoder_2=None, tokenizer_2=None)
    t = c["text"]
    # guidance-distilled: guidance_scale feeds the guidance embedding, one denoiser call per step
    kw = dict(prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              pooled_prompt_embeds=_embeds(g, device, dtype, 1, t["pooled"]),
              prompt_attention_mask=_mask(t["seq"], device), **c["call"])
    return pipe, kw


def _build_cogvideox(c, device, dtype, g):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    with _on(device):
        tr = _cast(CogVideoXTransformer3DModel(**c["denoiser"]), dtype)
        vae = _cast(AutoencoderKLCogVideoX(**c["vae"]), dtype)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=tr,
                             scheduler=CogVideoXDPMScheduler(**c["scheduler"]))
    t = c["text"]
    kw = dict(prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              negative_prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              max_sequence_length=t["seq"], **c["call"])
    return pipe, kw


def _build_ltx(c, device, dtype, g):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    with _on(device):
        tr = _cast(LTXVideoTransformer3DModel(**c["denoiser"]), dtype)
        vae = _cast(AutoencoderKLLTXVideo(**c["vae"]), dtype)
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**c["scheduler"]), vae=vae, text_encoder=None,
                       tokenizer=None, transformer=tr)
    t = c["text"]
    kw = dict(prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              prompt_attention_mask=_mask(t["seq"], device),
              negative_prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              negative_prompt_attention_mask=_mask(t["seq"], device),
              max_sequence_length=t["seq"], **c["call"])
    return pipe, kw


def _image(g, height, width):
    from PIL import Image

    arr = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, mode="RGB")


def _build_svd(c, device, dtype, g):
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with _on(device):
        unet = _cast(UNetSpatioTemporalConditionModel(**c["denoiser"]), dtype)
        vae = _cast(AutoencoderKLTemporalDecoder(**c["vae"]), dtype)
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**c["image_encoder"])).to(dtype)
    size = c["image_encoder"]["image_size"]
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=enc, unet=unet, scheduler=EulerDiscreteScheduler(**c["scheduler"]),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}))
    # a PIL image: the pipeline resizes it to the CLIP size and to height x width for the VAE
    kw = dict(image=_image(g, c["call"]["height"], c["call"]["width"]), **c["call"])
    return pipe, kw


def _build_animatediff(c, device, dtype, g):
    from diffusers import (AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel,
                           UNetMotionModel)

    # The pipeline would turn SD's 2-D UNet + the motion adapter into a UNetMotionModel by copying
    # weights; with random weights only the two configs matter, so they are built on "meta" (no
    # memory) and the motion UNet is built from them directly on the device.
    with _on("meta"):
        unet2d, adapter = UNet2DConditionModel(**c["denoiser"]), MotionAdapter(**c["motion_adapter"])
    with _on(device):
        unet = _cast(UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False), dtype)
        vae = _cast(AutoencoderKL(**c["vae"]), dtype)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=None,
                               scheduler=DDIMScheduler(**c["scheduler"]), feature_extractor=None, image_encoder=None)
    t = c["text"]
    kw = dict(prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]),
              negative_prompt_embeds=_embeds(g, device, dtype, 1, t["seq"], t["dim"]), **c["call"])
    return pipe, kw


# ---------------------------------------------------------------------------------------------
# configurations (published numbers; "tiny" shrinks them for CPU tests)
# ---------------------------------------------------------------------------------------------

_WAN_TINY = dict(
    denoiser=dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32,
                  rope_max_seq_len=32),
    vae=dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
    text=dict(seq=8, dim=32),
    call=dict(height=32, width=32, num_frames=5),
)


def _wan(layers, heads, ffn):
    return dict(
        denoiser=dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=16,
                      out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=ffn, num_layers=layers,
                      cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        vae=dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
        scheduler=dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000),
        text=dict(seq=512, dim=4096),  # umT5-XXL, 512 tokens
        call=dict(height=480, width=832, num_frames=33, guidance_scale=5.0),
    )


REALISTIC: Dict[str, RealisticConfig] = {
    "wan2.1-1.3b": RealisticConfig("Wan2.1-T2V-1.3B", "1.3 B", _build_wan, _wan(30, 12, 8960), _WAN_TINY),
    "wan2.1-14b": RealisticConfig("Wan2.1-T2V-14B", "14 B", _build_wan, _wan(40, 40, 13824), _WAN_TINY),
    "hunyuanvideo": RealisticConfig(
        "HunyuanVideo", "13 B", _build_hunyuan,
        full=dict(
            denoiser=dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                          num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                          qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                          rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
            vae=dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                     spatial_compression_ratio=8, temporal_compression_ratio=4, scaling_factor=0.476986),
            scheduler=dict(shift=7.0),
            text=dict(seq=256, dim=4096, pooled=768),  # Llava-Llama-3 tokens + CLIP-L pooled
            call=dict(height=544, width=960, num_frames=61, guidance_scale=6.0),
        ),
        tiny=dict(
            denoiser=dict(num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
                          num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4)),
            vae=dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
            text=dict(seq=8, dim=16, pooled=8),
            call=dict(height=32, width=32, num_frames=5),
        ),
    ),
    "cogvideox-5b": RealisticConfig(
        "CogVideoX-5B", "5 B", _build_cogvideox,
        full=dict(
            denoiser=dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                          time_embed_dim=512, text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60,
                          sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                          use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False),
            vae=dict(block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3,
                     norm_num_groups=32, temporal_compression_ratio=4, scaling_factor=0.7),
            scheduler=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                           prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                           snr_shift_scale=1.0, timestep_spacing="trailing", steps_offset=0),
            text=dict(seq=226, dim=4096),  # T5-XXL, 226 tokens
            call=dict(height=480, width=720, num_frames=49, guidance_scale=6.0, use_dynamic_cfg=True),
        ),
        tiny=dict(
            denoiser=dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=8, text_embed_dim=16,
                          num_layers=2, sample_width=4, sample_height=4, sample_frames=9, max_text_seq_length=8),
            vae=dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2),
            text=dict(seq=8, dim=16),
            call=dict(height=32, width=32, num_frames=9),
        ),
    ),
    "ltx-video": RealisticConfig(
        "LTX-Video 0.9 (2B)", "2 B", _build_ltx,
        full=dict(
            denoiser=dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                          attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096,
                          qk_norm="rms_norm_across_heads"),
            vae=dict(latent_channels=128, block_out_channels=(128, 256, 512, 512),
                     decoder_block_out_channels=(128, 256, 512, 512), layers_per_block=(4, 3, 3, 3, 4),
                     decoder_layers_per_block=(4, 3, 3, 3, 4), patch_size=4, patch_size_t=1,
                     encoder_causal=True, decoder_causal=False),
            scheduler=dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                           max_image_seq_len=4096, shift_terminal=0.1),
            text=dict(seq=128, dim=4096),  # T5-XXL, 128 tokens
            call=dict(height=512, width=704, num_frames=161, guidance_scale=3.0),
        ),
        tiny=dict(
            denoiser=dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                          cross_attention_dim=16, num_layers=2, caption_channels=16),
            vae=dict(latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                     layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1)),
            text=dict(seq=8, dim=16),
            call=dict(height=64, width=64, num_frames=9),
        ),
    ),
    "svd": RealisticConfig(
        "Stable Video Diffusion XT", "1.5 B", _build_svd, family="unet",
        full=dict(
            denoiser=dict(sample_size=96, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                          layers_per_block=2, cross_attention_dim=1024, num_attention_heads=(5, 10, 20, 20),
                          addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, num_frames=25),
            vae=dict(down_block_types=("DownEncoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, latent_channels=4, sample_size=768),
            image_encoder=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                               patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"),  # ViT-H/14
            scheduler=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
                           sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
                           timestep_type="continuous", use_karras_sigmas=True),
            call=dict(height=576, width=1024, num_frames=25, decode_chunk_size=8, min_guidance_scale=1.0,
                      max_guidance_scale=3.0),
        ),
        tiny=dict(
            # the spatio-temporal blocks normalise with 32 groups: widths stay multiples of 32
            denoiser=dict(sample_size=8, block_out_channels=(32, 32, 32, 32), layers_per_block=1, cross_attention_dim=32,
                          num_attention_heads=(1, 1, 1, 1), addition_time_embed_dim=8,
                          projection_class_embeddings_input_dim=24, num_frames=4),
            vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64),
            image_encoder=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               patch_size=32, projection_dim=32),
            call=dict(height=64, width=64, num_frames=4, decode_chunk_size=4),
        ),
    ),
    "animatediff": RealisticConfig(
        "AnimateDiff (SD 1.5 + motion adapter v1-5-2)", "1.3 B", _build_animatediff, family="unet",
        full=dict(
            denoiser=dict(sample_size=64, in_channels=4, out_channels=4,
                          down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                          block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                          attention_head_dim=8, norm_num_groups=32),
            motion_adapter=dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                                motion_mid_block_layers_per_block=1, motion_num_attention_heads=8,
                                motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True),
            vae=dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512),
            scheduler=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                           set_alpha_to_one=False, steps_offset=1, timestep_spacing="linspace"),
            text=dict(seq=77, dim=768),  # CLIP-L
            call=dict(height=512, width=512, num_frames=16, guidance_scale=7.5),
        ),
        tiny=dict(
            denoiser=dict(sample_size=8, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                          cross_attention_dim=16),
            motion_adapter=dict(block_out_channels=(32, 32, 32, 32), motion_layers_per_block=1,
                                motion_num_attention_heads=2),
            vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64),
            text=dict(seq=8, dim=16),
            call=dict(height=64, width=64, num_frames=4),
        ),
    ),
}


def build(name: str, device: str, steps: int, scale: str = "full", height=None, width=None, frames=None):
    """``(pipe, call kwargs without generator, family, description)`` of the realistic configuration
    ``name`` at ``scale`` (``"full"``: bf16, ``"tiny"``: fp32).

    Refuses the full scale on CPU (SystemExit with the reason); ``device="meta"`` builds it without
    allocating (the tests check the published sizes that way). ``height``/``width``/``frames``
    override the configuration's clip size. Weights are random and deterministic (seed 0)."""
    if name not in REALISTIC:
        raise ValueError(f"unknown realistic configuration {name!r}; expected one of {sorted(REALISTIC)}")
    spec = REALISTIC[name]
    c = spec.config(scale)
    if scale == "full" and str(device).startswith("cpu"):
        raise SystemExit(
            f"--model {name} at full size ({spec.label}, {spec.params} parameters) needs a GPU: use --device cuda, "
            "or --scale tiny for a shrunken CPU run of the same pipeline code"
        )
    for key, value in (("height", height), ("width", width), ("num_frames", frames)):
        if value is not None:
            c["call"][key] = value
    dtype = torch.float32 if scale == "tiny" else torch.bfloat16
    torch.manual_seed(0)
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # construction-time notices (fp32 modules, missing optional components)
    try:
        pipe, kw = spec.build(c, device, dtype, torch.Generator().manual_seed(1))
    finally:
        dlogging.set_verbosity(level)
    pipe.to(device)
    kw.update(num_inference_steps=steps, output_type="pt")
    call = c["call"]
    size = f"{call['height']}x{call['width']}, {call['num_frames']} frames"
    what = f"{spec.label} config" if scale == "full" else f"{spec.label} at tiny scale (CPU smoke config)"
    desc = f"random-weight {what}, {size}"
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return pipe, kw, spec.family, desc
