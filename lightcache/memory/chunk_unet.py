"""Feature chunk, video-UNet part: spatial work over frame chunks, temporal work over space chunks.

A video UNet keeps frames in the batch dimension, (batch·frames, C, H, W). The modules chunked
here treat every batch item on its own, so running them over slices of the batch is exact:

- ``ResnetBlock2D`` (the spatial resnets, SVD's ``spatial_res_block`` included): GroupNorm over
  one frame's (C, H, W), 2-D convolutions, the per-item time embedding: chunked over frames.
- ``BasicTransformerBlock``: per-item LayerNorms, attention within one item's sequence, FFN. Its
  batch is frames in a spatial transformer (sequence = pixels) and pixels in a temporal one
  (AnimateDiff's motion modules, TextToVideoSD's temporal transformers: sequence = frames), so the
  same hook chunks spatial blocks over frames and temporal blocks over space. The GroupNorm that
  opens those temporal transformers spans all frames and pixels of a video; it runs before the
  blocks, whole, so its statistics are never split.
- SVD's ``TemporalBasicTransformerBlock``: input (batch·frames, pixels, C), attention over frames
  per pixel: chunked over pixels (all frames of each pixel together).

Not chunked: GroupNorms over frames (SVD's ``TemporalResnetBlock``, TextToVideoSD's
``TemporalConvLayer``, the temporal transformers' input norm): their statistics span the whole
clip, and their tensors are no wider than the block's input.

A chunk holds whole items: as many frames (or pixels) as fit the chunk's rows (tokens), at least
one. Pieces are written into one preallocated output. Each piece is a call of the module's own
forward (whatever is registered beneath the chunk hook included), never a computation from its
parameters: LoRA, layerwise casting, quantised or offloaded layers inside apply as unchunked, and a
hook on a layer inside fires once per piece.
"""

from __future__ import annotations

import torch

from lightcache.memory.chunk_spec import chunk_hook_base, count


def _slice_tree(x, n, b0, b1):
    """Batch items [b0, b1) of every tensor in ``x`` (nested tuples/lists/dicts) whose first
    dimension is the batch ``n``; other values (broadcast tensors, numbers, None) as they are."""
    if isinstance(x, torch.Tensor):
        return x[b0:b1] if x.dim() >= 1 and x.shape[0] == n else x
    if isinstance(x, (tuple, list)):
        return type(x)(_slice_tree(v, n, b0, b1) for v in x)
    if isinstance(x, dict):
        return {k: _slice_tree(v, n, b0, b1) for k, v in x.items()}
    return x


class BatchChunkHook(chunk_hook_base()):
    """Runs a batch-independent module over slices of its first input's batch dimension.

    The batch is that of the module's main input (its first positional argument, or the keyword
    ``sample_name``); every tensor argument with that batch is sliced alongside. The chunk is in
    rows (tokens): items per piece = rows // tokens per item, at least one. ``row_width(module,
    x)`` is the per-token width of a piece's widest intermediate (for a byte budget)."""

    def __init__(self, spec, sample_name: str, row_width):
        super().__init__()
        self.spec = spec
        self.sample_name = sample_name
        self.row_width = row_width
        self.split_calls = 0

    def new_forward(self, module, *args, **kwargs):
        x = args[0] if args else kwargs[self.sample_name]
        n = x.shape[0]
        tokens = _tokens_per_item(x)
        what = f"one batch item (frame or pixel, {tokens} tokens) of {type(module).__name__}"
        items = self.spec.items(tokens, self.row_width(module, x) * x.element_size(), what)
        if items >= n:
            return self.fn_ref.original_forward(*args, **kwargs)
        self.split_calls += 1
        out = None
        for b0 in range(0, n, items):
            b1 = min(b0 + items, n)
            piece = self.fn_ref.original_forward(*_slice_tree(args, n, b0, b1), **_slice_tree(kwargs, n, b0, b1))
            if not isinstance(piece, torch.Tensor):
                raise TypeError(
                    f"MemoryPlan.chunk_size: {type(module).__name__} returned {type(piece).__name__}, expected a tensor"
                )
            if out is None:
                out = piece.new_empty((n, *piece.shape[1:]))
            out[b0:b1] = piece
            del piece
        count(-(-n // items), out.numel() * out.element_size())
        return out


def _tokens_per_item(x: torch.Tensor) -> int:
    """Tokens of one batch item: H·W for (N, C, H, W) feature maps, L for (N, L, C) sequences."""
    if x.dim() == 4:
        return x.shape[2] * x.shape[3]
    if x.dim() == 3:
        return x.shape[1]
    raise ValueError(f"MemoryPlan.chunk_size: cannot chunk an input of shape {tuple(x.shape)}")


def _resnet_width(module, x):
    # conv outputs are out_channels wide, the normalised input in_channels wide
    return max(module.in_channels, module.out_channels or module.in_channels)


def _sequence_width(module, x):
    return x.shape[-1]


class TemporalPixelChunkHook(chunk_hook_base()):
    """SVD's ``TemporalBasicTransformerBlock`` over chunks of pixels: input (B·F, S, C) and its
    time context (B·S, T, C) are sliced on the pixel axis; every piece holds all F frames."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.split_calls = 0

    def new_forward(self, module, hidden_states, num_frames, encoder_hidden_states=None):
        bf, seq, width = hidden_states.shape
        batch = bf // num_frames
        per_pixel = batch * num_frames  # tokens of one pixel position across the batch
        what = f"one pixel ({per_pixel} tokens: all frames) of {type(module).__name__}"
        pixels = self.spec.items(per_pixel, width * hidden_states.element_size(), what)
        if pixels >= seq:
            return self.fn_ref.original_forward(hidden_states, num_frames, encoder_hidden_states)
        self.split_calls += 1
        ctx = None
        if encoder_hidden_states is not None:
            ctx = encoder_hidden_states.unflatten(0, (batch, seq))
        out = None
        for s0 in range(0, seq, pixels):
            s1 = min(s0 + pixels, seq)
            piece_ctx = None if ctx is None else ctx[:, s0:s1].flatten(0, 1)
            piece = self.fn_ref.original_forward(hidden_states[:, s0:s1], num_frames, piece_ctx)
            if out is None:
                out = piece.new_empty((bf, seq, piece.shape[-1]))
            out[:, s0:s1] = piece
            del piece
        count(-(-seq // pixels), out.numel() * out.element_size())
        return out


def unet_hooks(blocks, spec):
    """(module, hook) pairs for the chunkable modules inside ``blocks``."""
    from diffusers.models.attention import BasicTransformerBlock, TemporalBasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    pairs, seen = [], set()
    for block in blocks:
        for m in block.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            if isinstance(m, ResnetBlock2D):
                pairs.append((m, BatchChunkHook(spec, "input_tensor", _resnet_width)))
            elif isinstance(m, BasicTransformerBlock):
                pairs.append((m, BatchChunkHook(spec, "hidden_states", _sequence_width)))
            elif isinstance(m, TemporalBasicTransformerBlock):
                pairs.append((m, TemporalPixelChunkHook(spec)))
    return pairs

