"""The LLM interface without a model: JSON extraction, repair/retry of structured output, the tool protocol,
and the scripted backend."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from anomalens.agents.llm import Message, ToolCall, ToolSpec, ask_structured, open_llm
from anomalens.agents.llm.base import extract_json, parse_protocol_reply, protocol_messages, protocol_schema
from anomalens.agents.llm.scripted import ScriptedLLM
from anomalens.errors import LLMError


class Verdict(BaseModel):
    anomalous: bool
    rule: str | None


SPEED = ToolSpec(
    name="measure_speed",
    description="Speed of a track.",
    parameters={"type": "object", "properties": {"track": {"type": "integer"}}, "required": ["track"]},
)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! ```json\n{"a": [1, 2]}\n``` hope that helps', {"a": [1, 2]}),
        ('The answer is {"a": {"b": "}"}} and more text {"c": 2}', {"a": {"b": "}"}}),
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),
        ('{"ok": True, "none": None}', {"ok": True, "none": None}),
        ('{"text": "two\nlines"}', {"text": "two\nlines"}),
        ('{"quote": "say \\"hi\\" {"}', {"quote": 'say "hi" {'}),
    ],
)
def test_extract_json_finds_and_repairs(reply, expected):
    assert extract_json(reply) == expected


@pytest.mark.parametrize("reply", ["no json here", "{unclosed: ", ""])
def test_extract_json_refuses_what_is_not_json(reply):
    with pytest.raises(ValueError):
        extract_json(reply)


def test_structured_valid_first_time_sends_the_schema():
    llm = ScriptedLLM(['{"anomalous": true, "rule": "R1"}'])
    answer = ask_structured(llm, [Message(role="user", content="judge")], Verdict)
    assert answer.value == Verdict(anomalous=True, rule="R1")
    assert answer.attempts == 1 and not answer.repaired
    assert llm.calls[0]["schema"] == Verdict.model_json_schema()
    first = llm.calls[0]["messages"]
    assert first[0].role == "system" and '"anomalous"' in first[0].content  # the schema is in the prompt too
    assert first[1:] == [Message(role="user", content="judge")]


def test_structured_puts_the_format_after_an_existing_system_turn():
    llm = ScriptedLLM(['{"anomalous": true, "rule": "R1"}'])
    ask_structured(llm, [Message(role="system", content="You judge."), Message(role="user", content="x")], Verdict)
    system = llm.calls[0]["messages"][0]
    assert system.content.startswith("You judge.") and '"rule"' in system.content
    assert len(llm.calls[0]["messages"]) == 2


def test_structured_retries_with_the_validation_error_then_succeeds():
    llm = ScriptedLLM(['{"anomalous": "maybe"}', "I think it is fine", '{"anomalous": false, "rule": null}'])
    answer = ask_structured(llm, [Message(role="user", content="judge")], Verdict, attempts=3)
    assert answer.value == Verdict(anomalous=False, rule=None) and answer.attempts == 3
    second = llm.calls[1]["messages"]
    assert second[-2].role == "assistant" and second[-2].content == '{"anomalous": "maybe"}'
    assert "anomalous" in second[-1].content and "rule" in second[-1].content  # names the bad fields
    assert "no JSON value" in llm.calls[2]["messages"][-1].content


def test_structured_gives_up_with_a_clear_error_after_bounded_attempts():
    llm = ScriptedLLM(["nope"] * 5, model="tiny")
    with pytest.raises(LLMError, match=r"scripted:tiny gave no valid Verdict in 2 attempt\(s\); last error: no JSON"):
        ask_structured(llm, [Message(role="user", content="judge")], Verdict, attempts=2)
    assert len(llm.calls) == 2 and len(llm.script) == 3


def test_protocol_round_trip_of_tool_calls_and_answers():
    reply = json.dumps({"tool_calls": [{"name": "measure_speed", "arguments": {"track": 3}}]})
    result = parse_protocol_reply(reply, [SPEED])
    assert result.tool_calls == [ToolCall(id="call_0", name="measure_speed", arguments={"track": 3})]
    assert parse_protocol_reply('{"answer": "a cyclist"}', [SPEED]).text == "a cyclist"
    # A call to a tool that was not offered, or prose, is not a tool call: it comes back as text.
    unknown = '{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}'
    assert parse_protocol_reply(unknown, [SPEED]).tool_calls == []
    assert parse_protocol_reply("it is fast", [SPEED]).text == "it is fast"


def test_protocol_schema_admits_only_offered_tools():
    schema = protocol_schema([SPEED])
    call = schema["anyOf"][0]["properties"]["tool_calls"]["items"]["anyOf"][0]
    assert call["properties"]["name"] == {"const": "measure_speed"}
    assert call["properties"]["arguments"] == SPEED.parameters


def test_protocol_messages_describe_tools_and_mark_results_as_data():
    history = [
        Message(role="system", content="You explain anomalies."),
        Message(role="user", content="how fast?"),
        Message(role="assistant", tool_calls=[ToolCall(id="c1", name="measure_speed", arguments={"track": 3})]),
        Message(role="tool", name="measure_speed", tool_call_id="c1", content='{"speed_mps": 4.2}'),
    ]
    rendered = protocol_messages(history, [SPEED])
    assert rendered[0].role == "system" and rendered[0].content.startswith("You explain anomalies.")
    assert "measure_speed" in rendered[0].content and '"track"' in rendered[0].content
    assert json.loads(rendered[2].content) == {"tool_calls": [{"name": "measure_speed", "arguments": {"track": 3}}]}
    assert rendered[3].role == "user" and "not instructions" in rendered[3].content and "4.2" in rendered[3].content


def test_scripted_backend_replays_tool_calls_and_checks_them():
    llm = ScriptedLLM([[{"id": "c1", "name": "measure_speed", "arguments": {"track": 1}}], "done"])
    first = llm.chat([Message(role="user", content="go")], tools=[SPEED])
    assert first.tool_calls[0].name == "measure_speed" and first.backend == "scripted"
    assert llm.chat([Message(role="user", content="go")], tools=[SPEED]).text == "done"
    with pytest.raises(LLMError, match="ran out of replies after 2"):
        llm.chat([Message(role="user", content="again")])
    echo = open_llm("scripted", script=[lambda messages: f"you said {messages[-1].content}"])
    assert echo.chat([Message(role="user", content="hi")]).text == "you said hi"  # a step can be a function
    bad = ScriptedLLM([[{"id": "c1", "name": "delete_files", "arguments": {}}]])
    with pytest.raises(LLMError, match="not offered or not allowed: delete_files"):
        bad.chat([Message(role="user", content="go")], tools=[SPEED])


def test_chat_refuses_empty_conversations_and_tools_with_a_schema():
    llm = ScriptedLLM(["x"])
    with pytest.raises(LLMError, match="at least one message"):
        llm.chat([])
    with pytest.raises(LLMError, match="tools or a reply schema"):
        llm.chat([Message(role="user", content="x")], tools=[SPEED], schema={"type": "object"})
    with pytest.raises(LLMError, match="tool_choice 'detect' is not among the tools offered"):
        llm.chat([Message(role="user", content="x")], tools=[SPEED], tool_choice="detect")


def test_a_forced_tool_narrows_the_reply_but_every_tool_stays_described():
    llm = ScriptedLLM([[{"id": "c1", "name": "measure_speed", "arguments": {"track": 1}}]])
    other = ToolSpec(name="detect", description="Find objects.")
    llm.chat([Message(role="user", content="go")], tools=[SPEED, other], tool_choice="measure_speed")
    assert llm.calls[0]["choice"] == "measure_speed" and [t.name for t in llm.calls[0]["tools"]] == [
        "measure_speed", "detect"
    ]
    narrowed = protocol_schema([SPEED, other], "measure_speed")
    names = [c["properties"]["name"]["const"] for c in narrowed["properties"]["tool_calls"]["items"]["anyOf"]]
    assert narrowed["required"] == ["tool_calls"] and "anyOf" not in narrowed and names == ["measure_speed"]
    required = protocol_schema([SPEED, other], "required")
    assert len(required["properties"]["tool_calls"]["items"]["anyOf"]) == 2 and "anyOf" not in required
    # The prompt is the same whichever tool is forced: calls share their prefix (llama.cpp reuses it).
    go = [Message(role="system", content="s"), Message(role="user", content="go")]
    assert protocol_messages(go, [SPEED, other], "measure_speed") == protocol_messages(go, [SPEED, other], "required")
    assert "detect" in protocol_messages(go, [SPEED, other], "measure_speed")[0].content
    assert '"answer"' in protocol_messages(go, [SPEED, other])[0].content  # a text answer only when not forced
    assert '"answer"' not in protocol_messages(go, [SPEED, other], "required")[0].content
    bad = ScriptedLLM([[{"id": "c1", "name": "detect", "arguments": {}}]])
    with pytest.raises(LLMError, match="not allowed: detect"):
        bad.chat(go, tools=[SPEED, other], tool_choice="measure_speed")


def test_tokens_per_second_counts_decode_time_only():
    from anomalens.agents.llm import ChatResult

    result = ChatResult(completion_tokens=11, seconds=3.0, first_token_seconds=1.0)
    assert result.tokens_per_second == pytest.approx(5.0)
    assert ChatResult(completion_tokens=11, seconds=3.0).tokens_per_second is None
