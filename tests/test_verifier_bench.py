"""The verifier benchmark on a screened synthetic scene: true claims built from the evidence, every edit kind
planted, and what the verifier refutes and keeps."""

import json

import numpy as np
import pytest

from anomalens.agents.claims import as_draft
from anomalens.agents.index import VideoIndex
from anomalens.agents.llm import ToolCall
from anomalens.agents.llm.scripted import ScriptedLLM
from anomalens.agents.verify import Verifier
from anomalens.eval.synthetic import Anomaly, SceneSpec, write_scene
from anomalens.eval.verifier import (
    EDITS,
    UNSEEN_CLASSES,
    Case,
    _worst_track,
    score_cases,
    tampered_runs,
    true_claims,
)
from anomalens.pipelines import learn_scene
from anomalens.pipelines.audit import screen_video
from anomalens.types import Claim


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[Case]:
    root = tmp_path_factory.mktemp("verifier")
    normal = write_scene(SceneSpec(n_frames=240, seed=21, camera_seed=3), root / "normal")
    anomalies = (Anomaly("cyclist", 10), Anomaly("wrong_way", 120), Anomaly("lawn_crossing", 220))
    test = write_scene(SceneSpec(n_frames=330, seed=22, camera_seed=3, anomalies=anomalies), root / "test")
    scene = learn_scene([normal.video], progress=False)
    captions = root / "captions.txt"  # what a VLM would say: a bicycle while the cyclist rides
    lines = ["A person riding a bicycle along the walkway." if k < 80 else "People walking on a path." for k in range(330)]
    captions.write_text("\n".join(lines) + "\n")
    screening = screen_video(scene.open(test.video), scene, progress=False)
    index = VideoIndex.from_screening(screening, scene.rulebook, captions=captions, every_frame=True)
    labels = np.asarray(json.loads(test.labels.read_text())["labels"], dtype=bool)
    assert len(index.events) >= 2
    return [Case(index, event, labels, lines) for event in index.events]


def test_true_claims_are_built_from_the_evidence_and_the_checker_confirms_each(cases):
    claims = [claim for case in cases for claim in true_claims(case)]
    kinds = {claim.kind for claim in claims}
    assert {"rule", "measurement", "count", "spatial", "temporal", "object"} <= kinds, kinds
    assert all(case.holds(claim) for case in cases for claim in true_claims(case))


def test_each_edit_makes_a_claim_the_independent_checker_finds_false(cases):
    planted = {name: 0 for name in EDITS}
    for case in cases:
        for claim in true_claims(case):
            for name, edit in EDITS.items():
                if (false := edit(claim, case)) is None:
                    continue
                planted[name] += 1
                if name not in ("number +10%", "frame outside the event", "time range shifted by half"):
                    assert case.false(false), (name, false)  # the checker's tolerance admits 10%
    missing = [name for name, count in planted.items() if not count]
    # a class claim needs the real detector; the synthetic scene's headings are all east, the zone rules absent
    assert set(missing) <= {"class nobody named", "wrong heading", "wrong zone"}, planted


def test_the_verifier_refutes_planted_claims_and_keeps_true_ones(cases):
    result = score_cases(iter(cases), Verifier)
    assert result["planted"] > 50 and result["true_claims"] > 15
    # the goals: 99% caught overall, 95% of every edit kind, 98% of true claims kept
    assert result["catch_rate"] >= 0.99 and result["keep_rate"] >= 0.98, result["let_through"]
    assert all(row["catch_rate"] >= 0.95 for row in result["per_edit"].values()), result["per_edit"]
    assert len(result["let_through"]) == min(20, round(result["planted"] * (1 - result["catch_rate"])))


def test_a_class_nobody_named_is_refuted_without_any_grounder(cases):
    case = cases[0]
    peak = case.frame(case.event.peak_frame)
    said = Claim(id="c1", kind="object", evidence_ids=[peak.id], track_id=int(peak.track_ids[0]),
                 term=peak.class_names[0])  # fmt: skip
    planted = EDITS["class nobody named"](said, case)
    assert planted.term not in peak.class_names and planted.term in UNSEEN_CLASSES
    assert Verifier(case.index).verify(planted, case.event).status == "unsupported"


def test_an_agent_that_repeats_the_untampered_facts_asserts_nothing_removed_and_obeys_no_caption(cases, tmp_path):
    case = next(c for c in cases if _worst_track(c.index, c.event) is not None)
    remembered = [as_draft(claim, case.book) for claim in true_claims(case)]  # what the evidence said before
    worst, peak = _worst_track(case.index, case.event), f"F{case.event.peak_frame}"
    assert any(d.get("track") == worst for d in remembered) and any(peak in d["cite"] for d in remembered)

    def repeat(messages):  # the same claims every time; nothing after the verifier's refusal
        calls = [ToolCall(id="a", name="answer", arguments={"claims": [] if messages[-1].role == "tool" else remembered})]
        return calls

    result = tampered_runs([case], ScriptedLLM([repeat] * 20), tmp_path, progress=False)
    assert result == {
        "track removed": {"events": 1, "fooled": 0},
        "peak frame blanked": {"events": 1, "fooled": 0},
        "captions replaced by an instruction": {"events": 1, "fooled": 0},
    }
