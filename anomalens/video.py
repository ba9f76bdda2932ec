"""One streaming frame reader over video files, frame folders, single images and lists of images.

Frames are decoded one at a time (bounded memory whatever the length of the input), optionally
subsampled (``stride`` or ``target_fps``), restricted to a frame range, and downscaled so that their
longer side is at most ``max_side``; each ``Frame`` keeps the ``scale`` that maps analysis pixels back to
source pixels (``source = analysis / scale``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np

from anomalens.errors import MediaError, MediaWarning
from anomalens.progress import say

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own stderr chatter; we raise clear errors
import cv2  # noqa: E402

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DEFAULT_IMAGE_FPS = 25.0
T = TypeVar("T")


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    ``image`` is ``(h, w, 3)`` uint8 BGR at analysis resolution; ``scale`` is analysis pixels per source
    pixel (1.0 when not downscaled); ``source_size`` is the source frame's ``(width, height)``.
    """

    index: int
    time_s: float
    image: np.ndarray
    scale: float
    source_size: tuple[int, int]
    path: str | None = None

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``(N, 4)`` xyxy boxes from analysis pixels to source pixels, clipped to the frame."""
        out = np.asarray(boxes, dtype=np.float64) / self.scale
        width, height = self.source_size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out


def natural_key(path: Path) -> list:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _open_video(path: Path) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` of ``path``, quietly: OpenCV's own AVI parser writes a damaged file's parse errors
    straight to file descriptor 2, past FFmpeg's log level; the caller's MediaError says what matters."""
    sys.stderr.flush()
    kept = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        return cv2.VideoCapture(str(path))
    finally:
        os.dup2(kept, 2)
        os.close(kept)


def _scaled(width: int, height: int, max_side: int | None) -> tuple[float, tuple[int, int]]:
    """The scale and the (width, height) at which a ``width`` x ``height`` frame is analysed."""
    if max_side is None or max(width, height) <= max_side:
        return 1.0, (width, height)
    scale = max_side / max(width, height)
    return scale, (max(1, round(width * scale)), max(1, round(height * scale)))


def _analysis_frame(index: int, fps: float, image: np.ndarray, max_side: int | None, path: Path | None) -> Frame:
    height, width = image.shape[:2]
    scale, size = _scaled(width, height, max_side)
    if scale != 1.0:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return Frame(index, index / fps, image, scale, (width, height), None if path is None else str(path))


# A part of a video input: VIDEO@START-END, times as seconds, m:ss or h:mm:ss; either end may be left out.
_PART = re.compile(r"^(?P<path>.+)@(?P<start>[0-9:.]*)-(?P<end>[0-9:.]*)$")
_CLOCK = re.compile(r"^(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+(?:\.\d*)?)$")
PART_SYNTAX = "VIDEO@START-END, e.g. walk.mp4@0:40-1:20 (seconds, m:ss or h:mm:ss; either end may be left out)"


@dataclass(frozen=True)
class Part:
    """The seconds of an input wanted (``end_s`` None: to its end)."""

    start_s: float = 0.0
    end_s: float | None = None

    def __str__(self) -> str:
        return f"{clock(self.start_s)}-{clock(self.end_s) if self.end_s is not None else ''}"


def clock(seconds: float) -> str:
    """``seconds`` as m:ss (h:mm:ss from an hour on), tenths kept when there are any."""
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:04.1f}" if rest != int(rest) else f"{int(rest):02d}"
    return f"{hours}:{minutes:02d}:{text}" if hours else f"{minutes}:{text}"


def split_part(spec: str | os.PathLike) -> tuple[Path, Part | None]:
    """An input and the part of it wanted: ``walk.mp4@0:40-1:20`` is seconds 40 to 80 of ``walk.mp4``. A path that
    exists as written is that path, ``@`` and all."""
    text = os.fspath(spec)
    found = _PART.match(text)
    if found is None or Path(text).exists():
        return Path(text), None

    def seconds(value: str) -> float | None:
        if not value:
            return None
        if (parts := _CLOCK.match(value)) is None:
            raise MediaError(text, f"{value!r} is not a time: give {PART_SYNTAX}")
        return 3600 * int(parts["h"] or 0) + 60 * int(parts["m"] or 0) + float(parts["s"])

    start, end = seconds(found["start"]), seconds(found["end"])
    if start is not None and end is not None and end <= start:
        raise MediaError(text, f"the part ends ({clock(end)}) before it starts ({clock(start)})")
    return Path(found["path"]), Part(start or 0.0, end)


SAMPLE_BYTES = 4 << 20  # a large file is known by its size and three samples of this many bytes


def media_digest(files: Sequence[Path]) -> str:
    """A sha256 of the media's content, whatever their names: each file's size and bytes (of a file larger than
    three samples, its first, middle and last ``SAMPLE_BYTES``: a video is known in milliseconds, not read
    whole)."""
    hashed = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        hashed.update(f"{size}\0".encode())
        with path.open("rb") as stream:
            if size <= 3 * SAMPLE_BYTES:
                hashed.update(stream.read())
                continue
            for offset in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
                stream.seek(offset)
                hashed.update(stream.read(SAMPLE_BYTES))
    return hashed.hexdigest()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise MediaError(path, "no such file or folder")
    if path.is_dir():
        return
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except PermissionError:
        raise MediaError(path, "permission denied (cannot read the file)") from None
    except OSError as error:
        raise MediaError(path, f"cannot be read ({error.strerror or error})") from None
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")


class FrameSource:
    """Frames from ``inputs``: a video file, a folder of images, one image, or a list of images.

    Args:
        inputs: path or list of image paths. Folders are read in natural order.
        stride: keep every ``stride``-th frame. Not combinable with ``target_fps``.
        target_fps: keep frames at about this rate (``stride = round(fps / target_fps)``).
        max_side: downscale so the longer side is at most this many pixels (never upscales).
        start, stop: source frame range ``[start, stop)``; the video is seeked, not decoded from 0.
        fps: frame rate of image inputs, and of videos whose header states none (others report their own).
        default_fps: the rate assumed when neither the input nor ``fps`` gives one (``fps_note`` says so).
    """

    def __init__(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        stride: int | None = None,
        target_fps: float | None = None,
        max_side: int | None = None,
        start: int = 0,
        stop: int | None = None,
        fps: float | None = None,
        default_fps: float = DEFAULT_IMAGE_FPS,
    ):
        if stride is not None and target_fps is not None:
            raise ValueError("give stride or target_fps, not both")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {target_fps}")
        if max_side is not None and max_side < 16:
            raise ValueError(f"max_side must be >= 16 pixels, got {max_side}")
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"invalid frame range [{start}, {stop})")
        self.max_side = max_side
        self.start, self.stop = start, stop
        self._images: list[Path] | None = None
        self._video: Path | None = None

        part = None
        if isinstance(inputs, (str, os.PathLike)):
            path, part = split_part(inputs)
            if part is not None and (start or stop is not None):
                raise ValueError("give a part of the input (VIDEO@START-END) or a frame range, not both")
            _check_readable(path)
            if path.is_dir():
                self._images = self._folder_images(path)
                self.name = os.fspath(inputs)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                self._images = [path]
                self.name = os.fspath(inputs)
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                self._video = path
                self.name = os.fspath(inputs)
            else:
                raise MediaError(
                    path,
                    f"unsupported file type '{path.suffix or '(none)'}' "
                    f"(videos: {' '.join(VIDEO_SUFFIXES)}; images: {' '.join(IMAGE_SUFFIXES)})",
                )
        else:
            paths = [Path(p) for p in inputs]
            if not paths:
                raise MediaError("<image list>", "the list of images is empty")
            for p in paths:
                _check_readable(p)
                if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
                    raise MediaError(p, f"a list of inputs may hold only images ({' '.join(IMAGE_SUFFIXES)})")
            self._images = paths
            self.name = f"{paths[0]} (+{len(paths) - 1} images)"

        stated = None  # the rate the input itself states: a video's header, never an image
        if self._video is not None:
            stated, self.declared_frames, self.source_size = self._probe_video(self._video)
        else:
            self.declared_frames = len(self._images)
            self.source_size = self._probe_image(self._images[0])
        self.fps = float(stated or fps or default_fps)
        self.fps_note = None  # said aloud and in reports: every time in seconds rests on the rate
        if not stated and not fps:
            what = "the video's header" if self._video is not None else "an image input"
            self.fps_note = f"{self.fps:g} frames/s assumed: {what} states no frame rate (give --fps if it differs)"
        self.stride = stride or (max(1, round(self.fps / target_fps)) if target_fps else 1)
        if part is not None:
            self.start, self.stop = self._frames_of(part)

    def _frames_of(self, part: Part) -> tuple[int, int | None]:
        """The source frames ``[start, stop)`` of ``part``; a part past the input's end is an error (an end in the
        input's last second is its end: people give whole seconds)."""
        length = self.declared_frames / self.fps
        if part.start_s >= length or (part.end_s is not None and part.end_s >= length + 1):
            beyond = clock(part.start_s if part.start_s >= length else part.end_s)
            raise MediaError(self.name, f"the part reaches {beyond}, past the end of the input ({clock(length)})")
        return round(part.start_s * self.fps), None if part.end_s is None else round(part.end_s * self.fps)

    @staticmethod
    def _folder_images(folder: Path) -> list[Path]:
        images = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key
        )
        if not images:
            raise MediaError(folder, f"folder contains no images ({' '.join(IMAGE_SUFFIXES)})")
        return images

    @staticmethod
    def _probe_video(path: Path) -> tuple[float | None, int, tuple[int, int]]:
        capture = _open_video(path)
        try:
            if not capture.isOpened():
                raise MediaError(path, "cannot be decoded: corrupt file or unsupported codec")
            ok, image = capture.read()
            if not ok or image is None:
                raise MediaError(path, "no decodable frames (0 frames)")
            fps = capture.get(cv2.CAP_PROP_FPS)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            return (fps if fps and fps > 0 else None), max(count, 1), (image.shape[1], image.shape[0])
        finally:
            capture.release()

    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise MediaError(path, "cannot be decoded as an image (corrupt or unsupported)")
        return image

    def _probe_image(self, path: Path) -> tuple[int, int]:
        image = self._read_image(path)
        return image.shape[1], image.shape[0]

    @property
    def is_video(self) -> bool:
        return self._video is not None

    @property
    def effective_fps(self) -> float:
        return self.fps / self.stride

    def _range(self) -> range:
        stop = self.declared_frames if self.stop is None else min(self.stop, self.declared_frames)
        return range(self.start, stop, self.stride)

    def identity(self) -> str:
        """What this source yields, as text to hash: its media's content (``media_digest``) and how it is read
        (stride, range, resolution, rate). Footage copied elsewhere, or written again byte for byte, is the same
        source; an edited file is not."""
        files = [self._video] if self._video is not None else self._images
        return json.dumps([media_digest(files), self.stride, self.start, self.stop, self.max_side, self.fps])

    def recorded(self) -> str | None:
        """When the footage began (ISO 8601), where the video's container says (its ``creation_time``, read with
        imageio-ffmpeg's ffmpeg when it is installed); None for frames, or a container that does not say."""
        if self._video is None:
            return None
        try:
            import imageio_ffmpeg
        except ImportError:
            return None
        described = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(self._video)], capture_output=True, text=True
        ).stderr  # ffmpeg describes its input on stderr (and complains that no output was given)
        found = re.search(r"^\s*creation_time\s*:\s*(\S+)", described, re.M)
        try:
            when = datetime.fromisoformat(found[1].replace("Z", "+00:00")) if found else None
        except ValueError:
            return None
        return when.isoformat(timespec="seconds") if when else None

    def __len__(self) -> int:
        """Frames this source will yield (from the container's frame count for videos)."""
        return len(self._range())

    @property
    def analysis_size(self) -> tuple[int, int]:
        """(width, height) of the frames yielded (the first frame's, for image inputs)."""
        return _scaled(*self.source_size, self.max_side)[1]

    def _frame(self, index: int, image: np.ndarray, path: Path | None) -> Frame:
        return _analysis_frame(index, self.fps, image, self.max_side, path)

    def __iter__(self) -> Iterator[Frame]:
        if self._images is not None:
            for index in self._range():
                path = self._images[index]
                yield self._frame(index, self._read_image(path), path)
            return
        yield from self._iter_video()

    def _iter_video(self) -> Iterator[Frame]:
        wanted = self._range()
        capture = _open_video(self._video)
        try:
            if self.start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            index = self.start
            # Read to the end rather than trusting the container's frame count, which can be low.
            while self.stop is None or index < self.stop:
                if (index - self.start) % self.stride:
                    if not capture.grab():
                        break
                else:
                    ok, image = capture.read()
                    if not ok or image is None:
                        break
                    yield self._frame(index, image, None)
                index += 1
            if index < wanted.stop:
                warnings.warn(
                    f"{self._video}: decoding stopped at frame {index} of {self.declared_frames} declared "
                    f"(truncated or corrupt); kept the {len(range(self.start, index, self.stride))} frames read",
                    MediaWarning,
                    stacklevel=2,
                )
        finally:
            capture.release()

    def between(self, start: int, stop: int) -> Iterator[Frame]:
        """The frames ``[start, stop)`` of the input, read (seeked, strided, scaled) as this source reads its own."""
        part = copy.copy(self)
        part.start, part.stop = start, stop
        return iter(part)

    def at_source_size(self) -> FrameSource:
        """The same frames at source resolution (where evidence boxes live), without probing the input again."""
        whole = copy.copy(self)
        whole.max_side = None
        return whole

    def read(self, index: int) -> Frame:
        """Decode the single source frame ``index`` (seeks; for keyframes and chat look-ups)."""
        if not 0 <= index < self.declared_frames:
            raise MediaError(self.name, f"frame {index} is outside 0..{self.declared_frames - 1}")
        if self._images is not None:
            path = self._images[index]
            return self._frame(index, self._read_image(path), path)
        capture = _open_video(self._video)
        try:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, image = capture.read()
        finally:
            capture.release()
        if not ok or image is None:
            raise MediaError(self._video, f"frame {index} cannot be decoded")
        return self._frame(index, image, None)


class FrameReader:
    """Random access to frames of one input at source resolution (where evidence boxes live), the last few
    kept: the live tools and the verifier look at the frames that claims cite."""

    def __init__(self, source: FrameSource, keep: int = 8):
        self.source = source.at_source_size()
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()
        self.keep = keep

    def __call__(self, frame_index: int) -> np.ndarray:
        if frame_index not in self._kept:
            self._kept[frame_index] = self.source.read(frame_index).image
            if len(self._kept) > self.keep:
                self._kept.popitem(last=False)
        return self._kept[frame_index]


STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)  # waits before each try to reopen a dropped stream, then the last


def patiently(attempt: Callable[[], T | None], waiting: Callable[[int, float], None],
              wait: Callable[[float], bool]) -> T | None:  # fmt: skip
    """What ``attempt()`` gives once it gives something, tried after each of the growing ``RECONNECT_SECONDS`` waits
    (the last one repeated; ``waiting(attempt, seconds)`` says each); None once ``wait(seconds)`` says stopped."""
    for tried in itertools.count():
        seconds = RECONNECT_SECONDS[min(tried, len(RECONNECT_SECONDS) - 1)]
        waiting(tried, seconds)
        if wait(seconds):
            return None
        if (got := attempt()) is not None:
            return got


def live_source(spec: str) -> bool:
    """Whether ``spec`` names a live source (a URL or a webcam), not a file."""
    return spec.startswith(STREAM_SCHEMES) or spec.isdigit() or spec.startswith("/dev/video")


class Stream:
    """Frames of a live source as they arrive, at ``max_side``: an RTSP/HTTP/... URL, a webcam (its number or
    ``/dev/videoN``), or a video file, played at its own frame rate with ``realtime`` (else as fast as it
    decodes). Each frame comes with its arrival time (``time.monotonic()``). A URL or webcam that drops is
    reopened after a growing wait, said each time, until ``stop`` is set; a file ends. Frames are numbered
    from 0 across reconnections. ``fps``: the rate of a live source (theirs are guesses) or of a file that
    states none; else ``default_fps``, said in ``fps_note``."""

    def __init__(
        self,
        spec: str,
        *,
        max_side: int | None = None,
        fps: float | None = None,
        default_fps: float = DEFAULT_IMAGE_FPS,
        realtime: bool = False,
        stop: threading.Event | None = None,
        say: Callable[[str], None] = say,
    ):
        self.spec, self.max_side, self.realtime, self.say = spec, max_side, realtime, say
        self.stop = stop
        self.live = live_source(spec)
        if not self.live:
            _check_readable(Path(spec))
        self.name = spec
        self.reconnects = 0
        self._capture = self._open()
        if self._capture is None:
            raise MediaError(spec, "cannot be opened (no stream there, or a codec OpenCV's FFmpeg lacks)")
        stated = self._capture.get(cv2.CAP_PROP_FPS)
        stated = stated if 0 < stated < 1000 and not self.live else None  # live streams state guesses (MJPEG: 25)
        self.fps = float(fps or stated or default_fps)
        self.fps_note = None if fps or stated else f"{self.fps:g} frames/s assumed: the source states none (--fps)"
        ok, self._first = self._capture.read()
        if not ok or self._first is None:
            raise MediaError(spec, "opened, but no frame could be decoded")
        self.source_size = (self._first.shape[1], self._first.shape[0])
        self.analysis_size = _scaled(*self.source_size, max_side)[1]

    @property
    def first_frame(self) -> Frame:
        """The frame the source opened with (it is also the first one iterated)."""
        return _analysis_frame(0, self.fps, self._first, self.max_side, None)

    def _open(self) -> cv2.VideoCapture | None:
        if self.spec.isdigit():
            capture = cv2.VideoCapture(int(self.spec))
        elif self.live:
            capture = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG)
        else:
            capture = _open_video(Path(self.spec))
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds``; True when stopped meanwhile."""
        if self.stop is None:
            time.sleep(seconds)
            return False
        return self.stop.wait(seconds)

    def _reopen(self) -> bool:
        """Reopen a dropped live source, waiting longer each time; False once stopped."""
        self._capture.release()

        def waiting(attempt: int, wait: float) -> None:
            said = "the stream dropped; reopening" if attempt == 0 else "still unreachable; trying again"
            self.say(f"{self.name}: {said} in {wait:g} s")

        capture = patiently(self._open, waiting, self._wait)
        if capture is None:
            return False
        self._capture, self.reconnects = capture, self.reconnects + 1
        self.say(f"{self.name}: reopened")
        return True

    def __iter__(self) -> Iterator[tuple[Frame, float]]:
        started = time.monotonic()
        index, image = 0, self._first
        try:
            while not self._stopped():
                if image is None:
                    ok, image = self._capture.read()
                    if not ok or image is None:
                        if not self.live or not self._reopen():
                            return
                        image = None
                        continue
                arrival = time.monotonic()
                if self.realtime and not self.live:  # a file plays at its own rate: the frame arrives on time
                    arrival = started + index / self.fps
                    if arrival > time.monotonic() and self._wait(arrival - time.monotonic()):
                        return
                yield _analysis_frame(index, self.fps, image, self.max_side, None), arrival
                index, image = index + 1, None
        finally:
            self._capture.release()
