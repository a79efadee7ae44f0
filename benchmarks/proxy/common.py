"""Shared pieces of the proxy training scripts: logging, seeding, LR schedule, EMA, data chunks."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # scripts run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from lightcache.proxy.data import NUM_CONDITIONS, generate_clips, null_embeds, prompt_embeds  # noqa: E402
from lightcache.proxy.load import WEIGHTS_DIR  # noqa: E402

_T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {msg}", flush=True)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


class EMA:
    """Exponential moving average of a model's parameters; short runs benefit a lot from it."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))  # warm-up: early averages follow the model closely
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)


def object_weight(x: torch.Tensor, weight: float = 4.0, threshold: float = 0.15) -> torch.Tensor:
    """Per-pixel loss weight 1 + ``weight`` on the coloured object (chroma > ``threshold``; x in [-1, 1], channels
    on dim 1). Objects cover ~10% of a frame and carry the conditioning; unweighted, small autoencoders spend
    hundreds of steps on the background before reconstructing them at all."""
    chroma = (x - x.mean(dim=1, keepdim=True)).norm(dim=1, keepdim=True) / 2
    return 1.0 + weight * (chroma > threshold).float()


def recon_loss(y: torch.Tensor, x: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """Object-weighted MSE + L1, normalised by the mean weight."""
    w = object_weight(x, weight)
    d = y - x
    return (w * (d.pow(2) + d.abs())).mean() / w.mean()


def clip_chunks(n: int, seed: int, chunk: int = 256):
    """Yield (clips in [-1, 1] as (b, 3, F, H, W) float tensors, condition indices) in chunks, so the pixel
    data set never sits in memory whole. Chunk k uses seed*1000+k: deterministic and independent."""
    for k, start in enumerate(range(0, n, chunk)):
        clips, conds = generate_clips(min(chunk, n - start), seed=seed * 1000 + k)
        x = torch.from_numpy(clips).permute(0, 2, 1, 3, 4).mul(2).sub(1).contiguous()
        yield x, torch.from_numpy(conds)


def write_summary(path: Path, key: str, value: dict) -> None:
    """Merge ``value`` under ``key`` into a JSON summary (read by TRAINING.md)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def set_threads() -> None:
    torch.set_num_threads(int(os.environ.get("PROXY_THREADS", "2")))


# ----------------------------------------------------------------------------------------------
# Training stages shared by train_wan.py and train_unet.py. The two proxies differ in their models, their
# reconstruction / denoising objectives and their names; the loops around them (data order, LR schedule, EMA,
# checkpointing on validation, logging) were the same code twice, so they live here once. Changing one of them
# changes both proxies' training: the committed weights were trained by this exact sequence of random draws.


def fit_autoencoder(vae, val_x: torch.Tensor, steps: int, batch: int, lr: float, work: Path, *, name: str,
                    data_seed: int, latent_penalty: float, prepare, reconstruct, psnr):
    """Train ``vae`` on fresh clips (``batch`` per step, clip seeds ``data_seed + step``), checkpointing the best
    validation PSNR to ``work / f"{name}_best"``, and return (that best VAE reloaded, best PSNR, seconds).

    ``prepare(x)`` turns a (b, 3, F, H, W) batch in [-1, 1] into the VAE's input; ``reconstruct(vae, x)``
    returns (latent mean, reconstruction), penalised by ``latent_penalty`` * mean(mean^2); ``psnr(vae, val_x)``
    scores the model in eval mode. Log lines carry
    ``name`` with '-' for '_' (``kl_vae`` logs as ``kl-vae``)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    label, best_dir = name.replace("_", "-"), work / f"{name}_best"
    best, t0, run = -1.0, time.time(), []
    for step in range(steps):
        clips, _ = generate_clips(batch, seed=data_seed + step)
        x = prepare(torch.from_numpy(clips).permute(0, 2, 1, 3, 4).mul(2).sub(1))
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=30)
        mu, y = reconstruct(vae, x)
        rec = F.mse_loss(y, x)
        loss = recon_loss(y, x) + latent_penalty * mu.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        run.append(rec.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            vae.eval()
            score = psnr(vae, val_x)
            vae.train()
            log(f"{label} step {step + 1}/{steps} rec_mse {sum(run) / len(run):.5f} val_psnr {score:.2f} dB "
                f"({time.time() - t0:.0f}s)")
            run = []
            if score > best:
                best = score
                vae.save_pretrained(best_dir)
    vae = type(vae).from_pretrained(best_dir).eval()
    return vae, best, round(time.time() - t0, 1)


def fit_denoiser(make_model, z: torch.Tensor, conds: torch.Tensor, steps: int, batch: int, lr: float, *, name: str,
                 seed: int, ema_decay: float, warmup: int, ckpt_every: int, n_val: int, text_dim: int,
                 null_prob: float, loss, val_loss, save) -> dict:
    """Train ``make_model()`` (built after seeding with ``seed``) on latents ``z`` with conditions ``conds``,
    keeping an EMA; every ``ckpt_every`` steps (and at the end) score the EMA with ``val_loss(ema_model, val_z,
    val_c, table)`` on the first ``n_val`` clips and ``save(ema_model)`` when it improves. Returns the training
    record.

    Each step draws, from one generator seeded with ``seed``: batch indices, condition dropout (to the null
    embedding, the table's last row, with probability ``null_prob``) and Gaussian noise; then
    ``loss(model, x0, embeds, noise, g)`` draws the noise level from ``g`` and returns the objective."""
    seed_all(seed)
    model = make_model().train()
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    table = torch.cat([prompt_embeds(list(range(NUM_CONDITIONS)), text_dim), null_embeds(1, text_dim)])
    val_z, val_c, z, conds = z[:n_val], conds[:n_val], z[n_val:], conds[n_val:]
    g = torch.Generator().manual_seed(seed)
    best, t0, run, n = float("inf"), time.time(), [], z.shape[0]
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = z[idx]
        c = torch.where(torch.rand(batch, generator=g) < null_prob, NUM_CONDITIONS, conds[idx])
        noise = torch.randn(x0.shape, generator=g)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, lr, warmup=warmup)
        step_loss = loss(model, x0, table[c], noise, g)
        opt.zero_grad(set_to_none=True)
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        run.append(step_loss.item())
        if (step + 1) % 25 == 0:
            log(f"{name} step {step + 1}/{steps} loss {sum(run) / len(run):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({time.time() - t0:.0f}s, {(time.time() - t0) / (step + 1):.2f}s/step)")
            run = []
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            vl = val_loss(ema.model, val_z, val_c, table)
            log(f"{name} checkpoint step {step + 1}: ema val loss {vl:.4f} (best {min(best, vl):.4f})")
            if vl < best:
                best = vl
                save(ema.model)
    return {"steps": steps, "batch": batch, "lr": lr, "ema_decay": ema_decay, "null_prob": null_prob,
            "train_clips": n, "best_ema_val_loss": round(best, 4), "seconds": round(time.time() - t0, 1),
            "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def evaluate_pipeline(pipe, name: str, n_prompts: int, steps: int, guidance: float, conds=None, seed: int = 0,
                      batch: int = 16) -> dict:
    """Generate through a saved proxy pipeline and measure colour / motion adherence. ``conds`` (Conditions)
    replaces the default spread of ``n_prompts`` conditions; prompts are generated ``batch`` at a time, each
    batch from ``seed`` (the default, n_prompts <= 16, is one call, as the training evaluations ran)."""
    from lightcache.proxy.data import ALL_CONDITIONS, dominant_colour, motion_direction
    from lightcache.proxy.load import call_kwargs

    if conds is None:
        conds = [ALL_CONDITIONS[(i * 7) % len(ALL_CONDITIONS)] for i in range(n_prompts)]
    n_prompts = len(conds)
    frames = [f for i in range(0, n_prompts, batch) for f in pipe(**call_kwargs(
        pipe, conds[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, seed=seed)).frames]
    colour = sum(dominant_colour(f) == c.colour for f, c in zip(frames, conds)) / n_prompts
    motion = sum(motion_direction(f) == c.motion for f, c in zip(frames, conds)) / n_prompts
    log(f"{name} proxy eval ({n_prompts} prompts, {steps} steps, cfg {guidance}): "
        f"colour {colour:.2f} motion {motion:.2f}")
    return {"prompts": n_prompts, "steps": steps, "guidance": guidance, "colour_acc": colour, "motion_acc": motion}


def reuse_or_train_vae(args, work: Path, name: str, vae_cls, train):
    """With --reuse-vaes, take the finished VAE of an earlier run from the work folder (``{name}_best``; a rerun
    from scratch trains the identical VAE: same seeds), else ``train()`` it; the training record is kept next to
    it as ``{name}_info.json``."""
    info = work / f"{name}_info.json"
    if getattr(args, "reuse_vaes", False) and info.exists():
        log(f"reusing {work / f'{name}_best'}")
        return vae_cls.from_pretrained(work / f"{name}_best").eval(), dict(json.loads(info.read_text()), reused=True)
    vae, vae_info = train()
    info.write_text(json.dumps(vae_info))
    return vae, vae_info


def run_stage(args, out: Path, *, vae_name: str, vae_cls, train_vae, encode, key: str, train, evaluate) -> None:
    """One proxy end to end (the body of train_wan.main / train_unet.main): its VAE, trained into ``args.work``
    or reused (``train_vae(work)``), the encoded data set (``encode(vae)``), the denoiser saved into ``out``
    (``train(z, conds, vae)``), its evaluation, and the records under ``vae_name`` and ``key`` in the summary."""
    set_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary = Path(args.summary)
    t0 = time.time()
    vae, vae_info = reuse_or_train_vae(args, work, vae_name, vae_cls, lambda: train_vae(work))
    z, conds = encode(vae)
    out.mkdir(parents=True, exist_ok=True)
    write_summary(summary, vae_name, vae_info)
    info = train(z, conds, vae)
    info["eval"] = evaluate()
    info["folder_bytes"] = dir_bytes(out)
    info["stage_seconds"] = round(time.time() - t0, 1)
    write_summary(summary, key, info)


def add_options(p, defaults: dict) -> None:
    """``--name-with-dashes`` options typed and defaulted by ``defaults`` (keys with underscores)."""
    for name, default in defaults.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


def record_run(summary: Path, args) -> None:
    """Write the run's command, arguments and versions under "run" in ``summary`` (its folder made)."""
    import platform
    import sys

    summary.parent.mkdir(parents=True, exist_ok=True)
    write_summary(summary, "run", {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "args": vars(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    })


def run_standalone(doc: str, add_args, main) -> None:
    """Command line of a training script run on its own (train_all.py records more)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    add_args(ap)
    ap.add_argument("--work", default="/tmp/lightcache_proxy_work")
    ap.add_argument("--summary", default=str(Path(__file__).with_name("train_summary.json")))
    main(ap.parse_args())
