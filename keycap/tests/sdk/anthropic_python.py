"""The Anthropic Python SDK against keycap, configured as its docs say for OpenRouter: the base
URL without `/v1` (the SDK adds `/v1/messages`), the key as `api_key` (sent as `x-api-key`) or
as `auth_token` (sent as `Authorization: Bearer`, as Claude Code's ANTHROPIC_AUTH_TOKEN is).

Run by keycap/tests/it/sdk.rs with KEYCAP_ANTHROPIC_BASE_URL (the gateway's `/api`) and
KEYCAP_TOKEN. Exits non-zero on any error.
"""

import os

import anthropic

BASE = os.environ["KEYCAP_ANTHROPIC_BASE_URL"]
TOKEN = os.environ["KEYCAP_TOKEN"]
MODEL = "mock/cheap"

with_key = anthropic.Anthropic(base_url=BASE, api_key=TOKEN)
message = with_key.messages.create(
    model=MODEL,
    max_tokens=9,
    system="Answer briefly.",
    messages=[{"role": "user", "content": "What is a budget?"}],
)
assert message.content[0].text and message.usage.output_tokens == 9, message
print("messages", message.usage.input_tokens, message.usage.output_tokens)

with_token = anthropic.Anthropic(base_url=BASE, auth_token=TOKEN, api_key=None)
with with_token.messages.stream(
    model=MODEL,
    max_tokens=6,
    messages=[{"role": "user", "content": "Stream a reply."}],
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert len(text.split()) == 6 and final.usage.output_tokens == 6, (text, final)
print("messages-stream", final.usage.input_tokens, final.usage.output_tokens)

# Refusals arrive in Anthropic's error shape, as the SDK's own exceptions.
try:
    with_key.messages.create(
        model="openai/gpt-4o-mini",
        max_tokens=5,
        messages=[{"role": "user", "content": "hi"}],
    )
    raise SystemExit("a model outside the key's scope was not refused")
except anthropic.PermissionDeniedError as error:
    assert error.body["error"]["type"] == "permission_error", error.body
    print("refused", error.status_code)
try:
    anthropic.Anthropic(base_url=BASE, api_key="kc_" + "0" * 48).messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    raise SystemExit("an unknown key was not refused")
except anthropic.AuthenticationError as error:
    assert error.body["error"]["type"] == "authentication_error", error.body
    print("refused", error.status_code)
