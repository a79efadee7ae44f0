"""Feature chunk, DiT part: a whole transformer block over sequence chunks -- the generic machinery
(the hook, the two passes, the swapped-in processors, the spec base classes). What is particular to
a family's blocks (which processor it expects, how a piece is cut from the block's arguments, its
rotary embedding, how attention output is finished) is a :class:`_Family` subclass in the family's
folder, ``lightcache/models/<family>/chunk.py`` (Wan, HunyuanVideo, CogVideoX, LTX-Video,
EasyAnimate), registered for its block classes by the family's registry entry; :func:`family_of`
finds it by the block's class MRO.

In these blocks only self-attention mixes tokens; everything else (norms, modulation, projections,
cross-attention queries, FFN, gated residuals) works on each token alone. So a block call runs as
two passes over pieces of the sequence, each piece a call of the block's own forward on the
piece's rows (the other arguments sliced alongside where they are per token):

1. key pass: the piece goes through the block up to self-attention, where a per-family processor
   computes the piece's keys and values (projection, key norm, rotary embedding with the tables
   sliced to the piece) into full-length K/V buffers, then stops the block (``_KeysDone``);
2. query pass: the piece goes through the whole block; self-attention computes the piece's
   queries and attends to the full K/V through the model's own attention call
   (``dispatch_attention_fn`` with the original processor's backend, or
   ``F.scaled_dot_product_attention`` where the original calls it directly); cross-attention
   keys/values (Wan, LTX) are computed once per block call. The piece's output rows go into one
   preallocated output.

The block's widest full-length tensors are then the output and K/V (3 rows per token), plus one
piece's intermediates (the FFN hidden rows, one piece's attention scores). The output is a new
tensor, not the input overwritten: block-level caches (BlockCache's D_j = out_j - in_j, diffusers'
cache hooks) may hold the block's input.

Joint-sequence families (CogVideoX, EasyAnimate, HunyuanVideo) attend over text and video tokens
together; their pieces are runs of video tokens or of text tokens (the other stream passed empty),
and HunyuanVideo's single-stream blocks, which concatenate the streams themselves, get runs of the
joint sequence split so that the last row of a piece is passed as its "text" (the split only
decides which rows the block concatenates first; the processor knows the true positions).

Piece size: the chunk counts rows (batch items x tokens) as elsewhere; a piece holds every batch
item of ``chunk // batch`` tokens (at least one token). With ``chunk_size="auto"`` the chunk is the
budget over the bytes of the block's widest row: its widest linear layer's row (the FFN hidden
state) or one query row of self-attention scores (heads x keys), whichever is larger.

The processors are swapped in on the block's attention modules for the duration of one block call
only; outside it the model holds its own processors. A call runs the block unchanged (attention
query-chunked by :class:`~lightcache.memory.chunk_attention.QueryChunkedSDPA`) when this path does
not apply: autograd on, a processor that is not the family's own (a user's custom processor,
fused projections, context parallelism), other hooks inside the block, or unexpected arguments.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lightcache.memory.chunk_attention import SplitMemo, _slice_mask, attention_modules, sdpa_row_bytes
from lightcache.memory.chunk_spec import ChunkSpec, chunk_hook_base, count


class _KeysDone(Exception):
    """Raised by a key-pass processor once the piece's keys and values are stored: the rest of the
    block is not needed for them."""


# -- per-call state shared by the driver and the processors ------------------------------------------


class _Piece:
    """Rows [at, at + n) of the block's key sequence (key order of the family). ``video`` is the
    slice of the piece's rows that are video tokens (they get the rotary embedding)."""

    __slots__ = ("at", "n", "video", "stream")

    def __init__(self, at: int, n: int, video: slice, stream: str):
        self.at, self.n, self.video, self.stream = at, n, video, stream


class _CallState:
    def __init__(self, key_len: int):
        self.key_len = key_len
        self.mode = "keys"
        self.piece: Optional[_Piece] = None
        self.k: Optional[torch.Tensor] = None  # (B, key_len, heads, head_dim)
        self.v: Optional[torch.Tensor] = None
        self.cross: Dict[int, tuple] = {}  # id(attention module) -> its cross-attention K/V

    def store(self, k: torch.Tensor, v: torch.Tensor) -> None:
        p = self.piece
        if self.k is None:
            self.k = k.new_empty((k.shape[0], self.key_len, *k.shape[2:]))
            self.v = v.new_empty((v.shape[0], self.key_len, *v.shape[2:]))
        self.k[:, p.at : p.at + p.n] = k
        self.v[:, p.at : p.at + p.n] = v


# -- rotary embeddings -----------------------------------------------------------------------------------


def _rope_embeddings(y: torch.Tensor, rot) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(y, rot, sequence_dim=1)  # y: (B, S, H, D), tables (S, D)


# -- the per-family spec: its base, and the joint-sequence base ---------------------------------------------


class _Family:
    """How one family's blocks are chunked. Subclasses (one per block kind, in the family's folder
    ``lightcache/models/<family>/chunk.py``, registered for block classes by the family's entry)
    name the processor class they expect, and define how a piece of the sequence is cut from the
    block's arguments, how rows are projected, and how the attention output is finished (what the
    original processor does after attention)."""

    processor: Tuple[str, str] = ("", "")  # (module, class) of the original processor
    also_processors: Tuple[Tuple[str, str], ...] = ()  # copies of it elsewhere (same code, another class)
    self_attn = "attn1"
    cross_attn: Optional[str] = None
    norm_before_heads = False  # q/k norm over all heads of a row (Wan, LTX) or per head
    sdpa_direct = False  # the original calls F.scaled_dot_product_attention on (B, H, S, D)
    text_first = False  # key order [text, video] (CogVideoX, EasyAnimate) or [video, text]
    joint_pieces = False  # pieces run over the joint sequence (HunyuanVideo single-stream)
    rotary_arg = "image_rotary_emb"
    rotary_seq_dim = 0  # the sequence dimension of the rotary tables

    def original_processor_class(self):
        import importlib

        module, name = self.processor
        return getattr(importlib.import_module(module), name)

    def original_processor_classes(self) -> tuple:
        """The processor classes this spec takes: its own and ``also_processors``."""
        import importlib

        return (self.original_processor_class(),) + tuple(
            getattr(importlib.import_module(m), n) for m, n in self.also_processors
        )

    # arguments --------------------------------------------------------------------------------
    def supported(self, a: dict) -> bool:
        h = a.get("hidden_states")
        return isinstance(h, torch.Tensor) and h.dim() == 3

    def text(self, a: dict) -> Optional[torch.Tensor]:
        """The text rows that are queries of the block's self-attention (joint families)."""
        return None

    def rows_changes(self, a: dict, r0: int, r1: int, t0: int, t1: int, joint=None) -> dict:
        """The block arguments of the piece with video rows [r0, r1) and text rows [t0, t1)."""
        h = a["hidden_states"]
        changes = {"hidden_states": h[:, r0:r1]}
        rot = a.get(self.rotary_arg)
        if rot is not None:
            changes[self.rotary_arg] = tuple(_narrow(t, self.rotary_seq_dim, r0, r1) for t in rot)
        return changes

    # processors -------------------------------------------------------------------------------
    def project(self, attn, x: torch.Tensor, kind: str, text: bool) -> torch.Tensor:
        """Rows ``x`` (B, S, width) -> their queries/keys/values (B, S, heads, head_dim), rotary
        embedding not applied."""
        separate = text and getattr(attn, "add_q_proj", None) is not None
        if separate:
            lin = {"q": attn.add_q_proj, "k": attn.add_k_proj, "v": attn.add_v_proj}[kind]
            norm = {"q": attn.norm_added_q, "k": attn.norm_added_k, "v": None}[kind]
        else:
            lin = {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v}[kind]
            norm = {"q": attn.norm_q, "k": attn.norm_k, "v": None}[kind]
        y = lin(x)
        if norm is not None and self.norm_before_heads:
            y = norm(y)
        y = y.unflatten(2, (attn.heads, -1))
        if norm is not None and not self.norm_before_heads:
            y = norm(y)
        return y

    def rope(self, y: torch.Tensor, rot) -> torch.Tensor:
        return _rope_embeddings(y, rot)

    def attend(self, original, q, k, v, mask) -> torch.Tensor:
        """Attention of (B, S, H, D) queries over full keys/values -> (B, S, H * D)."""
        if self.sdpa_direct:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=0.0, is_causal=False
            ).transpose(1, 2)
        else:
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            out = dispatch_attention_fn(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=0.0,
                is_causal=False,
                backend=getattr(original, "_attention_backend", None),
                parallel_config=None,  # calls with a parallel config never come here
            )
        return out.flatten(2, 3).to(q.dtype)

    def finish(self, attn, out: torch.Tensor, n_hidden: int, n_text: int):
        return attn.to_out[1](attn.to_out[0](out))

    def usable(self, block: nn.Module) -> bool:
        return True

    def key_pass(self, block: nn.Module, fwd, args: tuple, kwargs: dict, changes: dict) -> None:
        """Run the piece up to self-attention, whose key-pass processor stores the piece's keys and
        values and raises :class:`_KeysDone`: the block's own forward, stopped there."""
        fwd(*args, **kwargs)

    def place(self, result, piece: _Piece, outs: "_Outputs", a: dict) -> None:
        """Write a piece's block output into the block's outputs."""
        outs.write(0, result, piece.at)


def _narrow(t: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    return t.narrow(dim, start, stop - start)


class _Outputs:
    """The block's outputs (video rows; text rows for the joint families), allocated at the first
    piece written into them (dtype and width of the block's output)."""

    def __init__(self, n_video: int, n_text: int):
        self.lengths = (n_video, n_text)
        self.tensors = [None, None]

    def write(self, i: int, rows: torch.Tensor, at: int) -> None:
        if self.tensors[i] is None:
            self.tensors[i] = rows.new_empty((rows.shape[0], self.lengths[i], rows.shape[-1]))
        self.tensors[i][:, at : at + rows.shape[1]] = rows


class _Joint(_Family):
    """Text and video tokens attend together; pieces hold one stream's rows."""

    def text(self, a):
        return a["encoder_hidden_states"]

    def supported(self, a):
        enc = a.get("encoder_hidden_states")
        return super().supported(a) and isinstance(enc, torch.Tensor) and enc.dim() == 3 and enc.shape[1] > 0

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super().rows_changes(a, r0, r1, t0, t1)
        changes["encoder_hidden_states"] = a["encoder_hidden_states"][:, t0:t1]
        return changes

    def place(self, result, piece, outs, a):
        hidden, text = result
        if piece.stream == "video":
            outs.write(0, hidden, piece.at - self.video_at(a))
        else:
            outs.write(1, text, piece.at - self.text_at(a))

    def video_at(self, a):
        return a["encoder_hidden_states"].shape[1] if self.text_first else 0

    def text_at(self, a):
        return 0 if self.text_first else a["hidden_states"].shape[1]


def family_of(block: nn.Module) -> Optional[_Family]:
    """The chunking spec of ``block``'s class, found by its MRO in the model-family registry
    (lightcache.models: each family's ``chunking``), or None."""
    from lightcache.models import chunking_for

    return chunking_for(block)


# -- processors swapped in for one block call --------------------------------------------------------------


class _SelfAttention:
    """Self-attention (joint for the joint families) of one block call: key pass or query pass."""

    def __init__(self, family: _Family, original, state: _CallState):
        self.family, self.original, self.state = family, original, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        fam, st = self.family, self.state
        piece = st.piece
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        parts = [hidden_states] if encoder_hidden_states is None else (
            [encoder_hidden_states, hidden_states] if fam.text_first else [hidden_states, encoder_hidden_states]
        )
        parts = [p for p in parts if p.shape[1]]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        text = piece.stream == "text"

        def rows(kind):
            y = fam.project(attn, x, kind, text)
            if kind != "v" and image_rotary_emb is not None and piece.video.stop > piece.video.start:
                if piece.video == slice(0, piece.n):
                    y = fam.rope(y, image_rotary_emb)
                else:  # a joint piece: only its video rows rotate (y is this call's own tensor)
                    y[:, piece.video] = fam.rope(y[:, piece.video], image_rotary_emb)
            return y

        if st.mode == "keys":
            st.store(rows("k"), rows("v"))
            raise _KeysDone
        q = rows("q")
        mask = attention_mask
        if mask is not None:
            mask = _slice_mask(mask, 4, 0, q.shape[0], piece.at, piece.at + piece.n)
        out = fam.attend(self.original, q, st.k, st.v, mask)
        return fam.finish(attn, out, hidden_states.shape[1], n_text)


class _CrossAttention:
    """Cross-attention of one block call: text keys/values computed once, queries per piece."""

    def __init__(self, family: _Family, original, state: _CallState):
        self.family, self.original, self.state = family, original, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        fam, st = self.family, self.state
        kv = st.cross.get(id(attn))
        if kv is None:
            kv = fam.cross_kv(attn, encoder_hidden_states, attention_mask, hidden_states.shape[0])
            st.cross[id(attn)] = kv
        k, v, mask, extra = kv
        q = fam.project(attn, hidden_states, "q", False)
        out = fam.attend(self.original, q, k, v, mask)
        if extra is not None:  # Wan I2V: attention over the image tokens, added
            out = out + fam.attend(self.original, q, extra[0], extra[1], None)
        return fam.finish(attn, out, hidden_states.shape[1], 0)


# -- the hook ----------------------------------------------------------------------------------------------


def _widest_row(block: nn.Module) -> int:
    """Elements of the widest per-token row inside ``block``: the largest in/out width of its
    linear layers (the FFN hidden state; HunyuanVideo's single-stream concat of attention and MLP)."""
    return max(max(m.in_features, m.out_features) for m in block.modules() if isinstance(m, nn.Linear))


# Fewest pieces for which the piece path beats the whole block with query-chunked attention.
MIN_PIECES = 4


class DitChunkHook(chunk_hook_base()):
    """A DiT block over sequence pieces (see the module docstring). Must sit directly on the
    block's own forward (beneath other hooks such as lightcache's block hook), as each call of
    ``fn_ref.original_forward`` here is one piece."""

    def __init__(self, spec: ChunkSpec, family: _Family, own_hooks=()):
        super().__init__()
        self.spec = spec
        self.family = family
        self.own_hooks = set(own_hooks)  # hook names allowed on the block's submodules (the FFN's)
        self.split_calls = 0  # calls run in more than one piece
        self.fallback_calls = 0  # calls run whole (attention query-chunked) because the path did not apply
        self._sig = None

    def initialize_hook(self, module):
        self._sig = inspect.signature(type(module).forward)
        first, *params = self._sig.parameters.values()  # first: the block itself
        self._self_name = first.name
        # the parameter names when a call's arguments map onto them without inspect's bind (no *args,
        # **kwargs or positional-only parameters): the map bind's .arguments gives, at a fraction of its cost
        plain = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        self._names = tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD) if plain else None
        self._known = frozenset(p.name for p in params) if plain else None
        self.width = _widest_row(module)
        self._memo = SplitMemo(self._attention_rows, attention_modules(module), self.spec)
        return module

    def _attention_rows(self, q, k):
        return self.spec.rows(sdpa_row_bytes(q, k), "one query row of attention scores (heads x keys)")

    def _applies(self, module, a: dict) -> bool:
        fam = self.family
        if torch.is_grad_enabled() or not fam.supported(a):
            return False
        if not fam.usable(module):
            return False
        classes = fam.original_processor_classes()
        for name in (fam.self_attn, fam.cross_attn):
            if name is None:
                continue
            proc = getattr(module, name).processor
            if type(proc) not in classes or getattr(proc, "_parallel_config", None) is not None:
                return False
        # stateful hooks inside would see one call per piece; walked at each call, so layers
        # injected after enable() (PEFT adapters and their hooks) are seen too
        todo = list(module._modules.values())  # module.modules() without its prefix and memo work
        while todo:
            m = todo.pop()
            if m is None:
                continue
            d = m.__dict__
            reg = d.get("_diffusers_hook")
            if reg is not None and not self.own_hooks.issuperset(reg.hooks):
                return False
            todo.extend(d["_modules"].values())
        return True

    def _arguments(self, module, args, kwargs) -> Optional[dict]:
        """The call's arguments by name (what ``signature.bind(...).arguments`` gives), or None when
        only bind can say (a signature with *args/**kwargs, or a call bind would refuse)."""
        names = self._names
        if names is None or len(args) > len(names):
            return None
        a = {self._self_name: module}
        a.update(zip(names, args))
        for k, v in kwargs.items():
            if k in a or k not in self._known:
                return None  # bind raises the TypeError the block's own forward would
            a[k] = v
        return a

    def new_forward(self, module, *args, **kwargs):
        fwd = self.fn_ref.original_forward
        a = self._arguments(module, args, kwargs)
        if a is None:
            a = self._sig.bind(module, *args, **kwargs).arguments
        fam = self.family
        # the cheap tests first: the walk over the block's modules (_applies) only where its verdict matters
        if torch.is_grad_enabled() or not fam.supported(a):
            return self._whole(module, fwd, args, kwargs)
        h = a["hidden_states"]
        text = fam.text(a)
        n_video, n_text = h.shape[1], (0 if text is None else text.shape[1])
        batch, key_len = h.shape[0], n_video + n_text
        heads = getattr(module, fam.self_attn).heads
        score = max(h.element_size(), 4) if h.dtype in (torch.float16, torch.bfloat16) else h.element_size()
        row_bytes = max(self.width * h.element_size(), heads * key_len * score)
        rows = self.spec.rows(row_bytes, f"one token of {type(module).__name__} (its widest row, {row_bytes} bytes)")
        tokens = max(1, rows // batch)  # a piece holds every batch item of its tokens
        if batch * key_len > rows and tokens * MIN_PIECES > key_len:
            # a piece's working set is ~15 rows per token on top of the whole K, V and output
            # (measured: Wan at 128 of 512 tokens peaks at 6.8 full rows, the whole block with
            # query-chunked attention and chunked FFN at 6.5): few large pieces lose to it
            return self._whole(module, fwd, args, kwargs)
        if batch * key_len <= rows:
            # one piece: the block as it is; its attention fits the chunk too (a query row's scores are
            # part of row_bytes), so neither the walk below nor the query-chunking mode has work to do
            return fwd(*args, **kwargs)
        if not self._applies(module, a):
            return self._whole(module, fwd, args, kwargs)
        self.split_calls += 1
        return self._run(module, fwd, self._sig.bind(module, *args, **kwargs), fam, tokens, n_video, n_text)

    def _whole(self, module, fwd, args, kwargs):
        """The block in one call, attention over query chunks (and FFNs chunked by their hooks):
        under the function mode only while a call with these inputs may split an attention call
        (:class:`~lightcache.memory.chunk_attention.SplitMemo`; torch's fused kernels hold no score
        matrix and are never split)."""
        out, _ = self._memo(fwd, module, args, kwargs)
        self.fallback_calls += 1
        return out

    def _pieces(self, fam: _Family, n_video: int, n_text: int, tokens: int) -> List[_Piece]:
        pieces = []
        if fam.joint_pieces:  # [video, text] runs
            for at in range(0, n_video + n_text, tokens):
                n = min(tokens, n_video + n_text - at)
                video = slice(0, min(max(n_video - at, 0), n))
                pieces.append(_Piece(at, n, video, "joint"))
            return pieces
        order = [("text", n_text), ("video", n_video)] if fam.text_first else [("video", n_video), ("text", n_text)]
        start = 0
        for stream, length in order:
            for r in range(0, length, tokens):
                n = min(tokens, length - r)
                pieces.append(_Piece(start + r, n, slice(0, n) if stream == "video" else slice(0, 0), stream))
            start += length
        return pieces

    def _changes(self, fam: _Family, a: dict, p: _Piece, n_video: int, n_text: int) -> dict:
        if fam.joint_pieces:
            r0, r1 = min(p.at, n_video), min(p.at + p.n, n_video)
            t0, t1 = max(p.at - n_video, 0), max(p.at + p.n - n_video, 0)
            h, enc = a["hidden_states"][:, r0:r1], a["encoder_hidden_states"][:, t0:t1]
            joint = h if t1 == t0 else (enc if r1 == r0 else torch.cat([h, enc], dim=1))
            changes = fam.rows_changes(a, r0, r1, t0, t1, joint=joint)
            changes["_joint"] = joint
            return changes
        video_at = fam.video_at(a) if isinstance(fam, _Joint) else 0
        if p.stream == "video":
            r0, r1, t0, t1 = p.at - video_at, p.at - video_at + p.n, 0, 0
        else:
            t0 = p.at - fam.text_at(a)
            r0, r1, t1 = 0, 0, t0 + p.n
        return fam.rows_changes(a, r0, r1, t0, t1)

    def _run(self, module, fwd, bound, fam: _Family, tokens: int, n_video: int, n_text: int):
        a = bound.arguments
        state = _CallState(n_video + n_text)
        swaps = [(getattr(module, fam.self_attn), _SelfAttention)]
        if fam.cross_attn is not None:
            swaps.append((getattr(module, fam.cross_attn), _CrossAttention))
        originals = [(attn, attn.processor) for attn, _ in swaps]
        outs = _Outputs(n_video, n_text)

        def piece_call(p: _Piece):
            state.piece = p
            changes = self._changes(fam, a, p, n_video, n_text)
            args = OrderedDict(a)
            args.update((k, v) for k, v in changes.items() if not k.startswith("_"))
            piece_bound = inspect.BoundArguments(self._sig, args)
            changes["_arguments"] = a
            return piece_bound.args[1:], piece_bound.kwargs, changes  # args[0] is the block itself

        try:
            for attn, cls in swaps:
                attn.processor = cls(fam, attn.processor, state)
            pieces = self._pieces(fam, n_video, n_text, tokens)
            for p in pieces:
                try:
                    fam.key_pass(module, fwd, *piece_call(p))
                except _KeysDone:
                    continue
                raise RuntimeError(
                    f"lightcache chunking: {type(module).__name__}'s key pass ended without reaching self-attention"
                )
            state.mode = "queries"
            for p in pieces:
                args, kwargs, _ = piece_call(p)
                fam.place(fwd(*args, **kwargs), p, outs, a)
        finally:
            for attn, proc in originals:
                attn.processor = proc
        written = [t for t in (*outs.tensors, state.k, state.v) if t is not None]
        count(2 * len(pieces), sum(t.numel() * t.element_size() for t in written))  # key and query passes
        if isinstance(fam, _Joint):
            return outs.tensors[0], outs.tensors[1]
        return outs.tensors[0]
