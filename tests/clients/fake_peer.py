"""A peer replica that records what a handoff sends it and answers a short continuation.

Usage: python3 fake_peer.py PORT RECORD_FILE
Serves POST /v1/chat/completions: writes {"headers": {...}, "body": {...}} of each request as
one JSON line to RECORD_FILE, then streams a chunk with the content "peer-continuation ", a
finish chunk, a usage chunk and [DONE], in OpenAI's chat chunk format.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, record = int(sys.argv[1]), sys.argv[2]


class Peer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()},
                                "body": json.loads(body)}) + "\n")
        base = {"id": "chatcmpl-peer", "object": "chat.completion.chunk", "created": 1, "model": "peer-model"}
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "peer-continuation "}, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**base, "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}},
        ]
        out = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        data = out.encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Peer).serve_forever()
