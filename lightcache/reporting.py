"""What the last pipeline call did: per-call decisions, reuse ratio, time and memory per stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

STAGES = ("encode", "denoise", "decode")


@dataclass
class Decision:
    step: int
    branch: str  # "cond", "uncond" or "joint"
    computed: bool  # the denoiser ran (fully or partly: see blocks_computed)
    blocks_computed: int
    blocks_total: int
    seconds: float


@dataclass
class Report:
    num_blocks: int = 0
    decisions: List[Decision] = field(default_factory=list)
    peak_bytes: Dict[str, Optional[int]] = field(default_factory=lambda: {s: None for s in STAGES})
    cache_bytes: Dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0})
    seconds: Dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    #: one entry per stage invocation (each encode/decode call, each denoiser call), in order:
    #: stage, start_s/end_s (perf_counter), peak_bytes and end_bytes (CUDA allocator or CPU
    #: tracker; None when not metered), cache_device_bytes/cache_host_bytes after it
    timeline: List[dict] = field(default_factory=list)

    def reset(self) -> None:
        self.decisions = []
        self.peak_bytes = {s: None for s in STAGES}
        self.cache_bytes = {"device": 0, "host": 0}
        self.seconds = {s: 0.0 for s in STAGES}
        self.timeline = []

    def sample(self, stage: str, clock, store) -> None:
        self.timeline.append(
            dict(
                stage=stage,
                start_s=clock.start,
                end_s=clock.end,
                peak_bytes=clock.peak,
                end_bytes=clock.end_bytes,
                cache_device_bytes=getattr(store, "device_bytes", 0) if store is not None else 0,
                cache_host_bytes=getattr(store, "host_bytes", 0) if store is not None else 0,
            )
        )

    def record(self, call, *, computed: bool, blocks_computed: int, seconds: float, peak: Optional[int] = None) -> None:
        self.decisions.append(
            Decision(call.step, call.branch, computed, blocks_computed, self.num_blocks, seconds)
        )
        self.add_stage("denoise", seconds, peak)

    def add_stage(self, stage: str, seconds: float, peak: Optional[int] = None) -> None:
        """Account one invocation of a stage: time adds up, the peak is the maximum."""
        self.seconds[stage] += seconds
        if peak is not None:
            old = self.peak_bytes[stage]
            self.peak_bytes[stage] = peak if old is None else max(old, peak)

    @classmethod
    def merge(cls, reports: List["Report"]) -> "Report":
        """One report for several denoisers of one pipeline (the first owns encode/decode)."""
        merged = cls(num_blocks=reports[0].num_blocks)
        merged.decisions = sorted((d for r in reports for d in r.decisions), key=lambda d: d.step)
        merged.seconds = dict(reports[0].seconds)
        merged.seconds["denoise"] = sum(r.seconds["denoise"] for r in reports)
        merged.peak_bytes = dict(reports[0].peak_bytes)
        peaks = [r.peak_bytes["denoise"] for r in reports if r.peak_bytes["denoise"] is not None]
        merged.peak_bytes["denoise"] = max(peaks) if peaks else None
        # each expert's high-water mark, added: an upper bound of the two together
        merged.cache_bytes = {k: sum(r.cache_bytes.get(k, 0) for r in reports) for k in reports[0].cache_bytes}
        merged.timeline = sorted((t for r in reports for t in r.timeline), key=lambda t: t["start_s"])
        return merged

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
        d = asdict(self)
        d["reuse_ratio"] = self.reuse_ratio
        return d
