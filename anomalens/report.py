"""Reports: ``report.json`` for machines and a self-contained ``report.html`` for people.

The HTML holds a score timeline (threshold, events and any ground truth marked), a table of events and,
per event, its keyframe beside the same frame with boxes and the anomaly heat map drawn.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anomalens import __version__
from anomalens.draw import time_ticks
from anomalens.errors import ConfigError
from anomalens.files import atomic_write, read_versioned
from anomalens.types import Claim, Event, Evidence, Explanation, Rulebook, Track

ZONE_MAP = "zones.jpg"  # beside report.json: a frame with the grid cells and the drawn zones named
SEPARATOR_PX = 6  # the white strip between a keyframe's raw frame and its overlay
MAP_SIDE_IN_JSON = 64  # anomaly maps are stored downscaled in report.json; the HTML draws full ones
REPORT_FORMAT = 3


class GroundTruthEvent(BaseModel):
    kind: str
    start_frame: int
    end_frame: int
    why: str = ""


class GroundTruth(BaseModel):
    labels: list[int]  # one 0/1 per source frame
    events: list[GroundTruthEvent] = Field(default_factory=list)


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: Literal[3] = REPORT_FORMAT
    title: str
    input: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    recorded: str | None = None  # when the footage began, as its container says (ISO 8601)
    fingerprint: str | None = None  # of the inputs (``pipelines.fingerprint``): the event store knows the video by it
    anomalens_version: str = __version__
    fps: float
    fps_note: str | None = None  # the rate was assumed (a frame folder, a video header without one)
    source_size: tuple[int, int]
    scorer: str
    explainer: str = "deterministic"
    explanations: list[Explanation] = Field(default_factory=list)  # the agent's, one per event it explained
    threshold: float
    frame_indices: list[int]
    scores: list[float]
    events: list[Event]
    evidence: list[Evidence]
    tracks: list[Track] = Field(default_factory=list)  # the tracks events cite, with every box over time
    rulebook: Rulebook | None = None
    scene: str | None = None  # the scene folder screened against (None in reports of earlier versions)
    zone_grid: tuple[int, int] | None = None  # rows and columns of the scene's grid cells, for the zone map
    ground_truth: GroundTruth | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    clips: list[str] = Field(default_factory=list)  # the events with a clip beside the report (``clip_file``)

    def explained(self, event: Event) -> Explanation | None:
        """The explanation of ``event`` that verified anything (the agent's, else the plain one), if any."""
        return next((x for x in self.explanations if x.event_id == event.id and x.supported), None)

    def why(self, event: Event) -> str:
        """What the report says about ``event``: its headline and its strongest supporting facts (at most
        ``FACTS_SAID``), else the deterministic summary (an event explained by nothing, a report of an earlier
        version)."""
        explained = self.explained(event)
        if explained is None:
            return event.summary
        return " ".join([explained.headline, *(c.text for c in explained.facts[:FACTS_SAID])]).strip()


FACTS_SAID = 3  # supporting facts said after an event's headline; the rest are in its claims table


class ImageFinding(BaseModel):
    """One inspected image: its score against the method's threshold, its evidence (regions numbered from 1 in
    ``track_ids``), the claims made of its regions with their verdicts, and the sentences of the supported ones."""

    model_config = ConfigDict(extra="forbid")
    image: str
    method: str
    score: float
    threshold: float
    anomalous: bool
    evidence: Evidence
    # Empty in reports written before image findings had claims, which still load.
    unit: str = ""  # of the regions' peaks, e.g. "times the normal extreme"
    compared_with: str = ""  # what the image was compared with, e.g. "the 4 normal images"
    claims: list[Claim] = Field(default_factory=list)
    explanation: list[str] = Field(default_factory=list)


class ImageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: Literal[3] = REPORT_FORMAT
    title: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    anomalens_version: str = __version__
    method: str  # saa, winclip, patch-knn or patch-novelty
    mode: str = "zero-shot"  # how normality was known: few-shot against normal images, or zero-shot (and how)
    normal: list[str] = Field(default_factory=list)  # few-shot reference images, if any
    findings: list[ImageFinding]
    absent_tools: dict[str, str] = Field(default_factory=dict)  # tool kind -> why it was not used
    seconds: float = 0.0


def load_report(path: str | Path) -> Report | ImageReport:
    """A ``report.json`` (of a video or of images); one written by another version of anomalens is refused with a
    clear error."""
    data = read_versioned(Path(path), "report", REPORT_FORMAT, "run the audit again to write a current report")
    kind = ImageReport if "findings" in data else Report
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"{path}: not a valid report: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def compact_map(evidence: Evidence) -> Evidence:
    """Evidence with its anomaly map shrunk to at most ``MAP_SIDE_IN_JSON`` pixels a side (id unchanged)."""
    amap = evidence.anomaly_map
    if amap is None or max(amap.shape) <= MAP_SIDE_IN_JSON:
        return evidence
    factor = MAP_SIDE_IN_JSON / max(amap.shape)
    size = (max(1, round(amap.shape[1] * factor)), max(1, round(amap.shape[0] * factor)))
    return evidence.model_copy(update={"anomaly_map": cv2.resize(amap, size, interpolation=cv2.INTER_AREA)})


def keyframe_file(report_dir: str | Path, event_id: str) -> Path:
    """Where a report keeps an event's keyframe picture (JPEG) for the event store and the app."""
    return Path(report_dir) / "keyframes" / f"{event_id}.jpg"


def clip_file(report_dir: str | Path, event_id: str) -> Path:
    """Where a report keeps an event's clip (H.264 MP4, ``anomalens.clips``)."""
    return Path(report_dir) / "clips" / f"{event_id}.mp4"


def write_report(report: Report, keyframes: dict[str, np.ndarray], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json``, ``report.html`` and the keyframes; ``keyframes`` maps event id -> BGR image."""
    out = Path(out_dir)
    json_path, html_path = out / "report.json", out / "report.html"
    for event_id, image in keyframes.items():
        atomic_write(keyframe_file(out, event_id), _jpeg(image))
    zones = drawn_zones(report, keyframes)
    if zones is not None:
        atomic_write(out / ZONE_MAP, _jpeg(zones))
    atomic_write(json_path, report.model_dump_json(indent=1))
    atomic_write(html_path, render_html(report, keyframes, zones))
    return json_path, html_path


def raw_frame(keyframe: np.ndarray) -> np.ndarray:
    """The raw frame of a keyframe picture (its left half, before the white strip and the overlay)."""
    return keyframe[:, : (keyframe.shape[1] - SEPARATOR_PX) // 2]


def drawn_zones(report: Report, keyframes: dict[str, np.ndarray]) -> np.ndarray | None:
    """The zone map over the first keyframe's raw frame, or None (no keyframe, or no grid known)."""
    from anomalens.draw import zone_map

    if report.zone_grid is None or not keyframes:
        return None
    raw = raw_frame(next(iter(keyframes.values())))
    return zone_map(raw, *report.zone_grid, report.rulebook.zones if report.rulebook is not None else [])


def write_image_report(report: ImageReport, images: dict[str, np.ndarray], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` (maps shrunk) and ``report.html``; ``images`` maps image path -> BGR image."""
    out = Path(out_dir)
    json_path, html_path = out / "report.json", out / "report.html"
    compact = report.model_copy(
        update={"findings": [f.model_copy(update={"evidence": compact_map(f.evidence)}) for f in report.findings]}
    )
    atomic_write(json_path, compact.model_dump_json(indent=1))
    atomic_write(html_path, render_image_html(report, images))
    return json_path, html_path


def render_image_html(report: ImageReport, images: dict[str, np.ndarray]) -> str:
    from anomalens.draw import heat_overlay

    esc = html.escape
    ranked = sorted(report.findings, key=lambda f: -f.score)
    rows = "".join(
        f'<tr><td><a href="#img{k}">{esc(Path(f.image).name)}</a></td><td>{f.score:.3f}</td>'
        f"<td>{'anomalous' if f.anomalous else 'normal'}</td><td>{len(f.evidence)}</td></tr>"
        for k, f in enumerate(ranked)
    )
    sections = []
    for k, finding in enumerate(ranked):
        image = images[finding.image]
        drawn = heat_overlay(image, finding.evidence, finding.threshold)
        sections.append(
            f'<div class="event" id="img{k}"><h3>{esc(finding.image)}: score {finding.score:.3f} '
            f"(threshold {finding.threshold:g})</h3>"
            f'<img src="{_jpeg_data_uri(np.hstack([image, drawn]))}" alt="{esc(finding.image)}">'
            f'<p class="meta">left: the image; right: the anomaly heat map (red at the threshold or the '
            "image's maximum, whichever is higher) with the numbered regions beyond the threshold boxed.</p>"
            f"{_image_claims_table(finding)}</div>"
        )
    absent = "".join(f"<li>{esc(kind)}: {esc(why)}</li>" for kind, why in report.absent_tools.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(report.title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{esc(report.title)}</h1>
<p class="meta">method {esc(report.method)} · {esc(report.mode)} · {report.seconds:.1f} s ·
anomalens {esc(report.anomalens_version)} · {esc(report.created)}</p>
<h2>Images, most anomalous first</h2>
<table><tr><th>image</th><th>score</th><th>verdict</th><th>regions</th></tr>{rows}</table>
{"".join(sections)}
{f"<h2>Tools not used</h2><ul>{absent}</ul>" if absent else ""}
</body></html>
"""


def _image_claims_table(finding: ImageFinding) -> str:
    """What was claimed of an image's regions: verdict, the sentence (said only when supported), the check."""
    if not finding.claims:
        return "<p>No region stands out.</p>"
    esc = html.escape
    rows = "".join(
        f'<tr><td class="{claim.verdict.status}">{claim.verdict.status}</td>'
        f'<td><span class="{"said" if claim.verdict.status == "supported" else "unsaid"}">{esc(claim.text)}</span>'
        f"</td><td>{esc(claim.verdict.reason)}</td></tr>"
        for claim in finding.claims
    )
    said = sum(claim.verdict.status == "supported" for claim in finding.claims)
    return (
        f'<p class="meta">{said} of {len(finding.claims)} claims verified and said (each re-measured on the map)</p>'
        f'<table class="claims"><tr><th>verdict</th><th>claim</th><th>verifier</th></tr>{rows}</table>'
    )


def _jpeg(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("could not encode keyframe as JPEG")
    return buffer.tobytes()


def _jpeg_data_uri(image: np.ndarray) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg(image)).decode()


def true_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index runs where ``labels`` is true."""
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8), [0]])
    change = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e) - 1) for s, e in zip(change[0::2], change[1::2])]


def timeline_svg(report: Report, width: int = 960, height: int = 190) -> str:
    """Score over time with the threshold (dashed), events (red bands) and ground truth (grey strip)."""
    left, right, top, bottom = 44, 10, 10, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    frames = np.asarray(report.frame_indices, dtype=np.float64)
    scores = np.asarray(report.scores, dtype=np.float64)
    last = max(float(frames[-1]) if frames.size else 1.0, 1.0)
    top_score = max(float(scores.max()) if scores.size else 0.0, 2.0 * report.threshold, 1e-6)

    def x(frame: float) -> float:
        return left + plot_w * frame / last

    def y(score: float) -> float:
        return top + plot_h * (1.0 - min(score, top_score) / top_score)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="timeline">']
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>')
    for event in report.events:
        x0, x1 = x(event.start_frame), x(event.end_frame)
        parts.append(
            f'<a href="#{html.escape(event.id)}"><rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.5):.1f}" '
            f'height="{plot_h}" '
            f'fill="#e53935" fill-opacity="0.18"><title>{html.escape(event.id)}: frames {event.start_frame}-'
            f"{event.end_frame}</title></rect></a>"
        )
    if report.ground_truth is not None:
        gy = top + plot_h + 6
        parts.append(f'<text x="{left - 4}" y="{gy + 7}" font-size="10" text-anchor="end">truth</text>')
        for start, end in true_runs(np.asarray(report.ground_truth.labels)):
            parts.append(
                f'<rect x="{x(start):.1f}" y="{gy}" width="{max(x(end) - x(start), 1.5):.1f}" height="8" fill="#555">'
                f"<title>ground truth: frames {start}-{end}</title></rect>"
            )
    if frames.size:
        points = " ".join(f"{x(f):.1f},{y(s):.1f}" for f, s in zip(frames, scores))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1565c0" stroke-width="1.3"/>')
    ty = y(report.threshold)
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e53935" stroke-dasharray="5,4"/>'
        f'<text x="{left + plot_w - 4}" y="{ty - 4:.1f}" font-size="10" text-anchor="end" fill="#e53935">'
        f"threshold {report.threshold:.2f}</text>"
    )
    for second, label in time_ticks(last / report.fps, 12):
        tx = x(second * report.fps)
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" stroke="#888"/>'
            f'<text x="{tx:.1f}" y="{height - 14}" font-size="10" text-anchor="middle">{label}</text>'
        )
    parts.append(f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{top_score:.1f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>')
    parts.append("</svg>")
    return "".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
.event{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:14px 0}
.event img{width:100%;image-rendering:pixelated;border:1px solid #ccc} img.zones{width:50%;border:1px solid #ccc}
.metrics span{display:inline-block;margin-right:18px}
.claims td{vertical-align:top} .supported{color:#2e7d32;font-weight:600} .unsupported,.unverifiable{color:#c62828}
.claims .said{color:#222} .claims .unsaid{color:#888;font-style:italic}
"""


def _said(report: Report, event: Event) -> str:
    """An event's headline first, then its supporting facts; the deterministic summary when nothing explained it."""
    esc, explained = html.escape, report.explained(event)
    if explained is None or not explained.headline:
        return f"<p>{esc(report.why(event))}</p>"
    facts = "".join(f"<li>{esc(c.text)}</li>" for c in explained.facts[:FACTS_SAID])
    return f'<p class="headline"><b>{esc(explained.headline)}</b></p><ul>{facts}</ul>'


def _claims_table(explanation: Explanation | None, evidence: dict[str, Evidence]) -> str:
    """The agent's claims for one event: verdict, what was claimed, why the verifier decided so, evidence."""
    if explanation is None:
        return ""
    esc = html.escape
    rows = []
    # Claims of the first draft that failed were revised or dropped: they are shown too, as not said.
    dropped = [c for c in explanation.first_draft if c.verdict is not None and c.verdict.status != "supported"]
    every = explanation.headline_claims + explanation.claims
    said = [c for c in every if c.verdict is not None and c.verdict.status == "supported"]
    for claim in every + (dropped if explanation.rounds else []):
        status = claim.verdict.status if claim.verdict else "unchecked"
        if status == "supported":
            said = f'<span class="said">{esc(claim.text)}</span>'
        else:
            fields = claim.model_dump(exclude={"id", "text", "kind", "evidence_ids", "verdict"}, exclude_none=True)
            said = f'<span class="unsaid">not said: {esc(claim.kind)} {esc(str(fields))}</span>'
        cited = ", ".join(
            f"{esc(i)}" + (f" (frame {evidence[i].frame_index})" if i in evidence else " (missing)")
            for i in claim.evidence_ids
        )
        reason = esc(claim.verdict.reason) if claim.verdict else ""
        rows.append(f'<tr><td class="{status}">{status}</td><td>{said}</td><td>{reason}</td><td>{cited}</td></tr>')
    header = (
        f'<p class="meta">{esc(explanation.generator)}: {len(said)} claims verified and said,'
        f" {len(rows) - len(said)} not said ({explanation.llm_calls} LLM calls,"
        f" {explanation.rounds} revision(s), {explanation.seconds:.1f} s)</p>"
    )
    return (
        f"<details><summary>details: every claim checked ({len(rows)})</summary>"
        f'{header}<table class="claims"><tr><th>verdict</th><th>claim</th><th>verifier</th><th>evidence</th></tr>'
        f"{''.join(rows)}</table></details>"
    )


def render_html(report: Report, keyframes: dict[str, np.ndarray], zones: np.ndarray | None = None) -> str:
    esc = html.escape
    width, height = report.source_size
    rows = "".join(
        f'<tr><td><a href="#{esc(e.id)}">{esc(e.id)}</a></td><td>{e.start_s:.1f}-{e.end_s:.1f} s</td>'
        f"<td>{e.start_frame}-{e.end_frame}</td><td>{e.score:.2f}</td><td>{esc(report.why(e))}</td></tr>"
        for e in report.events
    )
    sections = []
    explained = {x.event_id: x for x in report.explanations}
    evidence_by_id = {ev.id: ev for ev in report.evidence}
    for event in report.events:
        image = keyframes.get(event.id)
        picture = f'<img src="{_jpeg_data_uri(image)}" alt="keyframe of {esc(event.id)}">' if image is not None else ""
        if event.id in report.clips:  # beside the report: a relative link, as the folder moves whole
            clip = f"clips/{esc(event.id)}.mp4"
            picture += (f'<video controls preload="metadata" src="{clip}"></video>'
                        f'<p class="meta"><a href="{clip}" download>download the clip</a></p>')  # fmt: skip
        sections.append(
            f'<div class="event" id="{esc(event.id)}"><h3>{esc(event.id)}: {event.start_s:.1f}-{event.end_s:.1f} s '
            f"(frames {event.start_frame}-{event.end_frame}, peak {event.peak_frame}, score {event.score:.2f})</h3>"
            f"{_said(report, event)}{_claims_table(explained.get(event.id), evidence_by_id)}{picture}"
            f'<p class="meta">left: frame {event.peak_frame}; right: boxes and anomaly heat map. '
            f"Evidence: {len(event.evidence_ids)} frames cited.</p></div>"
        )
    broken = ""
    if report.rulebook is not None:
        worst: dict[str, tuple[float, set[str]]] = {}
        by_id = {ev.id: ev for ev in report.evidence}
        for event in report.events:
            for evidence_id in event.evidence_ids:
                for rule_id, value, _ in by_id[evidence_id].breaches():
                    severity, events = worst.get(rule_id, (0.0, set()))
                    worst[rule_id] = (max(severity, value), events | {event.id})
        rule_rows = "".join(
            f"<tr><td>{esc(r.id)}</td><td>{esc(r.sentence)}</td><td>{esc(r.predicate.fact)} {esc(r.predicate.op)} "
            f"{esc(str(r.predicate.value))} {esc(r.predicate.unit or '')}</td>"
            f"<td>{', '.join(sorted(worst[r.id][1]))}</td><td>{worst[r.id][0]:.2f}x</td></tr>"
            for r in report.rulebook.rules
            if r.id in worst
        )
        broken = (
            f"<h2>Rules broken ({len(worst)} of {len(report.rulebook.rules)})</h2><table><tr><th>rule</th>"
            f"<th>sentence</th><th>predicate</th><th>events</th><th>worst</th></tr>{rule_rows}</table>"
        )
    truth = ""
    if report.ground_truth is not None and report.ground_truth.events:
        truth_rows = "".join(
            f"<tr><td>{esc(g.kind)}</td><td>{g.start_frame}-{g.end_frame}</td><td>{esc(g.why)}</td></tr>"
            for g in report.ground_truth.events
        )
        truth = f"<h2>Ground truth</h2><table><tr><th>kind</th><th>frames</th><th>why</th></tr>{truth_rows}</table>"
    metrics = "".join(f"<span><b>{esc(k)}</b> {v:.3g}</span>" for k, v in report.metrics.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(report.title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{esc(report.title)}</h1>
<p class="meta">{esc(report.input)} · {width}x{height} · {report.fps:g} fps{
    f" ({esc(report.fps_note)})" if report.fps_note else ""} · {len(report.scores)} frames analysed
in {report.seconds:.1f} s · scorer {esc(report.scorer)} · explanations: {esc(report.explainer)} ·
anomalens {esc(report.anomalens_version)} · {esc(report.created)}</p>
<p class="metrics">{metrics}</p>
<h2>Anomaly score over time</h2>{timeline_svg(report)}
<h2>Events ({len(report.events)})</h2>
{
        "<table><tr><th>event</th><th>time</th><th>frames</th><th>score</th><th>why</th></tr>" + rows + "</table>"
        if report.events
        else "<p>No anomalous events: every frame stayed below the threshold.</p>"
    }
{broken}
{f'<h2>Zones</h2><img class="zones" src="{_jpeg_data_uri(zones)}" alt="zone map"><p class="meta">The grid cells '
 "rules name (r&lt;row&gt;c&lt;col&gt;) and the zones drawn in `anomalens serve`, which take the objects standing "
 "in them.</p>" if zones is not None else ""}
{"".join(sections)}
{truth}
</body></html>
"""
