"""Tiny random-weight pipelines of further families, one module each (see tests/tiny_pipelines.py,
"further families")."""
