//! Amazon SNS, SQS and Kinesis sinks, through the official AWS SDK for Rust.
//!
//! Credentials, region and endpoint come from the standard AWS chain (`AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KINESIS`, profiles, roles…),
//! optionally overridden per destination ([`AwsOptions`]), so one build talks to AWS,
//! LocalStack or moto. Each sink sends a batch in as few calls as the service allows
//! (PutRecords: 500 records and 5 MiB; PublishBatch and SendMessageBatch: 10 entries and
//! 256 KiB) and reports one [`Attempted`] per event, so a partial failure retries only
//! the events that failed.
//!
//! A destination's own `endpointUrl` goes through the private-address guard
//! ([`super::guard::aws`]) at every connection, unless private destinations are allowed;
//! the server's own endpoints (the environment's) are the operator's and are not
//! guarded. A destination's `roleArn` is assumed with the account's ExternalId
//! ([`super::aws_policy::external_id`]). What a tenant sees of a failure is the service's
//! error code and message, or a short description, never the connector's internals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::primitives::Blob;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::aws_policy::external_id;
use super::destination::BoxFuture;
use super::guard::{check_destination, refusal_in};
use super::{Admission, AttemptResult, Attempted, Batch, Payload, Prepared, Refusal, Sink, Sinks};
use crate::model::{StoredEvent, TraceContext};

/// The most a destination check at creation may take, the SDK's own retries included
/// (less if the delivery timeout is shorter).
pub const CHECK_TIMEOUT: Duration = super::destination::CHECK_TIMEOUT;

/// Overrides of the standard AWS configuration for one SNS, SQS or Kinesis destination;
/// what is not set comes from the environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// profiles, instance roles…). The admin token may give any; an account key only those
/// the operator allows (`--allow-aws-region`, `--allow-aws-endpoint`,
/// `--allow-role-arn`), else `422 destination_not_allowed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z][a-z0-9-]{1,31}$")]
    pub region: Option<String>,
    /// E.g. a LocalStack or moto server; held to the private-address rule like a
    /// webhook URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// A role to assume (STS) for this destination, with ExternalId
    /// `reelay:<account>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^arn:[!-~]*:role/[!-~]*$", max_length = 2048)]
    pub role_arn: Option<String>,
}

/// An Amazon SNS topic (PublishBatch, 10 events a call).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct SnsDestination {
    #[serde(rename = "topicArn")]
    pub topic_arn: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub aws: AwsOptions,
}

/// An Amazon Kinesis data stream (PutRecords, up to 500 events a call); the partition
/// key is the event's entity key, else its account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct KinesisDestination {
    #[serde(rename = "streamName")]
    pub stream_name: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub aws: AwsOptions,
}

/// An Amazon SQS queue (SendMessageBatch, 10 events a call).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct SqsDestination {
    #[serde(rename = "queueUrl")]
    pub queue_url: String,
    #[serde(flatten)]
    #[schema(inline)]
    pub aws: AwsOptions,
}

/// The three AWS destinations share their checks and client: each says only which
/// resource it is, by which member.
trait AwsDestination: Send + Sync {
    fn resource(&self) -> AwsResource;
    fn options(&self) -> &AwsOptions;
    /// The member that names the resource, and its value.
    fn name(&self) -> (&'static str, &str);
}

impl AwsDestination for SnsDestination {
    fn resource(&self) -> AwsResource {
        AwsResource::SnsTopic {
            arn: self.topic_arn.clone(),
        }
    }
    fn options(&self) -> &AwsOptions {
        &self.aws
    }
    fn name(&self) -> (&'static str, &str) {
        ("topicArn", &self.topic_arn)
    }
}

impl AwsDestination for KinesisDestination {
    fn resource(&self) -> AwsResource {
        AwsResource::KinesisStream {
            name: self.stream_name.clone(),
        }
    }
    fn options(&self) -> &AwsOptions {
        &self.aws
    }
    fn name(&self) -> (&'static str, &str) {
        ("streamName", &self.stream_name)
    }
}

impl AwsDestination for SqsDestination {
    fn resource(&self) -> AwsResource {
        AwsResource::SqsQueue {
            url: self.queue_url.clone(),
        }
    }
    fn options(&self) -> &AwsOptions {
        &self.aws
    }
    fn name(&self) -> (&'static str, &str) {
        ("queueUrl", &self.queue_url)
    }
}

impl<T: AwsDestination> Sink for T {
    fn validate(&self) -> Result<(), Refusal> {
        let (member, name) = self.name();
        if name.trim().is_empty() {
            return Err(Refusal::invalid(
                Some(member),
                format!("the destination's {member} must not be empty"),
            ));
        }
        Ok(())
    }

    fn admit<'a>(&'a self, admission: &'a Admission<'a>) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(admit_options(self.options(), admission))
    }

    fn prepare(&self, sinks: &Arc<Sinks>, account: &str) -> Result<Arc<dyn Prepared>, String> {
        Ok(Arc::new(PreparedAws {
            resource: self.resource(),
            options: self.options().clone(),
            account: account.to_owned(),
            timeout: sinks.config().delivery_timeout,
            sinks: sinks.aws().clone(),
            client: tokio::sync::OnceCell::new(),
        }))
    }
}

/// The operator's rules on an AWS destination's overrides (the allowlists for account
/// keys, the private-address rule for its own endpoint): every AWS sink's `admit`.
pub(crate) async fn admit_options(
    options: &AwsOptions,
    admission: &Admission<'_>,
) -> Result<(), Refusal> {
    let config = admission.sinks.config();
    config
        .aws_policy
        .check(options, admission.by_admin)
        .map_err(|error| Refusal {
            code: error.code(),
            field: Some(error.field()),
            message: error.to_string(),
        })?;
    // Before any request: the healthcheck would otherwise connect to it.
    if let Some(endpoint) = &options.endpoint_url {
        check_destination(endpoint, config.allow_private)
            .await
            .map_err(|error| Refusal {
                code: "destination_refused",
                field: Some("endpointUrl"),
                message: error.to_string(),
            })?;
    }
    Ok(())
}

/// An AWS destination's client, made at the first delivery (loading the AWS
/// configuration is async).
struct PreparedAws {
    resource: AwsResource,
    options: AwsOptions,
    account: String,
    timeout: Duration,
    sinks: Arc<AwsSinks>,
    client: tokio::sync::OnceCell<AwsTarget>,
}

impl PreparedAws {
    async fn client(&self) -> &AwsTarget {
        self.client
            .get_or_init(|| {
                self.sinks.target(
                    self.resource.clone(),
                    &self.options,
                    &self.account,
                    self.timeout,
                )
            })
            .await
    }
}

impl Prepared for PreparedAws {
    fn batch_size(&self) -> usize {
        self.resource.max_batch()
    }

    fn ordered(&self) -> bool {
        self.resource.ordered()
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.client().await.check().await })
    }

    fn send<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Vec<Attempted>> {
        Box::pin(async move {
            let client = self.client().await;
            let payloads: Vec<Payload> = batch
                .events
                .iter()
                .enumerate()
                .map(|(index, event)| Payload::new(batch.format, event, batch.trace(index)))
                .collect();
            let outgoing: Vec<Outgoing> = batch
                .events
                .iter()
                .zip(&payloads)
                .enumerate()
                .map(|(index, (event, payload))| Outgoing {
                    event,
                    body: &payload.body,
                    trace: batch.trace(index),
                })
                .collect();
            client.send(&outgoing).await
        })
    }
}

/// What an AWS failure means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsFailureKind {
    /// Throttling, timeouts, no answer, the service's own errors (5xx): retried on the
    /// schedule.
    Transient,
    /// The resource is missing, or these credentials may not use it: retried on the
    /// slow pace (`--slow-retry`) until someone fixes it.
    Misconfigured,
}

/// Classifies an AWS failure from the service's error code and the HTTP status of its
/// answer (both absent when it did not answer: a timeout, a connection failure).
pub fn classify(code: Option<&str>, status: Option<u16>) -> AwsFailureKind {
    use AwsFailureKind::{Misconfigured, Transient};
    if let Some(code) = code {
        let throttled = [
            "Throttl",
            "ProvisionedThroughputExceeded",
            "RequestLimitExceeded",
            "TooManyRequests",
            "SlowDown",
            "KMSThrottling",
        ];
        if throttled.iter().any(|part| code.contains(part)) {
            return Transient;
        }
        let misconfigured = [
            "AccessDenied",
            "AccessDeniedException",
            "AuthorizationError",
            "AuthorizationErrorException",
            "NotFound",
            "NotFoundException",
            "ResourceNotFoundException",
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
            "InvalidClientTokenId",
            "UnrecognizedClientException",
            "SignatureDoesNotMatch",
            "KMSAccessDeniedException",
            "KMSNotFoundException",
            "KMSDisabledException",
            "KMSInvalidStateException",
            "KMS.AccessDeniedException",
            "KMS.NotFoundException",
            "KMS.DisabledException",
        ];
        if misconfigured.contains(&code) {
            return Misconfigured;
        }
    }
    match status {
        Some(403 | 404) => Misconfigured,
        _ => Transient,
    }
}

/// One failed call or entry: what the tenant reads, and what it means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    message: String,
    kind: AwsFailureKind,
}

impl Failure {
    /// What the tenant reads.
    pub(crate) fn message(&self) -> String {
        self.message.clone()
    }

    pub(crate) fn transient(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: AwsFailureKind::Transient,
        }
    }

    fn misconfigured(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: AwsFailureKind::Misconfigured,
        }
    }

    /// A failed entry of a batch answer, by its code.
    pub(crate) fn entry(code: &str, message: &str) -> Failure {
        Failure {
            message: format!("{code}: {message}"),
            kind: classify(Some(code), None),
        }
    }

    pub(crate) fn into_result(self, slow_retry: Duration) -> AttemptResult {
        match self.kind {
            AwsFailureKind::Transient => AttemptResult::Failed {
                error: self.message,
                retry_after: None,
            },
            AwsFailureKind::Misconfigured => AttemptResult::Failed {
                error: format!(
                    "{} (the destination is missing or refuses these credentials: retried at most every {slow_retry:?} until fixed)",
                    self.message,
                ),
                retry_after: Some(slow_retry),
            },
        }
    }
}

/// PutRecords limits.
const KINESIS_MAX_RECORDS: usize = 500;
const KINESIS_MAX_CALL_BYTES: usize = 5 * 1024 * 1024;
const KINESIS_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// PublishBatch and SendMessageBatch limits (SQS allows more per message since 2025; the
/// smaller common limit keeps one rule for both).
const MESSAGE_BATCH_ENTRIES: usize = 10;
const MESSAGE_BATCH_BYTES: usize = 256 * 1024;
/// Kinesis partition keys, FIFO group and deduplication ids have length limits; a longer
/// value is replaced by its SHA-256 (hex), which keeps it stable.
const KINESIS_MAX_PARTITION_KEY: usize = 256;
const FIFO_MAX_ID: usize = 128;

/// Where an AWS destination delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsResource {
    SnsTopic { arn: String },
    SqsQueue { url: String },
    KinesisStream { name: String },
}

impl AwsResource {
    /// Whether events to it must go one call at a time to keep their order: a Kinesis
    /// shard and a FIFO group keep the order in which calls arrive.
    pub fn ordered(&self) -> bool {
        matches!(self, AwsResource::KinesisStream { .. }) || self.is_fifo()
    }

    /// How many events one call can carry.
    pub fn max_batch(&self) -> usize {
        match self {
            AwsResource::KinesisStream { .. } => KINESIS_MAX_RECORDS,
            _ => MESSAGE_BATCH_ENTRIES,
        }
    }

    fn is_fifo(&self) -> bool {
        match self {
            AwsResource::SnsTopic { arn } => arn.ends_with(".fifo"),
            AwsResource::SqsQueue { url } => url.ends_with(".fifo"),
            AwsResource::KinesisStream { .. } => false,
        }
    }
}

/// One event on its way out: the event and the bytes to send (its delivery format).
pub struct Outgoing<'a> {
    pub event: &'a StoredEvent,
    pub body: &'a Bytes,
    /// Sent as the `traceparent` and `tracestate` message attributes (SNS, SQS). A
    /// Kinesis record is the body alone: it carries the trace only inside a CloudEvent.
    pub trace: Option<&'a TraceContext>,
}

/// Shared by every AWS destination: the SDK configurations, loaded once per distinct
/// set of overrides and account ExternalId (loading walks the credential chain).
pub struct AwsSinks {
    configs: tokio::sync::Mutex<HashMap<ConfigKey, SdkConfig>>,
    /// Whether a destination's own endpoint may be on a private address.
    allow_private: bool,
    /// The guarded HTTP client (one pool) for destinations with their own endpoint.
    guarded: aws_smithy_runtime_api::client::http::SharedHttpClient,
    /// The least wait before retrying a misconfigured destination.
    slow_retry: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConfigKey {
    options: AwsOptions,
    /// With a role only: the ExternalId it is assumed with.
    external_id: Option<String>,
}

/// A client for one destination, ready to send.
#[derive(Clone)]
pub struct AwsTarget {
    resource: AwsResource,
    client: Client,
    timeout: Duration,
    slow_retry: Duration,
}

#[derive(Clone)]
enum Client {
    Sns(aws_sdk_sns::Client),
    Sqs(aws_sdk_sqs::Client),
    Kinesis(aws_sdk_kinesis::Client),
}

impl AwsSinks {
    pub fn new(allow_private: bool) -> AwsSinks {
        AwsSinks {
            configs: tokio::sync::Mutex::new(HashMap::new()),
            allow_private,
            guarded: super::guard::aws::http_client(),
            slow_retry: super::DEFAULT_SLOW_RETRY,
        }
    }

    /// The same, with another least wait before retrying a misconfigured destination.
    pub fn with_slow_retry(mut self, slow_retry: Duration) -> AwsSinks {
        self.slow_retry = slow_retry;
        self
    }

    /// A client for `resource` of `account`, with the standard configuration and
    /// `options` on top.
    pub async fn target(
        &self,
        resource: AwsResource,
        options: &AwsOptions,
        account: &str,
        timeout: Duration,
    ) -> AwsTarget {
        let config = self.config(options, account).await;
        let client = match resource {
            AwsResource::SnsTopic { .. } => Client::Sns(aws_sdk_sns::Client::new(&config)),
            AwsResource::SqsQueue { .. } => Client::Sqs(aws_sdk_sqs::Client::new(&config)),
            AwsResource::KinesisStream { .. } => {
                Client::Kinesis(aws_sdk_kinesis::Client::new(&config))
            }
        };
        AwsTarget {
            resource,
            client,
            timeout,
            slow_retry: self.slow_retry,
        }
    }

    /// The least wait before retrying a misconfigured destination.
    pub fn slow_retry(&self) -> Duration {
        self.slow_retry
    }

    /// The SDK configuration of a destination with `options` for `account` (loaded once
    /// per distinct set), for any AWS service's client.
    pub(crate) async fn config(&self, options: &AwsOptions, account: &str) -> SdkConfig {
        let key = ConfigKey {
            options: options.clone(),
            external_id: options.role_arn.as_ref().map(|_| external_id(account)),
        };
        let mut configs = self.configs.lock().await;
        if let Some(config) = configs.get(&key) {
            return config.clone();
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &options.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        // The credential chain was built by the load with the standard client (it may
        // need the instance metadata service, a link-local address); the calls to the
        // destination's own endpoint, STS included, go through the guard.
        let mut config = loader.load().await;
        if options.endpoint_url.is_some() && !self.allow_private {
            config = config
                .into_builder()
                .http_client(self.guarded.clone())
                .build();
        }
        if let (Some(role), Some(external_id)) = (&options.role_arn, &key.external_id) {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name("reelay")
                .external_id(external_id)
                .configure(&config)
                .build()
                .await;
            config = config
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
        }
        configs.insert(key, config.clone());
        config
    }
}

impl AwsTarget {
    pub fn resource(&self) -> &AwsResource {
        &self.resource
    }

    /// Checks that the destination exists and can be reached with these credentials,
    /// within the target's timeout (the SDK's retries included).
    pub async fn check(&self) -> Result<(), String> {
        let check = async {
            match (&self.client, &self.resource) {
                (Client::Sns(client), AwsResource::SnsTopic { arn }) => client
                    .get_topic_attributes()
                    .topic_arn(arn)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|error| describe(error).message),
                (Client::Sqs(client), AwsResource::SqsQueue { url }) => client
                    .get_queue_attributes()
                    .queue_url(url)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|error| describe(error).message),
                (Client::Kinesis(client), AwsResource::KinesisStream { name }) => client
                    .describe_stream_summary()
                    .stream_name(name)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|error| describe(error).message),
                _ => Err("client and destination do not match".to_owned()),
            }
        };
        match tokio::time::timeout(self.timeout, check).await {
            Ok(checked) => checked,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Sends `events` in as few calls as the service allows; one result per event, in
    /// order.
    pub async fn send(&self, events: &[Outgoing<'_>]) -> Vec<Attempted> {
        let started = Instant::now();
        let mut results: Vec<Option<Result<(), Failure>>> = vec![None; events.len()];
        for range in self.batches(events) {
            let batch = &events[range.clone()];
            let sent = tokio::time::timeout(self.timeout, self.send_batch(batch)).await;
            let outcomes = match sent {
                Ok(outcomes) => outcomes,
                Err(_) => vec![Err(Failure::transient("timed out")); batch.len()],
            };
            for (slot, outcome) in results[range].iter_mut().zip(outcomes) {
                *slot = Some(outcome);
            }
        }
        let latency = started.elapsed();
        results
            .into_iter()
            .map(|outcome| {
                let result = match outcome.unwrap_or_else(|| Err(Failure::transient("not sent"))) {
                    Ok(()) => AttemptResult::Delivered,
                    Err(failure) => failure.into_result(self.slow_retry),
                };
                Attempted {
                    result,
                    status: None,
                    latency,
                    response: None,
                }
            })
            .collect()
    }

    /// Cuts `events` into runs that fit one call each.
    fn batches(&self, events: &[Outgoing<'_>]) -> Vec<std::ops::Range<usize>> {
        let (max_entries, max_bytes) = match self.resource {
            AwsResource::KinesisStream { .. } => (KINESIS_MAX_RECORDS, KINESIS_MAX_CALL_BYTES),
            _ => (MESSAGE_BATCH_ENTRIES, MESSAGE_BATCH_BYTES),
        };
        let mut ranges = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (index, outgoing) in events.iter().enumerate() {
            let size = outgoing.body.len() + partition_key(outgoing.event).len();
            if index > start && (index - start == max_entries || bytes + size > max_bytes) {
                ranges.push(start..index);
                (start, bytes) = (index, 0);
            }
            bytes += size;
        }
        if start < events.len() {
            ranges.push(start..events.len());
        }
        ranges
    }

    async fn send_batch(&self, batch: &[Outgoing<'_>]) -> Vec<Result<(), Failure>> {
        match (&self.client, &self.resource) {
            (Client::Kinesis(client), AwsResource::KinesisStream { name }) => {
                put_records(client, name, batch).await
            }
            (Client::Sns(client), AwsResource::SnsTopic { arn }) => {
                publish_batch(client, arn, self.resource.is_fifo(), batch).await
            }
            (Client::Sqs(client), AwsResource::SqsQueue { url }) => {
                send_message_batch(client, url, self.resource.is_fifo(), batch).await
            }
            _ => vec![Err(Failure::transient("client and destination do not match")); batch.len()],
        }
    }
}

async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    batch: &[Outgoing<'_>],
) -> Vec<Result<(), Failure>> {
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let mut outcomes = vec![Ok(()); batch.len()];
    // Records the service would refuse whole are failed here, so the rest still goes.
    let mut sent = Vec::with_capacity(batch.len());
    let mut entries = Vec::with_capacity(batch.len());
    for (index, outgoing) in batch.iter().enumerate() {
        if outgoing.body.len() > KINESIS_MAX_RECORD_BYTES {
            outcomes[index] = Err(Failure::transient(format!(
                "the record is {} bytes; Kinesis takes at most 1 MiB",
                outgoing.body.len()
            )));
            continue;
        }
        let entry = PutRecordsRequestEntry::builder()
            .data(Blob::new(outgoing.body.to_vec()))
            .partition_key(partition_key(outgoing.event))
            .build();
        match entry {
            Ok(entry) => {
                entries.push(entry);
                sent.push(index);
            }
            Err(error) => outcomes[index] = Err(Failure::transient(error.to_string())),
        }
    }
    if entries.is_empty() {
        return outcomes;
    }
    metrics::counter!("reelay_sink_calls_total", "sink" => "kinesis").increment(1);
    match client
        .put_records()
        .stream_name(stream)
        .set_records(Some(entries))
        .send()
        .await
    {
        Ok(output) => {
            // The answer has one entry per record, in request order.
            for (index, record) in sent.iter().zip(output.records()) {
                if let Some(code) = record.error_code() {
                    outcomes[*index] = Err(Failure::entry(
                        code,
                        record.error_message().unwrap_or_default(),
                    ));
                }
            }
        }
        Err(error) => {
            let error = describe(error);
            for index in sent {
                outcomes[index] = Err(error.clone());
            }
        }
    }
    outcomes
}

/// One SNS or SQS message, before it takes the service's own entry type: both take the
/// same id, body, attributes and FIFO ids.
struct Message {
    /// The event's index in the batch: a batch answer names failed entries by it.
    id: String,
    body: String,
    attributes: Vec<(&'static str, &'static str, String)>,
    /// FIFO topics and queues: the group (entity key, else account) and deduplication id.
    fifo: Option<(String, String)>,
}

fn messages(batch: &[Outgoing<'_>], fifo: bool) -> impl Iterator<Item = Message> {
    batch.iter().enumerate().map(move |(index, outgoing)| {
        let event = outgoing.event;
        Message {
            id: index.to_string(),
            body: String::from_utf8_lossy(outgoing.body).into_owned(),
            attributes: message_attributes(event, outgoing.trace),
            fifo: fifo.then(|| (fifo_id(group_of(event)), fifo_id(&event.id))),
        }
    })
}

async fn publish_batch(
    client: &aws_sdk_sns::Client,
    topic_arn: &str,
    fifo: bool,
    batch: &[Outgoing<'_>],
) -> Vec<Result<(), Failure>> {
    use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
    let entry = |message: Message| {
        let mut entry = PublishBatchRequestEntry::builder()
            .id(message.id)
            .message(message.body);
        for (name, data_type, value) in message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()?;
            entry = entry.message_attributes(name, value);
        }
        if let Some((group, dedup)) = message.fifo {
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        entry.build()
    };
    let (mut outcomes, entries) = entries(messages(batch, fifo).map(entry));
    if entries.is_empty() {
        return outcomes;
    }
    metrics::counter!("reelay_sink_calls_total", "sink" => "sns").increment(1);
    match client
        .publish_batch()
        .topic_arn(topic_arn)
        .set_publish_batch_request_entries(Some(entries))
        .send()
        .await
    {
        Ok(output) => mark_failed_entries(
            &mut outcomes,
            output.failed().iter().map(|failed| {
                let message = failed.message().unwrap_or_default();
                (failed.id(), failed.code(), message)
            }),
        ),
        Err(error) => fail_the_rest(&mut outcomes, describe(error)),
    }
    outcomes
}

async fn send_message_batch(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    fifo: bool,
    batch: &[Outgoing<'_>],
) -> Vec<Result<(), Failure>> {
    use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
    let entry = |message: Message| {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(message.id)
            .message_body(message.body);
        for (name, data_type, value) in message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()?;
            entry = entry.message_attributes(name, value);
        }
        if let Some((group, dedup)) = message.fifo {
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        entry.build()
    };
    let (mut outcomes, entries) = entries(messages(batch, fifo).map(entry));
    if entries.is_empty() {
        return outcomes;
    }
    metrics::counter!("reelay_sink_calls_total", "sink" => "sqs").increment(1);
    match client
        .send_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(output) => mark_failed_entries(
            &mut outcomes,
            output.failed().iter().map(|failed| {
                let message = failed.message().unwrap_or_default();
                (failed.id(), failed.code(), message)
            }),
        ),
        Err(error) => fail_the_rest(&mut outcomes, describe(error)),
    }
    outcomes
}

/// The entries that could be built, and one outcome per event: an entry the SDK refused
/// to build fails its event here and is not sent.
fn entries<T, E: std::fmt::Display>(
    built: impl Iterator<Item = Result<T, E>>,
) -> (Vec<Result<(), Failure>>, Vec<T>) {
    let mut outcomes = Vec::new();
    let mut entries = Vec::new();
    for entry in built {
        match entry {
            Ok(entry) => {
                entries.push(entry);
                outcomes.push(Ok(()));
            }
            Err(error) => outcomes.push(Err(Failure::transient(error.to_string()))),
        }
    }
    (outcomes, entries)
}

/// Marks the entries a batch answer names as failed (`(id, code, message)`; the id is
/// the event's index in the batch).
fn mark_failed_entries<'a>(
    outcomes: &mut [Result<(), Failure>],
    failed: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) {
    for (id, code, message) in failed {
        if let Some(outcome) = id.parse::<usize>().ok().and_then(|i| outcomes.get_mut(i)) {
            *outcome = Err(Failure::entry(code, message));
        }
    }
}

/// The whole call failed: every entry not already refused fails with its error.
fn fail_the_rest(outcomes: &mut [Result<(), Failure>], error: Failure) {
    for outcome in outcomes.iter_mut().filter(|outcome| outcome.is_ok()) {
        *outcome = Err(error.clone());
    }
}

/// The attributes SNS filter policies and SQS consumers select on, and the trace
/// context the delivery continues (W3C names, as OpenTelemetry's SQS and SNS
/// propagation reads them).
fn message_attributes(
    event: &StoredEvent,
    trace: Option<&TraceContext>,
) -> Vec<(&'static str, &'static str, String)> {
    let mut attributes = vec![
        ("eventName", "String", event.name.clone()),
        ("topic", "String", event.topic.clone()),
        ("tenant", "String", event.account.clone()),
        ("reelaySequence", "Number", event.seq.to_string()),
    ];
    if let Some(key) = &event.entity_key {
        attributes.push(("entityKey", "String", key.clone()));
    }
    if let Some(trace) = trace {
        attributes.push(("traceparent", "String", trace.traceparent.clone()));
        if let Some(state) = &trace.tracestate {
            attributes.push(("tracestate", "String", state.clone()));
        }
    }
    attributes
}

/// One entity's events share a Kinesis shard (and a FIFO group), so they stay in order.
fn partition_key(event: &StoredEvent) -> String {
    let key = group_of(event);
    if key.chars().count() <= KINESIS_MAX_PARTITION_KEY {
        key.to_owned()
    } else {
        hex_sha256(key)
    }
}

fn group_of(event: &StoredEvent) -> &str {
    event.entity_key.as_deref().unwrap_or(&event.account)
}

/// A FIFO group or deduplication id: up to 128 printable ASCII characters.
fn fifo_id(value: &str) -> String {
    let valid = |c: char| c.is_ascii_graphic();
    if value.len() <= FIFO_MAX_ID && !value.is_empty() && value.chars().all(valid) {
        value.to_owned()
    } else {
        hex_sha256(value)
    }
}

fn hex_sha256(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// An SDK error as one line a tenant may read: the service's code and message when it
/// answered, else what kind of failure it was, without the connector's internals or
/// the addresses it tried (those go to the server's log); classified by [`classify`].
pub(crate) fn describe<E>(error: aws_sdk_kinesis::error::SdkError<E, HttpResponse>) -> Failure
where
    E: std::error::Error + aws_sdk_kinesis::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    use aws_sdk_kinesis::error::SdkError;
    if let Some(service) = error.as_service_error() {
        let status = error
            .raw_response()
            .map(|response| response.status().as_u16());
        return Failure {
            message: format!(
                "{}: {}",
                service.code().unwrap_or("error"),
                service.message().unwrap_or_default()
            ),
            kind: classify(service.code(), status),
        };
    }
    let context = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
    tracing::warn!(error = %context, "AWS call failed without an answer from the service");
    // The private-address guard and the credentials are the operator's or the
    // destination's settings: no retry soon changes them.
    if let Some(refused) = refusal_in(&error) {
        return Failure::misconfigured(refused.to_string());
    }
    if let Some(assume_role) = assume_role_error(&error) {
        return Failure::misconfigured(assume_role);
    }
    Failure::transient(match &error {
        SdkError::TimeoutError(_) => "timed out",
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            "timed out connecting to the endpoint"
        }
        SdkError::DispatchFailure(failure) if failure.is_io() => {
            "could not connect to the endpoint"
        }
        SdkError::DispatchFailure(_) => "could not reach the endpoint",
        SdkError::ResponseError(_) => "the endpoint's answer is not an AWS answer",
        _ => "the request could not be made (the server's log says why)",
    })
}

/// When the credentials of an assumed role could not be had: STS's own code and
/// message, if it answered.
fn assume_role_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    let mut cause = Some(error);
    let mut credentials = false;
    while let Some(error) = cause {
        credentials |= error.is::<CredentialsError>();
        if let Some(sts) = error.downcast_ref::<aws_sdk_sts::error::SdkError<AssumeRoleError>>()
            && let Some(service) = sts.as_service_error()
        {
            use aws_sdk_sts::error::ProvideErrorMetadata;
            return Some(format!(
                "the role could not be assumed: {}: {}",
                service.code().unwrap_or("error"),
                service.message().unwrap_or_default()
            ));
        }
        cause = error.source();
    }
    credentials.then(|| "the server could not get AWS credentials for this destination".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Document;

    fn event(seq: i64, entity_key: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq,
            account: "acme".into(),
            id: format!("e-{seq}"),
            name: "asset-created".into(),
            topic: "asset-operations".into(),
            entity_key: entity_key.map(str::to_owned),
            occurred_at: 0,
            received_at: 0,
            body: Document::from("{}"),
            trace: None,
        }
    }

    #[test]
    fn partition_keys_keep_one_entity_on_one_shard() {
        assert_eq!(partition_key(&event(1, Some("897874"))), "897874");
        assert_eq!(partition_key(&event(2, None)), "acme");
        let long = "x".repeat(300);
        let key = partition_key(&event(3, Some(&long)));
        assert_eq!(key.len(), 64);
        assert_eq!(key, partition_key(&event(4, Some(&long))));
    }

    #[test]
    fn aws_failures_are_retried_fast_unless_the_destination_is_missing_or_denied() {
        use AwsFailureKind::{Misconfigured, Transient};
        for (code, status, expected) in [
            (Some("ThrottlingException"), Some(400), Transient),
            (Some("Throttling"), Some(400), Transient),
            (
                Some("ProvisionedThroughputExceededException"),
                None,
                Transient,
            ),
            (Some("RequestLimitExceeded"), Some(400), Transient),
            (Some("InternalFailure"), Some(500), Transient),
            (Some("ServiceUnavailable"), Some(503), Transient),
            (None, None, Transient),
            (None, Some(502), Transient),
            (Some("AccessDenied"), Some(403), Misconfigured),
            (Some("AccessDeniedException"), Some(400), Misconfigured),
            (Some("AuthorizationError"), Some(403), Misconfigured),
            (Some("NotFound"), Some(404), Misconfigured),
            (Some("ResourceNotFoundException"), Some(400), Misconfigured),
            (
                Some("AWS.SimpleQueueService.NonExistentQueue"),
                Some(400),
                Misconfigured,
            ),
            (Some("KMSAccessDeniedException"), None, Misconfigured),
            (None, Some(403), Misconfigured),
            (Some("SomethingNew"), Some(404), Misconfigured),
            (Some("InvalidParameterValue"), Some(400), Transient),
        ] {
            assert_eq!(classify(code, status), expected, "{code:?} {status:?}");
        }
        let pace = Duration::from_secs(600);
        let slow = Failure::entry("AccessDenied", "no").into_result(pace);
        assert!(matches!(
            slow,
            AttemptResult::Failed { retry_after: Some(after), .. } if after == pace
        ));
        let fast = Failure::entry("ThrottlingException", "slow down").into_result(pace);
        assert!(matches!(
            fast,
            AttemptResult::Failed {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn fifo_ids_are_printable_and_bounded() {
        assert_eq!(fifo_id("e-1"), "e-1");
        assert_eq!(fifo_id(&"y".repeat(129)).len(), 64);
        assert_eq!(fifo_id("with space").len(), 64);
    }

    #[tokio::test]
    async fn batches_respect_the_count_and_size_limits() {
        let sinks = AwsSinks::new(false);
        let options = AwsOptions {
            region: Some("us-east-1".into()),
            ..AwsOptions::default()
        };
        let events: Vec<StoredEvent> = (0..25).map(|seq| event(seq, None)).collect();
        let small = Bytes::from_static(b"{}");
        let big = Bytes::from(vec![b' '; 100 * 1024]);
        let target = sinks
            .target(
                AwsResource::SqsQueue { url: "q".into() },
                &options,
                "acme",
                Duration::from_secs(1),
            )
            .await;
        let outgoing: Vec<Outgoing> = events
            .iter()
            .map(|event| Outgoing {
                event,
                body: &small,
                trace: None,
            })
            .collect();
        assert_eq!(target.batches(&outgoing), vec![0..10, 10..20, 20..25]);
        // 100 KiB each: two fit in 256 KiB, the third starts a new call.
        let outgoing: Vec<Outgoing> = events[..5]
            .iter()
            .map(|event| Outgoing {
                event,
                body: &big,
                trace: None,
            })
            .collect();
        assert_eq!(target.batches(&outgoing), vec![0..2, 2..4, 4..5]);
    }
}
