"""Rule handling built on the ``Rule``/``Rulebook`` types of ``anomalens.types``."""
