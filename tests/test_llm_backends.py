"""Real LLM backends on the CPU: llama.cpp in-process and an OpenAI-compatible server (llama-cpp-python's,
on 127.0.0.1) with a real GGUF model; vLLM's refusal without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from pydantic import BaseModel

from anomalens.agents.llm import Message, ToolSpec, ask_structured, open_llm
from anomalens.errors import LLMError
from tests.helpers.network import free_port

pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed")

SPEED = ToolSpec(
    name="measure_speed",
    description="Measure how fast a tracked object moves, in m/s.",
    parameters={"type": "object", "properties": {"track": {"type": "integer"}}, "required": ["track"]},
)


class Sighting(BaseModel):
    object: str
    count: int


def ask_sighting() -> list[Message]:
    return [Message(role="user", content="Three bicycles are on the path. Which object, and how many?")]


@pytest.fixture(scope="module")
def llamacpp(smollm2):
    return open_llm("llamacpp", str(smollm2), n_ctx=2048)


def test_llamacpp_chat_reports_tokens_and_latency(llamacpp):
    hello = [Message(role="user", content="Say hello.")]
    result = llamacpp.chat(hello, max_tokens=12)
    assert result.text.strip() and result.backend == "llamacpp"
    assert 1 <= result.completion_tokens <= 12 and result.prompt_tokens > 5
    assert 0 < result.first_token_seconds < result.seconds
    # The prompt's count does not depend on how generation ended (at max_tokens or at end of turn).
    cut, whole = llamacpp.chat(hello, max_tokens=2), llamacpp.chat(hello, max_tokens=200)
    assert cut.completion_tokens == 2 and 2 < whole.completion_tokens < 200
    assert cut.prompt_tokens == whole.prompt_tokens == result.prompt_tokens


def test_llamacpp_structured_output_is_grammar_constrained(llamacpp):
    answer = ask_structured(llamacpp, ask_sighting(), Sighting, attempts=1, max_tokens=64)
    assert isinstance(answer.value.count, int) and answer.attempts == 1


def test_llamacpp_tool_calls_through_the_json_protocol(llamacpp):
    messages = [Message(role="user", content="How fast is track 4? Use the tool.")]
    result = llamacpp.chat(messages, tools=[SPEED], tool_choice="measure_speed", max_tokens=64)
    # The grammar admits only calls of the chosen tool, with arguments that match its schema.
    assert [c.name for c in result.tool_calls] == ["measure_speed"] * len(result.tool_calls) != []
    assert all(isinstance(c.arguments["track"], int) for c in result.tool_calls)
    free = llamacpp.chat(messages, tools=[SPEED], max_tokens=64)
    assert free.tool_calls or free.text  # free to call or answer, never unparsed protocol JSON
    assert not free.text.lstrip().startswith('{"tool_calls"')


def test_llamacpp_errors_name_the_model_and_the_problem(smollm2, tmp_path):
    from tests.helpers.files import write_gguf

    header_only = write_gguf(tmp_path / "header-only.gguf", {"general.architecture": "llama"})
    with pytest.raises(LLMError, match="header-only.gguf: llama.cpp could not load this model"):
        open_llm("llamacpp", str(header_only))
    small = open_llm("llamacpp", str(smollm2), n_ctx=64)
    with pytest.raises(LLMError, match=r"does not fit the context of \d+ tokens with 16 left for the reply"):
        small.chat([Message(role="user", content="word " * 200)], max_tokens=16)


def test_text_only_models_refuse_images(llamacpp):
    import numpy as np

    with pytest.raises(LLMError, match="text-only model: pass frames through tools"):
        llamacpp.chat([Message(role="user", content="what is this?", images=[np.zeros((4, 4, 3), np.uint8)])])


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on a free loopback port, with native tool calling."""
    pytest.importorskip("uvicorn", reason="llama-cpp-python's server needs its [server] extra")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm2),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--chat_format",
            "chatml-function-calling",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # a file: a full pipe would stall the server
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as response:
                assert json.load(response)["data"][0]["id"] == "smollm2"
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_openai_backend_chats_with_a_real_server(server):
    llm = open_llm("openai", "smollm2", base_url=server)
    result = llm.chat([Message(role="user", content="Say hello.")], max_tokens=12)
    assert result.text.strip() and result.backend == "openai"
    # This server streams no usage: completion tokens are counted from the stream, the prompt's are unknown.
    assert 1 <= result.completion_tokens <= 12 and result.prompt_tokens is None
    assert 0 < result.first_token_seconds < result.seconds


def test_openai_backend_structured_output_falls_back_to_the_servers_spelling(server):
    llm = open_llm("openai", "smollm2", base_url=server)
    answer = ask_structured(llm, ask_sighting(), Sighting, attempts=1, max_tokens=64)
    assert isinstance(answer.value.count, int)
    assert llm._styles == ["json_object"]  # this server rejected OpenAI's json_schema spelling


def test_openai_backend_native_tool_calls(server):
    llm = open_llm("openai", "smollm2", base_url=server)
    question = [Message(role="user", content="How fast is track 4? Call measure_speed.")]
    result = llm.chat(question, tools=[SPEED], tool_choice="measure_speed", max_tokens=64)
    assert len(result.tool_calls) == 1 and result.tool_calls[0].name == "measure_speed"
    assert result.tool_calls[0].id and isinstance(result.tool_calls[0].arguments["track"], int)


def test_openai_backend_names_an_unreachable_server():
    llm = open_llm("openai", "any", base_url=f"http://127.0.0.1:{free_port()}/v1", retries=0, timeout=5)
    with pytest.raises(LLMError, match=r"http://127.0.0.1:\d+/v1: cannot reach the LLM server"):
        llm.chat([Message(role="user", content="hi")])


def test_vllm_in_process_says_what_to_do_without_a_gpu():
    from anomalens.agents.llm.vllm_local import VLLMLocalLLM

    with pytest.raises(LLMError, match="vllm in-process backend .*ANOMALENS_LLM=openai"):
        VLLMLocalLLM("smollm2-135m")


@pytest.mark.slow
def test_the_default_embedded_llm_judges_and_calls_tools():
    """What the README's set-up gives a user: the default backend and model, from default settings."""
    from anomalens.config import DEFAULT_LLM
    from anomalens.eval.llm_bench import Judgement, case_messages, prompt_set
    from tests.helpers.environment import stored_model

    stored_model(DEFAULT_LLM)
    llm = open_llm()
    assert (llm.backend, llm.model) == ("llamacpp", DEFAULT_LLM)
    cases = prompt_set()
    answer = ask_structured(llm, case_messages(cases["cases"][0]), Judgement, max_tokens=160)
    assert answer.value.reason.strip() and answer.value.rule in (None, "R1", "R2", "R3", "R4", "R5", "R6", "R7")
    tools = [ToolSpec(**t) for t in cases["tools"]]
    result = llm.chat([Message(role="user", content="Look up rule R2.")], tools=tools, tool_choice="lookup_rule")
    assert result.tool_calls and all(c.name == "lookup_rule" for c in result.tool_calls)
    assert isinstance(result.tool_calls[0].arguments["rule_id"], str)


def test_openai_backend_sends_frames_as_image_parts_to_multimodal_models(tmp_path):
    import base64

    import cv2
    import numpy as np

    frame = np.random.default_rng(1).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    vision = open_llm("openai", "some-vlm", base_url="http://127.0.0.1:9/v1", multimodal=True)
    wire = vision._wire(Message(role="user", content="what is here?", images=[frame]))
    text, image = wire["content"]
    assert text == {"type": "text", "text": "what is here?"} and image["type"] == "image_url"
    header, payload = image["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), frame)  # lossless, RGB kept
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LLMError, match="broken.png: not a readable image"):
        vision._wire(Message(role="user", content="x", images=[tmp_path / "broken.png"]))
    text_only = open_llm("openai", "some-llm", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(LLMError, match="configured text-only"):
        text_only._wire(Message(role="user", content="x", images=[frame]))


def test_settings_choose_the_backend_and_its_server(monkeypatch):
    from anomalens.agents.llm.openai_http import OpenAICompatibleLLM

    monkeypatch.setenv("ANOMALENS_LLM", "openai")
    monkeypatch.setenv("ANOMALENS_LLM_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct")
    monkeypatch.setenv("ANOMALENS_LLM_BASE_URL", "http://gpu-box:8000/v1")
    llm = open_llm()
    assert isinstance(llm, OpenAICompatibleLLM)
    assert (llm.model, llm.base_url) == ("Qwen/Qwen2.5-VL-7B-Instruct", "http://gpu-box:8000/v1")
    monkeypatch.delenv("ANOMALENS_LLM_BASE_URL")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMError, match="no base URL"):
        open_llm()
