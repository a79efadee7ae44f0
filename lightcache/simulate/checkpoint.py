"""A local diffusers pipeline folder on the meta device, from its config files only.

``model_index.json`` names the pipeline class; each diffusers component (denoiser, VAE, motion
adapter) is constructed from its ``config.json`` on the meta device, the scheduler from its config,
and the text encoders are not built: the pipeline runs from prompt embeddings of the shape the
denoiser takes (its text width from its own config, the sequence length the pipeline uses by
default), exactly as the realistic configurations do (lightcache.bench_models: the same builders
run). Weights files are never opened. Supported: the pipeline classes of the realistic
configurations (Wan, HunyuanVideo, CogVideoX, LTX-Video, Stable Video Diffusion, AnimateDiff).
"""

from __future__ import annotations

import json
import os

import torch

# pipeline class -> (realistic configuration whose builder and defaults apply, denoiser folder,
# {text key: denoiser config key})
_PIPELINES = {
    "WanPipeline": ("wan2.1-1.3b", "transformer", {"dim": "text_dim"}),
    "HunyuanVideoPipeline": ("hunyuanvideo", "transformer", {"dim": "text_embed_dim", "pooled": "pooled_projection_dim"}),
    "CogVideoXPipeline": ("cogvideox-5b", "transformer", {"dim": "text_embed_dim", "seq": "max_text_seq_length"}),
    "LTXPipeline": ("ltx-video", "transformer", {"dim": "caption_channels"}),
    "StableVideoDiffusionPipeline": ("svd", "unet", {}),
    "AnimateDiffPipeline": ("animatediff", "unet", {"dim": "cross_attention_dim"}),
}


def _read(path):
    with open(path) as fh:
        return json.load(fh)


def _init_kwargs(cls, folder):
    config = cls.load_config(folder)
    init, _, _ = cls.extract_init_dict(config)
    return dict(init)


def build_checkpoint(path, device, dtype, height=None, width=None, frames=None):
    """(pipe, call kwargs, label) of the pipeline folder ``path`` (see the module doc)."""
    import diffusers

    from lightcache import bench_models as bm

    index_path = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_path):
        raise ValueError(f"model: {path!r} has no model_index.json (not a diffusers pipeline folder)")
    index = _read(index_path)
    name = index.get("_class_name")
    if name not in _PIPELINES:
        raise ValueError(f"model: {path!r} is a {name}; lightcache plan simulates {', '.join(sorted(_PIPELINES))}")
    key, den_folder, text_keys = _PIPELINES[name]
    spec = bm.REALISTIC[key]
    c = spec.config("full")

    def component(folder, slot):
        entry = index.get(folder)
        if not entry or entry[0] is None:
            raise ValueError(f"model: {path!r} has no {folder} component in model_index.json")
        cls = getattr(diffusers, entry[1], None)
        if cls is None:
            raise ValueError(f"model: {folder} is a {entry[1]}, which diffusers {diffusers.__version__} does not have")
        c[slot] = _init_kwargs(cls, os.path.join(path, folder))
        return c[slot]

    den = component(den_folder, "denoiser")
    component("vae", "vae")
    sched = index.get("scheduler")
    if sched and sched[1] is not None:
        c["scheduler"] = _init_kwargs(getattr(diffusers, sched[1]), os.path.join(path, "scheduler"))
    if name == "AnimateDiffPipeline":
        if index.get("unet", [None, None])[1] != "UNet2DConditionModel":
            raise ValueError(f"model: {path!r}: an AnimateDiff folder's unet must be the UNet2DConditionModel the "
                             "motion adapter is added to")
        component("motion_adapter", "motion_adapter")
    if name == "StableVideoDiffusionPipeline":
        enc = os.path.join(path, "image_encoder", "config.json")
        if os.path.isfile(enc):
            cfg = _read(enc)
            c["image_encoder"] = {k: cfg[k] for k in c["image_encoder"] if k in cfg}
    for text_key, den_key in text_keys.items():
        if den.get(den_key) is not None:
            c["text"][text_key] = den[den_key]
    for k, v in (("height", height), ("width", width), ("num_frames", frames)):
        if v is not None:
            c["call"][k] = v
    torch.manual_seed(0)
    from lightcache.simulate.pipeline import _quiet

    with _quiet():
        pipe, kw = spec.build(c, device, dtype, torch.Generator().manual_seed(1))
    pipe.to(device)
    return pipe, kw, f"{name} from {os.path.abspath(path)}"
