//! The AWS phases (`--aws`): events/s delivered to a Kinesis stream and to an SNS topic
//! served by a local `moto_server`, and the API calls the sinks made per 1,000 events,
//! which shows the batching (PutRecords carries up to 500 events, PublishBatch 10).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

use super::events::Traffic;
use super::moto::Moto;
use super::{Bench, closed_loop};

#[derive(Debug, Clone, Copy)]
pub enum AwsSink {
    Kinesis,
    Sns,
}

impl AwsSink {
    pub fn name(self) -> &'static str {
        match self {
            AwsSink::Kinesis => "kinesis",
            AwsSink::Sns => "sns",
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct AwsResult {
    pub sink: &'static str,
    pub events: usize,
    pub delivered: u64,
    /// From the first publish to the last delivery.
    pub seconds: f64,
    pub per_second: f64,
    pub api_calls: u64,
    pub api_calls_per_1000_events: f64,
}

impl Bench {
    pub(super) async fn aws_delivery(
        &self,
        moto: &Moto,
        sink: AwsSink,
        events: usize,
    ) -> anyhow::Result<AwsResult> {
        let account = self.account(sink.name());
        let config = moto.sdk_config().await;
        let destination = match sink {
            AwsSink::Kinesis => {
                let stream = format!("{account}-stream");
                aws_sdk_kinesis::Client::new(&config)
                    .create_stream()
                    .stream_name(&stream)
                    .shard_count(4)
                    .send()
                    .await
                    .context("creating the Kinesis stream")?;
                json!({"type": "kinesis", "streamName": stream})
            }
            AwsSink::Sns => {
                let topic = aws_sdk_sns::Client::new(&config)
                    .create_topic()
                    .name(format!("{account}-topic"))
                    .send()
                    .await
                    .context("creating the SNS topic")?;
                json!({"type": "sns", "topicArn": topic.topic_arn()})
            }
        };
        let id = self
            .subscribe_to(
                sink.name(),
                json!({"destination": destination, "events": [Traffic::Player.event_name()]}),
            )
            .await?;
        self.split(sink.name()).await?;
        let calls_before = self.sink_calls(sink).await?;
        let publish = self.publisher(sink.name());
        let started = Instant::now();
        let label = format!("deliver to {}", sink.name());
        closed_loop(&label, events, self.concurrency, move |n| {
            publish(Traffic::Player.event(n).to_string())
        })
        .await?;
        // Deliveries are counted by the server (saved every 50 ms).
        let mut last = (0, Instant::now());
        let delivered = loop {
            let delivered = self.delivered(sink.name(), &id).await?;
            eprint!("\r{label:<40} {delivered:>9}/{events:<9}");
            if delivered >= events as u64 || last.1.elapsed() > Duration::from_secs(30) {
                break delivered;
            }
            if delivered != last.0 {
                last = (delivered, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        let api_calls = self.sink_calls(sink).await? - calls_before;
        Ok(AwsResult {
            sink: sink.name(),
            events,
            delivered,
            seconds,
            per_second: delivered as f64 / seconds.max(1e-9),
            api_calls,
            api_calls_per_1000_events: api_calls as f64 * 1000.0 / delivered.max(1) as f64,
        })
    }

    /// The subscription's count of first-attempt deliveries.
    pub(super) async fn delivered(&self, phase: &str, id: &str) -> anyhow::Result<u64> {
        let subscription: Value = self
            .http
            .get(format!(
                "{}/v1/accounts/{}/subscriptions/{id}",
                self.server.url(0),
                self.account(phase)
            ))
            .bearer_auth(self.server.token())
            .send()
            .await?
            .json()
            .await?;
        Ok(subscription["delivered"].as_u64().unwrap_or(0))
    }

    /// The servers' count of API calls made by a sink (`reelay_sink_calls_total`), all
    /// nodes together.
    async fn sink_calls(&self, sink: AwsSink) -> anyhow::Result<u64> {
        let series = format!("reelay_sink_calls_total{{sink=\"{}\"}}", sink.name());
        let mut total = 0;
        for node in 0..self.server.nodes() {
            let metrics = self
                .http
                .get(format!("{}/metrics", self.server.url(node)))
                .bearer_auth(self.server.token())
                .send()
                .await?
                .text()
                .await?;
            total += metrics
                .lines()
                .find_map(|line| line.strip_prefix(&series))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        Ok(total)
    }
}
