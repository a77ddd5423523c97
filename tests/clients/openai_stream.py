"""Streams one chat completion with the official OpenAI Python library and prints how it ended.

Usage: python3 openai_stream.py BASE_URL MAX_TOKENS
Prints one line: `completed <n> <finish_reason>` or `error <type> <message>`.
"""
import sys

import openai

base_url, max_tokens = sys.argv[1], int(sys.argv[2])
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
n, finish = 0, None
try:
    stream = client.chat.completions.create(
        model="sim-llm",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=max_tokens,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    print(f"completed {n} {finish}")
except openai.APIError as e:
    body = e.body if isinstance(e.body, dict) else {}
    print(f"error {body.get('type')} {e.message}")
