"""lightcache's messages (issue 14, item 2): an INFO line on enable through the "lightcache"
logger naming what was hooked, the policy and the memory plan; silence by default; no print in
library code (the CLI commands' output excepted). About 4 s (one tiny Wan build, no call; the
scan parses every module of the package)."""

import ast
import logging
import pathlib

import pytest

import lightcache

from tiny_pipelines import build

ROOT = pathlib.Path(__file__).resolve().parents[1] / "lightcache"
# command output is fine: the `lightcache` CLI and bench command modules, and any module's main()
# (the `python -m lightcache.<module>` entry points)
CLI_MODULES = {"cli.py", "bench.py"}


@pytest.fixture(scope="module")
def wan():
    pipe, _ = build("wan")
    return pipe


def test_enable_logs_what_was_hooked(wan, caplog):
    pipe = wan
    policy = lightcache.EasyCache(threshold=0.1, warmup_steps=2)
    plan = lightcache.MemoryPlan(swap="on", cache_dtype="bf16")
    with caplog.at_level(logging.INFO, logger="lightcache"):
        lightcache.enable(pipe, policy=policy, memory=plan)
    try:
        records = [r for r in caplog.records if r.name.startswith("lightcache")]
        assert len(records) == 1 and records[0].levelno == logging.INFO
        msg = records[0].getMessage()
        n_blocks = len(pipe.transformer.blocks)
        assert f"WanTransformer3DModel (wan family, {n_blocks} blocks hooked) of WanPipeline" in msg
        assert "policy EasyCache(threshold=0.1, warmup_steps=2)" in msg
        assert "memory plan MemoryPlan(swap='on', cache_dtype='bf16'" in msg
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lightcache"):
            lightcache.enable(pipe)  # re-enable: one line again, saying nothing is cached
        msg = [r.getMessage() for r in caplog.records if r.name.startswith("lightcache")]
        assert len(msg) == 1 and "policy none (nothing is cached)" in msg[0] and "memory plan none" in msg[0]
    finally:
        lightcache.disable(pipe)


def test_silent_by_default(wan, capsys):
    """Without logging configured nothing reaches stderr (a NullHandler on "lightcache")."""
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("lightcache").handlers)
    lightcache.enable(wan)
    lightcache.disable(wan)
    captured = capsys.readouterr()
    assert "lightcache enabled" not in captured.err + captured.out


def _prints():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                inside = [f.name for f in functions if f.lineno <= node.lineno <= f.end_lineno]
                yield rel, node.lineno, inside


def test_no_print_in_library_code():
    found = list(_prints())
    assert found, "the scan found no print at all: it is not looking at the package"
    offenders = [
        f"{rel}:{line}" for rel, line, inside in found
        if rel not in CLI_MODULES and "main" not in inside
    ]
    assert offenders == []
