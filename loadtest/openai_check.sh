#!/usr/bin/env bash
# Proves the mock upstream works with the official `openai` Python client, streamed and not.
# Installs `openai` with pip if absent, starts mock-upstream on a free loopback port, runs the
# checks, kills the mock. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import openai' 2>/dev/null; then
    "$PY" -m pip install --quiet openai
fi

PROFILE=${PROFILE:-debug}
if [[ "$PROFILE" == release ]]; then
    cargo build --quiet --release -p loadtest --bin mock-upstream
else
    cargo build --quiet -p loadtest --bin mock-upstream
fi
BIN="target/$PROFILE/mock-upstream"

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" --listen "127.0.0.1:$PORT" --chunks 5 --gap-ms 2 --completion-tokens 11 --run-for 120 >/dev/null &
MOCK=$!
trap 'kill "$MOCK" 2>/dev/null || true; wait "$MOCK" 2>/dev/null || true' EXIT

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
