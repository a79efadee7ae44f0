"""What a pipeline call did: per-call decisions, reuse ratio, time and memory per stage.

The engine records into a :class:`Recorder` (one per pipeline call, mutable, private to the
engine); ``lightcache.report(pipe)`` hands out a :class:`Report`, an immutable snapshot: a later
call, ``enable`` or ``disable`` never changes a report already returned.

Times: on CPU wall-clock seconds; on CUDA the time between CUDA events recorded at the start and
end of each stage invocation (no host synchronisation while the pipeline runs: the events are read
when the report is made).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

STAGES = ("encode", "denoise", "decode")


@dataclass(frozen=True)
class Decision:
    step: int
    branch: str  # "cond", "uncond" or "joint"
    computed: bool  # the denoiser ran (fully or partly: see blocks_computed)
    blocks_computed: int
    blocks_total: int
    seconds: float


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Report:
    """An immutable snapshot of one pipeline call.

    decisions: one :class:`Decision` per denoiser call, in order.
    peak_bytes: stage -> peak bytes (CUDA allocator with ``MemoryPlan(cuda_peaks=True)``, CPU
        tracker with ``MemoryPlan(cpu_tracker=True)``; None when not metered).
    cache_bytes: "device" / "host" high-water marks of the cached features, "largest_feature";
        with swapping also "min_device_budget", the smallest MemoryPlan.device_cache_budget the
        call could have run under.
    seconds: stage -> seconds.
    timeline: one mapping per stage invocation (stage, start_s/end_s, peak_bytes, end_bytes,
        cache_device_bytes, cache_host_bytes).
    """

    num_blocks: int = 0
    decisions: Tuple[Decision, ...] = ()
    peak_bytes: Mapping[str, Optional[int]] = field(default_factory=lambda: _frozen({s: None for s in STAGES}))
    cache_bytes: Mapping[str, int] = field(default_factory=lambda: _frozen({"device": 0, "host": 0}))
    seconds: Mapping[str, float] = field(default_factory=lambda: _frozen({s: 0.0 for s in STAGES}))
    timeline: Tuple[Mapping, ...] = ()

    @property
    def reuse_ratio(self) -> float:
        """Fraction of denoiser calls that were not fully computed."""
        if not self.decisions:
            return 0.0
        partial = sum(1 for d in self.decisions if not d.computed or d.blocks_computed < d.blocks_total)
        return partial / len(self.decisions)

    def computed_steps(self, branch: Optional[str] = None) -> List[bool]:
        return [d.computed for d in self.decisions if branch is None or d.branch == branch]

    def as_dict(self) -> dict:
        """Plain JSON-ready dicts and lists (a copy: editing it changes nothing)."""
        return dict(
            num_blocks=self.num_blocks,
            decisions=[{f.name: getattr(d, f.name) for f in fields(d)} for d in self.decisions],
            peak_bytes=dict(self.peak_bytes),
            cache_bytes=dict(self.cache_bytes),
            seconds=dict(self.seconds),
            timeline=[dict(t) for t in self.timeline],
            reuse_ratio=self.reuse_ratio,
        )

    @classmethod
    def merge(cls, reports: List["Report"]) -> "Report":
        """One report for several denoisers of one pipeline (the first owns encode/decode)."""
        first = reports[0]
        seconds = dict(first.seconds)
        seconds["denoise"] = sum(r.seconds["denoise"] for r in reports)
        peak = dict(first.peak_bytes)
        peaks = [r.peak_bytes["denoise"] for r in reports if r.peak_bytes["denoise"] is not None]
        peak["denoise"] = max(peaks) if peaks else None
        # each expert's high-water mark, added: an upper bound of the two together
        cache = {k: sum(r.cache_bytes.get(k, 0) for r in reports) for k in first.cache_bytes}
        return cls(
            num_blocks=first.num_blocks,
            decisions=tuple(sorted((d for r in reports for d in r.decisions), key=lambda d: d.step)),
            peak_bytes=_frozen(peak),
            cache_bytes=_frozen(cache),
            seconds=_frozen(seconds),
            timeline=tuple(sorted((t for r in reports for t in r.timeline), key=lambda t: t["start_s"])),
        )


class Recorder:
    """The engine's record of one pipeline call; :meth:`snapshot` makes the user's :class:`Report`.

    Stage invocations are kept with their clocks (lightcache.engine._StageClock) so that CUDA event
    times are read only when a snapshot is made, never while the pipeline runs."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._calls: list = []  # (call, computed, blocks_computed, clock)
        self._stages: list = []  # (stage, clock, cache_device_bytes, cache_host_bytes)
        self.cache_bytes: Dict[str, int] = {"device": 0, "host": 0}
        self.closed = False  # the call ended: nothing is recorded into it any more
        self._snapshot: Optional[Report] = None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("lightcache internal error: recording into a finished call's report")

    def stage(self, stage: str, clock, store) -> None:
        """One invocation of ``stage`` (the denoiser calls are recorded with :meth:`call`)."""
        self._check_open()
        self._snapshot = None
        self._stages.append(
            (stage, clock, getattr(store, "device_bytes", 0) if store is not None else 0,
             getattr(store, "host_bytes", 0) if store is not None else 0)
        )

    def call(self, call, *, computed: bool, blocks_computed: int, clock, store) -> None:
        self._check_open()
        self._calls.append((call, computed, blocks_computed, clock))
        self.stage("denoise", clock, store)

    def set_cache_bytes(self, values: Dict[str, int]) -> None:
        self._snapshot = None
        self.cache_bytes = dict(values)

    def close(self) -> None:
        self.closed = True

    def snapshot(self, store=None) -> Report:
        """The immutable report (memoised once the call has ended). ``store``: the live store of a
        call still running, for its cache high-water marks so far."""
        if self.closed and self._snapshot is not None:
            return self._snapshot
        seconds = {s: 0.0 for s in STAGES}
        peaks: Dict[str, Optional[int]] = {s: None for s in STAGES}
        timeline = []
        for stage, clock, dev, host in self._stages:
            secs = clock.elapsed()
            seconds[stage] += secs
            if clock.peak is not None:
                peaks[stage] = clock.peak if peaks[stage] is None else max(peaks[stage], clock.peak)
            timeline.append(
                _frozen(dict(stage=stage, start_s=clock.start, end_s=clock.start + secs, peak_bytes=clock.peak,
                             end_bytes=clock.end_bytes, cache_device_bytes=dev, cache_host_bytes=host))
            )
        decisions = tuple(
            Decision(c.step, c.branch, computed, blocks, self.num_blocks, clock.elapsed())
            for c, computed, blocks, clock in self._calls
        )
        cache = dict(self.cache_bytes)
        if store is not None and not self.closed:
            cache = store.cache_bytes()
        report = Report(
            num_blocks=self.num_blocks,
            decisions=decisions,
            peak_bytes=_frozen(peaks),
            cache_bytes=_frozen(cache),
            seconds=_frozen(seconds),
            timeline=tuple(timeline),
        )
        if self.closed:
            self._snapshot = report
        return report
