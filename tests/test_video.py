import os
import tracemalloc
import warnings

import cv2
import numpy as np
import pytest

from anomalens.errors import MediaError, MediaWarning
from anomalens.video import FrameSource

N = 30
CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def level(i: int) -> int:
    return 8 * i  # every frame is uniform grey at this level, so its index can be read back


def write_video(path, n=N, size=(64, 48), fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CODECS[path.suffix]), fps, size)
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), level(i), np.uint8))
    writer.release()
    return path


def index_of(frame) -> int:
    return round(float(frame.image.mean()) / 8)


@pytest.mark.parametrize("suffix", sorted(CODECS))
def test_video_formats_stream_every_frame_in_order(tmp_path, suffix):
    source = FrameSource(write_video(tmp_path / f"v{suffix}"))
    frames = list(source)
    assert source.is_video and source.fps == pytest.approx(10.0) and source.source_size == (64, 48)
    assert len(source) == len(frames) == N
    assert [f.index for f in frames] == list(range(N))
    assert [index_of(f) for f in frames] == list(range(N))
    assert frames[3].time_s == pytest.approx(0.3)


def test_stride_target_fps_and_range(tmp_path):
    path = write_video(tmp_path / "v.avi")
    strided = list(FrameSource(path, stride=4))
    assert [f.index for f in strided] == list(range(0, N, 4))
    assert [index_of(f) for f in strided] == list(range(0, N, 4))
    assert FrameSource(path, target_fps=2.5).stride == 4
    ranged = FrameSource(path, start=11, stop=17, stride=2)
    frames = list(ranged)
    assert [f.index for f in frames] == [11, 13, 15] == [index_of(f) for f in frames]
    assert len(ranged) == 3
    assert index_of(FrameSource(path).read(22)) == 22
    with pytest.raises(ValueError, match="not both"):
        FrameSource(path, stride=2, target_fps=5)


def test_downscale_keeps_scale_and_maps_boxes_back(tmp_path):
    image = np.zeros((480, 640, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), image)
    frame = next(iter(FrameSource(tmp_path / "big.png", max_side=320)))
    assert frame.image.shape == (240, 320, 3) and frame.scale == pytest.approx(0.5)
    assert frame.source_size == (640, 480)
    np.testing.assert_allclose(frame.to_source(np.array([[10, 20, 330, 250]])), [[20, 40, 640, 480]])
    small = next(iter(FrameSource(tmp_path / "big.png", max_side=1000)))
    assert small.scale == 1.0 and small.image.shape == (480, 640, 3)


def test_folder_is_read_in_natural_order_with_mixed_formats(tmp_path):
    names = ["frame10.png", "frame2.jpg", "frame1.tif", "frame3.bmp", "notes.txt"]
    for i, name in enumerate(names):
        path = tmp_path / name
        if name.endswith(".txt"):
            path.write_text("not an image")
        else:
            cv2.imwrite(str(path), np.full((8, 8, 3), 10 * i, np.uint8))
    source = FrameSource(tmp_path, fps=5)
    frames = list(source)
    assert [os.path.basename(f.path) for f in frames] == ["frame1.tif", "frame2.jpg", "frame3.bmp", "frame10.png"]
    assert frames[1].time_s == pytest.approx(0.2)
    images = FrameSource([tmp_path / "frame3.bmp", tmp_path / "frame1.tif"])
    assert [os.path.basename(f.path) for f in images] == ["frame3.bmp", "frame1.tif"]
    assert len(list(FrameSource(tmp_path / "frame2.jpg"))) == 1


def test_bad_inputs_get_one_clear_error_naming_the_file(tmp_path):
    cases = {}
    cases[tmp_path / "missing.mp4"] = "no such file"
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases[tmp_path / "empty.mp4"] = "empty (0 bytes)"
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    cases[tmp_path / "noise.mp4"] = "corrupt file or unsupported codec"
    (tmp_path / "notes.txt").write_text("hello")
    cases[tmp_path / "notes.txt"] = "unsupported file type '.txt'"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    cases[tmp_path / "broken.png"] = "cannot be decoded as an image"
    (tmp_path / "nothing").mkdir()
    cases[tmp_path / "nothing"] = "folder contains no images"
    full = write_video(tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(full[: len(full) // 2])  # index (moov) is at the end: unreadable
    cases[tmp_path / "cut.mp4"] = "corrupt file or unsupported codec"
    for path, problem in cases.items():
        with pytest.raises(MediaError) as info:
            FrameSource(path)
        assert str(info.value).startswith(str(path)) and problem in str(info.value), str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(MediaError, match="only images"):
        FrameSource([tmp_path / "full.mp4"])
    with pytest.raises(MediaError, match="outside 0..29"):
        FrameSource(tmp_path / "full.mp4").read(30)


def test_truncated_video_keeps_what_decodes_and_warns(tmp_path):
    full = write_video(tmp_path / "full.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full[: len(full) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(FrameSource(cut))
    assert 0 < len(frames) < N
    assert [index_of(f) for f in frames] == list(range(len(frames)))
    messages = [str(w.message) for w in caught if issubclass(w.category, MediaWarning)]
    assert len(messages) == 1 and str(cut) in messages[0] and "truncated or corrupt" in messages[0]


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = write_video(tmp_path / "locked.avi")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail the way it does for other users
        real_open = type(path).open

        def denied(self, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(type(path), "open", denied)
    with pytest.raises(MediaError, match="permission denied"):
        FrameSource(path)


def test_streaming_memory_is_bounded(tmp_path):
    size = (320, 240)
    path = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(300):
        writer.write(np.full((size[1], size[0], 3), i % 256, np.uint8))
    writer.release()
    frame_bytes = size[0] * size[1] * 3
    tracemalloc.start()
    count = sum(1 for _ in FrameSource(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 300
    assert peak < 10 * frame_bytes, f"peak {peak} bytes for {count} frames of {frame_bytes} bytes"


@pytest.mark.data
def test_reads_ucsd_ped2_test_video(shared_data):
    import json

    labels = json.loads((shared_data / "ucsd_ped2" / "labels.json").read_text())
    source = FrameSource(shared_data / "ucsd_ped2" / "test" / "01")
    frames = list(source)
    assert len(frames) == len(labels["01"]) == len(source)
    assert frames[0].source_size == (360, 240)
    assert os.path.basename(frames[10].path).startswith("010")


def test_a_part_of_a_video_is_read_from_its_start_with_the_videos_own_times(tmp_path, monkeypatch):
    """``VIDEO@START-END`` (seconds, m:ss, h:mm:ss): the frames of that part, numbered and timed as in the whole
    video, reached by seeking: no frame before the part is decoded."""
    import anomalens.video as video

    path = write_video(tmp_path / "v.avi")  # 30 frames at 10 fps: 3 s
    decoded = []
    opened = video._open_video

    def counting(path):
        capture = opened(path)

        class Counted:
            def __getattr__(self, name):
                return getattr(capture, name)

            def read(self):
                ok, image = capture.read()
                decoded.extend(["read"] if ok else [])
                return ok, image

            def grab(self):
                decoded.append("grab")
                return capture.grab()

        return Counted()

    monkeypatch.setattr(video, "_open_video", counting)
    for spec, first, last in ((f"{path}@1-2.5", 10, 24), (f"{path}@0:01.5-", 15, 29), (f"{path}@-0:00:01", 0, 9)):
        decoded.clear()
        source = FrameSource(spec)
        frames = list(source)
        assert [f.index for f in frames] == [index_of(f) for f in frames] == list(range(first, last + 1)), spec
        assert frames[0].time_s == pytest.approx(first / 10) and source.name == spec
        assert decoded.count("read") == len(frames) + 1 and "grab" not in decoded  # 1: the probe reads the first frame
    assert FrameSource(f"{path}@1-2").identity() != FrameSource(f"{path}@1-2.5").identity()  # resume tells them apart
    copy = tmp_path / "elsewhere" / "copy.avi"  # the same footage under another name is the same source...
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert FrameSource(copy).identity() == FrameSource(path).identity()
    edited = bytearray(copy.read_bytes())  # ...and one byte changed is another
    edited[len(edited) // 2] ^= 1
    copy.write_bytes(bytes(edited))
    assert FrameSource(copy).identity() != FrameSource(path).identity()
    odd = tmp_path / "odd@1-2.avi"  # a file named so is that file
    write_video(odd)
    assert len(FrameSource(odd)) == N


@pytest.mark.parametrize(
    "part, said",
    [
        ("@2-1", "the part ends (0:01) before it starts (0:02)"),
        ("@0:05-", "the part reaches 0:05, past the end of the input (0:03)"),
        ("@1-4", "the part reaches 0:04, past the end of the input (0:03)"),
        ("@1::2-2", "'1::2' is not a time"),
    ],
)
def test_a_bad_part_is_one_line_naming_the_input(tmp_path, part, said):
    path = write_video(tmp_path / "v.avi")
    with pytest.raises(MediaError) as raised:
        FrameSource(f"{path}{part}")
    message = str(raised.value)
    assert message.startswith(f"{path}{part}: ") and said in message and "\n" not in message
