"""Chat over a video, assembled: the video's index (screened once, cached by content) and a session with the
agent over it.

Without a scene, the video's own dominant behaviour is learned as normal (self-referenced normality); that
takes two passes over the video, one to learn and one to screen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from anomalens.agents.chat import ChatSession, check_sessions_database, checked_session_id
from anomalens.agents.index import INDEX_FORMAT, VideoIndex
from anomalens.agents.llm import open_llm
from anomalens.config import Settings, load_settings
from anomalens.errors import MediaError
from anomalens.pipelines.audit import foundation_tools, index_video, screen_video
from anomalens.pipelines.captions import sentence_embedder
from anomalens.pipelines.scene import self_referenced_scene
from anomalens.progress import say
from anomalens.store import EventStore
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.coco import ClassNamer
from anomalens.tools.scene import Scene
from anomalens.video import split_part


def video_index(
    video: str | Path,
    *,
    scene_dir: str | Path | None = None,
    captions: str | Path | None = None,
    cache_dir: str | Path,
    fps: float | None = None,
    progress: bool = True,
) -> VideoIndex:
    """The index of ``video``: read from ``cache_dir`` when this video (same bytes on disk), scene and
    captions were indexed before by this version of the index format, else built by screening it once (every
    frame's compact evidence kept)."""
    media, wanted = split_part(video)
    key = hashlib.sha1(f"format={INDEX_FORMAT}|fps={fps}|part={wanted}".encode())
    for file in (media, Path(scene_dir) / "rules.yaml" if scene_dir else None, Path(captions) if captions else None):
        if file is None:
            continue
        if not file.exists():
            raise MediaError(file, "not found")
        stat = file.stat()  # an edited rulebook or caption file, or a replaced video, means a new index
        key.update(f"|{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    cached = Path(cache_dir) / f"index-{key.hexdigest()[:16]}.json"
    if cached.is_file():
        return VideoIndex.load(cached)
    replayed = ReplayedCaptions.load(captions) if captions else None  # read before screening: bad ones fail fast
    if scene_dir:
        scene = Scene.load(scene_dir)
    else:
        scene = self_referenced_scene(video, fps=fps, progress=progress)
    source = scene.open(video, fps=fps)
    if replayed is not None and (problem := replayed.mismatch(source.declared_frames)):
        say(f"warning: {problem}")
    screened = screen_video(source, scene, self_referenced=not scene_dir, progress=progress)
    index = index_video(screened, scene, captions=captions, every_frame=True)
    index.save(cached)
    return index


def chat(
    video: str | Path,
    *,
    scene: str | Path | None = None,
    captions: str | Path | None = None,
    session: str | None = None,
    fps: float | None = None,
    settings: Settings | None = None,
    progress: bool = True,
) -> ChatSession:
    """A conversation about ``video`` with the configured LLM: ``session.ask("...")`` answers with verified
    claims. The video is indexed once (cached in the chat folder); ``session`` resumes an earlier conversation
    kept there. ``scene``: a scene folder (default: learn the video's own normality)."""
    settings = settings or load_settings()
    if session is not None:  # checked before the video is indexed
        checked_session_id(session)
    check_sessions_database(settings.chat_dir / "sessions.sqlite")
    index = video_index(video, scene_dir=scene, captions=captions, cache_dir=settings.chat_dir, fps=fps,
                        progress=progress)  # fmt: skip
    llm = open_llm(settings=settings)
    tools = foundation_tools(progress)
    namer = ClassNamer(sentence_embedder(settings))  # the encoder loads at the first word the vocabulary lacks
    return ChatSession(index, llm, settings.chat_dir / "sessions.sqlite", session, perception=tools, namer=namer,
                       store=EventStore(settings.store_dir))  # fmt: skip
