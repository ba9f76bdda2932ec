"""The event history, assembled: reports into the event store, and a reviewed false alarm into a rule change that
re-scores the scene's stored events.

Every audit written to a folder lands in the store (``record``); ``anomalens index PATH...`` adds reports written
before, or elsewhere. A review changes nothing by itself: ``propose`` shows the change as a diff of the scene's
``rules.yaml``; only ``accept`` writes it, keeping the previous rulebook beside it as ``rules.v<N>.yaml``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from anomalens.config import Settings, load_settings
from anomalens.errors import AnomalensError, ConfigError
from anomalens.files import atomic_write, keep_copy, read_text
from anomalens.progress import say, track
from anomalens.report import Report, keyframe_file, load_report
from anomalens.rules.io import load_rulebook, parse_rulebook, rulebook_lock, rulebook_text
from anomalens.rules.review import Proposal, breach_facts, propose, still_broken
from anomalens.store import STORE_FILE, EventStore, StoredClaim, StoredEvent, StoredVideo
from anomalens.tools.scene import Scene
from anomalens.types import Predicate, Rule, Rulebook, Zone


def open_store(settings: Settings | None = None) -> EventStore:
    return EventStore((settings or load_settings()).store_dir)


def started_at(report: Report) -> str:
    """When the video began: when it was recorded, where its container says, else when it was audited (a file's
    modification time says when it was copied as often as when it was recorded)."""
    return report.recorded or report.created


SILENCED_SINCE = "the scene's rulebook changed: none of the rules this event broke is broken under it now"


def _current_rulebook(scene: str | None) -> Rulebook | None:
    """The rulebook the scene folder ``scene`` holds now, or None (no scene, or no readable rulebook there)."""
    if scene is None:
        return None
    try:
        return load_rulebook(Path(scene) / "rules.yaml")
    except ConfigError:
        return None


def stored_video(report: Report, report_path: Path, started: str | None = None) -> StoredVideo:
    """What the store keeps of a video's report: each event's summary, classes seen, rules broken with the facts
    that broke them, claims with verdicts and keyframe picture. ``started``: when the video began (ISO; default:
    ``started_at``)."""
    evidence = {ev.id: ev for ev in report.evidence}
    explained = {x.event_id: x for x in report.explanations}
    current = _current_rulebook(report.scene)
    events = []
    for event in report.events:
        cited = [evidence[i] for i in event.evidence_ids if i in evidence]
        classes = sorted({c for ev in cited for c in ev.class_names or [] if c is not None})
        explanation = explained.get(event.id)
        claims = [
            StoredClaim(text=c.text, kind=c.kind, status=c.verdict.status if c.verdict else "unchecked",
                        reason=c.verdict.reason if c.verdict else "", evidence=c.evidence_ids)
            for c in (explanation.headline_claims + explanation.claims if explanation is not None else [])
        ]
        picture = keyframe_file(report_path.resolve().parent, event.id)
        facts = [b for ev in cited for b in breach_facts(ev)]
        # A rule changed while the audit ran (or since): its event is silenced as the change silenced the others.
        quiet = current is not None and facts and not still_broken(current, facts)
        events.append(
            StoredEvent(
                key=event.id, start_s=event.start_s, end_s=event.end_s, start_frame=event.start_frame,
                end_frame=event.end_frame, peak_frame=event.peak_frame, score=event.score, summary=report.why(event),
                headline=explanation.headline if explanation is not None else "",
                classes=classes, rules=event.rule_ids, keyframe=str(picture) if picture.is_file() else None,
                facts=facts, claims=claims, silenced_by=SILENCED_SINCE if quiet else None,
            )
        )
    return StoredVideo(
        report=str(report_path.resolve()), fingerprint=report.fingerprint, input=report.input, title=report.title,
        scene=report.scene, fps=report.fps, width=report.source_size[0], height=report.source_size[1],
        started=started or started_at(report), threshold=report.threshold,
        scores=list(zip(report.frame_indices, report.scores)), events=events,
    )  # fmt: skip


def record(
    report: Report, report_path: Path, store: EventStore | None = None, progress: bool = True,
    started: str | None = None,
) -> None:
    """Put a just-written report into the event store; a store that cannot take it costs a warning, not the
    audit (the report is written, and ``anomalens index`` adds it later)."""
    try:
        (store or open_store()).add_video(stored_video(report, report_path, started))
    except (AnomalensError, OSError) as error:
        say(f"warning: the event store did not take {report_path} ({error}); `anomalens index` adds it later")
    else:
        say(f"{len(report.events)} event(s) added to the event store", progress)


def report_files(paths: list[Path]) -> list[Path]:
    """The ``report.json`` files of ``paths``: the files given, and every one found under the folders given."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.rglob("report.json"))
        elif path.exists():
            found.append(path)
        else:
            raise ConfigError(f"{path}: not found")
    return found


@dataclass(frozen=True)
class Indexed:
    report: Path
    video_id: int | None  # None: an image report, which the store does not keep
    events: int


def index_reports(paths: list[Path], store: EventStore, progress: bool = True) -> list[Indexed]:
    """Add the video reports at ``paths`` (files or folders searched for ``report.json``) to the store."""
    files = report_files(paths)
    if not files:
        raise ConfigError(f"{', '.join(map(str, paths))}: no report.json there")
    done = []
    for path in track(files, "indexing reports", total=len(files), enabled=progress and len(files) > 1):
        report = load_report(path)
        if not isinstance(report, Report):
            say(f"{path}: a report of images, not of a video: left out", progress)
            done.append(Indexed(path, None, 0))
            continue
        done.append(Indexed(path, store.add_video(stored_video(report, path)), len(report.events)))
    return done


def prune(store: EventStore) -> list[str]:
    """Forget the stored videos whose report is gone (a deleted or moved folder); returns those reports."""
    gone = [v for v in store.videos() if not Path(v["report"]).is_file()]
    store.forget([v["id"] for v in gone])
    return [v["report"] for v in gone]


# --- reviews -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """What accepting a false alarm would change: the proposal (None when nothing can) and why not, if not."""

    event: dict
    proposal: Proposal | None
    why_not: str
    rules_file: Path | None
    based_on: str  # the digest of the rules.yaml the proposal was made from


def _rules_file(event: dict) -> Path | None:
    return Path(event["scene"]) / "rules.yaml" if event["scene"] else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def review(store: EventStore, event_id: int) -> Review:
    """The rule change that would have kept event ``event_id`` quiet."""
    event = store.event(event_id)
    if event is None:
        raise ConfigError(f"event {event_id}: not in the event store")
    rules_file = _rules_file(event)
    if rules_file is None:
        why = "this video was screened against its own normality, not a scene's rulebook: there is no rule to change"
        return Review(event, None, why, None, "")
    if not event["facts"]:
        why = "no rule was broken: motion unlike the scene's flagged it, which a rule change cannot silence"
        return Review(event, None, why, rules_file, "")
    if not rules_file.is_file():
        return Review(event, None, f"{rules_file}: the scene's rulebook is not there any more", rules_file, "")
    text = read_text(rules_file, "rulebook")  # the digest and the proposal from one read: they cannot disagree
    rulebook = parse_rulebook(text, rules_file)
    if not still_broken(rulebook, event["facts"]):
        why = "the scene's rulebook already lets it pass: nothing to change" + (
            f" ({event['silenced_by']})" if event["silenced_by"] else "")  # fmt: skip
        return Review(event, None, why, rules_file, _digest(text))
    proposal = propose(rulebook, event["facts"])
    why = "" if proposal.changes else "no rule it broke can be loosened here: " + ", ".join(proposal.unchanged)
    return Review(event, proposal if proposal.changes else None, why, rules_file, _digest(text))


@dataclass(frozen=True)
class Accepted:
    version: int  # the rulebook's version number after the change
    kept_as: Path  # the previous rulebook
    silenced: list[dict]  # the scene's stored events the change silences
    still_raised: list[dict]  # the scene's stored events still anomalous


def accept(store: EventStore, event_id: int, based_on: str) -> Accepted:
    """Write the proposed change for event ``event_id`` to the scene's ``rules.yaml`` (the previous one kept as
    ``rules.v<N>.yaml``) and re-score the scene's stored events. ``based_on`` is the digest the person saw: if the
    rulebook changed since (another reviewer, an editor), nothing is written and they are asked to look again."""
    seen = review(store, event_id)
    if seen.proposal is None and seen.based_on and seen.based_on != based_on:
        raise ConfigError(f"{seen.rules_file} changed since this proposal was shown: look at it again")
    if seen.proposal is None:
        raise ConfigError(f"event {event_id}: {seen.why_not}")
    new = seen.proposal.rulebook
    reason = f"event {event_id} marked a false alarm: " + "; ".join(c.said for c in seen.proposal.changes)
    scene_events = store.scene_events(seen.event["scene"])
    silenced = {e["id"]: None if not e["facts"] or still_broken(new, e["facts"]) else reason for e in scene_events}
    version, kept_as = _replace_rulebook(store, seen.rules_file, based_on, new, reason, silenced)
    quiet = [e for e in scene_events if silenced[e["id"]]]
    return Accepted(version, kept_as, quiet, [e for e in scene_events if not silenced[e["id"]]])


def _replace_rulebook(
    store: EventStore, rules_file: Path, based_on: str, rulebook: Rulebook, reason: str,
    silenced: dict[int, str | None],
) -> tuple[int, Path]:
    """Write ``rulebook`` over ``rules_file`` if it is still the text whose digest is ``based_on``, keeping that
    text as ``rules.v<N>.yaml``, and record the change (and the events it silences) in the store; returns the new
    version number and the kept file."""
    with rulebook_lock(rules_file):
        _finish_changes(store, rules_file)
        current = read_text(rules_file, "rulebook")
        if _digest(current) != based_on:
            raise ConfigError(f"{rules_file} changed since this proposal was shown: look at it again")
        # In three steps, each of which a kill may cut short: the kept copy and the new text beside the rulebook,
        # then the store's row (the point of no return: a busy store refuses here, before anything changed), then
        # the new text in place. ``_finish_changes`` completes or undoes a change cut short.
        kept_as = keep_copy(rules_file, current)
        pending = _pending(rules_file, kept_as)
        # Which store records the change, so that another store on the same scene neither completes nor undoes it.
        atomic_write(_recorder(pending), str(store.folder.resolve()))
        atomic_write(pending, rulebook_text(rulebook))
        try:
            version = store.rulebook_changed(str(rules_file), str(kept_as), reason, silenced)
        except BaseException:
            _undo(pending, kept_as)  # nothing changed: nothing to keep
            raise
        os.replace(pending, rules_file)
        _recorder(pending).unlink()
    return version + 1, kept_as


def _pending(rules_file: Path, kept_as: Path) -> Path:
    """Where a change's new rulebook waits for the store's row, named by the copy that keeps the text it replaces."""
    return rules_file.with_name(f".{rules_file.name}.after-{kept_as.name}")


def _recorder(pending: Path) -> Path:
    """The file naming the store (its folder) that records the change waiting in ``pending``."""
    return pending.with_name(pending.name + ".store")


def _undo(pending: Path, kept_as: Path) -> None:
    for path in (pending, kept_as, _recorder(pending)):
        path.unlink(missing_ok=True)


def _finish_changes(store: EventStore, rules_file: Path) -> None:
    """A change to ``rules_file`` that a kill cut short (under the rulebook's lock): put in place if the store that
    was recording it did, else undone (its new text and its kept copy removed), so the store and the file agree.
    Another store's change is judged by that store, which is opened for it; one that cannot be read is left be."""
    for pending in rules_file.parent.glob(f".{rules_file.name}.after-*.yaml"):
        kept_as = rules_file.with_name(pending.name.split(".after-", 1)[1])
        try:
            recorder = Path(_recorder(pending).read_text().strip())
        except (OSError, UnicodeDecodeError):
            recorder = store.folder.resolve()  # killed before naming its store: nothing was recorded
        if recorder == store.folder.resolve():
            recorded = store.kept_rulebooks()
        elif (recorder / STORE_FILE).is_file():
            try:
                recorded = EventStore(recorder).kept_rulebooks()
            except ConfigError:
                continue  # busy or unreadable: that store's own start-up finishes it
        else:
            recorded = set()  # the recording store is gone, and its record with it
        if str(kept_as) in recorded:
            os.replace(pending, rules_file)
            _recorder(pending).unlink(missing_ok=True)
        else:
            _undo(pending, kept_as)
    for recorder in rules_file.parent.glob(f".{rules_file.name}.after-*.yaml.store"):
        if not recorder.with_suffix("").exists():  # killed after its change was put in place
            recorder.unlink()


def finish_changes(store: EventStore) -> None:
    """``_finish_changes`` for the rulebook of every scene the store's videos were screened against."""
    for scene in store.scenes():
        rules_file = Path(scene) / "rules.yaml"
        if rules_file.parent.is_dir():
            with rulebook_lock(rules_file):
                _finish_changes(store, rules_file)


# --- zones ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneZones:
    rules_file: Path
    rulebook: Rulebook
    based_on: str
    grid: tuple[int, int]  # rows, cols of the scene's grid cells


def scene_zones(store: EventStore, video_id: int) -> SceneZones:
    """The zones of the scene a stored video was audited against."""
    video = store.video(video_id)
    if video is None:
        raise ConfigError(f"video {video_id}: not in the event store")
    if not video["scene"]:
        raise ConfigError(f"{video['input']}: screened against its own normality, with no scene to draw zones in")
    scene = Scene.load(video["scene"])
    rules_file = scene.folder / "rules.yaml"
    text = read_text(rules_file, "rulebook")  # the rulebook and its digest from one read, like a review's
    geometry = scene.model.geometry
    return SceneZones(rules_file, parse_rulebook(text, rules_file), _digest(text), (geometry.rows, geometry.cols))


def save_zones(
    store: EventStore, video_id: int, zones: list[Zone], forbidden: set[str], based_on: str,
    metres_per_pixel: float | None = None,
) -> tuple[int, str]:
    """Store the zones drawn over a video's scene in its rulebook, with a keep-out rule for each zone in
    ``forbidden`` (nothing may enter it); returns the rulebook's new version and its digest. Stored events keep the
    zones they were screened with: the next audit uses the new ones. ``metres_per_pixel``: the person's scale
    (source pixels), with which speeds are said in m/s too."""
    where = scene_zones(store, video_id)
    unknown = forbidden - {z.name for z in zones}
    if unknown:
        raise ConfigError(f"no zone named {', '.join(sorted(unknown))} was drawn")
    kept = [r for r in where.rulebook.rules if r.origin != "zone"]  # made again from ``forbidden``
    drawn_rules = [
        Rule(id="keep-out-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name), origin="zone",
             sentence=f"Nothing enters the {name}.", predicate=Predicate(fact="zone", op="!=", value=name))
        for name in sorted(forbidden)
    ]
    rulebook = where.rulebook.model_copy(
        update={"zones": zones, "rules": kept + drawn_rules, "metres_per_pixel": metres_per_pixel}
    )
    try:  # the names and rule ids must hold together
        Rulebook.model_validate(rulebook.model_dump())
    except ValidationError as error:
        raise ConfigError(f"zones: {error.errors()[0]['msg']}") from None
    said = ", ".join(z.name + (" (nothing may enter)" if z.name in forbidden else "") for z in zones) or "none"
    version, _ = _replace_rulebook(store, where.rules_file, based_on, rulebook, f"zones drawn: {said}", {})
    return version, _digest(rulebook_text(rulebook))
