"""Train the DiT proxy: a tiny AutoencoderKLWan (reconstruction), then a WanTransformer3DModel with flow
matching on its latents, saved as a stock WanPipeline folder in lightcache/proxy/weights/wan_proxy/.

Run through train_all.py (which records the settings), or alone:
    python benchmarks/proxy/train_wan.py --vae-steps 800 --dit-steps 2200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (
    WEIGHTS_DIR, add_options, clip_chunks, evaluate_pipeline, fit_autoencoder, fit_denoiser, log, run_stage,
    run_standalone, seed_all,
)

OUT = WEIGHTS_DIR / "wan_proxy"

# One level of down-sampling: 2x in space and 2x in time. WanPipeline requires num_frames % scale_factor_temporal
# == 1, which no frame count satisfies when the factor is 1 (it then silently adds a frame), so a temporal factor
# of 2 is the smallest that keeps the stock pipeline call exact: 9 frames -> 5 latent frames. Wan2.2-style
# residual blocks (is_residual): their parameter-free space/time-to-channel shortcuts made reconstruction train
# several times faster than Wan2.1's plain blocks.
VAE_CONFIG = dict(
    base_dim=16,
    z_dim=8,
    dim_mult=[1, 1],
    is_residual=True,
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[True],
    scale_factor_temporal=2,
    scale_factor_spatial=2,
)
DIT_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=8,
    out_channels=8,
    text_dim=64,
    freq_dim=256,
    ffn_dim=512,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
# Wan2.1's flow shift; the proxies' trajectories then spend their early steps at high noise as Wan does.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
NULL_PROB = 0.1


def make_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**VAE_CONFIG, latents_mean=[0.0] * 8, latents_std=[1.0] * 8)


@torch.no_grad()
def vae_psnr(vae, x: torch.Tensor) -> float:
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    mse = F.mse_loss((y + 1) / 2, (x + 1) / 2).item()
    return 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def fast_encode(vae, x: torch.Tensor) -> torch.Tensor:
    """``vae._encode`` in two encoder calls (first frame, then the rest) instead of one per 4-frame chunk.
    The causal convs and the stride-2 time conv see the same frames either way (checked in train_vae)."""
    vae.clear_cache()
    a = vae.encoder(x[:, :, :1], feat_cache=vae._enc_feat_map, feat_idx=[0])
    b = vae.encoder(x[:, :, 1:], feat_cache=vae._enc_feat_map, feat_idx=[0])
    h = vae.quant_conv(torch.cat([a, b], 2))
    vae.clear_cache()
    return h


def fast_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae._decode`` in two decoder calls instead of one per latent frame, without the final clamp (so
    out-of-range outputs still get gradients)."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    a = vae.decoder(x[:, :, :1], feat_cache=vae._feat_map, feat_idx=[0], first_chunk=True)
    b = vae.decoder(x[:, :, 1:], feat_cache=vae._feat_map, feat_idx=[0])
    vae.clear_cache()
    return torch.cat([a, b], 2)


def _reconstruct(vae, x: torch.Tensor):
    mu = fast_encode(vae, x)[:, : VAE_CONFIG["z_dim"]]
    return mu, fast_decode(vae, mu)


def train_vae(steps: int, batch: int, lr: float, work: Path, seed: int = 1, latent_penalty: float = 1e-4):
    """Deterministic autoencoder training: posterior mean, object-weighted MSE + L1 and a small L2 pull on the
    latents (converged much faster here than sampling the posterior). Whole 9-frame clips: the causal encoder
    and decoder run in chunks of 1 + 4 + 4 frames, and a model trained on 5-frame crops reconstructed the third
    chunk (whose history is a full chunk, not one frame) badly."""
    seed_all(seed)
    vae = make_vae().train()
    zc = VAE_CONFIG["z_dim"]
    val_x = next(clip_chunks(16, seed=900))[0]
    with torch.no_grad():  # the training shortcut must match the pipeline's own chunked path
        h_ref, h_fast = vae._encode(val_x[:2]), fast_encode(vae, val_x[:2])
        d_ref, d_fast = vae._decode(h_ref[:, :zc]).sample, fast_decode(vae, h_ref[:, :zc]).clamp(-1, 1)
        assert torch.allclose(h_ref, h_fast, atol=1e-5) and torch.allclose(d_ref, d_fast, atol=1e-5)
    vae, best, seconds = fit_autoencoder(
        vae, val_x, steps, batch, lr, work, name="wan_vae", data_seed=10_000, latent_penalty=latent_penalty,
        prepare=lambda x: x.contiguous(), reconstruct=_reconstruct, psnr=vae_psnr,
    )
    return vae, {"steps": steps, "batch": batch, "lr": lr, "latent_penalty": latent_penalty,
                 "loss": "object-weighted mse + l1", "val_psnr_db": round(best, 2), "seconds": seconds,
                 "params": sum(p.numel() for p in vae.parameters())}


@torch.no_grad()
def encode_dataset(vae, n: int, seed: int = 2):
    """Posterior means of ``n`` clips; sets the VAE's latents_mean/std config to their per-channel statistics
    (WanPipeline un-normalises with them before decoding) and returns the normalised latents."""
    t0 = time.time()
    zs, cs = [], []
    for x, c in clip_chunks(n, seed=seed, chunk=128):
        zs.append(vae.encode(x).latent_dist.mode())
        cs.append(c)
    z, conds = torch.cat(zs), torch.cat(cs)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    z = (z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    log(f"encoded {n} clips -> {tuple(z.shape)} in {time.time() - t0:.0f}s; mean {mean.numpy().round(3)} "
        f"std {std.numpy().round(3)}")
    return z.contiguous(), conds


def make_pipeline(transformer, vae):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG))


@torch.no_grad()
def flow_val_loss(model, z, conds, table) -> float:
    """Flow-matching loss on fixed latents, noise and an even sigma grid: comparable across checkpoints."""
    g = torch.Generator().manual_seed(123)
    noise = torch.randn(z.shape, generator=g)
    sigma = (torch.arange(z.shape[0]) + 0.5) / z.shape[0]
    tot = 0.0
    for i in range(0, z.shape[0], 16):
        s = sigma[i : i + 16].view(-1, 1, 1, 1, 1)
        xt = (1 - s) * z[i : i + 16] + s * noise[i : i + 16]
        v = model(xt, s.flatten() * 1000, table[conds[i : i + 16]], return_dict=False)[0]
        tot += F.mse_loss(v, noise[i : i + 16] - z[i : i + 16], reduction="sum").item()
    return tot / z.numel()


def train_dit(z, conds, vae, steps: int, batch: int, lr: float, seed: int = 3, ema_decay: float = 0.998,
              ckpt_every: int = 200, n_val: int = 64):
    """Flow matching as WanPipeline + FlowMatchEulerDiscreteScheduler sample it: x_t = (1-s) x0 + s*noise,
    target v = noise - x0, timestep = 1000 s. Conditions are dropped to the null embedding with p = 0.1."""
    from diffusers import WanTransformer3DModel

    def loss(model, x0, embeds, noise, g):
        s = torch.rand(x0.shape[0], generator=g)
        xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        v = model(xt, s * 1000, embeds, return_dict=False)[0]
        return F.mse_loss(v, noise - x0)

    return fit_denoiser(
        lambda: WanTransformer3DModel(**DIT_CONFIG), z, conds, steps, batch, lr, name="dit", seed=seed,
        ema_decay=ema_decay, warmup=100, ckpt_every=ckpt_every, n_val=n_val, text_dim=DIT_CONFIG["text_dim"],
        null_prob=NULL_PROB, loss=loss, val_loss=flow_val_loss,
        save=lambda ema_model: make_pipeline(ema_model, vae).save_pretrained(OUT, safe_serialization=True),
    )


@torch.no_grad()
def evaluate(n_prompts: int = 8, steps: int = 10, guidance: float = 4.0) -> dict:
    """Generate through the saved pipeline and measure colour / motion adherence."""
    from lightcache.proxy.load import load_wan_proxy

    return evaluate_pipeline(load_wan_proxy(path=OUT), "wan", n_prompts, steps, guidance)


def main(args) -> None:
    from diffusers import AutoencoderKLWan

    run_stage(
        args, OUT, vae_name="wan_vae", vae_cls=AutoencoderKLWan, key="wan_dit", evaluate=evaluate,
        train_vae=lambda work: train_vae(args.vae_steps, args.vae_batch, args.vae_lr, work),
        encode=lambda vae: encode_dataset(vae, args.clips),
        train=lambda z, conds, vae: train_dit(z, conds, vae, args.dit_steps, args.dit_batch, args.dit_lr),
    )


DEFAULTS = dict(vae_steps=800, vae_batch=8, vae_lr=3e-3, clips=4000, dit_steps=2200, dit_batch=16, dit_lr=8e-4)


def add_args(p: argparse.ArgumentParser) -> None:
    add_options(p, DEFAULTS)


if __name__ == "__main__":
    run_standalone(__doc__, add_args, main)
