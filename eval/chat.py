"""Chat benchmark (``anomalens eval chat``): questions with machine-checkable answers, asked of the chat as a user
would ask them, one session per video so that follow-ups ("and after that?") rest on the conversation.

Questions come from two sources, by a fixed recipe (nothing here is chosen by looking at anomalens' answers):

- synthetic walkway clips, one per anomaly kind (``eval.synthetic``), where every fact is known: frame labels,
  which rule facts each kind of anomaly breaks, and every person's position (counts are asked only at frames
  where no two people overlap and nobody is at the edge, so the true count is unambiguous);
- UCSD Ped2's test videos: what happened in a span (the frame labels), why the event in the middle of an
  anomaly is anomalous (its explanation must lie on labelled frames), a summary (every labelled anomaly among
  the events listed), when the captions mention a phrase (the caption files), and when a bicycle or a car
  appears (the captions' first mention, within ``APPEAR_SLACK_S``). No source here knows how many objects of a
  class are in view (the walkway's people are painted shapes the detector cannot name; Ped2 has no such labels),
  so counts by class are tested in ``tests/test_questions.py`` only.

An answer is judged on its verified claims only. ``correct``: they give the true answer; ``wrong``: they give
another; ``declined``: they give none of the kind the question needs although the answer exists. A wrong answer
is split by whether the video's index held the true answer: ``wrong, evidence held the truth`` is the chat's
own failure (a misread question, a wrong tool); ``wrong, perception`` means the answer is faithful to what
screening found, and screening was wrong (a missed or false event, a merged blob, a detector's miss).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomalens.agents.index import VideoIndex
from anomalens.agents.questions import event_near
from anomalens.agents.sightings import activities, sighted_frames
from anomalens.errors import AnomalensError
from anomalens.prompts import load as load_prompts
from anomalens.tools.captions import mentions
from anomalens.types import Explanation
from anomalens.video import FrameReader, FrameSource

WINDOW_S = 2.0  # the span of a "between" question
APPEAR_SLACK_S = 2.0  # a first sighting this close to the captions' first mention is correct
SPAN_IOU = 0.5  # an answer about a span is about the asked one when their frames overlap this much
SYNTHETIC_FRAMES = 300
ANOMALY_START = 100
SEPARATION_PX = 30  # counts are asked where every two people are this far apart
# What each synthetic anomaly is asked as, and the rule facts its explanation must name.
SYNTHETIC = {
    "cyclist": ("When does something move fast?", {"speed", "relative_speed"}),
    "lawn_crossing": ("When does someone walk on the lawn?", {"zone", "direction"}),
    "wrong_way": ("When does someone go the wrong way?", {"direction"}),
    "loitering": ("When does someone stand still?", {"dwell"}),
    "left_object": ("When is something left behind?", {"dwell", "area"}),
    "crowd": ("When is there a crowd?", {"count", "occupancy", "area"}),
}
OUTCOMES = ("correct", "declined", "wrong, perception", "wrong, evidence held the truth")
DROPPED = "a qualifier dropped"  # what an answer that leaves out a qualifier of the question is judged as said
PHRASES = ("bicycle", "skateboard", "cart", "car", "truck", "wheelchair")  # caption phrases asked about on Ped2
CLASSES = ("bicycle", "car")  # detector classes asked about on Ped2


@dataclass
class Truth:
    """What a question's verified claims must say, and how to read it from the answer and from the index."""

    said: Callable[[Explanation, VideoIndex], object]  # the answer's value (None: declined)
    world: object  # the true value
    held: object  # the value the video's index holds
    matches: Callable[[object, object], bool] = lambda said, true: said == true


@dataclass
class Question:
    text: str
    kind: str  # the benchmark's type: between, count, appears, why, summary, rules, follow-up
    truth: Truth


@dataclass
class Video:
    name: str
    index: VideoIndex
    source: FrameSource  # its frames, for the live perception tools
    questions: list[Question] = field(default_factory=list)


# --- reading answers ---------------------------------------------------------------------------------------


def _claims(answer: Explanation, kind: str):
    return [c for c in answer.supported if c.kind == kind]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    return max(0, inter) / (max(a[1], b[1]) - min(a[0], b[0]) + 1)


def _events_in(first: int, last: int):
    """An answer's value for "what happened from first to last": whether it says events happened there."""

    def said(answer: Explanation, index: VideoIndex):
        tallies = [c for c in _claims(answer, "tally") if c.rule_id is None]
        if not tallies:
            return None
        best = max(tallies, key=lambda c: _overlap(c.frames, (first, last)))
        return best.value > 0 if _overlap(best.frames, (first, last)) >= SPAN_IOU else "another span"

    return said


def _count_at(frame: int, slack: int):
    def said(answer: Explanation, index: VideoIndex):
        counts = [c for c in _claims(answer, "count") if c.term is None]
        near = [c for c in counts if any(abs(_frame_of(i, index) - frame) <= slack for i in c.evidence_ids)]
        return round(near[0].value) if near else ("another time" if counts else None)

    return said


def _kept_qualifiers(words: tuple[str, ...], said: Callable[[Explanation, VideoIndex], object]):
    """An answer's value for a question with qualifiers no measurement holds ("red", "jacket"): ``said``'s, when
    the answer says each one is beyond the evidence; ``DROPPED`` (wrong) when it leaves one out without a word."""

    def kept(answer: Explanation, index: VideoIndex):
        value = said(answer, index)
        if value is None:
            return None
        return value if all(word in answer.note for word in words) else DROPPED

    return kept


def _frame_of(evidence_id: str, index: VideoIndex) -> int:
    found = index.get(evidence_id)
    return -(10**9) if found is None or found.frame_index is None else found.frame_index


def _seen_by(kind: str):
    """An answer's first sighting by ``kind`` (a class question is judged on what the detector saw, not on the
    captions an answer adds when it saw nothing: the captions are this benchmark's truth)."""

    def said(answer: Explanation, index: VideoIndex):
        seen = [c for c in _claims(answer, "appearance") if c.seen_by == kind]
        if not seen:
            return None
        return "never" if seen[0].value == 0 else seen[0].frames[0]

    return said


def _rule_facts(answer: Explanation, index: VideoIndex):
    facts = {index.rule(c.rule_id).predicate.fact for c in answer.supported if c.rule_id and index.rule(c.rule_id)}
    return facts or None


def _within(slack: int) -> Callable[[object, object], bool]:
    def matches(said, true) -> bool:
        if true == "never" or said == "never" or not isinstance(said, int):
            return said == true
        lo, hi = true if isinstance(true, tuple) else (true, true)
        return lo - slack <= said <= hi + slack

    return matches


def _meets(said, expected) -> bool:
    return isinstance(said, set) and bool(said & expected)


# --- questions ---------------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _span_questions(index: VideoIndex, labels: np.ndarray, around: int | None, quiet: int | None) -> list[Question]:
    """What happened in a quiet window (then "and after that?"), and around the middle of an anomaly."""
    fps, questions = index.fps, []
    width = round(WINDOW_S * fps)

    def window(first: int, last: int) -> Truth:
        last = min(last, index.frames - 1)
        held = any(e.start_frame <= last and first <= e.end_frame for e in index.events)
        return Truth(_events_in(first, last), bool(labels[first : last + 1].any()), held)

    if quiet is not None:
        first = quiet
        text = f"What happened between {_clock(first / fps)} and {_clock((first + width) / fps)}?"
        questions.append(Question(text, "between", window(first, first + width)))
        questions.append(Question("And after that?", "follow-up", window(first + width, first + 2 * width)))
        start_s, end_s = round(first / fps), round(first / fps + WINDOW_S)  # said as a person says it
        questions.append(Question(f"Was anything odd between {start_s} and {end_s} seconds?", "between",
                                  window(round(start_s * fps), round(end_s * fps))))  # fmt: skip
    if around is not None:
        half = round(load_prompts("questions")["around_s"] * fps)  # what the router reads "around" as
        text = f"Was anything unusual around {_clock(around / fps)}?"
        questions.append(Question(text, "between", window(max(0, around - half), around + half)))
    first_s = round(min(index.frames / fps / 3, 4.0))
    questions.append(Question(f"Anything odd in the first {first_s} seconds?", "between",
                              window(0, round(first_s * fps))))  # fmt: skip
    return questions


def _runs(labels: np.ndarray, value: bool) -> list[tuple[int, int]]:
    runs, start = [], None
    for k, v in enumerate([*labels.astype(bool), not value]):
        if v == value and start is None:
            start = k
        elif v != value and start is not None:
            runs.append((start, k - 1))
            start = None
    return runs


def _quiet_start(labels: np.ndarray, width: int) -> int | None:
    """The start of a window of 2 ``width`` normal frames in the middle of the longest normal stretch."""
    runs = [r for r in _runs(labels, False) if r[1] - r[0] + 1 >= 2 * width]
    if not runs:
        return None
    first, last = max(runs, key=lambda r: r[1] - r[0])
    return (first + last) // 2 - width


def _why_question(index: VideoIndex, labels: np.ndarray, anomaly: tuple[int, int], facts: set[str] | None) -> Question:
    """Why the event in the middle of an anomaly is anomalous: with ``facts``, its explanation must name a rule
    on one of them; without, its span must lie on labelled frames and it must say which rule or what."""
    middle = (anomaly[0] + anomaly[1]) // 2
    text = f"Why is the event at {_clock(middle / index.fps)} anomalous?"

    def said(answer: Explanation, index: VideoIndex):
        spans = _claims(answer, "temporal")
        if not spans:
            return None
        if facts is not None:
            return _rule_facts(answer, index) or "no rule"
        grounded = any(c.kind in ("rule", "object") for c in answer.supported)
        return bool(labels[spans[0].frames[0] : spans[0].frames[1] + 1].any()) and grounded

    event = event_near(index, middle)
    if facts is not None:
        held = _facts_of(index, [event] if event else [])
        return Question(text, "why", Truth(said, facts, held, _meets))
    held = event is not None and bool(labels[event.start_frame : event.end_frame + 1].any())
    return Question(text, "why", Truth(said, True, held))


def _facts_of(index: VideoIndex, events: list) -> set[str]:
    """The facts of the rules ``events`` broke."""
    return {index.rule(r).predicate.fact for e in events for r in e.rule_ids if index.rule(r) is not None}


def _summary_question(index: VideoIndex, labels: np.ndarray, text: str = "Summarize the video.") -> Question:
    """A summary is right when every labelled anomaly overlaps an event it lists."""
    anomalies = _runs(labels, True)

    def covered(spans: list[tuple[int, int]]) -> bool:
        return all(any(s[0] <= b and a <= s[1] for s in spans) for a, b in anomalies)

    def said(answer: Explanation, index: VideoIndex):
        if not any(c.rule_id is None for c in _claims(answer, "tally")):
            return None
        return covered([c.frames for c in _claims(answer, "temporal")])

    held = covered([(e.start_frame, e.end_frame) for e in index.events])
    return Question(text, "summary", Truth(said, True, held))


# --- synthetic clips ---------------------------------------------------------------------------------------


def _people(scene, t: int) -> list[tuple[float, float]] | None:
    """Where every agent stands at frame ``t``, or None when two overlap or one is at the edge (an ambiguous
    count)."""
    spec = scene.spec
    spots = [(a.xs[t], a.ys[t]) for a in scene.agents if not np.isnan(a.xs[t])]
    for x, y in spots:
        if not (15 <= x <= spec.width - 15 and 30 <= y <= spec.height - 2):
            return None
    for i, (x, y) in enumerate(spots):
        if any(np.hypot(x - u, y - v) < SEPARATION_PX for u, v in spots[i + 1 :]):
            return None
    return spots


def _count_questions(index: VideoIndex, scene) -> list[Question]:
    """How many objects at a third of the clip, then "what about at" two thirds (nearest unambiguous frames)."""
    questions = []
    slack = round(0.5 * index.fps)
    for k, fraction in enumerate((1 / 3, 2 / 3)):
        wanted = round(fraction * index.frames)
        nearest = sorted(range(index.frames), key=lambda t, w=wanted: abs(t - w))
        frame = next((t for t in nearest if _people(scene, t) is not None), None)
        if frame is None:
            continue
        seconds = f"{frame / index.fps:.2f}"
        truth = Truth(_count_at(frame, slack), len(_people(scene, frame)), len(index.frame_evidence(frame) or []))
        text = f"How many objects are in view at {seconds} s?" if k == 0 else f"What about at {seconds} s?"
        questions.append(Question(text, "count" if k == 0 else "follow-up", truth))
        if k == 0:  # phrased for the LLM to read: no route fits it
            questions.append(Question(f"How busy was it at {seconds} s?", "count", truth))
            # Qualifiers nothing measures (a colour, clothing; a lawn no zone names): every object, and said so.
            for text, words in ((f"How many people in red jackets are in view at {seconds} s?", ("red", "jacket")),
                                (f"How many people are on the lawn at {seconds} s?", ("lawn",))):  # fmt: skip
                kept = Truth(_kept_qualifiers(words, truth.said), truth.world, truth.held)
                questions.append(Question(text, "qualifier", kept))
    return questions


def synthetic_videos(folder: Path, progress: bool = True) -> Iterator[Video]:
    """One clip per anomaly kind on one learned walkway (motion alone, as the demo: the detector sees kites in
    painted shapes), with their questions."""
    from anomalens.eval.synthetic import Anomaly, SceneSpec, build_scene, write_scene
    from anomalens.pipelines import learn_scene
    from anomalens.pipelines.audit import screen_video

    normal = write_scene(SceneSpec(n_frames=600, seed=1, camera_seed=0), folder / "normal")
    scene = learn_scene([normal.video], objects=False, progress=progress)
    for k, (kind, (activity_question, facts)) in enumerate(SYNTHETIC.items()):
        spec = SceneSpec(n_frames=SYNTHETIC_FRAMES, seed=10 + k, camera_seed=0,
                         anomalies=(Anomaly(kind, ANOMALY_START),))  # fmt: skip
        files = write_scene(spec, folder / kind)
        source = scene.open(files.video)
        screening = screen_video(source, scene, progress=False)
        index = VideoIndex.from_screening(screening, scene.rulebook, every_frame=True)
        labels = build_scene(spec).labels.astype(bool)
        anomaly = _runs(labels, True)[0]
        width = round(WINDOW_S * index.fps)
        questions = _span_questions(index, labels, (anomaly[0] + anomaly[1]) // 2, _quiet_start(labels, width))
        questions += _count_questions(index, build_scene(spec))
        activity = next(name for name, a in activities().items() if facts & set(a["facts"]))
        held = sighted_frames(index, activity, "activity")
        first_held = held[0] if held else "never"
        truth = Truth(_seen_by("activity"), anomaly, first_held, _within(round(0.5 * index.fps)))
        questions.append(Question(activity_question, "appears", truth))
        questions.append(_why_question(index, labels, anomaly, facts))
        questions.append(_summary_question(index, labels))
        questions.append(_summary_question(index, labels, "Give me the gist of this clip."))  # the LLM reads it
        truth = Truth(_rule_facts, facts, _facts_of(index, index.events), _meets)
        questions.append(Question("Which rules were broken?", "rules", truth))
        yield Video(f"synthetic {kind}", index, source, questions)


# --- Ped2 --------------------------------------------------------------------------------------------------


def _appears_question(index: VideoIndex, captions: list[str], term: str, seen_by: str) -> Question:
    said_in = [k for k, text in enumerate(captions) if mentions(text, term)]
    true = said_in[0] if said_in else "never"
    held = sighted_frames(index, term, seen_by)
    if seen_by == "caption":
        text, slack = f"When do the captions mention a {term}?", 0
    else:
        text, slack = f"When does a {term} first appear?", round(APPEAR_SLACK_S * index.fps)
    truth = Truth(_seen_by(seen_by), true, held[0] if held else "never", _within(slack))
    return Question(text, "appears", truth)


def ped2_videos(data: Path, progress: bool = True) -> Iterator[Video]:
    """Ped2's test videos screened with the scene learned from its training videos (objects named), with their
    captions, and their questions."""
    from anomalens.eval.ped2 import PED2_FPS, _videos
    from anomalens.pipelines import learn_scene
    from anomalens.pipelines.audit import screen_video

    ped2, caption_dir = data / "ucsd_ped2", data / "vlm_captions" / "ped2" / "captions"
    labels = json.loads((ped2 / "labels.json").read_text())
    scene = learn_scene(_videos(ped2 / "train"), fps=PED2_FPS, progress=progress)
    for video in _videos(ped2 / "test"):
        caption_file = caption_dir / f"test_{video.name}.txt"
        source = scene.open(video)
        screened = screen_video(source, scene, progress=False)
        index = VideoIndex.from_screening(screened, scene.rulebook, captions=caption_file, every_frame=True)
        truth = np.asarray(labels[video.name], dtype=bool)
        lines = caption_file.read_text().splitlines()
        width = round(WINDOW_S * index.fps)
        anomaly = max(_runs(truth, True), key=lambda r: r[1] - r[0])
        questions = _span_questions(index, truth, (anomaly[0] + anomaly[1]) // 2, _quiet_start(truth, width))
        questions.append(_why_question(index, truth, anomaly, None))
        questions.append(_summary_question(index, truth))
        questions.append(_summary_question(index, truth, "Give me the gist of this clip."))
        said = [p for p in PHRASES if any(mentions(line, p) for line in lines)]
        unsaid = [p for p in PHRASES if p not in said]
        for phrase in [*said[:1], *unsaid[:1]]:
            questions.append(_appears_question(index, lines, phrase, "caption"))
        for cls in CLASSES:
            questions.append(_appears_question(index, lines, cls, "class"))
        yield Video(f"ped2 test {video.name}", index, source, questions)


# --- running -----------------------------------------------------------------------------------------------


def judge(question: Question, answer: Explanation, index: VideoIndex) -> str:
    """``correct``, ``declined``, ``wrong, evidence held the truth`` or ``wrong, perception``."""
    truth = question.truth
    said = truth.said(answer, index)
    if said is None:
        return "declined"
    if truth.matches(said, truth.world):
        return "correct"
    return "wrong, perception" if truth.matches(said, truth.held) else "wrong, evidence held the truth"


def ask_all(videos: Iterator[Video], open_session, progress: bool = True) -> list[dict]:
    """Ask every video's questions in order in one session per video; one record per question."""
    from anomalens.progress import track

    records = []
    for video in track(list(videos), "asking", enabled=progress):
        session = open_session(video)
        for question in video.questions:
            answer = session.ask(question.text)
            records.append({
                "video": video.name, "type": question.kind, "question": question.text,
                "answer": answer.answer_text, "outcome": judge(question, answer, video.index),
                "said": str(question.truth.said(answer, video.index)),
                "query": session.history[-1].get("query"), "llm_calls": answer.llm_calls, "seconds": answer.seconds,
                "unsupported": len(answer.claims) - len(answer.supported),
            })  # fmt: skip
        session.close()
    return records


def summarize(records: list[dict]) -> dict:
    """Per question type and in all: the share of each outcome, and the median and 95th-percentile seconds."""
    by_type: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_type[record["type"]].append(record)

    def stats(group: list[dict]) -> dict:
        outcomes = [r["outcome"] for r in group]
        seconds = np.array([r["seconds"] for r in group])
        shares = {o: round(outcomes.count(o) / len(group), 4) for o in OUTCOMES}
        return {
            "questions": len(group),
            **shares,
            "routed_without_llm": round(sum(r["llm_calls"] == 0 for r in group) / len(group), 4),
            "median_s": round(float(np.median(seconds)), 3),
            "p95_s": round(float(np.percentile(seconds, 95)), 3),
        }

    return {"all": stats(records), "by_type": {kind: stats(group) for kind, group in sorted(by_type.items())}}


def run_chat_benchmark(data: str | Path, llm, progress: bool = True, namer=None) -> dict:
    """Ask the synthetic clips' and Ped2's questions of the chat (``llm`` chooses the queries no route settles)."""
    from anomalens.agents.chat import ChatSession
    from anomalens.pipelines.audit import foundation_tools

    data = Path(data)
    if not (data / "ucsd_ped2" / "labels.json").is_file() or not (data / "vlm_captions" / "ped2").is_dir():
        raise AnomalensError(f"{data}: needs ucsd_ped2/ and vlm_captions/ped2/ (see its README.md)")
    started = time.perf_counter()
    perception = foundation_tools(progress)
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "sessions.sqlite"

        def open_session(video: Video) -> ChatSession:
            frames = FrameReader(video.source) if perception.present else None
            return ChatSession(video.index, llm, database, perception=perception, frames=frames, namer=namer)

        def videos() -> Iterator[Video]:
            yield from synthetic_videos(Path(folder), progress)
            yield from ped2_videos(data, progress)

        records = ask_all(videos(), open_session, progress)
    dropped = sum(r["said"] == DROPPED for r in records)
    result = {"llm": f"{llm.backend}:{llm.model}", **summarize(records), "qualifiers_dropped": dropped}
    wrong = [r for r in records if r["outcome"] != "correct"]
    return result | {"not_correct": wrong, "seconds": round(time.perf_counter() - started, 1)}
