"""The test server's request parsing (pure): an OpenAI chat or completion body, checked the way
the OpenAI API checks it, each problem a 400 naming its parameter."""

from __future__ import annotations

import json
from typing import Any

MAX_TOKENS_LIMIT = 100_000  # a typo'd max_tokens must not make the server stream for hours


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _words(text: str) -> int:
    return len(text.split())


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def chat_prompt_tokens(req: dict[str, Any]) -> int:
    if "messages" not in req:
        raise BadRequest("'messages' is required", "messages")
    messages = req["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of message objects", "messages")
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"'messages[{i}]' must be an object", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, str):
            total += _words(content)
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
            total += sum(_words(t) for t in texts)
        elif content is not None:
            param = f"messages[{i}].content"
            raise BadRequest(f"'{param}' must be a string or an array", param)
    return total


def completion_prompt_tokens(req: dict[str, Any]) -> int:
    if "prompt" not in req:
        raise BadRequest("'prompt' is required", "prompt")
    prompt = req["prompt"]
    if isinstance(prompt, str):
        return _words(prompt)
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += _words(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += 1  # a token id
            elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
                total += len(item)
            else:
                raise BadRequest("'prompt' must be a string, an array of strings or of token ids", "prompt")
        return total
    raise BadRequest("'prompt' must be a string, an array of strings or of token ids", "prompt")


def max_tokens(req: dict[str, Any], default: int, *, chat: bool) -> int:
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        v = req.get(name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_TOKENS_LIMIT:
            raise BadRequest(f"'{name}' must be an integer within 0..{MAX_TOKENS_LIMIT}", name)
        return v
    return default


def include_usage(req: dict[str, Any]) -> bool:
    opts = req.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return bool(opts.get("include_usage", False))
