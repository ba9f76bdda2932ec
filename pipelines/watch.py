"""Live sources watched against a scene: screening keeps up with each stream, the LLM never holds it up.

Each source is screened in its own thread with the scene's scorer (``tools.screening.LiveScreening``: the same
scoring, smoothing and grouping as ``audit``), and each event is emitted as soon as it is sure to be one
(``"state": "started"``) and again the moment it closes (``"closed"``, with its headline): a JSON line on
stdout, a line in ``OUT/events.jsonl``, and a POST to the webhook when one is configured; with ``OUT``, each
event is also a small report (``OUT/events/<when the watch started>/<source>-<event>/``) in the event store, for
the app. Its explanation queues behind a bounded backlog, explained oldest first by the agent on the event's
recorded evidence (a live stream cannot be read back, so the agent's live tools are not offered); when the backlog
is full the new event's explanation is skipped and said so, rather than memory growing without bound. Stopping (Ctrl-C,
SIGTERM, the ``stop`` event) closes every open event and keeps it; queued explanations are skipped.
"""

from __future__ import annotations

import datetime
import itertools
import json
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from anomalens.agents.graph import explain_events, plain_explanation
from anomalens.agents.index import VideoIndex
from anomalens.agents.llm import LLM
from anomalens.errors import AnomalensError, LLMError, MediaError
from anomalens.files import append_line, slug, writable_folder
from anomalens.pipelines.audit import build_report, open_explainer, scorer_of
from anomalens.pipelines.describe import Describer
from anomalens.pipelines.history import record
from anomalens.progress import say
from anomalens.records import event_record, explanation_record, now, skipped_record
from anomalens.report import Report, write_report
from anomalens.store import EventStore
from anomalens.tools.perception import object_tools
from anomalens.tools.scene import Scene, SceneScorer
from anomalens.tools.screening import LiveEvent, LiveScreening, ScreeningResult, StartedEvent
from anomalens.types import Explanation
from anomalens.video import Stream, live_source, patiently

EVENTS = "events.jsonl"
WEBHOOK_TIMEOUT = 5.0  # seconds a webhook may take; a slow one delays its own deliveries, never screening


@dataclass
class Watched:
    """One source's run: frames screened, events emitted, each event's latencies (seconds: the arrival of its
    last frame to its closed record; of its first frame to its started record), how far screening fell behind
    the frames' arrival, reconnections."""

    source: str
    frames: int = 0
    events: int = 0
    latencies: list[float] = field(default_factory=list)
    start_latencies: list[float] = field(default_factory=list)  # per event: its first frame's arrival to "started"
    lag: list[float] = field(default_factory=list)  # per frame: scored at, minus arrived at
    reconnects: int = 0
    error: str | None = None


class _Outlet:
    """Where records go, one whole line at a time: ``emit`` (stdout), ``OUT/events.jsonl``, the webhook, the MQTT
    broker."""

    def __init__(self, emit: Callable[[dict], None], out: Path | None, webhook: str | None, mqtt=None):
        self.emit, self.webhook, self.mqtt = emit, webhook, mqtt
        self.ledger = out / EVENTS if out is not None else None
        self.lock = threading.Lock()
        self.posting = ThreadPoolExecutor(max_workers=1) if webhook else None

    def __call__(self, record: dict) -> None:
        line = json.dumps(record)
        with self.lock:
            self.emit(record)
            if self.ledger is not None:
                append_line(self.ledger, line)
        if self.posting is not None:
            self.posting.submit(self._post, line.encode())
        if self.mqtt is not None:
            self.mqtt(record)

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.webhook, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT):
                pass
        except OSError as error:
            say(f"webhook {self.webhook}: not delivered ({getattr(error, 'reason', error)})")

    def close(self) -> None:
        if self.posting is not None:
            self.posting.shutdown(wait=True)
        if self.mqtt is not None:
            self.mqtt.close()


class _Misfit(MediaError):
    """A source whose frames do not fit the scene: waiting will not mend it."""


def _when_up(spec: str, opened: Callable[[str], Stream], stop: threading.Event) -> Stream | None:
    """``spec`` opened once it answers, tried after growing waits (said each time), or None once stopped."""

    def attempt() -> Stream | None:
        try:
            return opened(spec)
        except _Misfit:
            raise
        except MediaError:
            return None  # still down

    def waiting(_: int, wait: float) -> None:
        say(f"{spec}: cannot be opened yet; trying again in {wait:g} s while the other sources are watched")

    return patiently(attempt, waiting, stop.wait)


def _session_folder(events: Path) -> Path:
    """A folder of its own under ``events`` for this watch's event reports, named by when it started: a second
    watch into the same ``--out`` never replaces the first one's reports (or their rows in the store)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count(1):
        folder = events / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder


class _Archive:
    """Each closed event as a one-event report under ``OUT/events/`` and in the event store (rewritten when its
    explanation comes), so the app shows live events beside audited ones. A report and its keyframe are held in
    memory only while its explanation is pending, so a long watch keeps memory bounded."""

    def __init__(self, out: Path, scene: Scene, store: EventStore | None):
        self.out, self.scene, self.store = _session_folder(out / "events"), scene, store
        self.kept: dict[tuple[str, str], tuple[Report, dict, Path, str]] = {}
        self.lock = threading.Lock()

    def keep(self, live: LiveEvent, index: VideoIndex, started: str, plain: Explanation, pending: bool) -> None:
        event = live.event
        screening = ScreeningResult.from_live(
            live, threshold=index.threshold, fps=index.fps, source_name=index.video, source_size=index.source_size,
            tracks=index.tracks,
        )  # fmt: skip
        report, keyframes = build_report(
            screening, self.scene, title=f"watch: {index.video}", scorer=scorer_of(self.scene) + ", live",
            explainer=plain.generator, explanations=[plain],
        )  # fmt: skip
        folder = self.out / f"{slug(index.video)}-{event.id}"
        with self.lock:
            if pending:
                self.kept[(index.video, event.id)] = (report, keyframes, folder, started)
            self._write(report, keyframes, folder, started)

    def explained(self, source: str, event_id: str, explanation: Explanation) -> None:
        with self.lock:
            # An agent that verified nothing leaves the plain explanation the report has.
            if (kept := self.kept.pop((source, event_id), None)) is not None and explanation.supported:
                report, keyframes, folder, started = kept
                said = {"explanations": [explanation], "explainer": explanation.generator}
                explained = report.model_copy(update=said)
                self._write(explained, keyframes, folder, started)

    def forget(self, source: str, event_id: str) -> None:
        """Its explanation will not come (skipped): the report stays as written, without one."""
        with self.lock:
            self.kept.pop((source, event_id), None)

    def _write(self, report: Report, keyframes: dict, folder: Path, started: str) -> None:
        json_path, _ = write_report(report, keyframes, folder)
        record(report, json_path, self.store, progress=False, started=started)


class _Explainer:
    """The agent on closed events, oldest first, from a backlog of at most ``backlog`` events."""

    def __init__(self, llm, backlog: int, outlet: _Outlet, archive: _Archive | None = None):
        self.llm, self.outlet, self.archive = llm, outlet, archive
        self.waiting: queue.Queue = queue.Queue(maxsize=backlog)
        self.thread = threading.Thread(target=self._run, name="explainer", daemon=True)
        self.thread.start()

    def submit(self, source: str, index: VideoIndex, event_id: str) -> None:
        try:
            self.waiting.put_nowait((source, index, event_id))
        except queue.Full:
            self._skipped(source, event_id, "backlog full")

    def _skipped(self, source: str, event_id: str, why: str) -> None:
        say(f"{source}: {event_id}: explanation skipped: {why}")
        self.outlet(skipped_record(source, event_id, why))
        if self.archive is not None:
            self.archive.forget(source, event_id)

    def _run(self) -> None:
        while (item := self.waiting.get()) is not None:
            source, index, event_id = item
            try:
                (explanation,) = explain_events(self.llm, index, event_ids=[event_id], progress=False)
            except LLMError as error:
                self._skipped(source, event_id, f"the LLM failed ({error})")
                continue
            self.outlet(explanation_record(source, event_id, explanation))
            if self.archive is not None:
                self.archive.explained(source, event_id, explanation)

    def finish(self, stopped: bool) -> None:
        """Explain what waits (or, when stopped, skip it), then end."""
        if stopped:
            while True:
                try:
                    source, _, event_id = self.waiting.get_nowait()
                except queue.Empty:
                    break
                self._skipped(source, event_id, "stopped")
        self.waiting.put(None)
        if not stopped:
            self.thread.join()


def _screen(
    stream: Stream, scene: Scene, watched: Watched, outlet: _Outlet, explainer: _Explainer | None, tools,
    archive: _Archive | None,
):
    started = now()  # events' times count from the stream's first frame
    scorer = SceneScorer(scene, stream.fps, tools)
    scorer.warm(stream.first_frame)
    screening = LiveScreening(scorer, stream.fps, describe=Describer(scene.rulebook))
    arrived: dict[int, float] = {}

    def publish(changed: list[LiveEvent | StartedEvent]) -> None:
        for live in changed:
            emitted = time.monotonic()
            if isinstance(live, StartedEvent):  # out as soon as it is sure; its record is updated when it closes
                latency = emitted - arrived.get(live.event.start_frame, emitted)
                watched.start_latencies.append(latency)
                outlet(event_record(stream.name, live.event, "started", latency_s=round(latency, 3)))
                continue
            latency = emitted - arrived.get(live.event.end_frame, emitted)
            watched.events += 1
            watched.latencies.append(latency)
            index = VideoIndex.from_live(
                live, video=stream.name, fps=stream.fps, source_size=stream.source_size,
                threshold=screening.threshold, tracks=scorer.tracks(), rulebook=scene.rulebook,
            )  # fmt: skip
            plain = plain_explanation(index, live.event)
            outlet(event_record(stream.name, live.event, "closed", headline=plain.headline,
                                latency_s=round(latency, 3)))  # fmt: skip
            if archive is not None:
                archive.keep(live, index, started, plain, pending=explainer is not None)
            if explainer is not None:
                explainer.submit(stream.name, index, live.event.id)
        kept_from = screening.frames[0].frame_index if screening.frames else 0
        while arrived and next(iter(arrived)) < kept_from:  # in frame order: the oldest first
            del arrived[next(iter(arrived))]

    for frame, arrival in stream:
        arrived[frame.index] = arrival
        publish(screening.feed(frame))
        watched.frames += 1
        watched.lag.append(time.monotonic() - arrival)
    publish(screening.close())
    watched.reconnects = stream.reconnects


def watch(
    sources: Sequence[str],
    scene: Scene | str | Path,
    *,
    out: str | Path | None = None,
    realtime: bool = False,
    fps: float | None = None,
    explainer: str | None = None,
    llm: LLM | None = None,
    backlog: int = 8,
    webhook: str | None = None,
    mqtt: str | None = None,
    emit: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
    store: EventStore | None = None,
    progress: bool = True,
) -> list[Watched]:
    """Watch ``sources`` (URLs, webcams, files) against ``scene`` until every one ends or ``stop`` is set.

    Records (``anomalens.records``: ``{"type": "event", "state": "started" | "closed", ...}`` as each event starts
    and as it closes, ``{"type": "explanation", ...}`` as the agent explains it or skips it) go to ``emit``
    (default: a JSON line on stdout), to ``out/events.jsonl``, to ``webhook`` and to the MQTT broker at ``mqtt``
    (topics: ``anomalens.mqtt``). ``realtime`` plays files at their own rate; ``fps`` is the rate of sources that
    state none.
    Events are explained by the agent with ``llm``, else by the LLM ``explainer`` chooses (see ``audit``).
    With ``out``, each event is also kept as a report under ``out/events/`` and in the event ``store`` (default:
    the settings' one).
    """
    if backlog < 1:
        raise AnomalensError(f"backlog {backlog}: give at least 1")
    scene = scene if isinstance(scene, Scene) else Scene.load(scene)
    stop = stop or threading.Event()
    out = writable_folder(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    def opened(spec: str) -> Stream:
        stream = Stream(spec, max_side=scene.max_side, fps=fps, default_fps=scene.fps, realtime=realtime, stop=stop)
        if stream.analysis_size != tuple(scene.analysis_size):
            raise _Misfit(spec, f"{stream.source_size[0]}x{stream.source_size[1]} frames do not fit this scene")
        if stream.fps_note:
            say(f"{spec}: {stream.fps_note}", progress)
        return stream

    # Opened before anything starts: a bad file or misfit frames, or no source up at all, fail the command at once;
    # a camera that is down while others are up is tried again in the background, and watched once it answers.
    streams: list[Stream | None] = []
    down: list[MediaError] = []
    for spec in sources:
        try:
            streams.append(opened(spec))
        except _Misfit:
            raise
        except MediaError as error:
            if not live_source(spec):
                raise
            streams.append(None)
            down.append(error)
    if down and len(down) == len(streams):
        raise down[0]
    if llm is None:
        llm, who = open_explainer(explainer)
        say(f"explanations: {who}", progress)
    broker = None
    if mqtt is not None:
        from anomalens.mqtt import MqttPublisher

        broker = MqttPublisher(mqtt)
        for spec in sources:
            broker.announce(spec)
    outlet = _Outlet(emit or (lambda record: print(json.dumps(record), flush=True)), out, webhook, broker)
    archive = _Archive(out, scene, store) if out is not None else None
    agent = _Explainer(llm, backlog, outlet, archive) if llm is not None else None
    watched = [Watched(spec) for spec in sources]

    def run(spec: str, stream: Stream | None, record: Watched) -> None:
        try:  # each source has its own object tools: the detector's state is per stream
            stream = stream or _when_up(spec, opened, stop)
            if stream is None:
                return  # stopped before the camera answered
            tools = object_tools(scene.objects) if scene.objects else None
            _screen(stream, scene, record, outlet, agent, tools, archive)
        except Exception as error:  # noqa: BLE001 - one source's failure must not stop the others
            bug = not isinstance(error, AnomalensError)
            record.error = f"unexpected {type(error).__name__}: {error}" if bug else str(error)
            say(f"{spec}: stopped: {record.error}")

    threads = [threading.Thread(target=run, args=args, name=args[0]) for args in zip(sources, streams, watched)]
    for thread in threads:
        thread.start()
        say(f"{thread.name}: watching", progress)
    for thread in threads:
        while thread.is_alive():  # in short waits: the main thread stays free for Ctrl-C and SIGTERM handlers
            thread.join(0.2)
    if agent is not None:
        agent.finish(stopped=stop.is_set())
    outlet.close()
    return watched
