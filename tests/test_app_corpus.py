"""The app's bad-request corpus (``tests/corpus/app.yaml``) and the attacks that need files planted: every
request gets its status and one-line reason, never a 500, and every answer carries the frame protection headers.
Tried against the app in this process (FastAPI's test client on the loopback address), no browser needed."""

import json
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from anomalens.errors import AnomalensError, ConfigError
from anomalens.pipelines import audit
from anomalens.pipelines.history import index_reports
from anomalens.report import keyframe_file, load_report, timeline_svg
from anomalens.store import EventStore
from anomalens.web.app import GUARD_HEADERS, create_app
from anomalens.web.plots import score_svg

CORPUS = yaml.safe_load((Path(__file__).parent / "corpus" / "app.yaml").read_text())
BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def audited(scene_and_video, tmp_path_factory):
    """A store holding one audited video (the deterministic explainer), and the report's folder."""
    scene, test, _ = scene_and_video
    root = tmp_path_factory.mktemp("corpus")
    audit(test.video, scene.save(root / "scene"), out=root / "out", explainer="deterministic", progress=False)
    store = EventStore(root / "store")
    index_reports([root / "out"], store, progress=False)
    assert store.events() and store.event(1)["keyframe"], "the corpus needs an event with a keyframe"
    return store, root / "out"


def send(client: TestClient, request: dict, long: int = 0):
    def expand(text: str) -> str:
        return text.replace("LONG", "x" * long)

    headers = {k.lower(): v for k, v in request.get("headers", {}).items()}
    body = {}
    if "json" in request:
        body["content"] = expand(json.dumps(request["json"]))
        headers.setdefault("content-type", "application/json")
    elif "raw" in request:
        body["content"] = request["raw"]
        headers.setdefault("content-type", "application/json")
    return client.request(request["method"], expand(request["path"]), headers=headers, **body)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_each_request_of_the_corpus_gets_its_status_and_one_reason(audited, case):
    store, _ = audited
    with TestClient(create_app(store), base_url=BASE, raise_server_exceptions=False) as client:
        answer = send(client, case["request"], case.get("long", 0))
    assert answer.status_code == case["status"], answer.text[:300]
    for name, value in GUARD_HEADERS.items():
        assert answer.headers.get(name) == value
    if "says" in case:
        bad = answer.status_code >= 400 and "json" in answer.headers["content-type"]
        reason = str(answer.json()["detail"]) if bad else answer.text
        assert case["says"] in reason and (answer.status_code < 400 or "\n" not in reason), reason


@pytest.mark.parametrize("part, says", [("@2:00-", "past the end of the input"), ("@5-2", "before it starts")])
def test_an_audit_of_a_part_the_video_does_not_have_is_one_422_line(audited, scene_and_video, part, says):
    store, _ = audited
    video = f"{scene_and_video[1].video}{part}"
    with TestClient(create_app(store), base_url=BASE, raise_server_exceptions=False) as client:
        answer = client.post("/api/jobs", json={"video": video, "scene": str(store.folder)})
    assert answer.status_code == 422 and answer.json()["detail"].startswith(f"{video}: ") and says in answer.text
    assert store.jobs() == []  # nothing started


def test_an_events_clip_is_on_its_page_and_served_as_mp4(audited):
    pytest.importorskip("imageio_ffmpeg", reason="event clips: pip install 'anomalens[clips]'")
    store, _ = audited
    with TestClient(create_app(store), base_url=BASE) as client:
        page = client.get("/events/1").text
        clip = client.get("/clips/1")
        missing = client.get("/clips/999")
    assert 'id="clip"' in page and 'src="/clips/1"' in page and "download the clip" in page
    assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4" and clip.content[4:8] == b"ftyp"
    assert missing.status_code == 404 and "not in the event store" in missing.json()["detail"]


def test_a_keyframe_is_served_only_from_the_indexed_reports_own_folder(audited, tmp_path):
    store, out = audited
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the app")
    client = TestClient(create_app(store), base_url=BASE)
    picture = keyframe_file(Path(store.event(1)["report"]).parent, store.event(1)["key"])
    original = picture.read_bytes()
    try:
        assert client.get("/keyframes/1").content == original
        picture.unlink()
        picture.symlink_to(secret)  # planted after indexing: checked when served
        assert client.get("/keyframes/1").status_code == 404
        assert "secret" not in client.get("/events/1").text  # the page shows no picture either
    finally:
        picture.unlink()
        picture.write_bytes(original)
    assert client.get("/keyframes/1").content == original


def test_a_report_whose_event_id_is_a_path_is_not_indexed(audited, tmp_path):
    _, out = audited
    folder = tmp_path / "planted"
    folder.mkdir()
    report = json.loads(next(out.rglob("report.json")).read_text())
    store = EventStore(tmp_path / "store")
    for event_id in ("../../etc/passwd", "/etc/passwd", ".."):
        report["events"][0]["id"] = event_id
        (folder / "report.json").write_text(json.dumps(report))
        with pytest.raises(ConfigError, match="not a valid report: events.0.id"):
            index_reports([folder], store, progress=False)
        assert store.events() == []


def test_a_short_token_is_refused(tmp_path):
    with pytest.raises(AnomalensError, match="at least 16"):
        create_app(EventStore(tmp_path / "store"), token="a")


def test_a_second_server_leaves_the_jobs_of_a_running_one_and_ends_those_of_a_dead_one(tmp_path):
    store = EventStore(tmp_path / "store")
    running, dead = store.add_job("audit", {"video": "a"}), store.add_job("audit", {"video": "b"})
    for job_id in (running, dead):
        store.update_job(job_id, state="running")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another server, alive
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(store.path) as db:
        for job_id, process in ((running, other), (dead, gone)):
            db.execute("UPDATE jobs SET owner = ? WHERE id = ?", (f"{socket.gethostname()}:{process.pid}", job_id))
    try:
        create_app(store)
        assert store.job(running)["state"] == "running" and store.job(dead)["state"] == "interrupted"
    finally:
        other.kill()
        other.wait()


def test_a_day_long_video_gets_a_time_axis_in_the_report_and_on_the_event_page(audited):
    """A watch runs all day; a frame-rate header can make a clip last days: the score plots still have an axis."""
    store, out = audited
    report = load_report(next(out.rglob("report.json")))
    week = 7 * 86400
    long = report.model_copy(update={"fps": report.frame_indices[-1] / week})
    axis = re.findall(r'text-anchor="middle">([^<]+)</text>', timeline_svg(long))
    assert axis[0] == "0s" and axis[-1] == "168:00:00" and len(axis) <= 13
    video = store.video(1)
    page = score_svg(video["scores"], video["threshold"], video["scores"][-1][0] / (13 * 3600), store.event(1))
    assert "12:00:00" in page
