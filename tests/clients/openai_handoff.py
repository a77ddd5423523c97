"""Streams one completion with the official OpenAI Python library and prints what it received.

Usage: python3 openai_handoff.py BASE_URL chat|completions INCLUDE_USAGE(0|1) SEED
Prints one JSON line: result (completed|error), text, finish, usage, ids, roles, error.
"""
import json
import sys

import openai

base_url, api, include_usage, seed = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
client = openai.OpenAI(base_url=base_url, api_key="handoff-test-token", max_retries=0)
out = {"result": None, "text": "", "finish": None, "usage": None, "ids": [], "roles": 0, "error": None}
kwargs = {"model": "sim-llm", "stream": True, "seed": seed}
if include_usage:
    kwargs["stream_options"] = {"include_usage": True}
try:
    if api == "chat":
        stream = client.chat.completions.create(
            messages=[{"role": "user", "content": f"tell me a long story number {seed}"}], **kwargs
        )
    else:
        stream = client.completions.create(prompt=f"once upon a time number {seed}", **kwargs)
    for chunk in stream:
        if chunk.id not in out["ids"]:
            out["ids"].append(chunk.id)
        if chunk.usage:
            u = chunk.usage
            out["usage"] = [u.prompt_tokens, u.completion_tokens, u.total_tokens]
        for c in chunk.choices:
            if api == "chat":
                if c.delta.role:
                    out["roles"] += 1
                out["text"] += c.delta.content or ""
            else:
                out["text"] += c.text or ""
            if c.finish_reason:
                out["finish"] = c.finish_reason
    out["result"] = "completed"
except openai.APIError as e:
    body = e.body if isinstance(e.body, dict) else {}
    out["result"] = "error"
    out["error"] = f"{body.get('type')} {e.message}"
print(json.dumps(out))
