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
    EMA, WEIGHTS_DIR, clip_chunks, dir_bytes, log, lr_at, recon_loss, seed_all, set_threads, write_summary,
)

from lightcache.proxy.data import NUM_CONDITIONS, generate_clips, null_embeds, prompt_embeds

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
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    best, t0, run = -1.0, time.time(), []
    for step in range(steps):
        clips, _ = generate_clips(batch, seed=10_000 + step)
        x = torch.from_numpy(clips).permute(0, 2, 1, 3, 4).mul(2).sub(1).contiguous()
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=30)
        mu = fast_encode(vae, x)[:, :zc]
        y = fast_decode(vae, mu)
        rec = F.mse_loss(y, x)
        loss = recon_loss(y, x) + latent_penalty * mu.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        run.append(rec.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            vae.eval()
            psnr = vae_psnr(vae, val_x)
            vae.train()
            log(f"wan-vae step {step + 1}/{steps} rec_mse {sum(run) / len(run):.5f} val_psnr {psnr:.2f} dB "
                f"({time.time() - t0:.0f}s)")
            run = []
            if psnr > best:
                best = psnr
                vae.save_pretrained(work / "wan_vae_best")
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(work / "wan_vae_best").eval()
    return vae, {"steps": steps, "batch": batch, "lr": lr, "latent_penalty": latent_penalty,
                 "loss": "object-weighted mse + l1", "val_psnr_db": round(best, 2), "seconds": round(time.time() - t0, 1),
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

    seed_all(seed)
    model = WanTransformer3DModel(**DIT_CONFIG).train()
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    dim = DIT_CONFIG["text_dim"]
    table = torch.cat([prompt_embeds(list(range(NUM_CONDITIONS)), dim), null_embeds(1, dim)])  # last row: null
    val_z, val_c, z, conds = z[:n_val], conds[:n_val], z[n_val:], conds[n_val:]
    g = torch.Generator().manual_seed(seed)
    best, t0, run, n = float("inf"), time.time(), [], z.shape[0]
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = z[idx]
        c = torch.where(torch.rand(batch, generator=g) < NULL_PROB, NUM_CONDITIONS, conds[idx])
        noise = torch.randn(x0.shape, generator=g)
        s = torch.rand(batch, generator=g)
        xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=100)
        v = model(xt, s * 1000, table[c], return_dict=False)[0]
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        run.append(loss.item())
        if (step + 1) % 25 == 0:
            log(f"dit step {step + 1}/{steps} loss {sum(run) / len(run):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({time.time() - t0:.0f}s, {(time.time() - t0) / (step + 1):.2f}s/step)")
            run = []
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            vl = flow_val_loss(ema.model, val_z, val_c, table)
            log(f"dit checkpoint step {step + 1}: ema val loss {vl:.4f} (best {min(best, vl):.4f})")
            if vl < best:
                best = vl
                make_pipeline(ema.model, vae).save_pretrained(OUT, safe_serialization=True)
    return {"steps": steps, "batch": batch, "lr": lr, "ema_decay": ema_decay, "null_prob": NULL_PROB,
            "train_clips": n, "best_ema_val_loss": round(best, 4), "seconds": round(time.time() - t0, 1),
            "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def evaluate(n_prompts: int = 8, steps: int = 10, guidance: float = 4.0) -> dict:
    """Generate through the saved pipeline and measure colour / motion adherence."""
    from lightcache.proxy.data import ALL_CONDITIONS, dominant_colour, motion_direction
    from lightcache.proxy.load import call_kwargs, load_wan_proxy

    pipe = load_wan_proxy(path=OUT)
    conds = [ALL_CONDITIONS[(i * 7) % len(ALL_CONDITIONS)] for i in range(n_prompts)]
    frames = pipe(**call_kwargs(pipe, conds, num_inference_steps=steps, guidance_scale=guidance, seed=0)).frames
    colour = sum(dominant_colour(f) == c.colour for f, c in zip(frames, conds)) / n_prompts
    motion = sum(motion_direction(f) == c.motion for f, c in zip(frames, conds)) / n_prompts
    log(f"wan proxy eval ({n_prompts} prompts, {steps} steps, cfg {guidance}): colour {colour:.2f} motion {motion:.2f}")
    return {"prompts": n_prompts, "steps": steps, "guidance": guidance, "colour_acc": colour, "motion_acc": motion}


def reuse_or_train_vae(args, work: Path):
    """With --reuse-vaes, take the finished VAE of an earlier run from the work folder (a rerun from scratch
    trains the identical VAE: same seeds), else train it; the training record is kept next to it."""
    import json

    from diffusers import AutoencoderKLWan

    info = work / "wan_vae_info.json"
    if getattr(args, "reuse_vaes", False) and info.exists():
        log(f"reusing {work / 'wan_vae_best'}")
        return AutoencoderKLWan.from_pretrained(work / "wan_vae_best").eval(), dict(json.loads(info.read_text()), reused=True)
    vae, vae_info = train_vae(args.vae_steps, args.vae_batch, args.vae_lr, work)
    info.write_text(json.dumps(vae_info))
    return vae, vae_info


def main(args) -> None:
    set_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary = Path(args.summary)
    t0 = time.time()
    vae, vae_info = reuse_or_train_vae(args, work)
    z, conds = encode_dataset(vae, args.clips)
    OUT.mkdir(parents=True, exist_ok=True)
    write_summary(summary, "wan_vae", vae_info)
    dit_info = train_dit(z, conds, vae, args.dit_steps, args.dit_batch, args.dit_lr)
    dit_info["eval"] = evaluate()
    dit_info["folder_bytes"] = dir_bytes(OUT)
    dit_info["stage_seconds"] = round(time.time() - t0, 1)
    write_summary(summary, "wan_dit", dit_info)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=3e-3)
    p.add_argument("--clips", type=int, default=4000)
    p.add_argument("--dit-steps", type=int, default=2200)
    p.add_argument("--dit-batch", type=int, default=16)
    p.add_argument("--dit-lr", type=float, default=8e-4)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_args(ap)
    ap.add_argument("--work", default="/tmp/lightcache_proxy_work")
    ap.add_argument("--summary", default=str(Path(__file__).with_name("train_summary.json")))
    main(ap.parse_args())
