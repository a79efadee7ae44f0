"""The ``lightcache`` command. Subcommands: ``info`` (what is available), ``bench`` (speed, memory
and fidelity of caching methods side by side; ``lightcache bench --help``), ``plan`` (per-stage
device memory at real model sizes, simulated without a GPU, and the memory plan that fits a cap;
``lightcache plan --help``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser", "HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, except that a default of None is not printed as "None": those
    flags' help says in words what happens without them."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _cmd_info(args: argparse.Namespace) -> int:
    from lightcache import info

    return info.main([])


def _cmd_bench(args: argparse.Namespace) -> int:
    from lightcache import bench

    bench.main(args.rest)
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    import json
    import warnings

    from lightcache.simulate import plan

    warnings.filterwarnings("ignore", module="lightcache")  # InexactDecodeWarning of budget-chosen tiles: in the table
    try:
        result = plan(args.model, height=args.height, width=args.width, frames=args.frames, steps=args.steps,
                      dtype=args.dtype, policy=args.policy, memory=args.memory, fit=args.fit, attention=args.attention,
                      offload=args.offload, scale=args.scale, guidance=args.guidance, peers=args.peers,
                      piece_overhead=args.piece_overhead,
                      progress=None if args.quiet else (lambda line: print(f"lightcache plan: {line}", file=sys.stderr,
                                                                            flush=True)))
    except ValueError as e:
        print(f"lightcache plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = result.as_dict()
        d["command"] = "lightcache " + " ".join(args.argv)
        text = json.dumps(d, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text + "\n")
    if args.json != "-":
        print(result.table())
    if args.png:
        result.plot(args.png)
    return 0


def _add_plan(sub) -> None:
    from lightcache.bench_models import REALISTIC

    p = sub.add_parser(
        "plan", formatter_class=HelpFormatter, help="per-stage device memory at real model sizes (simulated on the meta device) and the plan that fits",
        description="Simulate a pipeline call on the meta device (the real diffusers code, no GPU, no weights) and print "
                    "per-stage device memory (weights, inputs, activations, cache, peak) for the uncached pipeline, the "
                    "policy at its worst-case residency, and the policy with the memory plan.")
    p.add_argument("--model", required=True, help=f"a realistic configuration ({', '.join(sorted(REALISTIC))}), a trained "
                   "proxy of the bench (wan-proxy, unet-proxy, cogvideox-proxy: its native size; --dtype fp32 for the "
                   "shapes the bench runs) or a local diffusers pipeline folder (its config files are read, never its "
                   "weights)")
    for flag, what in (("--height", "pixels"), ("--width", "pixels"), ("--frames", "frames")):
        p.add_argument(flag, type=int, default=None, help=f"clip {what} (default: the configuration's or checkpoint's)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps of the run (3 are simulated: later steps repeat "
                   "them)")
    p.add_argument("--dtype", default="bf16", help="weights' dtype: bf16, fp16 or fp32")
    p.add_argument("--policy", default=None, help="none, easycache, forecast, precise-base, precise-turbo, precise-flash, "
                   "deepcache (default: precise-flash for DiTs, deepcache for UNets)")
    p.add_argument("--memory", default=None, help="MemoryPlan fields, e.g. swap=on,chunk_size=4096,decode_slices=1 "
                   "(default: none given; --fit searches one)")
    p.add_argument("--fit", default=None, help="device memory cap to fit, e.g. 24GB, '24 GiB' or bytes; several "
                   "comma-separated (default: no cap, no plan search)")
    p.add_argument("--attention", default="auto", help="SDPA backend: auto (what CUDA picks on sm90), cudnn, flash, "
                   "efficient, math")
    p.add_argument("--offload", default="none", help="none, model (diffusers model CPU offload), group (block-level group "
                   "offload of the denoiser)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale, CFG on above 1 (default: the "
                   "configuration's)")
    p.add_argument("--peers", action="store_true", help="add diffusers' FirstBlockCache, MagCache and TaylorSeer "
                   "(their caches computed from the simulated shapes)")
    p.add_argument("--piece-overhead", type=float, default=None, metavar="SHARE",
                   help="what one extra chunk piece costs as a share of a denoiser call on your device (in [0, 1); "
                        "benchmarks/chunk_overhead.py measures it): --fit then states its expected cost in percent "
                        "(default: the cost stated as piece counts)")
    p.add_argument("--scale", default="full", help="full or tiny (the CPU smoke sizes)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (without it: one per finished "
                   "simulation)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON, - for stdout (default: "
                   "not written)")
    p.add_argument("--png", default=None, metavar="PATH", help="write a stacked-bar chart of the stages (default: "
                   "not written)")
    p.set_defaults(func=_cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightcache", description="lightcache command line",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", formatter_class=HelpFormatter, help="print versions and what is available (compiled ring buffer, Triton, GPU)")
    p_info.set_defaults(func=_cmd_info)
    p_bench = sub.add_parser("bench", help="benchmark caching methods (see lightcache bench --help)", add_help=False)
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    p_bench.set_defaults(func=_cmd_bench)
    _add_plan(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # bench owns its whole command line (its own --help)
        if not {"-h", "--help", "--list-methods"} & set(argv):  # importing torch takes seconds: say so first
            print("lightcache bench: starting (importing torch and diffusers) ...", file=sys.stderr, flush=True)
        from lightcache import bench

        bench.main(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
