//! The Amazon EventBridge sink: events are put on an event bus (PutEvents, up to 10
//! entries and 256 KiB a call), each entry:
//!
//! - `Source`: `reelay.<topic>` (`reelay.asset-operations`),
//! - `DetailType`: the event's name (`asset-updated`),
//! - `Detail`: the event document, in the subscription's format,
//! - `Time`: when the event occurred.
//!
//! A call's answer has one result per entry: an entry with an `ErrorCode` fails alone and
//! is retried alone, classified like every AWS failure ([`super::aws::classify`]). The
//! AWS configuration, its overrides and their rules are those of the other AWS sinks
//! ([`super::aws`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::aws::{AwsOptions, AwsSinks, Failure, admit_options, describe};
use super::destination::BoxFuture;
use super::{Admission, AttemptResult, Attempted, Batch, Payload, Prepared, Refusal, Sink, Sinks};
use crate::model::StoredEvent;

/// PutEvents limits: entries a call, and bytes a call (Source, DetailType, Detail and
/// 14 for the Time of each entry, as AWS counts them).
const MAX_ENTRIES: usize = 10;
const MAX_CALL_BYTES: usize = 256 * 1024;
const TIME_BYTES: usize = 14;

/// An Amazon EventBridge event bus (PutEvents, 10 events a call): `Source` is
/// `reelay.<topic>`, `DetailType` the event name, `Detail` the event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct EventBridgeDestination {
    /// The bus's name or ARN (`default` is the account's default bus).
    #[serde(rename = "eventBusName")]
    #[schema(min_length = 1, max_length = 1600, pattern = "^\\S+$")]
    pub event_bus_name: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub aws: AwsOptions,
}

impl Sink for EventBridgeDestination {
    fn validate(&self) -> Result<(), Refusal> {
        let name = self.event_bus_name.trim();
        if name.is_empty() || name.len() > 1600 || name.chars().any(char::is_whitespace) {
            return Err(Refusal::invalid(
                Some("eventBusName"),
                format!("{:?} is not an event bus name or ARN", self.event_bus_name),
            ));
        }
        Ok(())
    }

    fn admit<'a>(&'a self, admission: &'a Admission<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(admit_options(&self.aws, admission))
    }

    fn prepare(&self, sinks: &Arc<Sinks>, account: &str) -> Result<Arc<dyn Prepared>, String> {
        Ok(Arc::new(PreparedEventBridge {
            bus: self.event_bus_name.clone(),
            options: self.aws.clone(),
            account: account.to_owned(),
            timeout: sinks.config().delivery_timeout,
            aws: sinks.aws().clone(),
            client: tokio::sync::OnceCell::new(),
        }))
    }
}

/// The bus's client, made at the first use (loading the AWS configuration is async).
struct PreparedEventBridge {
    bus: String,
    options: AwsOptions,
    account: String,
    timeout: Duration,
    aws: Arc<AwsSinks>,
    client: tokio::sync::OnceCell<aws_sdk_eventbridge::Client>,
}

impl PreparedEventBridge {
    async fn client(&self) -> &aws_sdk_eventbridge::Client {
        self.client
            .get_or_init(|| async {
                let config = self.aws.config(&self.options, &self.account).await;
                aws_sdk_eventbridge::Client::new(&config)
            })
            .await
    }

    /// One PutEvents call; one outcome per entry.
    async fn put_events(&self, entries: Vec<PutEventsRequestEntry>) -> Vec<Result<(), Failure>> {
        let count = entries.len();
        metrics::counter!("reelay_sink_calls_total", "sink" => "eventbridge").increment(1);
        let call = self
            .client()
            .await
            .put_events()
            .set_entries(Some(entries))
            .send();
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => vec![Err(Failure::transient("timed out")); count],
            Ok(Err(error)) => vec![Err(describe(error)); count],
            // The answer has one entry per request entry, in order.
            Ok(Ok(output)) => (0..count)
                .map(|index| match output.entries().get(index) {
                    Some(entry) => match entry.error_code() {
                        Some(code) => Err(Failure::entry(
                            code,
                            entry.error_message().unwrap_or_default(),
                        )),
                        None => Ok(()),
                    },
                    None if output.failed_entry_count() > 0 => Err(Failure::transient(
                        "EventBridge did not say whether this entry was put",
                    )),
                    None => Ok(()),
                })
                .collect(),
        }
    }
}

/// The `Source` of an event's entry.
pub fn source(event: &StoredEvent) -> String {
    format!("reelay.{}", event.topic)
}

/// How many bytes of a call an entry counts for.
fn entry_size(event: &StoredEvent, detail: &str) -> usize {
    source(event).len() + event.name.len() + detail.len() + TIME_BYTES
}

/// Cuts entries of these sizes into runs that fit one call each; an entry bigger than a
/// call is a run of its own (refused before any call).
fn runs(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, size) in sizes.iter().enumerate() {
        if index > start && (index - start == MAX_ENTRIES || bytes + size > MAX_CALL_BYTES) {
            ranges.push(start..index);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        ranges.push(start..sizes.len());
    }
    ranges
}

impl Prepared for PreparedEventBridge {
    fn batch_size(&self) -> usize {
        MAX_ENTRIES
    }

    /// The bus exists and these credentials may describe it.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let described = self
                .client()
                .await
                .describe_event_bus()
                .name(&self.bus)
                .send();
            match tokio::time::timeout(self.timeout, described).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(describe(error).message()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        })
    }

    fn send<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Vec<Attempted>> {
        Box::pin(async move {
            let started = Instant::now();
            let details: Vec<String> = batch
                .events
                .iter()
                .enumerate()
                .map(|(index, event)| {
                    let payload = Payload::new(batch.format, event, batch.trace(index));
                    String::from_utf8_lossy(&payload.body).into_owned()
                })
                .collect();
            let sizes: Vec<usize> = batch
                .events
                .iter()
                .zip(&details)
                .map(|(event, detail)| entry_size(event, detail))
                .collect();
            let mut results: Vec<AttemptResult> = Vec::with_capacity(batch.events.len());
            for run in runs(&sizes) {
                if run.len() == 1 && sizes[run.start] > MAX_CALL_BYTES {
                    results.push(AttemptResult::Rejected {
                        error: format!(
                            "the entry is {} bytes; EventBridge takes at most 256 KiB",
                            sizes[run.start]
                        ),
                    });
                    continue;
                }
                let entries = run
                    .clone()
                    .map(|index| {
                        let event = batch.events[index];
                        PutEventsRequestEntry::builder()
                            .event_bus_name(&self.bus)
                            .source(source(event))
                            .detail_type(&event.name)
                            .detail(&details[index])
                            .time(DateTime::from_millis(event.occurred_at))
                            .build()
                    })
                    .collect();
                for outcome in self.put_events(entries).await {
                    results.push(match outcome {
                        Ok(()) => AttemptResult::Delivered,
                        Err(failure) => failure.into_result(self.aws.slow_retry()),
                    });
                }
            }
            results
                .into_iter()
                .map(|result| Attempted {
                    result,
                    status: None,
                    latency: started.elapsed(),
                    response: None,
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_take_ten_entries_and_256_kib_at_most() {
        let sizes = vec![100; 25];
        assert_eq!(runs(&sizes), vec![0..10, 10..20, 20..25]);
        let big = 100 * 1024;
        assert_eq!(runs(&[big, big, big, 10]), vec![0..2, 2..4]);
        assert_eq!(runs(&[300 * 1024, 10]), vec![0..1, 1..2]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn a_blank_bus_is_refused() {
        let destination = |name: &str| EventBridgeDestination {
            event_bus_name: name.into(),
            aws: AwsOptions::default(),
        };
        assert!(destination("default").validate().is_ok());
        let refused = destination(" ").validate().unwrap_err();
        assert_eq!(refused.field, Some("eventBusName"));
    }
}
