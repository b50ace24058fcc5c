//! Tracing: one published event is one trace from its publish through the group commit
//! to every delivery attempt, exported over OTLP/HTTP to a real receiver (PyPI
//! `opentelemetry-proto` decodes it), and the receivers get the trace context.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{ADMIN, TestApp, eventually};
use crate::publish::asset_event;
use crate::support::otlp::{OtlpReceiver, Span};
use crate::support::receiver::{Delivery, Receiver, Response};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn publisher_traceparent() -> String {
    format!("00-{TRACE_ID}-{PUBLISHER_SPAN}-01")
}

/// A server exporting every trace to `otlp`, its batches sent every 100 ms.
async fn traced_app(otlp: &OtlpReceiver) -> TestApp {
    TestApp::start_with(&[
        ("REELAY_OTLP_ENDPOINT", &otlp.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await
}

/// Publishes one asset event, with `headers` beside the token.
async fn publish(app: &TestApp, guid: &str, headers: &[(&str, &str)]) {
    let mut request = app
        .http
        .post(format!("{}/v1/accounts/vimond/events", app.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(asset_event("asset-updated", guid).to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("publish");
    assert_eq!(response.status().as_u16(), 202);
}

async fn deliveries(receiver: &Receiver, path: &str, count: usize) -> Vec<Delivery> {
    eventually(
        Duration::from_secs(15),
        &format!("{count} deliveries at {path}"),
        || async {
            let got = receiver.deliveries(path).await;
            (got.len() >= count).then_some(got)
        },
    )
    .await
}

/// The spans of trace `trace_id` once `count` of them have arrived.
async fn trace(otlp: &OtlpReceiver, trace_id: &str, count: usize) -> Vec<Span> {
    eventually(
        Duration::from_secs(15),
        &format!("{count} spans of trace {trace_id}"),
        || async {
            let spans: Vec<Span> = otlp
                .spans()
                .await
                .into_iter()
                .filter(|span| span.trace_id == trace_id)
                .collect();
            (spans.len() >= count).then_some(spans)
        },
    )
    .await
}

/// `(trace id, parent id, flags)` of a `traceparent` header.
fn parts(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a str> {
    delivery.headers.get(name).map(String::as_str)
}

#[tokio::test]
async fn one_event_is_one_trace_from_its_publish_through_the_commit_to_each_attempt() {
    let otlp = OtlpReceiver::start().await;
    let app = traced_app(&otlp).await;
    let receiver = Receiver::start().await;
    let (subscription, _) = app
        .subscribe_receiver(
            &receiver,
            "/traced",
            json!({"events": ["asset-updated"]}),
            &[Response::status(500), Response::status(200)],
        )
        .await;
    let traceparent = publisher_traceparent();
    publish(
        &app,
        "t-1",
        &[("traceparent", &traceparent), ("tracestate", TRACESTATE)],
    )
    .await;

    // The receiver: both attempts (a failure, then the retry read back from the log)
    // continue the publisher's trace, each under its own attempt's span.
    let got = deliveries(&receiver, "/traced", 2).await;
    let sent: Vec<(String, String, String)> = got
        .iter()
        .map(|d| parts(header(d, "traceparent").expect("a traceparent")))
        .collect();
    for (delivery, (trace_id, parent, flags)) in got.iter().zip(&sent) {
        assert_eq!(trace_id, TRACE_ID, "the publisher's trace");
        assert_eq!(flags, "01", "sampled, as the publisher said");
        assert_ne!(
            parent, PUBLISHER_SPAN,
            "under Reelay's span, not the publisher's"
        );
        assert_eq!(header(delivery, "tracestate"), Some(TRACESTATE));
        assert_eq!(delivery.verified, Some(true));
    }
    assert_ne!(sent[0].1, sent[1].1, "each attempt has a span of its own");

    // The collector: the publish span under the publisher's, the commit and both
    // attempts under the publish span.
    let spans = trace(&otlp, TRACE_ID, 4).await;
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let publish = named("reelay.publish");
    assert_eq!(publish.len(), 1, "{spans:#?}");
    let publish = publish[0];
    assert_eq!(publish.parent_span_id, PUBLISHER_SPAN);
    assert_eq!(publish.service.as_deref(), Some("reelay"));
    assert_eq!(publish.attribute("reelay.account"), "vimond");
    assert_eq!(publish.attribute("reelay.publish.events"), 1);
    assert_eq!(publish.attribute("reelay.publish.stored"), 1);
    assert_eq!(
        publish.attribute("http.route"),
        "/v1/accounts/{account}/events"
    );

    let commit = named("reelay.commit");
    assert_eq!(commit.len(), 1, "{spans:#?}");
    assert_eq!(commit[0].parent_span_id, publish.span_id);
    assert_eq!(commit[0].attribute("reelay.commit.events"), 1);
    assert_eq!(commit[0].attribute("reelay.commit.requests"), 1);
    assert!(commit[0].start_ns >= publish.start_ns && commit[0].end_ns <= publish.end_ns);

    let mut attempts = named("reelay.deliver");
    attempts.sort_by_key(|span| span.attribute("reelay.attempt").as_i64());
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for (index, (span, outcome, status)) in [
        (attempts[0], "failed", 500),
        (attempts[1], "delivered", 200),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(span.parent_span_id, publish.span_id);
        assert_eq!(span.attribute("reelay.attempt"), index as i64 + 1);
        assert_eq!(span.attribute("reelay.outcome"), outcome);
        assert_eq!(span.attribute("http.response.status_code"), status);
        assert_eq!(span.attribute("reelay.destination.type"), "webhook");
        assert_eq!(
            span.attribute("reelay.subscription.id"),
            subscription.as_str()
        );
        assert_eq!(span.attribute("reelay.account"), "vimond");
        assert_eq!(span.attribute("reelay.event.id"), "t-1");
        assert_eq!(span.attribute("reelay.event.name"), "asset-updated");
        // What the receiver got names this very span as its parent.
        assert_eq!(sent[index].1, span.span_id, "attempt {}", index + 1);
    }
    assert_eq!(
        attempts[0].status.code, 2,
        "a failed attempt is an error span"
    );
    assert!(
        attempts[0].status.message.contains("500"),
        "{:?}",
        attempts[0].status
    );
    assert_ne!(attempts[1].status.code, 2);
    let requests = otlp.requests().await;
    assert!(
        requests.count >= 1 && requests.errors.is_empty(),
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_publish_without_a_traceparent_starts_a_trace_its_deliveries_continue() {
    let otlp = OtlpReceiver::start().await;
    let app = traced_app(&otlp).await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(
        &receiver,
        "/plain",
        json!({"events": ["asset-updated"]}),
        &[],
    )
    .await;
    let (_, cloudevents) = app
        .subscribe(
            "vimond",
            json!({"endpoint": receiver.url("/ce"), "events": ["asset-updated"],
                   "format": "cloudevents"}),
        )
        .await;
    receiver.hook("/ce", &cloudevents, &[]).await;
    publish(&app, "t-2", &[]).await;

    let plain = &deliveries(&receiver, "/plain", 1).await[0];
    let (trace_id, parent, flags) = parts(header(plain, "traceparent").expect("a traceparent"));
    assert_eq!(flags, "01", "sampled at the default ratio of 1");
    assert_eq!(header(plain, "tracestate"), None);
    // The CloudEvent carries it in the distributed-tracing extension.
    let ce = &deliveries(&receiver, "/ce", 1).await[0];
    let attributes = &ce.cloudevent.as_ref().expect("a CloudEvent")["attributes"];
    let (ce_trace, ce_parent, _) = parts(attributes["traceparent"].as_str().expect("traceparent"));
    assert_eq!(
        ce_trace, trace_id,
        "one trace for both deliveries of the event"
    );
    assert_eq!(
        Some(attributes["traceparent"].as_str().unwrap()),
        header(ce, "traceparent")
    );

    let spans = trace(&otlp, &trace_id, 4).await;
    let publish = spans
        .iter()
        .find(|s| s.name == "reelay.publish")
        .expect("the publish span");
    assert_eq!(
        publish.parent_span_id, "",
        "a new trace starts at the publish"
    );
    let attempts: Vec<&String> = spans
        .iter()
        .filter(|s| s.name == "reelay.deliver")
        .map(|s| &s.span_id)
        .collect();
    assert!(
        attempts.contains(&&parent) && attempts.contains(&&ce_parent),
        "{spans:#?}"
    );
}

#[tokio::test]
async fn with_tracing_off_the_publishers_traceparent_is_passed_on_and_none_is_invented() {
    let app = TestApp::start().await;
    let receiver = Receiver::start().await;
    app.subscribe_receiver(
        &receiver,
        "/off",
        json!({"events": ["asset-updated"]}),
        &[Response::status(500), Response::status(200)],
    )
    .await;
    let (_, binary) = app
        .subscribe(
            "vimond",
            json!({"endpoint": receiver.url("/binary"), "events": ["asset-updated"],
                   "format": "cloudevents-binary"}),
        )
        .await;
    receiver.hook("/binary", &binary, &[]).await;
    let traceparent = publisher_traceparent();
    publish(
        &app,
        "t-3",
        &[("traceparent", &traceparent), ("tracestate", TRACESTATE)],
    )
    .await;
    publish(&app, "t-4", &[]).await;
    // Not W3C Trace Context: ignored, not passed on.
    publish(&app, "t-5", &[("traceparent", "00-not-a-trace-01")]).await;

    let got = deliveries(&receiver, "/off", 4).await;
    let by_id = |id: &str| -> Vec<&Delivery> {
        got.iter()
            .filter(|d| d.webhook_id.as_deref() == Some(id))
            .collect()
    };
    let traced = by_id("t-3");
    assert_eq!(
        traced.len(),
        2,
        "a failure, then the retry read back from the log"
    );
    for delivery in traced {
        assert_eq!(header(delivery, "traceparent"), Some(traceparent.as_str()));
        assert_eq!(header(delivery, "tracestate"), Some(TRACESTATE));
    }
    let untraced = by_id("t-4").into_iter().chain(by_id("t-5"));
    for delivery in untraced {
        assert_eq!(header(delivery, "traceparent"), None, "{delivery:?}");
        assert_eq!(header(delivery, "tracestate"), None);
    }
    // Binary mode: the extension as a ce- header too.
    let binary = deliveries(&receiver, "/binary", 3).await;
    let first = binary
        .iter()
        .find(|d| d.webhook_id.as_deref() == Some("t-3"))
        .expect("t-3");
    assert_eq!(header(first, "ce-traceparent"), Some(traceparent.as_str()));
    assert_eq!(header(first, "traceparent"), Some(traceparent.as_str()));
    let attributes: &Value = &first.cloudevent.as_ref().expect("a CloudEvent")["attributes"];
    assert_eq!(attributes["traceparent"], traceparent.as_str());
    assert_eq!(attributes["tracestate"], TRACESTATE);
    for delivery in binary
        .iter()
        .filter(|d| d.webhook_id.as_deref() != Some("t-3"))
    {
        assert_eq!(header(delivery, "ce-traceparent"), None);
    }
}

#[tokio::test]
async fn a_bad_sampling_ratio_or_endpoint_is_refused_at_start() {
    for (flag, value, says) in [
        ("--trace-sample-ratio", "1.5", "sampling ratio from 0 to 1"),
        ("--trace-sample-ratio", "lots", "sampling ratio from 0 to 1"),
        ("--otlp-endpoint", "collector:4318", "OTLP/HTTP collector"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reelay"))
            .args(["serve", flag, value])
            .output()
            .await
            .expect("run reelay");
        assert!(!output.status.success(), "{flag} {value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}
