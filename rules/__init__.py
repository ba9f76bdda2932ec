"""Rulebook YAML I/O (``io``) and the rule engine (``engine``) over ``anomalens.types.Rule``/``Rulebook``."""
