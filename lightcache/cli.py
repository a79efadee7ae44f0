"""The ``lightcache`` command. Subcommands: ``info`` (what is available). More (``bench``) plug in
as further subparsers."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from lightcache import info

    return info.main([])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightcache", description="lightcache command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print versions and what is available (compiled ring buffer, Triton, GPU)")
    p_info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
