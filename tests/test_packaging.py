"""The package installs under one name, imports lazily, and builds a wheel that works on its own."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "anomalens.agents", "anomalens.tools", "anomalens.prompts", "anomalens.rules", "anomalens.eval",
    "anomalens.pipelines", "anomalens.web",
]  # fmt: skip
MODULES = SUBPACKAGES + [
    "anomalens.cli",
    "anomalens.video",
    "anomalens.types",
    "anomalens.report",
    "anomalens.tools.screening",
    "anomalens.pipelines.describe",
    "anomalens.pipelines.audit",
    "anomalens.agents.graph",
    "anomalens.tools.motion",
    "anomalens.tools.scene",
    "anomalens.tools.objects.follow",
    "anomalens.tools.rule_induction",
    "anomalens.rules.engine",
    "anomalens.rules.io",
    "anomalens.rules.captions",
    "anomalens.tools.captions",
    "anomalens.tools.embeddings",
    "anomalens.tools.caption_scoring",
    "anomalens.eval.synthetic",
    "anomalens.eval.demo",
]
HEAVY = ["torch", "transformers", "vllm", "open_clip", "langgraph"]


def run_python(code: str, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_folders_map_to_anomalens_subpackages(tmp_path):
    code = (
        "import importlib, importlib.util, json;"
        f"mods = {SUBPACKAGES!r};"
        "files = {m: importlib.import_module(m).__file__ for m in mods};"
        "top = {n: importlib.util.find_spec(n) is not None for n in ['agents', 'tools', 'prompts', 'rules', 'eval',"
        " 'pipelines']};"
        "print(json.dumps([files, top]))"
    )
    import json

    files, top = json.loads(run_python(code, cwd=tmp_path))
    for module, file in files.items():
        folder = module.split(".")[1]
        assert Path(file).resolve() == (REPO / folder / "__init__.py").resolve()
    assert not any(top.values()), f"generic top-level modules are importable: {top}"


def test_importing_the_package_loads_no_heavy_library(tmp_path):
    code = (
        "import importlib, sys;"
        f"[importlib.import_module(m) for m in {MODULES!r}];"
        f"print(','.join(h for h in {HEAVY!r} if h in sys.modules))"
    )
    assert run_python(code, cwd=tmp_path) == ""


def test_wheel_holds_only_anomalens_and_works_without_the_source_tree(tmp_path):
    # Build from a copy of the tracked files: an in-tree build/ from an earlier run could leak stale modules.
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    tree = tmp_path / "tree"
    for name in tracked + untracked:
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(tree)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("anomalens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"anomalens"}
    assert "anomalens/prompts/explain.yaml" in names and "anomalens/tools/motion.py" in names
    assert "anomalens/rules/everyday_anomalies.txt" in names
    assert not any(n.startswith("anomalens/tests") for n in names)

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import importlib, anomalens.prompts as p;"
        f"files = [importlib.import_module(m).__file__ for m in {MODULES!r}];"
        "print(all(f.startswith(" + repr(str(target)) + ") for f in files), sorted(p.load('explain')))"
    )
    out = run_python(code, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert out.startswith("True") and "object_rule" in out
