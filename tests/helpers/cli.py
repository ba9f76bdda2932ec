"""The command line as a user runs it, in the test's process."""

import sys

from anomalens.cli import main


def run(argv: list, monkeypatch, capsys) -> tuple[int, str]:
    """``anomalens ARGV`` in this process, as its console script runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["anomalens", *map(str, argv)])
    try:
        main()
    except SystemExit as ended:
        return ended.code or 0, capsys.readouterr().err
    return 0, capsys.readouterr().err
