"""Schemathesis hooks of scripts/fuzz-api: keep every request the server makes on loopback.

A generated subscription names any URL, and the server would call it (the validation
handshake, deliveries) or ask AWS about it (the destination check). On a test machine
nothing may leave it, so every outbound target in a request body is replaced, before the
request is sent, by the local sink that scripts/fuzz-api runs (it answers 200 and
consents to validation handshakes); the AWS destination check, a network probe no schema
can promise the outcome of, is skipped. The values stay schema-valid: positive cases stay
positive. One more rewrite (below) writes integral floats as integers.
"""

import itertools
import os

import schemathesis

SINK = os.environ["REELAY_FUZZ_SINK"]
URL_MEMBERS = {"endpoint", "url", "queueUrl", "endpointUrl"}
AWS_NAMES = {"topicArn", "streamName", "eventBusName"}


COUNTER = itertools.count()


def pin(value):
    if isinstance(value, dict):
        for name, member in list(value.items()):
            if isinstance(member, float) and member.is_integer() and abs(member) < 2**53:
                # JSON Schema counts 5.0 an integer; the catalog takes integer fields
                # (ids) in integer notation only, as the README says. Known, left as is.
                value[name] = int(member)
            elif name in AWS_NAMES and isinstance(member, str):
                # Unique, as URLs are (two alike would be a duplicate subscription).
                value[name] = f"{member}-{next(COUNTER)}"
            elif name in URL_MEMBERS and isinstance(member, str):
                # One URL per subscription: two generated filters alike would otherwise
                # make a duplicate subscription (422 duplicate_subscription).
                value[name] = f"{SINK}/{next(COUNTER)}"
            elif name == "callbacks" and isinstance(member, list):
                # One URL per job: a job takes at most 10 (422 too_many_callbacks).
                value[name] = [SINK if isinstance(item, str) else item for item in member]
            else:
                pin(member)
        if "destination" in value or "endpoint" in value:
            # A subscription's filter and transform are small languages (a filter
            # expression, a jq program) that no JSON Schema can say is well formed; their
            # refusals (422 invalid_filter, invalid_transform) are tested in
            # tests/integration/delivery_controls.rs.
            value.pop("filter", None)
            value.pop("transform", None)
            # Per-entity order is for webhooks only (422 invalid_ordering otherwise, a rule
            # across members that the schema does not carry; tested in ordering.rs).
            destination = value.get("destination")
            if isinstance(destination, dict) and destination.get("type") != "webhook":
                value.pop("ordering", None)
        destination = value.get("destination")
        if isinstance(destination, dict) and destination.get("type") in ("sns", "sqs", "kinesis", "eventbridge"):
            value["skipDestinationCheck"] = True
        if isinstance(destination, dict) and destination.get("type") == "nats":
            # A closed loopback port: deliveries fail and are retried, nothing leaves.
            # Its check (a connection) is a network probe, as for AWS.
            if "url" in destination:
                destination["url"] = "nats://127.0.0.1:9"
            subject = destination.get("subject")
            if isinstance(subject, str):
                # Unique (two alike would be a duplicate subscription), within 255.
                subject = subject if len(subject) <= 240 else "fuzz"
                destination["subject"] = f"{subject}.{next(COUNTER)}"
            value["skipDestinationCheck"] = True
        if isinstance(destination, dict) and destination.get("type") == "amqp":
            # As NATS: a closed loopback port, and no connection at creation.
            if "url" in destination:
                destination["url"] = "amqp://127.0.0.1:9"
            exchange = destination.get("exchange")
            if isinstance(exchange, str):
                # Unique, within 127 characters of the documented alphabet.
                destination["exchange"] = f"{exchange[:100]}-{next(COUNTER)}"
            value["skipDestinationCheck"] = True
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, float) and item.is_integer() and abs(item) < 2**53:
                value[index] = int(item)
            else:
                pin(item)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    pin(case.body)
