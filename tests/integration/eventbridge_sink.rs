//! The EventBridge sink against `moto_server`: events Reelay puts on a bus reach an SQS
//! queue through a rule on that bus, read back with the SQS API.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{TestApp, eventually};
use crate::aws_sinks::receive;
use crate::publish::asset_event;
use crate::support::moto::Moto;

async fn app_with(moto: &Moto, extra: &[(&str, &str)]) -> TestApp {
    let env = moto.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push((
        "REELAY_RETRY_SCHEDULE",
        "300ms,300ms,300ms,300ms,300ms,300ms",
    ));
    env.extend_from_slice(extra);
    TestApp::start_with(&env).await
}

/// A bus, a queue, and a rule on the bus sending what Reelay puts for the
/// `asset-operations` topic to the queue; the queue's URL.
async fn bus_to_queue(moto: &Moto, bus: &str) -> String {
    let config = moto.sdk_config().await;
    let events = aws_sdk_eventbridge::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    events
        .create_event_bus()
        .name(bus)
        .send()
        .await
        .expect("create the bus");
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{bus}-queue"))
        .send()
        .await
        .expect("create the queue")
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|attributes| {
            attributes
                .get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("queue ARN");
    events
        .put_rule()
        .name("assets")
        .event_bus_name(bus)
        .event_pattern(json!({"source": ["reelay.asset-operations"]}).to_string())
        .send()
        .await
        .expect("rule");
    events
        .put_targets()
        .rule("assets")
        .event_bus_name(bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("target");
    queue_url
}

async fn publish(app: &TestApp, guids: &[String]) {
    let events: Vec<Value> = guids
        .iter()
        .map(|guid| asset_event("asset-updated", guid))
        .collect();
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &Value::Array(events).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn events_put_on_a_bus_reach_a_queue_through_a_rule_with_source_and_detail_type() {
    let moto = Moto::start().await.expect("moto_server");
    let queue_url = bus_to_queue(&moto, "reelay-bus").await;
    let app = app_with(&moto, &[]).await;
    app.subscribe(
        "vimond",
        json!({"destination": {"type": "eventbridge", "eventBusName": "reelay-bus"},
               "topics": ["asset-operations"]}),
    )
    .await;
    // More than one PutEvents call (10 entries at most).
    let guids: Vec<String> = (0..23).map(|n| format!("eb-{n}")).collect();
    publish(&app, &guids).await;
    let messages = receive(&moto, &queue_url, guids.len()).await;
    assert_eq!(messages.len(), guids.len());
    let mut seen = BTreeSet::new();
    for (body, _) in &messages {
        let envelope: Value = serde_json::from_str(body).expect("an EventBridge event");
        assert_eq!(envelope["source"], "reelay.asset-operations", "{envelope}");
        assert_eq!(envelope["detail-type"], "asset-updated", "{envelope}");
        let detail = &envelope["detail"];
        assert_eq!(
            detail["custom"]["kept"], true,
            "the whole event: {envelope}"
        );
        assert_eq!(detail["eventName"], "asset-updated");
        seen.insert(detail["guid"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, guids.iter().cloned().collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn a_missing_bus_is_refused_at_creation_and_once_it_exists_what_waited_is_delivered() {
    let moto = Moto::start().await.expect("moto_server");
    let app = app_with(&moto, &[("REELAY_SLOW_RETRY", "1s")]).await;
    let body = |skip: bool| {
        json!({"destination": {"type": "eventbridge", "eventBusName": "late-bus"},
               "topics": ["asset-operations"], "skipDestinationCheck": skip})
        .to_string()
    };
    let (status, answer) = app
        .post("/v1/accounts/vimond/subscriptions", &body(false))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["code"], "destination_unreachable",
        "{answer}"
    );
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/subscriptions",
            &json!({"destination": {"type": "eventbridge", "eventBusName": " "},
                    "topics": ["asset-operations"]})
            .to_string(),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["field"], "destination.eventBusName",
        "{answer}"
    );

    let (status, created) = app
        .post("/v1/accounts/vimond/subscriptions", &body(true))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let guids: Vec<String> = (0..4).map(|n| format!("late-{n}")).collect();
    publish(&app, &guids).await;
    let path = format!("/v1/accounts/vimond/subscriptions/{id}/deliveries");
    let log = eventually(Duration::from_secs(15), "failed attempts", || async {
        let (_, log) = app.get(&path).await;
        log["attempts"][0]["error"].is_string().then_some(log)
    })
    .await;
    assert!(
        log["attempts"][0]["error"]
            .as_str()
            .is_some_and(|error| error.contains("NotFound")),
        "{log}"
    );

    let queue_url = bus_to_queue(&moto, "late-bus").await;
    let messages = receive(&moto, &queue_url, guids.len()).await;
    let seen: BTreeSet<String> = messages
        .iter()
        .filter_map(|(body, _)| serde_json::from_str::<Value>(body).ok())
        .filter_map(|envelope| envelope["detail"]["guid"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(seen, guids.iter().cloned().collect::<BTreeSet<_>>());
}
