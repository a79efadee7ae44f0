"""Sliced latent decode (DESIGN.md §4.3), first part: per-frame image VAEs.

``AutoencoderKL`` (TextToVideoSD, AnimateDiff) decodes each frame on its own, so decoding the
(frames, C, h, w) latent batch ``decode_slices`` frames at a time is exact; every slice is written
into one preallocated output (on the host with ``decode_to_host``, so finished frames leave the
device at once), and only one slice's decoder activations exist at a time.

Not covered yet (refused with a clear error rather than ignored): the video VAEs with temporal
layers (Wan, HunyuanVideo, CogVideoX, LTX, SVD's temporal decoder), which need their causal caches
carried across slices.
"""

from __future__ import annotations

import torch

_EXACT_PER_FRAME = ("AutoencoderKL",)


def check_decode_slicing(vae) -> None:
    name = type(vae).__name__
    if name not in _EXACT_PER_FRAME:
        raise ValueError(
            f"MemoryPlan.decode_slices: sliced decode is implemented for per-frame VAEs ({', '.join(_EXACT_PER_FRAME)}: "
            f"TextToVideoSD, AnimateDiff), not yet for {name}"
        )


def sliced_decode(frames_per_slice: int, to_host: bool):
    """A wrapper factory for ``vae.decode`` (see lightcache.engine._wrap_method)."""

    def make(original):
        def decode(z, *args, return_dict: bool = True, **kwargs):
            from diffusers.models.autoencoders.vae import DecoderOutput

            n = z.shape[0]
            if n <= frames_per_slice and not to_host:
                return original(z, *args, return_dict=return_dict, **kwargs)
            out = None
            for start in range(0, n, frames_per_slice):
                part = original(z[start : start + frames_per_slice], *args, return_dict=False, **kwargs)[0]
                if out is None:
                    device = torch.device("cpu") if to_host else part.device
                    out = torch.empty((n,) + tuple(part.shape[1:]), dtype=part.dtype, device=device,
                                      pin_memory=to_host and part.device.type == "cuda")
                out[start : start + part.shape[0]].copy_(part, non_blocking=to_host)
                del part
            if to_host and z.device.type == "cuda":
                torch.cuda.current_stream(z.device).synchronize()
            return DecoderOutput(sample=out) if return_dict else (out,)

        return decode

    return make
