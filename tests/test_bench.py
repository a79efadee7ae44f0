"""`lightcache bench`: quick smoke run, realistic-size configurations (tiny scale on CPU, full
scale on the meta device), MagCache/FasterCache peers, threshold sweeps, bad input."""

import importlib.util
import json
import math

import pytest
import torch

import lightcache
from lightcache import bench, bench_models


def test_quick_bench_writes_table_json_and_plots(tmp_path, capsys):
    result = bench.main(["--quick", "--model", "wan-tiny", "--out", str(tmp_path), "--no-progress", "--repeats", "3",
                         "--methods", "easycache,precise-flash,easycache+mem,diffusers-fbc,diffusers-magcache,"
                         "diffusers-fastercache,deepcache,no-such-method,cache-dit"])
    out = capsys.readouterr().out
    assert "speed-up" in out and "precise-flash" in out
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    for name in ("none (reference)", "easycache", "precise-flash", "easycache+mem", "diffusers-fbc", "diffusers-magcache"):
        assert rows[name]["status"] == "ok", rows[name]
        assert len(rows[name]["times"]) == 3 and rows[name]["speedup"] > 0
        assert rows[name]["psnr"] is None  # random weights: no fidelity numbers
        if rows[name]["note"] is None:
            assert rows[name]["peak_bytes"]["denoise"] > 0  # CPU tracker
        else:  # a peer lightcache refuses to meter (stacking guard): unmetered, said under the table
            assert rows[name]["note"].startswith("memory not metered: CacheStackingError: ") and not name.startswith(
                ("easycache", "precise", "none"))
            assert rows[name]["peak_bytes"] == {} and f"note: {name}: memory not metered" in out
        if name != "none (reference)":  # the table's fidelity column says why there are no numbers
            assert f"{name} " in out and bench.RANDOM_WEIGHTS_NA in out.split(f"\n{name} ")[1].splitlines()[0]
    assert data["fidelity"] == "n/a (random weights)"
    assert rows["precise-flash"]["reuse_ratio"] > 0
    # MagCache ran on ratios from diffusers' own calibration run (one per step, the first is 1.0)
    ratios = rows["diffusers-magcache"]["settings"]["mag_ratios"]
    assert len(ratios) == data["steps"] == 10 and ratios[0] == 1.0 and all(math.isfinite(r) and r > 0 for r in ratios)
    # WanPipeline runs cond and uncond as two batch-1 calls: FasterCache says why it does not apply
    assert rows["diffusers-fastercache"]["status"] == (
        "not applicable: WanPipeline called the denoiser 20 times with batch 1; diffusers FasterCache needs the "
        "uncond and cond branches batched in one call (batch 2)")
    assert rows["deepcache"]["status"] == "does not apply to a dit model"
    assert rows["no-such-method"]["status"].startswith("unknown method")

    expected = "ok" if importlib.util.find_spec("cache_dit") else "not installed (pip install cache-dit)"
    assert rows["cache-dit"]["status"] == expected
    for f in ("pareto.png", "memory.png", "timeline.png", "side_by_side.gif", "side_by_side.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert (tmp_path / "side_by_side.mp4").exists() == (importlib.util.find_spec("imageio_ffmpeg") is not None)
    # the spread of the timed repeats beside the medians, in the table and results.json
    assert out.splitlines()[1].split()[:5] == ["method", "speed-up", "min-max", "time", "s"]
    for name in ("easycache", "diffusers-fbc"):
        r = rows[name]
        assert r["time_range_s"] == [min(r["times"]), max(r["times"])] and r["time_s"] == sorted(r["times"])[1]
        lo, hi = r["speedup_range"]
        assert lo <= r["speedup"] <= hi or math.isclose(lo, hi)
        cells = out.split(f"\n{name} ")[1].split()
        assert cells[1] == f"{lo:.2f}-{hi:.2f}" and cells[3] == f"{min(r['times']):.3f}-{max(r['times']):.3f}"
    assert [r["method"] for r in result["rows"]] == list(rows)


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--model", "sd-xl", "--out", str(tmp_path)])
    assert "--model must be one of" in capsys.readouterr().err


def test_missing_proxy_weights_is_a_clear_error(tmp_path, monkeypatch):
    from lightcache.proxy import load

    monkeypatch.setattr(load, "weights_available", lambda name: False)
    with pytest.raises(SystemExit, match="not in this installation"):
        bench.main(["--model", "wan-proxy", "--out", str(tmp_path), "--quick"])


def test_checkpoint_folder_runs_and_missing_folder_is_clear(tmp_path, capsys):
    import torch

    from lightcache.proxy import load

    if not load.weights_available("wan_proxy"):
        pytest.skip("the trained Wan proxy is not installed")
    with pytest.raises(SystemExit, match="no model_index.json"):
        bench.main(["--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    pipe = load.load_wan_proxy()
    pos, neg = load.embeds_for(pipe, [0])
    torch.save({"prompt_embeds": pos, "negative_prompt_embeds": neg}, tmp_path / "embeds.pt")
    with pytest.raises(SystemExit, match="no text encoder"):
        bench.main(["--checkpoint", str(load.proxy_dir("wan_proxy")), "--out", str(tmp_path)])
    result = bench.main(["--checkpoint", str(load.proxy_dir("wan_proxy")), "--prompt-embeds", str(tmp_path / "embeds.pt"),
                         "--height", "32", "--width", "32", "--frames", "9", "--steps", "6", "--repeats", "1",
                         "--methods", "precise-flash", "--out", str(tmp_path / "out"), "--no-progress"])
    rows = {r["method"]: r for r in result["rows"]}
    assert result["random_weights"] is False and rows["precise-flash"]["status"] == "ok"
    assert rows["precise-flash"]["psnr"] is not None  # a trained checkpoint gets fidelity numbers


# --- realistic-size configurations ----------------------------------------------------------------

# Published parameter counts of the denoisers (diffusers checkpoints), in billions.
PUBLISHED_PARAMS_B = {
    "wan2.1-1.3b": 1.419, "wan2.1-14b": 14.288, "hunyuanvideo": 12.821, "cogvideox-5b": 5.570,
    "ltx-video": 1.923, "svd": 1.525, "animatediff": 1.313,  # AnimateDiff: SD 1.5 UNet 0.860 + adapter 0.453
}


@pytest.mark.parametrize("name", sorted(bench_models.REALISTIC))
def test_full_scale_builds_published_sizes_on_meta(name):
    """The full-scale builders (the GPU path) assemble the pipeline with the published sizes; on
    the meta device nothing is allocated."""
    pipe, kw, family, desc = bench_models.build(name, "meta", 20, "full")
    den = bench._denoiser(pipe)
    n = sum(p.numel() for p in den.parameters()) / 1e9
    assert n == pytest.approx(PUBLISHED_PARAMS_B[name], abs=0.0015), n
    assert den.dtype == torch.bfloat16 and family == bench_models.REALISTIC[name].family
    assert desc.startswith(f"random-weight {bench_models.REALISTIC[name].label} config")
    assert kw["num_inference_steps"] == 20 and kw["output_type"] == "pt"


def test_full_scale_is_refused_on_cpu(tmp_path):
    for name in bench_models.REALISTIC:
        with pytest.raises(SystemExit, match=f"--model {name} at full size .* needs a GPU: use --device cuda, or "
                                              "--scale tiny"):
            bench.main(["--model", name, "--device", "cpu", "--out", str(tmp_path)])


# one of our methods per family, and FasterCache where uncond/cond are batched (CogVideoX)
_TINY_METHODS = {"dit": "easycache", "unet": "deepcache"}


@pytest.mark.parametrize("name", sorted(bench_models.REALISTIC))
def test_realistic_config_runs_tiny_scale_through_the_bench(name, tmp_path, capsys):
    family = bench_models.REALISTIC[name].family
    methods = _TINY_METHODS[family] + (",diffusers-fastercache" if name in ("cogvideox-5b", "ltx-video") else "")
    # 2 steps: LTX's scheduler (shift_terminal) cannot make a 1-step schedule
    result = bench.main(["--model", name, "--scale", "tiny", "--steps", "2", "--repeats", "1", "--methods", methods,
                         "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    rows = {r["method"]: r for r in result["rows"]}
    assert result["random_weights"] and "tiny scale" in result["model_description"]
    assert bench.RANDOM_WEIGHTS_NA in out
    for row in rows.values():
        if row["status"] == "ok":
            assert row["speedup"] > 0 and row["psnr"] is None
            if row["note"] is None:
                assert row["peak_bytes"]["denoise"] > 0
            else:  # a peer lightcache refuses to meter (stacking guard)
                assert row["note"].startswith("memory not metered: ") and row["peak_bytes"] == {}
                assert row["method"].startswith("diffusers-")
    assert rows[_TINY_METHODS[family]]["status"] == "ok"
    if name == "cogvideox-5b":  # CogVideoX batches uncond + cond: FasterCache runs
        assert rows["diffusers-fastercache"]["status"] == "ok"
    if name == "ltx-video":  # LTX works on packed tokens: no frame layout for FasterCache
        assert rows["diffusers-fastercache"]["status"].startswith("not applicable: FasterCache needs the denoiser's "
                                                                  "frame layout; LTXVideoTransformer3DModel")


def test_scale_and_size_flags_only_for_realistic_models(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--model", "wan-tiny", "--scale", "tiny", "--out", str(tmp_path)])
    assert "--scale applies to the realistic-size models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--model", "wan-tiny", "--height", "64", "--out", str(tmp_path)])
    assert "--height apply to --checkpoint and the realistic-size models" in capsys.readouterr().err
    with pytest.raises(ValueError, match="scale must be one of"):
        bench_models.build("svd", "cpu", 2, scale="small")


# --- peers ------------------------------------------------------------------------------------------


def test_a_peer_config_that_hooks_nothing_fails_loudly():
    """diffusers' default TaylorSeer patterns match no module of Wan (attn1/attn2): that must be an
    error, not a silent 1.0x row; the bench's own patterns hook every block's attentions and FFN."""
    from diffusers import TaylorSeerCacheConfig

    model = bench._wan_tiny("cpu", 2)
    enable, disable = bench._diffusers_peer(lambda m, steps: TaylorSeerCacheConfig())
    with pytest.raises(RuntimeError, match="TaylorSeerCacheConfig hooked no module of WanTransformer3DModel"):
        enable(model, 2)
    assert not model.pipe.transformer.is_cache_enabled
    method = bench.make_method("diffusers-taylorseer")
    method.enable(model, 2)
    try:
        assert bench._hooked_modules(model.pipe.transformer) == 4 * 3  # 4 blocks x (attn1, attn2, ffn)
    finally:
        method.disable(model)


def _ffn_calls(model):
    """A counter of the blocks' feed-forward calls: they run only when the block computes (a
    skipped block's forward is replaced, so its own call is no evidence)."""
    calls = [0]
    handles = [b.ffn.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
               for b in model.pipe.transformer.blocks]
    return calls, handles


@pytest.fixture(scope="module")
def wan_tiny():
    """The bench's 4-block random-weight Wan, 6 steps, and its uncached video and block FLOPs."""
    model = bench._wan_tiny("cpu", 6)
    model.pipe.set_progress_bar_config(disable=True)
    calls, handles = _ffn_calls(model)
    try:
        video, flops = bench._counted_run(model, "cpu")
    finally:
        for h in handles:
            h.remove()
    assert calls[0] == 6 * 2 * 4  # steps x CFG branches x blocks
    return model, video, flops


def test_block_flops_column_of_a_peer_is_the_counted_ratio(wan_tiny, capsys):
    """diffusers FBC at a threshold that skips: the bench's block-FLOP fraction is the fraction of
    block computations that ran (every block call of this model costs the same), counted here
    independently on the blocks' FFNs; the table prints it."""
    model, ref_video, ref_flops = wan_tiny
    ref_calls = 6 * 2 * 4  # counted by the fixture
    calls, handles = _ffn_calls(model)
    try:
        _, _, _, flops = bench._metered(model, bench.make_method("diffusers-fbc", 1e9), 6, "cpu")
    finally:
        for h in handles:
            h.remove()
    assert ref_flops > 0 and 0 < calls[0] < ref_calls  # the first block always runs, the rest skip after step 1
    assert flops / ref_flops == pytest.approx(calls[0] / ref_calls, rel=1e-12)
    row = bench.Row("diffusers-fbc", block_flops=flops, block_flops_ratio=flops / ref_flops)
    result = dict(random_weights=True, model_description="d", device="cpu", steps=6, repeats=1, rows=[row.__dict__])
    head, _, line = bench.format_table(result).splitlines()[1:4]
    assert head.split()[7:9] == ["blk", "FLOPs"] and line.split()[6] == f"{flops / ref_flops:.2f}"


def test_block_flops_of_our_step_policy_match_its_report(wan_tiny):
    """EasyCache skips whole denoiser calls: the counted block-FLOP fraction equals
    report.block_compute_ratio exactly."""
    import lightcache

    model, _, ref_flops = wan_tiny
    method = bench.make_method("easycache", 10.0)
    method.enable(model, 6)
    try:
        _, flops = bench._counted_run(model, "cpu")
        ratio = lightcache.report(model.pipe).block_compute_ratio
    finally:
        method.disable(model)
    assert ratio < 1 and flops / ref_flops == pytest.approx(ratio, rel=1e-12)


def test_cache_dit_depth_rule_and_sweep_grid():
    assert [bench.cache_dit_fn(n) for n in (1, 4, 15, 16, 30, 40)] == [1, 1, 1, 8, 8, 8]
    for name in ("cache-dit", "cache-dit-taylorseer"):
        knob, grid = bench.SWEEPS[name]
        assert knob == "residual_diff_threshold" and grid == (0.08, 0.12, 0.16, 0.24, 0.5)
        assert bench.make_method(name, 0.16).settings["residual_diff_threshold"] == 0.16
        assert bench.make_method(name).settings["residual_diff_threshold"] == bench.CACHE_DIT_THRESHOLD == 0.08
    assert bench.make_method("cache-dit-taylorseer").settings["calibrator"] == "TaylorSeer order 1"
    assert bench.make_method("cache-dit").settings["calibrator"] is None


def test_deepcache_and_the_package_sweep_their_interval():
    for name, field in (("deepcache", "interval"), ("deepcache-pkg", "cache_interval")):
        assert bench.SWEEPS[name] == (field, (2, 3, 4, 5))
        assert bench.make_method(name, 4).settings[field] == 4
        assert bench.make_method(name).settings[field] == 3
    assert bench.SWEEPS["diffusers-fastercache"] == ("spatial_attention_block_skip_range", (2, 3, 4))
    assert bench.make_method("diffusers-fastercache", 3).settings["spatial_attention_block_skip_range"] == 3
    assert bench.make_method("diffusers-fastercache").settings["spatial_attention_block_skip_range"] == 2


def test_fastercache_applicability_records_the_batches_itself(wan_tiny):
    """The sweep asks whether FasterCache applies before any reference run: the check runs one
    uncached call itself to see how the pipeline batches its guidance branches."""
    model = wan_tiny[0]
    model.device, model.denoiser_batches = "cpu", []
    reason = bench._fastercache_applies(model)
    assert model.denoiser_batches == [1] * 12  # 6 steps x 2 guidance calls of batch 1
    assert reason.startswith("not applicable: WanPipeline called the denoiser 12 times with batch 1")


def test_bench_deepcache_is_the_packages_default_branch():
    """The bench's "deepcache" runs DeepCache.from_package(interval, 0), the package's default
    branch (down block 0's first layer); where the package is installed, its output is
    bit-identical to the package's on the same pipeline (fewer block FLOPs: the package also runs
    work whose output it discards)."""
    model = bench._realistic("animatediff")("cpu", 4, scale="tiny")
    model.device = "cpu"
    model.pipe.set_progress_bar_config(disable=True)
    method = bench.make_method("deepcache", 2)
    assert method.settings == {"interval": 2, "branch": 0, "layer": 0}
    method.enable(model, 4)
    try:
        assert bench._denoiser(model.pipe)._lightcache_session.policy == lightcache.DeepCache.from_package(2, 0)
        ours, ours_flops = bench._counted_run(model, "cpu")
    finally:
        method.disable(model)
    if importlib.util.find_spec("DeepCache") is None:
        pytest.skip("the DeepCache package is not installed (pip install DeepCache): no output to compare with")
    pkg = bench.make_method("deepcache-pkg", 2)
    pkg.enable(model, 4)
    try:
        theirs, theirs_flops = bench._counted_run(model, "cpu")
    finally:
        pkg.disable(model)
    assert torch.equal(ours, theirs)
    assert ours_flops < theirs_flops


@pytest.mark.parametrize("name", ["cache-dit", "cache-dit-taylorseer"])
def test_cache_dit_runs_skips_blocks_and_restores_exactly(name, wan_tiny, capsys):
    if importlib.util.find_spec("cache_dit") is None:
        pytest.skip("cache-dit is not installed (pip install cache-dit): its bench rows say so")
    model, ref_video, ref_flops = wan_tiny
    method = bench.make_method(name, 1e9)  # permissive: every step after the warm-up reuses
    assert bench._cache_dit_applies(model) is None and bench.cache_dit_blocks(model.pipe) == [4]
    method.enable(model, 6)
    try:
        video, flops = bench._counted_run(model, "cpu")
    finally:
        method.disable(model)
    # F1B0 on 4 blocks, warm-up min(8, 20% of 6) = 1 step: 5 steps x 2 branches skip 3 of 4 blocks
    assert method.settings["Fn_compute_blocks"] == 1 and method.settings["max_warmup_steps"] == 1
    assert flops / ref_flops == pytest.approx(1 - 5 * 2 * 3 / (6 * 2 * 4), rel=1e-12)
    assert not torch.equal(video, ref_video)
    after, after_flops = bench._counted_run(model, "cpu")
    assert torch.equal(after, ref_video) and after_flops == ref_flops  # disable restored the pipeline exactly
    assert "Cache-DiT" not in capsys.readouterr().out  # its log lines stay off the table's stdout


def test_cache_dit_refuses_a_unet_pipeline_with_the_reason():
    if importlib.util.find_spec("cache_dit") is None:
        pytest.skip("cache-dit is not installed (pip install cache-dit)")
    model = bench.BenchModel(type("AnimateDiffPipeline", (), {})(), {}, "unet", True, "stub")
    assert bench._cache_dit_applies(model).startswith("not applicable: cache-dit has no block adapter for "
                                                      "AnimateDiffPipeline")
    assert bench.make_method("cache-dit").families == ("dit",)


# --- sweeps -----------------------------------------------------------------------------------------


def test_matched_comparison_against_hand_computed_values():
    ours = [(1.0, 40.0), (2.0, 30.0), (3.0, 20.0), (1.5, 20.0)]  # (1.5, 20) is dominated by (2, 30)
    assert bench.pareto_front(ours) == [(1.0, 40.0), (2.0, 30.0), (3.0, 20.0)]
    front = bench.pareto_front(ours)
    assert bench.psnr_at(front, 1.5) == pytest.approx(35.0)
    assert bench.psnr_at(front, 0.8) is None  # below the slowest point: not measured, no claim
    assert bench.psnr_at(front, 3.1) is None
    peer = [(1.2, 33.0), (2.5, 22.0), (1.1, math.inf)]  # identical output: left out
    c = bench.matched_comparison(ours, peer)
    # both envelopes reach 1.2-2.5x: its ends and ours' 2.0 inside it (ours' 1.0 is outside)
    assert c["covered"] == [1.2, 2.5] and [m["speedup"] for m in c["matched"]] == [1.2, 2.0, 2.5]
    expected = [38 - 33, 30 - (33 + (22 - 33) * 0.8 / 1.3), 25 - 22]
    assert [m["margin_db"] for m in c["matched"]] == pytest.approx(expected)
    assert c["min_margin_db"] == pytest.approx(min(expected)) and c["ours_better_at_all"] is True
    assert c["mean_margin_db"] == pytest.approx(sum(expected) / 3)
    # the 1.5-3x window clipped to 1.5-2.5x: its ends and 2.0
    at15 = 35 - (33 + (22 - 33) * 0.3 / 1.3)
    assert c["window"]["range"] == [1.5, 2.5]
    assert c["window"]["min_margin_db"] == pytest.approx(min(at15, expected[1], expected[2]))
    # the grid 1.5/2/2.5/3x: 3.0 is beyond the peer's fastest point
    assert [m["speedup"] for m in c["at"]] == [1.5, 2.0, 2.5, 3.0]
    assert [m["margin_db"] for m in c["at"][:3]] == pytest.approx([at15, expected[1], expected[2]])
    assert c["at"][3] == {"speedup": 3.0, "ours_psnr": 20.0, "peer_psnr": None, "margin_db": None}
    assert bench.matched_comparison(ours, [(1.0, math.inf)])["matched"] == []


def test_a_peer_point_below_1x_is_not_matched_with_our_slowest_point():
    """The old psnr_at credited ours with its slowest point's PSNR at any slower speed-up, so a
    peer's 0.9x point was compared with it. Now margins only use speed-ups both envelopes reach."""
    ours = [(1.2, 36.0), (2.0, 30.0)]
    peer = [(0.9, 45.0), (1.6, 32.0), (2.4, 26.0)]
    c = bench.matched_comparison(ours, peer)
    assert c["covered"] == [1.2, 2.0] and [m["speedup"] for m in c["matched"]] == [1.2, 1.6, 2.0]
    peer_12 = 45 + (32 - 45) * 0.3 / 0.7  # the peer's envelope between 0.9x and 1.6x
    ours_16 = 36 + (30 - 36) * 0.4 / 0.8
    expected = [36 - peer_12, ours_16 - 32, 30 - (32 + (26 - 32) * 0.4 / 0.8)]
    assert [m["margin_db"] for m in c["matched"]] == pytest.approx(expected)
    assert c["ours_better_at_all"] is False and c["min_margin_db"] == pytest.approx(36 - peer_12)
    assert c["window"]["range"] == [1.5, 2.0]
    # envelopes that share no speed-up: no margin at all
    none = bench.matched_comparison([(1.2, 36.0), (1.4, 30.0)], [(1.5, 40.0), (2.0, 35.0)])
    assert none["covered"] is None and none["matched"] == [] and none["window"] is None
    assert none["note"] == "the envelopes share no speed-up (ours 1.20-1.40x, peer 1.50-2.00x)"


def test_spread_is_mean_min_max_and_sample_std():
    s = bench.spread([30.0, 32.0, 34.0, 36.0])
    assert s == {"n": 4, "mean": 33.0, "min": 30.0, "max": 36.0, "std": pytest.approx(math.sqrt((9 + 1 + 1 + 9) / 3))}
    assert bench.spread([31.5]) == {"n": 1, "mean": 31.5, "min": 31.5, "max": 31.5, "std": None}
    assert bench.spread([30.0, math.inf]) == {"n": 2, "mean": math.inf, "min": 30.0, "max": math.inf, "std": None}
    with pytest.raises(ValueError, match="no values"):
        bench.spread([])


def test_sweep_conditions_spread_over_the_vocabulary_and_seeds_skip_calibration():
    from lightcache.proxy.data import ALL_CONDITIONS, COLOURS, MOTIONS, SHAPES, Condition, prompt_embeds

    conds = [bench.sweep_condition(k) for k in range(48)]
    assert set(conds) == set(ALL_CONDITIONS) and conds[0] == Condition("circle", "red", "left")
    first4 = conds[:4]
    for attr, values in (("shape", SHAPES), ("colour", COLOURS), ("motion", MOTIONS)):
        assert {getattr(c, attr) for c in first4} == set(values)
    assert [bench.sweep_seed(j) for j in range(4)] == [0, 2, 3, 4] and bench.CALIBRATION_SEED == 1
    with pytest.raises(ValueError, match="0..47"):
        bench.sweep_condition(48)
    # a stand-in model driven by the vocabulary (width 16, 3 tokens), on its condition 5: that one first
    base = bench.sweep_condition(5)
    kw = {"prompt_embeds": prompt_embeds(base, 16, 3), "negative_prompt_embeds": torch.zeros(1, 3, 16), "height": 8}
    model = bench.BenchModel(object(), kw, "dit", False, "stand-in")
    assert bench.vocabulary_condition(model) == base
    got = bench.condition_models(model, 3)
    assert [label for label, _ in got] == [str(base), str(conds[0]), str(conds[1])]
    for (label, m), cond in zip(got, (base, conds[0], conds[1])):
        assert torch.equal(m.kwargs["prompt_embeds"], prompt_embeds(cond, 16, 3)) and m.pipe is model.pipe
        assert m.kwargs["height"] == 8 and m.kwargs["negative_prompt_embeds"] is kw["negative_prompt_embeds"]
    assert bench.condition_models(model, 1) == [(str(base), model)]
    # a prompt outside the vocabulary: one condition only, and the flag named otherwise
    other = bench.BenchModel(object(), {**kw, "prompt_embeds": torch.ones(1, 3, 16)}, "dit", False, "own prompt")
    assert bench.condition_models(other, 1) == [("the model's own inputs", other)]
    with pytest.raises(SystemExit, match="--conditions 2: own prompt is not driven by the proxy vocabulary"):
        bench.condition_models(other, 2)


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "--conditions", "0"], "--conditions must be >= 1 and <= 48 (the proxy vocabulary has 48), got 0"),
    (["--sweep", "--conditions", "49"], "--conditions must be >= 1 and <= 48 (the proxy vocabulary has 48), got 49"),
    (["--sweep", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["--conditions", "2"], "--conditions applies to --sweep"),
    (["--seeds", "2"], "--seeds applies to --sweep"),
    (["--sweep", "--seeds", "two"], "argument --seeds: invalid int value: 'two'"),
])
def test_conditions_and_seeds_flags_are_validated(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main([*argv, "--model", "wan-tiny", "--out", str(tmp_path)])
    assert message in capsys.readouterr().err


def test_conditions_and_seeds_parse_with_defaults_of_one():
    args = bench.build_parser().parse_args(["--sweep", "--conditions", "4", "--seeds", "2", "--steps", "50"])
    assert (args.conditions, args.seeds, args.steps) == (4, 2, 50)
    args = bench.build_parser().parse_args(["--sweep"])
    assert (args.conditions, args.seeds) == (1, 1)


def test_sweep_grid_picks_spread_settings():
    assert bench._grid((0.1, 0.2, 0.3, 0.5, 0.8), 2) == (0.1, 0.8)
    assert bench._grid((0.1, 0.2, 0.3, 0.5, 0.8), 3) == (0.1, 0.3, 0.8)
    assert bench._grid((2, 3, 4), None) == (2, 3, 4)


def test_sweep_on_the_proxy_writes_matched_speedup_comparisons(tmp_path, capsys):
    from lightcache.proxy import load

    if not load.weights_available("wan_proxy"):
        pytest.skip("the trained Wan proxy is not installed")
    result = bench.main(["--sweep", "--model", "wan-proxy", "--sweep-points", "2", "--steps", "6", "--repeats", "1",
                         "--methods", "easycache,precise-base,diffusers-fbc,diffusers-magcache", "--out", str(tmp_path),
                         "--no-progress"])
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mode"] == "sweep" and set(data["sweep"]) == {"easycache", "precise-base", "diffusers-fbc",
                                                               "diffusers-magcache"}
    for name, s in data["sweep"].items():
        assert [p["value"] for p in s["points"]] == list(bench._grid(bench.SWEEPS[name][1], 2))
        for p in s["points"]:
            assert p["status"] == "ok" and p["speedup"] > 0 and p["psnr"] is not None
    assert set(data["comparison"]) == {"diffusers-fbc", "diffusers-magcache"}
    for peer, c in data["comparison"].items():
        assert c["ours"] == "best of easycache, precise-base"
        assert set(c["by_method"]) == {"easycache", "precise-base"}
        for m in c["matched"]:  # every matched point is ours minus the peer at one speed-up
            assert m["margin_db"] == pytest.approx(m["ours_psnr"] - m["peer_psnr"])
        ours_pts = [(p["speedup"], p["psnr"]) for n in ("easycache", "precise-base") for p in data["sweep"][n]["points"]]
        peer_pts = [(p["speedup"], p["psnr"]) for p in data["sweep"][peer]["points"]]
        assert c["matched"] == bench.matched_comparison(ours_pts, peer_pts)["matched"]
    assert data["target"]["psnr_floor_db"] == 30.0 and data["target"]["speedup_goal"] == 2.5
    assert "Margin ours - peer in dB at matched speed-up" in out and (tmp_path / "sweep.png").stat().st_size > 0
    assert (tmp_path / "table.txt").read_text().rstrip("\n") in out
    assert result["comparison"] == data["comparison"]
    for peer, c in data["comparison"].items():  # the compute-normalised view: the same against 1 / block FLOPs
        pts = [(1 / p["block_flops_ratio"], p["psnr"]) for p in data["sweep"][peer]["points"]]
        ours_pts = [(1 / p["block_flops_ratio"], p["psnr"]) for n in ("easycache", "precise-base")
                    for p in data["sweep"][n]["points"]]
        assert c["block_flops"]["matched"] == bench.matched_comparison(ours_pts, pts)["matched"]
        assert c["block_flops"]["at"] == bench.matched_comparison(ours_pts, pts)["at"]
        assert f"\n{peer:<22} wall " in out


def test_sweep_fidelity_is_aggregated_over_conditions_and_seeds(wan_tiny, monkeypatch, tmp_path, capsys):
    """2 conditions x 2 seeds: each point's PSNR is the mean of its four runs (each against the
    uncached run of its own condition and seed), one of which is recomputed here by hand; the
    speed-up is timed on the first condition and seed only. The stand-in: the tiny Wan driven by
    the proxy vocabulary's embeddings (its width 32, 8 tokens), scored as if trained."""
    from dataclasses import replace

    from lightcache import metrics
    from lightcache.proxy.data import prompt_embeds

    tiny = wan_tiny[0]
    model = replace(tiny, random_weights=False, calibration={},
                    kwargs={**tiny.kwargs, "prompt_embeds": prompt_embeds(bench.sweep_condition(0), 32, 8)})
    monkeypatch.setattr(bench, "_load_model", lambda args: model)
    monkeypatch.setattr(bench, "_sweep_plot", lambda result, path: None)  # drawn in the test above
    result = bench.main(["--sweep", "--model", "wan-tiny", "--sweep-points", "1", "--steps", "6", "--repeats", "1",
                         "--conditions", "2", "--seeds", "2", "--methods", "easycache", "--out", str(tmp_path),
                         "--no-progress"])
    assert result["conditions"] == ["red circle moving left", "green square moving right"] and result["seeds"] == [0, 2]
    (p,) = result["sweep"]["easycache"]["points"]
    runs = p["runs"]
    assert [(r["condition"], r["seed"]) for r in runs] == [(c, s) for c in result["conditions"] for s in (0, 2)]
    psnrs = [r["psnr"] for r in runs]
    assert len(set(psnrs)) == 4 and all(math.isfinite(v) for v in psnrs)  # four different lossy runs
    mean = sum(psnrs) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in psnrs) / 3)
    assert p["psnr"] == pytest.approx(mean, rel=1e-12) and p["psnr_stats"]["std"] == pytest.approx(std, rel=1e-12)
    assert p["psnr_range"] == [min(psnrs), max(psnrs)] == [p["psnr_stats"]["min"], p["psnr_stats"]["max"]]
    assert p["ssim"] == pytest.approx(sum(r["ssim"] for r in runs) / 4, rel=1e-12)
    assert len(p["times"]) == 1 and len(result["reference"]["times"]) == 1  # timed once, on the first only
    # the (green square moving right, seed 2) runs by hand
    hand = replace(model, kwargs={**model.kwargs, "prompt_embeds": prompt_embeds(bench.sweep_condition(1), 32, 8)})
    ref = bench._run(hand, "cpu", seed=2)[1]
    method = bench.make_method("easycache", p["value"])
    method.enable(hand, 6)
    try:
        video = bench._run(hand, "cpu", seed=2)[1]
    finally:
        method.disable(hand)
    assert runs[3]["psnr"] == metrics.psnr(video, ref) and runs[3]["ssim"] == metrics.ssim(video, ref)
    out = capsys.readouterr().out
    assert "PSNR/SSIM over 2 conditions x 2 seeds" in out
    cells = out.split("\neasycache ")[1].split()
    assert cells[5:8] == [f"{mean:.2f}", f"{min(psnrs):.2f}-{max(psnrs):.2f}", f"{std:.2f}"]


def test_sweep_refuses_random_weights_and_unsweepable_methods(tmp_path):
    with pytest.raises(SystemExit, match="meaningless"):
        bench.main(["--sweep", "--model", "wan-tiny", "--out", str(tmp_path)])
    from lightcache.proxy import load

    if load.weights_available("wan_proxy"):
        with pytest.raises(SystemExit, match="cannot be swept; sweepable: easycache"):
            bench.main(["--sweep", "--model", "wan-proxy", "--methods", "easycache+mem", "--out", str(tmp_path)])
