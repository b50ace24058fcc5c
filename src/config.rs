//! Server settings: command-line flags, each with its `REELAY_*` environment variable and a
//! default, parsed once by clap and validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The default `--database` (env `REELAY_DATABASE_URL`).
pub const DEFAULT_DATABASE: &str = "sqlite://reelay-data/reelay.db";

/// Settings of `reelay migrate`, which brings a database's schema up to date and exits.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    /// Database URL. Default: an embedded SQLite file under ./reelay-data/.
    #[arg(long = "database", env = "REELAY_DATABASE_URL", default_value = DEFAULT_DATABASE)]
    pub database_url: String,
}

/// Settings of `reelay serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "REELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database URL. Default: an embedded SQLite file under ./reelay-data/.
    #[arg(long = "database", env = "REELAY_DATABASE_URL", default_value = DEFAULT_DATABASE)]
    pub database_url: String,

    /// Admin bearer token. Without it, one is generated on first start, printed once and
    /// stored hashed.
    #[arg(long, env = "REELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A second admin token accepted beside `--admin-token`, to rotate it without a
    /// moment when neither works: add the new one here, move the clients to it, then
    /// make it the `--admin-token` and drop this.
    #[arg(long, env = "REELAY_ADMIN_TOKEN_NEXT", hide_env_values = true)]
    pub admin_token_next: Option<String>,

    /// The key that encrypts the stored secrets (signing secrets and keys, HS256
    /// user-token secrets, the pseudonym key): 32 bytes in base64 or hex. Every node
    /// sharing a PostgreSQL database needs the same one.
    #[arg(long, env = "REELAY_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// A file holding that key (generated there if the file does not exist). Without
    /// either, the key is generated once and kept in `secret.key` (mode 0600) beside the
    /// SQLite database, or in `./reelay-data/` with PostgreSQL.
    #[arg(long, env = "REELAY_SECRET_KEY_FILE", conflicts_with = "secret_key")]
    pub secret_key_file: Option<PathBuf>,

    /// Allow webhooks, job callbacks and AWS destinations' `endpointUrl` on loopback,
    /// private, link-local and other special-purpose addresses (IANA registries).
    #[arg(long, env = "REELAY_ALLOW_PRIVATE_DESTINATIONS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_destinations: bool,

    /// Endpoint URLs an account key may give as an SNS, SQS or Kinesis destination's
    /// `endpointUrl`: URL prefixes (same scheme, host and port; the path may go on),
    /// repeated or comma-separated. The admin token may give any. Default: none.
    #[arg(long = "allow-aws-endpoint", env = "REELAY_ALLOW_AWS_ENDPOINTS", value_delimiter = ',', value_parser = parse_endpoint_prefix)]
    pub allow_aws_endpoints: Vec<url::Url>,

    /// The NATS server of `nats` destinations that give no `url` (`nats://host:port`).
    #[arg(long, env = "REELAY_NATS_URL", value_parser = parse_nats_url)]
    pub nats_url: Option<url::Url>,

    /// URLs an account key may give as a `nats` destination's `url`: prefixes (same
    /// scheme, host and port), repeated or comma-separated. The admin token may give any.
    /// Default: none.
    #[arg(long = "allow-nats-url", env = "REELAY_ALLOW_NATS_URLS", value_delimiter = ',', value_parser = parse_nats_url)]
    pub allow_nats_urls: Vec<url::Url>,

    /// The RabbitMQ broker of `amqp` destinations that give no `url`
    /// (`amqp://user:password@host:port/vhost`).
    #[arg(long, env = "REELAY_AMQP_URL", value_parser = parse_amqp_url)]
    pub amqp_url: Option<url::Url>,

    /// URLs an account key may give as an `amqp` destination's `url`: prefixes (same
    /// scheme, host and port), repeated or comma-separated. The admin token may give any.
    /// Default: none.
    #[arg(long = "allow-amqp-url", env = "REELAY_ALLOW_AMQP_URLS", value_delimiter = ',', value_parser = parse_amqp_url)]
    pub allow_amqp_urls: Vec<url::Url>,

    /// Regions an account key may give as an AWS destination's `region`: patterns where
    /// `*` matches anything (`eu-*`, `*`), repeated or comma-separated. Default: none.
    #[arg(
        long = "allow-aws-region",
        env = "REELAY_ALLOW_AWS_REGIONS",
        value_delimiter = ','
    )]
    pub allow_aws_regions: Vec<String>,

    /// Roles an account key may give as an AWS destination's `roleArn`: ARN patterns
    /// where `*` matches anything (`arn:aws:iam::123456789012:role/reelay-*`), repeated
    /// or comma-separated. Every role is assumed with the account's ExternalId. Default:
    /// none.
    #[arg(
        long = "allow-role-arn",
        env = "REELAY_ALLOW_ROLE_ARNS",
        value_delimiter = ','
    )]
    pub allow_role_arns: Vec<String>,

    /// A JSON file of extra topics and event types, added to the built-in catalog.
    #[arg(long, env = "REELAY_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// When a publish is acknowledged: `fsync` (on disk, the default) or `relaxed`
    /// (written to the OS, may be lost if the machine, not the process, crashes).
    #[arg(long, env = "REELAY_DURABILITY", value_enum, default_value_t = Durability::Fsync)]
    pub durability: Durability,

    /// Delays between delivery retries, comma-separated (`5s,30s,1m,…`). The number of
    /// entries is the number of retries before an event is dead-lettered.
    #[arg(long, env = "REELAY_RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE, value_parser = parse_schedule)]
    pub retry_schedule: RetrySchedule,

    /// Time limit for one webhook request (connect, send, and read the answer).
    #[arg(long, env = "REELAY_DELIVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// The least wait before retrying a delivery whose destination is missing or does
    /// not let this server in (AWS AccessDenied, NotFound…): such a failure lasts until
    /// someone fixes it, so it is retried on this slow pace, not on the schedule's fast
    /// first steps.
    #[arg(long, env = "REELAY_SLOW_RETRY", default_value = "10m", value_parser = parse_duration)]
    pub slow_retry: Duration,

    /// A subscription whose deliveries have all failed for this long is disabled.
    #[arg(long, env = "REELAY_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub disable_after: Duration,

    /// Which subscriptions and accounts get metric series of their own.
    #[command(flatten)]
    pub metrics: crate::metrics_scope::MetricsConfig,

    /// Most subscriptions one account may have for a single event name or topic.
    #[arg(long, env = "REELAY_MAX_SUBSCRIPTIONS_PER_EVENT", default_value_t = 10)]
    pub max_subscriptions_per_event: usize,

    /// Deliveries in flight at once to one subscription.
    #[arg(long, env = "REELAY_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,

    /// Webhook requests in flight at once, to every destination together: past it, a
    /// delivery waits for a slot (the wait is not part of its `--delivery-timeout`).
    #[arg(long, env = "REELAY_MAX_OUTBOUND", default_value_t = 1024, value_parser = at_least_one)]
    pub max_outbound: usize,

    /// Webhook requests, and so connections, in flight at once to one host (scheme,
    /// host and port): a receiver that hangs holds at most this many of
    /// `--max-outbound`.
    #[arg(long, env = "REELAY_MAX_CONNECTIONS_PER_HOST", default_value_t = 64, value_parser = at_least_one)]
    pub max_connections_per_host: usize,

    /// How long a Dynamic Ingest job's callback URLs receive its notifications after
    /// they are registered.
    #[arg(long, env = "REELAY_JOB_CALLBACK_TTL", default_value = "7d", value_parser = parse_duration)]
    pub job_callback_ttl: Duration,

    /// With PostgreSQL and several nodes: how long a node's hold on its subscriptions
    /// lasts without being renewed. A node that dies has its subscriptions taken over
    /// by the others after at most this long; nodes renew every third of it.
    #[arg(long, env = "REELAY_LEASE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// With PostgreSQL: this node's name among the nodes sharing the database (random at
    /// each start if not set). A node restarted under the same name takes its leases
    /// back at once instead of waiting for them to run out; two live nodes must never
    /// share a name.
    #[arg(long, env = "REELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// With PostgreSQL: the most connections this node opens to the database.
    #[arg(long, env = "REELAY_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// The URL clients reach this server at (e.g. behind a proxy). The `source` of the
    /// CloudEvents it answers with is this URL's endpoint; without it, the request's host.
    /// Its host is also the origin the webhook validation handshake names.
    #[arg(long, env = "REELAY_PUBLIC_URL")]
    pub public_url: Option<url::Url>,

    /// Largest event document accepted, in bytes (`1048576`, `256KiB`, `1MiB`): a bigger
    /// one refuses its request with `413 event_too_large`. Applies to native events,
    /// CloudEvents (the stored structured event) and Dynamic Ingest notifications.
    #[arg(long, env = "REELAY_MAX_EVENT_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_event_bytes: usize,

    /// Most events one publish request may carry (`413 too_many_events` past it).
    #[arg(long, env = "REELAY_MAX_EVENTS_PER_REQUEST", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_events_per_request: u32,

    /// Largest request body accepted, in bytes (`413 payload_too_large` past it).
    #[arg(long, env = "REELAY_MAX_REQUEST_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_request_bytes: usize,

    /// Most bytes of event documents one page holds: a page of the log or of entities
    /// (API, catch-up, resync) ends at its row limit or at the first event that brings it
    /// to this many bytes, whichever comes first. A page always holds at least one event.
    #[arg(long, env = "REELAY_MAX_PAGE_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub max_page_bytes: usize,

    /// Most job callback registrations one account may have live at once (each is a
    /// delivery worker until it expires).
    #[arg(
        long,
        env = "REELAY_MAX_JOB_CALLBACKS_PER_ACCOUNT",
        default_value_t = 1000
    )]
    pub max_job_callbacks_per_account: usize,

    /// Most standing subscriptions one account may have.
    #[arg(
        long,
        env = "REELAY_MAX_SUBSCRIPTIONS_PER_ACCOUNT",
        default_value_t = 1000
    )]
    pub max_subscriptions_per_account: usize,

    /// Time a client has to send a request's headers (HTTP/1); a connection idle between
    /// requests for this long is closed too.
    #[arg(long, env = "REELAY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a request's body once its headers are in (`408
    /// body_timeout` past it).
    #[arg(long, env = "REELAY_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most client connections open at once; a connection over it is closed at once,
    /// unanswered.
    #[arg(long, env = "REELAY_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How long the log keeps events (`7d`, `12h`, `30s`; `forever`: never remove
    /// any): older events are removed once every subscription that wants them has
    /// received them, except the latest event of each catalog entity (compaction). A
    /// catalog topic's `retention` overrides it for that topic's events.
    #[arg(long, env = "REELAY_RETENTION", default_value = "7d", value_parser = parse_retention)]
    pub retention: Retention,

    /// Most bytes of event documents the log keeps (`10GiB`): past it, the oldest
    /// events go whatever their age, with the same exceptions as `--retention`.
    /// Default: no limit.
    #[arg(long, env = "REELAY_RETENTION_BYTES", value_parser = parse_bytes)]
    pub retention_bytes: Option<usize>,

    /// How long a deleted catalog entity's deletion event is kept past `--retention`
    /// (so mirrors learn of the deletion); after it, the entity is forgotten.
    #[arg(long, env = "REELAY_TOMBSTONE_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub tombstone_retention: Duration,

    /// How long a disabled subscription still holds back the events it has not
    /// received: after that, they may be removed (an enabled one holds them for ever;
    /// a deleted one at once stops).
    #[arg(long, env = "REELAY_RETENTION_GRACE", default_value = "2d", value_parser = parse_duration)]
    pub retention_grace: Duration,

    /// How long attempt records and dead letters are kept (the deliveries API sees
    /// this far back).
    #[arg(long, env = "REELAY_ATTEMPT_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub attempt_retention: Duration,

    /// How often the retention pass runs.
    #[arg(long, env = "REELAY_RETENTION_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// For tests: the most pages (2 KiB each) the SQLite database may grow to, which
    /// simulates a full disk. Not for production.
    #[arg(long, env = "REELAY_SQLITE_MAX_PAGE_COUNT", hide = true)]
    pub sqlite_max_page_count: Option<u64>,

    /// Events per second one API key (the admin token is a key of its own) may publish,
    /// over all the publish routes; off unless set. Over it: `429 rate_limited` with
    /// `Retry-After`.
    #[arg(long, env = "REELAY_PUBLISH_RATE_LIMIT", value_parser = parse_rate)]
    pub publish_rate_limit: Option<f64>,

    /// Events one key may publish at once above its rate (the bucket's size); default:
    /// one second's worth of `--publish-rate-limit`.
    #[arg(long, env = "REELAY_PUBLISH_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_burst: Option<u32>,

    /// The OTLP/HTTP collector to export traces and metrics to, as a base URL
    /// (`/v1/traces` and `/v1/metrics` are added, as for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    /// Tracing is off unless this or one of the standard `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables is set; this flag wins over them.
    /// Metrics also go over OTLP when this, `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set.
    #[arg(long, env = "REELAY_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<url::Url>,

    /// The share (0 to 1) of publishes without a `traceparent` that are traced, when
    /// tracing is on. Parent-based: a publisher's sampled `traceparent` is traced
    /// whatever the ratio, and an unsampled one is not.
    #[arg(long, env = "REELAY_TRACE_SAMPLE_RATIO", default_value = "1.0", value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,
}

impl ServeConfig {
    /// How traces are exported (see [`crate::trace`]).
    pub fn trace_settings(&self) -> crate::trace::TraceSettings {
        crate::trace::TraceSettings {
            endpoint: self.otlp_endpoint.as_ref().map(|url| url.to_string()),
            sample_ratio: self.trace_sample_ratio,
        }
    }
}

fn parse_otlp_endpoint(text: &str) -> Result<url::Url, String> {
    match url::Url::parse(text.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(format!(
            "{text:?} is not an http:// or https:// URL of an OTLP/HTTP collector (e.g. http://localhost:4318)"
        )),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!(
            "{text:?} is not a sampling ratio from 0 to 1 (e.g. 0.01 for 1%)"
        )),
    }
}

/// The `WebHook-Request-Origin` of the validation handshake when no `--public-url` says
/// which host this server is.
pub const DEFAULT_WEBHOOK_ORIGIN: &str = "reelay";

impl ServeConfig {
    /// The origin this server names when it asks an endpoint for consent (CloudEvents
    /// webhook validation handshake): the host of `--public-url`, else
    /// [`DEFAULT_WEBHOOK_ORIGIN`].
    pub fn webhook_origin(&self) -> String {
        self.public_url
            .as_ref()
            .and_then(|url| url.host_str())
            .unwrap_or(DEFAULT_WEBHOOK_ORIGIN)
            .to_owned()
    }
}

/// How far a publish must have reached before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    Fsync,
    Relaxed,
}

/// How long the log keeps events; `None`: for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

fn parse_retention(text: &str) -> Result<Retention, String> {
    match text.trim() {
        "forever" | "off" => Ok(Retention(None)),
        text => match parse_duration(text)? {
            zero if zero.is_zero() => Err("a retention of 0 would remove events as they are delivered: give a duration, or `forever`".into()),
            duration => Ok(Retention(Some(duration))),
        },
    }
}

/// Retry delays; jitter is applied when a retry is scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

/// Twenty retries: the first within minutes, the last days later (seed 004).
pub const DEFAULT_RETRY_SCHEDULE: &str =
    "5s,30s,1m,2m,5m,10m,20m,30m,1h,2h,3h,4h,6h,8h,12h,16h,24h,24h,36h,48h";

impl RetrySchedule {
    /// The delay before retry number `retry` (1-based), or `None` once the retries are
    /// used up and the delivery is dead.
    pub fn delay_before(&self, retry: u32) -> Option<Duration> {
        let index = usize::try_from(retry).ok()?.checked_sub(1)?;
        self.0.get(index).copied()
    }
}

impl ServeConfig {
    /// The connection URL policies of the message-bus sinks, by destination `type`.
    pub fn bus_policies(
        &self,
    ) -> std::collections::HashMap<&'static str, crate::sinks::aws_policy::UrlPolicy> {
        use crate::sinks::aws_policy::UrlPolicy;
        std::collections::HashMap::from([
            (
                "nats",
                UrlPolicy {
                    default: self.nats_url.clone(),
                    allowed: self.allow_nats_urls.clone(),
                },
            ),
            (
                "amqp",
                UrlPolicy {
                    default: self.amqp_url.clone(),
                    allowed: self.allow_amqp_urls.clone(),
                },
            ),
        ])
    }
}

fn parse_nats_url(text: &str) -> Result<url::Url, String> {
    crate::sinks::aws_policy::parse_bus_url(text, &["nats", "tls"])
}

fn parse_amqp_url(text: &str) -> Result<url::Url, String> {
    crate::sinks::aws_policy::parse_bus_url(text, &["amqp", "amqps"])
}

fn parse_endpoint_prefix(text: &str) -> Result<url::Url, String> {
    crate::sinks::aws_policy::parse_endpoint(text.trim())
}

fn parse_schedule(text: &str) -> Result<RetrySchedule, String> {
    let delays = text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetrySchedule(delays))
}

/// Parses a byte count: `1048576`, or with a binary unit `64KiB`, `1MiB`, `1GiB` (also
/// `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of 1024). Zero is refused.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 65536, 256KiB or 1MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use KiB, MiB or GiB)"
            ));
        }
    };
    match number.checked_mul(scale) {
        Some(0) => Err("a size of 0 bytes would refuse everything".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

/// A positive, finite rate (events per second).
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of events per second"
        )),
    }
}

/// A bound that must let something through: a whole number, at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// Parses `250ms`, `5s`, `2m`, `3h`, `5d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 5s, 2m, 3h or 5d"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_retention("7d"),
            Ok(Retention(Some(Duration::from_secs(7 * 86400))))
        );
        assert_eq!(parse_retention("forever"), Ok(Retention(None)));
        assert!(parse_retention("0s").is_err());
    }

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("16M"), Ok(16 << 20));
        assert_eq!(parse_bytes("1gb"), Ok(1 << 30));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1 TiB").is_err());
        assert!(parse_bytes("big").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("2.5"), Ok(2.5));
    }

    #[test]
    fn default_schedule_has_twenty_retries_reaching_days() {
        let schedule = parse_schedule(DEFAULT_RETRY_SCHEDULE).unwrap();
        assert_eq!(schedule.0.len(), 20);
        assert_eq!(schedule.delay_before(1), Some(Duration::from_secs(5)));
        assert_eq!(
            schedule.delay_before(20),
            Some(Duration::from_secs(48 * 3600))
        );
        assert_eq!(schedule.delay_before(21), None);
        assert_eq!(schedule.delay_before(0), None);
    }
}
