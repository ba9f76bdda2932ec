"""The event store, reviews that become rule changes, and chat over the history (no browser: see test_app.py)."""

import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from anomalens.agents.history import HistoryChat, HistoryQuery, route
from anomalens.agents.llm.scripted import ScriptedLLM
from anomalens.errors import ConfigError
from anomalens.pipelines import audit
from anomalens.pipelines.history import accept, finish_changes, index_reports, prune, review
from anomalens.report import Report
from anomalens.rules.io import load_rulebook
from anomalens.rules.review import propose, still_broken
from anomalens.store import SCHEMA_VERSION, EventFilter, EventStore, StoredEvent, StoredVideo
from anomalens.types import Predicate, Rule, Rulebook
from tests.helpers.store import stored_copy



@pytest.fixture
def audited(audited_walkway, tmp_path):
    """A walkway scene in a folder, a clip audited against it by the (scripted) agent, in a fresh store: a copy of
    the one audit, which the test may change."""
    root, result = audited_walkway
    store, folder = stored_copy(root, tmp_path)
    return store, folder, result


def test_an_audit_lands_in_the_store_with_its_claims_and_keyframes(audited, tmp_path):
    store, folder, result = audited
    events = store.events()
    assert [e["key"] for e in events] == [e.id for e in result.report.events]
    first = store.event(events[0]["id"])
    assert first["scene"] == str(folder.resolve()) and first["rules"] == result.report.events[0].rule_ids
    assert first["claims"] and all(c["status"] in ("supported", "unsupported", "unverifiable") for c in first["claims"])
    assert first["keyframe"].endswith(".jpg") and (tmp_path / "out" / "keyframes").is_dir()
    assert {f["rule"] for f in first["facts"]} == set(first["rules"])
    # Indexing the same report again replaces it and keeps its reviews.
    store.review(first["id"], "confirmed", "seen it")
    index_reports([tmp_path / "out" / "report.json"], store, progress=False)
    again = store.events()
    assert len(again) == len(events) and again[0]["verdict"] == "confirmed" and again[0]["review_note"] == "seen it"


def test_the_same_footage_audited_again_elsewhere_replaces_its_earlier_video(scene_and_video, tmp_path):
    """Its date is when the camera recorded it (the container's creation time), not when the file was copied."""
    import cv2

    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="pip install 'anomalens[clips]'")
    scene, test, _ = scene_and_video
    folder = scene.save(tmp_path / "scene")
    capture, frames = cv2.VideoCapture(str(test.video)), []
    while (read := capture.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    camera = tmp_path / "camera.mp4"
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(camera), (width, height), fps=scene.fps, macro_block_size=1,
                                         output_params=["-metadata", "creation_time=2024-05-01T10:20:30Z"])  # fmt: skip
    writer.send(None)
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()
    copied = tmp_path / "copied" / "monday.mp4"
    copied.parent.mkdir()
    copied.write_bytes(camera.read_bytes())
    store = EventStore(tmp_path / "store")
    first = audit(camera, folder, out=tmp_path / "first", explainer="deterministic", store=store, progress=False)
    audit(copied, folder, out=tmp_path / "again", explainer="deterministic", store=store, progress=False)
    (video,) = store.videos()
    assert video["report"] == str((tmp_path / "again" / "report.json").resolve()) and video["input"] == str(copied)
    assert video["started"] == "2024-05-01T10:20:30+00:00" and first.events
    assert len(store.events()) == len(first.events)
    assert all(e["at"].startswith("2024-05-01T10:2") for e in store.events())


def test_filters_combine(audited):
    store, _, _ = audited
    events = store.events()
    rule = events[0]["rules"][0]
    assert {e["id"] for e in store.events(EventFilter(rule=rule))} == {e["id"] for e in events if rule in e["rules"]}
    store.review(events[-1]["id"], "false alarm")
    assert [e["id"] for e in store.events(EventFilter(verdict="false alarm"))] == [events[-1]["id"]]
    assert events[-1]["id"] not in [e["id"] for e in store.events(EventFilter(verdict="unreviewed"))]
    assert store.events(EventFilter(since="2999-01-01T00:00:00+00:00")) == []
    assert store.events(EventFilter(words="100%_no such words")) == []  # LIKE wildcards are taken literally
    word = events[0]["summary"].split()[2]
    assert events[0]["id"] in [e["id"] for e in store.events(EventFilter(words=word))]


def test_a_store_migrates_from_empty_and_refuses_a_newer_one(tmp_path):
    EventStore(tmp_path / "a")
    with sqlite3.connect(tmp_path / "a" / "events.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer anomalens"):
        EventStore(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "events.sqlite").write_text("not a database at all, " * 100)
    with pytest.raises(ConfigError, match="events.sqlite"):
        EventStore(tmp_path / "b")


def test_a_failed_write_leaves_the_store_as_it_was(tmp_path):
    store = EventStore(tmp_path)
    event = StoredEvent(key="e1", start_s=0, end_s=1, start_frame=0, end_frame=10, peak_frame=5, score=2, summary="x")
    video = StoredVideo(report="/r.json", input="v.mp4", title="v", scene=None, fps=10, width=64, height=48,
                        started="2026-12-01T10:00:00+00:00", threshold=1, scores=[(0, 0.5)], events=[event])
    store.add_video(video)
    twice = video.model_copy(update={"title": "replaced", "events": [event, event]})  # the second breaks UNIQUE
    with pytest.raises(sqlite3.IntegrityError):
        store.add_video(twice)
    assert [v["title"] for v in store.videos()] == ["v"] and len(store.events()) == 1


def _rulebook() -> Rulebook:
    return Rulebook(rules=[
        Rule(id="speed-r1c1", sentence="In zone r1c1, objects move at most 2.40 px/frame.",
             predicate=Predicate(fact="speed", op="<=", value=2.4, unit="px/frame", where={"zone": "r1c1"})),
        Rule(id="classes", sentence="Only people move here.", predicate=Predicate(fact="class", op="in",
                                                                                   value=["person"])),
        Rule(id="empty-r0c0", sentence="Nothing enters zone r0c0.", predicate=Predicate(fact="zone", op="!=",
                                                                                       value="r0c0")),
        Rule(id="count", sentence="At most 5 objects are in view.",
             predicate=Predicate(fact="count", op="<=", value=5)),
    ])  # fmt: skip


def test_a_proposal_loosens_each_broken_rule_just_enough():
    book = _rulebook()
    breaches = [
        {"rule": "speed-r1c1", "frame": 3, "track": 1, "facts": {"speed": 6.0, "zone": "r1c1", "class": "person"}},
        {"rule": "classes", "frame": 3, "track": 2, "facts": {"speed": 1.0, "zone": "r2c2", "class": "bicycle"}},
        {"rule": "empty-r0c0", "frame": 4, "track": 3, "facts": {"speed": 1.0, "zone": "r0c0", "class": "person"}},
        {"rule": "count", "frame": 4, "track": None, "facts": {"count": 7.0}},
    ]
    assert still_broken(book, breaches) == ["classes", "count", "empty-r0c0", "speed-r1c1"]
    proposal = propose(book, breaches)
    assert still_broken(proposal.rulebook, breaches) == []
    speed = proposal.rulebook.get("speed-r1c1")
    assert speed.predicate.value == pytest.approx(6.3) and "6.30 px/frame" in speed.sentence
    assert proposal.rulebook.get("classes").predicate.value == ["person", "bicycle"]
    assert proposal.rulebook.get("empty-r0c0").enabled is False
    assert proposal.rulebook.get("count").predicate.value == 7
    assert "-    value: 2.4\n+    value: 6.3" in proposal.diff and "rules.yaml (proposed)" in proposal.diff
    # A faster object, or a third class, still breaks the loosened rules.
    assert still_broken(proposal.rulebook, [{"rule": "speed-r1c1", "frame": 1, "track": 1,
                                              "facts": {"speed": 6.5, "zone": "r1c1", "class": "dog"}}]) == \
        ["classes", "speed-r1c1"]  # fmt: skip


def test_accepting_a_false_alarm_versions_the_rulebook_and_rescores_the_scene(audited):
    store, folder, _ = audited
    events = store.events()
    target = next(e for e in events if e["facts"])
    before = (folder / "rules.yaml").read_text()
    seen = review(store, target["id"])
    assert seen.proposal is not None and (folder / "rules.yaml").read_text() == before  # nothing written yet
    done = accept(store, target["id"], seen.based_on)
    assert done.kept_as.read_text() == before and done.version == 2
    assert load_rulebook(folder / "rules.yaml") == seen.proposal.rulebook
    assert target["id"] in [e["id"] for e in done.silenced]
    for stored in store.events(EventFilter(silenced=True)):
        assert still_broken(seen.proposal.rulebook, stored["facts"]) == []
    for stored in store.events(EventFilter(silenced=False)):
        assert not stored["facts"] or still_broken(seen.proposal.rulebook, stored["facts"])
    with pytest.raises(ConfigError, match="changed since this proposal"):  # a second reviewer saw the old rulebook
        accept(store, target["id"], seen.based_on)
    again = review(store, target["id"])  # a silenced event reviewed again: no change to propose
    assert again.proposal is None and again.why_not.startswith("the scene's rulebook already lets it pass")


def test_a_rulebook_kept_by_learning_again_or_by_another_store_is_never_overwritten(audited, tmp_path):
    store, folder, _ = audited
    hand_edited = "# the person's own edit, kept when the scene was learned again\n"
    (folder / "rules.v1.yaml").write_text(hand_edited)
    target = next(e for e in store.events() if e["facts"])
    other = EventStore(tmp_path / "another-store")  # a second store on the same scene numbers from the files too
    index_reports([tmp_path / "out"], other, progress=False)
    seen = review(store, target["id"])
    done = accept(store, target["id"], seen.based_on)
    assert done.kept_as.name == "rules.v2.yaml" and (folder / "rules.v1.yaml").read_text() == hand_edited
    (folder / "rules.yaml").write_text(done.kept_as.read_text())  # a person puts the earlier rulebook back
    seen = review(other, target["id"])
    assert accept(other, target["id"], seen.based_on).kept_as.name == "rules.v3.yaml"
    assert (folder / "rules.v1.yaml").read_text() == hand_edited


def test_a_busy_store_refuses_a_change_before_the_rulebook_is_written(audited, monkeypatch):
    store, folder, _ = audited
    target = next(e for e in store.events() if e["facts"])
    seen = review(store, target["id"])
    before, files = (folder / "rules.yaml").read_text(), sorted(folder.glob("rules*.yaml"))
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing the store
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *args, **kw: connect(*args, **{**kw, "timeout": 0.1}))  # not 30 s
    with pytest.raises(ConfigError, match="the event store is busy"):
        accept(store, target["id"], seen.based_on)
    holder.execute("ROLLBACK")
    assert (folder / "rules.yaml").read_text() == before and sorted(folder.glob("rules*.yaml")) == files
    assert accept(store, target["id"], seen.based_on).version == 2  # it goes through once the store is free


def test_an_audit_stored_after_a_rule_change_has_its_events_silenced_by_it(audited, tmp_path):
    """A review accepted while an audit job ran: the job's events, stored after, are judged by the new rulebook."""
    store, folder, _ = audited
    target = next(e for e in store.events() if e["facts"])
    seen = review(store, target["id"])
    done = accept(store, target["id"], seen.based_on)
    later = EventStore(tmp_path / "later")  # the audit's report, stored only now
    index_reports([tmp_path / "out"], later, progress=False)
    silenced = {e["key"] for e in later.events(EventFilter(silenced=True))}
    assert silenced == {e["key"] for e in done.silenced} and target["key"] in silenced


def test_a_rule_change_a_kill_cut_short_is_completed_or_undone(audited, monkeypatch, tmp_path):
    store, folder, _ = audited
    rules_file = folder / "rules.yaml"
    target = next(e for e in store.events() if e["facts"])
    seen, before = review(store, target["id"]), rules_file.read_text()
    replace = os.replace

    def killed(source, destination):  # the process dies as the new rulebook would be put in place
        if Path(destination) == rules_file:
            raise SystemExit("killed")
        replace(source, destination)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(SystemExit):
        accept(store, target["id"], seen.based_on)
    monkeypatch.undo()
    assert rules_file.read_text() == before and len(store.rulebook_versions(str(rules_file))) == 1
    kept = store.rulebook_versions(str(rules_file))[-1]["kept_as"]
    other = EventStore(tmp_path / "other")  # a second store on the same scene, starting first: not its change to undo
    index_reports([tmp_path / "out"], other, progress=False)
    finish_changes(other)  # as the app does when it starts: the recording store has it, so it is completed
    assert load_rulebook(rules_file) == seen.proposal.rulebook and Path(kept).read_text() == before
    finish_changes(store)
    assert load_rulebook(rules_file) == seen.proposal.rulebook
    # Killed before the store recorded it: the new text and the kept copy are left, and are undone.
    (folder / ".rules.yaml.after-rules.v9.yaml").write_text("a change never recorded")
    (folder / "rules.v9.yaml").write_text(rules_file.read_text())
    after = rules_file.read_text()
    finish_changes(store)
    assert rules_file.read_text() == after and not list(folder.glob("*v9*")) and not list(folder.glob(".*after*"))
    assert {p.name for p in folder.iterdir()} == {p.name for p in folder.iterdir() if not p.name.startswith(".")} | {
        p.name for p in folder.glob(".*") if "after" not in p.name}


def test_history_chat_answers_with_verified_linked_claims(audited):
    store, _, result = audited
    chat = HistoryChat(store)
    rules = chat.ask("which rules were broken?", session="s1")
    assert rules.query.kind == "rules" and rules.claims
    assert all(c.status == "supported" for c in rules.claims)
    top = max({r for e in store.events() for r in e["rules"]},
              key=lambda r: sum(r in e["rules"] for e in store.events()))
    assert top in rules.text
    listing = chat.ask("anything unusual today?", session="s1")
    assert listing.query.kind == "events" and listing.events
    assert all(f"E{i}" in listing.text for i in listing.events)
    assert all(c.cites and c.cites[0].startswith(f"E{c.event}/F") for c in listing.claims)
    assert [a["question"] for a in store.answers("s1")] == ["which rules were broken?", "anything unusual today?"]
    missing = chat.ask("what happened in event 999?")
    assert missing.text == "There is no stored event E999." and not missing.claims


def test_history_chat_says_only_what_the_evidence_holds(audited):
    """A stored event that names a rule its report's evidence never recorded broken: the claim fails, unsaid."""
    store, _, _ = audited
    chat = HistoryChat(store)
    event = store.events()[0]
    with store._transaction() as db:  # the store says the event broke "count"; its evidence does not
        db.execute("UPDATE events SET rules = ? WHERE id = ?", ('["count"]', event["id"]))
    said = chat.ask("which rules were broken?")
    counted = [c for c in said.claims if c.event == event["id"]]
    assert counted and counted[0].status == "unsupported"
    assert f"E{event['id']}" not in said.text.split("count was broken")[-1].split("\n")[0]


def test_the_router_reads_times_classes_and_rules():
    now = datetime(2026, 12, 3, 15, 0, tzinfo=timezone.utc)
    week = route("how many bicycles this week?", now, [], None)
    assert (week.kind, week.object_class, week.since[:10]) == ("count", "bicycle", "2026-11-26")
    away = route("anything unusual while I was away?", now, [], "2026-12-02T18:00:00+00:00")
    assert (away.kind, away.since) == ("events", "2026-12-02T18:00:00+00:00")
    assert route("which events broke speed-r1c1 yesterday?", now, ["speed-r1c1"], None).rule == "speed-r1c1"
    assert route("tell me a joke", now, [], None) is None


def test_what_the_llm_reads_into_a_question_is_kept_only_where_the_question_bears_it_out(audited):
    """A small model fills fields nobody asked for; they are dropped, and what the question does say is kept."""
    store, _, _ = audited
    rule = store.events()[0]["rules"][0]
    rambling = '{"kind": "why", "object_class": "person", "rule": "cameras", "words": "worth a look"}'
    grounded = json.dumps({"kind": "count", "object_class": "bicycle", "rule": rule, "since": "2026-12-01T00:00:00",
                           "until": "2026-12-01T00:00:00", "words": "blue tarp"})  # fmt: skip
    chat = HistoryChat(store, ScriptedLLM([rambling, grounded]))
    first = chat.ask("did the cameras catch anything worth a look?")
    assert first.query == HistoryQuery(kind="events") and first.llm_calls == 1
    second = chat.ask('tally the "blue tarp" sightings against the strictest limit please')
    assert second.query == HistoryQuery(kind="count", words="blue tarp")  # no rule is named


def test_a_question_in_another_language_is_not_answered_about_words_it_never_said(audited):
    """Arabic, then German: the model reads in a rule, quoted words and a window from now on that neither question
    holds; each answer is about the question asked (every event, every rule), never about what the model added."""
    store, _, _ = audited
    rule, now = store.events()[0]["rules"][0], datetime.now(timezone.utc)
    added = {"rule": rule, "words": "tarp", "since": now.isoformat(), "object_class": "person"}
    chat = HistoryChat(store, ScriptedLLM([json.dumps({"kind": "events", **added}),
                                           json.dumps({"kind": "rules", **added})]))
    arabic = chat.ask("هل حدث شيء غير عادي اليوم؟")
    german = chat.ask("Welche Regeln wurden gebrochen?")
    assert arabic.query == HistoryQuery(kind="events") and german.query == HistoryQuery(kind="rules")
    assert len(arabic.events) == min(len(store.events()), 5) and rule in german.text and "tarp" not in german.text


def test_an_event_whose_report_is_gone_is_counted_but_nothing_is_said_of_it(audited, tmp_path):
    store, _, _ = audited
    (tmp_path / "out" / "report.json").unlink()
    said = HistoryChat(store).ask("anything unusual today?")
    count = len(store.events())
    assert not said.events and not said.claims
    assert f"{count} more event" in said.text and "could be verified" in said.text
    assert prune(store) == [str(tmp_path / "out" / "report.json")] and store.events() == [] and store.videos() == []


def test_a_report_written_again_is_read_again(audited, tmp_path):
    """The chat caches each report's index; a report rewritten since (an audit run again) is not checked against
    what it used to say."""
    store, _, _ = audited
    chat = HistoryChat(store)
    assert chat.ask("anything unusual today?").events
    path = tmp_path / "out" / "report.json"
    report = Report.model_validate_json(path.read_text())
    path.write_text(report.model_copy(update={"events": []}).model_dump_json())
    again = chat.ask("anything unusual today?")
    assert not again.events and not again.claims


def test_which_events_were_false_alarms_lists_only_those_a_person_marked_so(audited):
    store, _, _ = audited
    first, *others = store.events()
    store.review(first["id"], "false alarm", "a shadow")
    chat = HistoryChat(store)
    marked = chat.ask("which events were false alarms?")
    assert marked.query.verdict == "false alarm" and marked.events == [first["id"]]
    assert "reviewed as false alarm" in marked.text
    unmarked = chat.ask("which events are not yet reviewed?")
    assert unmarked.events and set(unmarked.events) <= {e["id"] for e in others}
