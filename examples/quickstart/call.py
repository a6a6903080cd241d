"""Call the quickstart service through the gateway with the OpenAI SDK, unchanged.

Run after README command 1: `python examples/quickstart/call.py`. It reads the endpoint and
token from `openeas call-info quickstart --json`. If the chat returns a sentence, the endpoint
is live.
"""

from __future__ import annotations

import json
import subprocess

from openai import OpenAI

info = json.loads(subprocess.check_output(["openeas", "call-info", "quickstart", "--json"]))
client = OpenAI(base_url=info["endpoint"] + "/v1", api_key=info["token"])
question = [{"role": "user", "content": "What is EAS in one sentence?"}]
greedy = {"temperature": 0.0, "seed": 7}  # the same answer on every run; drop it for varied answers

chat = client.chat.completions.create(model="smollm2", messages=question, max_tokens=64, **greedy)
print("chat:", chat.choices[0].message.content)
assert chat.usage is not None
print(f"usage: {chat.usage.prompt_tokens} prompt + {chat.usage.completion_tokens} completion tokens")

print("stream:", end=" ", flush=True)
stream = client.chat.completions.create(
    model="smollm2", messages=question, max_tokens=64, stream=True, **greedy
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
