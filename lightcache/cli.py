"""The ``lightcache`` command. Subcommands: ``info`` (what is available), ``bench`` (speed, memory
and fidelity of caching methods side by side; ``lightcache bench --help``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from lightcache import info

    return info.main([])


def _cmd_bench(args: argparse.Namespace) -> int:
    from lightcache import bench

    bench.main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightcache", description="lightcache command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print versions and what is available (compiled ring buffer, Triton, GPU)")
    p_info.set_defaults(func=_cmd_info)
    p_bench = sub.add_parser("bench", help="benchmark caching methods (see lightcache bench --help)", add_help=False)
    p_bench.add_argument("rest", nargs=argparse.REMAINDER)
    p_bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # bench owns its whole command line (its own --help)
        from lightcache import bench

        bench.main(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
