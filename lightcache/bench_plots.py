"""The figures and the side-by-side clip ``lightcache bench`` writes.

Each figure function takes the bench's result dict (``results.json``) and returns the matplotlib
``Figure`` (drawn on ``ax`` when one is given), so that tests can inspect its artists; the bench
saves and closes it. Method families (EasyCache, PreciseCache, DeepCache, each peer) share a colour;
lightcache's families are drawn solid with filled markers, the peers dashed with open markers.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REFERENCE = "none (reference)"

# family key -> (label, is lightcache's own)
FAMILIES: Dict[str, Tuple[str, bool]] = {
    "easycache": ("EasyCache", True),
    "forecast": ("ForecastCache", True),
    "precise": ("PreciseCache", True),
    "deepcache": ("DeepCache", True),
    "diffusers-fbc": ("FirstBlockCache (diffusers)", False),
    "diffusers-taylorseer": ("TaylorSeer (diffusers)", False),
    "diffusers-pab": ("PAB (diffusers)", False),
    "diffusers-magcache": ("MagCache (diffusers)", False),
    "diffusers-fastercache": ("FasterCache (diffusers)", False),
    "cache-dit": ("cache-dit", False),
    "cache-dit-taylorseer": ("cache-dit + TaylorSeer", False),
    "deepcache-pkg": ("DeepCache package", False),
}
# distinct enough for 15 series on one plot
LOSSLESS_LABEL = "lossless\n(PSNR inf)"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "H", "8")


def series_of(method: str) -> str:
    """The legend entry of a row: the method name without a sweep setting ("easycache threshold=0.1")."""
    return method.split(" ")[0]


def family_of(method: str) -> str:
    """Family key of a method name: "precise-flash+mem" -> "precise", "easycache+mem" -> "easycache"."""
    base = series_of(method).split("+")[0]
    return "precise" if base.startswith("precise-") else base


def is_ours(method: str) -> bool:
    return FAMILIES.get(family_of(method), ("", False))[1]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig, ax = _pyplot().subplots(figsize=figsize)
    return fig, ax


def figure_title(result: dict, what: str) -> str:
    return (f"{what}: {result['model_description']}\n{result['device']}, {result['steps']} steps, "
            f"speed-up: median of {result['repeats']} alternating runs (bars: min-max)")


def envelope(points: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The points of ``points`` (speed-up, PSNR) that no other point beats on both, by ascending
    speed-up (a point equal on both to a kept one is dropped)."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (-p[0], -p[1])):  # fastest first
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front[::-1]


def lossless_row(psnrs: List[float]) -> float:
    """Where PSNR = inf (output identical to the reference) is drawn: above every finite PSNR by
    12% of their range, at least 3 dB (40 dB when there is no finite one)."""
    finite = [p for p in psnrs if math.isfinite(p)]
    if not finite:
        return 40.0
    return max(finite) + max(3.0, 0.12 * (max(finite) - min(finite)))


def _xerr(r: dict):
    lo, hi = r.get("speedup_range") or (r["speedup"], r["speedup"])
    return [[max(0.0, r["speedup"] - lo)], [max(0.0, hi - r["speedup"])]]


def _yerr(r: dict):
    """Bars for a row's PSNR spread (``psnr_range``: min-max over a sweep's conditions x seeds);
    None when it has none or a bound is not finite (drawn on the lossless row)."""
    rng = r.get("psnr_range")
    if not rng or not all(math.isfinite(v) for v in (*rng, r["psnr"])):
        return None
    return [[max(0.0, r["psnr"] - rng[0])], [max(0.0, rng[1] - r["psnr"])]]


def pareto_figure(result: dict, ax=None, target: Optional[dict] = None):
    """Speed-up vs PSNR, one marker per method (legend), each family's Pareto envelope as a line.
    PSNR = inf is drawn on a "lossless" row above the finite points; the uncached reference is the
    black star at 1x on that row. Random-weight models have no fidelity: a bar chart of speed-ups."""
    rows = [r for r in result["rows"] if r.get("speedup") is not None and r["method"] != REFERENCE]
    if result.get("random_weights"):
        return _speedup_bars(result, rows, ax)
    rows = [r for r in rows if r.get("psnr") is not None]
    fig, ax = _figure(ax, (9, 5.2))
    y_inf = lossless_row([r["psnr"] for r in rows])
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    fam_keys = list(dict.fromkeys(family_of(r["method"]) for r in rows))
    series_keys = list(dict.fromkeys(series_of(r["method"]) for r in rows))
    by_family: Dict[str, List[Tuple[float, float]]] = {}
    labelled = set()
    for r in rows:
        fam, ser = family_of(r["method"]), series_of(r["method"])
        colour = colours(fam_keys.index(fam) % 10)
        y = r["psnr"] if math.isfinite(r["psnr"]) else y_inf
        by_family.setdefault(fam, []).append((r["speedup"], y))
        ours = is_ours(r["method"])
        ax.errorbar([r["speedup"]], [y], xerr=_xerr(r), yerr=_yerr(r), fmt=MARKERS[series_keys.index(ser) % len(MARKERS)],
                    color=colour, markerfacecolor=colour if ours else "white", markersize=7, capsize=2,
                    elinewidth=0.9, ecolor=(*colour[:3], 0.45),  # light spread bars: markers stay readable
                    label=ser if ser not in labelled else "_nolegend_")
        labelled.add(ser)
    for fam, pts in by_family.items():
        front = envelope(pts)
        if len(front) >= 2:
            ax.plot([p[0] for p in front], [p[1] for p in front], "-" if is_ours(fam) else "--",
                    color=colours(fam_keys.index(fam) % 10), lw=1.4, gid=f"envelope:{fam}", label="_nolegend_")
    # under the methods' markers: a lossless method at 1x stays visible on top of it
    ax.scatter([1.0], [y_inf], marker="*", s=140, color="black", zorder=1.5, label="uncached reference")
    ax.axhline(y_inf, color="grey", ls=":", lw=0.8)
    if target is not None:
        ax.axhline(target["psnr_floor_db"], color="grey", lw=0.8)
        ax.axvline(target["speedup_goal"], color="grey", lw=0.8)
    # the lowest bar end too, so that the spread bars stay inside the axes
    finite = [v for r in rows for v in (r["psnr"], *(r.get("psnr_range") or ())) if math.isfinite(v)]
    low = min(finite + [y_inf - 3.0])
    ax.set_ylim(low - 0.06 * (y_inf - low) - 0.5, y_inf + 0.1 * (y_inf - low) + 0.5)
    # the lossless row gets its own tick label in place of the finite ticks too close to it
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t < y_inf - 0.04 * (y_inf - low) - 0.5]
    ax.set_yticks(ticks + [y_inf], [f"{t:g}" for t in ticks] + [LOSSLESS_LABEL])
    ax.set_xlabel("speed-up vs uncached (x)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.grid(alpha=0.25)
    ax.set_title(figure_title(result, "speed vs fidelity"), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              title="filled, solid envelope: lightcache\nopen, dashed envelope: peers", title_fontsize=7)
    fig.tight_layout()
    return fig


def _speedup_bars(result: dict, rows: List[dict], ax):
    fig, ax = _figure(ax, (8, 0.9 + 0.32 * max(1, len(rows))))
    colours = _pyplot().get_cmap("tab10")
    fam_keys = list(dict.fromkeys(family_of(r["method"]) for r in rows))
    for i, r in enumerate(rows):
        fam = family_of(r["method"])
        colour = colours(fam_keys.index(fam) % 10)
        ax.barh(i, r["speedup"], color=colour if is_ours(r["method"]) else "white", edgecolor=colour, hatch=None
                if is_ours(r["method"]) else "//", xerr=_xerr(r), capsize=2)
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speed-up vs uncached (x); filled: lightcache, hatched: peers")
    ax.set_title(figure_title(result, "speed-up (random weights: no fidelity)"), fontsize=9)
    fig.tight_layout()
    return fig


def method_colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, evenly spaced turbo beyond."""
    plt = _pyplot()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]


STAGES = ("encode", "denoise", "decode")


def memory_figure(result: dict, ax=None):
    """Peak memory per stage, one bar colour per method (the legend names them). Stages no row
    recorded (encode, when the prompt came as embeddings) are left out; ok rows without memory
    figures (a peer lightcache could not meter) are named under the axes."""
    rows = [r for r in result["rows"] if r.get("speedup") is not None and r.get("peak_bytes")]
    unmetered = [r["method"] for r in result["rows"] if r.get("speedup") is not None and not r.get("peak_bytes")]
    stages = [s for s in STAGES if any(r["peak_bytes"].get(s) for r in rows)] or list(STAGES)
    fig, ax = _figure(ax, (10, 4.8))
    colours = method_colours(len(rows))
    width = 0.84 / max(1, len(rows))
    for i, r in enumerate(rows):
        vals = [(r["peak_bytes"].get(s) or 0) / 2**20 for s in stages]
        ax.bar([j + i * width for j in range(len(stages))], vals, width, color=colours[i], label=r["method"],
               edgecolor="black" if is_ours(r["method"]) else "none", linewidth=0.4)
    ax.set_xticks([j + 0.42 - width / 2 for j in range(len(stages))], stages)
    source = "CPU live-tensor tracker" if result["device"] == "cpu" else "CUDA allocator peaks"
    ax.set_ylabel(f"peak MiB ({source})")
    ax.set_title(f"peak memory per stage: {result['model_description']}\n{result['device']}, {result['steps']} steps",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    if unmetered:
        ax.text(0.0, -0.12, "not metered (see the notes in results.json): " + ", ".join(unmetered),
                transform=ax.transAxes, fontsize=7, va="top", color="dimgrey", gid="unmetered")
    fig.tight_layout()
    return fig


def timeline_figure(result: dict, ax=None):
    """Peak memory per stage invocation over time: the reference and the fastest of our methods."""
    rows = [r for r in result["rows"] if r.get("speedup") is not None]
    ref = next((r for r in rows if r["method"] == REFERENCE), None)
    ours = [r for r in rows if r["method"] != REFERENCE and r.get("reuse_ratio") is not None and r.get("timeline")]
    best = max(ours, key=lambda r: r["speedup"]) if ours else None
    fig, ax = _figure(ax, (8, 3.5))
    for r, style in ((ref, "-"), (best, "--")):
        if r is None or not r.get("timeline"):
            continue
        t0 = r["timeline"][0]["start_s"]
        xs, ys = [], []
        for t in r["timeline"]:
            xs += [t["start_s"] - t0, t["end_s"] - t0]
            ys += [(t["peak_bytes"] or 0) / 2**20] * 2
        ax.plot(xs, ys, style, label=r["method"])
        for t in r["timeline"]:
            if t["stage"] != "denoise":
                ax.axvspan(t["start_s"] - t0, t["end_s"] - t0, alpha=0.08, color="grey")
    ax.set_xlabel("seconds (shaded: encode/decode)")
    ax.set_ylabel("peak MiB per stage invocation")
    ax.set_title(f"memory over time: {result['model_description']} on {result['device']}", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path: Path, dpi: int = 120) -> None:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)


# ---------------------------------------------------------------------------------------------
# side-by-side clip
# ---------------------------------------------------------------------------------------------


def panel_label(row: Optional[dict], random_weights: bool) -> List[str]:
    """The three lines drawn above a method's panel: name, speed-up, PSNR."""
    if row is None:
        return ["?", "", ""]
    if row["method"] == REFERENCE:
        return ["uncached reference", "1.00x", "PSNR -"]
    speed = "speed-up n/a" if row.get("speedup") is None else f"{row['speedup']:.2f}x"
    p = row.get("psnr")
    if random_weights or p is None:
        psnr = "PSNR n/a (random w.)" if random_weights else "PSNR n/a"
    else:
        psnr = "PSNR inf (identical)" if math.isinf(p) else f"PSNR {p:.2f} dB"
    return [row["method"], speed, psnr]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 (FreeType); a bitmap font before
    except TypeError:
        return ImageFont.load_default()


def side_by_side_frames(result: dict, videos: Dict[str, "object"], panel: int = 160, gap: int = 10,
                        columns: int = 5) -> list:
    """Frames (H, W, 3 uint8 arrays) of a grid of labelled panels, one per video in ``videos``
    (name -> (..., F, C, H, W) tensor in [0, 1]), in their order: the first frame of each clip's
    batch, each panel scaled so its long side is ``panel`` pixels, ``gap`` pixels between panels."""
    import numpy as np
    from PIL import Image, ImageDraw

    names = list(videos)
    rows = {r["method"]: r for r in result["rows"]}
    clips = [videos[n].reshape(-1, *videos[n].shape[-4:])[0] for n in names]  # (F, C, H, W)
    h, w = clips[0].shape[-2:]
    s = panel / max(h, w)
    pw, ph = max(1, round(w * s)), max(1, round(h * s))
    font = _font(12)
    line_h = 15
    label_h = 3 * line_h + 4
    cols = max(1, min(columns, len(names)))
    grid_rows = math.ceil(len(names) / cols)
    cw, chh = pw + gap, label_h + ph + gap
    width, height = gap + cols * cw, gap + grid_rows * chh
    base = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(base)
    origins = []
    for i, n in enumerate(names):
        x, y = gap + (i % cols) * cw, gap + (i // cols) * chh
        for k, text in enumerate(panel_label(rows.get(n), result.get("random_weights", False))):
            draw.text((x, y + k * line_h), text, fill=(0, 0, 0) if k == 0 else (70, 70, 70), font=font)
        origins.append((x, y + label_h))
    resample = Image.NEAREST if s >= 1 else Image.BILINEAR
    frames = []
    for f in range(min(c.shape[0] for c in clips)):
        canvas = base.copy()
        for c, (x, y) in zip(clips, origins):
            img = (c[f].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            canvas.paste(Image.fromarray(img[..., :3]).resize((pw, ph), resample), (x, y))
        frames.append(np.asarray(canvas))
    return frames


def ffmpeg_available() -> bool:
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_side_by_side(result: dict, videos: dict, out: Path, fps: float = 5.0) -> List[str]:
    """``side_by_side.gif``, ``side_by_side.png`` (its middle frame), ``side_by_side.txt`` (the order)
    and, when imageio-ffmpeg is installed, ``side_by_side.mp4``. Returns the names written."""
    import numpy as np
    from PIL import Image

    frames = side_by_side_frames(result, videos)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(out / "side_by_side.gif", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
    images[len(images) // 2].save(out / "side_by_side.png")
    (out / "side_by_side.txt").write_text("left to right, top to bottom: " + ", ".join(videos) + "\n")
    written = ["side_by_side.gif", "side_by_side.png", "side_by_side.txt"]
    if ffmpeg_available():
        import imageio.v2 as imageio

        # H.264 wants even sizes (16 avoids imageio's resize): pad with white
        h, w = frames[0].shape[:2]
        ph, pw = -h % 16, -w % 16
        padded = [np.pad(f, ((0, ph), (0, pw), (0, 0)), constant_values=255) for f in frames]
        imageio.mimsave(out / "side_by_side.mp4", padded, fps=fps)
        written.append("side_by_side.mp4")
    return written
