"""How many live streams one machine watches in real time, and how soon an event is out, measured side by side
in one run: ``watch`` on 1, 2, 4, ... copies of one video played at its own frame rate (as cameras would send
it), each for the same number of seconds. A stream keeps up when screening finishes 95% of its frames within
a second of their arrival. Each event has two latencies: from the arrival of its first frame to its "started"
record (half a smoothing window and the shortest event are part of it: it cannot be sure sooner), and from the
arrival of its last frame to its "closed" record (half a smoothing window and the allowed gap after it)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalens.pipelines.watch import watch
from anomalens.progress import say
from anomalens.tools.scene import Scene

KEEPS_UP_SECONDS = 1.0


def run_watch_speed(
    video: str | Path, scene: str | Path, *, streams: Sequence[int] = (1, 2, 4, 6), seconds: float = 30.0
) -> dict:
    loaded = Scene.load(scene)
    runs = {}
    for count in streams:
        say(f"{count} stream(s) of {video}, {seconds:g} s")
        ended = threading.Event()
        timer = threading.Timer(seconds, ended.set)
        timer.start()
        watched = watch([str(video)] * count, loaded, realtime=True, explainer="deterministic", emit=lambda r: None,
                        stop=ended, progress=False)  # fmt: skip
        timer.cancel()
        lags = [float(np.percentile(w.lag, 95)) for w in watched if w.lag]
        latencies = [latency for w in watched for latency in w.latencies]
        starts = [latency for w in watched for latency in w.start_latencies]
        runs[str(count)] = {
            "frames_per_stream": [w.frames for w in watched],
            "lag_p95_s": round(max(lags), 3),
            "keeps_up": max(lags) <= KEEPS_UP_SECONDS,
            "events": len(latencies),
            "started_latency_median_s": _percentile(starts, 50),
            "started_latency_p95_s": _percentile(starts, 95),
            "latency_median_s": _percentile(latencies, 50),
            "latency_p95_s": _percentile(latencies, 95),
        }
    kept_up = [int(n) for n, run in runs.items() if run["keeps_up"]]
    return {"video": str(video), "seconds": seconds, "runs": runs, "most_streams_in_real_time": max(kept_up, default=0)}


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
