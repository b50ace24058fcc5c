"""A Zapp app for Reelay's tests: sends every CloudEvents example of seed 002 (the
Applicaster Zapp events) to Reelay with the `cloudevents` SDK, and checks each answer.

    python3 cloudevents_client.py --url http://127.0.0.1:8080/v1/accounts/demo/cloudevents \
        --api-key TOKEN --mode structured|binary|batch --user-token ACCESS_TOKEN \
        [--expect-source URL]

Each example's placeholders are filled with realistic values (a fresh UUID per event).
structured and binary send one request per example; batch sends them all in one
`application/cloudevents-batch+json` request (the SDK has no batch writer: the batch is
the SDK's structured JSON of each event, in an array). Each answer must be `201` with
the response CloudEvent of seed 002, parsed with the SDK: type
`com.applicaster.event.received.v1`, the expected source, a subject naming the events,
a new UUID id and an RFC 3339 time.

Prints one JSON report to standard output: {"sent": [{"id", "type", "source", "key"}...],
"answers": [...]}; exits 1 (with the reason on standard error) when a check fails.
"""

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

from cloudevents.core.bindings.http import HTTPMessage, from_http, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

# Seed 002 writes `"datacontenttype": "applicastion/json"` (sic) for most events, and Zapp
# apps send a JSON object as data. The SDK would write such data as a Python repr string
# in structured mode (it only treats `application|text/...json` as JSON), so, like the
# apps, treat the misspelt type as JSON.
JSONFormat.JSON_CONTENT_TYPE_PATTERN = re.compile(
    r"^(application|applicastion|text)/([a-zA-Z0-9\-\.]+\+)?json(;.*)?$"
)

SOURCE = "zappdemo://com.example.zapp/versions/6.1.6"
RECEIVED = "com.applicaster.event.received.v1"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def examples(user_token):
    """Every request payload of seed 002, in its order, placeholders filled."""
    now = datetime.now(timezone.utc)
    stamp = now.isoformat().replace("+00:00", "Z")

    def event(type_, subject, data, content_type="applicastion/json"):
        return CloudEvent(
            attributes={
                "specversion": "1.0",
                "type": type_,
                "source": SOURCE,
                "subject": subject,
                "id": str(uuid.uuid4()),
                "time": now,
                "datacontenttype": content_type,
            },
            data=dict(data, userIdentifier=user_token),
        )

    video = "entry-" + uuid.uuid4().hex[:8]
    return [
        event("com.applicaster.video.started.v1",
              f"Watched video segment {stamp} progress:0 {video}",
              {"videoId": video, "secondsFromStart": "0", "progress": 0,
               "status": "VIDEO_STARTED"}),
        event("com.applicaster.video.stopped.v1",
              f"Watched video segment {stamp} progress:0.97 {video}",
              {"videoId": video, "secondsFromStart": 3012, "progress": 0.97,
               "status": "COMPLETED"}),
        event("com.applicaster.video.progress.v1",
              f"Watched video segment {stamp} progress:0.42 {video}",
              {"videoId": video, "secondsFromStart": 1290, "progress": 0.42,
               "status": "WATCHING", "sessionStartAt": 600}),
        event("com.applicaster.video.paused.v1",
              f"Watched video segment {stamp} progress:0.43 {video}",
              {"videoId": video, "secondsFromStart": 1321, "progress": 0.43,
               "status": "VIDEO_PAUSED", "sessionStartAt": 600}),
        event("com.applicaster.video.interval.v1",
              f"Watched video interval 60 of video {video}",
              {"videoId": video, "interval": 60, "status": "INTERVAL_COMPLETED"},
              content_type="application/json"),
        # The pause event with the feed entry's extensions.continue-watching keys added.
        event("com.applicaster.video.paused.v1",
              f"Watched video segment {stamp} progress:0.5 12345",
              {"videoId": "12345", "secondsFromStart": 1500, "progress": 0.5,
               "status": "VIDEO_PAUSED", "sessionStartAt": 0,
               "key1": "some info1", "key2": "some info2"}),
        event("com.applicaster.favorites.added.v1", f"{video} added to favorites",
              {"entryId": video}),
        event("com.applicaster.favorites.removed.v1", f"{video} wast removed from favorites",
              {"entryId": video}),
    ]


def post(url, api_key, message):
    headers = dict(message.headers)
    headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=message.body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def check_answer(status, headers, body, ids, expect_source):
    if status != 201:
        raise AssertionError(f"expected 201, got {status}: {body!r}")
    headers = {name.lower(): value for name, value in headers.items()}
    if not headers.get("content-type", "").startswith("application/cloudevents+json"):
        raise AssertionError(f"answer content-type is {headers.get('content-type')!r}")
    answer = from_http(HTTPMessage(headers=headers, body=body), JSONFormat())
    if answer.get_specversion() != "1.0":
        raise AssertionError(f"answer specversion {answer.get_specversion()!r}")
    if answer.get_type() != RECEIVED:
        raise AssertionError(f"answer type {answer.get_type()!r}")
    if expect_source and answer.get_source() != expect_source:
        raise AssertionError(f"answer source {answer.get_source()!r}, expected {expect_source!r}")
    if len(ids) == 1:
        subject = f"Event {ids[0]} was successfully received"
    else:
        subject = f"Events {', '.join(ids)} were successfully received"
    if answer.get_subject() != subject:
        raise AssertionError(f"answer subject {answer.get_subject()!r}, expected {subject!r}")
    answer_id = str(uuid.UUID(answer.get_id()))
    if answer_id in ids:
        raise AssertionError("the answer reuses an event id")
    raw_time = json.loads(body)["time"]
    if not RFC3339.match(raw_time):
        raise AssertionError(f"answer time {raw_time!r} is not RFC 3339")
    if abs(datetime.now(timezone.utc) - answer.get_time()) > timedelta(minutes=5):
        raise AssertionError(f"answer time {raw_time!r} is not now")
    return {"id": answer_id, "source": answer.get_source(), "subject": answer.get_subject(),
            "time": raw_time}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the account's /cloudevents URL")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--mode", choices=["structured", "binary", "batch"], required=True)
    parser.add_argument("--user-token", required=True, help="the app user's access token")
    parser.add_argument("--expect-source", help="the source the answers must have")
    args = parser.parse_args()

    events = examples(args.user_token)
    sent = [{"id": e.get_id(), "type": e.get_type(), "source": e.get_source(),
             "key": e.get_data().get("videoId") or e.get_data().get("entryId")}
            for e in events]
    answers = []
    try:
        if args.mode == "batch":
            body = b"[" + b",".join(JSONFormat().write(e) for e in events) + b"]"
            message = HTTPMessage({"Content-Type": "application/cloudevents-batch+json"}, body)
            answers.append(check_answer(*post(args.url, args.api_key, message),
                                        [e.get_id() for e in events], args.expect_source))
        else:
            convert = to_structured if args.mode == "structured" else to_binary
            for e in events:
                message = convert(e, JSONFormat())
                answers.append(check_answer(*post(args.url, args.api_key, message),
                                            [e.get_id()], args.expect_source))
    except AssertionError as failure:
        print(f"{args.mode}: {failure}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"sent": sent, "answers": answers}))


if __name__ == "__main__":
    main()
