"""anomalens: find anomalies in video and images and explain them with verified evidence.

The Python API (``learn_scene``, ``audit``, ``explain``, ``chat``) is ``anomalens.pipelines``'s, imported when
first used: importing ``anomalens`` (or its types) loads nothing heavy.
"""

from importlib import import_module

__version__ = "0.1.0"
API = ("learn_scene", "audit", "explain", "chat")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        return getattr(import_module("anomalens.pipelines"), name)
    raise AttributeError(f"module 'anomalens' has no attribute {name!r}")
