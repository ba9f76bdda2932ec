"""Many videos audited against one scene, on Ray: the same ``audit`` on each, one task per video.

The scene goes into Ray's object store once and every worker reads it from there; each worker (a Ray actor)
loads the explaining LLM once and audits video after video. Results are written as each video finishes: its
report in ``OUT/<name>/`` and a line in ``OUT/batch.jsonl``. A rerun skips the videos that line says are done,
redoes the ones that failed, and finishes the rest (each audit resumes from the work it kept). One video that
fails is reported and the others go on.

Ray is an optional extra (``pip install 'anomalens[ray]'``). Without ``address`` a local Ray instance with
``workers`` CPUs is started for the batch; with it, the batch runs on that cluster.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anomalens.errors import AnomalensError, MediaError, MissingExtra
from anomalens.files import append_line, writable_folder
from anomalens.progress import say, track
from anomalens.tools.scene import Scene
from anomalens.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

LEDGER = "batch.jsonl"
MANIFEST_SUFFIXES = (".txt", ".list")


@dataclass(frozen=True)
class BatchResult:
    """What a batch did: the ledger's last word on every video (done earlier, done now, or failed)."""

    done: list[dict]
    failed: list[dict]
    skipped: list[dict]  # done by an earlier run
    ledger: Path
    start_seconds: float = 0.0  # starting the local Ray instance and its workers, included in the batch's time


def batch_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The videos and frame folders that ``inputs`` name: videos, frame folders, folders of videos (each one,
    in name order) and manifests (``.txt``: one path a line, relative to the manifest; ``#`` comments)."""
    found: list[Path] = []
    for given in map(Path, inputs):
        if not given.exists():
            raise MediaError(given, "no such file or folder")
        if given.is_dir():
            videos = sorted(p for p in given.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            found.extend(videos or [given])  # a folder without videos is one frame folder
        elif given.suffix.lower() in MANIFEST_SUFFIXES:
            lines = [line.split("#")[0].strip() for line in given.read_text(encoding="utf-8").splitlines()]
            found.extend(batch_inputs([given.parent / line for line in lines if line]))
        elif given.suffix.lower() in (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES):
            found.append(given)
        else:
            raise MediaError(given, f"not a video, frame folder or manifest ({', '.join(MANIFEST_SUFFIXES)})")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise AnomalensError("no videos to audit")
    return unique


def report_names(videos: Sequence[Path]) -> dict[Path, str]:
    """A folder name for each video's report: its stem, with its parent's name where stems repeat."""
    stems = [v.stem for v in videos]
    return {v: f"{v.parent.name}-{v.stem}" if stems.count(v.stem) > 1 else v.stem for v in videos}


def _read_ledger(path: Path) -> dict[str, dict]:
    """The last record of each video; a line cut short by a kill is skipped."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["video"]] = record
    return records


class Auditor:
    """One Ray worker: the scene from the object store, the explaining LLM loaded once, ``audit`` per video."""

    def __init__(self, scene: Scene, explainer: str):
        from anomalens.pipelines.audit import foundation_tools, open_explainer

        self.scene = scene
        self.llm, _ = open_explainer(explainer)
        self.explainer = explainer if self.llm is not None else "deterministic"
        self.perception = foundation_tools(progress=False) if self.llm is not None else None

    def audit(self, video: str, out: str, fresh: bool) -> dict:
        """Audit one video; its ledger record (done, or failed with the one-line error)."""
        from anomalens.pipelines.audit import audit

        started = time.perf_counter()
        failure, result = None, None
        try:
            result = audit(video, self.scene, out=out, llm=self.llm, explainer=self.explainer,
                           perception=self.perception, fresh=fresh, progress=False)  # fmt: skip
        except AnomalensError as error:
            failure = str(error)
        except Exception as error:  # noqa: BLE001 - one video's bug must not stop the batch
            failure = f"unexpected {type(error).__name__}: {error}"
        record = {"video": video, "report": out, "seconds": round(time.perf_counter() - started, 3)}
        if failure is not None:
            return record | {"status": "failed", "error": failure}
        return record | {
            "status": "done",
            "events": len(result.events),
            "explained_by_agent": len(result.explanations),
            "explainer": result.report.explainer,
        }


def _checked_explainer(explainer: str | None, progress: bool) -> str:
    """The explainer the workers use, the LLM loaded here once first: an agent that cannot load fails the batch
    before any worker starts, and ``auto`` without an LLM is the deterministic explainer everywhere."""
    from anomalens.config import load_settings
    from anomalens.pipelines.audit import open_explainer

    choice = explainer or load_settings().explainer
    if choice == "deterministic":
        return choice
    llm, who = open_explainer(choice)
    say(f"explanations: {who}", progress)
    return choice if llm is not None else "deterministic"


def audit_batch(
    inputs: Sequence[str | Path],
    scene: Scene | str | Path,
    *,
    out: str | Path,
    workers: int = 2,
    address: str | None = None,
    explainer: str | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> BatchResult:
    """Audit every video ``inputs`` name (see ``batch_inputs``) against ``scene`` on Ray, ``workers`` at a
    time; reports in ``out/<name>/``, one ledger line per video in ``out/batch.jsonl``. ``fresh``: audit every
    video again, reusing nothing."""
    try:
        import ray
    except ImportError:
        raise MissingExtra("audit-batch runs on Ray: pip install 'anomalens[ray]'") from None
    if workers < 1:
        raise AnomalensError(f"{workers} workers: give at least 1")
    scene = scene if isinstance(scene, Scene) else Scene.load(scene)
    videos = batch_inputs(inputs)
    explainer = _checked_explainer(explainer, progress)
    out = writable_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = out / LEDGER
    earlier = {} if fresh else _read_ledger(ledger)
    names = report_names(videos)
    skipped = [earlier[str(v)] for v in videos if earlier.get(str(v), {}).get("status") == "done"]
    todo = [v for v in videos if earlier.get(str(v), {}).get("status") != "done"]
    if skipped:
        say(f"{len(skipped)} of {len(videos)} video(s) audited by an earlier run: skipped (--fresh audits them again)",
            progress)  # fmt: skip
    done, failed, start_seconds = [], [], 0.0
    if todo:
        started = time.perf_counter()
        started_here = not ray.is_initialized()
        if started_here:
            options = {"address": address} if address else {"num_cpus": workers}
            ray.init(**options, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        try:
            scene_ref = ray.put(scene)  # read by every worker from the object store, not copied per task
            remote = ray.remote(num_cpus=1)(Auditor)
            actors = [remote.remote(scene_ref, explainer) for _ in range(min(workers, len(todo)))]
            ray.get([actor.__ray_ready__.remote() for actor in actors])
            start_seconds = time.perf_counter() - started
            pool = ray.util.ActorPool(actors)
            tasks = ((str(v), str(out / names[v]), fresh) for v in todo)
            results = pool.map_unordered(lambda actor, task: actor.audit.remote(*task), tasks)
            for record in track(results, f"auditing {len(todo)} video(s) on Ray", total=len(todo), enabled=progress):
                append_line(ledger, json.dumps(record))  # on disk before the next result is taken
                (done if record["status"] == "done" else failed).append(record)
                if record["status"] == "failed":
                    say(f"{record['video']}: failed: {record['error']}", progress)
        finally:
            if started_here:
                ray.shutdown()
    return BatchResult(done, failed, skipped, ledger, start_seconds)
