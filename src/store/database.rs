//! The storage interface: every query Reelay runs off the hot path, written once for both
//! backends. The SQL is the same text for SQLite and PostgreSQL (`$n` placeholders,
//! 64-bit integers and text); where the engines differ (claiming work among several
//! nodes, the log's head) the method says so and has one branch per backend.
//! Appends and delivery progress go through the log writer instead (`writer`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::QueryBuilder;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::rows::{
    AttemptRow, DueRetryRow, EntityRow, EventAttemptRow, EventRow, KeyRow, LiveEntityCountRow,
    ResyncRunRow, RetryRow, SubscriptionRow, TokenVerificationRow, key_list, open_subscription,
    open_subscriptions, resync_from_key, resync_key, resync_position, to_json,
};
use super::{
    AccountSummary, DueRetry, EntityState, EventQuery, EventRetry, LiveEntityCount, PortalLink,
    Result, ResyncProgress, ResyncRun, RetryEntry, Sealer, StoreError, StoreOptions, StoredAttempt,
    postgres, sqlite,
};
use crate::model::{
    ApiKey, KeyOwner, Millis, NewSubscription, StoredEvent, Subscription, SubscriptionKind,
    TokenVerification,
};
use crate::sinks::destination::StoredDestination;

/// Which events of an account one subscription wants (see
/// [`Database::wanted_events_after`]).
#[derive(Debug, Clone, Copy)]
pub struct WantedEvents<'a> {
    pub account: &'a str,
    pub names: &'a [String],
    pub topics: &'a [String],
    pub entity_key: Option<&'a str>,
}

/// A connection pool to one of the two backends.
#[derive(Clone)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The events that match `$condition` (the columns of [`EventRow`]).
macro_rules! events_where {
    ($condition:literal) => {
        concat!(
            "SELECT seq, account, event_id, name, topic, entity_key, occurred_at, received_at, ",
            "body, traceparent, tracestate FROM events WHERE ",
            $condition
        )
    };
}

/// The entities that match `$condition`, each joined with the event that set its state
/// (the columns of [`EntityRow`]).
macro_rules! entities_with_events {
    ($condition:literal) => {
        concat!(
            "SELECT n.type, n.id, n.deleted, e.seq, e.account, e.event_id, e.name, e.topic, ",
            "e.entity_key, e.occurred_at, e.received_at, e.body, e.traceparent, e.tracestate ",
            "FROM entities n JOIN events e ON e.seq = n.seq WHERE ",
            $condition
        )
    };
}

/// A page of events, in log order: the events that match `$condition`, at most `LIMIT
/// $limit` of them, ending at the first that brings the page's documents to `$bytes`
/// bytes. The database sums the documents' sizes (`octet_length`, which needs no
/// document read) and reads the documents of the page alone.
macro_rules! events_page {
    ($condition:literal, $limit:literal, $bytes:literal) => {
        concat!(
            "SELECT e.seq, e.account, e.event_id, e.name, e.topic, e.entity_key, ",
            "e.occurred_at, e.received_at, e.body, e.traceparent, e.tracestate FROM (SELECT seq, ",
            "SUM(octet_length(body)) OVER (ORDER BY seq) - octet_length(body) AS before ",
            "FROM events WHERE ",
            $condition,
            " ORDER BY seq LIMIT ",
            $limit,
            ") p JOIN events e ON e.seq = p.seq WHERE p.before < ",
            $bytes,
            " ORDER BY e.seq"
        )
    };
}

/// The API keys that match `$condition` (the columns of [`KeyRow`]).
macro_rules! keys_where {
    ($condition:literal) => {
        concat!(
            "SELECT id, account, name, scopes, events, topics, prefix, created_at, ",
            "last_used_at, expires_at FROM api_keys WHERE ",
            $condition
        )
    };
}

/// A page of one account's entities of one type (`$1`, `$2`), by id, like
/// [`events_page!`]: the entities that match `$condition`, at most `LIMIT $limit`, ending at
/// the first whose event brings the page to `$bytes` bytes of documents.
macro_rules! entities_page {
    ($condition:literal, $limit:literal, $bytes:literal) => {
        concat!(
            "SELECT n.type, n.id, n.deleted, e.seq, e.account, e.event_id, e.name, e.topic, ",
            "e.entity_key, e.occurred_at, e.received_at, e.body, e.traceparent, e.tracestate ",
            "FROM (SELECT n.id, ",
            "SUM(octet_length(e.body)) OVER (ORDER BY n.id) - octet_length(e.body) AS before ",
            "FROM entities n JOIN events e ON e.seq = n.seq WHERE ",
            $condition,
            " ORDER BY n.id LIMIT ",
            $limit,
            ") p JOIN entities n ON n.account = $1 AND n.type = $2 AND n.id = p.id ",
            "JOIN events e ON e.seq = n.seq WHERE p.before < ",
            $bytes,
            " ORDER BY n.id"
        )
    };
}

/// How much one page read from the store may hold: at most `rows` rows, and it ends at
/// the first row that brings its event documents to `bytes` bytes (so a page always
/// holds a row when there is one, however large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize {
    pub rows: u32,
    pub bytes: usize,
}

impl PageSize {
    /// Whether a page of `rows` rows whose documents add up to `bytes` may have more
    /// after it. A page cut short by its bytes holds at least `self.bytes`, so this never
    /// misses a cut page; at worst the page after it is empty.
    pub fn is_full(&self, rows: usize, bytes: usize) -> bool {
        rows >= self.rows as usize || bytes >= self.bytes
    }

    /// The byte bound as a query parameter.
    fn byte_bound(&self) -> i64 {
        i64::try_from(self.bytes).unwrap_or(i64::MAX)
    }
}

/// The channel revoked keys are announced on (the payload: the key's hash).
const REVOKED_CHANNEL: &str = "reelay_keys_revoked";

/// The server secret that tells whether the key is the one the secrets were sealed with.
const KEY_CHECK: &str = "sealing_key_check";

/// Which backend a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Backend {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// One page of the stored subscriptions (see [`Database::subscriptions_after`]).
pub struct SubscriptionPage {
    pub subscriptions: Vec<Subscription>,
    /// Rows of the page that could not be read (each one's error).
    pub unreadable: Vec<StoreError>,
    /// The last id of the page, readable or not; `None`: the page was empty.
    pub last: Option<String>,
}

/// One subscription's side of the retry set (see [`Database::retry_set_by_subscription`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySetCount {
    pub subscription_id: String,
    /// Deliveries waiting for a retry.
    pub waiting: i64,
    /// Of those, the ones due now.
    pub due: i64,
    /// Dead letters kept.
    pub dead: i64,
    /// When the oldest waiting event was committed (`None`: nothing waits).
    pub oldest_received_at: Option<Millis>,
}

/// The database, for reads and for writes off the hot path. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pub(super) pool: Pool,
    /// This process's name among the nodes sharing a PostgreSQL database (leases are
    /// held in its name). A SQLite database has one process: it owns all the work.
    node: String,
    /// Encrypts the secrets it stores, decrypts those it reads.
    sealer: Arc<Sealer>,
}

/// Bounds a query's `LIMIT` (PostgreSQL has no unsigned integers).
fn limit(n: u32) -> i64 {
    i64::from(n)
}

/// How many retries one claim may take: in all, and of one subscription (less those it
/// has in flight).
pub(super) struct ClaimLimits<'a> {
    pub limit: i64,
    pub per_subscription: i64,
    pub in_flight: &'a HashMap<String, u32>,
}

impl Database {
    /// Opens the database `url` names, creating it if needed (SQLite), and brings its
    /// schema up to date.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Database> {
        let pool = match Backend::of(url) {
            Backend::Sqlite => Pool::Sqlite(
                sqlite::open_pool(url, options.durability, options.sqlite_max_page_count).await?,
            ),
            Backend::Postgres => {
                Pool::Postgres(postgres::open_pool(url, options.max_connections).await?)
            }
        };
        let node = match &options.node_id {
            Some(node) => node.clone(),
            None => format!("node_{}", uuid::Uuid::now_v7().simple()),
        };
        let dir = match Backend::of(url) {
            Backend::Sqlite => sqlite::database_dir(url)?,
            Backend::Postgres => None,
        };
        let sealer = Arc::new(Sealer::load(&options.secret_key, dir.as_deref())?);
        let db = Database { pool, node, sealer };
        if !matches!(options.secret_key, super::SecretKey::Unused) {
            db.check_key().await?;
            db.seal_plain_secrets().await?;
        }
        Ok(db)
    }

    /// Refuses to go on with a key other than the one the database's secrets were
    /// sealed with (a node started without the others' `REELAY_SECRET_KEY`): it could
    /// not sign anything. The first start records a value sealed with its key.
    async fn check_key(&self) -> Result<()> {
        let probe = self.sealer.seal(KEY_CHECK);
        let stored: String = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(KEY_CHECK)
            .bind(&probe)
            .bind(crate::model::now_millis())
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(KEY_CHECK)
                .fetch_one(pool)
                .await?
        });
        match self.sealer.open(&stored) {
            Ok(value) if value == KEY_CHECK => Ok(()),
            _ => Err(StoreError::SecretKey(
                "this key is not the one the database's secrets were encrypted with: give \
                 every node the same REELAY_SECRET_KEY (or --secret-key-file)"
                    .into(),
            )),
        }
    }

    /// Encrypts the secrets a database made before encryption holds in plain text (in
    /// place, once). A SQLite database is then vacuumed and its WAL emptied, so the
    /// plain values do not linger in free pages.
    async fn seal_plain_secrets(&self) -> Result<()> {
        let mut sealed = 0;
        let seal = |value: &str| match Sealer::is_sealed(value) {
            true => value.to_owned(),
            false => self.sealer.seal(value),
        };
        on_pool!(self, |pool| {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT id, secret, previous_secret FROM subscriptions \
                 WHERE secret NOT LIKE 'enc1:%' OR previous_secret NOT LIKE 'enc1:%'",
            )
            .fetch_all(pool)
            .await?;
            for (id, secret, previous) in rows {
                // Only if no other node sealed it meanwhile.
                sealed += sqlx::query(
                    "UPDATE subscriptions SET secret = $1, previous_secret = $2 \
                     WHERE id = $3 AND secret = $4 AND previous_secret IS NOT DISTINCT FROM $5",
                )
                .bind(seal(&secret))
                .bind(previous.as_deref().map(seal))
                .bind(&id)
                .bind(&secret)
                .bind(&previous)
                .execute(pool)
                .await?
                .rows_affected();
            }
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT account, hs256_secret FROM token_verification \
                 WHERE hs256_secret NOT LIKE 'enc1:%'",
            )
            .fetch_all(pool)
            .await?;
            for (account, secret) in rows {
                sealed += sqlx::query(
                    "UPDATE token_verification SET hs256_secret = $1 \
                     WHERE account = $2 AND hs256_secret = $3",
                )
                .bind(seal(&secret))
                .bind(&account)
                .bind(&secret)
                .execute(pool)
                .await?
                .rows_affected();
            }
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT name, value FROM server_secrets WHERE value NOT LIKE 'enc1:%'",
            )
            .fetch_all(pool)
            .await?;
            for (name, value) in rows {
                sealed += sqlx::query(
                    "UPDATE server_secrets SET value = $1 WHERE name = $2 AND value = $3",
                )
                .bind(seal(&value))
                .bind(&name)
                .bind(&value)
                .execute(pool)
                .await?
                .rows_affected();
            }
        });
        if sealed > 0 {
            tracing::info!(count = sealed, "encrypted the secrets stored in plain text");
            if let Pool::Sqlite(pool) = &self.pool {
                sqlx::query("VACUUM").execute(pool).await?;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// With PostgreSQL, how this node shares the work with the others.
    pub fn cluster(&self) -> Option<postgres::Cluster> {
        match &self.pool {
            Pool::Sqlite(_) => None,
            Pool::Postgres(pool) => Some(postgres::Cluster::new(
                pool.clone(),
                self.node.clone(),
                self.sealer.clone(),
            )),
        }
    }

    /// This process's node name (see [`Database::node`]).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The last position handed out in the log: new events come after it.
    pub async fn head(&self) -> Result<i64> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::head(pool).await,
            Pool::Postgres(pool) => postgres::head(pool).await,
        }
    }

    /// Moves cursors past the log head (`head`, as just read) back to it; returns their
    /// subscriptions. See [`sqlite::clamp_cursors`] and [`postgres::clamp_cursors`].
    pub async fn clamp_cursors(&self, head: i64) -> Result<Vec<String>> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::clamp_cursors(pool, head).await,
            Pool::Postgres(pool) => postgres::clamp_cursors(pool).await,
        }
    }

    /// Events of one account after `after` and up to `upto`, in log order: how a
    /// dispatcher that fell behind the in-memory hand-off catches up. `upto` is the
    /// durable head: a commit still waiting for its fsync is not dispatched yet.
    pub async fn events_after(
        &self,
        account: &str,
        after: i64,
        upto: i64,
        page: PageSize,
    ) -> Result<Vec<StoredEvent>> {
        let rows: Vec<EventRow> = on_pool!(self, |pool| sqlx::query_as(events_page!(
            "account = $1 AND seq > $2 AND seq <= $3",
            "$4",
            "$5"
        ))
        .bind(account)
        .bind(after)
        .bind(upto)
        .bind(limit(page.rows))
        .bind(page.byte_bound())
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// Like [`Database::events_after`], only the events named in `names` or of a topic in
    /// `topics`, and (when given) with this entity key: how one subscription catches up
    /// without reading its account's other events.
    pub async fn wanted_events_after(
        &self,
        wanted: WantedEvents<'_>,
        after: i64,
        upto: i64,
        page: PageSize,
    ) -> Result<Vec<StoredEvent>> {
        if wanted.names.is_empty() && wanted.topics.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = on_pool!(self, |pool| {
            // The page's shape of `events_page!`, with the wanted names and topics as binds.
            let mut select = QueryBuilder::new(concat!(
                "SELECT e.seq, e.account, e.event_id, e.name, e.topic, e.entity_key, ",
                "e.occurred_at, e.received_at, e.body, e.traceparent, e.tracestate FROM (SELECT seq, ",
                "SUM(octet_length(body)) OVER (ORDER BY seq) - octet_length(body) AS before ",
                "FROM events WHERE account = "
            ));
            select.push_bind(wanted.account);
            select.push(" AND seq > ").push_bind(after);
            select.push(" AND seq <= ").push_bind(upto);
            if let Some(key) = wanted.entity_key {
                select.push(" AND entity_key = ").push_bind(key);
            }
            select.push(" AND (");
            let mut first = true;
            for (column, values) in [("name", wanted.names), ("topic", wanted.topics)] {
                for value in values {
                    if !first {
                        select.push(" OR ");
                    }
                    first = false;
                    select.push(column).push(" = ").push_bind(value);
                }
            }
            select
                .push(") ORDER BY seq LIMIT ")
                .push_bind(limit(page.rows));
            select
                .push(") p JOIN events e ON e.seq = p.seq WHERE p.before < ")
                .push_bind(page.byte_bound());
            select.push(" ORDER BY e.seq");
            select.build_query_as().fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// Events of every account after `after` and up to `upto`, in log order, one page.
    pub async fn log_range(
        &self,
        after: i64,
        upto: i64,
        page: PageSize,
    ) -> Result<Vec<StoredEvent>> {
        let rows: Vec<EventRow> = on_pool!(self, |pool| sqlx::query_as(events_page!(
            "seq > $1 AND seq <= $2",
            "$3",
            "$4"
        ))
        .bind(after)
        .bind(upto)
        .bind(limit(page.rows))
        .bind(page.byte_bound())
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// A page of an account's entities of one type, by id, with the event that set each
    /// one's state: ids after `after`, as many as `page` holds.
    pub async fn list_entities(
        &self,
        account: &str,
        entity_type: &str,
        after: &str,
        page: PageSize,
    ) -> Result<Vec<EntityState>> {
        let rows: Vec<EntityRow> = on_pool!(self, |pool| sqlx::query_as(entities_page!(
            "n.account = $1 AND n.type = $2 AND n.id > $3",
            "$4",
            "$5"
        ),)
        .bind(account)
        .bind(entity_type)
        .bind(after)
        .bind(limit(page.rows))
        .bind(page.byte_bound())
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(EntityState::from).collect())
    }

    /// One entity's state, with the event that set it.
    pub async fn get_entity(
        &self,
        account: &str,
        entity_type: &str,
        id: &str,
    ) -> Result<Option<EntityState>> {
        let row: Option<EntityRow> = on_pool!(self, |pool| sqlx::query_as(entities_with_events!(
            "n.account = $1 AND n.type = $2 AND n.id = $3"
        ),)
        .bind(account)
        .bind(entity_type)
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(EntityState::from))
    }

    /// A page of an account's live (not deleted) entities of one type, by id, with the
    /// event that set each one's state: ids after `after`, as many as `page` holds. What a
    /// resync sends; keyset paging on the primary key, so each page costs the same.
    pub async fn live_entities(
        &self,
        account: &str,
        entity_type: &str,
        after: &str,
        page: PageSize,
    ) -> Result<Vec<EntityState>> {
        let rows: Vec<EntityRow> = on_pool!(self, |pool| sqlx::query_as(entities_page!(
            "n.account = $1 AND n.type = $2 AND n.id > $3 AND n.deleted = 0",
            "$4",
            "$5"
        ),)
        .bind(account)
        .bind(entity_type)
        .bind(after)
        .bind(limit(page.rows))
        .bind(page.byte_bound())
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(EntityState::from).collect())
    }

    /// How many live entities of a type there are, grouped by the name and topic of their
    /// latest event: a resync's total, once a subscription's filter has picked its groups.
    pub async fn live_entity_counts(
        &self,
        account: &str,
        entity_type: &str,
    ) -> Result<Vec<LiveEntityCount>> {
        let rows: Vec<LiveEntityCountRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT e.name, e.topic, COUNT(*) AS entities \
             FROM entities n JOIN events e ON e.seq = n.seq \
             WHERE n.account = $1 AND n.type = $2 AND n.deleted = 0 GROUP BY e.name, e.topic",
        )
        .bind(account)
        .bind(entity_type)
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(LiveEntityCount::from).collect())
    }

    /// Stores a new resync run; false (and nothing stored) when the subscription already
    /// has one running (the unique index on running runs decides, so two requests at
    /// once, to any node, cannot both start one).
    pub async fn insert_resync_run(&self, run: &ResyncRun) -> Result<bool> {
        let progress = ResyncProgress {
            id: run.id.clone(),
            sent: run.sent,
            position: run.position.clone(),
            completed_at: run.completed_at,
        };
        let (position_type, position_id) = resync_position(&progress);
        let inserted = on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO resync_runs (id, subscription_id, account, types, snapshot_seq, total, \
             sent, position_type, position_id, started_at, completed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(&run.id)
        .bind(&run.subscription_id)
        .bind(&run.account)
        .bind(to_json(&run.types))
        .bind(run.snapshot_seq)
        .bind(run.total as i64)
        .bind(run.sent as i64)
        .bind(position_type)
        .bind(position_id)
        .bind(run.started_at)
        .bind(run.completed_at)
        .execute(pool)
        .await?
        .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// A subscription's latest resync run, running or not.
    pub async fn latest_resync_run(&self, subscription_id: &str) -> Result<Option<ResyncRun>> {
        let row: Option<ResyncRunRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM resync_runs WHERE subscription_id = $1 \
             ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .bind(subscription_id)
        .fetch_optional(pool)
        .await?);
        row.map(ResyncRun::try_from).transpose()
    }

    /// Every resync run not yet completed (at most one per subscription): what a start
    /// resumes, read once for all the workers it starts.
    pub async fn unfinished_resync_runs(&self) -> Result<Vec<ResyncRun>> {
        let rows: Vec<ResyncRunRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM resync_runs WHERE completed_at IS NULL",
        )
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(ResyncRun::try_from).collect()
    }

    /// The position of the last event in the log of each account that has a
    /// subscription (accounts without events are left out): read once at a start, so
    /// workers whose cursor is there already start asleep instead of each reading its
    /// account's log. One index lookup per account.
    pub async fn last_event_of_subscribed_accounts(&self) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, Option<i64>)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT s.account, (SELECT MAX(e.seq) FROM events e WHERE e.account = s.account) \
             FROM (SELECT DISTINCT account FROM subscriptions) s",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows
            .into_iter()
            .filter_map(|(account, last)| Some((account, last?)))
            .collect())
    }

    pub async fn event_by_seq(&self, seq: i64) -> Result<Option<StoredEvent>> {
        let row: Option<EventRow> =
            on_pool!(self, |pool| sqlx::query_as(events_where!("seq = $1"))
                .bind(seq)
                .fetch_optional(pool)
                .await?);
        Ok(row.map(StoredEvent::from))
    }

    /// A page of an account's events that match `query`, in log order (see
    /// [`events_page!`]): at most `query.limit`, and `max_bytes` of documents.
    pub async fn query_events(
        &self,
        account: &str,
        query: &EventQuery,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>> {
        let page = PageSize {
            rows: query.limit,
            bytes: max_bytes,
        };
        let rows: Vec<EventRow> = on_pool!(self, |pool| {
            let mut select = QueryBuilder::new(
                "SELECT e.seq, e.account, e.event_id, e.name, e.topic, e.entity_key, \
                 e.occurred_at, e.received_at, e.body, e.traceparent, e.tracestate \
                 FROM (SELECT seq, \
                 SUM(octet_length(body)) OVER (ORDER BY seq) - octet_length(body) AS before \
                 FROM events WHERE account = ",
            );
            select.push_bind(account);
            if let Some(topic) = &query.topic {
                select.push(" AND topic = ").push_bind(topic);
            }
            if let Some(event) = &query.event {
                select.push(" AND name = ").push_bind(event);
            }
            if let Some(entity) = &query.entity {
                select.push(" AND entity_key = ").push_bind(entity);
            }
            if let Some(since) = query.since {
                select.push(" AND received_at >= ").push_bind(since);
            }
            select
                .push(" AND seq > ")
                .push_bind(query.after.unwrap_or(0))
                .push(" ORDER BY seq LIMIT ")
                .push_bind(limit(page.rows))
                .push(") p JOIN events e ON e.seq = p.seq WHERE p.before < ")
                .push_bind(page.byte_bound())
                .push(" ORDER BY e.seq");
            select.build_query_as().fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// An account's event by its id (the `guid`, or a CloudEvent's log id).
    pub async fn event_by_id(&self, account: &str, id: &str) -> Result<Option<StoredEvent>> {
        let row: Option<EventRow> = on_pool!(self, |pool| sqlx::query_as(events_where!(
            "account = $1 AND event_id = $2"
        ))
        .bind(account)
        .bind(id)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(StoredEvent::from))
    }

    /// The accounts the server knows of: those with keys, subscriptions or events, by
    /// name, with how many of each they have.
    pub async fn accounts(&self) -> Result<Vec<AccountSummary>> {
        let rows: Vec<(String, i64, i64, i64)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT account, CAST(SUM(k) AS BIGINT), CAST(SUM(s) AS BIGINT), \
             CAST(SUM(e) AS BIGINT) FROM ( \
             SELECT account, COUNT(*) AS k, 0 AS s, 0 AS e FROM api_keys \
             WHERE account IS NOT NULL GROUP BY account \
             UNION ALL SELECT account, 0, COUNT(*), 0 FROM subscriptions GROUP BY account \
             UNION ALL SELECT account, 0, 0, COUNT(*) FROM events GROUP BY account \
             ) t GROUP BY account ORDER BY account"
        )
        .fetch_all(pool)
        .await?);
        Ok(rows
            .into_iter()
            .map(|(account, keys, subscriptions, events)| AccountSummary {
                account,
                keys,
                subscriptions,
                events,
            })
            .collect())
    }

    /// The retry-set entries of one event (its incremental deliveries), of every
    /// subscription that has one.
    pub async fn retries_of_event(&self, seq: i64) -> Result<Vec<EventRetry>> {
        let rows: Vec<(String, i64, i64, String, Option<i64>)> =
            on_pool!(self, |pool| sqlx::query_as(
                "SELECT subscription_id, attempts, next_attempt_at, last_error, dead_at \
                 FROM retries WHERE seq = $1 AND resync_id = ''"
            )
            .bind(seq)
            .fetch_all(pool)
            .await?);
        Ok(rows
            .into_iter()
            .map(
                |(subscription_id, attempts, next_attempt_at, last_error, dead_at)| EventRetry {
                    subscription_id,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    next_attempt_at,
                    last_error,
                    dead_at,
                },
            )
            .collect())
    }

    /// The attempt records of one event's incremental deliveries, by subscription,
    /// oldest first.
    pub async fn attempts_of_event(&self, seq: i64) -> Result<Vec<(String, StoredAttempt)>> {
        let rows: Vec<EventAttemptRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM attempts WHERE seq = $1 AND resync_id IS NULL ORDER BY id",
        )
        .bind(seq)
        .fetch_all(pool)
        .await?);
        Ok(rows
            .into_iter()
            .map(|row| (row.subscription_id, StoredAttempt::from(row.attempt)))
            .collect())
    }

    /// Makes a subscription's dead letters due again at `now` (all of them, or the one
    /// of event `seq`, which may also be a waiting retry: "retry now"). Returns how many.
    pub async fn redeliver(
        &self,
        subscription_id: &str,
        seq: Option<i64>,
        now: Millis,
    ) -> Result<u64> {
        Ok(on_pool!(self, |pool| match seq {
            None => sqlx::query(
                "UPDATE retries SET dead_at = NULL, next_attempt_at = $1 \
                 WHERE subscription_id = $2 AND dead_at IS NOT NULL"
            )
            .bind(now)
            .bind(subscription_id)
            .execute(pool)
            .await?
            .rows_affected(),
            Some(seq) => sqlx::query(
                "UPDATE retries SET dead_at = NULL, next_attempt_at = $1 \
                 WHERE subscription_id = $2 AND seq = $3"
            )
            .bind(now)
            .bind(subscription_id)
            .bind(seq)
            .execute(pool)
            .await?
            .rows_affected(),
        }))
    }

    /// How many deliveries wait for a retry, and how many are dead letters, now: of an
    /// account's subscriptions, or (`None`) of every one.
    pub async fn retry_counts(&self, account: Option<&str>) -> Result<(i64, i64)> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE WHEN r.dead_at IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN r.dead_at IS NULL THEN 0 ELSE 1 END), 0) AS BIGINT) \
             FROM retries r JOIN subscriptions s ON s.id = r.subscription_id \
             WHERE $1 IS NULL OR s.account = $1"
        )
        .bind(account)
        .fetch_one(pool)
        .await?
        }))
    }

    /// Stores a portal link by its token's hash (and drops the expired ones).
    pub async fn insert_portal_link(
        &self,
        hash: &str,
        link: &PortalLink,
        now: Millis,
    ) -> Result<()> {
        let scopes = to_json(&link.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        on_pool!(self, |pool| {
            sqlx::query("DELETE FROM portal_links WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO portal_links (hash, account, scopes, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash)
            .bind(&link.account)
            .bind(&scopes)
            .bind(now)
            .bind(link.expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Uses up a portal link: it is deleted as it is read, so it opens one session at
    /// most (on whichever node). `None`: unknown, used already, or expired.
    pub async fn take_portal_link(&self, hash: &str, now: Millis) -> Result<Option<PortalLink>> {
        let row: Option<(String, String, i64)> = on_pool!(self, |pool| sqlx::query_as(
            "DELETE FROM portal_links WHERE hash = $1 RETURNING account, scopes, expires_at"
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?);
        let Some((account, scopes, expires_at)) = row else {
            return Ok(None);
        };
        if expires_at <= now {
            return Ok(None);
        }
        let scopes: Vec<String> = serde_json::from_str(&scopes)
            .map_err(|error| StoreError::Corrupt(format!("a portal link's scopes: {error}")))?;
        Ok(Some(PortalLink {
            account,
            scopes: scopes
                .iter()
                .filter_map(|s| crate::model::Scope::parse(s))
                .collect(),
            expires_at,
        }))
    }

    /// The last sequence number committed before `time`: replaying "from a time" starts
    /// after it.
    pub async fn last_seq_before(&self, time: Millis) -> Result<i64> {
        let seq: Option<i64> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT MAX(seq) FROM events WHERE received_at < $1"
        )
        .bind(time)
        .fetch_one(pool)
        .await?);
        Ok(seq.unwrap_or(0))
    }

    /// Stores a new subscription after `check` accepted the account's existing ones of
    /// the same kind (standing subscriptions, or the same job's callbacks): both in one
    /// transaction that holds the account's subscription lock, so two requests (to any
    /// node) cannot both pass a limit that only one may. `check` is also given how many
    /// of that kind the account has in all: its standing subscriptions, or its live job
    /// callbacks over every job. `Ok(Err(_))` is `check`'s refusal, with nothing stored.
    pub async fn insert_subscription_checked<E>(
        &self,
        subscription: &NewSubscription,
        cursor: i64,
        created_at: Millis,
        check: impl FnOnce(&[Subscription], usize) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<(), E>> {
        let (job_id, expires_at) = match &subscription.kind {
            SubscriptionKind::Standing => (None, None),
            SubscriptionKind::JobCallback { job, expires_at } => (Some(job), Some(*expires_at)),
        };
        on_pool!(self, |pool| {
            let mut tx = match self.backend() {
                // SQLite: the database's write lock, taken at BEGIN and held until commit.
                Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
                // PostgreSQL: a lock on the account's subscriptions, across all nodes.
                Backend::Postgres => {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('subscriptions:' || $1))")
                        .bind(&subscription.account)
                        .execute(&mut *tx)
                        .await?;
                    tx
                }
            };
            let existing: Vec<SubscriptionRow> = sqlx::query_as(
                "SELECT * FROM subscriptions WHERE account = $1 AND job_id IS NOT DISTINCT FROM $2 \
                 ORDER BY created_at, id",
            )
            .bind(&subscription.account)
            .bind(job_id)
            .fetch_all(&mut *tx)
            .await?;
            let existing = existing
                .into_iter()
                .map(|row| open_subscription(row, &self.sealer))
                .collect::<Result<Vec<_>>>()?;
            let account_total = match &subscription.kind {
                SubscriptionKind::Standing => existing.len(),
                SubscriptionKind::JobCallback { .. } => {
                    let live: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM subscriptions \
                         WHERE account = $1 AND job_id IS NOT NULL AND expires_at > $2",
                    )
                    .bind(&subscription.account)
                    .bind(created_at)
                    .fetch_one(&mut *tx)
                    .await?;
                    usize::try_from(live).unwrap_or(usize::MAX)
                }
            };
            if let Err(refused) = check(&existing, account_total) {
                return Ok(Err(refused));
            }
            sqlx::query(
                "INSERT INTO subscriptions (id, account, destination, events, topics, format, \
                 secret, created_at, cursor, job_id, expires_at, public_key, payload_filter, \
                 transform, rate_limit, ordering) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            )
            .bind(&subscription.id)
            .bind(&subscription.account)
            .bind(StoredDestination::to_json(&subscription.destination))
            .bind(to_json(&subscription.filter.events))
            .bind(to_json(&subscription.filter.topics))
            .bind(subscription.format.as_str())
            .bind(self.sealer.seal(&subscription.secret))
            .bind(created_at)
            .bind(cursor)
            .bind(job_id)
            .bind(expires_at)
            .bind(&subscription.public_key)
            .bind(
                subscription
                    .payload_filter
                    .as_ref()
                    .map(|f| to_json(f.source())),
            )
            .bind(subscription.transform.as_ref().map(|t| t.source()))
            .bind(subscription.rate_limit.as_ref().map(to_json))
            .bind(
                subscription
                    .ordering
                    .by_entity()
                    .then_some(subscription.ordering.as_str()),
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    /// Stores a new subscription that no limit applies to.
    pub async fn insert_subscription(
        &self,
        subscription: &NewSubscription,
        cursor: i64,
        created_at: Millis,
    ) -> Result<()> {
        self.insert_subscription_checked(subscription, cursor, created_at, |_, _| {
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .map(|_| ())
    }

    /// The standing subscriptions of one account (what the subscription API lists; job
    /// callbacks are listed per job).
    pub async fn list_subscriptions(&self, account: &str) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM subscriptions WHERE account = $1 AND job_id IS NULL \
             ORDER BY created_at, id",
        )
        .bind(account)
        .fetch_all(pool)
        .await?);
        rows.into_iter()
            .map(|row| open_subscription(row, &self.sealer))
            .collect()
    }

    /// Up to `limit` subscriptions of every kind and account with ids after `after`, in
    /// id order (`""`: from the first), and why those of them that cannot be read cannot
    /// (a row written by a newer version, or damaged: one unreadable row must not keep
    /// the others from being delivered). A start reads them a page at a time, so that
    /// 100,000 rows are not all in memory at once beside what their workers keep.
    pub async fn subscriptions_after(&self, after: &str, limit: u32) -> Result<SubscriptionPage> {
        let rows: Vec<SubscriptionRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM subscriptions WHERE id > $1 ORDER BY id LIMIT $2"
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?);
        let last = rows.last().map(|row| row.id().to_owned());
        let (subscriptions, unreadable) = open_subscriptions(rows, &self.sealer);
        Ok(SubscriptionPage {
            subscriptions,
            unreadable,
            last,
        })
    }

    /// How many job callbacks of the account are live (not expired by `now`), over all
    /// its jobs: each is a delivery worker.
    pub async fn live_job_callbacks(&self, account: &str, now: Millis) -> Result<usize> {
        let live: i64 = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM subscriptions \
             WHERE account = $1 AND job_id IS NOT NULL AND expires_at > $2",
        )
        .bind(account)
        .bind(now)
        .fetch_one(pool)
        .await?);
        Ok(usize::try_from(live).unwrap_or(usize::MAX))
    }

    /// The callback registrations of one job.
    pub async fn job_callbacks(&self, account: &str, job: &str) -> Result<Vec<Subscription>> {
        let rows: Vec<SubscriptionRow> = on_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT * FROM subscriptions WHERE account = $1 AND job_id = $2 ORDER BY created_at, id",
        )
        .bind(account)
        .bind(job)
        .fetch_all(pool)
        .await?
        });
        rows.into_iter()
            .map(|row| open_subscription(row, &self.sealer))
            .collect()
    }

    /// Deletes the job callbacks that expired by `now`, with their retry sets and
    /// attempt records; returns their ids.
    pub async fn delete_expired_callbacks(&self, now: Millis) -> Result<Vec<String>> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "DELETE FROM retries WHERE subscription_id IN \
                 (SELECT id FROM subscriptions WHERE expires_at <= $1)",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM attempts WHERE subscription_id IN \
                 (SELECT id FROM subscriptions WHERE expires_at <= $1)",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let ids: Vec<String> =
                sqlx::query_scalar("DELETE FROM subscriptions WHERE expires_at <= $1 RETURNING id")
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(ids)
        })
    }

    /// The incremental deliveries of a subscription that wait for a retry (not dead),
    /// each with its event's entity key: an ordered subscription holds those entities'
    /// later events back (after a restart too).
    pub async fn pending_retry_entities(
        &self,
        subscription_id: &str,
    ) -> Result<Vec<(i64, Option<String>)>> {
        Ok(on_pool!(self, |pool| sqlx::query_as(
            "SELECT r.seq, e.entity_key FROM retries r JOIN events e ON e.seq = r.seq \
             WHERE r.subscription_id = $1 AND r.dead_at IS NULL AND r.resync_id = '' \
             ORDER BY r.seq",
        )
        .bind(subscription_id)
        .fetch_all(pool)
        .await?))
    }

    /// The events with these sequence numbers, in log order (those still in the log).
    pub async fn events_by_seqs(&self, seqs: &[i64]) -> Result<Vec<StoredEvent>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = on_pool!(self, |pool| {
            let mut select = QueryBuilder::new(events_where!("seq IN ("));
            let mut list = select.separated(", ");
            for seq in seqs {
                list.push_bind(*seq);
            }
            select.push(") ORDER BY seq");
            select.build_query_as().fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// The earliest delivery of a subscription that waits for a retry (not dead).
    pub async fn first_pending_retry(&self, subscription_id: &str) -> Result<Option<i64>> {
        Ok(on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT MIN(seq) FROM retries WHERE subscription_id = $1 AND dead_at IS NULL",
        )
        .bind(subscription_id)
        .fetch_one(pool)
        .await?))
    }

    /// A subscription by id alone, for dispatch (the API always names the account).
    pub async fn subscription_by_id(&self, id: &str) -> Result<Option<Subscription>> {
        let row: Option<SubscriptionRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM subscriptions WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(pool)
        .await?);
        row.map(|row| open_subscription(row, &self.sealer))
            .transpose()
    }

    pub async fn get_subscription(&self, account: &str, id: &str) -> Result<Option<Subscription>> {
        let row: Option<SubscriptionRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM subscriptions WHERE account = $1 AND id = $2"
        )
        .bind(account)
        .bind(id)
        .fetch_optional(pool)
        .await?);
        row.map(|row| open_subscription(row, &self.sealer))
            .transpose()
    }

    /// Replaces a subscription's signing secret (and public key, for ed25519): the
    /// current one becomes the previous one, signing too until `until`. Its retries and
    /// dead letters stay. False if the account has no such subscription.
    pub async fn rotate_secret(
        &self,
        account: &str,
        id: &str,
        secret: &str,
        public_key: Option<&str>,
        until: Millis,
    ) -> Result<bool> {
        let updated = on_pool!(self, |pool| sqlx::query(
            "UPDATE subscriptions SET previous_secret = secret, previous_until = $1, \
             secret = $2, public_key = $3 WHERE account = $4 AND id = $5"
        )
        .bind(until)
        .bind(self.sealer.seal(secret))
        .bind(public_key)
        .bind(account)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(updated > 0)
    }

    /// Deletes a subscription with its retry set and attempt records.
    pub async fn delete_subscription(&self, account: &str, id: &str) -> Result<bool> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM subscriptions WHERE account = $1 AND id = $2")
                .bind(account)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted > 0 {
                sqlx::query("DELETE FROM retries WHERE subscription_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM attempts WHERE subscription_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM resync_runs WHERE subscription_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(deleted > 0)
        })
    }

    /// Re-enables a disabled subscription; its waiting retries become due at once.
    pub async fn enable_subscription(&self, id: &str, now: Millis) -> Result<()> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE subscriptions SET disabled_code = NULL, disabled_message = NULL, \
                 disabled_at = NULL, failing_since = NULL WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE retries SET next_attempt_at = $1 \
                 WHERE subscription_id = $2 AND dead_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Moves a subscription's cursor (replay) while no dispatcher runs for it.
    pub async fn set_cursor(&self, id: &str, cursor: i64) -> Result<()> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE subscriptions SET cursor = $1 WHERE id = $2"
        )
        .bind(cursor)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Claims up to `limit` due retries of enabled subscriptions (with PostgreSQL: of the
    /// subscriptions this node holds), earliest first, but at most `per_subscription`
    /// of one subscription less what it has `in_flight` already: one subscription's
    /// backlog cannot take every slot. Their next attempt is pushed to `lease_until`, so
    /// a crash during the attempt only delays it.
    pub async fn claim_due_retries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit_to: u32,
        per_subscription: u32,
        in_flight: &HashMap<String, u32>,
    ) -> Result<Vec<DueRetry>> {
        let claim = ClaimLimits {
            limit: limit(limit_to),
            per_subscription: limit(per_subscription),
            in_flight,
        };
        let rows: Vec<DueRetryRow> = match &self.pool {
            Pool::Sqlite(pool) => sqlite::claim_due_retries(pool, now, lease_until, &claim).await?,
            Pool::Postgres(pool) => {
                postgres::claim_due_retries(pool, &self.node, now, lease_until, &claim).await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|row| DueRetry {
                subscription_id: row.subscription_id,
                seq: row.seq,
                resync_id: resync_from_key(row.resync_id),
                attempts: row.attempts as u32,
            })
            .collect())
    }

    /// Gives a claimed retry back unattempted: it is due again at `at`.
    pub async fn unclaim_retry(&self, retry: &DueRetry, at: Millis) -> Result<()> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE retries SET next_attempt_at = $1 \
             WHERE subscription_id = $2 AND seq = $3 AND resync_id = $4 AND dead_at IS NULL"
        )
        .bind(at)
        .bind(&retry.subscription_id)
        .bind(retry.seq)
        .bind(resync_key(retry.resync_id.as_deref()))
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Moves a subscription's pending retries that are due before `at` to `at`: its
    /// endpoint is down and the breaker lets no attempt go before then. Claimed ones
    /// only have their claim lengthened.
    pub async fn postpone_retries(&self, subscription_id: &str, at: Millis) -> Result<()> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE retries SET next_attempt_at = $1 \
             WHERE subscription_id = $2 AND dead_at IS NULL AND next_attempt_at < $1"
        )
        .bind(at)
        .bind(subscription_id)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// When the earliest pending retry is due.
    pub async fn next_retry_at(&self) -> Result<Option<Millis>> {
        Ok(on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT MIN(r.next_attempt_at) FROM retries r \
             JOIN subscriptions s ON s.id = r.subscription_id \
             WHERE r.dead_at IS NULL AND s.disabled_at IS NULL",
        )
        .fetch_one(pool)
        .await?))
    }

    pub async fn pending_retry_count(&self) -> Result<i64> {
        Ok(on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM retries WHERE dead_at IS NULL"
        )
        .fetch_one(pool)
        .await?))
    }

    /// The retry set per subscription, for the metrics: waiting entries, those due at
    /// `now`, dead letters, and when the oldest waiting event was committed. One grouped
    /// read per metrics pass, whatever the number of subscriptions.
    pub async fn retry_set_by_subscription(&self, now: Millis) -> Result<Vec<RetrySetCount>> {
        let rows: Vec<(String, i64, i64, i64, Option<i64>)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT r.subscription_id, \
                        COUNT(CASE WHEN r.dead_at IS NULL THEN 1 END), \
                        COUNT(CASE WHEN r.dead_at IS NULL AND r.next_attempt_at <= $1 THEN 1 END), \
                        COUNT(CASE WHEN r.dead_at IS NOT NULL THEN 1 END), \
                        MIN(CASE WHEN r.dead_at IS NULL THEN e.received_at END) \
                 FROM retries r LEFT JOIN events e ON e.seq = r.seq \
                 GROUP BY r.subscription_id",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(subscription_id, waiting, due, dead, oldest_received_at)| RetrySetCount {
                    subscription_id,
                    waiting,
                    due,
                    dead,
                    oldest_received_at,
                },
            )
            .collect())
    }

    /// With SQLite: the database file (the metrics report the free space of its disk).
    pub async fn database_file(&self) -> Result<Option<std::path::PathBuf>> {
        let Pool::Sqlite(pool) = &self.pool else {
            return Ok(None);
        };
        let files: Vec<(i64, String, String)> = sqlx::query_as("PRAGMA database_list")
            .fetch_all(pool)
            .await?;
        Ok(files
            .into_iter()
            .find(|(_, name, file)| name == "main" && !file.is_empty())
            .map(|(_, _, file)| std::path::PathBuf::from(file)))
    }

    /// Attempt records of a subscription, newest first.
    pub async fn list_attempts(
        &self,
        subscription_id: &str,
        before: Option<i64>,
        limit_to: u32,
    ) -> Result<Vec<StoredAttempt>> {
        let rows: Vec<AttemptRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT * FROM attempts WHERE subscription_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(subscription_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit(limit_to))
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(StoredAttempt::from).collect())
    }

    /// The retry set of a subscription (pending retries and dead letters), oldest first.
    pub async fn list_retries(
        &self,
        subscription_id: &str,
        limit_to: u32,
    ) -> Result<Vec<RetryEntry>> {
        let rows: Vec<RetryRow> = on_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT r.seq, r.resync_id, e.event_id, r.attempts, r.next_attempt_at, r.last_error, \
             r.dead_at FROM retries r JOIN events e ON e.seq = r.seq \
             WHERE r.subscription_id = $1 ORDER BY r.seq, r.resync_id LIMIT $2",
        )
        .bind(subscription_id)
        .bind(limit(limit_to))
        .fetch_all(pool)
        .await?
        });
        Ok(rows.into_iter().map(RetryEntry::from).collect())
    }

    /// Stores a key by its hash.
    pub async fn insert_key(&self, hash: &str, key: &ApiKey) -> Result<()> {
        let account = match &key.owner {
            KeyOwner::Admin => None,
            KeyOwner::Account(account) => Some(account.as_str()),
        };
        let scopes: Vec<&str> = key.scopes.iter().map(|scope| scope.as_str()).collect();
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO api_keys (hash, id, account, name, scopes, events, topics, prefix, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )
        .bind(hash)
        .bind(&key.id)
        .bind(account)
        .bind(&key.name)
        .bind(to_json(&scopes))
        .bind(key_list(&key.events))
        .bind(key_list(&key.topics))
        .bind(&key.prefix)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// The key whose hash this is (expired or not).
    pub async fn find_key(&self, hash: &str) -> Result<Option<ApiKey>> {
        let row: Option<KeyRow> = on_pool!(self, |pool| sqlx::query_as(keys_where!("hash = $1"))
            .bind(hash)
            .fetch_optional(pool)
            .await?);
        row.map(ApiKey::try_from).transpose()
    }

    /// An account's keys, oldest first.
    pub async fn list_keys(&self, account: &str) -> Result<Vec<ApiKey>> {
        let rows: Vec<KeyRow> = on_pool!(self, |pool| sqlx::query_as(keys_where!(
            "account = $1 ORDER BY created_at, id"
        ))
        .bind(account)
        .fetch_all(pool)
        .await?);
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    /// Revokes (deletes) an account's key; returns its hash, or `None` if the account
    /// has no such key.
    pub async fn delete_key(&self, account: &str, id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, |pool| sqlx::query_scalar(
            "DELETE FROM api_keys WHERE account = $1 AND id = $2 RETURNING hash"
        )
        .bind(account)
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    /// With PostgreSQL: tells every node that the key with this hash was revoked, so
    /// they drop it from their caches at once. Nothing to do with SQLite (one server).
    pub async fn announce_revoked(&self, hash: &str) -> Result<()> {
        if let Pool::Postgres(pool) = &self.pool {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(REVOKED_CHANNEL)
                .bind(hash)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// With PostgreSQL: a connection that receives the hashes of revoked keys
    /// ([`Database::announce_revoked`]); `None` with SQLite.
    pub async fn listen_revoked(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(REVOKED_CHANNEL).await?;
        // A lost connection is reported (and listened again) rather than hidden.
        listener.eager_reconnect(false);
        Ok(Some(listener))
    }

    /// Records that a key was used at `at` (called at most about once a minute a key).
    pub async fn key_used(&self, hash: &str, at: Millis) -> Result<()> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE api_keys SET last_used_at = $1 WHERE hash = $2"
        )
        .bind(at)
        .bind(hash)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Admin token rotation: the stored admin tokens stop working at `until` (those
    /// that end sooner keep their end), and `hash` becomes a new one, in one transaction.
    pub async fn rotate_admin_key(&self, hash: &str, key: &ApiKey, until: Millis) -> Result<()> {
        let scopes: Vec<&str> = key.scopes.iter().map(|scope| scope.as_str()).collect();
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE api_keys SET expires_at = $1 WHERE account IS NULL \
                 AND (expires_at IS NULL OR expires_at > $1)",
            )
            .bind(until)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO api_keys (hash, id, account, name, scopes, prefix, created_at) \
                 VALUES ($1, $2, NULL, $3, $4, $5, $6)",
            )
            .bind(hash)
            .bind(&key.id)
            .bind(&key.name)
            .bind(to_json(&scopes))
            .bind(&key.prefix)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn has_admin_key(&self) -> Result<bool> {
        let count: i64 = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE account IS NULL"
        )
        .fetch_one(pool)
        .await?);
        Ok(count > 0)
    }

    /// Sets (replaces) an account's user-token verification.
    pub async fn put_token_verification(&self, settings: &TokenVerification) -> Result<()> {
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO token_verification (account, hs256_secret, public_keys, issuer, \
             audience, leeway_seconds, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (account) DO UPDATE SET hs256_secret = excluded.hs256_secret, \
             public_keys = excluded.public_keys, issuer = excluded.issuer, \
             audience = excluded.audience, leeway_seconds = excluded.leeway_seconds, \
             updated_at = excluded.updated_at",
        )
        .bind(&settings.account)
        .bind(
            settings
                .hs256_secret
                .as_deref()
                .map(|s| self.sealer.seal(s))
        )
        .bind(to_json(&settings.public_keys))
        .bind(&settings.issuer)
        .bind(&settings.audience)
        .bind(i64::try_from(settings.leeway_seconds).unwrap_or(i64::MAX))
        .bind(settings.updated_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    pub async fn get_token_verification(&self, account: &str) -> Result<Option<TokenVerification>> {
        let row: Option<TokenVerificationRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT account, hs256_secret, public_keys, issuer, audience, leeway_seconds, \
             updated_at FROM token_verification WHERE account = $1",
        )
        .bind(account)
        .fetch_optional(pool)
        .await?);
        let Some(row) = row else {
            return Ok(None);
        };
        let mut settings = TokenVerification::try_from(row)?;
        settings.hs256_secret = self.sealer.open_optional(settings.hs256_secret)?;
        Ok(Some(settings))
    }

    /// Removes an account's user-token verification; says whether there was one.
    pub async fn delete_token_verification(&self, account: &str) -> Result<bool> {
        let deleted = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM token_verification WHERE account = $1"
        )
        .bind(account)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(deleted > 0)
    }

    /// The server secret called `name`: `candidate` becomes it if it has none yet, so
    /// it is generated once and then kept, whichever process starts first.
    pub async fn server_secret(&self, name: &str, candidate: &str, now: Millis) -> Result<String> {
        let candidate = self.sealer.seal(candidate);
        let stored: String = on_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(candidate)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?
        });
        self.sealer.open(&stored)
    }

    /// Copies the SQLite WAL back into the database (see [`sqlite::checkpoint`]);
    /// nothing to do for PostgreSQL. Returns whether to call again soon.
    pub async fn checkpoint(&self) -> Result<bool> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::checkpoint(pool).await,
            Pool::Postgres(_) => Ok(false),
        }
    }
}

/// How long a PostgreSQL statement may run before the server cancels it: a stuck query
/// must turn into an error (and a `503`), not a request that hangs.
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
