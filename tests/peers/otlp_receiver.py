"""An OTLP/HTTP receiver for Reelay's tests: a collector in a few lines.

It takes what an OpenTelemetry exporter POSTs to /v1/traces and /v1/metrics (protobuf
ExportTraceServiceRequest and ExportMetricsServiceRequest, decoded with PyPI
`opentelemetry-proto`, the protocol's own definitions) and shows what arrived as JSON:

    python3 otlp_receiver.py --port 4318

    POST /v1/traces          application/x-protobuf, answered with an empty
                             ExportTraceServiceResponse
    GET  /_control/spans     {"spans": [{"trace_id", "span_id", "parent_span_id" (hex,
                             "" for a root), "name", "kind", "attributes" {key: value},
                             "status" {"code", "message"}, "start_ns", "end_ns",
                             "service"}, ...]} in arrival order
    POST /v1/metrics         application/x-protobuf, answered with an empty
                             ExportMetricsServiceResponse
    GET  /_control/metrics   {"metrics": [{"name", "kind" ("sum", "gauge", "histogram"),
                             "attributes" {key: value}, "value" (a sum's or gauge's;
                             a histogram's count), "service"}, ...]}: the latest point of
                             each series (name and attributes)
    GET  /_control/requests  {"count": n, "errors": [...]}: export requests received, and
                             why any could not be decoded

It prints "LISTENING <port>" once bound, and exits when its standard input closes.
"""

import argparse
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()
SPANS = []
# The latest point of each series, by (name, its attributes as sorted JSON).
METRICS = {}
REQUESTS = {"count": 0, "errors": []}


def any_value(value):
    """An AnyValue as plain JSON."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attributes(pairs):
    return {kv.key: any_value(kv.value) for kv in pairs}


def point_value(point):
    kind = point.WhichOneof("value")
    return getattr(point, kind) if kind else None


def decode_metrics(body):
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    series = []
    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points
                for point in points:
                    value = point.count if kind == "histogram" else point_value(point)
                    series.append({
                        "name": metric.name,
                        "kind": kind,
                        "attributes": attributes(point.attributes),
                        "value": value,
                        "service": resource.get("service.name"),
                    })
    return series


def decode(body):
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "attributes": attributes(span.attributes),
                    "status": {"code": span.status.code, "message": span.status.message},
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                              for l in span.links],
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                })
    return spans


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path not in ("/v1/traces", "/v1/metrics"):
            self.answer(404, b"", "text/plain")
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            if self.path == "/v1/traces":
                spans = decode(body)
            else:
                series = decode_metrics(body)
        except Exception as error:  # noqa: BLE001 - report any decoding failure
            with LOCK:
                REQUESTS["count"] += 1
                REQUESTS["errors"].append(str(error))
            self.answer(400, str(error).encode(), "text/plain")
            return
        with LOCK:
            REQUESTS["count"] += 1
            if self.path == "/v1/traces":
                SPANS.extend(spans)
                answer = ExportTraceServiceResponse()
            else:
                for one in series:
                    key = (one["name"], json.dumps(one["attributes"], sort_keys=True))
                    METRICS[key] = one
                answer = ExportMetricsServiceResponse()
        self.answer(200, answer.SerializeToString(), "application/x-protobuf")

    def do_GET(self):
        with LOCK:
            if self.path == "/_control/spans":
                body = {"spans": list(SPANS)}
            elif self.path == "/_control/metrics":
                body = {"metrics": list(METRICS.values())}
            elif self.path == "/_control/requests":
                body = dict(REQUESTS)
            else:
                self.answer(404, b"", "text/plain")
                return
        self.answer(200, json.dumps(body).encode(), "application/json")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
