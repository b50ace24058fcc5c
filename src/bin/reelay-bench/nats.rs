//! The NATS phase (`--nats URL`): events/s delivered to a JetStream stream of its own on
//! that server, acknowledged by the stream, next to the webhook rows; and how many
//! messages the stream holds after it (one per event: the sink's message ids let the
//! stream drop any redelivery).

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use serde::Serialize;
use serde_json::json;

use super::events::Traffic;
use super::{Bench, closed_loop};

#[derive(Debug, Default, Serialize)]
pub struct BusResult {
    pub sink: &'static str,
    /// What holds the messages: a stream, a queue.
    pub held_in: &'static str,
    pub events: usize,
    pub delivered: u64,
    /// Messages on the stream (or queue) afterwards.
    pub stored: u64,
    /// From the first publish to the last delivery.
    pub seconds: f64,
    pub per_second: f64,
}

impl Bench {
    pub(super) async fn nats_delivery(
        &self,
        url: &str,
        events: usize,
    ) -> anyhow::Result<BusResult> {
        let phase = "nats";
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let context = jetstream::new(client);
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("REELAY_BENCH_{tag}");
        let prefix = format!("reelaybench{tag}");
        context
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                ..Default::default()
            })
            .await
            .context("creating the JetStream stream")?;
        let id = self
            .subscribe_to(
                phase,
                json!({"destination": {"type": "nats", "subject": format!("{prefix}.{{eventName}}"), "url": url},
                       "events": [Traffic::Player.event_name()]}),
            )
            .await?;
        self.split(phase).await?;
        let publish = self.publisher(phase);
        let started = Instant::now();
        let label = "deliver to nats";
        closed_loop(label, events, self.concurrency, move |n| {
            publish(Traffic::Player.event(n).to_string())
        })
        .await?;
        let mut last = (0, Instant::now());
        let delivered = loop {
            let delivered = self.delivered(phase, &id).await?;
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
        let mut stream = context.get_stream(&name).await?;
        let stored = stream.info().await?.state.messages;
        context.delete_stream(&name).await?;
        Ok(BusResult {
            sink: phase,
            held_in: "stream",
            events,
            delivered,
            stored,
            seconds,
            per_second: delivered as f64 / seconds.max(1e-9),
        })
    }
}
