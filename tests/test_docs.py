"""The documentation a user reads in code (issue 14, item 6): every public op shows its own
docstring in help(), every MemoryPlan and policy field is documented with its real default, the
design citations point into docs/design.md (a file of the repository) at sections that exist, and
`lightcache info` says "no GPU" plainly. Under 2 s."""

import ast
import dataclasses
import pathlib
import pydoc
import re

import pytest
import torch

import lightcache
import lightcache.ops as ops
from lightcache import DeepCache, EasyCache, ForecastCache, MemoryPlan, PreciseCache

ROOT = pathlib.Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"


def _op_names():
    return [n for n in ops.__all__ if hasattr(getattr(ops, n), "_opoverload")]


def test_all_lists_every_op_module_defines():
    declared = {n for n, v in vars(ops).items() if not n.startswith("_") and hasattr(v, "_opoverload")}
    assert declared == set(_op_names()) and len(declared) == 11


@pytest.mark.parametrize("name", _op_names())
def test_help_shows_the_ops_own_docstring(name):
    op = getattr(ops, name)
    own = op._init_fn.__doc__
    assert own and own.strip()
    text = pydoc.render_doc(op)
    assert own.strip().splitlines()[0] in text
    assert f"torch.ops.lightcache.{name}(" in text  # with the signature
    assert "CustomOpDef is a wrapper" not in text  # not torch's class documentation


def _args_section(doc: str) -> dict:
    """{field: text after the colon} of a Google-style "Args:" section."""
    section = doc.split("Args:", 1)[1]
    section = re.split(r"\n\s*\n\s*(?:Raises|Returns|Reference)", section)[0]
    entries = {}
    for m in re.finditer(r"^ {8}(\w+) \(([^)]*(?:\([^)]*\)[^)]*)*)\):", section, re.M):
        entries[m.group(1)] = m.group(2)
    return entries


@pytest.mark.parametrize("cls", [MemoryPlan, PreciseCache, DeepCache, EasyCache, ForecastCache])
def test_every_field_is_documented_with_its_default(cls):
    entries = _args_section(cls.__doc__)
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(entries) == sorted(names)
    for f in dataclasses.fields(cls):
        paren = entries[f.name]
        assert "defaults to " in paren, f"{cls.__name__}.{f.name}: no default documented"
        said = paren.split("defaults to ", 1)[1]
        try:
            value = ast.literal_eval(said)
        except (ValueError, SyntaxError):  # "the mode's ...": only for fields resolved from another
            assert f.default is None, f"{cls.__name__}.{f.name}: documented default {said!r}"
            continue
        assert value == f.default and type(value) is type(f.default), f"{cls.__name__}.{f.name}: {said!r} vs {f.default!r}"


def _text_files():
    for top in ("lightcache", "kernels", "tests"):
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".md", ".cu", ".cpp", ".h", ".txt") and "__pycache__" not in p.parts:
                yield p


def test_no_citation_of_the_missing_design_brief():
    """The docstrings cite docs/design.md (in the repository), never the brief outside it."""
    needle = "DESIGN" + ".md"  # spelled apart so this file does not match itself
    offenders = [
        f"{p.relative_to(ROOT)}:{i}" for p in _text_files()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if needle in line
    ]
    assert offenders == []


def test_design_citations_name_existing_sections():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", DESIGN.read_text(), re.M))
    assert {"3", "3.1", "3.2", "3.3", "4", "4.1", "4.2", "4.3", "5", "7"} <= headings
    cited = []
    for p in list(_text_files()) + [ROOT / "README.md"]:
        for m in re.finditer(r"docs/design\.md §(\d+(?:\.\d+)?)", p.read_text(errors="replace")):
            cited.append((p.relative_to(ROOT), m.group(1)))
    assert cited, "no file cites docs/design.md"
    assert [c for c in cited if c[1] not in headings] == []


def test_info_says_no_gpu_plainly(monkeypatch):
    from lightcache import info

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    facts = info.collect()
    assert facts["gpu"].startswith("no GPU (")
    assert "gpu:" in info.format_info(facts)


def test_history_docstring_states_the_bound():
    from lightcache.reporting import HISTORY_LIMIT

    assert f"HISTORY_LIMIT`` = {HISTORY_LIMIT}" in lightcache.history.__doc__
