"""Real LLM backends on the CPU: llama.cpp in-process and an OpenAI-compatible server (llama-cpp-python's,
on 127.0.0.1) with a real GGUF model; vLLM's refusal without a GPU."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from pydantic import BaseModel

from anomalens.agents.llm import Message, ToolSpec, ask_structured, open_llm
from anomalens.errors import LLMError

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


def test_text_only_models_refuse_images(llamacpp):
    import numpy as np

    with pytest.raises(LLMError, match="text-only model: pass frames through tools"):
        llamacpp.chat([Message(role="user", content="what is this?", images=[np.zeros((4, 4, 3), np.uint8)])])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    with pytest.raises(LLMError, match="vllm in-process backend .*--llm openai"):
        VLLMLocalLLM("smollm2-135m")
