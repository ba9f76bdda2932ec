"""Bad input, tried as a new user would: each case ends with exit code 2 and one line naming the input and the
problem, no traceback, and nothing written. Cases are built here, in a temporary folder, from the shared
synthetic scene."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from anomalens.report import Report
from tests.helpers.cli import run
from tests.helpers.network import Handler, free_port, serve

GARBAGE = bytes(range(128, 256)) * 8  # not UTF-8 from its first byte


@pytest.fixture
def inputs(scene_and_video, tmp_path):
    scene, test, captions = scene_and_video
    scene.save(tmp_path / "scene")
    (tmp_path / "garbage.txt").write_bytes(GARBAGE)
    return tmp_path, test.video, captions


class Workspace:
    """Bad inputs, each built on demand in a temporary folder beside a good scene, video and caption file."""

    def __init__(self, folder: Path, video: Path, captions: Path):
        self.folder, self.video, self.captions = folder, Path(video), Path(captions)
        self.scene, self.out = folder / "scene", folder / "out"
        self.audit = ["audit", self.video, "--scene", self.scene, "--out", self.out, "--explainer", "deterministic"]

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def empty_folder(self, name: str) -> Path:
        (self.folder / name).mkdir()
        return self.folder / name

    def image(self, name: str, width: int, height: int) -> Path:
        import cv2

        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
        return path

    def frames(self, name: str, width: int, height: int, count: int = 40) -> Path:
        """A frame folder of ``count`` noisy frames of the given size."""
        import cv2

        folder = self.folder / name
        folder.mkdir()
        rng = np.random.default_rng(0)
        for k in range(count):
            cv2.imwrite(str(folder / f"{k:04d}.png"), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        return folder

    def scene_with(self, name: str, damage) -> Path:
        damaged = self.folder / f"scene-{name}"
        shutil.copytree(self.scene, damaged)
        damage(damaged)
        return damaged

    def rules_with(self, name: str, edit) -> Path:
        return self.scene_with(name, lambda d: (d / "rules.yaml").write_text(edit((d / "rules.yaml").read_text())))

    def audit_of(self, video: Path) -> list:
        return ["audit", video, *self.audit[2:]]


# name -> (the case built in a Workspace: argv, a fragment of the one line it must print, env settings)
CORPUS = {
    # media
    "video missing": lambda w: (w.audit_of(w.folder / "nope.avi"), f"{w.folder / 'nope.avi'}: no such file"),
    "video empty": lambda w: (w.audit_of(w.file("empty.avi", b"")), "empty.avi: file is empty (0 bytes)"),
    "text as video": lambda w: (w.audit_of(w.file("text.avi", "not a video\n" * 50)), "text.avi: cannot be decoded"),
    "video truncated": lambda w: (
        w.audit_of(w.file("cut.avi", w.video.read_bytes()[:3000])), "cut.avi: cannot be decoded"
    ),
    "unknown file type": lambda w: (w.audit_of(w.file("clip.xyz", "x")), "clip.xyz: unsupported file type '.xyz'"),
    "frame folder empty": lambda w: (w.audit_of(w.empty_folder("frames")), "frames: folder contains no images"),
    "frame folder without images": lambda w: (
        w.audit_of(w.file("noimages/readme.txt", "x").parent), "noimages: folder contains no images"
    ),
    "corrupt image in a folder": lambda w: (
        w.audit_of(w.file("corrupt/0001.png", GARBAGE).parent), "0001.png: cannot be decoded as an image"
    ),
    "corrupt image": lambda w: (w.audit_of(w.file("bad.png", GARBAGE)), "bad.png: cannot be decoded as an image"),
    "frames of another camera": lambda w: (
        w.audit_of(w.image("small/0001.png", 80, 60).parent), "small: 80x60 frames do not fit this scene"
    ),
    "video to learn is text": lambda w: (
        ["induce-rules", w.file("text.avi", "not a video\n" * 50), "--out", w.out, "--no-objects"],
        "text.avi: cannot be decoded",
    ),
    "stream unreachable": lambda w: (
        ["watch", "http://127.0.0.1:9/stream.mjpg", "--scene", w.scene],
        "http://127.0.0.1:9/stream.mjpg: cannot be opened",
    ),
    "report to index missing": lambda w: (["index", w.folder / "nope"], "nope: not found"),
    "nothing to index": lambda w: (["index"], "give report.json files or folders to index (or --prune)"),
    "report to index is not one": lambda w: (["index", w.file("report.json", "[1, 2]")], "report.json:"),
    "event store is a file": lambda w: (
        ["index", w.file("r/report.json", "{}")], "exists and is not a folder; give a folder for the event store",
        {"STORE_DIR": str(w.file("store-file", "x"))},
    ),
    "video to watch missing": lambda w: (
        ["watch", w.folder / "nope.avi", "--scene", w.scene], "nope.avi: no such file"
    ),
    "batch input missing": lambda w: (
        ["audit-batch", w.folder / "none", "--scene", w.scene, "--out", w.out], f"{w.folder / 'none'}: no such file"
    ),
    "batch explained by an agent that cannot load": lambda w: (
        ["audit-batch", w.video, "--scene", w.scene, "--out", w.out, "--explainer", "agent"],
        "model 'qwen2.5-coder-1.5b' is not in the store",
        {"MODEL_DIR": str(w.folder / "none")},
    ),
    # scenes
    "scene missing": lambda w: (
        ["audit", w.video, "--scene", w.folder / "none", "--out", w.out], f"{w.folder / 'none'}: not a scene folder"
    ),
    "scene is a file": lambda w: (
        ["audit", w.video, "--scene", w.file("a-file", "x"), "--out", w.out], "a-file: not a scene folder"
    ),
    "scene.json not JSON": lambda w: (
        w.audit[:3] + [w.scene_with("json", lambda d: (d / "scene.json").write_text("{"))] + w.audit[4:],
        "scene.json: damaged, not JSON",
    ),
    "motion.npz missing": lambda w: (
        w.audit[:3] + [w.scene_with("npz", lambda d: (d / "motion.npz").unlink())] + w.audit[4:],
        "motion.npz: missing",
    ),
    "motion.npz truncated": lambda w: (
        w.audit[:3]
        + [w.scene_with("cut", lambda d: (d / "motion.npz").write_bytes((d / "motion.npz").read_bytes()[:100]))]
        + w.audit[4:],
        "motion.npz: damaged",
    ),
    # rulebooks
    "rulebook missing": lambda w: (
        w.audit[:3] + [w.scene_with("norules", lambda d: (d / "rules.yaml").unlink())] + w.audit[4:],
        "rules.yaml: rulebook not found",
    ),
    "rulebook not YAML": lambda w: (
        w.audit[:3] + [w.rules_with("yaml", lambda text: text + "\n  - id: [unclosed\n")] + w.audit[4:],
        "rules.yaml:",
    ),
    "rulebook field of the wrong type": lambda w: (
        w.audit[:3] + [w.rules_with("type", lambda text: text.replace("enabled: true", "enabled: maybe", 1))]
        + w.audit[4:],
        "rules.0.enabled: Input should be a valid boolean",
    ),
    "rulebook not UTF-8": lambda w: (
        w.audit[:3] + [w.scene_with("utf8", lambda d: (d / "rules.yaml").write_bytes(GARBAGE))] + w.audit[4:],
        "rules.yaml: not a rulebook: not UTF-8",
    ),
    # captions
    "captions missing": lambda w: ([*w.audit, "--captions", w.folder / "none.txt"], "none.txt: caption file not found"),
    "captions a folder": lambda w: ([*w.audit, "--captions", w.folder], f"{w.folder}: a folder, not a caption file"),
    "captions JSONL damaged": lambda w: (
        [*w.audit, "--captions", w.file("c.jsonl", '{"frame": 0, "caption": "a"}\n{oops\n')], "c.jsonl:2: expected"
    ),
    "caption rules without captions": lambda w: (
        [*w.audit, "--caption-rules", w.file("r.txt", "Anomaly rules:\n1. Running\n")],
        "caption rules screen the video's captions: give them with --captions FILE",
    ),
    "caption rules missing": lambda w: (
        [*w.audit, "--captions", w.captions, "--caption-rules", w.folder / "none.txt"], "none.txt: rule text not found"
    ),
    "caption rules without a rule": lambda w: (
        [*w.audit, "--captions", w.captions, "--caption-rules", w.file("r.txt", "nothing here\n")],
        "r.txt:1: 'nothing here' is neither a numbered rule nor a heading",
    ),
    "captions to reason about missing": lambda w: (
        ["reason-captions", w.folder / "none.txt", "--rules", w.file("r.txt", "Anomaly rules:\n1. Running\n")],
        "none.txt: caption file not found",
    ),
    # outputs
    "--json is a folder": lambda w: (
        ["reason-captions", w.captions, "--rules", w.file("r.txt", "Anomaly rules:\n1. Running\n"), "--json",
         w.folder, "--llm-fraction", "0"],
        f"Invalid value for '--json': {w.folder}: a folder; give a file name to write",
    ),  # fmt: skip
    "rulebook written under a file": lambda w: (
        ["induce-caption-rules", w.captions, "--out", w.file("a-file", "x") / "rules.yaml"],
        "a-file: exists and is not a folder",
    ),
    "synthetic scene written into a file": lambda w: (
        ["synth", w.file("a-file", "x"), "--frames", "3"], "a-file: exists and is not a folder"
    ),
    "eval metrics written under /dev/null": lambda w: (
        ["eval", "ped2", "--json", "/dev/null/metrics.json"], "/dev/null: exists and is not a folder"
    ),
    # chat state
    "sessions database damaged": lambda w: (
        ["chat", w.video, "--scene", w.scene, "--ask", "hi"],
        "sessions.sqlite: cannot keep chat sessions there (file is not a database)",
        {"CHAT_DIR": str(w.file("chat/sessions.sqlite", GARBAGE).parent)},
    ),
    "chat folder is a file": lambda w: (
        ["chat", w.video, "--scene", w.scene, "--ask", "hi"],
        "a-file: exists and is not a folder; give a folder for chat sessions",
        {"CHAT_DIR": str(w.file("a-file", "x"))},
    ),
    "chat about a missing video": lambda w: (
        ["chat", w.folder / "nope.avi", "--ask", "hi"], "nope.avi: no such file or folder"
    ),
    # settings
    "LLM timeout not a number": lambda w: (w.audit, "settings: llm_timeout", {"LLM_TIMEOUT": "soon"}),
    "analysis size too small": lambda w: (
        ["induce-rules", w.video, "--out", w.out, "--no-objects"], "settings: max_side", {"MAX_SIDE": "5"}
    ),
    "explainer unknown": lambda w: (
        [*w.audit[:-1], "oracle"], "explainer 'oracle': choose auto, agent or deterministic"
    ),
    "LLM backend unknown": lambda w: (
        [*w.audit[:-1], "agent"], "unknown backend 'llm:nosuch'", {"LLM": "nosuch"}
    ),
    "LLM model file missing": lambda w: (
        [*w.audit[:-1], "agent"], "none.gguf: no such GGUF file", {"LLM_MODEL": str(w.folder / "none.gguf")}
    ),
    "model store empty": lambda w: (
        [*w.audit[:-1], "agent"], "model 'qwen2.5-coder-1.5b' is not in the store",
        {"MODEL_DIR": str(w.folder / "none")},
    ),
    "model unknown to the store": lambda w: (["models", "pull", "no-such-model"], "unknown model 'no-such-model'"),
    "benchmark data missing": lambda w: (
        ["eval", "ped2", "--data", w.folder / "none"], f"{w.folder / 'none'}: not a UCSD Ped2 folder"
    ),
    "option unknown": lambda w: ([*w.audit, "--colour", "red"], "No such option: --colour"),
    # sizes and shapes
    "video of 1x1 pixels to learn": lambda w: (
        ["induce-rules", w.frames("dot", 1, 1), "--out", w.out, "--no-objects", "--fps", "10"],
        "dot: 1x1 frames: too small to learn a scene from (at least 32 px a side)",
    ),
    "video of 10000x10 pixels to learn": lambda w: (
        ["induce-rules", w.frames("strip", 10000, 10), "--out", w.out, "--no-objects", "--fps", "10"],
        "strip: 10000x10 frames: too small to learn a scene from",
    ),
    "rulebook of aliases (117 KB that expand to 100 MB)": lambda w: (
        w.audit[:3] + [w.rules_with("alias", lambda text: "bomb: &a [x, x]\nmore: [*a, *a]\n" + text)] + w.audit[4:],
        "an alias (*name): a rulebook spells every value out",
    ),
    "rulebook of 3 MB": lambda w: (
        w.audit[:3] + [w.rules_with("big", lambda text: text + "# " + "x" * 3_000_000 + "\n")] + w.audit[4:],
        "is not a rulebook (at most 2,000,000)",
    ),
    # manifests
    "manifest naming itself": lambda w: (
        ["audit-batch", w.file("list.txt", "list.txt\n"), "--scene", w.scene, "--out", w.out],
        "list.txt: a manifest that names itself",
    ),
    "manifest not UTF-8": lambda w: (
        ["audit-batch", w.file("list.txt", GARBAGE), "--scene", w.scene, "--out", w.out],
        "list.txt: not a manifest: not UTF-8",
    ),
    # the app's server
    "token of one character": lambda w: (["serve", "--no-llm"], "the token is 1 characters long: give one of at least 16",
                                         {"TOKEN": "a"}),  # fmt: skip
    "token file missing": lambda w: (
        ["serve", "--no-llm", "--token-file", w.folder / "none.txt"], "none.txt: cannot read the token"
    ),
}


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CORPUS)
def test_bad_input_gets_one_line_naming_it_and_leaves_no_file(inputs, case, monkeypatch, capsys):
    folder, video, captions = inputs
    monkeypatch.setenv("ANOMALENS_CHAT_DIR", str(folder / "chat"))
    argv, said, *env = CORPUS[case](Workspace(folder, video, captions))
    for name, value in (env[0] if env else {}).items():
        monkeypatch.setenv(f"ANOMALENS_{name}", value)
    before = _files(folder)
    code, err = run(argv, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert said in " ".join(err.split()) and "Traceback" not in err, err
    assert _files(folder) == before and not (folder / "out").exists()  # nothing written, nothing half-written


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
    in_the_way = f"{folder / 'a-file'}: exists and is not a folder; give a folder for the results"
    cases = {  # the output given: the line said (sysfs takes no new files, even from root)
        folder / "a-file": in_the_way,
        folder / "a-file" / "results": in_the_way,
        "/sys/results": "/sys/results: cannot write the results there (Permission denied)",
    }
    for out, said in cases.items():
        for argv in (["audit", video, "--scene", folder / "scene", "--explainer", "deterministic"],
                     ["induce-rules", video, "--no-objects"]):  # fmt: skip
            code, err = run([*argv, "--out", out], monkeypatch, capsys)
            assert code == 2 and err.strip() == f"error: {said}", (argv, err)
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


@pytest.fixture
def web_page_server():
    """A server on 127.0.0.1 that answers every request with a web page, not a chat completion; yields its URL."""
    class WebPage(Handler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(200, b"<html><body>It works!</body></html>", "text/html")

    with serve(WebPage) as url:
        yield f"{url}/v1"


@pytest.mark.parametrize("server", ["hangs", "refuses", "answers a web page"])
def test_an_llm_server_that_fails_costs_the_timeout_and_never_the_screening(
    inputs, server, hanging_server, web_page_server, monkeypatch, capsys
):
    """--explainer auto fell back on nothing: a refused connection lost the audit, a hung server held it 366 s."""
    pytest.importorskip("openai", reason="pip install 'anomalens[openai]'")
    folder, video, _ = inputs
    refusing = f"http://127.0.0.1:{free_port()}/v1"
    urls = {"hangs": hanging_server, "refuses": refusing, "answers a web page": web_page_server}
    url = urls[server]
    for name, value in {"LLM": "openai", "LLM_MODEL": "m", "LLM_BASE_URL": url, "LLM_TIMEOUT": "1"}.items():
        monkeypatch.setenv(f"ANOMALENS_{name}", value)
    argv = ["audit", video, "--scene", folder / "scene", "--out", folder / "out"]
    code, err = run([*argv, "--explainer", "auto"], monkeypatch, capsys)
    assert code == 0 and "the LLM failed" in " ".join(err.split()), err
    report = Report.model_validate_json((folder / "out" / "report.json").read_text())
    assert report.events and "deterministic for the rest" in report.explainer
    assert {x.generator for x in report.explanations} == {"deterministic"}  # plain explanations, none the LLM's
    code, err = run([*argv, "--explainer", "agent"], monkeypatch, capsys)  # asked for the agent: an error, kept work
    problem = {"hangs": "no answer within 1 s", "refuses": "cannot reach the LLM server"}.get(
        server, "the reply held no chat completion"
    )
    assert code == 2 and problem in " ".join(err.split()) and "the report is written" in err
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


def test_a_bug_is_one_line_and_debug_shows_its_traceback(inputs, monkeypatch, capsys):
    folder, video, _ = inputs

    def broken(*args, **kwargs):
        raise TypeError("an internal fault\nits second line")

    monkeypatch.setattr("anomalens.pipelines.audit", broken)
    argv = ["audit", video, "--scene", folder / "scene", "--out", folder / "out"]
    code, err = run(argv, monkeypatch, capsys)
    assert code == 1 and err == (
        "error: unexpected TypeError: an internal fault (a bug; `anomalens --debug ...` shows where)\n"
    )
    with pytest.raises(TypeError, match="an internal fault"):  # the traceback, for whoever reports it
        run(["--debug", *argv], monkeypatch, capsys)
    assert run(argv, monkeypatch, capsys)[0] == 1  # --debug holds for that run only
