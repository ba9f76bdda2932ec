"""Many videos audited against one scene, on Ray: the same ``audit`` on each, one task per video.

The scene goes into Ray's object store once and every worker reads it from there; each worker (a Ray actor)
loads the explaining LLM once and audits video after video. Results are written as each video finishes: its
report in ``OUT/<name>/`` and a line in ``OUT/batch.jsonl``. A rerun skips the videos that line says are done
and whose fingerprint (``pipelines.fingerprint``: the footage, the scene, the version) is what it was then,
redoes the ones that failed or changed, and finishes the rest (each audit resumes from the work it kept). One
video that fails is reported and the others go on.

Ray is an optional extra (``pip install 'anomalens[ray]'``). Without ``address`` a local Ray instance with
``workers`` CPUs is started for the batch; with it, the batch runs on that cluster.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anomalens.errors import AnomalensError, MediaError, MissingExtra
from anomalens.files import append_line, read_text, writable_folder
from anomalens.pipelines.fingerprint import fingerprint
from anomalens.progress import say, track
from anomalens.tools.scene import Scene
from anomalens.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, split_part

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


def batch_inputs(inputs: Sequence[str | Path], _manifests: frozenset[Path] = frozenset()) -> list[Path]:
    """The videos and frame folders that ``inputs`` name: videos, frame folders, folders of videos (each one,
    in name order) and manifests (``.txt``: one path a line, relative to the manifest; a line starting with ``#``
    is a comment, a ``#`` elsewhere is part of a name). A manifest that names itself, or one that names it, is
    refused."""
    found: list[Path] = []
    for given in map(Path, inputs):
        media, wanted = split_part(given)
        if wanted is not None:  # a part of a video (VIDEO@START-END): checked when it is opened
            if not media.is_file():
                raise MediaError(given, "no such file")
            found.append(Path(f"{media.resolve()}@{wanted}"))
            continue
        if not given.exists():
            raise MediaError(given, "no such file or folder")
        if given.is_dir():
            videos = sorted(p for p in given.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            found.extend(videos or [given])  # a folder without videos is one frame folder
        elif given.suffix.lower() in MANIFEST_SUFFIXES:
            if given.resolve() in _manifests:
                raise MediaError(given, "a manifest that names itself (directly or through another manifest)")
            lines = [line.strip() for line in read_text(given, "manifest").splitlines()]
            named = [given.parent / line for line in lines if line and not line.startswith("#")]
            found.extend(batch_inputs(named, _manifests | {given.resolve()}))
        elif given.suffix.lower() in (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES):
            found.append(given)
        else:
            raise MediaError(given, f"not a video, frame folder or manifest ({', '.join(MANIFEST_SUFFIXES)})")
    unique = list(dict.fromkeys(p if split_part(p)[1] else p.resolve() for p in found))
    if not unique:
        raise AnomalensError("no videos to audit")
    return unique


def report_names(videos: Sequence[Path]) -> dict[Path, str]:
    """A folder name for each video's report, never the same for two videos (``videos`` are resolved and unique):
    its stem; where stems repeat, with its suffix if that tells them apart (``clip-avi``, ``clip-mkv``), else led by
    as many of its parent folders as do (``x-a-clip``, ``y-a-clip``)."""
    depth = dict.fromkeys(videos, 0)
    suffixed: set[Path] = set()

    def name(video: Path) -> str:
        media, wanted = split_part(video)
        parents = media.parent.parts[1:][::-1][: depth[video]][::-1]  # the nearest ``depth`` folders, root left out
        said = "-".join([*parents, media.stem]) + (media.suffix.replace(".", "-") if video in suffixed else "")
        return said + (f"-{str(wanted).replace(':', '.')}" if wanted else "")

    previous: dict[Path, str] = {}
    while True:
        names = {video: name(video) for video in videos}
        clashes: dict[str, list[Path]] = defaultdict(list)
        for video, given in names.items():
            clashes[given].append(video)
        clashing = [group for group in clashes.values() if len(group) > 1]
        if not clashing:
            return names
        if names == previous:  # every folder up to the root says the same (``/x/a/clip``, ``/x-a/clip``): numbered
            return names | {v: f"{names[v]}-{k}" for group in clashing for k, v in enumerate(group, 1)}
        previous = names
        for group in clashing:
            if len({v.suffix for v in group}) == len(group) and not suffixed.issuperset(group):
                suffixed.update(group)
            else:
                for video in group:
                    depth[video] += 1


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


def _audited_as_now(record: dict | None, video: Path, scene: Scene) -> bool:
    """Whether the ledger's ``record`` says ``video`` was audited, with the fingerprint it has now (the same
    footage, scene and version)."""
    if record is None or record.get("status") != "done" or "fingerprint" not in record:
        return False
    try:
        return record["fingerprint"] == fingerprint(scene.open(str(video)), scene)
    except AnomalensError:  # gone or unreadable now: the audit says why
        return False


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
            "fingerprint": result.report.fingerprint,
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
    unchanged = {v for v in videos if _audited_as_now(earlier.get(str(v)), v, scene)}
    skipped = [earlier[str(v)] for v in videos if v in unchanged]
    todo = [v for v in videos if v not in unchanged]
    if skipped:
        say(f"{len(skipped)} of {len(videos)} video(s) audited by an earlier run and unchanged since: skipped "
            "(--fresh audits them again)", progress)  # fmt: skip
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
