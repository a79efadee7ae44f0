"""lightcache.simulate: exact per-stage device memory of a pipeline call at real model sizes,
without a GPU, and the memory plan that fits a cap (``lightcache plan``, ``lightcache.plan``).

The real diffusers pipeline runs on the meta device (every parameter and activation a meta tensor:
shapes, no memory), with lightcache enabled, while the CPU tracker's counting runs on the meta
storages (lightcache.simulate.pipeline). What cannot run on meta is replaced, each documented where
it is done: caching decisions that read values (lightcache.simulate.worst: the policies at their
worst-case residency), the attention kernel (lightcache.simulate.attention: what the CUDA backend
holds), the pinned host ring (lightcache.simulate.store), the scheduler's timesteps (on the CPU).

    import lightcache
    result = lightcache.plan("wan2.1-14b", height=720, width=1280, frames=81, fit="80GB")
    print(result.table()); result.plot("plan.png"); result.as_dict()
"""

from lightcache.simulate.planner import POLICIES, PlanResult, enable_line, parse_memory, parse_size, plan

__all__ = ["plan", "PlanResult", "parse_size", "parse_memory", "enable_line", "POLICIES"]
