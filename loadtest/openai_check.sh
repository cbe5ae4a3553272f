#!/usr/bin/env bash
# Proves the mock upstream works with the official `openai` Python client, streamed and not,
# and that the same unchanged client works through the gateway in front of the mock's
# Anthropic-shaped `/v1/messages` (provider = "anthropic": requests, streams, tools, errors).
# Installs `openai` with pip if absent, starts mock-upstream and shardgate on free loopback
# ports, runs the checks, kills both. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import openai' 2>/dev/null; then
    "$PY" -m pip install --quiet openai
fi

PROFILE=${PROFILE:-debug}
if [[ "$PROFILE" == release ]]; then
    cargo build --quiet --release -p loadtest --bin mock-upstream -p shardgate --bin shardgate
else
    cargo build --quiet -p loadtest --bin mock-upstream -p shardgate --bin shardgate
fi
BIN="target/$PROFILE/mock-upstream"
GW_BIN="target/$PROFILE/shardgate"

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" --listen "127.0.0.1:$PORT" --chunks 5 --gap-ms 2 --completion-tokens 11 --run-for 120 >/dev/null &
MOCK=$!
GW=""
TMP=$(mktemp -d /tmp/shardgate-openai-check.XXXXXX)
cleanup() {
    for p in $GW $MOCK; do kill "$p" 2>/dev/null || true; done
    for p in $GW $MOCK; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

for _ in $(seq 100); do
    if "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.1)" 2>/dev/null; then break; fi
    sleep 0.05
done

MOCK_URL="http://127.0.0.1:$PORT/v1" timeout 60 "$PY" - <<'PYEOF'
import os
import openai

client = openai.OpenAI(base_url=os.environ["MOCK_URL"], api_key="sk-test", max_retries=0, timeout=10)
messages = [{"role": "user", "content": "12345678"}]  # 8 bytes -> 2 prompt tokens

r = client.chat.completions.create(model="my-model", messages=messages, max_tokens=7)
assert r.object == "chat.completion", r
assert r.model == "my-model", r.model
assert r.choices[0].message.role == "assistant"
assert r.choices[0].message.content == "This is a mock response.", r.choices[0].message.content
assert r.choices[0].finish_reason == "stop"
assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 7, 9), r.usage

stream = client.chat.completions.create(
    model="my-model", messages=messages, stream=True, stream_options={"include_usage": True}
)
text, usage, finish = "", None, None
for chunk in stream:
    assert chunk.object == "chat.completion.chunk"
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        assert not chunk.choices, "usage chunk must have empty choices"
        usage = chunk.usage
assert text == "tok0 tok1 tok2 tok3 tok4 ", repr(text)
assert finish == "stop"
assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 11, 13), usage

c = client.completions.create(model="legacy", prompt="abcd", max_tokens=3)
assert c.choices[0].text == "This is a mock response." and c.usage.total_tokens == 4, c

e = client.embeddings.create(model="emb", input=["a", "b"])
assert len(e.data) == 2 and e.usage.prompt_tokens == 1, e

models = client.models.list()
assert [m.id for m in models.data] == ["mock-gpt"], models

try:
    client.chat.completions.create(model="x", messages=messages, extra_headers={"x-mock-status": "503"})
    raise AssertionError("expected a 503")
except openai.InternalServerError as err:
    assert err.status_code == 503

print("openai client check: OK (openai", openai.__version__ + ")")
PYEOF

# The same client through the gateway, whose upstream speaks Anthropic's Messages API.
GW_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$TMP/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
workers = 1
pin = false
[[upstreams]]
name = "claude"
endpoints = ["127.0.0.1:$PORT"]
provider = "anthropic"
api_key = { value = "sk-ant-check" }
[[routes]]
path = "/v1/*rest"
upstream = "claude"
TOML
"$GW_BIN" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GW=$!
for _ in $(seq 100); do
    if "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $GW_PORT), 0.1)" 2>/dev/null; then break; fi
    sleep 0.05
done

GW_URL="http://127.0.0.1:$GW_PORT/v1" timeout 60 "$PY" - <<'PYEOF'
import json
import os
import openai

client = openai.OpenAI(base_url=os.environ["GW_URL"], api_key="sk-client", max_retries=0, timeout=10)
messages = [{"role": "user", "content": "12345678"}]  # 8 bytes -> 2 input tokens

r = client.chat.completions.create(model="claude-x", messages=messages, max_tokens=7)
assert r.object == "chat.completion", r
assert r.model == "claude-x", r.model
assert r.id.startswith("msg_mock"), r.id
assert r.choices[0].message.content == "This is a mock response.", r.choices[0].message
assert r.choices[0].finish_reason == "stop"
assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 7, 9), r.usage

# Streamed, with the usage chunk the client asked for (max_tokens: the gateway's default).
stream = client.chat.completions.create(
    model="claude-x", messages=messages, stream=True, stream_options={"include_usage": True}
)
text, usage, finish = "", None, None
for chunk in stream:
    assert chunk.object == "chat.completion.chunk"
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        assert not chunk.choices, "usage chunk must have empty choices"
        usage = chunk.usage
assert text == "tok0 tok1 tok2 tok3 tok4 ", repr(text)
assert finish == "stop"
assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 11, 13), usage

# Tools, a system message and multi-part content with an image.
tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
parts = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]},
]
r = client.chat.completions.create(model="claude-x", messages=parts, tools=tools, tool_choice="required")
call = r.choices[0].message.tool_calls[0]
assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "mock"}, call
assert r.choices[0].finish_reason == "tool_calls"
# The tool round trip goes back as tool_use / tool_result blocks.
follow = parts + [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "42"}]
r2 = client.chat.completions.create(model="claude-x", messages=follow, tools=tools)
assert r2.choices[0].message.content == "This is a mock response.", r2

args, name = "", None
for chunk in client.chat.completions.create(model="claude-x", messages=parts, tools=tools, stream=True):
    for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        name = tc.function.name or name
        args += tc.function.arguments or ""
assert name == "lookup" and json.loads(args) == {"q": "mock"}, (name, args)

# Errors: Anthropic's 529 is a 503; a request the adapter refuses names the field; an
# upstream error mid-stream is raised by the client.
try:
    client.chat.completions.create(model="x", messages=messages, extra_headers={"x-mock-status": "529"})
    raise AssertionError("expected a 503")
except openai.InternalServerError as err:
    assert err.status_code == 503 and err.type == "overloaded_error", err
try:
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}])
    raise AssertionError("expected a 400")
except openai.BadRequestError as err:
    assert err.param == "$.messages[0].content[0].type", err.param
try:
    for _ in client.chat.completions.create(model="x", messages=messages, stream=True, extra_headers={"x-mock-error-after-chunks": "2"}):
        pass
    raise AssertionError("expected the stream to raise")
except openai.APIError as err:
    assert "Overloaded" in str(err), err

print("openai client check through the anthropic adapter: OK")
PYEOF
