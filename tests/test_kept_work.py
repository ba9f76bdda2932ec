"""Work is kept: an audit writes its report once screening ends and again after each explanation, keeps both in
its output folder, and a re-run resumes from them; a kill -9 at any point loses nothing finished earlier and
leaves no file half-written."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomalens.agents.llm.scripted import ScriptedLLM
from anomalens.errors import LLMError
from anomalens.pipelines import audit
from anomalens.pipelines.audit_state import FOLDER
from anomalens.report import Report
from tests.helpers.agent import by_handle

ROOT = Path(__file__).resolve().parents[1]



def event_of(call) -> str:
    """The event a call of the agent is about (its digest names it)."""
    user = next(m.content for m in call["messages"] if m.role == "user")
    return re.search(r"event-\d+", user)[0]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files an interrupted atomic write would leave behind."""
    return [p for p in folder.rglob(".*") if p.is_file() and p.name.startswith((".report", ".screening", ".expl"))]


@pytest.fixture
def saved_scene(scene_and_video, tmp_path):
    scene, test, _ = scene_and_video
    return scene.save(tmp_path / "scene"), test.video


def test_an_audit_keeps_its_work_and_a_rerun_resumes_it(saved_scene, tmp_path):
    scene, video = saved_scene
    out = tmp_path / "out"
    with pytest.raises(LLMError, match="the report is written"):  # the LLM fails after the first event
        audit(video, scene, out=out, llm=ScriptedLLM([by_handle]), progress=False)
    first = Report.model_validate_json((out / "report.json").read_text())
    events = [e.id for e in first.events]
    assert len(events) >= 2 and "for 1 of" in first.explainer
    # The agent's one explanation, and the plain one (headline and facts, no LLM) of each event it did not reach.
    assert [x.generator == "deterministic" for x in first.explanations] == [False] + [True] * (len(events) - 1)
    kept = (out / FOLDER / "explanations.json").read_text()

    llm = ScriptedLLM([by_handle] * len(events))
    again = audit(video, scene, out=out, llm=llm, progress=False)
    assert [event_of(call) for call in llm.calls] == events[1:]  # the first event's explanation was reused
    assert again.explanations[0] == first.explanations[0] and len(again.explanations) == len(events)
    assert again.report.explainer == "agent (scripted:script)" and again.events == first.events
    assert (out / FOLDER / "explanations.json").read_text().startswith(kept[:-2])  # grown, not rewritten

    llm = ScriptedLLM([by_handle] * len(events))
    audit(video, scene, out=out, llm=llm, fresh=True, progress=False)
    assert [event_of(call) for call in llm.calls] == events  # --fresh: screened and explained again
    rules = Path(scene) / "rules.yaml"
    rules.write_text(rules.read_text().replace("enabled: true", "enabled: false", 1))
    llm = ScriptedLLM([by_handle] * 20)
    changed = audit(video, scene, out=out, llm=llm, progress=False)
    assert len(llm.calls) == len(changed.events)  # another rulebook: nothing kept applies
    assert leftovers(out) == []


KILLED_AUDIT = textwrap.dedent(
    """
    import sys, time
    from anomalens.agents.llm.scripted import ScriptedLLM
    from anomalens.pipelines import audit
    from anomalens.video import FrameSource
    from tests.helpers.agent import by_handle

    def hang(messages):
        print("explaining the second event", flush=True)
        time.sleep(600)

    class Slow(FrameSource):
        def __iter__(self):
            for k, frame in enumerate(super().__iter__()):
                if k == 100:
                    print("screening frame 100", flush=True)
                    time.sleep(600)
                yield frame

    video, scene, out, where = sys.argv[1:]
    if where == "screening":
        from anomalens.tools.scene import Scene
        loaded = Scene.load(scene)
        source = Slow(video, max_side=loaded.max_side, default_fps=loaded.fps)
        audit(source, loaded, out=out, explainer="deterministic", fresh=True, progress=False)
    else:
        audit(video, scene, out=out, llm=ScriptedLLM([by_handle, hang]), progress=False)
    """
)


def kill_at(where: str, video, scene, out: Path, tmp_path: Path) -> str:
    """Run an audit in another process, kill -9 it at ``where``; the line it printed there."""
    script = tmp_path / "killed_audit.py"
    script.write_text(KILLED_AUDIT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(video), str(scene), str(out), where],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    said = process.stdout.readline().strip()
    process.send_signal(signal.SIGKILL)
    process.wait()
    return said


def test_kill_9_during_explanation_keeps_the_screening_and_the_explanations_done(saved_scene, tmp_path):
    scene, video = saved_scene
    out = tmp_path / "out"
    assert kill_at("explanation", video, scene, out, tmp_path) == "explaining the second event"
    report = Report.model_validate_json((out / "report.json").read_text())  # whole, and holds the finished work
    assert report.events and len(report.explanations) == 1 and "for 1 of" in report.explainer
    assert report.explanations[0].event_id in (out / "report.html").read_text()
    assert leftovers(out) == []
    llm = ScriptedLLM([by_handle] * len(report.events))
    resumed = audit(video, scene, out=out, llm=llm, progress=False)
    assert resumed.events == report.events and resumed.explanations[0] == report.explanations[0]
    assert [event_of(call) for call in llm.calls] == [e.id for e in report.events[1:]]


def test_kill_9_during_screening_loses_no_earlier_result(saved_scene, tmp_path):
    scene, video = saved_scene
    out = tmp_path / "out"
    earlier = audit(video, scene, out=out, explainer="deterministic", progress=False)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert kill_at("screening", video, scene, out, tmp_path) == "screening frame 100"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # nothing lost, nothing half-written
    again = audit(video, scene, out=out, explainer="deterministic", progress=False)
    assert again.events == earlier.events and again.report.scores == earlier.report.scores
