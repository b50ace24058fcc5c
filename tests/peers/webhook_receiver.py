"""A webhook receiver for Reelay's tests and quick tour.

It records every delivery and checks its Standard Webhooks signature with the
`standardwebhooks` package (the reference implementation receivers use), and answers
each delivery from a per-path script of responses, so tests can make a receiver fail,
ask for a pause (Retry-After) or go away (410).

    python3 webhook_receiver.py --port 9000 [--hook /path=whsec_...]

Deliveries: POST to any path outside /_control/. Control API (JSON):
    POST /_control/hooks    {"path": "/a", "secret": "whsec_...",
                             "responses": [{"status": 500}, {"status": 429, "retry_after": "2"}],
                             "delay_ms": 0}
                            registers a path's secret and script (the last response repeats;
                            none: 200). Recorded deliveries are kept.
    GET  /_control/received[?path=/a]   {"deliveries": [...]} in arrival order
    POST /_control/reset    forgets everything
It prints "LISTENING <port>" once bound, and exits when its standard input closes.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from standardwebhooks import Webhook

lock = threading.Lock()
hooks = {}  # path -> {"secret", "responses", "delay_ms", "served"}
deliveries = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, value):
        self._answer(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/_control/received":
            return self._answer(404)
        path = parse_qs(url.query).get("path", [None])[0]
        with lock:
            found = [d for d in deliveries if path is None or d["path"] == path]
        self._json(200, {"deliveries": found})

    def do_POST(self):
        body = self._body()
        path = urlparse(self.path).path
        if path == "/_control/hooks":
            spec = json.loads(body or b"{}")
            with lock:
                hooks[spec["path"]] = {
                    "secret": spec.get("secret"),
                    "responses": spec.get("responses") or [],
                    "delay_ms": spec.get("delay_ms", 0),
                    "served": 0,
                }
            return self._json(200, {"ok": True})
        if path == "/_control/reset":
            with lock:
                hooks.clear()
                deliveries.clear()
            return self._json(200, {"ok": True})
        self._delivery(path, body)

    def _delivery(self, path, body):
        headers = {name.lower(): value for name, value in self.headers.items()}
        text = body.decode("utf-8", errors="replace")
        with lock:
            hook = hooks.get(path)
            response = {"status": 200}
            if hook and hook["responses"]:
                index = min(hook["served"], len(hook["responses"]) - 1)
                response = hook["responses"][index]
            if hook:
                hook["served"] += 1
        verified, error = None, None
        if hook and hook["secret"]:
            try:
                Webhook(hook["secret"]).verify(text, headers)
                verified = True
            except Exception as failure:  # any failure to verify is recorded, not raised
                verified, error = False, f"{type(failure).__name__}: {failure}"
        record = {
            "path": path,
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "webhook_signature": headers.get("webhook-signature"),
            "headers": headers,
            "body": text,
            "at": time.time(),
            "verified": verified,
            "error": error,
            "status": response.get("status", 200),
        }
        with lock:
            deliveries.append(record)
        if hook and hook["delay_ms"]:
            time.sleep(hook["delay_ms"] / 1000)
        extra = {}
        if response.get("retry_after") is not None:
            extra["Retry-After"] = str(response["retry_after"])
        self._answer(response.get("status", 200), b"ok", extra)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--hook", action="append", default=[], metavar="PATH=SECRET",
                        help="register a path's secret before the first delivery can arrive")
    args = parser.parse_args()
    for hook in args.hook:
        path, secret = hook.split("=", 1)
        hooks[path] = {"secret": secret, "responses": [], "delay_ms": 0, "served": 0}
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if sys.stdin.isatty():
        threading.Event().wait()
    else:
        sys.stdin.read()  # returns when the parent closes our stdin (or dies)


if __name__ == "__main__":
    main()
