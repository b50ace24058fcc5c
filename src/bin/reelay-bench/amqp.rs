//! The RabbitMQ phase (`--amqp URL`): events/s delivered to an exchange of its own on
//! that broker, confirmed by the broker, next to the NATS row; and how many messages the
//! queue bound to it holds after it (RabbitMQ does not de-duplicate: a redelivery is a
//! second message).

use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use super::events::Traffic;
use super::nats::BusResult;
use super::{Bench, closed_loop};

impl Bench {
    pub(super) async fn amqp_delivery(
        &self,
        url: &str,
        events: usize,
    ) -> anyhow::Result<BusResult> {
        let phase = "amqp";
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to RabbitMQ at {url}"))?;
        let channel = connection.create_channel().await?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("reelay-bench-{tag}");
        let queue = format!("reelay-bench-{tag}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("declaring the exchange")?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("declaring the queue")?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let id = self
            .subscribe_to(
                phase,
                json!({"destination": {"type": "amqp", "exchange": exchange, "url": url},
                       "events": [Traffic::Player.event_name()]}),
            )
            .await?;
        self.split(phase).await?;
        let publish = self.publisher(phase);
        let started = Instant::now();
        let label = "deliver to amqp";
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
        let held = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count();
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        Ok(BusResult {
            sink: phase,
            held_in: "queue",
            events,
            delivered,
            stored: u64::from(held),
            seconds,
            per_second: delivered as f64 / seconds.max(1e-9),
        })
    }
}
