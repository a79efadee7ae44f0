"""Per-stage memory meter on CPU: a deterministic live-tensor byte tracker.

On CUDA the engine reads the allocator's peaks. On CPU, ``MemoryPlan(cpu_tracker=True)`` runs each
stage invocation under :class:`lightcache._live_bytes.LiveBytes`, which counts every tensor storage
allocated inside the stage until it is freed: the peak is the stage's own high-water mark above
what existed before it (weights, inputs), exact and repeatable, so tests can assert memory claims
without a GPU. Allocations inside one aten kernel (BLAS packing buffers) are not seen; lightcache's
own CPU kernels are called as Python functions while tracking so their buffers are seen.
"""

from __future__ import annotations

import threading

from lightcache._live_bytes import LiveBytes

_state = threading.local()


def tracking() -> bool:
    return getattr(_state, "depth", 0) > 0


class StageTracker:
    """Context manager metering one stage invocation; ``.peak`` after exit.

    Given the run's :class:`LiveBytes` (``run_bytes``), the peak includes what earlier stages of
    the same pipeline call left alive (cached features, latents), as a device allocator's peak does;
    without it, only what this invocation allocates."""

    def __init__(self, run_bytes: LiveBytes = None):
        self.mode = run_bytes if run_bytes is not None else LiveBytes()

    def __enter__(self):
        _state.depth = getattr(_state, "depth", 0) + 1
        self.mode.window_start()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        _state.depth -= 1
        self.peak = self.mode.window_peak
        self.live = self.mode.live
        self.largest = self.mode.largest


def plot_timeline(report, path) -> None:
    """PNG of the report's memory timeline: each stage invocation's peak (bars over its time span,
    coloured by stage) and the cache bytes on the device and the host after it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.timeline
    if not rows:
        raise ValueError("report has no timeline: run the pipeline with lightcache enabled first")
    colours = {"encode": "tab:blue", "denoise": "tab:orange", "decode": "tab:green"}
    t0 = rows[0]["start_s"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    seen = set()
    for r in rows:
        if r["peak_bytes"] is None:
            continue
        label = r["stage"] if r["stage"] not in seen else None
        seen.add(r["stage"])
        ax.fill_between([r["start_s"] - t0, r["end_s"] - t0], 0, r["peak_bytes"] / 2**20,
                        color=colours.get(r["stage"], "grey"), alpha=0.6, step="pre", label=label)
    xs = [r["end_s"] - t0 for r in rows]
    ax.plot(xs, [r["cache_device_bytes"] / 2**20 for r in rows], "k-", lw=1, label="cache on device")
    ax.plot(xs, [r["cache_host_bytes"] / 2**20 for r in rows], "k--", lw=1, label="cache on host")
    ax.set_xlabel("seconds since the first stage")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
