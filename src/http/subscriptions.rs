//! `/v1/accounts/{account}/subscriptions`: create, list, get, delete, enable; the delivery
//! log; replay.
//!
//! Creation accepts the Brightcove shape (`endpoint` + `events`) and the general one
//! (`destination` + `events` and/or `topics`), with seed 004's 422 rules, a delivery
//! `format`, and on request the CloudEvents webhook validation handshake before anything
//! is stored.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::body::Query;
use super::destinations::Given;
use super::error::{ApiError, ErrorBody};
use super::resync::{self, ResyncOut};
use crate::model::Scope;
use crate::model::{
    Destination, DisabledReason, EventFilter, Format, NewSubscription, Ordering, PayloadFilter,
    RateLimit, Subscription, SubscriptionKind, Transform, now_millis,
};
use crate::sinks::handshake::HandshakeError;
use crate::sinks::webhook::{generate_ed25519, generate_secret};
use crate::store::{ResyncRun, RetryEntry, StoredAttempt};

/// A new subscription. Give `endpoint` (a webhook URL) or `destination`, and `events`
/// and/or `topics`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionIn {
    /// Webhook URL (the Brightcove shape).
    pub endpoint: Option<String>,
    pub destination: Option<Destination>,
    /// Event names to receive.
    pub events: Option<Vec<String>>,
    /// Whole topics to receive.
    pub topics: Option<Vec<String>>,
    /// How events are written to the endpoint: `native` (default: the stored document
    /// as published), `cloudevents` (structured JSON, `application/cloudevents+json`) or
    /// `cloudevents-binary` (`ce-*` headers, the data as the body).
    pub format: Option<Format>,
    /// Ask the endpoint for consent first, with the CloudEvents webhook validation
    /// handshake (an `OPTIONS` request with `WebHook-Request-Origin`); without a 2xx
    /// answer whose `WebHook-Allowed-Origin` is that origin or `*`, nothing is stored
    /// (422 `handshake_refused` or `handshake_failed`). Default false.
    #[serde(rename = "validationHandshake")]
    pub validation_handshake: Option<bool>,
    /// Create the subscription without the destination's healthcheck, which asks that
    /// the topic, queue, stream or subject exists and can be reached (422
    /// `destination_unreachable` otherwise; webhooks have none but the validation
    /// handshake). Default false.
    #[serde(rename = "skipDestinationCheck")]
    pub skip_destination_check: Option<bool>,
    /// Start with a full resync: the latest event of each live catalog entity the filter
    /// accepts, marked `"resyncType": "full"`, then incremental events (see
    /// `POST …/subscriptions/{id}/resync`). Default false.
    pub resync: Option<bool>,
    /// How deliveries are signed: `hmac` (default: Standard Webhooks `v1`, with the
    /// `whsec_` secret of the answer) or `ed25519` (`v1a`, verified with the `publicKey`
    /// of the answer; the secret key is never shown).
    pub signature: Option<String>,
    /// With `resync`: the entity types to send (default all).
    #[serde(rename = "resyncTypes")]
    pub resync_types: Option<Vec<String>>,
    /// A payload filter: conditions on the event document, beside `events` and `topics`
    /// (see "Delivery controls" in the README). Keys are dotted paths, values a literal
    /// (equality) or operators: `$eq $ne $in $nin $gt $gte $lt $lte $exists $prefix
    /// $contains`; `$and`, `$or` and `$not` combine them. 422 `invalid_filter` with
    /// `field` = `filter.<path>.<operator>` when it does not compile.
    #[schema(value_type = Option<Object>, example = json!({"platforms": {"$contains": "web"}, "assetId": {"$in": ["a1", "a2"]}}))]
    pub filter: Option<Value>,
    /// A jq program (the jaq dialect) applied to the event document before it is written
    /// in `format`; it must give one JSON value. 422 `invalid_transform` with the
    /// compiler's message when it does not compile; a failure on an event dead-letters
    /// that delivery with the reason.
    #[schema(example = "{asset: .assetId, event: .eventName}")]
    pub transform: Option<String>,
    /// At most `perSecond` deliveries a second, `burst` at once, for first attempts,
    /// retries and resync copies alike (whole numbers from 1 to 10000; 422
    /// `invalid_rate_limit` otherwise). Events beyond it wait in the log. With
    /// `validationHandshake`, sent as `WebHook-Request-Rate`, and lowered to the
    /// endpoint's `WebHook-Allowed-Rate`.
    #[serde(rename = "rateLimit")]
    pub rate_limit: Option<RateLimit>,
    /// `entity` (webhooks only): the events of one entity key (one video, one asset, one
    /// job) are delivered one at a time in log order, each once the one before it is
    /// delivered or dead-lettered, while different entities go in parallel up to
    /// `--max-in-flight`. `none` (default): no order, as fast as possible. 422
    /// `invalid_ordering` otherwise.
    #[schema(example = "entity")]
    pub ordering: Option<Ordering>,
}

/// A creation request, read and checked.
struct Creation {
    destination: Destination,
    filter: EventFilter,
    format: Format,
    validation_handshake: bool,
    /// Whether an AWS destination is checked (exists, reachable) before it is stored.
    check_destination: bool,
    /// The entity types of a resync to start with, if one was asked for.
    resync: Option<Vec<String>>,
    /// Signed with ed25519 (`"signature": "ed25519"`) rather than HMAC.
    ed25519: bool,
    payload_filter: Option<PayloadFilter>,
    transform: Option<Transform>,
    rate_limit: Option<RateLimit>,
    ordering: Ordering,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionOut {
    pub id: String,
    pub account: String,
    /// For a job's callback registration: the job whose notifications it receives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// For a job's callback registration: when it ends (epoch milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The webhook URL, for webhook destinations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub destination: Destination,
    pub events: Vec<String>,
    pub topics: Vec<String>,
    /// The payload filter, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// The jq program applied to each event, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    /// The delivery rate limit (after the validation handshake's `WebHook-Allowed-Rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// `entity` when deliveries are ordered per entity (absent: no order).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "entity")]
    pub ordering: Option<Ordering>,
    pub format: Format,
    /// The signing secret; only in the answer to the creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// With ed25519 signatures: the public key to verify them with (`whpk_…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub created_at: i64,
    /// `enabled` or `disabled`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<DisabledOut>,
    /// Every event up to this sequence number was delivered or is in the retry set.
    pub cursor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<i64>,
    /// Deliveries that succeeded at the first attempt (they have no attempt record).
    pub delivered: u64,
    /// The latest resync run, if it ever had one (`GET …/resync` has it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncOut>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisabledOut {
    /// `endpoint_gone`, `failing_too_long` or `manual`.
    pub code: String,
    pub message: String,
    pub at: Option<i64>,
}

impl SubscriptionOut {
    fn new(subscription: Subscription, secret: Option<String>) -> SubscriptionOut {
        let endpoint = subscription.destination.endpoint().map(str::to_owned);
        let disabled_reason = subscription
            .disabled
            .as_ref()
            .map(|reason: &DisabledReason| DisabledOut {
                code: reason.code().to_owned(),
                message: reason.message().to_owned(),
                at: subscription.disabled_at,
            });
        let job = match &subscription.kind {
            SubscriptionKind::Standing => None,
            SubscriptionKind::JobCallback { job, .. } => Some(job.clone()),
        };
        SubscriptionOut {
            expires_at: subscription.expires_at(),
            job,
            id: subscription.id,
            account: subscription.account,
            endpoint,
            destination: subscription.destination,
            events: subscription.filter.events,
            topics: subscription.filter.topics,
            filter: subscription.payload_filter.map(|f| f.source().clone()),
            transform: subscription.transform.map(|t| t.source().to_owned()),
            rate_limit: subscription.rate_limit,
            ordering: subscription
                .ordering
                .by_entity()
                .then_some(subscription.ordering),
            format: subscription.format,
            secret,
            public_key: subscription.public_key,
            created_at: subscription.created_at,
            status: if disabled_reason.is_some() {
                "disabled"
            } else {
                "enabled"
            }
            .to_owned(),
            disabled_reason,
            cursor: subscription.cursor,
            last_success_at: subscription.last_success_at,
            failing_since: subscription.failing_since,
            delivered: subscription.delivered,
            resync: None,
        }
    }

    fn with_resync(mut self, run: Option<ResyncRun>) -> SubscriptionOut {
        self.resync = run.map(ResyncOut::from);
        self
    }
}

/// Create a subscription. The answer carries the signing secret, once.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions", tag = "subscriptions",
    params(("account" = String, Path)),
    request_body = SubscriptionIn,
    responses(
        (status = 201, body = SubscriptionOut),
        (status = 422, description = "missing endpoint or events, not an array, duplicate, too many per event, unknown format, refused destination, no consent in the validation handshake", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<SubscriptionOut>), ApiError> {
    caller.require(Scope::Manage, &account)?;
    let Creation {
        destination,
        filter,
        format,
        validation_handshake,
        check_destination: check,
        resync,
        ed25519,
        payload_filter,
        transform,
        mut rate_limit,
        ordering,
    } = parse_request(&state, &body)?;
    // A webhook URL comes as `endpoint` (Brightcove) or as `destination.url`.
    let given = match serde_json::from_slice::<Value>(&body) {
        Ok(value) if value.get("destination").is_some_and(|d| !d.is_null()) => Given::Destination,
        _ => Given::Endpoint,
    };
    super::destinations::check(&state, &caller, &account, &destination, given, check).await?;
    // Before taking the lock below: a slow endpoint must not hold up other creations.
    if validation_handshake {
        let allowed = ask_consent(&state, &account, &destination, rate_limit).await?;
        // The endpoint's word on the rate wins when it is lower (or there was none).
        if let Some(allowed) = allowed {
            rate_limit = Some(match rate_limit {
                Some(limit) => RateLimit {
                    per_second: limit.per_second.min(allowed),
                    burst: limit.burst,
                },
                None => RateLimit {
                    per_second: allowed,
                    burst: allowed,
                },
            });
        }
    }

    let (secret, public_key) = match ed25519 {
        true => {
            let (secret, public_key) = generate_ed25519();
            (secret, Some(public_key))
        }
        false => (generate_secret(), None),
    };
    let new = NewSubscription {
        id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
        account: account.clone(),
        kind: SubscriptionKind::Standing,
        destination,
        filter,
        payload_filter,
        transform,
        rate_limit,
        ordering,
        format,
        secret,
        public_key,
    };
    // A new subscription receives what is published from now on. The duplicate and
    // limit checks run in the insert's transaction, so concurrent requests (to any
    // node) cannot both pass them.
    let cursor = state.store.log_position().await?;
    state
        .store
        .db()
        .insert_subscription_checked(&new, cursor, now_millis(), |existing, total| {
            check_limits(
                existing,
                &new.destination,
                &new.filter,
                (&new.payload_filter, &new.transform),
                state.max_subscriptions_per_event,
            )?;
            super::limits::check_subscriptions_per_account(
                total,
                state.limits.max_subscriptions_per_account,
            )
        })
        .await??;
    let subscription = state
        .store
        .db()
        .get_subscription(&account, &new.id)
        .await?
        .ok_or_else(|| ApiError::NotFound("subscription vanished".into()))?;
    state
        .dispatcher
        .add(subscription.clone())
        .await
        .map_err(|error| ApiError::unprocessable("invalid_subscription", error.to_string()))?;
    tracing::info!(subscription = %new.id, %account, "subscription created");
    // After the worker started: the run's copies and the incremental events from the
    // subscription's cursor (the head above) go out side by side.
    let run = match resync {
        Some(types) => Some(resync::start_run(&state, &subscription, types).await?),
        None => None,
    };
    Ok((
        StatusCode::CREATED,
        // An ed25519 secret key is never shown: receivers verify with the public key.
        Json(SubscriptionOut::new(subscription, (!ed25519).then_some(new.secret)).with_resync(run)),
    ))
}

/// The CloudEvents webhook validation handshake: the endpoint must consent to receive
/// events from this server's origin. Asks for the subscription's rate, if it has one;
/// gives the endpoint's `WebHook-Allowed-Rate` (requests a minute) as deliveries a
/// second, when it sent a usable one.
async fn ask_consent(
    state: &AppState,
    account: &str,
    destination: &Destination,
    rate_limit: Option<RateLimit>,
) -> Result<Option<u32>, ApiError> {
    match destination.endpoint() {
        Some(url) => {
            let origin = &state.webhook_origin;
            let rate = rate_limit.map(|limit| limit.per_second);
            match state.dispatcher.sinks().handshake(url, origin, rate).await {
                Ok(granted) => {
                    tracing::info!(%account, %origin, allowed_rate = granted.allowed_rate.as_deref(), "validation handshake: the endpoint consents");
                    Ok(granted.allowed_per_second())
                }
                Err(error) => {
                    tracing::info!(%account, %origin, %error, "validation handshake: no consent");
                    let code = match error {
                        HandshakeError::Refused { .. } => "handshake_refused",
                        HandshakeError::Unanswered(_) => "handshake_failed",
                    };
                    Err(field_error(code, "validationHandshake", &error.to_string()))
                }
            }
        }
        None => Err(field_error(
            "invalid_validation_handshake",
            "validationHandshake",
            "the validation handshake is for webhook destinations",
        )),
    }
}

/// Reads the creation body by hand so each seed 004 rule gets its own message.
fn parse_request(state: &AppState, body: &[u8]) -> Result<Creation, ApiError> {
    // Members SubscriptionIn does not document are refused before any rule below.
    let object = &super::body::object(body, "SubscriptionIn", "invalid_body")?;

    // A null field is an absent one, as for `events`.
    let given = |field: &str| object.get(field).filter(|value| !value.is_null());
    let destination = match (given("endpoint"), given("destination")) {
        (Some(Value::String(url)), None) => Destination::from_endpoint(url.clone()),
        (None, Some(destination)) => {
            super::body::typed(destination.clone(), "destination", "invalid_destination")?
        }
        (Some(_), Some(_)) => {
            return Err(field_error(
                "ambiguous_destination",
                "endpoint",
                "give endpoint or destination, not both",
            ));
        }
        (Some(_), None) => {
            return Err(field_error(
                "invalid_endpoint",
                "endpoint",
                "endpoint must be a URL string",
            ));
        }
        (None, None) => {
            return Err(field_error(
                "missing_endpoint",
                "endpoint",
                "the endpoint field (or destination) is required",
            ));
        }
    };

    let names = |field: &'static str| -> Result<Option<Vec<String>>, ApiError> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).ok_or_else(|| {
                        field_error(
                            "invalid_filter",
                            field,
                            &format!("every item of {field} must be a string"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(field_error(
                if field == "events" {
                    "events_not_array"
                } else {
                    "topics_not_array"
                },
                field,
                &format!("the {field} field must be an array"),
            )),
        }
    };
    let events = names("events")?.unwrap_or_default();
    let topics = names("topics")?.unwrap_or_default();
    if events.is_empty() && topics.is_empty() {
        return Err(field_error(
            "missing_events",
            "events",
            "the events field (or topics) is required and must not be empty",
        ));
    }
    for event in &events {
        if state.catalog.event_type(event).is_none() {
            return Err(field_error(
                "unknown_event",
                "events",
                &format!("{event:?} is not an event name in the catalog"),
            ));
        }
    }
    for topic in &topics {
        if state.catalog.topic(topic).is_none() {
            return Err(field_error(
                "unknown_topic",
                "topics",
                &format!("{topic:?} is not a topic in the catalog"),
            ));
        }
    }
    let format = match object.get("format") {
        None | Some(Value::Null) => Format::Native,
        Some(Value::String(name)) => Format::parse(name).ok_or_else(|| {
            field_error(
                "invalid_format",
                "format",
                &format!("{name:?} is not a format: {}", format_names()),
            )
        })?,
        Some(_) => {
            return Err(field_error(
                "invalid_format",
                "format",
                &format!("format must be a string: {}", format_names()),
            ));
        }
    };
    let ed25519 = match object.get("signature") {
        None | Some(Value::Null) => false,
        Some(Value::String(scheme)) if scheme == "hmac" => false,
        Some(Value::String(scheme)) if scheme == "ed25519" => true,
        Some(_) => {
            return Err(field_error(
                "invalid_signature",
                "signature",
                "signature must be \"hmac\" or \"ed25519\"",
            ));
        }
    };
    let validation_handshake = match object.get("validationHandshake") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(asked)) => *asked,
        Some(_) => {
            return Err(field_error(
                "invalid_validation_handshake",
                "validationHandshake",
                "validationHandshake must be true or false",
            ));
        }
    };
    let check_destination = match object.get("skipDestinationCheck") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(skip)) => !skip,
        Some(_) => {
            return Err(field_error(
                "invalid_skip_destination_check",
                "skipDestinationCheck",
                "skipDestinationCheck must be true or false",
            ));
        }
    };
    let resync = match (object.get("resync"), given("resyncTypes")) {
        (None | Some(Value::Null) | Some(Value::Bool(false)), None) => None,
        (Some(Value::Bool(true)), types) => {
            Some(resync::entity_types(state, types, "resyncTypes")?)
        }
        (Some(Value::Bool(_)) | None | Some(Value::Null), Some(_)) => {
            return Err(field_error(
                "invalid_resync",
                "resyncTypes",
                "resyncTypes goes with \"resync\": true",
            ));
        }
        (Some(_), _) => {
            return Err(field_error(
                "invalid_resync",
                "resync",
                "resync must be true or false",
            ));
        }
    };
    if !destination.sink().takes(format) {
        return Err(field_error(
            "invalid_format",
            "format",
            &format!(
                "{} is not a format {} destinations take (cloudevents-binary puts attributes in HTTP headers: it is for webhooks); use native or cloudevents",
                format.as_str(),
                destination.kind()
            ),
        ));
    }
    let ordering = ordering(given("ordering"), &destination)?;
    let mut filter = EventFilter { events, topics };
    filter.events.sort();
    filter.events.dedup();
    filter.topics.sort();
    filter.topics.dedup();
    Ok(Creation {
        destination,
        filter,
        format,
        validation_handshake,
        check_destination,
        resync,
        ed25519,
        payload_filter: payload_filter(given("filter"))?,
        transform: transform(given("transform"))?,
        rate_limit: rate_limit(given("rateLimit"))?,
        ordering,
    })
}

/// The `ordering` member: `none` or `entity`, and `entity` for webhooks only (422
/// `invalid_ordering`).
fn ordering(given: Option<&Value>, destination: &Destination) -> Result<Ordering, ApiError> {
    let names = || {
        Ordering::ALL
            .map(|o| format!("{:?}", o.as_str()))
            .join(" or ")
    };
    let ordering = match given {
        None => Ordering::None,
        Some(Value::String(name)) => Ordering::parse(name).ok_or_else(|| {
            field_error(
                "invalid_ordering",
                "ordering",
                &format!("{name:?} is not an ordering: {}", names()),
            )
        })?,
        Some(_) => {
            return Err(field_error(
                "invalid_ordering",
                "ordering",
                &format!("ordering must be a string: {}", names()),
            ));
        }
    };
    if ordering.by_entity() && destination.endpoint().is_none() {
        return Err(field_error(
            "invalid_ordering",
            "ordering",
            &format!(
                "\"ordering\": \"entity\" is for webhook destinations, not {}",
                destination.kind()
            ),
        ));
    }
    Ok(ordering)
}

/// The `rateLimit` member: 422 `invalid_rate_limit` naming the member at fault.
fn rate_limit(given: Option<&Value>) -> Result<Option<RateLimit>, ApiError> {
    let Some(value) = given else {
        return Ok(None);
    };
    if !value.is_object() {
        return Err(field_error(
            "invalid_rate_limit",
            "rateLimit",
            "rateLimit must be an object: {\"perSecond\": n, \"burst\": m}",
        ));
    }
    RateLimit::parse(value).map(Some).map_err(|error| {
        field_error(
            "invalid_rate_limit",
            &format!("rateLimit.{}", error.member),
            &error.to_string(),
        )
    })
}

/// The `filter` member, compiled: 422 `invalid_filter` naming the path and operator.
fn payload_filter(given: Option<&Value>) -> Result<Option<PayloadFilter>, ApiError> {
    let Some(source) = given else {
        return Ok(None);
    };
    PayloadFilter::compile(source).map(Some).map_err(|error| {
        let field = match error.path.as_str() {
            "" => "filter".to_owned(),
            path => format!("filter.{path}"),
        };
        field_error("invalid_filter", &field, &format!("{field}: {error}"))
    })
}

/// The `transform` member, compiled: 422 `invalid_transform` with the compiler's message.
fn transform(given: Option<&Value>) -> Result<Option<Transform>, ApiError> {
    match given {
        None => Ok(None),
        Some(Value::String(source)) => Transform::compile(source)
            .map(Some)
            .map_err(|error| field_error("invalid_transform", "transform", &error.to_string())),
        Some(_) => Err(field_error(
            "invalid_transform",
            "transform",
            "transform must be a string: a jq program",
        )),
    }
}

/// `native, cloudevents or cloudevents-binary`.
fn format_names() -> String {
    let names = Format::ALL.map(Format::as_str);
    match names.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn field_error(code: &'static str, field: &str, message: &str) -> ApiError {
    ApiError::Unprocessable {
        code,
        message: message.to_owned(),
        index: None,
        field: Some(field.to_owned()),
    }
}

/// Seed 004: the same subscription cannot be defined twice, and an account has at most
/// `max` subscriptions per event name (and, here, per topic).
fn check_limits(
    existing: &[Subscription],
    destination: &Destination,
    filter: &EventFilter,
    (payload_filter, transform): (&Option<PayloadFilter>, &Option<Transform>),
    max: usize,
) -> Result<(), ApiError> {
    if existing.iter().any(|s| {
        &s.destination == destination
            && &s.filter == filter
            && &s.payload_filter == payload_filter
            && &s.transform == transform
    }) {
        return Err(ApiError::unprocessable(
            "duplicate_subscription",
            "this subscription is already defined (same destination and events)",
        ));
    }
    for event in &filter.events {
        let count = existing
            .iter()
            .filter(|s| s.filter.events.contains(event))
            .count();
        if count >= max {
            return Err(field_error(
                "too_many_subscriptions",
                "events",
                &format!(
                    "the account already has {count} subscriptions to {event:?} (at most {max})"
                ),
            ));
        }
    }
    for topic in &filter.topics {
        let count = existing
            .iter()
            .filter(|s| s.filter.topics.contains(topic))
            .count();
        if count >= max {
            return Err(field_error(
                "too_many_subscriptions",
                "topics",
                &format!(
                    "the account already has {count} subscriptions to topic {topic:?} (at most {max})"
                ),
            ));
        }
    }
    Ok(())
}

/// List the account's subscriptions (a JSON array, as Brightcove answers).
#[utoipa::path(
    get, path = "/v1/accounts/{account}/subscriptions", tag = "subscriptions",
    params(("account" = String, Path)),
    responses((status = 200, body = [SubscriptionOut])),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<Vec<SubscriptionOut>>, ApiError> {
    caller.require(Scope::Read, &account)?;
    let subscriptions = state.store.db().list_subscriptions(&account).await?;
    Ok(Json(
        subscriptions
            .into_iter()
            .map(|s| SubscriptionOut::new(s, None))
            .collect(),
    ))
}

/// The account's subscription `id`, if the caller may do `scope` in that account; else
/// `403` or `404`.
pub(super) async fn find(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    account: &str,
    id: &str,
) -> Result<Subscription, ApiError> {
    caller.require(scope, account)?;
    state
        .store
        .db()
        .get_subscription(account, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no subscription {id:?} in account {account:?}")))
}

#[utoipa::path(
    get, path = "/v1/accounts/{account}/subscriptions/{id}", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = SubscriptionOut), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<SubscriptionOut>, ApiError> {
    let subscription = find(&state, &caller, Scope::Read, &account, &id).await?;
    let run = state.store.db().latest_resync_run(&id).await?;
    Ok(Json(
        SubscriptionOut::new(subscription, None).with_resync(run),
    ))
}

/// Delete a subscription, its retry set and its delivery log.
#[utoipa::path(
    delete, path = "/v1/accounts/{account}/subscriptions/{id}", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Manage, &account)?;
    // Deleted in the account first: an id of another account must not stop its worker.
    if !state.store.db().delete_subscription(&account, &id).await? {
        return Err(ApiError::NotFound(format!(
            "no subscription {id:?} in account {account:?}"
        )));
    }
    state.dispatcher.deleted(&id).await;
    tracing::info!(subscription = %id, %account, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Subscriptions cannot be updated (seed 004): delete one and create another. Answered
/// `405` with that advice rather than a bare "method not allowed".
#[utoipa::path(
    method(put, patch), path = "/v1/accounts/{account}/subscriptions/{id}", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    responses(
        (status = 404, description = "no such subscription in the account", body = ErrorBody),
        (status = 405, description = "subscriptions cannot be updated: delete and create", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    find(&state, &caller, Scope::Manage, &account, &id).await?;
    Err(ApiError::MethodNotAllowed {
        code: "update_not_supported",
        message: format!(
            "subscriptions cannot be updated: delete {id:?} and create a new subscription"
        ),
        allow: "GET, DELETE",
    })
}

/// Enable a disabled subscription: deliveries resume from its cursor, and its waiting
/// retries are attempted at once.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions/{id}/enable", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = SubscriptionOut), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
) -> Result<Json<SubscriptionOut>, ApiError> {
    let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
    if subscription.disabled.is_some() {
        // The worker's last progress (with the disabling) must land before we clear it.
        state.store.flush().await?;
        state
            .store
            .db()
            .enable_subscription(&id, now_millis())
            .await?;
        let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
        state
            .dispatcher
            .add(subscription)
            .await
            .map_err(|error| ApiError::unprocessable("invalid_subscription", error.to_string()))?;
        tracing::info!(subscription = %id, %account, "subscription enabled");
    }
    Ok(Json(SubscriptionOut::new(
        find(&state, &caller, Scope::Manage, &account, &id).await?,
        None,
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many attempts (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Only attempts older than this attempt id (paging).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptOut {
    pub id: i64,
    /// The delivery's `webhook-id`: the event id, or for a resync delivery
    /// `<event id>.<resync id>`.
    pub event_id: String,
    pub sequence: i64,
    /// The resync run of a resync delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync_id: Option<String>,
    /// 1 for the first delivery, 2 for the first retry, …
    pub attempt: u32,
    pub at: i64,
    /// `delivered`, `failed` (a retry is scheduled) or `dead` (no retries left).
    pub outcome: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response: Option<String>,
    pub next_attempt_at: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryOut {
    pub event_id: String,
    pub sequence: i64,
    /// The resync run of a resync delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync_id: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_error: String,
    pub dead_at: Option<i64>,
}

/// The delivery log of a subscription.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveriesOut {
    /// Deliveries that succeeded at the first attempt: counted, not recorded one by one.
    pub delivered: u64,
    /// Failed attempts and retries, newest first.
    pub attempts: Vec<AttemptOut>,
    /// Deliveries waiting for a retry.
    pub retrying: Vec<RetryOut>,
    /// Deliveries that used up their retries.
    pub dead_letters: Vec<RetryOut>,
    /// How far back this sees, in epoch milliseconds: attempt records made and dead
    /// letters that died before it are removed (`--attempt-retention`).
    pub retained_since: i64,
}

impl From<StoredAttempt> for AttemptOut {
    fn from(stored: StoredAttempt) -> AttemptOut {
        let record = stored.record;
        AttemptOut {
            id: stored.id,
            event_id: record.event_id,
            sequence: record.seq,
            resync_id: record.resync_id,
            attempt: record.attempt,
            at: record.at,
            outcome: record.outcome.to_owned(),
            status_code: record.status,
            error: record.error,
            latency_ms: record.latency_ms,
            response: record.response,
            next_attempt_at: record.next_attempt_at,
        }
    }
}

impl From<RetryEntry> for RetryOut {
    fn from(entry: RetryEntry) -> RetryOut {
        RetryOut {
            event_id: match &entry.resync_id {
                Some(resync_id) => crate::sinks::resync::delivery_id(&entry.event_id, resync_id),
                None => entry.event_id,
            },
            sequence: entry.seq,
            resync_id: entry.resync_id,
            attempts: entry.attempts,
            next_attempt_at: entry.dead_at.is_none().then_some(entry.next_attempt_at),
            last_error: entry.last_error,
            dead_at: entry.dead_at,
        }
    }
}

/// Delivery attempts (newest first), pending retries and dead letters.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/subscriptions/{id}/deliveries", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path), DeliveriesQuery),
    responses((status = 200, body = DeliveriesOut), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
    Query(params): Query<DeliveriesQuery>,
) -> Result<Json<DeliveriesOut>, ApiError> {
    let subscription = find(&state, &caller, Scope::Read, &account, &id).await?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let attempts = state
        .store
        .db()
        .list_attempts(&id, params.before, limit)
        .await?;
    let (dead, retrying): (Vec<_>, Vec<_>) = state
        .store
        .db()
        .list_retries(&id, limit)
        .await?
        .into_iter()
        .partition(|entry| entry.dead_at.is_some());
    Ok(Json(DeliveriesOut {
        delivered: subscription.delivered,
        attempts: attempts.into_iter().map(AttemptOut::from).collect(),
        retrying: retrying.into_iter().map(RetryOut::from).collect(),
        dead_letters: dead.into_iter().map(RetryOut::from).collect(),
        retained_since: now_millis()
            .saturating_sub(i64::try_from(state.attempt_retention.as_millis()).unwrap_or(i64::MAX)),
    }))
}

/// Where a replay starts: give one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayIn {
    /// Redeliver events from this sequence number on (inclusive).
    #[serde(default, deserialize_with = "super::body::integer")]
    pub from_sequence: Option<i64>,
    /// Redeliver events committed at or after this time (RFC 3339).
    pub since: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayOut {
    /// Events after this sequence number will be delivered again.
    pub after: i64,
}

/// Redeliver a subscription's events from a sequence number or a time.
#[utoipa::path(
    post, path = "/v1/accounts/{account}/subscriptions/{id}/replay", tag = "subscriptions",
    params(("account" = String, Path), ("id" = String, Path)),
    request_body = ReplayIn,
    responses(
        (status = 202, body = ReplayOut), (status = 404, body = ErrorBody),
        (status = 410, description = "the replay would start before what retention kept of the log (`before_retention`, with `oldestSequence`)", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<ReplayOut>), ApiError> {
    let subscription = find(&state, &caller, Scope::Manage, &account, &id).await?;
    let request: ReplayIn = super::body::read(&body, "invalid_replay")?;
    let after = match (request.from_sequence, request.since) {
        (Some(sequence), None) if sequence >= 1 => sequence - 1,
        (None, Some(since)) => {
            let time = chrono::DateTime::parse_from_rfc3339(&since).map_err(|_| {
                field_error(
                    "invalid_replay",
                    "since",
                    &format!("{since:?} is not an RFC 3339 time"),
                )
            })?;
            state
                .store
                .db()
                .last_seq_before(time.timestamp_millis())
                .await?
        }
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_replay",
                "give exactly one of fromSequence (at least 1) or since",
            ));
        }
    };
    // Events before the retention mark may be gone: a replay from there would skip them.
    ApiError::check_retained(after, state.store.db().retention_mark(&account).await?)?;
    // Sequence numbers are the log writer's alone: a replay may go back, never past the
    // head (a cursor there would skip events that later take those positions).
    let head = state.store.log_position().await?;
    if after > head {
        return Err(field_error(
            "invalid_replay",
            "fromSequence",
            &format!(
                "fromSequence {} is past the log head {head}: give at most {}",
                after.saturating_add(1),
                head.saturating_add(1)
            ),
        ));
    }
    if !state.dispatcher.rewind(&id, after).await {
        // Not running (disabled): it resumes from here when enabled.
        state.store.db().set_cursor(&subscription.id, after).await?;
    }
    tracing::info!(subscription = %id, after, "replay requested");
    Ok((StatusCode::ACCEPTED, Json(ReplayOut { after })))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/v1/accounts/{account}/subscriptions",
            post(create).get(list),
        )
        .route(
            "/v1/accounts/{account}/subscriptions/{id}",
            get(get_one).delete(delete).put(update).patch(update),
        )
        .route(
            "/v1/accounts/{account}/subscriptions/{id}/enable",
            post(enable),
        )
        .route(
            "/v1/accounts/{account}/subscriptions/{id}/deliveries",
            get(deliveries),
        )
        .route(
            "/v1/accounts/{account}/subscriptions/{id}/replay",
            post(replay),
        )
}
