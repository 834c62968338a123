"""The OpenAI Python SDK against keycap, configured as its docs say: `base_url` and `api_key`.

Run by keycap/tests/it/sdk.rs with KEYCAP_BASE_URL (the gateway's `/api/v1`) and KEYCAP_TOKEN
(a sub-key). Chat, Responses and Embeddings, JSON and streamed; exits non-zero on any error.
Prints one line per call with the cost the answer reported, when it reports one.
"""

import os

from openai import OpenAI, PermissionDeniedError

client = OpenAI(base_url=os.environ["KEYCAP_BASE_URL"], api_key=os.environ["KEYCAP_TOKEN"])
MODEL = "mock/cheap"

chat = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "What is a budget?"}],
    max_tokens=8,
)
assert chat.choices[0].message.content, chat
print("chat", chat.model_dump()["usage"]["cost"])

text = ""
for chunk in client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Stream it."}],
    max_tokens=6,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
assert len(text.split()) == 6, text
print("chat-stream", repr(text))

response = client.responses.create(
    model=MODEL,
    instructions="Answer briefly.",
    input="What is a cap?",
    max_output_tokens=7,
)
assert len(response.output_text.split()) == 7, response
print("responses", response.model_dump()["usage"]["cost"])

with client.responses.stream(
    model=MODEL,
    input=[{"role": "user", "content": [{"type": "input_text", "text": "Stream a reply."}]}],
    max_output_tokens=5,
) as stream:
    deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
    final = stream.get_final_response()
assert len(deltas) == 5 and final.output_text == "".join(deltas), (deltas, final)
print("responses-stream", final.model_dump()["usage"]["cost"])

embeddings = client.embeddings.create(
    model="openai/text-embedding-3-small",
    input=["a budget is a plan", "a cap is a limit"],
)
assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 8, embeddings
print("embeddings", embeddings.model_dump()["usage"]["cost"])

# A refusal reaches the SDK as its own error type, with the gateway's message.
try:
    client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    raise SystemExit("a model outside the key's scope was not refused")
except PermissionDeniedError as error:
    assert "not allowed for this key" in error.message, error
    print("refused", error.status_code)
