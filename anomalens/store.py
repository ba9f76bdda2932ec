"""The event store: every audited video, its events, their claims and the reviews people gave them, in one SQLite
file (``events.sqlite`` under the settings' ``store_dir``), with no server to run.

SQLite (Python's own ``sqlite3``) because it is embedded, takes many readers beside one writer (WAL mode), and
every write here is one transaction: a kill leaves the store as it was before the write or after it, never
half. The schema's version is SQLite's ``user_version``; ``MIGRATIONS[k]`` takes a store from version ``k`` to
``k + 1``, so a store written by an older anomalens is brought up to date when it is opened.

Times: ``start_s``/``end_s`` are seconds into the video; ``at`` is the wall-clock time (ISO 8601, UTC) an event
started, the video's start time plus ``start_s``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from anomalens.errors import ConfigError

STORE_FILE = "events.sqlite"
MIGRATIONS = (
    """
    CREATE TABLE videos(
        id INTEGER PRIMARY KEY, report TEXT NOT NULL UNIQUE, input TEXT NOT NULL, title TEXT NOT NULL,
        scene TEXT, fps REAL NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, started TEXT NOT NULL,
        threshold REAL NOT NULL, scores TEXT NOT NULL, indexed TEXT NOT NULL);
    CREATE TABLE events(
        id INTEGER PRIMARY KEY, video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
        key TEXT NOT NULL, start_s REAL NOT NULL, end_s REAL NOT NULL, start_frame INTEGER NOT NULL,
        end_frame INTEGER NOT NULL, peak_frame INTEGER NOT NULL, score REAL NOT NULL, at TEXT NOT NULL,
        summary TEXT NOT NULL, classes TEXT NOT NULL, rules TEXT NOT NULL, keyframe TEXT, facts TEXT NOT NULL,
        silenced_by TEXT, UNIQUE(video_id, key));
    CREATE INDEX events_at ON events(at);
    CREATE TABLE claims(
        id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        text TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL, evidence TEXT NOT NULL);
    CREATE TABLE reviews(
        id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        verdict TEXT NOT NULL CHECK (verdict IN ('false alarm', 'confirmed')), note TEXT NOT NULL,
        at TEXT NOT NULL);
    CREATE TABLE rulebook_versions(
        id INTEGER PRIMARY KEY, path TEXT NOT NULL, version INTEGER NOT NULL, kept_as TEXT NOT NULL,
        reason TEXT NOT NULL, at TEXT NOT NULL, UNIQUE(path, version));
    CREATE TABLE answers(
        id INTEGER PRIMARY KEY, session TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL,
        claims TEXT NOT NULL, at TEXT NOT NULL);
    CREATE TABLE jobs(
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '', done INTEGER NOT NULL DEFAULT 0, total INTEGER, result TEXT,
        at TEXT NOT NULL);
    """,
    # Which server runs a job (host and process): a second server on the same store leaves the first one's be.
    "ALTER TABLE jobs ADD COLUMN owner TEXT",
    # An event's headline (what, how far from normal, where, when), said before its summary.
    "ALTER TABLE events ADD COLUMN headline TEXT NOT NULL DEFAULT ''",
    # The inputs' fingerprint: the same footage audited into another folder replaces its earlier video.
    "ALTER TABLE videos ADD COLUMN fingerprint TEXT; CREATE INDEX videos_fingerprint ON videos(fingerprint)",
)
SCHEMA_VERSION = len(MIGRATIONS)
# Events with their video's title, input, scene and report, and their latest review (verdict and note).
_EVENTS_WITH_REVIEWS = (
    "SELECT e.*, v.title, v.input, v.scene, v.fps, v.report, r.verdict, r.note AS review_note FROM events e "
    "JOIN videos v ON v.id = e.video_id "
    "LEFT JOIN reviews r ON r.id = (SELECT max(id) FROM reviews WHERE event_id = e.id)"
)
Verdict = Literal["false alarm", "confirmed"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def shifted(start: str, seconds: float) -> str:
    """The ISO time ``seconds`` after ``start``."""
    return (datetime.fromisoformat(start) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


class StoredClaim(BaseModel):
    text: str
    kind: str
    status: str
    reason: str = ""
    evidence: list[str] = Field(default_factory=list)


class StoredEvent(BaseModel):
    """One event as the store keeps it: enough to list, filter, review and re-score it without its report."""

    key: str  # the report's event id, e.g. "e3"
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    peak_frame: int
    score: float
    summary: str  # what the report says: the headline and its facts, else the deterministic summary
    headline: str = ""  # what, how far from normal, where and when, in one sentence
    classes: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)
    keyframe: str | None = None  # a JPEG: the frame beside it with boxes and the heat map
    facts: list[dict] = Field(default_factory=list)  # per breach: rule id and the facts of what broke it
    claims: list[StoredClaim] = Field(default_factory=list)
    silenced_by: str | None = None  # the rule change that silences it, if one came before it was stored


class StoredVideo(BaseModel):
    report: str  # the report.json it came from (indexing it again replaces it)
    fingerprint: str | None = None  # the footage and how it was audited: auditing it again replaces it too
    input: str
    title: str
    scene: str | None  # the scene folder, whose rules.yaml a review may change
    fps: float
    width: int
    height: int
    started: str  # wall-clock start, ISO 8601
    threshold: float
    scores: list[tuple[int, float]]  # (frame, score) of the score plot
    events: list[StoredEvent]


MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id names nothing


def plain_text(value: str | None) -> str | None:
    """``value`` if it holds no control character (a NUL cut a LIKE pattern short, so it matched every event)."""
    if value is not None and re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError("holds a control character")
    return value


class EventFilter(BaseModel):
    """What the timeline shows; every field is optional and they combine with AND."""

    video: int | None = Field(default=None, ge=0, le=MAX_ID)
    since: str | None = None  # ISO time (read as UTC when it names no zone)
    until: str | None = None
    rule: str | None = Field(default=None, max_length=200)
    object_class: str | None = Field(default=None, max_length=200)
    verdict: Literal["false alarm", "confirmed", "unreviewed"] | None = None
    words: str | None = Field(default=None, max_length=200)  # in the summary or a claim
    silenced: bool | None = None  # None: both

    _plain = field_validator("rule", "object_class", "words")(plain_text)

    @field_validator("since", "until")
    @classmethod
    def _iso_time(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a date and time (ISO 8601, e.g. 2026-12-06T14:30)") from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat(
            timespec="seconds")


class EventStore:
    """``EventStore(folder)`` opens (creating or migrating) ``folder/events.sqlite``. Each method is one
    connection and one transaction, so a store can be shared by the web app's threads and by several processes."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / STORE_FILE
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: exists and is not a folder; give a folder for the event store")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: written by a newer anomalens (schema {version}, this one knows {SCHEMA_VERSION})"
                )
            for step in range(version, SCHEMA_VERSION):
                db.executescript(f"BEGIN; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as error:
            raise ConfigError(f"{self.path}: cannot open the event store ({error})") from None
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            yield db
        except sqlite3.DatabaseError as error:
            if "not a database" in str(error) or "malformed" in str(error):
                raise ConfigError(f"{self.path}: not an event store ({error})") from None
            if "locked" in str(error) or "busy" in str(error):
                busy = "the event store is busy (another process is writing it): try again"
                raise ConfigError(f"{self.path}: {busy}") from None
            raise
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- videos and events ---------------------------------------------------------------------------

    def add_video(self, video: StoredVideo) -> int:
        """Store ``video`` and its events, replacing what an earlier indexing of the same report, or an earlier
        audit of the same footage (its fingerprint), stored; reviews are kept where the event is still there."""
        with self._transaction() as db:
            old = [row["id"] for row in db.execute(
                "SELECT id FROM videos WHERE report = ? OR (fingerprint IS NOT NULL AND fingerprint = ?)",
                (video.report, video.fingerprint),
            )]  # fmt: skip
            kept_reviews = db.execute(
                "SELECT e.key, r.verdict, r.note, r.at FROM reviews r JOIN events e ON e.id = r.event_id "
                f"WHERE e.video_id IN ({','.join('?' * len(old))}) ORDER BY r.id", old,
            ).fetchall()  # fmt: skip
            db.executemany("DELETE FROM videos WHERE id = ?", [(i,) for i in old])
            video_id = db.execute(
                "INSERT INTO videos(report, fingerprint, input, title, scene, fps, width, height, started, threshold, "
                "scores, indexed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (video.report, video.fingerprint, video.input, video.title, video.scene, video.fps, video.width,
                 video.height, video.started, video.threshold, json.dumps(video.scores), now()),
            ).lastrowid
            keys = {}
            for event in video.events:
                keys[event.key] = db.execute(
                    "INSERT INTO events(video_id, key, start_s, end_s, start_frame, end_frame, peak_frame, score, at, "
                    "summary, classes, rules, keyframe, facts, silenced_by, headline) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (video_id, event.key, event.start_s, event.end_s, event.start_frame, event.end_frame,
                     event.peak_frame, event.score, shifted(video.started, event.start_s), event.summary,
                     json.dumps(event.classes), json.dumps(event.rules), event.keyframe, json.dumps(event.facts),
                     event.silenced_by, event.headline),
                ).lastrowid
                db.executemany(
                    "INSERT INTO claims(event_id, text, kind, status, reason, evidence) VALUES (?,?,?,?,?,?)",
                    [(keys[event.key], c.text, c.kind, c.status, c.reason, json.dumps(c.evidence))
                     for c in event.claims],
                )
            db.executemany(
                "INSERT INTO reviews(event_id, verdict, note, at) VALUES (?,?,?,?)",
                [(keys[r["key"]], r["verdict"], r["note"], r["at"]) for r in kept_reviews if r["key"] in keys],
            )
        return video_id

    def forget(self, video_ids: list[int]) -> None:
        """Remove videos with their events, claims and reviews."""
        with self._transaction() as db:
            db.executemany("DELETE FROM videos WHERE id = ?", [(i,) for i in video_ids])

    def videos(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT v.*, (SELECT count(*) FROM events e WHERE e.video_id = v.id) AS events FROM videos v "
                "ORDER BY v.started, v.id"
            ).fetchall()
        return [_video(row) for row in rows]

    def video(self, video_id: int) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT *, 0 AS events FROM videos WHERE id = ?", (video_id,)).fetchone()
        return _video(row) if row is not None else None

    def report_of(self, fingerprint: str) -> Path | None:
        """The report of the footage audited with ``fingerprint`` (``pipelines.fingerprint``), if it is stored."""
        with self._connect() as db:
            row = db.execute(
                "SELECT report FROM videos WHERE fingerprint = ? ORDER BY id DESC", (fingerprint,)
            ).fetchone()
        return Path(row["report"]) if row is not None else None

    def events(self, where: EventFilter | None = None) -> list[dict]:
        """Events matching ``where``, oldest first, each with its video's title and its latest review."""
        where = where or EventFilter()
        clauses, args = [], []
        for clause, value in (
            ("e.video_id = ?", where.video),
            ("e.at >= ?", where.since),
            ("e.at <= ?", where.until),
            ("EXISTS (SELECT 1 FROM json_each(e.rules) WHERE value = ?)", where.rule),
            ("EXISTS (SELECT 1 FROM json_each(e.classes) WHERE value = ?)", where.object_class),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        if where.verdict == "unreviewed":
            clauses.append("r.verdict IS NULL")
        elif where.verdict is not None:
            clauses.append("r.verdict = ?")
            args.append(where.verdict)
        if where.words:
            clauses.append(
                "(e.summary LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM claims c WHERE c.event_id = e.id "
                "AND c.status = 'supported' AND c.text LIKE ? ESCAPE '\\'))"
            )
            pattern = "%" + where.words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        if where.silenced is not None:
            clauses.append("e.silenced_by IS NOT NULL" if where.silenced else "e.silenced_by IS NULL")
        sql = (
            _EVENTS_WITH_REVIEWS
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY e.at, e.id"
        )
        with self._connect() as db:
            return [_event(row) for row in db.execute(sql, args).fetchall()]

    def event(self, event_id: int) -> dict | None:
        """One event with its claims and every review it was given."""
        with self._connect() as db:
            row = db.execute(_EVENTS_WITH_REVIEWS + " WHERE e.id = ?", (event_id,)).fetchone()
            if row is None:
                return None
            claims = db.execute("SELECT * FROM claims WHERE event_id = ? ORDER BY id", (event_id,)).fetchall()
            reviews = db.execute("SELECT * FROM reviews WHERE event_id = ? ORDER BY id", (event_id,)).fetchall()
        found = _event(row)
        found["claims"] = [{**dict(c), "evidence": json.loads(c["evidence"])} for c in claims]
        found["reviews"] = [dict(r) for r in reviews]
        return found

    def classes(self) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT j.value FROM events, json_each(events.classes) j ORDER BY 1")
            return [r[0] for r in rows.fetchall()]

    def scenes(self) -> list[str]:
        """The scene folders the stored videos were screened against."""
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT scene FROM videos WHERE scene IS NOT NULL ORDER BY 1")
            return [row[0] for row in rows.fetchall()]

    def rule_ids(self) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT j.value FROM events, json_each(events.rules) j ORDER BY 1")
            return [r[0] for r in rows.fetchall()]

    # --- reviews and rule changes --------------------------------------------------------------------

    def last_review(self) -> str | None:
        """When the latest review was given (ISO), or None."""
        with self._connect() as db:
            return db.execute("SELECT max(at) FROM reviews").fetchone()[0]

    def review(self, event_id: int, verdict: Verdict, note: str = "") -> None:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is None:
                raise ConfigError(f"event {event_id}: not in the event store")
            db.execute(
                "INSERT INTO reviews(event_id, verdict, note, at) VALUES (?,?,?,?)", (event_id, verdict, note, now())
            )

    def rulebook_changed(self, path: str, kept_as: str, reason: str, silenced: dict[int, str | None]) -> int:
        """Record that the rulebook at ``path`` changed (its previous text kept in the file ``kept_as``) and
        set each of the scene's events ``silenced`` (event id -> the change that silences it, or None); returns
        the new version number. The commit is the change's point of no return (``pipelines.history``)."""
        with self._transaction() as db:
            version = db.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM rulebook_versions WHERE path = ?", (path,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO rulebook_versions(path, version, kept_as, reason, at) VALUES (?,?,?,?,?)",
                (path, version, kept_as, reason, now()),
            )
            db.executemany("UPDATE events SET silenced_by = ? WHERE id = ?", [(v, k) for k, v in silenced.items()])
        return version

    def kept_rulebooks(self) -> set[str]:
        """Every kept rulebook file the store's recorded changes name."""
        with self._connect() as db:
            return {row[0] for row in db.execute("SELECT kept_as FROM rulebook_versions")}

    def rulebook_versions(self, path: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM rulebook_versions WHERE path = ? ORDER BY version", (path,))
            return [dict(r) for r in rows.fetchall()]

    def scene_events(self, scene: str) -> list[dict]:
        """Every stored event of the videos audited against the scene folder ``scene``."""
        with self._connect() as db:
            rows = db.execute(_EVENTS_WITH_REVIEWS + " WHERE v.scene = ? ORDER BY e.at, e.id", (scene,)).fetchall()
        return [_event(row) for row in rows]

    # --- chat answers --------------------------------------------------------------------------------

    def add_answer(self, session: str, question: str, answer: str, claims: Sequence[dict]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO answers(session, question, answer, claims, at) VALUES (?,?,?,?,?)",
                (session, question, answer, json.dumps(list(claims)), now()),
            )

    def answers(self, session: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM answers WHERE session = ? ORDER BY id", (session,)).fetchall()
        return [{**dict(r), "claims": json.loads(r["claims"])} for r in rows]

    # --- long work started from the app -------------------------------------------------------------

    def add_job(self, kind: str, args: dict) -> int:
        """A job run by this process (its ``owner``: this host and process id)."""
        with self._transaction() as db:
            return db.execute(
                "INSERT INTO jobs(kind, args, state, at, owner) VALUES (?,?,?,?,?)",
                (kind, json.dumps(args), "queued", now(), _this_process()),
            ).lastrowid

    def interrupt_orphans(self) -> list[int]:
        """Mark "interrupted" the queued and running jobs whose process is gone (it stopped or was killed before they
        finished); those of a process still running here, such as another server on this store, are left be."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, owner FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            orphans = [row["id"] for row in rows if not _alive(row["owner"])]
            db.executemany("UPDATE jobs SET state = 'interrupted', step = ? WHERE id = ?",
                           [("the server stopped before it finished", job_id) for job_id in orphans])  # fmt: skip
        return orphans

    def update_job(self, job_id: int, **fields) -> None:
        allowed = {"state", "step", "done", "total", "result"}
        if not set(fields) <= allowed:
            raise ValueError(f"job fields are {sorted(allowed)}")
        with self._transaction() as db:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))

    def job(self, job_id: int) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return {**dict(row), "args": json.loads(row["args"])} if row is not None else None

    def jobs(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
        return [{**dict(r), "args": json.loads(r["args"])} for r in rows]


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str | None) -> bool:
    """Whether the process ``owner`` names (``host:pid``) is running; one on another host counts as running (its
    jobs are not this host's to judge)."""
    host, _, pid = (owner or "").rpartition(":")
    if not pid.isdigit():
        return False  # a job of a store written before owners were kept
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def _video(row: sqlite3.Row) -> dict:
    return {**dict(row), "scores": json.loads(row["scores"])}


def _event(row: sqlite3.Row) -> dict:
    found = dict(row)
    for name in ("classes", "rules", "facts"):
        found[name] = json.loads(found[name])
    return found
