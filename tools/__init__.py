"""Tool nodes; each returns ``anomalens.types.Evidence``. Importing this package loads no model library."""
