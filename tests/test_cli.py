"""The command lines: every flag of ``lightcache bench`` and ``lightcache plan`` has help text and a
shown default, parses to its documented default and value, and bad values are refused naming the
flag; ``--list-methods``; status lines from the first second; the timing spread in the table.
Parser-level only (no pipeline runs but the MagCache calibration on a 2-step tiny Wan): ~3 s."""

import argparse
import statistics

import pytest
import torch

from lightcache import bench, cli


def _flags(parser):
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _plan_parser():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["plan"]


def _shown_help(parser, action) -> str:
    """The help text of ``action`` as ``--help`` prints it, defaults filled in."""
    text = parser._get_formatter()._expand_help(action)
    return " ".join(text.split())


@pytest.mark.parametrize("which", ["bench", "plan"])
def test_every_flag_has_help_and_shows_its_default(which):
    parser = bench.build_parser() if which == "bench" else _plan_parser()
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    flags = _flags(parser)
    assert len(flags) >= (21 if which == "bench" else 16)
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
        shown = _shown_help(parser, action)
        if action.required:  # plan --model: nothing to default to
            continue
        assert "default" in shown, (action.option_strings, shown)
        if action.default is not None:  # argparse's formatter appends the value itself
            assert f"(default: {action.default})" in shown, (action.option_strings, shown)
        else:  # None defaults are explained in words, never printed as "None"
            assert "None" not in shown, (action.option_strings, shown)
    usage = parser.format_help()
    for action in flags:
        assert action.option_strings[0] in usage


BENCH_DEFAULTS = dict(model=None, methods=None, list_methods=False, steps=None, repeats=3,
                      device="cuda" if torch.cuda.is_available() else "cpu", out="bench-out", quick=False, scale=None,
                      sweep=False, sweep_points=None, conditions=1, seeds=1, checkpoint=None, dtype=None, offload="none", prompt=None,
                      prompt_embeds=None, height=None, width=None, frames=None, no_progress=False, threads=1)


def test_bench_defaults():
    assert vars(bench.build_parser().parse_args([])) == BENCH_DEFAULTS


@pytest.mark.parametrize("argv,attr,value", [
    (["--model", "unet-proxy"], "model", "unet-proxy"),
    (["--methods", "easycache,diffusers-fbc"], "methods", "easycache,diffusers-fbc"),
    (["--list-methods"], "list_methods", True),
    (["--steps", "7"], "steps", 7),
    (["--repeats", "5"], "repeats", 5),
    (["--device", "cuda:1"], "device", "cuda:1"),
    (["--out", "x/y"], "out", "x/y"),
    (["--quick"], "quick", True),
    (["--scale", "tiny"], "scale", "tiny"),
    (["--sweep"], "sweep", True),
    (["--sweep-points", "3"], "sweep_points", 3),
    (["--conditions", "4"], "conditions", 4),
    (["--seeds", "2"], "seeds", 2),
    (["--checkpoint", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"], "checkpoint", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    (["--dtype", "fp16"], "dtype", "fp16"),
    (["--offload", "group"], "offload", "group"),
    (["--prompt", "a cat"], "prompt", "a cat"),
    (["--prompt-embeds", "e.pt"], "prompt_embeds", "e.pt"),
    (["--height", "480"], "height", 480),
    (["--width", "832"], "width", 832),
    (["--frames", "81"], "frames", 81),
    (["--no-progress"], "no_progress", True),
    (["--threads", "2"], "threads", 2),
])
def test_each_bench_flag_parses(argv, attr, value):
    args = bench.build_parser().parse_args(argv)
    assert getattr(args, attr) == value
    assert {k: v for k, v in vars(args).items() if k != attr} == {k: v for k, v in BENCH_DEFAULTS.items() if k != attr}


def test_the_parametrised_flags_cover_the_parser():
    covered = {a for a in BENCH_DEFAULTS}
    assert covered == {a.dest for a in _flags(bench.build_parser())}


@pytest.mark.parametrize("argv,message", [
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--offload", "disk"], "argument --offload: invalid choice: 'disk'"),
    (["--scale", "small"], "argument --scale: invalid choice: 'small'"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
])
def test_bad_values_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_methods_help_lists_every_accepted_name():
    action = next(a for a in _flags(bench.build_parser()) if a.dest == "methods")
    listed = action.help.split("from: ")[1].split(" (")[0].split(", ")
    assert listed == list(bench.METHODS)


def test_list_methods_prints_each_with_families_and_install_state(capsys):
    import importlib.util

    assert bench.main(["--list-methods"]) == {"methods": list(bench.METHODS)}
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == list(bench.METHODS)
    for name, line in rows.items():
        fams = bench.make_method(name).families
        assert line.split()[1] == "/".join({"dit": "DiT", "unet": "UNet"}[f] for f in fams)
        assert line.endswith(bench.METHOD_INFO[name])
    assert rows["easycache"].split()[2] == "yes"
    cache_dit = "yes" if importlib.util.find_spec("cache_dit") else "no (pip install cache-dit)"
    assert cache_dit in rows["cache-dit"]
    assert set(bench.METHOD_INFO) == set(bench.METHODS)


PLAN_DEFAULTS = dict(height=None, width=None, frames=None, steps=50, dtype="bf16", policy=None, memory=None, fit=None,
                     attention="auto", offload="none", guidance=None, peers=False, scale="full", json=None, png=None,
                     piece_overhead=None, quiet=False)


def test_plan_flags_parse_as_before():
    args = cli.build_parser().parse_args(["plan", "--model", "wan2.1-1.3b"])
    assert {k: getattr(args, k) for k in PLAN_DEFAULTS} == PLAN_DEFAULTS and args.model == "wan2.1-1.3b"
    assert cli.build_parser().parse_args(["plan", "--model", "m", "--steps", "3", "--peers"]).steps == 3
    assert cli.build_parser().parse_args(["plan", "--model", "m", "--piece-overhead", "0.02"]).piece_overhead == 0.02


def test_plan_piece_overhead_reaches_the_fit_and_states_a_percentage(capsys):
    """--piece-overhead: the --fit verdict's expected cost in percent; a share outside [0, 1) is
    refused naming the argument."""
    import json

    assert cli.main(["plan", "--model", "wan2.1-1.3b", "--scale", "tiny", "--fit", "1MB", "--piece-overhead", "0.02",
                     "--json", "-"]) == 0
    cost = json.loads(capsys.readouterr().out)["fits"][0]["expected_cost"]  # at tiny size: swap + tiles, no chunk
    assert cost["piece_overhead"] == 0.02
    assert cost["percent"] == pytest.approx(100 * 0.02 * cost["extra_pieces_per_call"])
    assert cost["text"].startswith("expected cost: ~0 % slower than no plan (piece_overhead 0.02 of a call)")
    assert cli.main(["plan", "--model", "wan2.1-1.3b", "--scale", "tiny", "--piece-overhead", "1.5"]) == 2
    assert "piece_overhead must be a number in [0, 1)" in capsys.readouterr().err


def test_status_lines_come_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def stop(device, steps):
        raise SystemExit("stopped at the load")

    monkeypatch.setitem(bench.MODELS, "wan-tiny", stop)
    with pytest.raises(SystemExit, match="stopped at the load"):
        bench.main(["--model", "wan-tiny", "--out", str(tmp_path)])
    assert capsys.readouterr().err == "lightcache bench: loading wan-tiny on cpu ...\n"


def test_status_lines_go_through_tqdm_write(monkeypatch):
    """tqdm.write clears and redraws an active bar around the line, so bars are not garbled; the
    MagCache calibration notice is such a status line."""
    from tqdm.auto import tqdm

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, s, file=None, **kw: written.append((s, file))))
    model = bench._wan_tiny("cpu", 2)
    model.pipe.set_progress_bar_config(disable=True)
    ratios = bench.magcache_ratios(model, 2)
    assert len(ratios) == 2
    import sys

    assert written == [("lightcache bench: diffusers-magcache: calibrating mag_ratios first (MagCacheConfig("
                        "calibrate=True), one 2-step run, seed 1)", sys.stderr)]


class _Stub:
    def __init__(self, name):
        self.name = name

    def enable(self, model, steps):
        pass

    def disable(self, model):
        pass


def test_time_spread_and_per_round_speedups(monkeypatch, capsys):
    # the warm-up, then per round the reference and the method
    times = iter([9.0, 1.0, 0.5, 1.2, 0.4, 0.9, 0.6])
    monkeypatch.setattr(bench, "_run", lambda model, device: (next(times), None))
    ref, row = bench.Row("none (reference)"), bench.Row("m")
    bench._time_alternating(None, "cpu", [_Stub("m")], {"m": row}, ref, 2, 3, True, "t")
    assert ref.times == [1.0, 1.2, 0.9] and row.times == [0.5, 0.4, 0.6]
    assert row.time_s == 0.5 and row.time_range_s == [0.4, 0.6]
    assert row.speedup == pytest.approx(statistics.median(ref.times) / 0.5)
    assert row.speedup_range == pytest.approx([1.5, 3.0])  # 0.9/0.6, 1.2/0.4
    assert ref.speedup == 1.0 and ref.speedup_range == [1.0, 1.0]
    result = dict(random_weights=False, model_description="d", device="cpu", steps=2, repeats=3,
                  rows=[{**ref.__dict__, "psnr": None}, {**row.__dict__, "psnr": 31.0, "ssim": 0.9, "flicker": 0.01}])
    table = bench.format_table(result).splitlines()
    assert table[1].split()[:5] == ["method", "speed-up", "min-max", "time", "s"]
    assert table[4].split()[:5] == ["m", "2.00", "1.50-3.00", "0.500", "0.400-0.600"]


def test_the_command_says_it_is_starting_before_the_imports(monkeypatch, capsys):
    called = []
    monkeypatch.setattr(bench, "main", lambda argv: called.append(argv))
    assert cli.main(["bench", "--quick"]) == 0 and called == [["--quick"]]
    assert capsys.readouterr().err == "lightcache bench: starting (importing torch and diffusers) ...\n"
    assert cli.main(["bench", "--list-methods"]) == 0 and capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["--dtype", "fp16"], ["--offload", "model"], ["--prompt", "a cat"],
                                  ["--prompt-embeds", "e.pt"]])
def test_checkpoint_only_flags_are_refused_without_it(argv, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--model", "wan-tiny", "--out", str(tmp_path), *argv])
    assert f"{argv[0]} applies to --checkpoint" in capsys.readouterr().err
