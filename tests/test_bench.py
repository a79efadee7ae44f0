"""`lightcache bench --quick` smoke test and bad input."""

import json

import pytest

from lightcache import bench


def test_quick_bench_writes_table_json_and_plots(tmp_path, capsys):
    result = bench.main(["--quick", "--model", "wan-tiny", "--out", str(tmp_path), "--no-progress", "--repeats", "3",
                         "--methods", "easycache,precise-flash,easycache+mem,diffusers-fbc,deepcache,no-such-method,cache-dit"])
    out = capsys.readouterr().out
    assert "speed-up" in out and "precise-flash" in out and "random weights" in out
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    for name in ("none (reference)", "easycache", "precise-flash", "easycache+mem", "diffusers-fbc"):
        assert rows[name]["status"] == "ok", rows[name]
        assert len(rows[name]["times"]) == 3 and rows[name]["speedup"] > 0
        assert rows[name]["psnr"] is None  # random weights: no fidelity numbers
        assert rows[name]["peak_bytes"]["denoise"] > 0  # CPU tracker
    assert rows["precise-flash"]["reuse_ratio"] > 0
    assert rows["deepcache"]["status"] == "does not apply to a dit model"
    assert rows["no-such-method"]["status"].startswith("unknown method")
    import importlib.util

    expected = "ok" if importlib.util.find_spec("cache_dit") else "not installed (pip install cache-dit)"
    assert rows["cache-dit"]["status"] == expected
    for f in ("pareto.png", "memory.png", "timeline.png", "side_by_side.gif"):
        assert (tmp_path / f).stat().st_size > 0
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
