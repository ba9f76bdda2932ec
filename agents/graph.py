"""The agent as an explicit LangGraph ``StateGraph``: act with tools, compose claims, verify, revise, render.

One graph serves both jobs. Explaining events: ``select_event`` takes the next event from the queue and
states its facts. Chat: ``ask`` reads the user's question as a typed query (``agents/questions.py``: by its
words, else by the LLM's constrained choice); a question tool answers it from the index with claims that go
straight to ``verify`` and then ``render``; a question no tool fits goes to ``act`` with the conversation so
far. Then:

    ask --(a question tool fits)--> answer_question --> verify --> render
    act --(data tool calls)--> tools --> act
    act --(answer call)--> compose --> verify --(all supported, or rounds used up)--> render
                                        verify --(some unsupported)--> revise --> act
    act/compose --(malformed reply)--> act, until the step budget is spent --> give_up

``render`` keeps only supported claims and writes their prose from their checked fields; it then selects
the next event or ends. Nodes are ``State -> partial State``; the state holds plain JSON values only, so any
LangGraph checkpointer (SQLite for chat sessions) can persist it. What live tools find goes into the state's
``evidence`` (a reducer appends it), so every handle a claim cites resolves, in a resumed session too.

Tool argument errors go back to the LLM as the tool's result; anything else a tool raises propagates.
Caption text and tool output reach the LLM only as tool results, marked as data.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, TypedDict

from pydantic import ValidationError

from anomalens.agents.claims import (
    ANSWER_TOOL,
    Answer,
    as_draft,
    claims_from_draft,
    fact_classes,
    kinds_text,
    parse_drafts,
    render,
)
from anomalens.agents.digest import MAX_BREACHES, event_digest, event_facts, numbered_facts, overview
from anomalens.agents.headline import headline_claims, headline_text, subjects
from anomalens.agents.index import EvidenceBook, VideoIndex
from anomalens.agents.llm import LLM, Message, ToolCall
from anomalens.agents.llm.structured import problem_summary
from anomalens.agents.questions import (
    Query,
    QuestionTools,
    choose,
    chooser_prefix,
    route,
)
from anomalens.agents.toolbox import ToolArgumentError, Toolbox
from anomalens.agents.verify import Verifier, grounders
from anomalens.prompts import load as load_prompts
from anomalens.tools.perception import Perception
from anomalens.types import Claim, Event, Evidence, Explanation
from anomalens.video import FrameReader

MAX_STEPS = 6  # LLM calls per event or question, all rounds together
MAX_ROUNDS = 1  # revisions the verifier may ask for
MAX_TOOL_ROUNDS = 1  # rounds of data-tool calls before an answer is required: small models loop otherwise
MAX_TOKENS = 320  # longest reply: three claims fit in about 150 tokens
PLAIN_BREACHES = 6  # rules broken that a plain explanation details (behind its headline, no LLM context to fit)
HISTORY_TURNS = 3  # earlier questions and answers a chat question carries


class AgentState(TypedDict, total=False):
    queue: list[str]  # events still to explain
    event_id: str | None  # the event being explained (None in a chat turn)
    question: str | None  # the chat question being answered
    messages: list[dict]  # the working conversation of this event or question
    claims: list[dict]  # the current draft, with verdicts once verified
    kept: list[dict]  # claims verified in earlier rounds: a revision only redoes the others
    first_draft: list[dict]  # the first draft with its verdicts (what verification changed is measured on it)
    rounds: int
    tool_rounds: int
    steps: int
    llm_calls: int
    started: float
    explanations: Annotated[list[dict], operator.add]
    history: Annotated[list[dict], operator.add]  # chat memory: question, answer prose, explanation, query
    query: dict  # the chat question as a typed query (agents/questions.py)
    named_events: list[int]  # the events (numbered from 1) a question tool's answer named
    note: str  # what a question tool knows when it has no claim to make
    evidence: Annotated[list[dict], operator.add]  # what live tools found, in the order they found it
    subject: str  # the handle (S<k>) of the subject the LLM chose for the event


def _dump(messages: Sequence[Message]) -> list[dict]:
    return [m.model_dump(exclude={"images"}) for m in messages]


def _load(messages: Sequence[dict]) -> list[Message]:
    return [Message(**m) for m in messages]


def _answer_call(state: AgentState) -> ToolCall | None:
    last = _load(state["messages"][-1:])
    calls = last[0].tool_calls if last and last[0].role == "assistant" else []
    return next((c for c in calls if c.name == ANSWER_TOOL), None)


class Agent:
    """The nodes and routes of the graph, over one video's index, with one LLM."""

    def __init__(
        self,
        llm: LLM,
        index: VideoIndex,
        *,
        chat: bool = False,
        perception: Perception | None = None,
        frames: FrameReader | None = None,
        namer: Callable[[str], str | None] | None = None,
        max_steps: int = MAX_STEPS,
        max_rounds: int = MAX_ROUNDS,
        max_tool_rounds: int = MAX_TOOL_ROUNDS,
        max_tokens: int = MAX_TOKENS,
    ):
        self.llm, self.index, self.chat = llm, index, chat
        # Live tools and grounders look at the video's ``frames`` (the pipeline that opened it gives them): only
        # when a foundation tool is present.
        frames = frames if perception is not None and perception.present else None
        self.toolbox = Toolbox(index, chat=chat, perception=perception, frames=frames, namer=namer)
        self.questions = QuestionTools(index, self.toolbox.namer)
        live = perception or Perception()
        self.verifier = Verifier(index, grounders(live.detector, live.clip, frames))
        self.max_steps, self.max_rounds, self.max_tokens = max_steps, max_rounds, max_tokens
        self.max_tool_rounds = max_tool_rounds
        self.text = load_prompts("agent")
        self.system = self.text["system"].format(kinds=kinds_text())
        self.generator = f"agent ({llm.backend}:{llm.model})"

    def warm(self) -> None:
        """Let the LLM precompute the prompt prefix most calls share: in a chat, the choice of a question's query;
        else the agent's system turn and tools."""
        if self.chat:
            self.llm.warm(chooser_prefix())
        else:
            self.llm.warm([Message(role="system", content=self.system)], self.toolbox.specs, tool_choice="required")

    def book(self, state: AgentState) -> EvidenceBook:
        """What claims may cite in this state: the index and what live tools found."""
        return EvidenceBook(self.index, [Evidence.model_validate(e) for e in state.get("evidence", [])])

    # --- entry nodes ---------------------------------------------------------------------------------

    def _fresh(self, user: str) -> dict[str, Any]:
        messages = [Message(role="system", content=self.system), Message(role="user", content=user)]
        return {
            "messages": _dump(messages),
            "claims": [],
            "kept": [],
            "first_draft": [],
            "rounds": 0,
            "tool_rounds": 0,
            "steps": 0,
            "llm_calls": 0,
            "started": time.time(),
            "subject": "",
        }

    def select_event(self, state: AgentState) -> dict[str, Any]:
        event_id, *rest = state["queue"]
        digest = event_digest(self.book(state), self.index.event(event_id), tools=self.max_tool_rounds > 0)
        return {"queue": rest, "event_id": event_id, **self._fresh(self.text["event"].format(digest=digest))}

    def ask(self, state: AgentState) -> dict[str, Any]:
        """A chat question: routed to a question tool by its words, else by the LLM's choice of query; a
        question no tool fits goes to the agent's data tools."""
        started = time.time()
        turns = state.get("history", [])[-HISTORY_TURNS:]
        previous = next((t for t in reversed(turns) if t.get("query")), None)
        query, calls = route(state["question"], self.index, previous), 0
        if query is None:
            query, calls = choose(self.llm, state["question"], self.index, previous)
        history = ""
        if turns:
            history = self.text["history"].format(
                turns="\n".join(f"Q: {t['question']}\nA: {t['answer'] or '(no verified answer)'}" for t in turns)
            )
        user = self.text["question"].format(overview=overview(self.index), history=history, question=state["question"])
        fresh = self._fresh(user) | {"started": started, "llm_calls": calls}
        return {"event_id": None, "query": query.model_dump(exclude_none=True), "named_events": [], "note": "", **fresh}

    def answer_question(self, state: AgentState) -> dict[str, Any]:
        """The question tool's claims, to be verified like an agent's answer."""
        answered = self.questions.answer(Query(**state["query"]), self.book(state), state["question"])
        claims = [c.model_copy(update={"id": f"c{k}"}).model_dump() for k, c in enumerate(answered.claims, 1)]
        return {"claims": claims, "named_events": answered.events, "note": answered.note}

    # --- the loop ------------------------------------------------------------------------------------

    def act(self, state: AgentState) -> dict[str, Any]:
        # Data tools until the budget of tool rounds is spent or an answer was tried; then only the answer.
        exploring = state["tool_rounds"] < self.max_tool_rounds and state["rounds"] == 0
        result = self.llm.chat(
            _load(state["messages"]),
            tools=self.toolbox.specs,
            tool_choice="required" if exploring else ANSWER_TOOL,
            max_tokens=self.max_tokens,
        )
        if result.tool_calls:
            new = [Message(role="assistant", tool_calls=result.tool_calls)]
        else:
            new = [
                Message(role="assistant", content=result.text),
                Message(role="user", content=self.text["not_a_call"]),
            ]
        return {
            "messages": state["messages"] + _dump(new),
            "steps": state["steps"] + 1,
            "llm_calls": state["llm_calls"] + 1,
        }

    def run_tools(self, state: AgentState) -> dict[str, Any]:
        calls = _load(state["messages"][-1:])[0].tool_calls
        book = self.book(state)
        replies, seen, found = [], {}, []
        for call in calls:
            key = (call.name, json.dumps(call.arguments, sort_keys=True))
            if key in seen:  # small models repeat a call: answer it once
                content = f"(same as {seen[key]})"
            else:
                seen[key] = call.id
                try:
                    result = self.toolbox.call(call, book)
                except ToolArgumentError as error:
                    content = f"error: {error}"
                else:
                    content = result.text
                    new = [ev for ev in result.evidence if book.get(ev.id) is None]
                    book.extra += new  # a later call of this round can cite what an earlier one found
                    found += new
            replies.append(Message(role="tool", name=call.name, tool_call_id=call.id, content=content))
        return {
            "messages": state["messages"] + _dump(replies),
            "tool_rounds": state["tool_rounds"] + 1,
            "evidence": [ev.model_dump(mode="json") for ev in found],
        }

    def compose(self, state: AgentState) -> dict[str, Any]:
        call = _answer_call(state)
        try:
            answer = Answer.model_validate(call.arguments)
        except ValidationError as error:
            problems = problem_summary(error, "answer")
            reply = Message(
                role="tool",
                name=ANSWER_TOOL,
                tool_call_id=call.id,
                content=self.text["bad_answer"].format(error=problems),
            )
            return {"messages": state["messages"] + _dump([reply])}  # earlier verified claims stay
        book = self.book(state)
        event = self.index.event(state["event_id"]) if state.get("event_id") else None
        facts = numbered_facts(book, event) if event is not None else []
        picked = [facts[k - 1][0] for fact in answer.facts if 0 < (k := int(fact[1:])) <= len(facts)]
        drafted = claims_from_draft(parse_drafts(picked) + answer.claims, book)
        claims = _distinct([Claim(**c) for c in state["kept"]] + drafted)
        update = {"claims": [c.model_copy(update={"id": f"c{k}"}).model_dump() for k, c in enumerate(claims, 1)]}
        return update | ({"subject": answer.subject} if answer.subject else {})

    def verify(self, state: AgentState) -> dict[str, Any]:
        event = self.index.event(state["event_id"]) if state.get("event_id") else None
        book = self.book(state)
        checked = []
        for data in state["claims"]:
            claim = Claim(**data)
            verdict = self.verifier.verify(claim, event, book)
            checked.append(claim.model_copy(update={"verdict": verdict}).model_dump())
        update: dict[str, Any] = {"claims": checked}
        if state["rounds"] == 0:
            update["first_draft"] = checked
        return update

    def revise(self, state: AgentState) -> dict[str, Any]:
        call = _answer_call(state)
        kept = [c for c in state["claims"] if c["verdict"]["status"] == "supported"]
        failed = [Claim(**c) for c in state["claims"] if c["verdict"]["status"] != "supported"]
        book = self.book(state)
        lines = "\n".join(
            f"- {json.dumps(as_draft(c, book), separators=(',', ':'))}: {c.verdict.status}: {c.verdict.reason}"
            for c in failed
        )
        reply = Message(
            role="tool", name=ANSWER_TOOL, tool_call_id=call.id, content=self.text["verdicts"].format(verdicts=lines)
        )
        return {"messages": state["messages"] + _dump([reply]), "rounds": state["rounds"] + 1, "kept": kept}

    def render(self, state: AgentState) -> dict[str, Any]:
        return self._finish(state)

    def give_up(self, state: AgentState) -> dict[str, Any]:
        """The step budget ran out: what was verified before is said, an unverified draft is not."""
        return self._finish(state)

    def _finish(self, state: AgentState) -> dict[str, Any]:
        """The explanation: verified claims get their sentence (the prose), the others stay on record unsaid. An
        event's explanation never says less than its facts do: a class of fact (what the object is, the rule
        broken, where) that the event's facts hold and no verified claim states is added from the facts,
        verified like the rest."""
        book = self.book(state)
        claims = [Claim(**c) for c in state["claims"] if c.get("verdict")]
        headline: dict[str, Any] = {}
        if state.get("event_id"):
            event = self.index.event(state["event_id"])
            claims += self._missing_facts(claims, event, book)
            headline = headlined(book, event, self.verifier, state.get("subject"))
        claims = [
            c.model_copy(update={"text": render(c, book)}) if c.verdict.status == "supported" else c for c in claims
        ]
        first_draft = [Claim(**c) for c in state.get("first_draft", [])]
        cited = {i for c in claims + first_draft for i in c.evidence_ids}
        explanation = Explanation(
            event_id=state.get("event_id") or f"question-{len(state.get('history', [])) + 1}",
            note=state.get("note", "") if state.get("question") else "",
            generator=self.generator,
            claims=claims,
            first_draft=first_draft,
            evidence=[ev for ev in book.extra if ev.id in cited],
            rounds=state["rounds"],
            llm_calls=state["llm_calls"],
            seconds=time.time() - state["started"],
            **headline,
        )
        if not state.get("question"):
            return {"explanations": [explanation.model_dump(mode="json")]}
        turn = {"question": state["question"], "answer": explanation.answer_text, "query": state["query"]}
        turn |= {"events": state.get("named_events", []), "explanation": explanation.model_dump(mode="json")}
        return {"history": [turn], "question": None}

    def _missing_facts(self, claims: list[Claim], event: Event, book: EvidenceBook) -> list[Claim]:
        said = set().union(*(fact_classes(c) for c in claims if c.verdict.status == "supported"))
        added = []
        for claim in fact_claims(book, event):
            if not fact_classes(claim) - said:
                continue
            claim = claim.model_copy(update={"id": f"f{len(added) + 1}"})
            claim = claim.model_copy(update={"verdict": self.verifier.verify(claim, event, book)})
            if claim.verdict.status == "supported":
                added.append(claim)
                said |= fact_classes(claim)
        return added

    # --- routes --------------------------------------------------------------------------------------

    @staticmethod
    def start_route(state: AgentState) -> str:
        return "ask" if state.get("question") else "select_event"

    def after_act(self, state: AgentState) -> str:
        if _answer_call(state) is not None:
            return "compose"
        last = state["messages"][-1]
        if last["role"] == "assistant" and state["steps"] < self.max_steps:
            return "tools"
        return "act" if state["steps"] < self.max_steps else "give_up"

    def after_compose(self, state: AgentState) -> str:
        if state["messages"][-1]["role"] != "tool":  # the answer was well-formed
            return "verify"
        return "act" if state["steps"] < self.max_steps else "give_up"

    def after_tools(self, state: AgentState) -> str:
        return "act" if state["steps"] < self.max_steps else "give_up"

    @staticmethod
    def after_ask(state: AgentState) -> str:
        return "act" if state["query"]["kind"] == "other" else "answer_question"

    def after_verify(self, state: AgentState) -> str:
        if _answered_by_tool(state):  # its claims come from the index: nothing for the LLM to revise
            return "render"
        unsupported = any(c["verdict"]["status"] != "supported" for c in state["claims"])
        if unsupported and state["rounds"] < self.max_rounds and state["steps"] < self.max_steps:
            return "revise"
        return "render"

    @staticmethod
    def next_event(state: AgentState) -> str:
        return "select_event" if state.get("queue") else "end"


def headlined(book: EvidenceBook, event: Event, verifier: Verifier, chosen: str | None = None) -> dict[str, Any]:
    """The event's headline, the verified claims it is written from, and its subject (``Explanation`` fields):
    the subject ``chosen`` by handle (S<k>), else the likeliest."""
    candidates = subjects(book, event)
    if not candidates:
        return {}
    k = int(chosen[1:]) if chosen else 1
    subject = candidates[k - 1] if 0 < k <= len(candidates) else candidates[0]
    made = [c.model_copy(update={"verdict": verifier.verify(c, event, book)})
            for c in headline_claims(subject, book, event)]  # fmt: skip
    made = [c.model_copy(update={"text": render(c, book)}) if c.verdict.status == "supported" else c for c in made]
    return {"headline": headline_text(made, book), "headline_claims": made, "subject_track": subject.track,
            "subject_evidence": subject.evidence.id}  # fmt: skip


def fact_claims(book: EvidenceBook, event: Event, breaches: int = MAX_BREACHES) -> list[Claim]:
    """The event's facts (``event_facts``, the place of every breach) as claims, once each, marked as taken from
    them (not verified yet)."""
    drafts = parse_drafts([claim for claim, _ in event_facts(book, event, every_place=True, breaches=breaches)])
    return [c.model_copy(update={"from_facts": True}) for c in _distinct(claims_from_draft(drafts, book))]


def plain_explanation(index: VideoIndex, event: Event) -> Explanation:
    """An event explained without an LLM: its headline and the facts of its evidence (``event_facts``), verified."""
    started, book, verifier = time.time(), EvidenceBook(index), Verifier(index)
    claims = []
    for k, claim in enumerate(fact_claims(book, event, breaches=PLAIN_BREACHES), 1):
        verdict = verifier.verify(claim, event, book)
        text = render(claim, book) if verdict.status == "supported" else ""
        claims.append(claim.model_copy(update={"id": f"f{k}", "verdict": verdict, "text": text}))
    return Explanation(event_id=event.id, generator="deterministic", claims=claims, seconds=time.time() - started,
                       **headlined(book, event, verifier))  # fmt: skip


def _answered_by_tool(state: AgentState) -> bool:
    return bool(state.get("question")) and state.get("query", {}).get("kind", "other") != "other"


def _distinct(claims: list[Claim]) -> list[Claim]:
    """The first of claims that state the same thing: small models repeat a claim, and revisions repeat kept ones."""
    seen, kept = set(), []
    for claim in claims:
        key = claim.model_dump_json(exclude={"id", "text", "verdict"})  # text is rendered from the rest
        if key not in seen:
            seen.add(key)
            kept.append(claim)
    return kept


def build_graph(agent: Agent, checkpointer: Any = None):
    """The compiled ``StateGraph`` (with ``checkpointer``, state persists per ``thread_id``)."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(AgentState)
    for name, node in (
        ("select_event", agent.select_event),
        ("ask", agent.ask),
        ("answer_question", agent.answer_question),
        ("act", agent.act),
        ("tools", agent.run_tools),
        ("compose", agent.compose),
        ("verify", agent.verify),
        ("revise", agent.revise),
        ("render", agent.render),
        ("give_up", agent.give_up),
    ):
        graph.add_node(name, node)
    graph.add_conditional_edges(START, agent.start_route, ["ask", "select_event"])
    graph.add_edge("select_event", "act")
    graph.add_conditional_edges("ask", agent.after_ask, ["act", "answer_question"])
    graph.add_edge("answer_question", "verify")
    graph.add_conditional_edges("act", agent.after_act, ["compose", "tools", "act", "give_up"])
    graph.add_conditional_edges("tools", agent.after_tools, ["act", "give_up"])
    graph.add_conditional_edges("compose", agent.after_compose, ["verify", "act", "give_up"])
    graph.add_conditional_edges("verify", agent.after_verify, ["revise", "render"])
    graph.add_edge("revise", "act")
    for finished in ("render", "give_up"):
        graph.add_conditional_edges(finished, agent.next_event, {"select_event": "select_event", "end": END})
    return graph.compile(checkpointer=checkpointer)


def explain_events(
    llm: LLM,
    index: VideoIndex,
    *,
    event_ids: Sequence[str] | None = None,
    perception: Perception | None = None,
    frames: FrameReader | None = None,
    tool_rounds: int | None = None,
    progress: bool = True,
) -> Iterator[Explanation]:
    """Explain each event of ``index`` (or ``event_ids``) with the agent; yields explanations as they finish.
    ``frames``: the video's, for the live perception tools and the grounders.
    ``tool_rounds``: rounds of tool calls before the answer (default: one with live perception tools, else none:
    without them every data tool reads the index that the event's digest already sums up)."""
    from anomalens.progress import track

    queue = list(event_ids) if event_ids is not None else [e.id for e in index.events]
    unknown = [event_id for event_id in queue if index.event(event_id) is None]
    if unknown:
        raise ValueError(f"no event {unknown[0]!r} in the index of {index.video}")
    if not queue:
        return
    if tool_rounds is None:
        tool_rounds = MAX_TOOL_ROUNDS if perception is not None and perception.present and frames is not None else 0
    agent = Agent(llm, index, perception=perception, frames=frames, max_tool_rounds=tool_rounds)
    agent.warm()
    graph = build_graph(agent)
    # Each event takes about a dozen graph steps; the default limit of 25 would stop the queue.
    config = {"recursion_limit": 10 + len(queue) * (4 * MAX_STEPS + 4)}
    updates = graph.stream({"queue": queue}, config, stream_mode="updates")
    finished = (
        Explanation.model_validate(item)
        for update in updates
        for node, values in update.items()
        if node in ("render", "give_up")
        for item in values["explanations"]
    )
    yield from track(
        finished, f"explaining {len(queue)} event(s) with {llm.backend}:{llm.model}", total=len(queue), enabled=progress
    )
