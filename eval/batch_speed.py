"""How ``audit-batch`` scales on this machine, measured side by side in one run: the same synthetic walkway
clips audited by one Ray worker, then by two, each from scratch, against the scene learned from the walkway's
normal clip; the ratio with Ray's start-up (its instance and workers) and without it. Events are explained by
the deterministic explainer, so the ratio is the screening pipeline's and Ray's, not the LLM's. The walkway is
painted shapes, so it is screened with motion alone (as the demo is)."""

from __future__ import annotations

import time
from pathlib import Path

from anomalens.eval.synthetic import ANOMALY_KINDS, Anomaly, SceneSpec, write_scene
from anomalens.pipelines import learn_scene
from anomalens.pipelines.batch import audit_batch
from anomalens.progress import say


def run_batch_speed(folder: str | Path, *, videos: int = 6, frames: int = 900, progress: bool = True) -> dict:
    """Audit ``videos`` clips of ``frames`` frames with 1 and then 2 workers; seconds, videos a minute, frames a
    second and the ratio of the two runs."""
    folder = Path(folder)
    normal = write_scene(SceneSpec(n_frames=240, seed=1, camera_seed=0), folder / "normal")
    scene = learn_scene([normal.video], out=folder / "scene", objects=False, progress=progress)
    clips = []
    for k in range(videos):
        kind = ANOMALY_KINDS[k % len(ANOMALY_KINDS)]
        spec = SceneSpec(n_frames=frames, seed=100 + k, camera_seed=0, anomalies=(Anomaly(kind, frames // 3),))
        clips.append(write_scene(spec, folder / f"clip-{k}").video)
    runs = {}
    for workers in (1, 2):
        say(f"{videos} clips of {frames} frames, {workers} worker(s)", progress)
        started = time.perf_counter()
        result = audit_batch(clips, scene, out=folder / f"out-{workers}", workers=workers, explainer="deterministic",
                             fresh=True, progress=progress)  # fmt: skip
        seconds = time.perf_counter() - started
        runs[workers] = {
            "seconds": round(seconds, 2),
            "ray_start_seconds": round(result.start_seconds, 2),
            "videos_per_minute": round(60 * videos / seconds, 2),
            "frames_per_second": round(videos * frames / seconds, 1),
            "failed": len(result.failed),
        }
    return {
        "videos": videos,
        "frames_per_video": frames,
        "workers_1": runs[1],
        "workers_2": runs[2],
        "speedup_2_over_1": round(runs[1]["seconds"] / runs[2]["seconds"], 2),
        "speedup_after_ray_start": round(
            (runs[1]["seconds"] - runs[1]["ray_start_seconds"]) / (runs[2]["seconds"] - runs[2]["ray_start_seconds"]),
            2,
        ),
    }
