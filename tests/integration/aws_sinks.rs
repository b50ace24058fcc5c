//! The SNS, SQS and Kinesis sinks against `moto_server`, through the real AWS SDK: what
//! the sinks send is read back with the services' own APIs.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use reelay::model::{AwsOptions, Document, StoredEvent};
use reelay::sinks::AttemptResult;
use reelay::sinks::aws::{AwsResource, AwsSinks, Outgoing};

use crate::support::moto::{self, Moto};

fn event(seq: i64, name: &str, entity: &str) -> StoredEvent {
    let body =
        format!(r#"{{"eventName":"{name}","guid":"g-{seq}","assetId":"{entity}","n":{seq}}}"#);
    StoredEvent {
        seq,
        account: "acme".into(),
        id: format!("g-{seq}"),
        name: name.into(),
        topic: "asset-operations".into(),
        entity_key: Some(entity.into()),
        occurred_at: 0,
        received_at: 0,
        body: Document::from(body),
    }
}

/// The sinks read credentials from the standard chain, as in production.
fn use_moto_credentials(moto: &Moto) -> AwsOptions {
    for (name, value) in moto::aws_env(&moto.endpoint) {
        // SAFETY: set before any thread of this test reads the environment; every test
        // sets the same values (nextest runs each test in a process of its own).
        unsafe { std::env::set_var(name, value) };
    }
    AwsOptions {
        endpoint_url: Some(moto.endpoint.clone()),
        region: Some(moto::REGION.into()),
        role_arn: None,
    }
}

fn outgoing(events: &[StoredEvent]) -> Vec<(StoredEvent, Bytes)> {
    events
        .iter()
        .map(|event| (event.clone(), event.body.bytes().clone()))
        .collect()
}

async fn send(
    sinks: &AwsSinks,
    resource: AwsResource,
    options: &AwsOptions,
    events: &[StoredEvent],
) -> Vec<AttemptResult> {
    let target = sinks
        .target(resource, options, Duration::from_secs(10))
        .await;
    let owned = outgoing(events);
    let batch: Vec<Outgoing> = owned
        .iter()
        .map(|(event, body)| Outgoing { event, body })
        .collect();
    target
        .send(&batch)
        .await
        .into_iter()
        .map(|attempted| attempted.result)
        .collect()
}

#[tokio::test]
async fn kinesis_records_arrive_in_order_per_partition_key() {
    let moto = Moto::start().await;
    let options = use_moto_credentials(&moto);
    let kinesis = aws_sdk_kinesis::Client::new(&moto.sdk_config().await);
    kinesis
        .create_stream()
        .stream_name("assets")
        .shard_count(2)
        .send()
        .await
        .unwrap();

    // 600 events over three assets: more than one PutRecords call (500 at most).
    let events: Vec<StoredEvent> = (1..=600)
        .map(|seq| event(seq, "asset-updated", ["a1", "a2", "a3"][seq as usize % 3]))
        .collect();
    let sinks = AwsSinks::default();
    let stream = AwsResource::KinesisStream {
        name: "assets".into(),
    };
    let results = send(&sinks, stream, &options, &events).await;
    assert!(
        results.iter().all(|r| *r == AttemptResult::Delivered),
        "{results:?}"
    );

    // Read every shard back; per asset, the sequence numbers must come in publish order.
    let shards = kinesis
        .list_shards()
        .stream_name("assets")
        .send()
        .await
        .unwrap();
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for shard in shards.shards() {
        let iterator = kinesis
            .get_shard_iterator()
            .stream_name("assets")
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let mut next = iterator.shard_iterator().map(str::to_owned);
        while let Some(iterator) = next.take() {
            let page = kinesis
                .get_records()
                .shard_iterator(iterator)
                .limit(1000)
                .send()
                .await
                .unwrap();
            for record in page.records() {
                let body: serde_json::Value =
                    serde_json::from_slice(record.data().as_ref()).unwrap();
                let key = record.partition_key().unwrap_or_default();
                assert_eq!(body["assetId"], key);
                by_key
                    .entry(key.to_owned())
                    .or_default()
                    .push(body["n"].as_i64().unwrap());
            }
            if !page.records().is_empty() {
                next = page.next_shard_iterator().map(str::to_owned);
            }
        }
    }
    assert_eq!(by_key.values().map(Vec::len).sum::<usize>(), 600);
    for (key, seqs) in by_key {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
    }
}

#[tokio::test]
async fn a_missing_stream_fails_every_record_with_a_clear_error() {
    let moto = Moto::start().await;
    let options = use_moto_credentials(&moto);
    let sinks = AwsSinks::default();
    let stream = AwsResource::KinesisStream {
        name: "no-such-stream".into(),
    };
    let target = sinks
        .target(stream.clone(), &options, Duration::from_secs(10))
        .await;
    let refused = target.check().await.unwrap_err();
    assert!(refused.contains("ResourceNotFound"), "{refused}");
    let results = send(&sinks, stream, &options, &[event(1, "asset-created", "a1")]).await;
    match &results[0] {
        AttemptResult::Failed { error, .. } => {
            assert!(error.contains("ResourceNotFound"), "{error}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// An SQS queue subscribed to an SNS topic, with raw message delivery on or off.
async fn topic_with_queue(
    moto: &Moto,
    topic: &str,
    raw: bool,
    filter_policy: Option<&str>,
) -> (String, String) {
    let config = moto.sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let topic_arn = sns
        .create_topic()
        .name(topic)
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_owned();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{topic}-queue"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let mut subscribe = sns
        .subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .attributes("RawMessageDelivery", raw.to_string());
    if let Some(policy) = filter_policy {
        subscribe = subscribe.attributes("FilterPolicy", policy);
    }
    subscribe.send().await.unwrap();
    (topic_arn, queue_url)
}

/// Every message in the queue: its body and its message attributes.
async fn drain(moto: &Moto, queue_url: &str) -> Vec<(String, HashMap<String, String>)> {
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let mut messages = Vec::new();
    loop {
        let page = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        if page.messages().is_empty() {
            return messages;
        }
        for message in page.messages() {
            let attributes = message
                .message_attributes()
                .map(|attributes| {
                    attributes
                        .iter()
                        .map(|(name, value)| {
                            (
                                name.clone(),
                                value.string_value().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            messages.push((message.body().unwrap_or_default().to_owned(), attributes));
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn sns_messages_carry_the_event_and_its_attributes() {
    let moto = Moto::start().await;
    let options = use_moto_credentials(&moto);
    let sinks = AwsSinks::default();
    let events: Vec<StoredEvent> = (1..=25)
        .map(|seq| event(seq, "asset-created", &format!("a{seq}")))
        .collect();

    // Raw delivery: the queue gets the event itself, attributes as message attributes.
    let (raw_topic, raw_queue) = topic_with_queue(&moto, "raw", true, None).await;
    let results = send(
        &sinks,
        AwsResource::SnsTopic { arn: raw_topic },
        &options,
        &events,
    )
    .await;
    assert!(
        results.iter().all(|r| *r == AttemptResult::Delivered),
        "{results:?}"
    );
    let mut received = drain(&moto, &raw_queue).await;
    received.sort_by_key(|(body, _)| body.clone());
    assert_eq!(received.len(), 25);
    for (body, attributes) in &received {
        let document: serde_json::Value = serde_json::from_str(body).unwrap();
        let seq = document["n"].as_i64().unwrap();
        assert_eq!(attributes["eventName"], "asset-created");
        assert_eq!(attributes["topic"], "asset-operations");
        assert_eq!(attributes["tenant"], "acme");
        assert_eq!(attributes["entityKey"], format!("a{seq}"));
        assert_eq!(attributes["reelaySequence"], seq.to_string());
    }

    // Raw delivery off: SNS wraps the event in its JSON envelope, attributes inside.
    let (topic, queue) = topic_with_queue(&moto, "wrapped", false, None).await;
    send(
        &sinks,
        AwsResource::SnsTopic { arn: topic },
        &options,
        &events[..3],
    )
    .await;
    let received = drain(&moto, &queue).await;
    assert_eq!(received.len(), 3);
    for (body, _) in received {
        let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
        let message: serde_json::Value =
            serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap();
        assert_eq!(message["eventName"], "asset-created");
        assert_eq!(
            envelope["MessageAttributes"]["eventName"]["Value"],
            "asset-created"
        );
    }
}

#[tokio::test]
async fn an_sns_filter_policy_on_event_name_selects_events() {
    let moto = Moto::start().await;
    let options = use_moto_credentials(&moto);
    let sinks = AwsSinks::default();
    let (topic, queue) = topic_with_queue(
        &moto,
        "filtered",
        true,
        Some(r#"{"eventName": ["asset-published"]}"#),
    )
    .await;
    let events: Vec<StoredEvent> = (1..=12)
        .map(|seq| {
            let name = if seq % 3 == 0 {
                "asset-published"
            } else {
                "asset-updated"
            };
            event(seq, name, "a1")
        })
        .collect();
    send(
        &sinks,
        AwsResource::SnsTopic { arn: topic },
        &options,
        &events,
    )
    .await;
    let received = drain(&moto, &queue).await;
    assert_eq!(received.len(), 4);
    assert!(
        received
            .iter()
            .all(|(_, a)| a["eventName"] == "asset-published")
    );
}

#[tokio::test]
async fn sqs_messages_carry_the_event_and_its_attributes() {
    let moto = Moto::start().await;
    let options = use_moto_credentials(&moto);
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk_config().await);
    let queue_url = sqs
        .create_queue()
        .queue_name("events")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let events: Vec<StoredEvent> = (1..=15)
        .map(|seq| event(seq, "asset-deleted", "a9"))
        .collect();
    let sinks = AwsSinks::default();
    let results = send(
        &sinks,
        AwsResource::SqsQueue {
            url: queue_url.clone(),
        },
        &options,
        &events,
    )
    .await;
    assert!(
        results.iter().all(|r| *r == AttemptResult::Delivered),
        "{results:?}"
    );
    let received = drain(&moto, &queue_url).await;
    assert_eq!(received.len(), 15);
    assert!(
        received
            .iter()
            .all(|(_, a)| a["eventName"] == "asset-deleted")
    );
}
