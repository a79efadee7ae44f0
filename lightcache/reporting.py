"""What a pipeline call did: per-call decisions, reuse and block-work ratios, time and memory per stage.

The engine records into a :class:`Recorder` (one per pipeline call, mutable, private to the
engine); ``lightcache.report(pipe)`` hands out a :class:`Report`, an immutable snapshot: a later
call, ``enable`` or ``disable`` never changes a report already returned. ``lightcache.history(pipe)``
gives the reports of the last :data:`HISTORY_LIMIT` pipeline calls since ``enable`` (see
:class:`History`).

Times: on CPU wall-clock seconds; on CUDA the time between CUDA events recorded at the start and
end of each stage invocation (no host synchronisation while the pipeline runs: the events are read
when the report is made).
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

STAGES = ("encode", "denoise", "decode")

#: how many pipeline calls ``lightcache.history`` keeps (the oldest is dropped first)
HISTORY_LIMIT = 16

_SEQ = itertools.count()  # creation order of recorders: which call a sibling expert's recorder belongs to


@dataclass(frozen=True)
class Decision:
    """One denoiser call.

    step: the denoising step index (from the pipeline's own loop).
    branch: "cond", "uncond" (classifier-free guidance as two calls), "joint" (one call per step), or
        the pipeline's own context name for a further guidance call (LTX-2's "uncond_stg").
    computed: the denoiser ran, fully or partly (see blocks_computed); False: its output was reused.
    blocks_computed: blocks that ran in this call (0 for a reused call; a trial forward's blocks
        are not counted).
    blocks_total: the denoiser's hooked blocks (Report.num_blocks).
    seconds: time of the call.
    """

    step: int
    branch: str  # "cond", "uncond" or "joint"
    computed: bool  # the denoiser ran (fully or partly: see blocks_computed)
    blocks_computed: int
    blocks_total: int
    seconds: float

    @property
    def fully_computed(self) -> bool:
        """The call ran and every block of it ran."""
        return self.computed and self.blocks_computed >= self.blocks_total


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Report:
    """An immutable snapshot of one pipeline call.

    num_blocks: the blocks lightcache hooks in the denoiser (for a merged report, the first's).
    decisions: one :class:`Decision` per denoiser call, in step order.
    peak_bytes: stage -> peak bytes (CUDA allocator with ``MemoryPlan(cuda_peaks=True)``, CPU
        tracker with ``MemoryPlan(cpu_tracker=True)``; None when not metered).
    cache_bytes: "device" / "host" high-water marks of the cached features, "largest_feature";
        with swapping also "min_device_budget", the smallest MemoryPlan.device_cache_budget the
        call could have run under.
    seconds: stage -> seconds (summed over the stage's invocations).
    timeline: one mapping per stage invocation (stage, start_s/end_s, peak_bytes, end_bytes,
        cache_device_bytes, cache_host_bytes).
    failed: the call ended with an exception (its cache was freed; what it recorded is kept).

    Derived figures (also in :meth:`as_dict`):

    calls_computed / calls_partial / calls_reused: denoiser calls that ran every block / ran but
        skipped some blocks (BlockCache, DeepCache) / did not run at all (their output reused).
        They add up to ``len(decisions)``.
    reuse_ratio: (calls_partial + calls_reused) / len(decisions): the fraction of denoiser calls
        not fully computed. A call that skipped 1 block of 40 counts as reused here.
    block_compute_ratio: sum(blocks_computed) / sum(blocks_total) over the decisions: the fraction
        of block work that ran (1.0 without caching). 1 - block_compute_ratio is the block work
        saved; the time saved also depends on the policy's own cost (e.g. a trial forward).

    Both ratios are 0.0 when no denoiser call was recorded. ``str(report)`` is a short summary.
    """

    num_blocks: int = 0
    decisions: Tuple[Decision, ...] = ()
    peak_bytes: Mapping[str, Optional[int]] = field(default_factory=lambda: _frozen({s: None for s in STAGES}))
    cache_bytes: Mapping[str, int] = field(default_factory=lambda: _frozen({"device": 0, "host": 0}))
    seconds: Mapping[str, float] = field(default_factory=lambda: _frozen({s: 0.0 for s in STAGES}))
    timeline: Tuple[Mapping, ...] = ()
    failed: bool = False

    @property
    def calls_computed(self) -> int:
        """Denoiser calls in which every block ran."""
        return sum(1 for d in self.decisions if d.fully_computed)

    @property
    def calls_partial(self) -> int:
        """Denoiser calls that ran but skipped at least one block."""
        return sum(1 for d in self.decisions if d.computed and not d.fully_computed)

    @property
    def calls_reused(self) -> int:
        """Denoiser calls that did not run (the policy returned a reused output)."""
        return sum(1 for d in self.decisions if not d.computed)

    @property
    def reuse_ratio(self) -> float:
        """Fraction of denoiser calls not fully computed: (calls_partial + calls_reused) /
        len(decisions); 0.0 without decisions. Counts a call that skipped any block as reused:
        see :attr:`block_compute_ratio` for the fraction of block work."""
        if not self.decisions:
            return 0.0
        return (len(self.decisions) - self.calls_computed) / len(self.decisions)

    @property
    def block_compute_ratio(self) -> float:
        """sum(blocks_computed) / sum(blocks_total) over the decisions: the fraction of the
        denoiser's block work that ran; 0.0 without decisions."""
        total = sum(d.blocks_total for d in self.decisions)
        if total == 0:
            return 0.0
        return sum(d.blocks_computed for d in self.decisions) / total

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
            failed=self.failed,
            calls_computed=self.calls_computed,
            calls_partial=self.calls_partial,
            calls_reused=self.calls_reused,
            reuse_ratio=self.reuse_ratio,
            block_compute_ratio=self.block_compute_ratio,
        )

    def __str__(self) -> str:
        n = len(self.decisions)
        steps = len({d.step for d in self.decisions})
        branches = sorted({d.branch for d in self.decisions})
        head = f"lightcache report: {n} denoiser call{'s' if n != 1 else ''} over {steps} step{'s' if steps != 1 else ''}"
        if branches:
            head += f" ({', '.join(branches)})"
        head += f", {self.num_blocks} blocks each" + (" [the call FAILED]" if self.failed else "")
        blocks_run = sum(d.blocks_computed for d in self.decisions)
        blocks_all = sum(d.blocks_total for d in self.decisions)
        lines = [
            head,
            f"  calls: {self.calls_computed} computed, {self.calls_partial} partially computed, "
            f"{self.calls_reused} reused (reuse_ratio {self.reuse_ratio:.2f})",
            f"  blocks run: {blocks_run} of {blocks_all} (block_compute_ratio {self.block_compute_ratio:.2f})",
            "  stage     seconds  peak bytes",
        ]
        for s in STAGES:
            peak = self.peak_bytes.get(s)
            lines.append(f"  {s:<8} {self.seconds.get(s, 0.0):8.3f}  {_bytes(peak) if peak is not None else 'not metered'}")
        lines.append(
            f"  cache high-water: device {_bytes(self.cache_bytes.get('device', 0))}, "
            f"host {_bytes(self.cache_bytes.get('host', 0))}"
        )
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython / Jupyter: the summary, not the dataclass repr
        p.text("Report(...)" if cycle else str(self))

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
            failed=any(r.failed for r in reports),
        )


def _bytes(n: int) -> str:
    """``n`` bytes, exact below 1 KiB, else with a binary unit (3 significant digits)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            return f"{value:.3g} {unit}"
    return f"{n} B"  # pragma: no cover - the loop always returns


class Recorder:
    """The engine's record of one pipeline call; :meth:`snapshot` makes the user's :class:`Report`.

    Stage invocations are kept with their clocks (lightcache.engine._StageClock) so that CUDA event
    times are read only when a snapshot is made, never while the pipeline runs."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.seq = next(_SEQ)
        self._calls: list = []  # (call, computed, blocks_computed, clock)
        self._stages: list = []  # (stage, clock, cache_device_bytes, cache_host_bytes)
        self.cache_bytes: Dict[str, int] = {"device": 0, "host": 0}
        self.closed = False  # the call ended: nothing is recorded into it any more
        self.failed = False
        self._snapshot: Optional[Report] = None

    @property
    def used(self) -> bool:
        """Anything was recorded (a stage or a denoiser call)."""
        return bool(self._stages)

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

    def close(self, failed: bool = False) -> None:
        """The call ended (``failed``: with an exception). Only the first close counts."""
        if not self.closed:
            self.failed = bool(failed)
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
            failed=self.failed,
        )
        if self.closed:
            self._snapshot = report
        return report


# ---------------------------------------------------------------------------------------------
# history: the last HISTORY_LIMIT calls
# ---------------------------------------------------------------------------------------------


class History:
    """The finished pipeline calls of one enabled pipeline (or denoiser), oldest first, at most
    :data:`HISTORY_LIMIT`. An entry is added when the call ends (the pipeline returned or raised;
    for a denoiser driven by hand, when the next run starts or diffusers resets its stateful
    hooks). Entries hold the engine's closed recorders, and reports are made
    when :meth:`reports` is read: ending a call never waits for the device."""

    def __init__(self, limit: int = HISTORY_LIMIT):
        self._entries: deque = deque(maxlen=limit)  # lists of recorders: the primary's, then its siblings'

    def add(self, recorders: List[Recorder]) -> None:
        if any(r.used for r in recorders):
            self._entries.append(list(recorders))

    def reports(self) -> Tuple[Report, ...]:
        out = []
        for entry in self._entries:
            reps = [r.snapshot() for r in entry if r.used]
            out.append(reps[0] if len(reps) == 1 else Report.merge(reps))
        return tuple(out)


_HISTORIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # primary session -> History


def history_of(session) -> History:
    """The :class:`History` of ``session``'s pipeline (kept by the pipeline's first session)."""
    primary = session.taps.primary if session.taps is not None else session
    found = _HISTORIES.get(primary)
    if found is None:
        found = _HISTORIES[primary] = History()
    return found


def record_call_end(session, recorder: Recorder) -> None:
    """``recorder`` (``session``'s, just closed) ends a pipeline call: called by the engine. The
    pipeline's first session files the entry, with the recorders its sibling experts made for the
    same call (created after its own: the taps start every expert's run after the first's); a
    sibling's own end adds nothing, since the first session's entry takes it in."""
    taps = session.taps
    if taps is not None and taps.primary is not session:
        return
    siblings = [] if taps is None else [s.recorder for s in taps.sessions[1:] if s.recorder.seq > recorder.seq]
    history_of(session).add([recorder] + siblings)
