"""Objects on real street footage (``vtest.avi``): a scene learned from its first ``learn_seconds``, then the
people in view (person tracks alive then) at the frames counted by eye in ``street_counts.yaml``, and the events
screening raises on the rest of the video, which people walk as in the part learned from: each is a false alarm."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import yaml

from anomalens.agents.index import VideoIndex
from anomalens.errors import MediaError
from anomalens.pipelines import learn_scene
from anomalens.pipelines.audit import screen_video
from anomalens.progress import say

COUNTS = Path(__file__).with_name("street_counts.yaml")


def run_street(video: str | Path, *, progress: bool = True) -> dict:
    counted = yaml.safe_load(COUNTS.read_text(encoding="utf-8"))
    video = Path(video)
    if video.name != counted["video"]:
        raise MediaError(video, f"the counts by eye are of {counted['video']}, not of this video")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        learned, rest, fps = _split(video, counted["learn_seconds"], Path(folder))
        say(f"learning the scene from the first {counted['learn_seconds']} s", progress)
        scene = learn_scene([learned], progress=progress)
        screened = screen_video(scene.open(video), scene, progress=progress)
        index = VideoIndex.from_screening(screened, scene.rulebook, every_frame=True)
        unseen = screen_video(scene.open(rest), scene, progress=progress).events
    offset = round(counted["learn_seconds"] * fps)
    counts = {
        frame: {"by_eye": by_eye, "tracked": sum(t.class_name == "person" for t in index.in_view(frame))}
        for frame, by_eye in counted["people"].items()
    }
    return {
        "video": str(video),
        "people": counts,
        "within_one": sum(abs(c["tracked"] - c["by_eye"]) <= 1 for c in counts.values()),
        "frames_counted": len(counts),
        "rules": [r.id for r in scene.rulebook.rules],
        "events_on_unseen_normal_footage": [
            {"frames": [e.start_frame + offset, e.end_frame + offset], "rules": e.rule_ids, "summary": e.summary}
            for e in unseen
        ],
        "seconds": time.perf_counter() - started,
    }


def _split(video: Path, seconds: float, folder: Path) -> tuple[Path, Path, float]:
    """The video cut at ``seconds`` into two MJPEG clips in ``folder``: the part to learn from and the rest."""
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    parts = [folder / "learned.avi", folder / "rest.avi"]
    writers = [cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), fps, size) for p in parts]
    index = 0
    while (read := capture.read())[0]:
        writers[index >= round(seconds * fps)].write(read[1])
        index += 1
    capture.release()
    for writer in writers:
        writer.release()
    return parts[0], parts[1], fps
