"""Call the quickstart service through the gateway with the OpenAI SDK, unchanged.

Run after README command 1: `python examples/quickstart/call.py`. It reads the endpoint and
token from `openeas call-info quickstart --json`.
"""

from __future__ import annotations

import json
import subprocess

from openai import OpenAI

info = json.loads(subprocess.check_output(["openeas", "call-info", "quickstart", "--json"]))
client = OpenAI(base_url=info["endpoint"] + "/v1", api_key=info["token"])

chat = client.chat.completions.create(
    model="gemma", messages=[{"role": "user", "content": "Say hello"}], max_tokens=16
)
print("chat:", chat.choices[0].message.content, chat.usage)

print("stream:", end=" ", flush=True)
for chunk in client.completions.create(model="gemma", prompt="The capital of France is", max_tokens=16, stream=True):
    print(chunk.choices[0].text, end="", flush=True)
print()
