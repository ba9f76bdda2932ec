"""Chat over a video, assembled: the video's index (screened once, or taken from an audit of the same footage;
cached under its fingerprint) and a session with the agent over it.

Without a scene, the video's own dominant behaviour is learned as normal (self-referenced normality); that
takes two passes over the video, one to learn and one to screen.
"""

from __future__ import annotations

from pathlib import Path

from anomalens.agents.chat import ChatSession, check_sessions_database, checked_session_id
from anomalens.agents.index import INDEX_FORMAT, VideoIndex
from anomalens.agents.llm import open_llm
from anomalens.config import Settings, load_settings
from anomalens.pipelines.audit import foundation_tools, screen_video
from anomalens.pipelines.audit_state import AuditState
from anomalens.pipelines.fingerprint import fingerprint
from anomalens.pipelines.captions import sentence_embedder
from anomalens.pipelines.scene import self_referenced_scene
from anomalens.progress import say
from anomalens.store import EventStore
from anomalens.tools.captions import ReplayedCaptions
from anomalens.tools.coco import ClassNamer
from anomalens.tools.scene import Scene
from anomalens.tools.screening import ScreeningResult
from anomalens.video import FrameReader, FrameSource


def video_index(
    video: str | Path,
    *,
    scene_dir: str | Path | None = None,
    captions: str | Path | None = None,
    cache_dir: str | Path,
    fps: float | None = None,
    store: EventStore | None = None,
    progress: bool = True,
) -> VideoIndex:
    """The index of ``video``, under the fingerprint of its footage, scene and captions
    (``pipelines.fingerprint``): read from ``cache_dir`` when it was indexed before; else built from the
    screening an audit of the same footage against the same scene kept (found through the event ``store``);
    else by screening it once (every frame's compact evidence kept)."""
    replayed = ReplayedCaptions.load(captions) if captions else None  # read before screening: bad ones fail fast
    scene = Scene.load(scene_dir) if scene_dir else None
    source = scene.open(video, fps=fps) if scene is not None else FrameSource(video, fps=fps)
    key = fingerprint(source, scene, captions=captions)
    cached = Path(cache_dir) / f"index-{INDEX_FORMAT}-{key[:16]}.json"
    if cached.is_file():
        return VideoIndex.load(cached)
    screening = _audited(store, key, progress) if scene is not None else None
    if screening is None:
        if scene is None:
            scene = self_referenced_scene(video, fps=fps, progress=progress)
            source = scene.open(video, fps=fps)
        if replayed is not None and (problem := replayed.mismatch(source.declared_frames)):
            say(f"warning: {problem}")
        screening = screen_video(source, scene, self_referenced=not scene_dir, progress=progress)
    index = VideoIndex.from_screening(screening, scene.rulebook, captions=captions, every_frame=True)
    index.save(cached)
    return index


def _audited(store: EventStore | None, key: str, progress: bool) -> ScreeningResult | None:
    """The screening an audit with fingerprint ``key`` kept beside its report, if the store knows one."""
    report = store.report_of(key) if store is not None else None
    if report is None or (screening := AuditState(report.parent, key).screening()) is None:
        return None
    say(f"reusing the screening of the audit in {report.parent}", progress)
    return screening


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
    store = EventStore(settings.store_dir)
    index = video_index(video, scene_dir=scene, captions=captions, cache_dir=settings.chat_dir, fps=fps, store=store,
                        progress=progress)  # fmt: skip
    llm = open_llm(settings=settings)
    tools = foundation_tools(progress)
    frames = FrameReader(FrameSource(video, fps=fps)) if tools.present else None
    namer = ClassNamer(sentence_embedder(settings))  # the encoder loads at the first word the vocabulary lacks
    return ChatSession(index, llm, settings.chat_dir / "sessions.sqlite", session, perception=tools, frames=frames,
                       namer=namer, store=store)  # fmt: skip
