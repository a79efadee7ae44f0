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
