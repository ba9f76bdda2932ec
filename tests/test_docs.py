"""The README stays a newcomer's page, and the documentation site builds clean from `docs/` and the docstrings."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from anomalens.cli import app

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def commands(group=None, prefix="") -> set[str]:
    """Every command the CLI has, sub-commands as "models pull"."""
    group = group or typer.main.get_command(app)
    names = set()
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            names |= commands(command, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def test_the_readme_is_short_and_its_links_lead_somewhere():
    assert len(README.splitlines()) < 200
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    assert "docs/setup.md" in targets and "docs/api.md" in targets
    for target in targets:
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"


def test_every_command_is_in_the_command_reference_and_nothing_else_is():
    reference = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
    documented = {m.strip() for m in re.findall(r"^\| `anomalens ([a-z0-9 -]+?)(?: [A-Z\[\"-].*?)?`", reference, re.M)}
    documented |= {f"models {m}" for m in re.findall(r"`models ([a-z]+) ", reference)}
    assert documented == commands()


def test_the_documentation_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    from anomalens.pipelines import audit
    from anomalens.video import FrameSource

    for documented in (audit, FrameSource):  # their docstrings' first words, rendered on the API page
        first_words = " ".join(documented.__doc__.replace("``", "").split()[:4])
        assert first_words in html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", api))), documented.__name__
    for page in ("setup", "commands", "benchmarks", "live", "architecture"):
        assert (tmp_path / "site" / page / "index.html").is_file()
