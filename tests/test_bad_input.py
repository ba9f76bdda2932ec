"""Bad input, tried as a new user would: each case ends with exit code 2 and one line naming the input and the
problem, no traceback, and nothing written. Cases are built here, in a temporary folder, from the shared
synthetic scene."""

import re
import shutil
import sys

import numpy as np
import pytest

from anomalens.cli import main
from anomalens.report import Report

GARBAGE = bytes(range(128, 256)) * 8  # not UTF-8 from its first byte


def run(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``anomalens ARGV`` in this process, as its console script runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["anomalens", *map(str, argv)])
    try:
        main()
    except SystemExit as ended:
        return ended.code or 0, capsys.readouterr().err
    return 0, capsys.readouterr().err


@pytest.fixture
def inputs(scene_and_video, tmp_path):
    scene, test, captions = scene_and_video
    scene.save(tmp_path / "scene")
    (tmp_path / "garbage.txt").write_bytes(GARBAGE)
    return tmp_path, test.video, captions


def _scene_with(folder, name: str, damage) -> str:
    damaged = folder / f"scene-{name}"
    shutil.copytree(folder / "scene", damaged)
    damage(damaged)
    return str(damaged)


SCENE_DAMAGE = {
    "scene.json not JSON": (lambda d: (d / "scene.json").write_text("{"), r"scene\.json: damaged, not JSON"),
    "motion.npz missing": (lambda d: (d / "motion.npz").unlink(), r"motion\.npz: missing"),
    "motion.npz truncated": (
        lambda d: (d / "motion.npz").write_bytes((d / "motion.npz").read_bytes()[:100]),
        r"motion\.npz: damaged",
    ),
    "rules.yaml not UTF-8": (
        lambda d: (d / "rules.yaml").write_bytes(GARBAGE), r"rules\.yaml: not a rulebook: not UTF-8"
    ),
}


@pytest.mark.parametrize("case", SCENE_DAMAGE)
def test_a_damaged_scene_folder_is_named_and_nothing_is_written(inputs, case, monkeypatch, capsys):
    folder, video, _ = inputs
    damage, message = SCENE_DAMAGE[case]
    scene = _scene_with(folder, case.split()[0].replace(".", "-"), damage)
    code, err = run(["audit", video, "--scene", scene, "--out", folder / "out", "--explainer", "deterministic"],
                    monkeypatch, capsys)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err) and "Traceback" not in err
    assert not (folder / "out").exists()


def test_text_files_that_are_not_utf8_are_named_before_any_work(inputs, monkeypatch, capsys):
    folder, video, captions = inputs
    garbage, scene, out, rules = folder / "garbage.txt", folder / "scene", folder / "out", folder / "rules.txt"
    rules.write_text("Anomaly rules:\n1. Riding a bicycle\nNormal rules:\n1. Walking on the path\n")
    cases = [
        (["audit", video, "--scene", scene, "--out", out, "--captions", garbage], "not a caption file"),
        (["audit", video, "--scene", scene, "--out", out, "--captions", captions, "--caption-rules", garbage],
         "not a rule text"),
        (["reason-captions", garbage, "--rules", rules], "not a caption file"),
        (["reason-captions", captions, "--rules", garbage], "not a rule text"),
        (["chat", video, "--scene", scene, "--captions", garbage, "--ask", "summarize the video"],
         "not a caption file"),
    ]  # fmt: skip
    for argv, what in cases:
        code, err = run([*argv, "--explainer", "deterministic"] if argv[0] == "audit" else argv, monkeypatch, capsys)
        assert code == 2 and err.strip() == f"error: {garbage}: {what}: not UTF-8 text (byte 0)", (argv, err)
        assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["synth", "{tmp}/s", "--frames", "-5"], "--frames"),
        (["induce-rules", "{video}", "--out", "{tmp}/s", "--max-side", "5"], "--max-side"),
        (["audit", "{video}", "--scene", "{tmp}/scene", "--out", "{tmp}/s", "--fps", "-1"], "--fps"),
        (["chat", "{video}", "--fps", "0", "--ask", "hi"], "--fps"),
    ],
)
def test_settings_out_of_range_are_refused_as_usage_errors(inputs, argv, option, monkeypatch, capsys):
    folder, video, _ = inputs
    code, err = run([a.format(tmp=folder, video=video) for a in argv], monkeypatch, capsys)
    assert code == 2 and f"Invalid value for '{option}'" in err and "Traceback" not in err
    assert not (folder / "s").exists()


@pytest.mark.parametrize("frames", [1, 3])
def test_a_clip_shorter_than_the_smoothing_window_is_audited(inputs, frames, monkeypatch, capsys):
    """Under about 11 frames, screening's smoothing window outgrew the clip and the audit crashed."""
    import cv2

    folder, _, _ = inputs
    clip = folder / f"short-{frames}.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    for k in range(frames):
        writer.write(np.full((240, 320, 3), 90 + k, np.uint8))
    writer.release()
    out = folder / f"out-{frames}"
    code, err = run(["audit", clip, "--scene", folder / "scene", "--out", out, "--explainer", "deterministic"],
                    monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    report = Report.model_validate_json((out / "report.json").read_text())
    assert len(report.scores) == frames  # a grey clip is not the scene: it may well be anomalous


def test_an_output_that_cannot_take_the_results_is_refused_before_any_work(inputs, monkeypatch, capsys):
    folder, video, _ = inputs
    (folder / "a-file").write_text("not a folder")
    for out, problem in ((folder / "a-file", "exists and is not a folder"),
                         ("/dev/null/results", "cannot write results there")):  # fmt: skip
        for argv in (["audit", video, "--scene", folder / "scene", "--explainer", "deterministic"],
                     ["induce-rules", video, "--no-objects"]):  # fmt: skip
            code, err = run([*argv, "--out", out], monkeypatch, capsys)
            assert code == 2 and err.strip() == f"error: {out}: {problem}" + (
                "; give a folder for the results" if "file" in str(out) else " (Not a directory)"
            ), (argv, err)
    assert (folder / "a-file").read_text() == "not a folder"


def test_learning_again_keeps_the_rulebook_a_person_edited(walkway, tmp_path, monkeypatch, capsys):
    """Data loss 1: re-running induce-rules into a scene overwrote a hand-edited rules.yaml without a word."""
    normal, _ = walkway
    out = tmp_path / "scene"
    assert run(["induce-rules", normal.video, "--out", out, "--no-objects"], monkeypatch, capsys)[0] == 0
    edited = (out / "rules.yaml").read_text().replace("enabled: true", "enabled: false", 2)
    (out / "rules.yaml").write_text(edited)
    code, err = run(["induce-rules", normal.video, "--out", out, "--no-objects"], monkeypatch, capsys)
    assert code == 0 and (out / "rules.v1.yaml").read_text() == edited  # the person's file, byte for byte
    from anomalens.rules.io import load_rulebook

    before, after = load_rulebook(out / "rules.v1.yaml"), load_rulebook(out / "rules.yaml")
    disabled = {r.id for r in before.rules if not r.enabled}
    assert len(disabled) == 2 and disabled == {r.id for r in after.rules if not r.enabled}
    assert "kept as rules.v1.yaml; 2 rule(s) disabled there stay disabled" in " ".join(err.split())
    run(["induce-rules", normal.video, "--out", out, "--no-objects"], monkeypatch, capsys)
    assert (out / "rules.v1.yaml").read_text() == edited and (out / "rules.v2.yaml").exists()  # versions pile up


def test_chat_sessions_are_locked_bound_to_their_video_and_named_safely(index, tmp_path, monkeypatch, capsys):
    from anomalens.agents.chat import ChatSession
    from anomalens.agents.llm.scripted import ScriptedLLM
    from anomalens.errors import ConfigError

    database = tmp_path / "chat" / "sessions.sqlite"
    first = ChatSession(index, ScriptedLLM([]), database, "s1")
    # Data loss 2: a second chat on the same session kept only one of the two new turns; it is refused now.
    with pytest.raises(ConfigError, match="session s1 is open in another chat"):
        ChatSession(index, ScriptedLLM([]), database, "s1")
    first.ask("summarize the video")
    first.close()
    again = ChatSession(index, ScriptedLLM([]), database, "s1")
    assert [t["question"] for t in again.history] == ["summarize the video"]
    again.close()
    elsewhere = index.model_copy(update={"video": "another.avi"})
    with pytest.raises(ConfigError, match=r"session s1 is about .*video\.avi, not another\.avi"):
        ChatSession(elsewhere, ScriptedLLM([]), database, "s1")
    ChatSession(index, ScriptedLLM([]), database, "s1").close()  # the refusal left no lock behind
    for bad in ("../../x", "a/b", "", "x" * 65):
        with pytest.raises(ConfigError, match="letters, digits"):
            ChatSession(index, ScriptedLLM([]), database, bad or " ")
    (tmp_path / "broken.sqlite").write_bytes(GARBAGE)
    with pytest.raises(ConfigError, match=r"broken\.sqlite: cannot keep chat sessions there"):
        ChatSession(index, ScriptedLLM([]), tmp_path / "broken.sqlite", "s1")
    with pytest.raises(ConfigError, match=r"/dev/null: cannot keep chat sessions there"):
        ChatSession(index, ScriptedLLM([]), "/dev/null/sessions.sqlite", "s1")
    code, err = run(["chat", index.video, "--session", "../../x", "--ask", "hi"], monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: session '../../x': letters, digits, '_' and '-' only, at most 64"


@pytest.fixture
def hanging_server():
    """An "LLM server" on 127.0.0.1 that accepts connections and never answers; yields its base URL."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("server", ["hangs", "refuses"])
def test_an_llm_server_that_fails_costs_the_timeout_and_never_the_screening(
    inputs, server, hanging_server, monkeypatch, capsys
):
    """--explainer auto fell back on nothing: a refused connection lost the audit, a hung server held it 366 s."""
    pytest.importorskip("openai", reason="pip install 'anomalens[openai]'")
    folder, video, _ = inputs
    url = hanging_server if server == "hangs" else f"http://127.0.0.1:{_free_port()}/v1"
    for name, value in {"LLM": "openai", "LLM_MODEL": "m", "LLM_BASE_URL": url, "LLM_TIMEOUT": "1"}.items():
        monkeypatch.setenv(f"ANOMALENS_{name}", value)
    argv = ["audit", video, "--scene", folder / "scene", "--out", folder / "out"]
    code, err = run([*argv, "--explainer", "auto"], monkeypatch, capsys)
    assert code == 0 and "the LLM failed" in " ".join(err.split()), err
    report = Report.model_validate_json((folder / "out" / "report.json").read_text())
    assert report.events and report.explanations == [] and "deterministic for the rest" in report.explainer
    code, err = run([*argv, "--explainer", "agent"], monkeypatch, capsys)  # asked for the agent: an error, kept work
    problem = "no answer within 1 s" if server == "hangs" else "cannot reach the LLM server"
    assert code == 2 and problem in err and "the report is written" in err
    assert Report.model_validate_json((folder / "out" / "report.json").read_text()).events == report.events


def test_an_assumed_frame_rate_is_said_aloud_and_in_the_report(inputs, monkeypatch, capsys):
    """A frame folder states no rate: it was taken as 25 fps without a word, and every time in seconds with it."""
    import cv2

    folder, video, _ = inputs
    frames = folder / "frames"
    frames.mkdir()
    capture = cv2.VideoCapture(str(video))
    for k in range(20):
        cv2.imwrite(str(frames / f"{k:04d}.png"), capture.read()[1])
    capture.release()
    argv = ["audit", frames, "--scene", folder / "scene", "--explainer", "deterministic"]
    code, err = run([*argv, "--out", folder / "assumed"], monkeypatch, capsys)
    report = Report.model_validate_json((folder / "assumed" / "report.json").read_text())
    note = "15 frames/s assumed: an image input states no frame rate (give --fps if it differs)"  # the scene's rate
    assert code == 0 and report.fps == 15 and report.fps_note == note and note in " ".join(err.split())
    assert note in (folder / "assumed" / "report.html").read_text()
    code, err = run([*argv, "--out", folder / "given", "--fps", "10"], monkeypatch, capsys)
    report = Report.model_validate_json((folder / "given" / "report.json").read_text())
    assert code == 0 and report.fps == 10 and report.fps_note is None and "frames/s assumed" not in err, err


def test_a_negative_limit_in_a_rulebook_is_named_with_its_line(inputs, monkeypatch, capsys):
    """It was accepted, with a numpy overflow warning, and every frame broke the rule."""
    folder, video, _ = inputs
    scene = folder / "scene"
    text = (scene / "rules.yaml").read_text()
    limit = re.search(r"(- id: speed-any\n(?:.*\n)*?\s+value: )([0-9.]+)", text)
    (scene / "rules.yaml").write_text(text[: limit.start(2)] + "-1.5" + text[limit.end(2) :])
    code, err = run(["audit", video, "--scene", scene, "--out", folder / "out", "--explainer", "deterministic"],
                    monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "speed is never negative: a limit below 0 cannot hold" in err, err
    assert re.search(r"rules\.yaml:\d+: rules\.\d+\.predicate", err)  # the file, its line, the field
    assert not (folder / "out").exists()


def test_captions_that_do_not_fit_the_video_are_warned_about(inputs, monkeypatch, capsys):
    """Caption files with fewer or more lines than frames, or all blank, passed without a word (and fewer lines
    changed the events)."""
    folder, video, captions = inputs
    lines = captions.read_text().splitlines()  # one per frame of the clip (300)
    argv = ["audit", video, "--scene", folder / "scene", "--explainer", "deterministic"]
    cases = {
        "short.txt": (lines[:200], "100 of the 300 frames have no caption"),
        "long.txt": (lines + ["A person walks."] * 5, "5 caption(s) lie beyond the video's last frame"),
        "blank.txt": ([""] * 300, "every caption is blank"),
        "fits.txt": (lines, None),
    }
    for name, (text, warning) in cases.items():
        (folder / name).write_text("\n".join(text) + "\n")
        code, err = run([*argv, "--captions", folder / name, "--out", folder / name[:-4]], monkeypatch, capsys)
        said = " ".join(err.split())
        expected = f"warning: {folder / name}: {warning}" in said if warning else "warning" not in said
        assert code == 0 and expected, said
