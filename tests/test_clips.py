"""Event clips: the seconds around each event, its objects boxed, as H.264 MP4 beside the report, decoded back."""

import cv2
import numpy as np
import pytest

from anomalens.clips import LONGEST_S, MARGIN_S, clip_frames
from anomalens.pipelines import audit
from anomalens.report import clip_file
from anomalens.types import Event

pytest.importorskip("imageio_ffmpeg", reason="event clips: pip install 'anomalens[clips]'")


def _decoded(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    return frames, capture.get(cv2.CAP_PROP_FPS), fourcc


def test_a_clip_spans_the_event_and_a_second_each_side_at_most_a_few_seconds_around_its_peak():
    def event(start, end, peak):
        return Event(id="event-1", start_frame=start, end_frame=end, start_s=start / 10, end_s=end / 10,
                     peak_frame=peak, score=2.0)  # fmt: skip

    assert clip_frames(event(30, 40, 35), 10.0, 299) == (20, 51)  # MARGIN_S = 1 s each side
    assert clip_frames(event(3, 40, 35), 10.0, 45) == (0, 46)  # within the video
    first, stop = clip_frames(event(10, 200, 150), 10.0, 299)
    assert stop - first == LONGEST_S * 10 and first <= 150 < stop and MARGIN_S == 1.0


def test_each_event_of_an_audit_gets_a_clip_with_its_objects_boxed(scene_and_video, tmp_path):
    scene, test, _ = scene_and_video
    result = audit(test.video, scene, out=tmp_path, explainer="deterministic", progress=False)
    assert result.events and result.report.clips == [e.id for e in result.events]
    source = scene.open(test.video)
    page = (tmp_path / "report.html").read_text()
    for event in result.events:
        frames, fps, fourcc = _decoded(clip_file(tmp_path, event.id))
        first, stop = clip_frames(event, source.fps, source.declared_frames - 1)
        assert len(frames) == stop - first and fps == pytest.approx(source.fps) and fourcc in ("avc1", "h264")
        # The clip's frames are the video's: the first one is frame ``first`` (H.264 is lossy: close, not equal).
        expected = source.read(first).image
        assert frames[0].shape == expected.shape and np.abs(frames[0].astype(int) - expected).mean() < 6
        # Boxes drawn in red on the anomalous object at the event's peak: red the frame itself does not have.
        def red(image):
            image = image.astype(int)
            return int(((image[..., 2] > 150) & (image[..., 1] < 90) & (image[..., 0] < 90)).sum())

        assert red(frames[event.peak_frame - first]) > red(source.read(event.peak_frame).image) + 20
        assert f'src="clips/{event.id}.mp4"' in page
