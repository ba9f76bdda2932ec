"""Chat questions: the router, the question tools (answers checked against the index by hand), the verifier on
their claims, the LLM's choice of a query, ``chat --ask --json``, and the chat benchmark's judging."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anomalens.agents.chat import ChatSession
from anomalens.agents.claims import plural
from anomalens.agents.index import VideoIndex
from anomalens.agents.llm import ToolCall
from anomalens.agents.llm.scripted import ScriptedLLM
from anomalens.agents.questions import route
from anomalens.agents.verify import Verifier
from anomalens.eval.chat import Question, Truth, _events_in, judge, summarize
from anomalens.types import Claim, Explanation, Track, Verdict

ROUTES = [  # the fixture's clip: 300 frames at 15 fps (20 s)
    ("What happened between 0:05 and 0:10?", {"kind": "between", "from_s": 5.0, "to_s": 10.0}),
    ("Was anything unusual around 0:12?", {"kind": "between", "from_s": 9.0, "to_s": 15.0}),
    ("Anything odd in the first 4 seconds?", {"kind": "between", "from_s": 0.0, "to_s": 4.0}),
    ("what happened in the last 5 s?", {"kind": "between", "from_s": 15.0, "to_s": 20.0}),
    ("How many people are in view at 3 s?", {"kind": "count", "at_s": 3.0, "subject": "people"}),
    ("how many objects at frame 45?", {"kind": "count", "at_s": 3.0, "subject": "objects"}),
    ("When does a bicycle first appear?", {"kind": "appears", "subject": "bicycle"}),
    ("Was anyone running?", {"kind": "appears", "subject": "running", "seen_by": "state"}),
    ("Is anyone lying on the ground?", {"kind": "appears", "subject": "lying", "seen_by": "state"}),
    ("Was anyone speeding?", {"kind": "appears", "subject": "moving fast"}),
    ("When do the captions mention a dog?", {"kind": "appears", "subject": "dog", "seen_by": "caption"}),
    ("Why is the second event anomalous?", {"kind": "why", "event": 2}),
    ("why was event 3 flagged", {"kind": "why", "event": 3}),
    ("Why is the event at 0:07 anomalous?", {"kind": "why", "at_s": 7.0}),
    ("Summarize the video.", {"kind": "summary"}),
    ("Which rules were broken?", {"kind": "rules"}),
    ("What happened between 5 and 8 seconds?", {"kind": "between", "from_s": 5.0, "to_s": 8.0}),  # both in seconds
    ("Give me the gist of this clip.", None),  # no words settle it: the LLM chooses
]


@pytest.mark.parametrize(("question", "query"), ROUTES)
def test_the_router_reads_what_each_question_asks(index, question, query):
    routed = route(question, index)
    assert (routed.model_dump(exclude_none=True) if routed else None) == query


FOLLOW_UPS = [
    ({"kind": "between", "from_s": 5.0, "to_s": 10.0}, [], "And after that?", {"kind": "between", "from_s": 10.0,
                                                                               "to_s": 15.0}),
    ({"kind": "between", "from_s": 5.0, "to_s": 10.0}, [], "and before that?", {"kind": "between", "from_s": 0.0,
                                                                                "to_s": 5.0}),
    ({"kind": "count", "at_s": 3.0}, [], "what about at 8 s?", {"kind": "count", "at_s": 8.0}),
    ({"kind": "count", "at_s": 3.0}, [], "and bicycles?", {"kind": "count", "at_s": 3.0, "subject": "bicycle"}),
    ({"kind": "between", "from_s": 5.0, "to_s": 10.0}, [2, 3], "why?", {"kind": "why", "event": 2}),
    ({"kind": "why", "event": 1}, [1], "and the next one?", {"kind": "why", "event": 2}),
    ({"kind": "count", "at_s": 3.0}, [], "and what did I ask before?", None),
    ({"kind": "count", "at_s": 3.0}, [], "between 0:05 and 0:10?", {"kind": "between", "from_s": 5.0, "to_s": 10.0}),
]


@pytest.mark.parametrize(("before", "events", "question", "query"), FOLLOW_UPS)
def test_follow_ups_read_the_previous_question(index, before, events, question, query):
    routed = route(question, index, {"question": "?", "query": before, "events": events})
    assert (routed.model_dump(exclude_none=True) if routed else None) == query


def _ask(index, question: str, llm=None) -> Explanation:
    answer = ChatSession(index, llm or ScriptedLLM([]), ":memory:").ask(question)
    assert all(c.verdict.status == "supported" for c in answer.claims), [c.verdict for c in answer.claims]
    return answer


def _rule_frames(index, facts: set[str]) -> list[int]:
    kinds = {r.id for r in index.rulebook.rules if r.predicate.fact in facts}
    return [ev.frame_index for ev in index.evidence if ev.text is None and {b.rule_id for b in ev.breaches()} & kinds]


def test_each_question_tool_answers_with_claims_the_verifier_supports(index):
    events = index.events
    last = index.frames - 1
    whole = _ask(index, "What happened between 0:00 and 0:20?")
    assert whole.llm_calls == 0 and whole.claims[0].kind == "tally" and whole.claims[0].value == len(events)

    summary = _ask(index, "Summarize the video.")
    spans = [c.frames for c in summary.supported if c.kind == "temporal"]
    assert spans == [(e.start_frame, e.end_frame) for e in sorted(events, key=lambda e: -e.score)[:5]]
    assert summary.prose.startswith(f"{len(events)} anomalous events in the video.")

    frame = events[0].peak_frame
    count = _ask(index, f"How many objects are in view at frame {frame}?")
    assert count.claims[0].value == len(index.in_view(frame))

    fast = _ask(index, "Was anyone moving fast?").claims[0]
    seen = _rule_frames(index, {"speed", "relative_speed"})
    assert (fast.frames, fast.value) == ((min(seen), max(seen)), len(seen))
    running, fastest = _ask(index, "Was anyone running?").claims  # read from the tracks' speeds, not a rule
    seen = sorted({f for t in index.objects for f, v in zip(t.frames, t.facts["relative_speed"]) if v >= 1.5})
    assert (running.seen_by, running.value) == ("state", len(seen)) and running.frames == ((seen[0], seen[-1]) if seen else None)
    top = max(v for t in index.objects for v in t.facts["relative_speed"])
    assert fastest.quantity == "relative_speed" and fastest.value == pytest.approx(top, abs=0.01)

    bicycle = _ask(index, "When do the captions mention a bicycle?")
    assert (bicycle.claims[0].frames, bicycle.claims[0].value) == ((0, 69), 70)  # the fixture's captions
    assert "mention bicycle in 70 frames, first at 0.0 s (frame 0), last at 4.6 s (frame 69)" in bicycle.prose

    rules = _ask(index, "Which rules were broken?")
    for claim in rules.claims:
        assert claim.value == sum(claim.rule_id in e.rule_ids for e in events) and claim.frames == (0, last)

    why = _ask(index, "Why is the first event anomalous?")
    assert why.claims[0].frames == (events[0].start_frame, events[0].end_frame)
    assert {"rule"} <= {c.kind for c in why.supported}

    missing = _ask(index, "Why is event 99 anomalous?")
    assert missing.claims == [] and missing.note == f"There is no event 99 (the video has {len(events)})."
    unnamed = _ask(index, "When does a bicycle first appear?")  # motion alone names nothing: the captions answer
    assert unnamed.claims[0].seen_by == "caption"


def _named(index, name: str = "person") -> VideoIndex:
    """The index as if screening had named every object ``name`` (and run the detector)."""
    def renamed(ev):
        detected = ev.source.model_copy(update={"backend": "objects+rules"})
        return ev.model_copy(update={"class_names": [name] * len(ev), "source": detected})

    evidence = [ev if ev.text is not None else renamed(ev) for ev in index.evidence]
    tracks = [t.model_copy(update={"class_name": name}) for t in index.tracks]
    return index.model_copy(update={"evidence": evidence, "tracks": tracks})


def test_classes_are_counted_and_sought_where_screening_named_objects(index):
    named = _named(index)
    frame = index.events[0].peak_frame
    people = _ask(named, f"How many people are in view at frame {frame}?").claims[0]
    assert (people.term, people.value) == ("person", len(index.in_view(frame)))
    assert _ask(named, f"How many cars are in view at frame {frame}?").claims[0].value == 0
    walker = _ask(named, "When does a pedestrian first appear?").claims
    seen = [ev.frame_index for ev in named.evidence if ev.text is None and len(ev)]
    assert [(c.seen_by, c.frames, c.value) for c in walker] == [("class", (min(seen), max(seen)), len(seen))]
    # The detector named no bicycle: the answer says so, and what the captions say of one.
    bicycle = _ask(named, "When does a bicycle first appear?")
    assert [(c.seen_by, c.value) for c in bicycle.claims] == [("class", 0), ("caption", 70)]
    assert bicycle.prose.startswith(f"No bicycle was seen in the {index.frames} frames. The captions mention bicycle")


def test_a_sign_the_detector_took_for_a_person_is_not_counted_though_walkers_passed_before_it():
    def walker(track_id: int, differs: list[float]) -> Track:
        frames = list(range(len(differs)))
        return Track(id=track_id, frames=frames, boxes=np.tile([10.0, 10, 20, 40], (len(frames), 1)),
                     class_name="person", facts={"differs": differs})  # fmt: skip

    sign = walker(1, [0.0] * 16 + [0.6] * 4)  # unlike the background only while someone passed in front of it
    index = VideoIndex(video="v.avi", fps=10.0, source_size=(64, 48), frames=20, threshold=1.0, events=[], evidence=[],
                       tracks=[sign, walker(2, [0.5] * 20)], every_track=True)  # fmt: skip
    assert [t.id for t in index.in_view(10)] == [2]


def test_a_quiet_span_says_what_is_in_view_instead(index):
    taken = [f for e in index.events for f in range(e.start_frame, e.end_frame + 1)]
    quiet = next(k for k in range(index.frames - 15) if not {*range(k, k + 15)} & set(taken))
    answer = _ask(index, f"What happened between frame {quiet} and frame {quiet + 15}?")
    assert [c.kind for c in answer.claims] == ["tally", "count"] and answer.claims[0].value == 0
    assert answer.prose.startswith("No anomalous event between")


def _verdict(index, book=None, **fields) -> Verdict:
    return Verifier(index).verify(Claim(id="c", **fields), None, book)


def test_the_verifier_refutes_false_tallies_appearances_and_class_counts(index):
    last, events = index.frames - 1, index.events
    peak = index.frame_evidence(events[0].peak_frame).id
    assert _verdict(index, kind="tally", evidence_ids=[peak], value=len(events), frames=(0, last)).status == "supported"
    assert _verdict(index, kind="tally", evidence_ids=[peak], value=len(events) + 1, frames=(0, last)).status != (
        "supported"
    )
    rule = events[0].rule_ids[0]
    breaking = sum(rule in e.rule_ids for e in events)
    assert _verdict(index, kind="tally", evidence_ids=[peak], value=breaking, frames=(0, last),
                    rule_id=rule).status == "supported"  # fmt: skip
    assert "there is no rule" in _verdict(index, kind="tally", evidence_ids=[peak], value=1, frames=(0, last),
                                          rule_id="no-such-rule").reason  # fmt: skip

    seen = _rule_frames(index, {"speed", "relative_speed"})
    first = index.frame_evidence(seen[0]).id
    fields = {"kind": "appearance", "term": "moving fast", "seen_by": "activity"}
    true = fields | {"evidence_ids": [first], "value": len(seen), "frames": (seen[0], seen[-1])}
    assert _verdict(index, **true).status == "supported"
    assert _verdict(index, **true | {"frames": (seen[0] + 1, seen[-1])}).status == "unsupported"
    assert _verdict(index, **true | {"value": len(seen) - 1}).status == "unsupported"
    assert "cite frame" in _verdict(index, **true | {"evidence_ids": [peak]}).reason or seen[0] == events[0].peak_frame
    assert _verdict(index, **fields | {"evidence_ids": [first], "value": 0}).status == "unsupported"  # "never"
    assert _verdict(index, **true | {"term": "dancing"}).status == "unsupported"

    # Class counts read the classes of the tracks in view.
    frame = index.frame_evidence(events[0].peak_frame)
    in_view = index.in_view(frame.frame_index)
    assert len(in_view) >= 2
    assert _verdict(index, kind="count", evidence_ids=[frame.id], value=len(in_view)).status == "supported"
    names = {t.id: "person" for t in in_view[:-1]} | {in_view[-1].id: "bicycle"}
    relabelled = index.model_copy(update={
        "tracks": [t.model_copy(update={"class_name": names.get(t.id, t.class_name)}) for t in index.tracks]})
    people = len(in_view) - 1
    assert _verdict(relabelled, kind="count", evidence_ids=[frame.id], value=people, term="people").status == (
        "supported"
    )
    assert _verdict(relabelled, kind="count", evidence_ids=[frame.id], value=people + 1, term="person").status == (
        "unsupported"
    )
    assert _verdict(relabelled, kind="count", evidence_ids=[frame.id], value=1, term="bicycle").status == "supported"


def test_the_llm_chooses_the_query_of_a_question_no_route_settles(index):
    gist = _ask(index, "Give me the gist of this clip.", ScriptedLLM(['{"kind": "summary"}']))
    assert gist.llm_calls == 1 and gist.claims[0].kind == "tally" and gist.claims[0].value == len(index.events)
    # A small model asks "appears" with times and no subject when it means "what happened then".
    start = _ask(index, "anything weird near the start?", ScriptedLLM(['{"kind": "appears", "from_s": 0, "to_s": 5}']))
    assert start.claims[0].kind == "tally" and start.claims[0].frames == (0, 75)
    # No valid query in two tries: the agent's own tools take the question (here it answers nothing).
    llm = ScriptedLLM(["not json", '{"kind": "dance"}', [ToolCall(id="a", name="answer", arguments={"claims": []})]])
    other = _ask(index, "what colour is the sky?", llm)
    assert other.claims == [] and len(llm.calls) == other.llm_calls == 3


def test_chat_ask_json_prints_each_answer_with_claims_verdicts_and_handles(index, monkeypatch, tmp_path):
    from anomalens import pipelines
    from anomalens.cli import app

    def open_chat(video, **options):
        return ChatSession(index, ScriptedLLM([]), tmp_path / "sessions.sqlite", options.get("session"))

    monkeypatch.setattr(pipelines, "chat", open_chat)
    frame = index.events[0].peak_frame
    questions = ["--ask", f"how many objects at frame {frame}?", "--ask", "and at frame 0?"]
    result = CliRunner().invoke(app, ["chat", "video.avi", *questions, "--json"])
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["query"] == {"kind": "count", "at_s": frame / index.fps, "subject": "objects"}
    assert first["verified"] and first["claims"][0]["cites"] == [f"F{frame}"] and first["llm_calls"] == 0
    assert first["answer"].startswith(f"{plural('object', len(index.in_view(frame)))} in view")
    assert second["query"]["at_s"] == 0.0 and second["claims"][0]["verdict"] == "supported"
    assert first["session"] == second["session"]  # one session: "and at frame 0?" followed the first question
    refused = CliRunner().invoke(app, ["chat", "video.avi", "--json"])
    assert "--json needs --ask" in str(refused.exception)  # an AnomalensError: `main` prints it, exit code 2
    empty = CliRunner().invoke(app, ["chat", "video.avi", "--ask", " "])
    assert "--ask: a question is empty" in str(empty.exception)


def test_the_chat_benchmark_splits_wrong_answers_by_what_the_evidence_held(index):
    first, last = 0, index.frames - 1
    answer = _ask(index, "What happened between 0:00 and 0:20?")  # says there were events

    def outcome(world: bool, held: bool, said=answer) -> str:
        return judge(Question("?", "between", Truth(_events_in(first, last), world, held)), said, index)

    assert outcome(True, True) == "correct"
    assert outcome(False, True) == "wrong, perception"  # faithful to screening, which was wrong
    assert outcome(False, False) == "wrong, evidence held the truth"  # the chat's own failure
    assert outcome(True, True, Explanation(event_id="q", generator="x", claims=[])) == "declined"
    elsewhere = _ask(index, "What happened between 0:19 and 0:20?")
    assert judge(Question("?", "between", Truth(_events_in(first, last), True, True)), elsewhere, index) == (
        "wrong, evidence held the truth"  # an answer about another span does not answer the question
    )
    rows = [("between", "correct", 0, 0.1), ("between", "declined", 1, 2.0), ("count", "correct", 0, 0.3)]
    result = summarize([{"type": t, "outcome": o, "llm_calls": c, "seconds": s} for t, o, c, s in rows])
    two_thirds = pytest.approx(2 / 3, abs=1e-4)
    assert result["all"]["correct"] == two_thirds and result["by_type"]["between"]["declined"] == 0.5
    assert result["all"]["routed_without_llm"] == two_thirds and result["all"]["median_s"] == 0.3
    assert np.isclose(sum(result["all"][k] for k in ("correct", "declined")), 1.0)


def test_times_the_model_reads_into_a_question_give_way_to_the_times_it_says(index):
    """"1:05" is 65 s and "between 5 and 8 seconds" 5-8 s, whatever a small model makes of them."""
    from anomalens.agents.questions import times_in

    assert times_in("at 1:05, and between 5 and 8 seconds", 15.0) == [65.0, 5.0, 8.0]
    misread = ScriptedLLM(['{"kind": "between", "at_s": 17}'])  # 0:07 read as 17 s
    answer = _ask(index, "what is the walker on the path doing at 0:07?", misread)
    assert answer.claims[0].kind == "tally" and answer.claims[0].frames == (4 * 15, 10 * 15)


def test_every_qualifier_is_grounded_or_said_to_be_beyond_the_evidence(index):
    from anomalens.types import Zone

    named = _named(index)
    frame = index.events[0].peak_frame
    alive = named.in_view(frame)
    red = _ask(named, f"How many women in red jackets are in view at frame {frame}?")
    assert red.claims[0].value == len(alive)  # nothing measured narrows it: every person, and said so
    assert all(word in red.note for word in ("red", "jacket", "women")) and red.answer_text.startswith(red.note)
    lawn = _ask(named, f"How many people are on the lawn at frame {frame}?")
    assert "no zone named lawn" in lawn.note and lawn.claims[0].value == len(alive)
    # The scene has a zone a person drew and named "lawn": the count is of those standing in it, and verified.
    cell = alive[0].fact("zone", frame, last_seen=True)
    renamed = [t.model_copy(update={"facts": t.facts | {"zone": ["lawn" if z == cell else z for z in t.facts["zone"]]}})
               for t in named.tracks]  # fmt: skip
    drawn = named.rulebook.model_copy(update={"zones": [Zone(name="lawn", points=[(0, 0), (1, 0), (1, 1)])]})
    zoned = named.model_copy(update={"tracks": renamed, "rulebook": drawn})
    on_lawn = _ask(zoned, f"How many people are on the lawn at frame {frame}?")
    expected = sum(t.fact("zone", frame, last_seen=True) == "lawn" for t in zoned.in_view(frame))
    assert (on_lawn.claims[0].zone, on_lawn.claims[0].value, on_lawn.note) == ("lawn", expected, "")
    assert 0 < expected < len(alive) or expected == len(alive) == 1
    assert f"in the lawn zone" in on_lawn.prose
    wrong = on_lawn.claims[0].model_copy(update={"value": expected + 1, "verdict": None})
    assert Verifier(zoned).verify(wrong).status == "unsupported"
