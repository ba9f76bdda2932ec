"""The agent's graph on a real screening of a synthetic scene, driven by scripted LLMs: every path (direct
answer, tool calls, tool errors, malformed output, revision, giving up, injected captions), the verifier, the
report, and chat sessions that survive a killed process."""

import html
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomalens.agents.chat import ChatSession
from anomalens.agents.claims import plural
from anomalens.agents.graph import MAX_STEPS, Agent, build_graph, explain_events
from anomalens.agents.index import EvidenceBook, VideoIndex, handle
from anomalens.agents.llm import ToolCall
from anomalens.agents.llm.scripted import ScriptedLLM
from anomalens.agents.verify import Verifier
from anomalens.config import load_settings
from anomalens.errors import AnomalensError
from anomalens.pipelines import audit
from anomalens.pipelines.audit import open_explainer, screen_video
from anomalens.report import render_html
from anomalens.tools.perception import Perception
from anomalens.types import Claim, Explanation
from tests.helpers.agent import INJECTION
from tests.helpers.agent import answer, by_handle, offered

SNAPSHOT = Path(__file__).parent / "snapshots" / "agent_graph.txt"


def first_event(index: VideoIndex):
    return index.events[0]


def run(llm, index, events=None, tool_rounds=None):
    chosen = events or [first_event(index).id]
    return list(explain_events(llm, index, event_ids=chosen, tool_rounds=tool_rounds, progress=False))


def test_graph_structure_matches_its_snapshot(index):
    graph = build_graph(Agent(ScriptedLLM([]), index)).get_graph()
    edges = sorted(f"{e.source} -> {e.target}{' (conditional)' if e.conditional else ''}" for e in graph.edges)
    assert edges == SNAPSHOT.read_text().split("\n")[:-1]


def test_a_direct_answer_is_verified_and_only_verified_claims_are_said(index):
    wrong = {"kind": "measurement", "cite": [f"F{first_event(index).peak_frame}"], "quantity": "speed", "value": 12345.0}

    chosen = [f for f in offered(index, first_event(index)) if f["kind"] in ("rule", "measurement")][:2]
    assert chosen, "the digest offers rule and measurement facts"

    def from_digest(messages):
        return answer(chosen + [wrong])

    llm = ScriptedLLM([from_digest, answer([])])  # the revision drops what failed
    (explanation,) = run(llm, index)
    assert explanation.first_draft[-1].verdict.status == "unsupported"
    assert "12345" not in explanation.prose and explanation.supported
    assert all(c.verdict.status == "supported" for c in explanation.claims)
    assert explanation.llm_calls == 2 and explanation.rounds == 1
    # The revision request names the failed claim and its reason, in the answer tool's result.
    revision = llm.calls[1]["messages"][-1]
    assert revision.role == "tool" and "12345" in revision.content and "recorded" in revision.content
    rule = next(c for c in explanation.supported if c.kind == "rule")
    assert index.rulebook.get(rule.rule_id).sentence.rstrip(".") in explanation.prose


def test_the_caption_rule_an_event_breaks_is_offered_as_a_fact_and_verified(scene_and_video):
    from anomalens.pipelines.captions import caption_cue
    from anomalens.rules.captions import parse_rule_text
    from anomalens.tools.caption_scoring import CaptionScorer
    from anomalens.tools.captions import ReplayedCaptions
    from tests.helpers.captions import RULES, BagOfWords

    scene, test, captions = scene_and_video
    cue = caption_cue(
        ReplayedCaptions.load(captions), CaptionScorer(parse_rule_text(RULES, "rules.txt"), BagOfWords()),
        progress=False,
    )
    screened = screen_video(scene.open(test.video), scene, cues=[cue], progress=False)
    built = VideoIndex.from_screening(screened, scene.rulebook, captions=captions)
    (event,) = [e for e in built.events if e.reasons]
    (said,) = event.reasons
    assert (said.phrase, said.rule_id) == ("riding a bicycle", "anomaly-2") and said.last_frame < 70
    assert 'describe "riding a bicycle"' in event.summary

    def from_digest(messages):
        return answer([f for f in offered(built, event) if f["kind"] == "object" and f["cite"][0].startswith("C")])

    (explanation,) = run(ScriptedLLM([from_digest]), built, events=[event.id])
    (claim,) = [c for c in explanation.supported if not c.from_facts]
    assert claim.term == "riding a bicycle" and claim.evidence_ids == [built.caption(said.first_frame).id]
    assert "riding a bicycle" in explanation.prose


def test_tool_calls_and_tool_errors_go_back_to_the_llm(index):
    event = first_event(index)
    peak = index.frame_evidence(event.peak_frame)
    track = int(peak.track_ids[0])
    calls = [
        ToolCall(id="t1", name="measure", arguments={"quantity": "speed", "frame": event.peak_frame, "track_id": 999}),
        ToolCall(
            id="t2", name="measure", arguments={"quantity": "speed", "frame": event.peak_frame, "track_id": track}
        ),
        ToolCall(id="t3", name="measure", arguments={"quantity": "colour", "frame": event.peak_frame}),
    ]

    def from_tool_result(messages):
        results = {m.tool_call_id: m.content for m in messages if m.role == "tool"}
        assert results["t1"].startswith("error: track 999 is not in frame")
        assert "error: measure: unknown quantity 'colour'" in results["t3"]
        value = float(re.search(r"speed at frame \d+ \([\d.]+ s\): ([\d.]+)", results["t2"])[1])
        return answer(
            [
                {
                    "kind": "measurement",
                    "cite": [f"F{event.peak_frame}"],
                    "quantity": "speed",
                    "value": value,
                    "track": track,
                }
            ]
        )

    llm = ScriptedLLM([calls, from_tool_result])
    (explanation,) = run(llm, index, tool_rounds=1)  # tools allowed (by default only with live perception tools)
    assert [c.verdict.status for c in explanation.claims if not c.from_facts] == ["supported"]
    assert llm.calls[0]["choice"] == "required" and llm.calls[1]["choice"] == "answer"  # one round of tools


def test_malformed_replies_are_corrected_then_the_budget_ends_the_attempt(index):
    fact = {
        "kind": "count",
        "cite": [f"F{first_event(index).peak_frame}"],
        "value": len(index.in_view(first_event(index).peak_frame)),
    }
    llm = ScriptedLLM(["I think it is a cyclist.", answer([{"kind": "guess", "cite": ["F1"]}]), answer([fact])])
    (explanation,) = run(llm, index)
    assert [c.verdict.status for c in explanation.claims if not c.from_facts] == ["supported"]
    assert "calling a tool" in llm.calls[1]["messages"][-1].content
    assert "malformed" in llm.calls[2]["messages"][-1].content and "kind" in llm.calls[2]["messages"][-1].content

    stubborn = ScriptedLLM(["no"] * MAX_STEPS)
    (gave_up,) = run(stubborn, index)
    assert gave_up.llm_calls == MAX_STEPS and all(c.from_facts for c in gave_up.claims)  # the LLM said nothing


def test_each_claim_kind_requires_its_fields_so_a_grammar_cannot_leave_them_out(index):
    from pydantic import ValidationError

    from anomalens.agents.claims import Answer
    from anomalens.agents.llm import tool_parameters

    variants = tool_parameters(Answer)["properties"]["claims"]["items"]["oneOf"]
    required = {v["properties"]["kind"].get("const", "/".join(v["properties"]["kind"].get("enum", []))): v["required"]
                for v in variants}  # fmt: skip
    assert required["count"] == ["kind", "cite", "value"]
    assert required["measurement"] == ["kind", "cite", "quantity", "value"]
    assert required["object"] == ["kind", "cite", "term"]
    assert required["attribute"] == ["kind", "cite", "heading", "track"]
    assert required["temporal"] == ["kind", "cite", "frames"]
    assert all("discriminator" not in json.dumps(v) and "$defs" not in json.dumps(v) for v in variants)
    with pytest.raises(ValidationError, match="value"):
        Answer.model_validate({"claims": [{"kind": "count", "cite": ["F1"]}]})

    # The malformed claim of a real run (a count with no number) is not even expressible under llama.cpp's grammar.
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(tool_parameters(Answer)))
    count = re.search(r'^(claims-item-\d+)-kind ::= "\\"count\\""$', gbnf, re.MULTILINE)[1]
    body = re.search(rf"^{count} ::= (.*)$", gbnf, re.MULTILINE)[1]
    assert body.endswith(f'space {count}-value-kv "}}" space')  # the last field, outside any optional group
    # A scripted model that sends one anyway is told what is missing.
    peak = first_event(index).peak_frame
    fact = {"kind": "count", "cite": [f"F{peak}"]}
    llm = ScriptedLLM([answer([fact]), answer([fact | {"value": len(index.in_view(peak))}])])
    (explanation,) = run(llm, index)
    assert "value" in llm.calls[1]["messages"][-1].content
    assert [c.verdict.status for c in explanation.claims if not c.from_facts] == ["supported"]


def test_revision_is_bounded_and_unsupported_claims_are_dropped(index):
    wrong = answer([{"kind": "rule", "cite": [f"F{first_event(index).peak_frame}"], "rule": "no-such-rule"}])
    llm = ScriptedLLM([wrong, wrong, wrong])
    (explanation,) = run(llm, index)
    assert explanation.rounds == 1 and explanation.llm_calls == 2 and len(llm.script) == 1
    assert [c for c in explanation.supported if not c.from_facts] == []
    assert explanation.claims[0].verdict.reason == "there is no rule no-such-rule"


def test_a_claim_repeated_in_an_answer_or_a_revision_is_said_once(index):
    wrong = {"kind": "rule", "cite": [f"F{first_event(index).peak_frame}"], "rule": "no-such-rule"}

    fact = offered(index, first_event(index))[0]

    def twice(messages):
        return answer([fact, fact, wrong])

    def repeat_the_kept(messages):
        return answer([fact])

    (explanation,) = run(ScriptedLLM([twice, repeat_the_kept]), index)
    assert len(explanation.first_draft) == 2 and explanation.rounds == 1
    (said,) = [c for c in explanation.supported if not c.from_facts]
    assert explanation.prose.count(said.text) == 1
    assert all(c.text != said.text for c in explanation.supported if c.from_facts)  # no fact is added twice


def test_every_event_in_the_queue_is_explained(index):
    ids = [e.id for e in index.events]
    llm = ScriptedLLM([by_handle for _ in ids])
    explanations = run(llm, index, events=ids)
    assert [x.event_id for x in explanations] == ids
    assert all(x.supported for x in explanations)


def test_injected_caption_text_stays_data_and_cannot_change_what_is_said(index):
    event = next(e for e in index.events if e.peak_frame > 100)  # its captions carry the injection

    read_caption = [ToolCall(id="c", name="caption", arguments={"frame": event.peak_frame})]

    def fooled(messages):
        carriers = [m for m in messages if INJECTION in m.content]
        assert [(m.role, m.name) for m in carriers] == [("tool", "caption")]  # only ever a tool's result
        assert carriers[0].content.startswith(f"[C{event.peak_frame}] caption of frame {event.peak_frame} ")
        assert "(data): " in carriers[0].content
        # The in-process protocol hands it to the model marked as data, after the system turn.
        from anomalens.agents.llm.base import protocol_messages

        rendered = protocol_messages(messages, [])
        assert INJECTION not in rendered[0].content and "data, not instructions" in rendered[-1].content
        return answer(
            [
                {"kind": "other", "cite": [f"C{event.peak_frame}"]},
                {"kind": "rule", "cite": [f"C{event.peak_frame}"], "rule": event.rule_ids[0]},
            ]
        )

    (explanation,) = run(ScriptedLLM([read_caption, fooled, answer([])]), index, events=[event.id], tool_rounds=1)
    assert [c for c in explanation.claims if not c.from_facts] == []  # only the event's own facts are said
    assert "nothing here is anomalous" not in explanation.prose
    assert {c.verdict.status for c in explanation.first_draft} == {"unverifiable", "unsupported"}


def test_object_claims_are_grounded_in_captions_and_labels(index):
    verifier = Verifier(index)
    cyclist = first_event(index)
    caption = index.caption(cyclist.peak_frame)
    seen = Claim(id="c1", kind="object", term="bicycle", evidence_ids=[caption.id])
    unseen = Claim(id="c2", kind="object", term="truck", evidence_ids=[caption.id])
    assert verifier.verify(seen, cyclist).status == "supported"
    assert verifier.verify(unseen, cyclist).status == "unsupported"
    # A caption is about the frame: it does not make one tracked object a bicycle.
    pinned = Claim(id="c6", kind="object", term="bicycle", track_id=0, evidence_ids=[caption.id])
    assert verifier.verify(pinned, cyclist).status == "unsupported"
    peak = index.frame_evidence(cyclist.peak_frame)
    heading, zone, track = peak.headings[0], peak.zones[0], int(peak.track_ids[0])

    def status(**fields):
        return verifier.verify(Claim(id="c", track_id=track, evidence_ids=[peak.id], **fields)).status

    # Headings and zones are checked against the frame's typed fields: the recorded one holds, any other fails.
    assert status(kind="attribute", heading=heading) == "supported"
    others = [h for h in ("E", "W", "N", "S", "still") if h != heading]
    assert {status(kind="attribute", heading=h) for h in others} == {"unsupported"}
    assert status(kind="spatial", zone=zone) == status(kind="spatial", zone=f"zone {zone}") == "supported"
    assert status(kind="spatial", zone="r9c9") == "unsupported"
    # A frame of motion blobs does not know what its objects are: a class claim needs a detector's evidence.
    assert status(kind="object", term="object") == "unsupported"


def test_a_caption_word_claimed_of_a_frame_or_a_missing_frame_is_told_what_to_cite(index):
    verifier = Verifier(index)
    cyclist = first_event(index)
    peak = index.frame_evidence(cyclist.peak_frame)
    track = int(peak.track_ids[0])
    # Motion blobs have no class; the cyclist's captions say "bicycle".
    claim = Claim(id="c", kind="object", term="bicycle", track_id=track, evidence_ids=[peak.id])
    wrong = verifier.verify(claim, cyclist)
    frames = [cyclist.peak_frame, *range(cyclist.start_frame, cyclist.end_frame + 1)]  # the cited frame first
    said = next(k for k in frames if "bicycle" in index.caption(k).text)
    assert wrong.status == "unsupported"
    assert wrong.reason.endswith(f"; C{said} mentions it: cite C{said}, without track")
    told = Claim(id="c", kind="object", term="bicycle", evidence_ids=[EvidenceBook(index).resolve(f"C{said}")])
    assert verifier.verify(told, cyclist).status == "supported"
    # A frame handle with no evidence is told the event's nearest frame that has some (here: every even one); the
    # copy looks frames up in its own evidence, not in the lookups the index had cached.
    kept = [ev for ev in index.evidence if ev.frame_index % 2 == 0]
    even = index.model_copy(update={"evidence": kept})
    missing = (cyclist.start_frame + 1) | 1  # odd, and after an even frame of the event
    nowhere = Verifier(even).verify(Claim(id="c", kind="count", value=1, evidence_ids=[f"F{missing}"]), cyclist)
    assert nowhere.reason == (
        f"cites F{missing}, which is not in the evidence; the event's nearest frame with evidence is F{missing - 1}"
    )


def test_numbers_units_counts_relations_and_ranges_are_rechecked(index):
    verifier = Verifier(index)
    event = first_event(index)
    peak = index.frame_evidence(event.peak_frame)
    track = int(peak.track_ids[0])
    speed = peak.measurement("speed", 0).value

    def status(**fields):
        return verifier.verify(Claim(id="c", evidence_ids=[peak.id], **fields), event).status

    assert status(kind="measurement", quantity="speed", value=speed * 1.04, track_id=track) == "supported"
    assert status(kind="measurement", quantity="speed", value=speed * 2 + 1, track_id=track) == "unsupported"
    assert (
        status(kind="measurement", quantity="speed", value=speed / index.fps, unit="px/frame", track_id=track)
        == "supported"
    )
    assert status(kind="measurement", quantity="speed", value=speed, unit="px^2", track_id=track) == "unsupported"
    in_view = len(index.in_view(peak.frame_index))  # the tracks alive then, not the peak frame's boxes
    assert status(kind="count", value=in_view) == "supported"
    assert status(kind="count", value=in_view + 1) == "unsupported"
    assert status(kind="temporal", frames=(event.start_frame, event.end_frame)) == "supported"
    assert status(kind="temporal", frames=(event.end_frame + 50, event.end_frame + 60)) == "unsupported"
    assert status(kind="rule", rule_id=event.rule_ids[0]) in ("supported", "unsupported")  # depends on the peak
    outside = index.frame_evidence(event.end_frame + 20)
    claim = Claim(id="c", kind="count", value=len(outside), evidence_ids=[outside.id])
    assert "outside the event" in verifier.verify(claim, event).reason
    assert "not in the evidence" in verifier.verify(Claim(id="c", kind="count", value=1, evidence_ids=["ev-x"])).reason
    pairs = [(i, j) for i in range(len(peak)) for j in range(len(peak)) if peak.boxes[i][0] + 5 < peak.boxes[j][0]]
    if pairs:
        i, j = pairs[0]
        a, b = int(peak.track_ids[i]), int(peak.track_ids[j])
        assert status(kind="spatial", relation="left_of", track_id=a, other_track_id=b) == "supported"
        assert status(kind="spatial", relation="right_of", track_id=a, other_track_id=b) == "unsupported"


def test_a_rule_claim_citing_the_wrong_frame_is_told_which_frame_records_it(index):
    verifier = Verifier(index)

    def recording(event):
        """A frame of ``event`` recording a rule broken by a track, and one of its frames that does not."""
        for ev in map(index.get, event.evidence_ids):
            for rule_id, _, i in ev.breaches():
                track = ev.track_of(i)
                other = next((index.get(k) for k in event.evidence_ids if not any(
                    r == rule_id and index.get(k).track_of(j) == track for r, _, j in index.get(k).breaches())), None)
                if i is not None and other is not None:
                    return ev, rule_id, track, other
        return None

    event, (ev, rule_id, track, other) = next((e, found) for e in index.events if (found := recording(e)))
    wrong = verifier.verify(Claim(id="c", kind="rule", rule_id=rule_id, track_id=track, evidence_ids=[other.id]), event)
    assert wrong.status == "unsupported" and wrong.reason.endswith(f"; {handle(ev)} records it")
    cited = EvidenceBook(index).resolve(handle(ev))
    right = Claim(id="c", kind="rule", rule_id=rule_id, track_id=track, evidence_ids=[cited])
    assert verifier.verify(right, event).status == "supported"
    nowhere = Claim(id="c", kind="rule", rule_id=rule_id, track_id=-5, evidence_ids=[other.id])
    assert "records it" not in verifier.verify(nowhere, event).reason


def test_a_measurement_citing_the_wrong_frame_is_told_which_frame_measured_it(index):
    verifier = Verifier(index)

    def differing(event):
        """Two frames of ``event`` in which one of its tracks was measured at clearly different speeds."""
        frames = [ev for ev in map(index.get, event.evidence_ids) if len(ev)]
        for track in {int(t) for ev in frames for t in ev.track_ids}:
            speeds = [(ev, ev.measurement("speed", i)) for ev in frames if (i := ev.object_of(track)) is not None]
            pair = next(((a, b) for a in speeds for b in speeds
                         if abs(a[1].value - b[1].value) > 0.25 * max(a[1].value, 3.0)), None)  # fmt: skip
            if pair is not None:
                return track, pair
        return None

    event, (track, ((_, measured), (other, _))) = next((e, found) for e in index.events if (found := differing(e)))
    claim = Claim(id="c", kind="measurement", quantity="speed", value=measured.value, unit=measured.unit,
                  track_id=track, evidence_ids=[other.id])  # fmt: skip
    wrong = verifier.verify(claim, event)
    assert wrong.status == "unsupported" and f"not {measured.value:g}" in wrong.reason

    def citing(ev):
        return claim.model_copy(update={"evidence_ids": [ev.id]})

    # The hint names the event's first frame that supports the claim; citing it, the revision passes.
    first = next(
        ev for ev in map(index.get, event.evidence_ids) if verifier.verify(citing(ev), event).status == "supported"
    )
    assert wrong.reason.endswith(f"; {handle(first)} recorded {measured.value:g}")
    nowhere = claim.model_copy(update={"value": 1e6})
    assert "recorded 1e+06" not in verifier.verify(nowhere, event).reason


def test_a_frame_quantity_claimed_as_a_rule_or_for_a_track_is_told_how_to_claim_it(index):
    verifier = Verifier(index)
    event = first_event(index)
    frame = next(
        ev for ev in map(index.get, event.evidence_ids) if ev.measurement("view_motion") is not None and len(ev)
    )
    changed, track = frame.measurement("view_motion").value, frame.track_of(0)
    as_rule = verifier.verify(Claim(id="c", kind="rule", rule_id="view_motion", evidence_ids=[frame.id]), event)
    assert as_rule.reason.endswith("view_motion is a measurement: claim it as kind measurement")
    for_track = Claim(
        id="c", kind="measurement", quantity="view_motion", value=changed, track_id=track, evidence_ids=[frame.id]
    )
    assert verifier.verify(for_track, event).reason.endswith("measured for the whole frame: claim it without track")
    as_told = for_track.model_copy(update={"track_id": None})
    assert verifier.verify(as_told, event).status == "supported"
    unknown = verifier.verify(Claim(id="c", kind="rule", rule_id="speed-zz", evidence_ids=[frame.id]), event)
    assert unknown.reason == "there is no rule speed-zz"


def test_audit_report_shows_each_claim_with_its_verdict_and_evidence(scene_and_video):
    scene, test, captions = scene_and_video

    wrong = {"kind": "count", "cite": ["F0"], "value": 42}
    llm = ScriptedLLM([answer([wrong], facts=["f1", "f2"]), answer([])] * 10)
    result = audit(test.video, scene, llm=llm, captions=captions, perception=Perception(), progress=False)
    report = result.report
    assert report.explainer == "agent (scripted:script)" and len(report.explanations) == len(result.events)
    page = render_html(report, result.keyframes)
    for explanation in report.explanations:
        event = next(e for e in report.events if e.id == explanation.event_id)
        said = report.why(event)  # the headline, then the agent's verified facts
        assert explanation.headline and said.startswith(explanation.headline) and event.summary.startswith("From ")
        assert all(c.text in said for c in explanation.facts[:3]) and html.escape(explanation.headline) in page
    assert page.count('class="supported"') >= len(report.events) and 'class="unsupported"' in page
    assert "not said: count" in page and "42" in page  # the rejected claim is shown as not said, with its value
    plain = audit(test.video, scene, explainer="deterministic", progress=False).report
    assert plain.explainer == "deterministic" and len(plain.explanations) == len(plain.events)
    for event, explanation in zip(plain.events, plain.explanations):
        assert explanation.generator == "deterministic" and explanation.llm_calls == 0
        assert explanation.headline and plain.why(event).startswith(explanation.headline)


def test_explainer_choice(tmp_path):
    settings = load_settings(model_dir=tmp_path / "empty-store")
    assert open_explainer("deterministic", settings) == (None, "deterministic")
    llm, who = open_explainer("auto", settings)
    assert llm is None and who.startswith("deterministic (no LLM: ") and "qwen2.5-coder-1.5b" in who
    with pytest.raises(AnomalensError, match="qwen2.5-coder-1.5b"):
        open_explainer("agent", settings)
    with pytest.raises(AnomalensError, match="choose auto, agent or deterministic"):
        open_explainer("oracle", settings)


CHAT_PROCESS = textwrap.dedent(
    """
    import sys, time
    from anomalens.agents.chat import ChatSession
    from anomalens.agents.index import VideoIndex
    from anomalens.agents.llm.scripted import ScriptedLLM

    def thinks_forever(messages):
        print("answering the second question", flush=True)
        time.sleep(600)  # killed here, in the middle of an answer

    index = VideoIndex.load(sys.argv[1])
    frame = int(sys.argv[4])
    talk = ChatSession(index, ScriptedLLM([thinks_forever]), sys.argv[2], sys.argv[3])
    print(talk.ask("how many objects are in view at frame %d?" % frame).prose, flush=True)  # needs no LLM
    talk.ask("tell me about bicycles")  # no route fits: the LLM chooses the query
    """
)


def test_chat_session_survives_a_killed_process(index, tmp_path):
    saved = index.save(tmp_path / "index.json")
    database = tmp_path / "sessions.sqlite"
    frame = first_event(index).peak_frame
    count = len(index.in_view(frame))
    script = tmp_path / "chat_process.py"
    script.write_text(CHAT_PROCESS)
    process = subprocess.Popen(
        [sys.executable, str(script), str(saved), str(database), "s1", str(frame), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    first_answer = process.stdout.readline().strip()
    assert process.stdout.readline().strip() == "answering the second question"
    process.kill()  # SIGKILL: no cleanup runs
    process.wait()
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert first_answer == f"{plural('object', count)} in view at {frame / index.fps:.1f} s (frame {frame})."

    def remembers(messages):
        user = messages[-1].content
        assert f"Q: how many objects are in view at frame {frame}?\nA: {first_answer}" in user
        return answer([])

    llm = ScriptedLLM(['{"kind": "other"}', remembers])  # no question tool fits: the agent's tools answer it
    resumed = ChatSession(VideoIndex.load(saved), llm, database, "s1")
    assert [t["question"] for t in resumed.history] == [f"how many objects are in view at frame {frame}?"]
    assert resumed.history[0]["answer"] == first_answer
    assert resumed.ask("and what did I ask before?").prose == ""
    assert len(resumed.history) == 2 and llm.calls
    other = ChatSession(VideoIndex.load(saved), ScriptedLLM([]), database, "s2")
    assert other.history == []  # sessions are separate


def test_chat_tools_find_captions_and_list_events(index):
    llm = ScriptedLLM(
        [
            '{"kind": "other"}',
            [
                ToolCall(id="f", name="find", arguments={"text": "bicycle"}),
                ToolCall(id="e", name="events", arguments={}),
            ],
            lambda messages: answer(
                [
                    {
                        "kind": "object",
                        "term": "bicycle",
                        "cite": [re.search(r"\[(C\d+)\]", next(m.content for m in messages if m.name == "find"))[1]],
                    }
                ]
            ),
        ]
    )
    talk = ChatSession(index, llm, ":memory:", "t")
    reply = talk.ask("tell me about bicycles")  # no route fits, and the LLM chooses no question tool
    found = next(m.content for m in llm.calls[2]["messages"] if m.name == "find")
    assert found.startswith("70 frames mention bicycle: frames 0-69")
    assert reply.prose == "The caption of frame 0 (0.0 s) mentions bicycle."


@pytest.mark.slow
def test_the_embedded_llm_explains_an_event_on_the_cpu(index):
    """The default GGUF model drives the real graph: grammar-constrained tool calls, verification, prose."""
    from anomalens.agents.llm import open_llm
    from anomalens.config import DEFAULT_LLM
    from tests.helpers.environment import stored_model

    stored_model(DEFAULT_LLM)
    llm = open_llm()
    injected = next(e for e in index.events if e.peak_frame > 100)
    explanations = run(llm, index, events=[first_event(index).id, injected.id])
    for explanation in explanations:
        assert explanation.generator == f"agent (llamacpp:{DEFAULT_LLM})" and 1 <= explanation.llm_calls <= MAX_STEPS
        assert all(c.verdict is not None for c in explanation.claims + explanation.first_draft)
        said = [c.text for c in explanation.supported]
        assert explanation.prose == " ".join(t.rstrip(".") + "." for t in said)
        assert INJECTION not in explanation.prose
    assert explanations[0].supported, "the model should state at least one verified fact about the cyclist"


def test_replayed_captions_read_text_and_jsonl_and_name_bad_lines(tmp_path):
    from anomalens.tools.captions import ReplayedCaptions

    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"frame": 3, "caption": "a truck"}\n\n{"frame": 9, "caption": "a cat"}\n')
    captions = ReplayedCaptions.load(jsonl, fps=3.0)
    evidence = captions.evidence(9)
    assert (evidence.text, evidence.time_s, evidence.source.tool) == ("a cat", 3.0, "caption") and 3 in captions
    with pytest.raises(KeyError, match="no caption for frame 4 \\(captions cover frames 3-9\\)"):
        captions.evidence(4)
    jsonl.write_text('{"frame": 3, "caption": "a truck"}\n{"frame": "x"}\n')
    with pytest.raises(AnomalensError, match="captions.jsonl:2: expected"):
        ReplayedCaptions.load(jsonl)
    with pytest.raises(AnomalensError, match="caption file not found"):
        ReplayedCaptions.load(tmp_path / "none.txt")


@pytest.mark.slow
def test_chat_command_answers_and_resumes_a_session(scene_and_video, tmp_path):
    """The REPL end to end with a real (small) GGUF model: answers, then a restart resumes the session."""
    import os

    from tests.helpers.environment import stored_model

    stored_model("smollm2-135m")
    scene, test, captions = scene_and_video
    scene.save(tmp_path / "scene")
    env = os.environ | {"ANOMALENS_LLM_MODEL": "smollm2-135m", "ANOMALENS_CHAT_DIR": str(tmp_path / "chat")}
    command = [
        sys.executable,
        "-m",
        "anomalens",
        "chat",
        str(test.video),
        "--scene",
        str(tmp_path / "scene"),
        "--captions",
        str(captions),
    ]
    first = subprocess.run(
        command,
        input="how many objects are in view at frame 40?\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    session = re.search(r"session ([0-9a-f]{8}) \(0 earlier turns\)", first.stderr)[1]
    assert re.search(r"^> \S", first.stdout, re.M), first.stdout  # the prompt, then an answer on its line
    again = subprocess.run(
        command + ["--session", session], input="", env=env, capture_output=True, text=True, timeout=600
    )
    assert f"session {session} (1 earlier turns)" in again.stderr
    assert "> how many objects are in view at frame 40?" in again.stdout
    assert len(list((tmp_path / "chat").glob("index-*.json"))) == 1  # the video was indexed once
    scripted = subprocess.run(
        command + ["--ask", "how many objects are in view at frame 40?", "--ask", "summarize the video", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert scripted.returncode == 0, scripted.stderr
    count, summary = (json.loads(line) for line in scripted.stdout.splitlines())
    assert count["claims"][0]["cites"] == ["F40"] and count["claims"][0]["verdict"] == "supported"
    assert summary["query"] == {"kind": "summary"} and summary["answer"].endswith(".") and summary["verified"]


def test_chat_index_refuses_missing_inputs_by_name(tmp_path):
    from anomalens.pipelines.chat import video_index

    with pytest.raises(AnomalensError, match="nowhere.avi: no such file or folder"):
        video_index(tmp_path / "nowhere.avi", cache_dir=tmp_path)


def test_claims_verified_before_the_budget_ran_out_are_still_said(index):
    peak = first_event(index).peak_frame
    count = {"kind": "count", "cite": [f"F{peak}"], "value": len(index.in_view(peak))}
    wrong = {"kind": "count", "cite": [f"F{peak}"], "value": 99}
    llm = ScriptedLLM([answer([count, wrong]), answer([{"kind": "guess", "cite": ["F1"]}])] + ["no"] * MAX_STEPS)
    (explanation,) = run(llm, index)
    assert explanation.llm_calls == MAX_STEPS and len([c for c in explanation.supported if not c.from_facts]) == 1
    assert explanation.prose.startswith(f"{plural('object', count['value'])} in view")


def test_the_agent_calls_every_present_foundation_tool_and_cites_what_it_found(index, tiny_perception):
    from anomalens.agents.verify import ClipGrounder, DetectorGrounder
    from anomalens.video import FrameReader, FrameSource

    fresh = index.model_copy(update={"captions_file": None})  # the live captioner's turn
    event = first_event(fresh)
    peak = fresh.frame_evidence(event.peak_frame)
    track = int(peak.track_ids[0])
    frame = event.peak_frame
    frames = FrameReader(FrameSource(fresh.video))
    blind = Agent(ScriptedLLM([]), fresh, perception=tiny_perception)  # the tools have no frames to look at
    assert not {"detect", "match", "segment", "caption"} & {spec.name for spec in blind.toolbox.specs}
    agent = Agent(ScriptedLLM([]), fresh, perception=tiny_perception, frames=frames)
    names = {spec.name for spec in agent.toolbox.specs}
    assert {"detect", "match", "segment", "caption"} <= names
    calls = [
        ToolCall(id="d", name="detect", arguments={"frame": frame, "text": "bicycle"}),
        ToolCall(
            id="m", name="match", arguments={"frame": frame, "texts": ["a bicycle", "a person"], "track_id": track}
        ),
        ToolCall(id="s", name="segment", arguments={"frame": frame, "track_id": track}),
        ToolCall(id="c", name="caption", arguments={"frame": frame}),
    ]
    results = {}

    def from_tool_results(messages):
        results.update({m.tool_call_id: m.content for m in messages if m.role == "tool"})
        best = re.search(r"fits '([^']+)' best", results["m"])[1]
        return answer(
            [
                {"kind": "object", "cite": [f"D{frame}"], "term": "bicycle"},
                {"kind": "object", "cite": [f"M{frame}"], "term": best.split()[-1], "track": track},
            ]
        )

    agent.llm = ScriptedLLM([calls, from_tool_results])
    graph = build_graph(agent)
    values = graph.invoke({"queue": [event.id]}, {"recursion_limit": 80})
    (explanation,) = [Explanation.model_validate(x) for x in values["explanations"]]
    for call_id, letter in (("d", "D"), ("m", "M"), ("s", "S"), ("c", "C")):
        assert results[call_id].startswith(f"[{letter}{frame}]"), results[call_id]
    # What the live tools found is in the graph's state (the index is never changed), and the explanation
    # carries what its claims cite.
    book = agent.book(values)
    assert fresh.get(book.resolve(f"D{frame}")) is None
    detected = book.find(f"D{frame}")
    assert detected.kind == "detection" and detected.frame_size == fresh.source_size
    outlined = book.find(f"S{frame}")
    assert outlined.masks.shape == (1, fresh.source_size[1], fresh.source_size[0])
    assert outlined.track_ids.tolist() == [track]
    assert book.find(f"C{frame}").source.backend == "transformers"
    assert {ev.id for ev in explanation.evidence} == {book.resolve(f"D{frame}"), book.resolve(f"M{frame}")}
    by_term = {c.term: c.verdict for c in explanation.first_draft}
    # A detection supports "bicycle" exactly when the detector classed a box as one.
    assert (by_term["bicycle"].status == "supported") == ("bicycle" in detected.class_names)
    assert [type(g) for g in agent.verifier.grounders] == [DetectorGrounder, ClipGrounder]

    # The grounders decide claims that labels and captions cannot.
    box = peak.boxes[0].tolist()
    assert DetectorGrounder(tiny_perception.detector, frames, threshold=0.0).ground("truck", peak, None) is True
    assert DetectorGrounder(tiny_perception.detector, frames, threshold=1.01).ground("truck", peak, box) is False
    sure, never = ClipGrounder(tiny_perception.clip, frames, 0.0), ClipGrounder(tiny_perception.clip, frames, 1.01)
    assert sure.ground("truck", peak, box) is True and never.ground("truck", peak, box) is None
    truck = Claim(id="t", kind="object", term="truck", track_id=track, evidence_ids=[peak.id])
    verdict = Verifier(fresh, [DetectorGrounder(tiny_perception.detector, frames, threshold=1.01)]).verify(truck, event)
    assert verdict.status == "unsupported" and "DetectorGrounder did not find 'truck'" in verdict.reason
    # A track that is not in the cited frame is not what a detection elsewhere in it shows (with no box, this
    # detector finds a truck in the frame, as asserted above).
    absent = truck.model_copy(update={"track_id": max(int(t) for t in peak.track_ids) + 1})
    finds_all = Verifier(fresh, [DetectorGrounder(tiny_perception.detector, frames, threshold=0.0)])
    assert finds_all.verify(absent, event).status == "unsupported"


def test_an_audit_shows_the_agents_live_tools_the_video_it_opened(scene_and_video, tiny_perception):
    scene, test, _ = scene_and_video
    detected = []

    def detect_then_answer(messages):
        if messages[-1].role != "tool":
            return [ToolCall(id="d", name="detect", arguments={"frame": 0, "text": "bicycle"})]
        if messages[-1].tool_call_id == "d":
            detected.append(messages[-1].content)
        return answer([{"kind": "object", "cite": ["D0"], "term": "bicycle"}], facts=["f1", "f2"], subject="S1")

    llm = ScriptedLLM([detect_then_answer] * 40)
    result = audit(test.video, scene, llm=llm, perception=tiny_perception, progress=False)
    assert result.report.explainer == "agent (scripted:script)"
    # Each event's agent detected on frame 0 of the audited video, at its source size (where boxes live).
    assert len(detected) == len(result.events) >= 1 and all(said.startswith("[D0]") for said in detected)
    cited = [ev for explanation in result.explanations for ev in explanation.evidence if ev.kind == "detection"]
    assert cited and all(ev.frame_size == result.screening.source_size for ev in cited)


def test_an_answer_that_leaves_out_the_rule_and_the_place_gets_them_from_the_events_facts(index):
    from anomalens.agents.claims import fact_classes

    event = first_event(index)
    span = {"kind": "temporal", "cite": [f"F{event.start_frame}", f"F{event.end_frame}"],
            "frames": [event.start_frame, event.end_frame]}  # fmt: skip
    (explanation,) = run(ScriptedLLM([answer([span])]), index)
    said = [c for c in explanation.supported if not c.from_facts]
    added = [c for c in explanation.supported if c.from_facts]
    assert [c.kind for c in said] == ["temporal"]
    assert {"rule", "where"} <= set().union(*map(fact_classes, added))
    assert all(c.verdict.status == "supported" for c in added)  # verified like the LLM's own claims
    assert all(c.text and c.text in explanation.prose for c in added)


def test_the_llm_picks_the_subject_and_the_facts_by_handle_and_the_code_writes_them(index):
    """An answer of a few tokens: the subject (S<k>) and the telling facts (f<k>) the digest numbered. The
    headline is about the chosen subject; the facts are the digest's own, in the order picked."""
    from anomalens.agents.claims import claims_from_draft, parse_drafts
    from anomalens.agents.digest import numbered_facts
    from anomalens.agents.headline import subjects

    book = EvidenceBook(index)
    event = max(index.events, key=lambda e: len(subjects(book, e)))
    candidates, facts = subjects(book, event), numbered_facts(book, event)
    assert len(candidates) >= 2 and len(facts) >= 2, "the lawn event has a walker and a second object"
    picked = {"subject": f"S{len(candidates)}", "facts": ["f2", "f1", "f99"]}  # f99: no such fact, ignored
    llm = ScriptedLLM([[ToolCall(id="a1", name="answer", arguments=picked)]])
    (explanation,) = run(llm, index, events=[event.id])
    user = next(m.content for m in llm.calls[0]["messages"] if m.role == "user")
    assert "S1: track" in user and "\n  f1: track" in user and explanation.llm_calls == 1
    assert explanation.subject_track == candidates[-1].track != candidates[0].track
    assert f"track {candidates[-1].track}" not in explanation.headline.lower() and explanation.headline
    expected = claims_from_draft(parse_drafts([facts[1][0], facts[0][0]]), book)
    said = [(c.kind, c.track_id, c.rule_id, c.value) for c in explanation.claims[:2]]
    assert said == [(c.kind, c.track_id, c.rule_id, c.value) for c in expected]


def test_each_events_default_subject_is_the_labelled_anomaly(index, scene_and_video):
    """The subject offered first (the object that made the event's peak) lies on the anomaly's pixels in the
    frame it is cited at, for the cyclist and the lawn crossing alike."""
    import numpy as np

    from anomalens.agents.headline import subject_of
    from anomalens.eval.synthetic import load_masks

    masks = load_masks(scene_and_video[1].masks)
    book, on = EvidenceBook(index), []
    for event in index.events:
        subject = subject_of(book, event)
        x1, y1, x2, y2 = np.round(subject.evidence.boxes[subject.position]).astype(int)
        on.append(bool(masks[subject.evidence.frame_index][max(y1, 0) : y2, max(x1, 0) : x2].any()))
    assert len(on) >= 2 and all(on), on


def test_the_object_that_made_the_peak_comes_before_a_walker_that_broke_a_categorical_rule():
    """A walker headed the wrong way (a rule broken at its fixed severity 2.0, looking as normal as anyone)
    early in an event; the object that made the event's peak broke the speed limit by 1.2x and moved 6.5 times
    as unusually as the normal footage allows. The event is about the second."""
    import numpy as np

    from anomalens.agents.headline import subjects
    from anomalens.types import EvidenceKind, Event, Evidence, Measurement, MeasurementKind, Source

    def frame(k: int, track: int, score: float, rule: str, severity: float) -> Evidence:
        breach = Measurement(kind=MeasurementKind.RULE_SEVERITY, name=rule, value=severity, unit="ratio",
                             object_index=0)  # fmt: skip
        return Evidence(kind=EvidenceKind.FRAME, source=Source(tool="scene", backend="objects+rules"), frame_index=k,
                        frame_size=(64, 48), boxes=np.array([[10.0, 10, 20, 40]]), scores=np.array([score]),
                        labels=["object"], track_ids=np.array([track]), measurements=[breach])  # fmt: skip

    walker, fast = frame(2, 1, 2.0, "direction-r1c1", 2.0), frame(6, 2, 6.5, "speed-any", 1.2)
    event = Event(id="event-1", start_frame=2, end_frame=8, start_s=0.2, end_s=0.8, peak_frame=6, score=6.5,
                  evidence_ids=[walker.id, fast.id])  # fmt: skip
    index = VideoIndex(video="v.avi", fps=10.0, source_size=(64, 48), frames=10, threshold=1.0, events=[event],
                       evidence=[walker, fast])  # fmt: skip
    assert [(s.track, s.rule_id) for s in subjects(EvidenceBook(index), event)] == [
        (2, "speed-any"),
        (1, "direction-r1c1"),
    ]


def test_without_live_tools_an_event_is_answered_in_one_call(index):
    """Every data tool reads the index the digest already sums up: the answer tool is asked for at once."""
    llm = ScriptedLLM([[ToolCall(id="a1", name="answer", arguments={"subject": "S1", "facts": ["f1"]})]])
    (explanation,) = run(llm, index)
    assert explanation.llm_calls == 1 and llm.calls[0]["choice"] == "answer" and explanation.headline
