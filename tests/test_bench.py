"""`lightcache bench`: quick smoke run, realistic-size configurations (tiny scale on CPU, full
scale on the meta device), MagCache/FasterCache peers, threshold sweeps, bad input."""

import importlib.util
import json
import math

import pytest
import torch

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
    assert bench.psnr_at(front, 0.8) == 40.0  # reached faster
    assert bench.psnr_at(front, 3.1) is None
    peer = [(1.2, 33.0), (2.5, 22.0), (1.1, math.inf)]  # identical output: left out
    c = bench.matched_comparison(ours, peer)
    # speed-ups: ours' 1.0, 2.0 and the peer's 1.2, 2.5 (up to min(3.0, 2.5))
    assert [m["speedup"] for m in c["matched"]] == [1.0, 1.2, 2.0, 2.5]
    expected = [40 - 33, 38 - 33, 30 - (33 + (22 - 33) * 0.8 / 1.3), 25 - 22]
    assert [m["margin_db"] for m in c["matched"]] == pytest.approx(expected)
    assert c["min_margin_db"] == pytest.approx(min(expected)) and c["ours_better_at_all"] is True
    assert bench.matched_comparison(ours, [(1.0, math.inf)])["matched"] == []


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
    assert "PSNR at matched speed-up" in out and (tmp_path / "sweep.png").stat().st_size > 0
    assert result["comparison"] == data["comparison"]


def test_sweep_refuses_random_weights_and_unsweepable_methods(tmp_path):
    with pytest.raises(SystemExit, match="meaningless"):
        bench.main(["--sweep", "--model", "wan-tiny", "--out", str(tmp_path)])
    from lightcache.proxy import load

    if load.weights_available("wan_proxy"):
        with pytest.raises(SystemExit, match="cannot be swept; sweepable: easycache"):
            bench.main(["--sweep", "--model", "wan-proxy", "--methods", "easycache+mem", "--out", str(tmp_path)])
