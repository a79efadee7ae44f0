"""Load the trained proxy pipelines shipped in ``lightcache/proxy/weights/``.

Three proxies, trained by ``benchmarks/proxy/train_all.py`` / ``train_cogvideox.py`` on clips from
:mod:`lightcache.proxy.data`:

- ``wan_proxy``: ``WanPipeline`` (``WanTransformer3DModel`` + tiny ``AutoencoderKLWan`` + flow-matching Euler).
- ``unet_proxy``: ``AnimateDiffPipeline`` (``UNetMotionModel`` + tiny ``AutoencoderKL`` + DDIM), for DeepCache.
- ``cogvideox_proxy``: ``CogVideoXPipeline`` (``CogVideoXTransformer3DModel`` with absolute sincos positions +
  tiny ``AutoencoderKLCogVideoX`` + ``CogVideoXDDIMScheduler``, v-prediction): a second DiT family.

None has a text encoder: drive them with ``prompt_embeds`` from :func:`embeds_for`. ``from_pretrained`` on
the folders needs ``text_encoder=None, tokenizer=None`` passed explicitly (diffusers refuses to infer absent
required components); the loaders here do that.
diffusers is imported lazily so ``lightcache.proxy.data`` works without it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import NUM_FRAMES, SIZE, null_embeds, prompt_embeds

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PROXIES = ("wan_proxy", "unet_proxy", "cogvideox_proxy")
# The denoiser weights file of each proxy; its presence means the proxy was trained and saved.
_DENOISER = {"wan_proxy": "transformer", "unet_proxy": "unet", "cogvideox_proxy": "transformer"}
_TRAINER = {"wan_proxy": "train_all.py", "unet_proxy": "train_all.py", "cogvideox_proxy": "train_cogvideox.py"}


def proxy_dir(name: str) -> Path:
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; expected one of {PROXIES}")
    return WEIGHTS_DIR / name


def weights_available(name: str) -> bool:
    """True when the proxy's pipeline folder holds trained weights for the denoiser and the VAE."""
    d = proxy_dir(name)
    return all(
        (d / sub / "diffusion_pytorch_model.safetensors").is_file() for sub in (_DENOISER[name], "vae")
    ) and (d / "model_index.json").is_file()


def _check(name: str, path=None) -> Path:
    if path is not None:  # an explicit folder (e.g. a training run's output) skips the packaged weights
        return Path(path)
    d = proxy_dir(name)
    if not weights_available(name):
        raise FileNotFoundError(
            f"proxy weights not found in {d}; train them with `python benchmarks/proxy/{_TRAINER[name]}`"
        )
    return d


def load_wan_proxy(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path=None):
    """The DiT proxy as a stock ``diffusers.WanPipeline`` (text_encoder/tokenizer are None)."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(
        _check("wan_proxy", path), text_encoder=None, tokenizer=None, dtype=dtype
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_unet_proxy(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path=None):
    """The UNet proxy as a stock ``diffusers.AnimateDiffPipeline`` (UNetMotionModel; no text encoder)."""
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline.from_pretrained(
        _check("unet_proxy", path), text_encoder=None, tokenizer=None, dtype=dtype
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_cogvideox_proxy(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path=None):
    """The second DiT proxy as a stock ``diffusers.CogVideoXPipeline`` (CogVideoX 1.0 layout; no text encoder)."""
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(
        _check("cogvideox_proxy", path), text_encoder=None, tokenizer=None, dtype=dtype
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_proxy(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    loaders = {"wan_proxy": load_wan_proxy, "unet_proxy": load_unet_proxy, "cogvideox_proxy": load_cogvideox_proxy}
    return loaders[proxy_dir(name).name](device=device, dtype=dtype)


def text_dim(pipe) -> int:
    """Width of the conditioning tokens the pipeline's denoiser expects."""
    if getattr(pipe, "transformer", None) is not None:
        cfg = pipe.transformer.config  # Wan names it text_dim, CogVideoX text_embed_dim
        return int(cfg.text_dim if "text_dim" in cfg else cfg.text_embed_dim)
    return int(pipe.unet.config.cross_attention_dim)


def embeds_for(pipe, conditions) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, negative_prompt_embeds)`` for a Condition / index / list of them."""
    dim = text_dim(pipe)
    pos = prompt_embeds(conditions, dim)
    return pos, null_embeds(pos.shape[0], dim)


def call_kwargs(
    pipe,
    conditions,
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    seed: int = 0,
    output_type: str = "np",
) -> dict:
    """Keyword arguments for ``pipe(**kw)`` that generate the proxy's native clip (32x32, 9 frames)."""
    pos, neg = embeds_for(pipe, conditions)
    device = getattr(pipe, "_execution_device", torch.device("cpu"))
    return dict(
        prompt_embeds=pos.to(device),
        negative_prompt_embeds=neg.to(device),
        height=SIZE,
        width=SIZE,
        num_frames=NUM_FRAMES,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type=output_type,
    )
