"""Kandinsky 5 text-to-video (``Kandinsky5T2VPipeline``) with HunyuanVideo's VAE.

Offline: the Qwen2.5-VL and CLIP text encoders run only without ``prompt_embeds_qwen`` /
``prompt_embeds_clip`` (None here; the pipeline also takes the prompts' ``cu_seqlens``).

``MemoryPlan(chunk_size=...)`` splits nothing in these blocks: there is no chunk spec for them, their
feed-forward (``Kandinsky5FeedForward``) is not diffusers' FeedForward that the generic chunking
hooks, and their attention's SDPA runs on a fused kernel: no chunk cell (chunk=None).
"""

import torch

from tiny_pipelines import _hunyuan_vae

FAMILY = "kandinsky5"

# HunyuanVideo's VAE: decode slices not its one-call decode; CFG is two calls a step
MATRIX = dict(inexact_decode=True, cfg_calls=2, chunk=None,
              notes="MemoryPlan(chunk_size=...) splits nothing in its blocks (see the module docstring)")


TEXT_DIM, POOLED_DIM = 16, 8


def tiny_transformer(s, visual_cond=False):
    from diffusers import Kandinsky5Transformer3DModel

    s()
    return Kandinsky5Transformer3DModel(
        in_visual_dim=4,
        in_text_dim=TEXT_DIM,
        in_text_dim2=POOLED_DIM,
        time_dim=16,
        out_visual_dim=4,
        patch_size=(1, 2, 2),
        model_dim=32,
        ff_dim=64,
        num_text_blocks=1,
        num_visual_blocks=2,
        axes_dims=(4, 6, 6),
        visual_cond=visual_cond,
    )


def call_kwargs(s):
    seq, neg = 12, 6
    return dict(
        prompt_embeds_qwen=s.randn(1, seq, TEXT_DIM),
        prompt_embeds_clip=s.randn(1, POOLED_DIM),
        prompt_cu_seqlens=torch.tensor([0, seq], dtype=torch.int32),
        negative_prompt_embeds_qwen=s.randn(1, neg, TEXT_DIM),
        negative_prompt_embeds_clip=s.randn(1, POOLED_DIM),
        negative_prompt_cu_seqlens=torch.tensor([0, neg], dtype=torch.int32),
        height=32,
        width=32,
        num_frames=9,
        guidance_scale=5.0,
    )


def build(s):
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline

    transformer = tiny_transformer(s)
    vae = _hunyuan_vae(s)
    pipe = Kandinsky5T2VPipeline(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None,
                                 text_encoder_2=None, tokenizer_2=None,
                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    return pipe, call_kwargs(s)
