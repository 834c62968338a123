"""A coding agent's turn through keycap with the OpenAI Python SDK, shaped as Cline's or Roo's
are: a 60,000-token system prompt, 30 tools, a 1 MiB base64 screenshot, streamed.

Run by keycap/tests/it/sdk.rs with KEYCAP_BASE_URL and KEYCAP_TOKEN. Exits non-zero on any
error; prints the request's size and the streamed text.
"""

import base64
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["KEYCAP_BASE_URL"], api_key=os.environ["KEYCAP_TOKEN"])

# About four bytes of English per token: 240,000 bytes of rules and context.
rule = "Always read a file before you edit it, and keep each change small and tested. "
system_prompt = (rule * (240_000 // len(rule) + 1))[:240_000]
tools = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{n}",
            "description": f"Tool number {n}: reads, searches or edits the workspace.",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "A path in the workspace."},
                    "content": {"type": "string", "description": "What to write."},
                },
                "required": ["path"],
            },
        },
    }
    for n in range(30)
]
screenshot = base64.b64encode(os.urandom(768 * 1024)).decode()  # 1 MiB of base64
assert len(screenshot) == 1024 * 1024

stream = client.chat.completions.create(
    model="mock/cheap",
    max_tokens=12,
    stream=True,
    tools=tools,
    messages=[
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The build fails; this is the screen. Fix it."},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{screenshot}"},
                },
            ],
        },
    ],
)
text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
assert len(text.split()) == 12, text
print("streamed", repr(text))
