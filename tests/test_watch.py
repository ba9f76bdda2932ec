"""Watching live sources: the live screening gives what `audit` gives, a stream served here over HTTP (MJPEG, as
many IP cameras serve it) has its anomalies emitted while it plays, a server that goes away and comes back is
reconnected, and SIGTERM ends the watch with every event kept."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone

import cv2
import pytest

from anomalens.pipelines.audit import screen_video
from anomalens.pipelines.describe import Describer
from anomalens.pipelines.watch import EVENTS, watch
from anomalens.store import EventStore
from anomalens.tools.scene import SceneScorer
from anomalens.tools.screening import LiveEvent, LiveScreening, StartedEvent
from tests.helpers.network import Handler, serve


def test_live_screening_gives_the_events_screen_gives(scene_and_video):
    scene, test, _ = scene_and_video
    batch = screen_video(scene.open(test.video), scene, progress=False)
    source = scene.open(test.video)
    live = LiveScreening(SceneScorer(scene, source.fps), source.fps, describe=Describer(scene.rulebook))
    changed, held = [], []
    for frame in source:
        changed += [(item, frame.index) for item in live.feed(frame)]
        held.append(len(live.frames))
    changed += [(item, None) for item in live.close()]
    closed = [(item, at) for item, at in changed if isinstance(item, LiveEvent)]
    assert [item.event for item, _ in closed] == batch.events and len(batch.events) >= 2
    started = [(item, at) for item, at in changed if isinstance(item, StartedEvent)]
    assert [item.event.id for item, _ in started] == [e.id for e in batch.events]
    for item, at in started:  # out once its run is long enough to be an event: half a window and a few frames on
        assert at - item.event.start_frame <= source.fps // 2 + 6
    for item, at in closed[:-1]:  # emitted soon after its end: half a smoothing window and the gap allowed
        assert at - item.event.end_frame <= source.fps // 2 + 6
    longest = max(e.end_frame - e.start_frame + 1 for e in batch.events)
    assert max(held) <= longest + source.fps + 6  # frames are let go once no event can need them
    assert held[closed[0][1] + 1] <= source.fps + 6  # none of the first event's once it is out


class MJPEGCamera:
    """An IP camera on 127.0.0.1: serves ``frames`` as an MJPEG stream at ``fps``, from ``start`` on; ``stop``
    takes it off the network mid-stream (its connections dropped), as a camera that loses power."""

    def __init__(self, frames, fps: float):
        self.frames, self.fps, self.served = frames, fps, 0
        self.port = 0
        self.serving = ExitStack()

    def start(self, start: int = 0) -> None:
        camera = self

        class Stream(Handler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for image in camera.frames[start:]:
                    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    try:
                        self.wfile.write(head + jpeg + b"\r\n")
                    except OSError:
                        return
                    camera.served += 1
                    time.sleep(1 / camera.fps)

        url = self.serving.enter_context(serve(Stream, self.port))
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.serving.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


def _frames(video) -> list:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return frames


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_stream_is_watched_through_a_camera_restart(scene_and_video, tmp_path, capsys):
    scene, test, _ = scene_and_video
    frames = _frames(test.video)  # a cyclist from frame 10, someone crossing the lawn from frame 150
    camera = MJPEGCamera(frames, fps=60)  # faster than the clip's 15 fps (which --fps gives: MJPEG states none)
    camera.start()
    records, stop = [], threading.Event()
    watching = threading.Thread(
        target=lambda: records.append(
            watch([camera.url], scene, out=tmp_path, fps=scene.fps, explainer="deterministic",
                  emit=records.append, stop=stop, progress=False)  # fmt: skip
        )
    )
    watching.start()
    assert _wait_for(lambda: camera.served >= 140, 60), "the camera served its first part"
    camera.stop()  # mid-stream, with the watch reading
    time.sleep(1.0)
    camera.start(start=150)  # back on the same address, further on in the scene
    assert _wait_for(lambda: camera.served >= 290, 60), "the camera served the rest"
    _wait_for(lambda: sum(isinstance(r, dict) and r.get("state") == "closed" for r in records) >= 2, 10)
    stop.set()
    watching.join(30)
    assert not watching.is_alive(), "the watch ends when stopped"
    camera.stop()
    (watched,) = records.pop()
    events = [r["event"] for r in records if r.get("state") == "closed"]
    assert watched.reconnects >= 1 and watched.error is None
    assert "reopened" in capsys.readouterr().err
    assert any(e["start_frame"] <= 70 for e in events), "the cyclist, before the camera went away"
    assert any(e["end_frame"] >= 150 for e in events), "the lawn crossing, after it came back"
    ledger = [json.loads(line) for line in (tmp_path / EVENTS).read_text().splitlines()]
    assert ledger == records  # every record kept, whole


def test_an_event_is_out_when_it_starts_and_again_when_it_closes(scene_and_video):
    """The cyclist's event is emitted while it goes on (under the id it closes with), not only once it ended."""
    scene, test, _ = scene_and_video
    records = []
    (watched,) = watch([str(test.video)], scene, explainer="deterministic", emit=records.append, progress=False)
    closed = [r for r in records if r.get("state") == "closed"]
    started = [r for r in records if r.get("state") == "started"]
    assert closed and [r["event"]["id"] for r in started] == [r["event"]["id"] for r in closed]
    for opening, end in zip(started, closed):
        assert records.index(opening) < records.index(end)
        assert opening["event"]["start_frame"] == end["event"]["start_frame"]
        assert opening["event"]["end_frame"] < end["event"]["end_frame"], "out before the event ended"
    assert len(watched.start_latencies) == len(watched.latencies) == len(closed)


@pytest.fixture
def webhook():
    """A receiver on 127.0.0.1 for the records POSTed to it; yields (its URL, what it received)."""
    received = []

    class Receiver(Handler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.reply(204)

    with serve(Receiver) as url:
        yield f"{url}/events", received


def test_sigterm_ends_a_watch_keeping_every_event(scene_and_video, tmp_path, webhook):
    scene, test, _ = scene_and_video
    scene.save(tmp_path / "scene")
    url, posted = webhook
    process = subprocess.Popen(
        [sys.executable, "-m", "anomalens", "watch", str(test.video), "--scene", str(tmp_path / "scene"),
         "--realtime", "--explainer", "deterministic", "--out", str(tmp_path / "out"), "--webhook", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"ANOMALENS_STORE_DIR": str(tmp_path / "store")},
    )  # fmt: skip
    first = json.loads(process.stdout.readline())  # the cyclist's event as it starts, while the clip plays
    assert (first["type"], first["state"]) == ("event", "started") and first["latency_s"] < 2.0
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "(stopped)" in err, err
    kept = [json.loads(line) for line in (tmp_path / "out" / EVENTS).read_text().splitlines()]
    assert kept[0] == first and [json.loads(line) for line in out.splitlines()] == kept[1:]
    assert kept[-1]["event"]["end_frame"] < 299, "stopped before the clip's end"
    assert posted == kept  # the webhook got every record, in order
    # Each event is in the event store too, at the wall-clock time it happened, for the app.
    stored = EventStore(tmp_path / "store").events()
    events = [r["event"] for r in kept if r.get("state") == "closed"]
    assert [(e["key"], e["start_frame"]) for e in stored] == [(e["id"], e["start_frame"]) for e in events]
    assert stored[0]["title"] == f"watch: {test.video}" and stored[0]["keyframe"].endswith(".jpg")
    assert stored[0]["at"][:10] == datetime.now(timezone.utc).isoformat()[:10]


def test_explanations_wait_in_a_bounded_backlog_and_never_hold_screening(scene_and_video, tmp_path):
    """Two sources close their events while the LLM is busy with the first: one waits, the rest are skipped."""
    from anomalens.agents.llm.scripted import ScriptedLLM
    from tests.helpers.agent import by_handle

    scene, test, _ = scene_and_video
    closing = 2 * len(screen_video(scene.open(test.video), scene, progress=False).events)  # both sources'
    assert closing >= 4
    busy, released = threading.Event(), threading.Event()

    def slow(messages):
        busy.set()
        released.wait(60)
        return by_handle(messages)

    records = []
    llm = ScriptedLLM([slow] + [by_handle] * 10)  # an explanation may take a revision round
    watching = threading.Thread(target=lambda: watch([str(test.video), str(test.video)], scene, llm=llm, backlog=1,
                                                     emit=records.append, progress=False))  # fmt: skip
    watching.start()
    assert busy.wait(60)
    assert _wait_for(lambda: sum(r.get("state") == "closed" for r in records) == closing, 60), "screening went on"
    released.set()
    watching.join(60)
    explained = [r for r in records if r["type"] == "explanation" and "prose" in r]
    skipped = [r for r in records if r["type"] == "explanation" and r.get("skipped") == "backlog full"]
    assert len(explained) == 2 and len(skipped) == closing - 2 and all(r["prose"] for r in explained)
    assert all(c["verdict"] == "supported" for r in explained for c in r["claims"])


def test_a_camera_down_at_start_is_tried_until_it_answers_and_the_others_are_watched_meanwhile(
    scene_and_video, tmp_path
):
    scene, test, _ = scene_and_video
    camera = MJPEGCamera(_frames(test.video), fps=60)
    camera.start()
    url = camera.url
    camera.stop()  # down when the watch starts
    records, stop = [], threading.Event()
    watching = threading.Thread(
        target=lambda: records.append(
            watch([url, str(test.video)], scene, out=tmp_path, fps=scene.fps, explainer="deterministic",
                  emit=records.append, stop=stop, progress=False)  # fmt: skip
        )
    )
    watching.start()
    assert _wait_for(lambda: any(r.get("source") == str(test.video) for r in records if isinstance(r, dict)), 60), \
        "the file is watched while the camera is down"
    camera.start()  # on the same address
    assert _wait_for(lambda: camera.served >= 100, 60), "the watch opened the camera once it answered"
    stop.set()
    watching.join(30)
    camera.stop()
    cameras, files = records.pop()
    assert cameras.frames >= 50 and cameras.error is None and files.error is None


def test_a_second_watch_into_the_same_folder_keeps_the_first_ones_reports(scene_and_video, tmp_path):
    scene, test, _ = scene_and_video
    store = EventStore(tmp_path / "store")
    for _ in range(2):
        watch([str(test.video)], scene, out=tmp_path / "out", explainer="deterministic", emit=lambda r: None,
              store=store, progress=False)  # fmt: skip
    sessions = sorted((tmp_path / "out" / "events").iterdir())
    reports = [sorted(p.name for p in session.iterdir()) for session in sessions]
    assert len(sessions) == 2 and reports[0] == reports[1] and reports[0]  # the same events, each session's own
    assert len(store.videos()) == 2 * len(reports[0])
