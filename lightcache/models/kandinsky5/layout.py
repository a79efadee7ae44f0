"""Kandinsky 5's latent: channels last, (B, T, H, W, C) (image-to-video and visual-conditioned
checkpoints concatenate the condition latent and a mask on the channels). Its rotary positions are
passed by the pipeline: ``visual_rope_pos`` = [frame, row, column] positions of the token grid
(aranges over T, H / p, W / p), so a trial call on a pooled latent gets the aranges of the pooled
grid. Sparse ("nabla") attention takes a block mask made for one grid size: refused for the
trial.

The pipeline updates its latent in place (``latents[..., :C] = scheduler.step(...)``) and passes
the denoiser ``latents.to(dtype)``, the same tensor when the dtypes match: a view of a call's input
kept for a later step (EasyCache's previous input and rate input, PreciseCache's input signal)
would change under the policy. So the layout's views of the latent are copies (one latent a
call; the latent is small next to the blocks' features)."""

from __future__ import annotations

import torch

from lightcache.models.layout import LatentLayout


class Kandinsky5Layout(LatentLayout):
    tensor_format = "BFHWC"
    channel_dim = 4

    def to_bcthw(self, x, call_args=(), call_kwargs=None, grid=None):
        return x.permute(0, 4, 1, 2, 3).clone()

    def narrow_channels(self, x, n):
        return x.narrow(self.channel_dim, 0, n).clone()

    def latent_part(self, x, out):
        return super().latent_part(x, out).clone()

    def from_bcthw(self, video):
        return video.permute(0, 2, 3, 4, 1)

    def patch_multiple(self, model):
        return tuple(int(p) for p in model.config.patch_size)

    def trial_refusal(self, model):
        if getattr(model.config, "attention_type", "regular") == "nabla":
            return ("Kandinsky5Transformer3DModel with attention_type='nabla' takes a sparse block mask made for one "
                    "latent size (the pipeline's sparse_params)")
        return None

    def resize_arguments(self, model, call, grid, pooled):
        pos = call.get("visual_rope_pos")
        if isinstance(pos, (list, tuple)) and len(pos) == 3:
            p = self.patch_multiple(model)
            call.set("visual_rope_pos", [torch.arange(g // q, device=t.device, dtype=t.dtype)
                                         for g, q, t in zip(pooled, p, pos)])
