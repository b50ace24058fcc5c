"""A webhook receiver for Reelay's tests and quick tour.

It records every delivery and checks its Standard Webhooks signature with the
`standardwebhooks` package (the reference implementation receivers use), reads every
CloudEvents delivery (structured or binary mode) with the `cloudevents` SDK, and answers
each delivery from a per-path script of responses, so tests can make a receiver fail,
ask for a pause (Retry-After) or go away (410). It also plays the CloudEvents webhook
validation handshake (an OPTIONS request with WebHook-Request-Origin), consenting or not
as told.

    python3 webhook_receiver.py --port 9000 [--hook /path=whsec_...]

Deliveries: POST to any path outside /_control/. Control API (JSON):
    POST /_control/hooks    {"path": "/a", "secret": "whsec_...",
                             "responses": [{"status": 500}, {"status": 429, "retry_after": "2"}],
                             "delay_ms": 0, "delay_ms_max": 0,
                             "secrets": ["whsec_old", "whsec_new"],
                             "public_key": "whpk_...",
                             "handshake": {"status": 200, "allowed_origin": "*",
                                           "allowed_rate": "120"}}
                            sets what is given of a path's secret, script (the last response
                            repeats; none: 200) and handshake answer (none: 405, as a server
                            that does not take part; "allowed_origin": "echo" repeats the
                            request's origin). Recorded deliveries are kept. With
                            "delay_ms_max", each delivery waits a random time from 0 to
                            that many milliseconds instead of "delay_ms" (recorded as the
                            delivery's "delay_ms").
    GET  /_control/received[?path=/a]   {"deliveries": [...], "handshakes": [...]} in
                            arrival order
    POST /_control/reset    forgets everything
A delivery's record has its headers, its body (as text, and as base64), the signature
verdict, and for a CloudEvent its attributes and data as the SDK read them. With
"secrets", each delivery is also checked with each of them on its own ("verified_each",
in order: during a secret rotation, with the old and with the new one); with
"public_key" (Standard Webhooks `whpk_`), its `v1a` ed25519 signatures are checked with
the `cryptography` package ("ed25519_verified"), and again over the body with one byte
changed ("ed25519_tampered_verified", which must be false).
It prints "LISTENING <port>" once bound, and exits when its standard input closes.
"""

import argparse
import base64
import hashlib
import hmac
import json
import random
import re
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook

# Zapp apps write `"datacontenttype": "applicastion/json"` (sic, seed 002) for JSON data,
# and Reelay delivers a CloudEvent's own content type: read such data as JSON, like the
# apps' servers do.
JSONFormat.JSON_CONTENT_TYPE_PATTERN = re.compile(
    r"^(application|applicastion|text)/([a-zA-Z0-9\-\.]+\+)?json(;.*)?$"
)

lock = threading.Lock()
hooks = {}  # path -> {"secret", "responses", "delay_ms", "served", "handshake"}
deliveries = []
handshakes = []


def new_hook(secret=None):
    return {"secret": secret, "responses": [], "delay_ms": 0, "served": 0, "handshake": None,
            "secrets": [], "public_key": None}


def verify_ed25519(public_key, body, headers):
    """Whether a `v1a,` signature of the delivery verifies with the `whpk_` public key
    (Standard Webhooks: ed25519 over "{id}.{timestamp}.{body}")."""
    try:
        key = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(public_key.removeprefix("whpk_")))
        signed = b".".join([headers["webhook-id"].encode(),
                            headers["webhook-timestamp"].encode(), body])
    except Exception:  # a missing header or a bad key: not verified
        return False
    for versioned in headers.get("webhook-signature", "").split():
        version, _, signature = versioned.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature), signed)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


def verify(secret, body, headers):
    """The Standard Webhooks verdict: (verified, error)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    try:
        if text is not None:
            Webhook(secret).verify(text, headers, json_parse=False)
        else:
            # The package reads bodies as text; binary CloudEvents data is bytes, so this
            # one is checked by the specification's own recipe.
            key = base64.b64decode(secret.removeprefix("whsec_"))
            signed = b".".join([headers["webhook-id"].encode(),
                                headers["webhook-timestamp"].encode(), body])
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
            sent = [s.split(",", 1)[1].encode() for s in headers["webhook-signature"].split()]
            if not any(hmac.compare_digest(expected, s) for s in sent):
                raise ValueError("no signature matches")
        return True, None
    except Exception as failure:  # any failure to verify is recorded, not raised
        return False, f"{type(failure).__name__}: {failure}"


def read_cloudevent(headers, body):
    """The delivery as the `cloudevents` SDK reads it, or None when it is no CloudEvent."""
    structured = headers.get("content-type", "").startswith("application/cloudevents+json")
    if not structured and not any(name.startswith("ce-") for name in headers):
        return None, None
    try:
        event = from_http(HTTPMessage(headers=headers, body=body), JSONFormat())
    except Exception as failure:
        return None, f"{type(failure).__name__}: {failure}"
    attributes = {name: value.isoformat() if isinstance(value, datetime) else value
                  for name, value in event.get_attributes().items()}
    data = event.get_data()
    read = {"attributes": attributes, "mode": "structured" if structured else "binary"}
    if isinstance(data, (bytes, bytearray)):
        read["data_base64"] = base64.b64encode(data).decode()
    else:
        read["data"] = data
    return read, None


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
            asked = [h for h in handshakes if path is None or h["path"] == path]
        self._json(200, {"deliveries": found, "handshakes": asked})

    def do_OPTIONS(self):
        """The validation handshake of the CloudEvents webhook spec."""
        self._body()
        path = urlparse(self.path).path
        headers = {name.lower(): value for name, value in self.headers.items()}
        with lock:
            answer = (hooks.get(path) or {}).get("handshake")
        status = answer.get("status", 200) if answer else 405
        extra = {}
        if answer and answer.get("allowed_origin"):
            allowed = answer["allowed_origin"]
            if allowed == "echo":
                allowed = headers.get("webhook-request-origin", "")
            extra["WebHook-Allowed-Origin"] = allowed
        if answer and answer.get("allowed_rate"):
            extra["WebHook-Allowed-Rate"] = str(answer["allowed_rate"])
        with lock:
            handshakes.append({"path": path, "headers": headers, "status": status,
                               "at": time.time()})
        self._answer(status, b"", extra)

    def do_POST(self):
        body = self._body()
        path = urlparse(self.path).path
        if path == "/_control/hooks":
            spec = json.loads(body or b"{}")
            with lock:
                hook = hooks.setdefault(spec["path"], new_hook())
                for key in ("secret", "delay_ms", "delay_ms_max", "handshake", "secrets", "public_key"):
                    if key in spec:
                        hook[key] = spec[key]
                if "responses" in spec:
                    hook["responses"] = spec["responses"] or []
                    hook["served"] = 0
            return self._json(200, {"ok": True})
        if path == "/_control/reset":
            with lock:
                hooks.clear()
                deliveries.clear()
                handshakes.clear()
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
            verified, error = verify(hook["secret"], body, headers)
        each = [verify(secret, body, headers)[0] for secret in hook["secrets"]] if hook else []
        ed25519 = tampered = None
        if hook and hook["public_key"]:
            ed25519 = verify_ed25519(hook["public_key"], body, headers)
            changed = bytes([body[0] ^ 1]) + body[1:] if body else b"x"
            tampered = verify_ed25519(hook["public_key"], changed, headers)
        cloudevent, cloudevent_error = read_cloudevent(headers, body)
        delay_ms = hook["delay_ms"] if hook else 0
        if hook and hook.get("delay_ms_max"):
            delay_ms = random.uniform(0, hook["delay_ms_max"])
        record = {
            "delay_ms": delay_ms,
            "verified_each": each,
            "ed25519_verified": ed25519,
            "ed25519_tampered_verified": tampered,
            "path": path,
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "webhook_signature": headers.get("webhook-signature"),
            "headers": headers,
            "body": text,
            "body_base64": base64.b64encode(body).decode(),
            "at": time.time(),
            "verified": verified,
            "error": error,
            "cloudevent": cloudevent,
            "cloudevent_error": cloudevent_error,
            "status": response.get("status", 200),
        }
        with lock:
            deliveries.append(record)
        if delay_ms:
            time.sleep(delay_ms / 1000)
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
        hooks[path] = new_hook(secret)
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
