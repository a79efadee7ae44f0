"""lightcache.simulate at tiny scale for the further families (tests/tiny_families/).

The validation of tests/test_simulate.py (the simulator's per-stage peaks equal the CPU tracker's,
byte for byte; the cache's high-water marks equal; the whole call within a tolerance) for each
family of ``tiny_pipelines.MORE_FAMILIES``: uncached, each DiT policy at its worst case (EasyCache,
PreciseCache flash, whose residency includes base's) and PreciseCache-flash with every memory-plan option at once (swap,
a chunk size that splits something in it where chunking applies, its exact decode slices, decode
to host); the chunked calls and pieces are equal too (the simulation splits what a real run
splits). The other plan options one at a time (test_simulate.py covers them for the original
families) are left out to keep this file's cost down: they run the same code paths as the
all-options plan.

Each family's pipeline is built once per device and reused for its four runs (lightcache.disable
restores it), and its meta runs share the simulator's op memo. Tolerances, each with its reason:
whole-call ones beyond test_simulate's WHOLE_CALL_TOLERANCE in ``WHOLE_CALL``; the stage peaks are
exact (a swapped non-contiguous feature's contiguous copy, which the ring holds until its next
operation, is made where the CPU tracker sees it, and the simulation's ring holds the same copy). Families whose code reads a
tensor's value (``READS_VALUES``) are simulated with lightcache.simulate.values' answers, each
assumption stated in the figures, and run for real with the values assumed (all-valid prompt
masks); a read that no hint answers is refused, naming the line (``UNHINTED``).
"""

from __future__ import annotations

import re

import pytest
import torch

from lightcache import EasyCache, MemoryPlan, PreciseCache
from lightcache.memory.chunk_spec import counting
from lightcache.simulate import pipeline as sp
from test_simulate import SYNC, WHOLE_CALL_TOLERANCE, _compare, _quiet, _tiny_family  # noqa: F401 (_quiet: autouse)
from tiny_pipelines import MORE_FAMILIES, matrix_info

IMAGE = 3 * 32 * 32 * 4  # one of the tiny families' 32x32 RGB conditioning images in fp32

# family -> whole-call tolerance (bytes) where test_simulate's does not cover it, and why. Each is
# host work that a CPU run counts as device memory and a GPU run (so the simulation) keeps on the host.
WHOLE_CALL = {
    # EulerAncestralDiscreteScheduler builds its 1000-step fp32 betas/alphas tables at set_timesteps
    "allegro": WHOLE_CALL_TOLERANCE + 2 * 1000 * 4,
    # the video processor's preprocessing of the conditioning image (x * 2 - 1 and friends) runs on
    # the host before the image moves to the device: up to two image-sized temporaries at once
    "consisid": WHOLE_CALL_TOLERANCE + 2 * IMAGE,
    "kandinsky5_i2v": WHOLE_CALL_TOLERANCE + 2 * IMAGE,
    "sana_video_i2v": WHOLE_CALL_TOLERANCE + 2 * IMAGE,
    # the preprocessed conditioning image on the host: HunyuanVideo 1.5 I2V makes it after
    # set_timesteps (the denoise phase: its condition latent), FramePack keeps it for the whole call
    # (the pipeline's `image`); measured meta - cpu -12316 to -12332 B (I2V) and -12508 to -12524 B
    "hunyuan_video15_i2v": WHOLE_CALL_TOLERANCE + IMAGE,
    "hunyuan_video_framepack": WHOLE_CALL_TOLERANCE + IMAGE,
}


# family -> what its simulation reads of the call's values, answered by lightcache.simulate.values
# (Figures.assumptions names each): the prompt masks (every token valid, so the tests pass
# all-valid masks to both runs), and HunyuanVideo 1.5's is_t2v (torch.all(image_embeds == 0)):
# text-to-video's zeros are a value the simulation knows (no assumption); image-to-video's image
# embeddings are assumed not all zero
READS_VALUES = {
    "mochi": ("prompt_attention_mask", "negative_prompt_attention_mask"),  # the valid tokens' nonzero
    # the prompt's valid rows first (x[mask], x[~mask]); the image's rows masked out
    "hunyuan_video15": ("prompt_embeds_mask", "prompt_embeds_mask_2", "negative_prompt_embeds_mask",
                        "negative_prompt_embeds_mask_2"),
    "hunyuan_video15_i2v": ("prompt_embeds_mask", "prompt_embeds_mask_2", "negative_prompt_embeds_mask",
                            "negative_prompt_embeds_mask_2",
                            "HunyuanVideo 1.5: an encoded image's embeddings are not all zero"),
    # the prompt's valid length (a slice by the mask's sum)
    "hunyuan_video_framepack": ("prompt_attention_mask", "negative_prompt_attention_mask"),
}


# rows per chunk: the largest of 8, 16, 32 that still splits the family's tiny pipeline (the
# matrix's chunk of 2 splits it into hundreds of pieces, each a few meta ops: 4-8 s more a family);
# families that MatrixInfo says have nothing to chunk run without chunk_size
CHUNK = {"allegro": 32, "consisid": 32, "hunyuan_video15": 32, "hunyuan_video15_i2v": 32,
         "hunyuan_video_framepack": 32, "hunyuan_video_i2v": 32, "latte": 32, "ltx2": 32, "mochi": 16,
         "skyreels_v2": 8, "skyreels_v2_df": 8, "wan_animate": 16, "wan_vace": 8}


def _plans(family):
    info = matrix_info(family)
    everything = dict(swap="on", decode_slices=info["decode_slices"], decode_to_host=True, **SYNC)
    if info["chunk"] is not None:
        everything["chunk_size"] = CHUNK[family]
    flash = PreciseCache(mode="flash")
    # PreciseCache base's worst case (the prediction per branch) is a part of flash's (that and the
    # blocks' residuals): flash alone covers its code, at a fifth less of this file's cost
    return [(None, MemoryPlan(swap="off")), (EasyCache(), MemoryPlan(swap="off")), (flash, MemoryPlan(swap="off")),
            (flash, MemoryPlan(**everything))]


def _pipes(family):
    out = {}
    for device in ("cpu", "meta"):
        pipe, kw = _tiny_family(family, device)
        if family in READS_VALUES:
            # the simulation assumes every prompt token valid (lightcache.simulate.values): all-ones masks
            kw = {k: (torch.ones_like(v) if "mask" in k and isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        out[device] = (pipe, kw)
    return out


@pytest.mark.parametrize("family", sorted(MORE_FAMILIES))
def test_simulation_equals_cpu_tracker_more_families(family):
    pipes = _pipes(family)
    tolerance = WHOLE_CALL.get(family, WHOLE_CALL_TOLERANCE)
    problems = []
    memo = {}  # the simulator's op memo, shared by the family's meta runs (exact: see DeviceBytes)
    for policy, memory in _plans(family):
        figs, pieces = {}, {}
        for d in pipes:
            with counting() as c:
                figs[d] = sp.run(*pipes[d], policy=policy, memory=memory, attention="cpu", device_type=d, memo=memo)
            pieces[d] = (c.calls, c.pieces)
        if pieces["cpu"] != pieces["meta"] or (memory.chunk_size is not None and not pieces["cpu"][1]):
            problems.append(f"{policy!r} {memory!r}: chunked (calls, pieces) cpu {pieces['cpu']} meta {pieces['meta']}")
        found = _compare(figs["cpu"], figs["meta"], tolerance)
        problems += [f"{policy!r} {memory!r}: {p}" for p in found]
        stated = figs["meta"].assumptions
        if len(stated) != len(READS_VALUES.get(family, ())) or not all(
                any(a.startswith(w) for a in stated) for w in READS_VALUES.get(family, ())):
            problems.append(f"{policy!r} {memory!r}: assumptions stated {stated}, expected {READS_VALUES.get(family)}")
        if figs["meta"].denoiser_calls != figs["cpu"].denoiser_calls:
            problems.append(f"{policy!r} {memory!r}: denoiser calls cpu {figs['cpu'].denoiser_calls} "
                            f"meta {figs['meta'].denoiser_calls}")
    assert not problems, "\n".join(problems)


# family -> the hints left out (a value-dependent point the simulation then does not know) and the
# line its refusal names
UNHINTED = {
    "hunyuan_video15_i2v": ("POINTS", "if is_t2v"),
    "hunyuan_video_framepack": ("INPUTS", "effective_condition_sequence_length[0]"),  # a slice by the mask's sum
    "mochi": ("INPUTS", "torch.nonzero(mask.flatten()"),  # the valid prompt tokens
}


@pytest.mark.parametrize("family", sorted(UNHINTED))
def test_simulation_refuses_reads_no_hint_answers(family, monkeypatch):
    from lightcache.simulate import values

    table, line = UNHINTED[family]
    monkeypatch.setattr(values, table, ())
    pipe, kw = _tiny_family(family, "meta")
    with pytest.raises(NotImplementedError, match=r"reads a tensor's value .*" + re.escape(line) + r".*no value hint"):
        sp.run(pipe, kw, memory=MemoryPlan(swap="off"), attention="cpu")


def test_value_hints_know_one_valued_tensors():
    """What lightcache.simulate.values knows on the meta device: a factory's value and the call's
    masks (assumed) through casts, ~, cat, sum, a boolean index and nonzero; an in-place write
    forgets it; an unknown read raises ValueRead naming this line."""
    from lightcache.simulate.tracker import DeviceBytes
    from lightcache.simulate.values import ValueHints, ValueRead

    mask = torch.zeros(2, 5, dtype=torch.long, device="meta")  # values never read: assumed all ones
    x = torch.empty(2, 5, 3, device="meta")
    hints = ValueHints({"prompt_attention_mask": mask})
    with DeviceBytes("meta", values=hints):
        m = mask.bool()
        assert x[0][m[0]].shape == (5, 3) and x[0][~m[0]].shape == (0, 3)
        assert torch.nonzero(m).shape == (10, 2) and torch.nonzero(~m).shape == (0, 2)
        total = torch.cat([mask.new_ones(2, 3), mask], dim=1).sum(dim=1, dtype=torch.int)
        assert total[1].item() == 8 and torch.empty(1, 10, device="meta")[:, : total[0]].shape == (1, 8)
        image = torch.zeros(2, 4, device="meta")
        assert bool(torch.all(image == 0)) and not bool(torch.any(image != 0))
        image.add_(1.0)  # written: its value is no longer known
        with pytest.raises(ValueRead, match="test_simulate_families.py"):
            bool(torch.all(image == 0))
    assert len(hints.used) == 1 and next(iter(hints.used)).startswith("prompt_attention_mask: every token valid")


def test_planner_chunk_candidates_cut_equal_pieces_and_gallop():
    """The fit's chunk sizes for a DiT cut its tokens into k equal pieces (the smallest chunk of each
    piece count), and _fewest_pieces finds the largest fitting one of a monotone fit without
    repeating a call, within 1 + 2 ceil(log2 n) calls, the largest first."""
    import math

    from lightcache.simulate.planner import CHUNKS, _fewest_pieces, chunk_sizes

    assert chunk_sizes(576) == [576, 288]  # 192 (3 pieces) is below the 256-row floor
    assert chunk_sizes(320) == [320, 160]  # fewer than 512 tokens: down to two pieces
    sizes = chunk_sizes(32760)  # Wan2.1 480p 81 frames
    assert sizes[:4] == [32760, 16380, 10920, 8190] and min(sizes) >= 256
    assert all(-(-32760 // c) == k for k, c in enumerate(sizes, 1))  # one size per piece count
    assert chunk_sizes(None) == list(CHUNKS)
    for n in (1, 2, 3, 8, 128):
        chunks = list(range(10 * n, 0, -10))
        for first_fitting in range(n + 1):
            calls = []

            def fits(c):
                calls.append(c)
                return chunks.index(c) >= first_fitting

            assert _fewest_pieces(chunks, fits) == (chunks[first_fitting] if first_fitting < n else None)
            assert calls[0] == chunks[0] and len(set(calls)) == len(calls)
            assert len(calls) <= 1 + 2 * math.ceil(math.log2(max(n, 2)))
