"""The emulator playing an agent script, through the official SDK over real sockets: tool calls
decided by the conversation alone, as JSON and as a stream, logged and counted per key."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pydantic
import pytest

from api.emulator import (
    AgentScript,
    EmulatorConfig,
    RunningEmulator,
    ToolStep,
    conversation_digest,
    fingerprint,
    serve_emulator,
)

pytest_plugins = ["tests.emulator.fixtures"]

KEY_A = "sk-ant-api03-agent-key-a-0123456789abcdefgh"
KEY_B = "sk-ant-api03-agent-key-b-0123456789abcdefgh"
PROMPT = [{"role": "user", "content": "run the script"}]
BASH = {"name": "Bash", "description": "run", "input_schema": {"type": "object"}}
WRITE = {"name": "Write", "description": "write", "input_schema": {"type": "object"}}
SCRIPT = AgentScript(
    steps=[
        ToolStep.bash("echo step{step} >> log.txt", description="Append step {step}"),
        ToolStep.write("/tmp/out-{step}.txt", "{step}/{steps}"),
        ToolStep(tool="Bash", input={"command": "echo '${HOME} {a,b}' {step}"}),  # no text
    ],
    final_text="finished {steps} steps",
)
# Tool-use ids: the digest of the conversation's first user turn, then the step.
ID = f"toolu_emu_{conversation_digest([('user', 'run the script')])}"


@pytest.fixture
def agent(emu: RunningEmulator) -> RunningEmulator:
    emu.admin.set_agent(SCRIPT)
    return emu


def client(emu: RunningEmulator, key: str = KEY_A) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emu.base_url, api_key=key, max_retries=0)


def ask(
    sdk: anthropic.Anthropic, messages: list[Any], tools: list[Any] | None = None
) -> anthropic.types.Message:
    extra = {} if tools is None else {"tools": tools}
    return sdk.messages.create(model="m", max_tokens=1024, messages=messages, **extra)


def blocks(message: anthropic.types.Message) -> list[dict[str, Any]]:
    return [b.model_dump(exclude_none=True) for b in message.content]


def answered(messages: list[Any], message: anthropic.types.Message) -> list[Any]:
    """The conversation after the client ran the call `message` asked for."""
    (call,) = [b for b in message.content if b.type == "tool_use"]
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "ok"}
    return [
        *messages,
        {"role": "assistant", "content": blocks(message)},
        {"role": "user", "content": [result]},
    ]


def test_each_reply_is_the_step_named_by_the_tool_results_so_far(agent: RunningEmulator) -> None:
    messages: list[Any] = PROMPT
    replies = []
    with client(agent) as sdk:
        for _ in range(4):
            replies.append(ask(sdk, messages, [BASH, WRITE]))
            if replies[-1].stop_reason == "tool_use":
                messages = answered(messages, replies[-1])
    assert [r.stop_reason for r in replies] == ["tool_use"] * 3 + ["end_turn"]
    assert [blocks(r) for r in replies] == [
        [
            {"type": "text", "text": "Step 1 of 3: Append step 1"},
            {
                "type": "tool_use",
                "id": f"{ID}_1",
                "name": "Bash",
                "input": {"command": "echo step1 >> log.txt", "description": "Append step 1"},
            },
        ],
        [
            {"type": "text", "text": "Step 2 of 3: write /tmp/out-2.txt"},
            {
                "type": "tool_use",
                "id": f"{ID}_2",
                "name": "Write",
                "input": {"file_path": "/tmp/out-2.txt", "content": "2/3"},
            },
        ],
        [
            {
                "type": "tool_use",
                "id": f"{ID}_3",
                "name": "Bash",
                "input": {"command": "echo '${HOME} {a,b}' 3"},  # shell braces untouched
            }
        ],
        [{"type": "text", "text": "finished 3 steps"}],
    ]
    log = agent.admin.log()
    assert [(e.tool_results, e.tool_step, e.tool_use_id) for e in log] == [
        (0, 1, f"{ID}_1"),
        (1, 2, f"{ID}_2"),
        (2, 3, f"{ID}_3"),
        (3, None, None),
    ]
    assert log[-1].tool_result_ids == [f"{ID}_1", f"{ID}_2", f"{ID}_3"]
    assert [e.user_turns for e in log] == [1, 1, 1, 1]  # tool results are not turns
    counters = agent.admin.key(api_key=KEY_A)
    assert counters.served == 4
    assert counters.input_tokens == sum(r.usage.input_tokens for r in replies)
    assert counters.output_tokens == sum(r.usage.output_tokens for r in replies)


def sse_events(emu: RunningEmulator, messages: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    body = {"model": "m", "max_tokens": 1024, "messages": messages, "tools": [BASH], "stream": True}
    with httpx.stream(
        "POST", f"{emu.base_url}/v1/messages", json=body, headers={"x-api-key": KEY_A}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    return [
        (event[len("event: ") :], json.loads(data[len("data: ") :]))
        for event, data in zip(lines[::2], lines[1::2], strict=True)
    ]


def test_a_streamed_tool_call_starts_empty_and_sends_its_input_as_json_deltas(
    agent: RunningEmulator,
) -> None:
    events = sse_events(agent, PROMPT)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": f"{ID}_1",
        "name": "Bash",
        "input": {},
    }
    deltas = [d for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert {d["delta"]["type"] for d in deltas} == {"input_json_delta"}
    assert deltas[0]["delta"]["partial_json"] == "" and len(deltas) > 2
    assert json.loads("".join(d["delta"]["partial_json"] for d in deltas)) == {
        "command": "echo step1 >> log.txt",
        "description": "Append step 1",
    }
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    with (
        client(agent) as sdk,
        sdk.messages.stream(model="m", max_tokens=1024, messages=PROMPT, tools=[BASH]) as stream,
    ):
        streamed = stream.get_final_message()
    with client(agent) as sdk:
        assert blocks(streamed) == blocks(ask(sdk, PROMPT, [BASH]))
    assert streamed.stop_reason == "tool_use"


def test_another_key_continues_the_conversation_where_the_first_stopped(
    agent: RunningEmulator,
) -> None:
    with client(agent, KEY_A) as sdk_a, client(agent, KEY_B) as sdk_b:
        first = ask(sdk_a, PROMPT, [BASH, WRITE])
        again = ask(sdk_a, PROMPT, [BASH, WRITE])  # a retry of the same request
        second = ask(sdk_b, answered(PROMPT, first), [BASH, WRITE])
    assert blocks(again) == blocks(first)
    assert [b["id"] for b in blocks(second) if b["type"] == "tool_use"] == [f"{ID}_2"]
    on_b = agent.admin.log()[-1]
    assert on_b.key_fingerprint == fingerprint(KEY_B)
    assert (on_b.tool_results, on_b.tool_result_ids, on_b.tool_step) == (1, [f"{ID}_1"], 2)


def test_requests_that_do_not_declare_the_steps_tool_get_the_plain_reply(
    agent: RunningEmulator,
) -> None:
    plain = f"reply to {conversation_digest([])}: turn 1; last user text: run the script"
    with client(agent) as sdk:
        assert blocks(ask(sdk, PROMPT)) == [{"type": "text", "text": plain}]
        only_write = ask(sdk, PROMPT, [WRITE])  # step 1 is a Bash step
        assert (blocks(only_write), only_write.stop_reason) == (
            [{"type": "text", "text": plain}],
            "end_turn",
        )
    with openai.OpenAI(
        base_url=agent.openai_base_url, api_key="sk-proj-agent-0123456789abcdef", max_retries=0
    ) as oai:
        completion = oai.chat.completions.create(
            model="g",
            messages=[{"role": "user", "content": "run the script"}],
            tools=[{"type": "function", "function": {"name": "Bash"}}],
        )
    assert completion.choices[0].message.content == plain
    assert [e.tool_step for e in agent.admin.log()] == [None, None, None]


def test_the_script_is_config_replaced_at_runtime_and_restored_by_reset() -> None:
    with serve_emulator(EmulatorConfig(agent=SCRIPT)) as emu, client(emu) as sdk:
        assert ask(sdk, PROMPT, [BASH]).stop_reason == "tool_use"
        assert emu.admin.config()["agent"]["final_text"] == "finished {steps} steps"
        emu.admin.set_agent(AgentScript(steps=[], final_text="nothing to do"))
        assert blocks(ask(sdk, PROMPT, [BASH])) == [{"type": "text", "text": "nothing to do"}]
        emu.admin.set_agent(None)
        assert ask(sdk, PROMPT, [BASH]).content[0].text.startswith("reply to ")
        emu.admin.reset()  # counters only: the runtime script (none) stays
        assert ask(sdk, PROMPT, [BASH]).stop_reason == "end_turn"
        emu.admin.reset(restore_config=True)
        assert ask(sdk, PROMPT, [BASH]).stop_reason == "tool_use"


def test_a_step_missing_its_tools_required_input_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="a Write step needs input content"):
        ToolStep(tool="Write", input={"file_path": "/tmp/x"})
    with serve_emulator() as emu:
        response = httpx.post(
            f"{emu.base_url}/_admin/agent",
            json={"agent": {"steps": [{"tool": "Bash", "input": {"description": "no command"}}]}},
        )
        assert response.status_code == 422
        assert "a Bash step needs input command" in response.text
    with pytest.raises(ValueError, match="at least one step"):
        AgentScript.appending_steps(0)


def test_the_default_script_appends_one_numbered_line_per_step() -> None:
    script = AgentScript.appending_steps(2, file_name="out.txt")
    with serve_emulator(EmulatorConfig(agent=script)) as emu, client(emu) as sdk:
        first = ask(sdk, PROMPT, [BASH])
        second = ask(sdk, answered(PROMPT, first), [BASH])
    commands = [b["input"]["command"] for r in (first, second) for b in blocks(r)[1:]]
    assert commands == ["echo step1 >> out.txt", "echo step2 >> out.txt"]


def test_a_call_left_without_its_result_is_refused_as_the_real_api_does(
    agent: RunningEmulator,
) -> None:
    with client(agent) as sdk:
        first = ask(sdk, PROMPT, [BASH])
        history = answered(PROMPT, first)
        dangling = [*history[:2], {"role": "user", "content": "go on"}]  # result dropped
        with pytest.raises(anthropic.BadRequestError) as caught:
            ask(sdk, dangling, [BASH])
        assert ask(sdk, history, [BASH, WRITE]).stop_reason == "tool_use"  # answered: served
    assert caught.value.body["error"] == {
        "type": "invalid_request_error",
        "message": f"messages.1: `tool_use` ids were found without `tool_result` blocks "
        f"immediately after: {ID}_1. Each `tool_use` block must have a corresponding "
        "`tool_result` block in the next message.",
    }
    assert [e.status for e in agent.admin.log()] == [200, 400, 200]


def test_a_step_never_reuses_an_id_the_conversation_already_holds(agent: RunningEmulator) -> None:
    # A client that dropped step 1's call and result (a transcript repair) still holds step 2's
    # and 3's; with two results the next move is step 3 again, and its id must be a new one.
    def call(step: int) -> dict[str, Any]:
        return {"type": "tool_use", "id": f"{ID}_{step}", "name": "Bash", "input": {}}

    def result(step: int) -> dict[str, Any]:
        return {"type": "tool_result", "tool_use_id": f"{ID}_{step}", "content": "ok"}

    repaired = [
        *PROMPT,
        {"role": "assistant", "content": [call(2)]},
        {"role": "user", "content": [result(2)]},
        {"role": "assistant", "content": [call(3)]},
        {"role": "user", "content": [result(3), {"type": "text", "text": "continue"}]},
    ]
    with client(agent) as sdk:
        reply = ask(sdk, repaired, [BASH, WRITE])
        again = ask(sdk, [*repaired, *answered([], reply)], [BASH, WRITE])
    assert [b["id"] for b in blocks(reply) if b["type"] == "tool_use"] == [f"{ID}_3_2"]
    assert again.stop_reason == "end_turn"  # three results: the script is done
