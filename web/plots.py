"""Small SVG pictures for the app's pages, drawn on the server (no plotting library in the browser)."""

from __future__ import annotations

import html

from anomalens.draw import time_ticks


def score_svg(
    scores: list[tuple[int, float]], threshold: float, fps: float, event: dict, width: int = 900, height: int = 160
) -> str:
    """The video's anomaly score over time, the threshold dashed and ``event``'s span shaded."""
    left, right, top, bottom = 40, 10, 8, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    last = max((f for f, _ in scores), default=1) or 1
    peak = max([s for _, s in scores] + [2.0 * threshold, 1e-6])

    def x(frame: float) -> float:
        return left + plot_w * frame / last

    def y(score: float) -> float:
        return top + plot_h * (1.0 - min(score, peak) / peak)

    x0, x1 = x(event["start_frame"]), x(event["end_frame"])
    points = " ".join(f"{x(f):.1f},{y(s):.1f}" for f, s in scores)
    ticks = []
    for second, label in time_ticks(last / fps, 10):
        tx = x(second * fps)
        ticks.append(f'<text x="{tx:.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{label}</text>')
    label = html.escape(f"{event['key']}: {event['start_s']:.1f}-{event['end_s']:.1f} s")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="plot" role="img" '
        f'aria-label="anomaly score over time">'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>'
        f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" height="{plot_h}" fill="#e53935" '
        f'fill-opacity="0.2"><title>{label}</title></rect>'
        f'<polyline points="{points}" fill="none" stroke="#1565c0" stroke-width="1.2"/>'
        f'<line x1="{left}" x2="{left + plot_w}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" stroke="#e53935" '
        f'stroke-dasharray="5,4"/><text x="{left - 4}" y="{top + 9}" font-size="10" text-anchor="end">'
        f'{peak:.1f}</text><text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>'
        + "".join(ticks)
        + "</svg>"
    )
