"""lightcache.simulate: the meta-device simulation counts what the CPU tracker measures.

Validation (issue 11, item 3): for every family, the same pipeline is built twice at tiny scale,
once on the CPU and run for real with ``MemoryPlan(cpu_tracker=True)``, once on the meta device and
simulated; uncached, each policy at its worst-case residency (lightcache.simulate.worst) and each
memory-plan option. Asserted:

* the per-stage peaks of lightcache's stage meter (``report(pipe).peak_bytes``) are equal, byte
  for byte, and so are the cache's device and host high-water marks;
* the whole-call figure (DeviceBytes: every allocation of the call, per phase) agrees within
  ``WHOLE_CALL_TOLERANCE``. Reason: tensors a pipeline makes on the host and moves to the device
  (the scheduler's timesteps and sigmas, which a simulation keeps on the CPU; latents_mean/std and
  rotary tables, whose ``.to(device)`` is a no-op on the CPU but a device copy in a simulation, as
  on a GPU). They are tens to hundreds of bytes here.

Swapped plans run with ``sync_store=True`` on the CPU: the simulation assumes each store's copy
has completed by the next operation on its ring, which sync_store guarantees (see
lightcache.simulate.store).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.utils._pytree import tree_map

import lightcache
from lightcache import DeepCache, EasyCache, ForecastCache, MemoryPlan, PreciseCache
from lightcache.simulate import attention as att
from lightcache.simulate import parse_memory, parse_size
from lightcache.simulate import pipeline as sp
from lightcache.simulate.worst import worst_case
from test_proxy import needs_unet

WHOLE_CALL_TOLERANCE = 4096  # bytes; see the module doc
# 0-d metric tensors that forced decisions never compute (EasyCache keeps one 4-byte ε per step)
BOUND_TOLERANCE = 256

SYNC = dict(sync_store=True)


def _plans(dit: bool, decode_slices: int):
    """(policy, MemoryPlan) pairs: uncached with every plan option, each policy without a plan, swapped,
    and with everything at once."""
    chunk = 3 if dit else 32  # tiny DiTs: 8-18 tokens; tiny UNets: 64 latent pixels per frame
    policies = ([EasyCache(), PreciseCache(mode="base"), PreciseCache(mode="flash")] if dit else [DeepCache()])
    out = [
        (None, MemoryPlan(swap="off")),
        (None, MemoryPlan(swap="off", chunk_size=chunk)),
        (None, MemoryPlan(swap="off", decode_slices=decode_slices)),
        (None, MemoryPlan(swap="off", decode_slices=decode_slices, decode_to_host=True)),
    ]
    for p in policies:
        out += [(p, MemoryPlan(swap="off")), (p, MemoryPlan(swap="on", **SYNC))]
    last = policies[-1]
    out += [
        (last, MemoryPlan(swap="on", cache_dtype="fp8", **SYNC)),
        (last, MemoryPlan(swap="on", chunk_size=chunk, decode_slices=decode_slices, decode_to_host=True, **SYNC)),
    ]
    return out


REALISTIC = {  # bench_models configuration -> (is a DiT, smallest exact decode slice that splits its tiny latent)
    "wan2.1-1.3b": (True, 1),
    "hunyuanvideo": (True, 1),
    "cogvideox-5b": (True, 2),
    "ltx-video": (True, 1),
    "svd": (False, 2),
    "animatediff": (False, 2),
}


def _compare(cpu, meta, whole_call_tolerance=WHOLE_CALL_TOLERANCE):
    problems = []
    if cpu.tracked != meta.tracked:
        problems.append(f"stage peaks: cpu {cpu.tracked} meta {meta.tracked}")
    if (cpu.cache_device, cpu.cache_host) != (meta.cache_device, meta.cache_host):
        problems.append(f"cache: cpu {cpu.cache_device}/{cpu.cache_host} meta {meta.cache_device}/{meta.cache_host}")
    for p in cpu.live_peak:
        d = meta.live_peak_all[p] - cpu.live_peak_all[p]
        if abs(d) > whole_call_tolerance:
            problems.append(f"whole call, {p}: meta - cpu = {d} bytes")
    return problems


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_num_threads(1)
        yield


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_simulation_equals_cpu_tracker_realistic_configs(name):
    """The realistic configurations' builders (the ones the real-size simulation runs) at tiny scale."""
    dit, slices = REALISTIC[name]
    problems = []
    # one build per device, reused by every plan (lightcache.disable restores it; each run starts
    # its own count): building dominated this test's time
    builds = {device: sp.build(name, scale="tiny", dtype="fp32", device=device) for device in ("cpu", "meta")}
    memo = {}  # the simulator's op memo, shared by the meta runs (exact: see DeviceBytes)
    for policy, memory in _plans(dit, slices):
        figs = {}
        for device, b in builds.items():
            figs[device] = sp.run(b.pipe, b.kwargs, policy=policy, memory=memory, attention="cpu", device_type=device,
                                  memo=memo)
        problems += [f"{policy!r} {memory!r}: {p}" for p in _compare(figs["cpu"], figs["meta"])]
        assert figs["meta"].denoiser_calls == figs["cpu"].denoiser_calls
    assert not problems, "\n".join(problems)


def _tiny_family(family, device):
    from tiny_pipelines import build

    pipe, kw = build(family)
    if device == "meta":
        pipe.to("meta")
        kw = {k: (tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, v) if "embeds" in k or "mask" in k
                  else v) for k, v in kw.items()}
    return pipe, kw


@pytest.mark.parametrize("family", ["wan", "wan_i2v", "hunyuan_video", "cogvideox", "ltx", "easyanimate",
                                    "animatediff", "text_to_video_sd"])
def test_simulation_equals_cpu_tracker_tiny_families(family):
    """tests/tiny_pipelines' families (a pipeline moved to the meta device with ``pipe.to("meta")``)."""
    unet = family in ("animatediff", "text_to_video_sd")
    policy = DeepCache() if unet else PreciseCache(mode="flash")
    slices = 2 if family in ("cogvideox", "animatediff", "text_to_video_sd") else 1
    chunk = 32 if unet else 8
    problems = []
    for pol, memory in [(None, MemoryPlan(swap="off")), (policy, MemoryPlan(swap="off")),
                        (policy, MemoryPlan(swap="on", chunk_size=chunk, decode_slices=slices, **SYNC))]:
        figs = {}
        for device in ("cpu", "meta"):
            pipe, kw = _tiny_family(family, device)
            figs[device] = sp.run(pipe, kw, policy=pol, memory=memory, attention="cpu", device_type=device, steps=None)
        problems += [f"{pol!r} {memory!r}: {p}" for p in _compare(figs["cpu"], figs["meta"])]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name,policy", [
    ("wan2.1-1.3b", PreciseCache(mode="flash")),
    ("wan2.1-1.3b", EasyCache(threshold=0.5, warmup_steps=1)),
    ("hunyuanvideo", PreciseCache(mode="flash")),
    ("hunyuanvideo", EasyCache(threshold=0.5, warmup_steps=1)),
    ("wan2.1-1.3b", ForecastCache(threshold=0.5, warmup_ratio=0.1)),
    ("animatediff", DeepCache()),
])
@pytest.mark.parametrize("swap", ["off", "on"])
def test_worst_case_bounds_a_real_run(name, policy, swap):
    """The policy with its real decisions over 8 steps, measured on the CPU, stays at or below the
    simulated worst case (within BOUND_TOLERANCE: the decisions' own 0-d metric tensors)."""
    memory = MemoryPlan(swap=swap, cpu_tracker=True, **SYNC)
    b = sp.build(name, scale="tiny", dtype="fp32", device="cpu")
    lightcache.enable(b.pipe, policy=policy, memory=memory)
    b.pipe(**b.kwargs, num_inference_steps=8, generator=torch.Generator().manual_seed(0))
    rep = lightcache.report(b.pipe)
    lightcache.disable(b.pipe)
    assert 0 < rep.reuse_ratio < 1  # the real run did reuse: the bound is not trivial
    m = sp.build(name, scale="tiny", dtype="fp32", device="meta")
    sim = sp.run(m.pipe, m.kwargs, policy=policy, memory=memory, attention="cpu")
    for stage, peak in rep.peak_bytes.items():
        assert peak <= sim.tracked[stage] + BOUND_TOLERANCE, (stage, peak, sim.tracked[stage])
    assert rep.cache_bytes["device"] <= sim.cache_device
    assert rep.cache_bytes["host"] <= sim.cache_host


@pytest.mark.parametrize("swap", ["off", "on"])
def test_forecastcache_worst_case_equals_cpu_tracker(swap):
    """ForecastCache's worst case (both Δ slots of every branch held, a forecast reuse) simulated on
    meta equals the CPU tracker's run of the same pattern, byte for byte (tiny Wan)."""
    memory = MemoryPlan(swap=swap, **SYNC)
    figs = {}
    for device in ("cpu", "meta"):
        pipe, kw = _tiny_family("wan", device)
        figs[device] = sp.run(pipe, kw, policy=ForecastCache(), memory=memory, attention="cpu", device_type=device)
    assert not _compare(figs["cpu"], figs["meta"])
    assert figs["meta"].cache_device > 0


def test_worst_case_policies_keep_their_settings():
    assert worst_case(ForecastCache(threshold=0.3, warmup_ratio=0.5)).warmup_ratio == 0.5
    w = worst_case(PreciseCache(mode="flash", refresh_steps=5))
    assert (w.mode, w.block_ratio, w.refresh_steps) == ("flash", 0.4, 5)
    assert worst_case(None) is None
    assert worst_case(DeepCache(branch=1)).branch == 1
    with pytest.raises(TypeError, match="no worst case"):
        worst_case(object())


# ------------------------------------------------------------------------------------------------
# attention: what each backend holds
# ------------------------------------------------------------------------------------------------


def _sdpa_bytes(backend, q, k, v, mask=None):
    from lightcache._live_bytes import LiveBytes

    with att.AttentionEmulation(backend) as mode, LiveBytes() as lb:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return lb.peak, out, mode.used


def test_fused_backends_hold_output_and_lse_math_holds_scores():
    B, H, L, S, D = 1, 4, 64, 48, 32
    q = torch.empty(B, H, L, D, device="meta", dtype=torch.bfloat16)
    k = torch.empty(B, H, S, D, device="meta", dtype=torch.bfloat16)
    out_bytes = B * H * L * D * 2
    peak, out, used = _sdpa_bytes("flash", q, k, k)
    assert peak == out_bytes + B * H * L * 4 and tuple(out.shape) == (B, H, L, D) and used == {"flash": 1}
    assert _sdpa_bytes("efficient", q, k, k)[0] == out_bytes
    assert _sdpa_bytes("cudnn", q, k, k)[0] == out_bytes
    math_peak = _sdpa_bytes("math", q, k, k)[0]
    assert math_peak >= B * H * L * S * 4  # the (fp32-upcast) score matrix
    peak, _, used = _sdpa_bytes("auto", q, k, k)
    assert used == {"cudnn": 1} and peak == out_bytes


def test_backend_choice_follows_torch_cuda_rules():
    def t(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    q = t(1, 2, 16, 64)
    mask = torch.empty(1, 1, 16, 16, device="meta", dtype=torch.bool)
    assert att.choose("auto", q, q, q, None, 0.0, False) == "cudnn"
    assert att.choose("flash", q, q, q, None, 0.0, False) == "flash"
    assert att.choose("flash", q, q, q, mask, 0.0, False) == "cudnn"  # flash takes no mask
    big = t(1, 2, 16, 192)
    assert att.choose("auto", big, big, big, None, 0.0, False) == "flash"  # cuDNN: head size <= 128
    assert att.choose("auto", big, big, big, mask, 0.0, False) == "efficient"
    f32 = t(1, 2, 16, 64, dtype=torch.float32)
    assert att.choose("auto", f32, f32, f32, None, 0.0, False) == "efficient"
    odd = t(1, 2, 16, 20, dtype=torch.float16)
    assert att.choose("auto", odd, odd, odd, None, 0.0, False) == "flash"
    assert att.choose("auto", odd, odd, odd, mask, 0.0, False) == "math"  # efficient: head size % 8
    with pytest.raises(ValueError, match="attention must be one of"):
        att.AttentionEmulation("fast")


def test_cpu_backend_counts_what_the_tracker_sees_on_cpu():
    from lightcache._live_bytes import LiveBytes

    for mask_dtype in (None, torch.bool, torch.float32):
        qc = torch.randn(1, 2, 10, 12)
        kc = torch.randn(1, 2, 7, 12)
        mc = None if mask_dtype is None else torch.ones(1, 1, 10, 7, dtype=mask_dtype)
        with LiveBytes() as lb:
            torch.nn.functional.scaled_dot_product_attention(qc, kc, kc, attn_mask=mc)
        q, k = qc.to("meta"), kc.to("meta")
        m = None if mc is None else mc.to("meta")
        assert _sdpa_bytes("cpu", q, k, k, m)[0] == lb.peak


# ------------------------------------------------------------------------------------------------
# API, CLI and bad input
# ------------------------------------------------------------------------------------------------


def test_parse_size_formats():
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("24 GiB") == 24 * 2**30
    assert parse_size("24gib") == 24 * 2**30
    assert parse_size(25769803776) == 25769803776
    assert parse_size("25769803776") == 25769803776
    assert parse_size("1.5 TB") == 15 * 10**11
    for bad in ("lots", "24 GQ", "", "-3GB", True, 0):
        with pytest.raises(ValueError, match="GiB"):
            parse_size(bad, "fit")


def test_parse_memory():
    m = parse_memory("swap=on,chunk_size=4096,decode_budget=2GiB,decode_to_host=true,cache_dtype=none")
    assert m == MemoryPlan(swap="on", chunk_size=4096, decode_budget=2 * 2**30, decode_to_host=True)
    with pytest.raises(ValueError, match="unknown MemoryPlan field 'chunk'"):
        parse_memory("chunk=4")
    with pytest.raises(ValueError, match="chunk_size must be an int"):
        parse_memory("chunk_size=big")
    with pytest.raises(ValueError, match="name=value"):
        parse_memory("swap")


def test_bad_model_and_resolution():
    with pytest.raises(ValueError, match="model must be one of .*wan2.1-14b"):
        sp.build("wan9")
    with pytest.raises(ValueError, match=r"height=1080 is not divisible by 16 .* nearest valid: 1072 or 1088"):
        sp.build("wan2.1-14b", height=1080, width=1920)
    with pytest.raises(ValueError, match=r"frames=80: .* 1 \+ a multiple of 4 .* nearest valid: 77 or 81"):
        sp.build("wan2.1-1.3b", frames=80)
    with pytest.raises(ValueError, match=r"width=700 is not divisible by 32"):
        sp.build("ltx-video", width=700)
    with pytest.raises(ValueError, match="dtype must be one of"):
        sp.build("wan2.1-1.3b", dtype="int8")


def test_published_sizes_are_built_on_meta_without_memory():
    b = sp.build("wan2.1-14b", height=720, width=1280, frames=81)
    comps = sp.component_bytes(b.pipe)
    params = sum(p.numel() for p in b.pipe.transformer.parameters())
    assert 13.5e9 < params < 15e9
    assert comps["transformer"] >= 2 * params - 10**8  # bf16 (Wan keeps a few norms in fp32)
    w = sp.stage_weights(b.pipe, "model")
    assert w["denoise"] == comps["transformer"] and w["decode"] == comps["vae"]
    g = sp.stage_weights(b.pipe, "group")["denoise"]
    assert g < comps["transformer"] / 10


def test_plan_api_tiny_and_fit():
    r = lightcache.plan("wan2.1-1.3b", scale="tiny", dtype="fp32", memory="swap=on,chunk_size=3", attention="cpu",
                        steps=20)
    names = [s.name for s in r.scenarios]
    assert names == ["uncached", "precise-flash", "precise-flash + plan"]
    flash, planned = r.scenarios[1].figures, r.scenarios[2].figures
    assert flash.cache_device > 0 and planned.cache_device < flash.cache_device
    text = r.table()
    assert "precise-flash + plan" in text and "worst case" in text
    d = json.loads(json.dumps(r.as_dict(), default=str))
    assert d["environment"]["torch"] == torch.__version__ and d["scenarios"][0]["peak"]["denoise"] > 0
    # a cap below the weights alone: said so, with what offload leaves
    weights = max(r.scenarios[0].figures.weights.values())
    low = lightcache.plan("wan2.1-1.3b", scale="tiny", dtype="fp32", fit=weights // 2, attention="cpu")
    assert "the weights alone take" in " ".join(low.fit.get("notes", [])) + low.fit["verdict"]
    ok = lightcache.plan("wan2.1-1.3b", scale="tiny", dtype="fp32", fit="1GB", attention="cpu")
    assert ok.fit["verdict"].startswith("fits") and "lightcache.enable(pipe" in ok.fit["line"]


def test_cli_plan(capsys, tmp_path):
    from lightcache.cli import main

    out = tmp_path / "plan.json"
    png = tmp_path / "plan.png"
    rc = main(["plan", "--model", "ltx-video", "--scale", "tiny", "--dtype", "fp32", "--policy", "easycache",
               "--memory", "swap=on", "--json", str(out), "--png", str(png)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "easycache + plan" in captured.out
    # one progress line per simulation on stderr: uncached, the policy, the policy with the plan
    lines = [l for l in captured.err.splitlines() if l.startswith("lightcache plan: simulation ")]
    assert len(lines) == 3 and lines[0].startswith("lightcache plan: simulation 1: none, MemoryPlan(swap='off')")
    assert lines[2].startswith("lightcache plan: simulation 3: easycache, MemoryPlan(swap='on')") and " s (" in lines[2]
    assert main(["plan", "--model", "ltx-video", "--scale", "tiny", "--dtype", "fp32", "--quiet"]) == 0
    assert "simulation" not in capsys.readouterr().err
    seen = []
    lightcache.plan("ltx-video", scale="tiny", dtype="fp32", policy="none", progress=seen.append)
    assert len(seen) == 1 and seen[0].startswith("simulation 1: none")
    with pytest.raises(ValueError, match="progress must be None or a callable"):
        lightcache.plan("ltx-video", scale="tiny", progress="yes")
    d = json.loads(out.read_text())
    assert d["command"].startswith("lightcache plan --model ltx-video") and png.stat().st_size > 0
    assert main(["plan", "--model", "ltx-video", "--scale", "tiny", "--fit", "lots"]) == 2
    err = capsys.readouterr().err
    assert "fit must be" in err and "GiB" in err and "'lots'" in err
    assert main(["plan", "--model", "nope"]) == 2
    assert "model must be one of" in capsys.readouterr().err


def _save_configs(pipe, folder):
    """A pipeline folder with config files only (what a checkpoint has, minus the weights)."""
    import os

    pipe.save_config(folder)
    for name, comp in pipe.components.items():
        sub = os.path.join(folder, name)
        if hasattr(comp, "save_config"):
            comp.save_config(sub)
        elif hasattr(getattr(comp, "config", None), "save_pretrained"):  # transformers models
            comp.config.save_pretrained(sub)


@pytest.mark.parametrize("name", ["wan2.1-1.3b", "hunyuanvideo", "svd"])
def test_checkpoint_folder_is_read_from_its_configs(name, tmp_path):
    ref = sp.build(name, scale="tiny", dtype="fp32")
    _save_configs(ref.pipe, str(tmp_path))
    b = sp.build(str(tmp_path), dtype="fp32", height=ref.height, width=ref.width, frames=ref.frames)
    assert type(b.pipe) is type(ref.pipe)
    assert sp.component_bytes(b.pipe) == sp.component_bytes(ref.pipe)
    assert all(t.device.type == "meta" for t in b.pipe.components["vae"].parameters())
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="lightcache plan simulates"):
        sp.build(str(tmp_path))


@needs_unet
def test_unet_fit_picks_the_fewest_pieces_of_row_chunks_and_byte_budgets():
    """A UNet's fit tries per-operation byte budgets (chunk_size="auto") before row chunks: a budget
    splits only the operations wider than it. At the UNet proxy's 21.5 MiB cap (below its uncached 21.56 MiB peak, the top-resolution
    GEGLU feed-forward's) the largest fitting row chunk, 4096, splits every top-level resnet and
    transformer block (9 extra pieces a call); the budget splits only those feed-forwards (6). The
    simulated piece count is what a CPU run of the pick counts, and the pick's output equals the
    unplanned run's exactly (a feed-forward treats each row alone)."""
    from lightcache.memory.chunk_spec import counting
    from lightcache.proxy import load
    from lightcache.simulate.planner import CHUNKS, _Sim, chunk_budgets, expected_cost

    cap = int(21.5 * 2**20)
    built = sp.build("unet-proxy", dtype="fp32")
    res = lightcache.plan(built, policy="deepcache", fit=cap)
    assert res.fit["verdict"].startswith("fits") and res.scenarios[-1].figures.pipeline_peak <= cap
    picked = parse_memory(res.fit["memory"][len("MemoryPlan("):-1].replace("'", "").replace(", ", ","))
    assert picked.chunk_size == "auto" and picked.swap == "off"
    assert res.fit["expected_cost"]["extra_pieces_per_call"] == 6.0

    sim = _Sim(sp.build("unet-proxy", dtype="fp32"), "auto", 50)
    pol = DeepCache()
    budgets = chunk_budgets(sim, pol, dict(swap="off"))
    assert budgets == sorted(set(budgets), reverse=True) and picked.chunk_budget in budgets
    rows = None
    for c in CHUNKS:  # the largest fitting row chunk, as the fit's row search finds it
        cand = dict(swap="off", chunk_size=c)
        f = sim.cached(pol, cand, latent_only=True)
        if f.peak["denoise"] <= cap:
            rows = cand
            break
    assert rows == dict(swap="off", chunk_size=4096) and expected_cost(sim, rows)["extra_pieces_per_call"] == 9.0

    pipe = load.load_proxy("unet_proxy", device="cpu")
    kw = load.call_kwargs(pipe, [0], num_inference_steps=3, output_type="pt")
    kw.pop("generator")
    pipe.set_progress_bar_config(disable=True)
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    outs = []
    try:
        for memory in (None, picked):
            lightcache.enable(pipe, policy=DeepCache(), memory=memory)
            try:
                with counting() as count:
                    outs.append(pipe(**kw, generator=torch.Generator("cpu").manual_seed(0)).frames)
            finally:
                lightcache.disable(pipe)
    finally:
        handle.remove()
    assert torch.equal(torch.as_tensor(outs[0]), torch.as_tensor(outs[1]))
    # every call, full or shallow, runs the top-resolution blocks whose feed-forwards split in two
    assert count.calls > 0 and count.pieces == 2 * count.calls
    per_call = (count.pieces - count.calls) / (len(calls) // 2)  # the hook saw both runs
    assert per_call == res.fit["expected_cost"]["extra_pieces_per_call"]


def test_proxy_models_are_simulated_at_their_native_size():
    with pytest.raises(ValueError, match="native size"):
        sp.build("unet-proxy", height=64)
    with pytest.raises(ValueError, match="unet-proxy"):
        sp.build("no-such-model")
