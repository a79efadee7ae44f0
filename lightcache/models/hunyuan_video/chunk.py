"""Feature chunk of HunyuanVideo's blocks: the dual-stream blocks (``HunyuanVideoTransformerBlock``,
its token-replace variant) and the single-stream blocks (``HunyuanVideoSingleTransformerBlock``, its
token-replace variant); see lightcache.memory.chunk_dit."""

from __future__ import annotations

from lightcache.memory.chunk_dit import _Joint


class HunyuanVideoChunking(_Joint):
    processor = ("diffusers.models.transformers.transformer_hunyuan_video", "HunyuanVideoAttnProcessor2_0")
    self_attn = "attn"
    rotary_arg = "freqs_cis"

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        changes = super().rows_changes(a, r0, r1, t0, t1)
        if a.get("num_tokens") is not None:  # token replace: the first-frame tokens, counted in the piece
            changes["num_tokens"] = min(max(a["num_tokens"] - r0, 0), r1 - r0)
        return changes

    def finish(self, attn, out, n_hidden, n_text):
        hidden, text = out[:, :n_hidden], out[:, n_hidden:]
        if getattr(attn, "to_out", None) is not None:
            hidden = attn.to_out[1](attn.to_out[0](hidden))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return hidden, text


class HunyuanVideoSingleChunking(HunyuanVideoChunking):
    """Single-stream blocks concatenate [video, text] themselves and project both with the same
    weights: pieces run over the joint sequence."""

    rotary_arg = "image_rotary_emb"
    joint_pieces = True

    def rows_changes(self, a, r0, r1, t0, t1, joint=None):
        # ``joint`` holds the piece's rows; its last row goes in as the block's "text" so that the
        # block's split (by the text length) is never empty
        changes = super().rows_changes(a, r0, r1, t0, t1)
        changes["hidden_states"], changes["encoder_hidden_states"] = joint[:, :-1], joint[:, -1:]
        if a.get("num_tokens") is not None:
            changes["num_tokens"] = min(max(a["num_tokens"] - r0, 0), joint.shape[1])
        return changes

    def normalised(self, block, joint, a, changes):
        """The block's pre-attention norm of the piece's rows."""
        return block.norm(joint, emb=a["temb"])[0]

    def key_pass(self, block, fwd, args, kwargs, changes):
        # the block computes its MLP branch before attention; keys need only the normalised rows
        joint, a = changes["_joint"], changes["_arguments"]
        norm = self.normalised(block, joint, a, changes)
        block.attn(
            hidden_states=norm[:, :-1],
            encoder_hidden_states=norm[:, -1:],
            attention_mask=a.get("attention_mask"),
            image_rotary_emb=changes[self.rotary_arg],
        )

    def place(self, result, piece, outs, a):
        length = a["hidden_states"].shape[1]
        at = piece.at
        for rows in result:  # the piece's first n - 1 rows, then its last
            split = min(max(length - at, 0), rows.shape[1])  # rows before the text starts
            if split:
                outs.write(0, rows[:, :split], at)
            if split < rows.shape[1]:
                outs.write(1, rows[:, split:], at + split - length)
            at += rows.shape[1]


class HunyuanVideoTokenReplaceSingleChunking(HunyuanVideoSingleChunking):
    """The token-replace single-stream block (HunyuanVideo I2V): its norm also takes the
    first-frame modulation and the count of first-frame tokens."""

    def normalised(self, block, joint, a, changes):
        return block.norm(joint, a["temb"], a["token_replace_emb"], changes["num_tokens"])[0]
