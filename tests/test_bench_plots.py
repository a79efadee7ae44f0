"""The bench's figures and side-by-side clip, inspected through their matplotlib artists and pixels:
family envelopes (ours solid, peers dashed), one legend entry and marker per method, PSNR = inf on
the lossless row, titles, distinct memory colours, labelled panels with gaps, gif/png/mp4 files.
Synthetic results, no pipeline runs: ~3 s."""

import math

import numpy as np
import pytest
import torch

from lightcache import bench, bench_plots as bp


def _row(method, speedup, psnr, lo=None, hi=None, peaks=(0, 2 << 20, 3 << 20)):
    return {"method": method, "status": "ok", "speedup": speedup, "speedup_range": [lo or speedup, hi or speedup],
            "psnr": psnr, "reuse_ratio": 0.5 if bp.is_ours(method) else None, "timeline": [],
            "peak_bytes": dict(zip(bp.STAGES, peaks))}


def _result(rows, random_weights=False):
    return {"model_description": "trained proxy wan_proxy", "device": "cpu", "steps": 20, "repeats": 5,
            "random_weights": random_weights, "rows": rows}


ROWS = [
    {**_row("none (reference)", 1.0, None), "reuse_ratio": None},
    _row("easycache", 1.2, 50.0, 1.1, 1.3),
    _row("easycache+mem", 0.9, 50.0),  # slower, same PSNR: not on the EasyCache envelope
    _row("precise-base", 1.5, 30.0),
    _row("precise-turbo", 1.75, 25.5),
    _row("precise-flash", 1.8, 25.4),
    _row("precise-flash+mem", 1.6, 25.4),  # dominated by turbo
    _row("diffusers-fbc", 0.97, math.inf),  # identical to the reference
    _row("diffusers-taylorseer", 1.78, 29.5),
    {**_row("diffusers-magcache", None, None), "status": "failed: x"},  # not plotted
]


def _envelopes(ax):
    return {l.get_gid(): l for l in ax.lines if (l.get_gid() or "").startswith("envelope:")}


def test_pareto_draws_family_envelopes_legend_markers_and_the_lossless_row():
    fig = bp.pareto_figure(_result(ROWS))
    ax = fig.axes[0]
    env = _envelopes(ax)
    # families with >= 2 Pareto points: EasyCache has one (1.2x, 50 dB beats 0.9x, 50 dB), each peer one
    assert set(env) == {"envelope:precise"}
    line = env["envelope:precise"]
    assert list(zip(line.get_xdata(), line.get_ydata())) == [(1.5, 30.0), (1.75, 25.5), (1.8, 25.4)]
    assert line.get_linestyle() == "-"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["uncached reference"] + [r["method"] for r in ROWS[1:-1]]
    markers = [c.lines[0].get_marker() for c in ax.containers]  # one errorbar per plotted method, in row order
    assert len(markers) == 8 and len(set(markers)) == 8
    # inf is drawn, on the lossless row above every finite PSNR, and labelled
    y_inf = bp.lossless_row([r["psnr"] for r in ROWS[1:-1]])
    assert y_inf == 50.0 + max(3.0, 0.12 * (50.0 - 25.4))
    fbc = ax.containers[labels.index("diffusers-fbc") - 1].lines[0]
    assert list(fbc.get_xdata()) == [0.97] and list(fbc.get_ydata()) == [y_inf]
    assert fbc.get_markerfacecolor() == "white"  # a peer: open marker
    ticks = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    assert ticks[y_inf] == "lossless\n(PSNR inf)"
    assert ax.get_ylim()[1] > y_inf
    # the spread: easycache's error bar spans its min-max speed-up
    seg = ax.containers[0].lines[2][0].get_segments()[0]
    assert [p[0] for p in seg] == pytest.approx([1.1, 1.3])
    title = ax.get_title()
    assert "trained proxy wan_proxy" in title and "cpu, 20 steps" in title and "median of 5" in title
    bp._pyplot().close(fig)


def test_pareto_of_a_sweep_draws_peer_envelopes_dashed():
    rows = [_row(f"diffusers-fbc threshold={t}", s, p) for t, s, p in ((0.1, 1.2, 40.0), (0.2, 1.6, 33.0), (0.4, 2.0, 28.0))]
    rows += [_row(f"easycache threshold={t}", s, p) for t, s, p in ((0.1, 1.1, 45.0), (0.3, 1.7, 35.0))]
    fig = bp.pareto_figure(_result(rows), target={"psnr_floor_db": 30.0, "speedup_goal": 2.5})
    ax = fig.axes[0]
    env = _envelopes(ax)
    assert env["envelope:diffusers-fbc"].get_linestyle() == "--" and env["envelope:easycache"].get_linestyle() == "-"
    assert len(env["envelope:diffusers-fbc"].get_xdata()) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["uncached reference", "diffusers-fbc", "easycache"]
    bp._pyplot().close(fig)


def test_pareto_without_fidelity_is_a_speedup_chart():
    rows = [r for r in ROWS if r["speedup"] is not None]
    fig = bp.pareto_figure(_result(rows, random_weights=True))
    ax = fig.axes[0]
    bars = [p for c in ax.containers if hasattr(c, "patches") for p in c.patches]
    assert [b.get_width() for b in bars] == [r["speedup"] for r in rows[1:]]
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["method"] for r in rows[1:]]
    assert "random weights" in ax.get_title() and not _envelopes(ax)
    bp._pyplot().close(fig)


def test_memory_gives_every_method_its_own_colour():
    rows = [_row(name, 1.0 + i / 10, 30.0) for i, name in enumerate(bench.METHODS[:12])]
    fig = bp.memory_figure(_result(rows))
    ax = fig.axes[0]
    colours = [tuple(c.patches[0].get_facecolor()) for c in ax.containers]
    assert len(colours) == 12 and len(set(colours)) == 12
    # no row recorded an encode stage (prompt embeddings given): denoise and decode only
    assert [t.get_text() for t in ax.get_xticklabels()] == ["denoise", "decode"]
    assert all(len(c.patches) == 2 for c in ax.containers)
    assert [c.patches[0].get_height() for c in ax.containers] == [2.0] * 12  # MiB
    assert [c.patches[1].get_height() for c in ax.containers] == [3.0] * 12
    assert not [t for t in ax.texts if t.get_gid() == "unmetered"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(bench.METHODS[:12])
    assert "peak memory per stage" in ax.get_title() and "cpu, 20 steps" in ax.get_title()
    bp._pyplot().close(fig)


def test_memory_names_the_rows_it_could_not_meter():
    rows = [_row("easycache", 1.2, 40.0), {**_row("diffusers-fbc", 1.1, 41.0), "peak_bytes": {}}]
    fig = bp.memory_figure(_result(rows))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["easycache"]
    note, = [t for t in ax.texts if t.get_gid() == "unmetered"]
    assert note.get_text() == "not metered (see the notes in results.json): diffusers-fbc"
    bp._pyplot().close(fig)


@pytest.mark.parametrize("n", [3, 10, 15, 20, 26])
def test_method_colours_are_distinct(n):
    assert len(set(bp.method_colours(n))) == n


def test_side_by_side_panels_are_labelled_scaled_and_separated():
    g = torch.Generator().manual_seed(0)
    videos = {"none (reference)": torch.rand(1, 3, 3, 8, 12, generator=g), "precise-flash": torch.rand(1, 3, 3, 8, 12,
                                                                                                        generator=g)}
    result = _result(ROWS)
    frames = bp.side_by_side_frames(result, videos, panel=120, gap=10)
    assert len(frames) == 3  # one per video frame
    pw, ph = 120, 80  # long side 120 px: 12 -> 120, 8 -> 80
    label_h = 3 * 15 + 4
    assert frames[0].shape == (10 + label_h + ph + 10, 10 + 2 * (pw + 10), 3)
    y0 = 10 + label_h
    for f in range(3):
        for i, clip in enumerate(videos.values()):
            x0 = 10 + i * (pw + 10)
            panel = frames[f][y0:y0 + ph, x0:x0 + pw]
            want = (clip[0, f].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            assert np.array_equal(panel, want.repeat(10, axis=0).repeat(10, axis=1))  # nearest-neighbour x10
            assert (frames[f][10:y0, x0:x0 + pw] < 128).any()  # text drawn in the label strip
        assert (frames[f][y0:y0 + ph, 10 + pw:10 + pw + 10] == 255).all()  # the gap between panels
    assert bp.panel_label(ROWS[5], False) == ["precise-flash", "1.80x", "PSNR 25.40 dB"]
    assert bp.panel_label(ROWS[7], False) == ["diffusers-fbc", "0.97x", "PSNR inf (identical)"]
    assert bp.panel_label(ROWS[0], False) == ["uncached reference", "1.00x", "PSNR -"]
    assert bp.panel_label(ROWS[5], True)[2] == "PSNR n/a (random w.)"


def test_side_by_side_files_and_mp4_only_with_ffmpeg(tmp_path, monkeypatch):
    from PIL import Image

    videos = {"none (reference)": torch.rand(1, 4, 3, 8, 8), "easycache": torch.rand(1, 4, 3, 8, 8)}
    monkeypatch.setattr(bp, "ffmpeg_available", lambda: False)
    written = bp.write_side_by_side(_result(ROWS), videos, tmp_path)
    assert written == ["side_by_side.gif", "side_by_side.png", "side_by_side.txt"]
    with Image.open(tmp_path / "side_by_side.gif") as gif:
        assert gif.n_frames == 4
    assert not (tmp_path / "side_by_side.mp4").exists()
    assert (tmp_path / "side_by_side.txt").read_text() == "left to right, top to bottom: none (reference), easycache\n"

    import imageio.v2 as imageio

    saved = []
    monkeypatch.setattr(bp, "ffmpeg_available", lambda: True)
    monkeypatch.setattr(imageio, "mimsave", lambda path, frames, **kw: saved.append((path, frames, kw)))
    assert bp.write_side_by_side(_result(ROWS), videos, tmp_path)[-1] == "side_by_side.mp4"
    (path, frames, kw), = saved
    assert path == tmp_path / "side_by_side.mp4" and len(frames) == 4 and kw == {"fps": 5.0}
    assert frames[0].shape[0] % 16 == 0 and frames[0].shape[1] % 16 == 0  # padded for H.264


def test_bench_writes_all_figures(tmp_path):
    rows = [r for r in ROWS if r["speedup"] is not None]
    videos = {"none (reference)": torch.rand(1, 2, 3, 8, 8), "easycache": torch.rand(1, 2, 3, 8, 8)}
    written = bench.write_plots(_result(rows), videos, tmp_path)
    assert written[:3] == ["pareto.png", "memory.png", "timeline.png"]
    for name in written:
        assert (tmp_path / name).stat().st_size > 0
