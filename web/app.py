"""``anomalens serve``: the event history in the browser (FastAPI, pages rendered on the server with Jinja2).

Pages: the timeline of events across videos with filters, an event page (keyframe with boxes and heat map, the
score plot, every claim with its verdict and evidence, the review that proposes a rule change), chat over the
history, and the progress of audits started from the app. Every request passes the token check when a token is
set, which ``serve`` insists on for any address but the loopback one.

Pages are rendered with autoescaping: captions, rule sentences and claims are shown as text, never as markup; the
few scripts set text with ``textContent``.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import cv2
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as InPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError, field_validator

from anomalens.agents.history import HistoryChat
from anomalens.agents.llm import LLM
from anomalens.errors import AnomalensError, MediaError
from anomalens.pipelines.history import accept, finish_changes, review, save_zones, scene_zones
from anomalens.progress import observed
from anomalens.report import clip_file, keyframe_file, raw_frame
from anomalens.store import MAX_ID, EventFilter, EventStore, plain_text
from anomalens.types import EVENT_ID_PATTERN, Zone
from anomalens.video import FrameSource, split_part
from anomalens.web.plots import score_svg

TOKEN_COOKIE = "anomalens_token"
JOB_REPORT_EVERY_S = 0.5  # a running audit writes its progress to the store at most this often
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN_LENGTH = 16  # shorter tokens are guessed: 16 URL-safe characters are 96 bits
# Every answer: never inside another site's frame (clickjacking), never sniffed as another type, and the address
# (which may carry the token) never sent to another site.
GUARD_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# A larger number names nothing the store could hold (and SQLite cannot take it).
StoreId = Annotated[int, InPath(ge=0, le=MAX_ID)]
VideoId = Annotated[int | None, Query(ge=0, le=MAX_ID)]


class ReviewIn(BaseModel):
    verdict: Literal["false alarm", "confirmed"]
    note: str = Field(default="", max_length=2000)


class AcceptIn(BaseModel):
    based_on: str = Field(min_length=1, max_length=64)


class ZonesIn(BaseModel):
    zones: list[Zone] = Field(max_length=50)
    forbidden: list[str] = Field(default_factory=list)
    based_on: str = Field(min_length=1, max_length=64)
    frame_width_m: float | None = Field(default=None, gt=0, le=100_000)  # the person's scale, if any


class ChatIn(BaseModel):
    question: str = Field(min_length=1, max_length=2000)
    session: str = Field(default="app", pattern=r"^[A-Za-z0-9_-]{1,64}$")


class AuditIn(BaseModel):
    video: str = Field(min_length=1, max_length=4096)
    scene: str = Field(min_length=1, max_length=4096)
    explainer: Literal["auto", "agent", "deterministic"] = "auto"

    _plain = field_validator("video", "scene")(plain_text)


def create_app(
    store: EventStore, *, token: str | None = None, llm: LLM | None = None, hosts: Sequence[str] = LOOPBACK
) -> FastAPI:
    """The app over ``store``; ``token``: required on every request when given (at least ``MIN_TOKEN_LENGTH``
    characters); ``llm``: reads the chat questions that the router's words do not settle; ``hosts``: the names the
    server answers to (the loopback names, its address and those configured): a request for any other name is a
    web page that rebound its own name to this server (DNS rebinding) and is refused, token or not."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise AnomalensError(f"the token is {len(token)} characters long: give one of at least {MIN_TOKEN_LENGTH}")
    allowed = {h.strip("[]").lower() for h in hosts}
    app = FastAPI(title="anomalens", docs_url=None, redoc_url=None, openapi_url=None)
    pages = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    chat = HistoryChat(store, llm)
    store.interrupt_orphans()  # an audit that was running when its server stopped will not finish
    finish_changes(store)  # a rule change a kill cut short: completed or undone

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = _refused(request, allowed, token) or await call_next(request)
        if token is not None and request.query_params.get("token") and response.status_code < 400:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.update(GUARD_HEADERS)
        return response

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return pages.TemplateResponse(request, name, context)

    def found_event(event_id: int) -> dict:
        event = store.event(event_id)
        if event is None:
            raise HTTPException(404, f"event {event_id} is not in the event store")
        return event

    @app.exception_handler(AnomalensError)
    async def said(request: Request, error: AnomalensError):
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": _first_problem(error.errors())}, status_code=422)  # never the input echoed

    @app.get("/", response_class=HTMLResponse)
    def timeline(
        request: Request, video: VideoId = None, since: str = "", until: str = "", rule: str = "",
        object_class: str = "", verdict: str = "", words: str = "", show: str = "open",
    ):
        where = _filter(
            video=video, since=since or None, until=until or None, rule=rule or None, object_class=object_class or None,
            verdict=verdict or None, words=words or None, silenced=None if show == "all" else (show == "silenced"),
        )  # fmt: skip
        return page(
            request, "timeline.html", events=store.events(where), where=where, show=show, videos=store.videos(),
            rules=store.rule_ids(), classes=store.classes(),
        )

    @app.get("/events/{event_id}", response_class=HTMLResponse)
    def event_page(request: Request, event_id: StoreId):
        event = found_event(event_id)
        event["keyframe"] = _keyframe_bytes(event) is not None  # moved, deleted, or not the report's own: none shown
        event["clip"] = _report_file(event, clip_file) is not None
        video = store.video(event["video_id"])
        plot = score_svg(video["scores"], video["threshold"], video["fps"], event)
        return page(request, "event.html", event=event, video=video, plot=plot, broken=_by_rule(event["facts"]))

    @app.get("/keyframes/{event_id}")
    def keyframe(event_id: StoreId):
        picture = _keyframe_bytes(found_event(event_id))
        if picture is None:
            raise HTTPException(404, f"event {event_id} has no keyframe picture")
        return Response(picture, media_type="image/jpeg")

    @app.get("/clips/{event_id}")
    def clip(event_id: StoreId):
        video = _report_file(found_event(event_id), clip_file)
        if video is None:
            raise HTTPException(404, f"event {event_id} has no clip")
        return Response(video, media_type="video/mp4")

    @app.post("/api/events/{event_id}/review")
    def give_review(event_id: StoreId, given: ReviewIn):
        found_event(event_id)
        store.review(event_id, given.verdict, given.note)
        if given.verdict == "confirmed":
            return {"verdict": given.verdict, "proposal": None, "why_not": ""}
        seen = review(store, event_id)
        proposal = None
        if seen.proposal is not None:
            proposal = {
                "changes": [c.said for c in seen.proposal.changes], "diff": seen.proposal.diff,
                "based_on": seen.based_on, "rules_file": str(seen.rules_file),
                "unchanged": seen.proposal.unchanged,
            }
        return {"verdict": given.verdict, "proposal": proposal, "why_not": seen.why_not}

    @app.post("/api/events/{event_id}/accept")
    def accept_change(event_id: StoreId, given: AcceptIn):
        found_event(event_id)
        done = accept(store, event_id, given.based_on)

        def brief(e: dict) -> dict:
            return {"id": e["id"], "key": e["key"], "title": e["title"], "at": e["at"]}

        return {
            "version": done.version, "kept_as": str(done.kept_as), "silenced": [brief(e) for e in done.silenced],
            "still_raised": [brief(e) for e in done.still_raised],
        }

    @app.get("/videos/{video_id}/zones", response_class=HTMLResponse)
    def zones_page(request: Request, video_id: StoreId):
        zones = scene_zones(store, video_id)
        forbidden = [r.predicate.value for r in zones.rulebook.rules if r.origin == "zone" and r.enabled]
        drawn = [z.model_dump() for z in zones.rulebook.zones]
        return page(request, "zones.html", video=store.video(video_id), zones=zones, drawn=drawn, forbidden=forbidden)

    @app.get("/videos/{video_id}/frame.jpg")
    def scene_frame(video_id: StoreId):
        """A frame of the video to draw zones on: the raw half of its first keyframe."""
        pictures = (_keyframe_bytes(e) for e in store.events(EventFilter(video=video_id)))
        picture = next((p for p in pictures if p is not None), None)
        image = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR) if picture else None
        if image is None:
            raise HTTPException(404, f"video {video_id} has no keyframe to draw zones on")
        ok, jpeg = cv2.imencode(".jpg", raw_frame(image))
        return Response(jpeg.tobytes(), media_type="image/jpeg")

    @app.post("/api/videos/{video_id}/zones")
    def put_zones(video_id: StoreId, given: ZonesIn):
        video = store.video(video_id)
        scale = given.frame_width_m / video["width"] if given.frame_width_m and video is not None else None
        version, based_on = save_zones(store, video_id, given.zones, set(given.forbidden), given.based_on, scale)
        return {"version": version, "based_on": based_on}

    @app.get("/api/events")
    def events_json(
        video: VideoId = None, since: str | None = None, until: str | None = None, rule: str | None = None,
        object_class: str | None = None, words: str | None = None,
    ):
        where = _filter(video=video, since=since, until=until, rule=rule, object_class=object_class, words=words)
        return [{k: v for k, v in e.items() if k != "facts"} for e in store.events(where)]

    @app.get("/chat", response_class=HTMLResponse)
    def chat_page(request: Request, session: str = "app"):
        return page(request, "chat.html", session=session, answers=store.answers(session))

    @app.post("/api/chat")
    def ask(given: ChatIn):
        return chat.ask(given.question, session=given.session).model_dump()

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request):
        return page(request, "jobs.html", jobs=store.jobs())

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: StoreId):
        job = store.job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        return page(request, "job.html", job=job)

    @app.get("/api/jobs/{job_id}")
    def job_json(job_id: StoreId):
        job = store.job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        return job

    @app.post("/api/jobs")
    def start_audit(given: AuditIn):
        for path, what in ((given.video, "video"), (given.scene, "scene folder")):
            try:
                found = split_part(path)[0].exists()  # a video may be a part of one: VIDEO@START-END
            except (OSError, ValueError) as error:  # a name too long for the file system, a NUL in it
                raise HTTPException(422, f"{what}: not a usable path ({getattr(error, 'strerror', None) or error})") from None
            except MediaError as error:
                raise HTTPException(422, str(error)) from None
            if not found:
                raise HTTPException(422, f"{path}: {what} not found")
        try:  # the part asked for lies in the video
            FrameSource(given.video)
        except MediaError as error:
            raise HTTPException(422, str(error)) from None
        job_id = store.add_job("audit", given.model_dump())
        threading.Thread(target=_run_audit, args=(store, job_id, given), daemon=True, name=f"job-{job_id}").start()
        return {"id": job_id}

    @app.get("/favicon.ico")
    def no_icon():  # browsers ask for one; an empty answer keeps the server's log clean
        return Response(status_code=204)

    return app


def _first_problem(errors: Sequence[dict]) -> str:
    """One reason for a request that does not validate: where, and what is wrong (never the input: a NaN or a
    100,000-character value is no help, and JSON cannot carry a NaN back)."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path"))
    return f"{where}: {first['msg']}" if where else first["msg"]


def _filter(**given) -> EventFilter:
    try:
        return EventFilter(**given)
    except ValidationError as error:
        raise HTTPException(422, f"filter: {_first_problem(error.errors())}") from None


def _refused(request: Request, allowed: set[str], token: str | None) -> Response | None:
    """Why ``request`` is refused, or None: a Host or Origin the server does not answer to (403), or no token where
    one is needed (401)."""
    host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
    if host not in allowed:
        return PlainTextResponse(f"this server does not answer to the name {host[:100]!r}: serve it with "
                                 "--allow-host NAME to use that name", status_code=403)  # fmt: skip
    origin = request.headers.get("origin")
    if origin not in (None, "null") and (urlsplit(origin).hostname or "") not in allowed:
        return PlainTextResponse(f"requests from pages of {origin[:100]!r} are refused", status_code=403)
    if token is None:
        return None
    given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        given = bearer[7:]
    if not hmac.compare_digest(given.encode(), token.encode()):
        return PlainTextResponse("a token is needed: open the address `anomalens serve` printed", status_code=401)
    return None


def _keyframe_bytes(event: dict) -> bytes | None:
    """The event's keyframe picture (``_report_file``), or None."""
    return _report_file(event, keyframe_file)


def _report_file(event: dict, where: Callable[[Path, str], Path]) -> bytes | None:
    """A file of the event (its keyframe picture, its clip: ``where(report folder, event id)``), read only from the
    report that was indexed: its path is rebuilt from the report's (resolved when indexed) folder and the event's
    id, never taken from the store, and is refused when a link lies on the way (a report folder moved behind a
    symlink, a file linked elsewhere), also one planted after indexing. None when there is no such file."""
    key = event["key"]
    if not re.fullmatch(EVENT_ID_PATTERN, key):
        return None
    folder = Path(event["report"]).parent
    picture = where(folder, key)
    try:
        if folder.resolve(strict=True) != folder or picture.parent.is_symlink():
            return None
        handle = os.open(picture, os.O_RDONLY | os.O_NOFOLLOW)  # a symlink fails here, at the moment of reading
    except OSError:
        return None
    with os.fdopen(handle, "rb") as file:
        return file.read() if stat.S_ISREG(os.fstat(file.fileno()).st_mode) else None


def _by_rule(breaches: list[dict]) -> list[dict]:
    """An event's breaches, one row per rule: the frames and tracks that broke it and the first one's facts."""
    rows: dict[str, dict] = {}
    for breach in breaches:
        first = {"rule": breach["rule"], "frames": [], "tracks": [], "first": breach["facts"]}
        row = rows.setdefault(breach["rule"], first)
        row["frames"].append(breach["frame"])
        if breach["track"] is not None and breach["track"] not in row["tracks"]:
            row["tracks"].append(breach["track"])
    return list(rows.values())


def _run_audit(store: EventStore, job_id: int, given: AuditIn) -> None:
    """An audit started from the app, its progress written to the store so that any page (or a reload) shows it."""
    from anomalens.pipelines import audit

    last = 0.0

    def report(description: str, done: int, total: int | None) -> None:
        nonlocal last
        if time.monotonic() - last >= JOB_REPORT_EVERY_S or done == total:
            last = time.monotonic()
            store.update_job(job_id, step=description, done=done, total=total)

    store.update_job(job_id, state="running")
    out = store.folder / "audits" / f"job-{job_id}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    try:
        with observed(report):
            result = audit(given.video, given.scene, out=out, explainer=given.explainer, store=store, progress=False)
    except AnomalensError as error:
        store.update_job(job_id, state="failed", result=str(error))
    except Exception as error:  # a bug: kept for the page, with where it happened for the server's log
        traceback.print_exc()
        store.update_job(job_id, state="failed", result=f"unexpected {type(error).__name__}: {error} (a bug)")
    else:
        store.update_job(job_id, state="done", result=str(result.files[1]) if result.files else "")
