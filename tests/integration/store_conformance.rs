//! The store's conformance suite: the same cases against the store's own interface
//! (`reelay::store`, no server), on whichever backend the suite runs: SQLite, and
//! PostgreSQL in the suite's PostgreSQL run (`scripts/test` sets
//! `REELAY_TEST_POSTGRES_URL`; each case gets a schema of its own). The two backends run
//! different code for the hot path (an in-process SQLite connection, batched PostgreSQL
//! statements), and must agree on what a user of the store sees: appended events read
//! back in order, duplicates stored once, cursors and progress, the retry set, attempt
//! records, and what retention removes and keeps.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use reelay::model::{
    Destination, DisabledReason, Document, EntityChange, EventFilter, Format, Millis, NewEvent,
    NewSubscription, StoredEvent, Subscription, SubscriptionKind, now_millis,
};
use reelay::store::{
    Appended, AttemptRecord, Backend, Derivation, EventQuery, Health, PageSize, Progress,
    ResyncPosition, ResyncProgress, ResyncRun, RetentionPolicy, RetentionState, RetryState,
    RetryUpdate, SecretKey, Store, StoreOptions,
};
use tokio_util::task::TaskTracker;

use crate::app::{TEST_SECRET_KEY, scratch_database};

const ACCOUNT: &str = "conformance";
const DAY: Millis = 86_400_000;
const ALL: PageSize = PageSize {
    rows: 10_000,
    bytes: 64 << 20,
};

/// A store on a scratch database of the suite's backend.
struct Scratch {
    store: Store,
    _dir: tempfile::TempDir,
}

impl Scratch {
    async fn open() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = scratch_database(dir.path()).await;
        let options = StoreOptions {
            node_id: Some("conformance-node".into()),
            secret_key: SecretKey::Given(TEST_SECRET_KEY.into()),
            ..StoreOptions::default()
        };
        let derivation = Derivation {
            video_change_topic: "video-changes".into(),
        };
        let store = Store::open(&url, &options, derivation, &TaskTracker::new())
            .await
            .unwrap_or_else(|error| panic!("open the store on {url}: {error}"));
        assert_eq!(store.db().backend(), Backend::of(&url));
        Scratch { store, _dir: dir }
    }

    async fn append(&self, events: Vec<NewEvent>) -> Vec<Appended> {
        self.store.append(events).await.expect("append")
    }

    /// Appends events that must all be new; returns them as stored.
    async fn append_new(&self, events: Vec<NewEvent>) -> Vec<Arc<StoredEvent>> {
        self.append(events)
            .await
            .into_iter()
            .map(|appended| match appended {
                Appended::Stored(event) => event,
                Appended::Duplicate { id } => panic!("{id} taken as a duplicate"),
            })
            .collect()
    }

    /// The whole log, in order.
    async fn log(&self) -> Vec<StoredEvent> {
        let head = self.store.db().head().await.expect("head");
        self.store
            .db()
            .log_range(0, head, ALL)
            .await
            .expect("log_range")
    }

    /// The ids of the account's events in the log.
    async fn ids(&self, account: &str) -> BTreeSet<String> {
        self.log()
            .await
            .into_iter()
            .filter(|event| event.account == account)
            .map(|event| event.id)
            .collect()
    }

    /// Stores a webhook subscription of `account` with `filter`, from `cursor`; with
    /// PostgreSQL this node takes its lease, as the node delivering it would (progress is
    /// only saved for a subscription the node holds).
    async fn subscribe(&self, account: &str, id: &str, filter: EventFilter, cursor: i64) {
        let subscription = NewSubscription {
            id: id.into(),
            account: account.into(),
            kind: SubscriptionKind::Standing,
            destination: Destination::from_endpoint("https://example.com/hook".into()),
            filter,
            payload_filter: None,
            transform: None,
            rate_limit: None,
            ordering: reelay::model::Ordering::None,
            format: Format::Native,
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            public_key: None,
        };
        let db = self.store.db();
        db.insert_subscription(&subscription, cursor, now_millis())
            .await
            .expect("insert subscription");
        if let Some(cluster) = db.cluster() {
            let now = now_millis();
            assert!(
                cluster
                    .claim_one(id, now, now + 10 * DAY)
                    .await
                    .expect("claim")
            );
        }
    }

    async fn subscription(&self, id: &str) -> Subscription {
        self.store
            .db()
            .subscription_by_id(id)
            .await
            .expect("read subscription")
            .expect("the subscription exists")
    }

    /// Saves a progress report through the log writer and waits until it is committed.
    async fn report(&self, progress: Progress) {
        self.store.record_progress(progress).await.expect("queue");
        self.store.flush().await.expect("flush");
    }

    async fn retry(&self, subscription: &str, seq: i64, state: RetryState) {
        self.report(Progress {
            subscription_id: subscription.into(),
            retries: vec![RetryUpdate {
                seq,
                resync_id: None,
                state,
            }],
            ..Progress::default()
        })
        .await;
    }

    async fn move_cursor(&self, subscription: &str, cursor: i64) {
        self.report(Progress {
            subscription_id: subscription.into(),
            cursor: Some(cursor),
            ..Progress::default()
        })
        .await;
    }
}

fn event(account: &str, id: &str, name: &str, topic: &str) -> NewEvent {
    NewEvent {
        account: account.into(),
        id: id.into(),
        name: name.into(),
        topic: topic.into(),
        entity_key: None,
        video: None,
        entity: None,
        occurred_at: 1_700_000_000_000,
        body: Document::from(format!(
            r#"{{"guid":"{id}","eventName":"{name}","note":"ünïcödé ✓"}}"#
        )),
        trace: None,
    }
}

fn player(id: &str) -> NewEvent {
    event(ACCOUNT, id, "player_log_event", "player")
}

/// An event that sets (or deletes) a catalog entity's state.
fn entity_event(id: &str, name: &str, entity_type: &str, entity: &str, deleted: bool) -> NewEvent {
    NewEvent {
        entity_key: Some(entity.into()),
        entity: Some(EntityChange {
            entity_type: entity_type.into(),
            id: entity.into(),
            deleted,
        }),
        ..event(ACCOUNT, id, name, "catalog")
    }
}

fn topics(topics: &[&str]) -> EventFilter {
    EventFilter {
        events: vec![],
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

fn names(names: &[&str]) -> EventFilter {
    EventFilter {
        events: names.iter().map(|n| n.to_string()).collect(),
        topics: vec![],
    }
}

/// An entity as a page lists it: its id, the id of the event that set it, deleted.
fn entity(id: &str, event: &str, deleted: bool) -> (String, String, bool) {
    (id.into(), event.into(), deleted)
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// Events kept a day, deletions a week more, attempt records a day; a disabled
/// subscription holds events back for an hour.
fn policy() -> RetentionPolicy {
    RetentionPolicy {
        retention: Some(Duration::from_secs(86_400)),
        retention_bytes: None,
        topics: HashMap::new(),
        tombstone_retention: Duration::from_secs(7 * 86_400),
        grace: Duration::from_secs(3_600),
        attempt_retention: Duration::from_secs(86_400),
        interval: Duration::from_secs(30),
    }
}

/// A retention pass as it runs `days` from now, looking at the whole log (a full sweep:
/// each pass of a fresh state is one).
async fn retention_pass(scratch: &Scratch, days: i64) -> reelay::store::PassReport {
    scratch
        .store
        .db()
        .retention_pass(
            &policy(),
            &mut RetentionState::default(),
            now_millis() + days * DAY,
        )
        .await
        .expect("retention pass")
}

fn attempt(seq: i64, attempt: u32, at: Millis, outcome: &'static str) -> AttemptRecord {
    AttemptRecord {
        seq,
        event_id: format!("event-{seq}"),
        resync_id: None,
        attempt,
        at,
        outcome,
        status: Some(500),
        error: Some(format!("attempt {attempt} failed")),
        latency_ms: 12,
        response: Some("{\"error\":\"ünavailable\"}".into()),
        next_attempt_at: Some(at + 1_000),
    }
}

#[tokio::test]
async fn appended_events_read_back_in_order_as_published() {
    let s = Scratch::open().await;
    let before = now_millis();
    let first = s
        .append_new(vec![player("a-1"), player("a-2"), player("a-3")])
        .await;
    // Two publishers at once: each request's events keep their order.
    let (one, two) = tokio::join!(
        s.append_new(vec![player("b-1"), player("b-2")]),
        s.append_new(vec![
            event(ACCOUNT, "c-1", "asset-updated", "catalog"),
            event("other", "o-1", "player_log_event", "player"),
        ]),
    );
    for events in [&first, &one, &two] {
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "{events:?}");
    }
    let head = s.store.db().head().await.expect("head");
    let log = s.log().await;
    assert_eq!(log.len(), 7);
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq), "in log order");
    assert_eq!(log.last().map(|e| e.seq), Some(head));
    for stored in first.iter().chain(&one).chain(&two) {
        let read = log
            .iter()
            .find(|e| e.seq == stored.seq)
            .expect("in the log");
        assert_eq!(read, stored.as_ref(), "read back as it was committed");
        assert!(read.received_at >= before && read.received_at <= now_millis());
        assert_eq!(read.occurred_at, 1_700_000_000_000);
    }
    assert!(log[0].body.as_str().contains("ünïcödé ✓"));

    // One account's events, after a position; by id; by topic.
    let db = s.store.db();
    let after = db
        .events_after(ACCOUNT, first[0].seq, head, ALL)
        .await
        .expect("events_after");
    let ids: Vec<&str> = after.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(!ids.contains(&"a-1") && !ids.contains(&"o-1"), "{ids:?}");
    assert_eq!(
        db.event_by_id(ACCOUNT, "b-2")
            .await
            .expect("by id")
            .as_ref(),
        Some(one[1].as_ref())
    );
    assert_eq!(db.event_by_id(ACCOUNT, "o-1").await.expect("by id"), None);
    let catalog = db
        .query_events(
            ACCOUNT,
            &EventQuery {
                topic: Some("catalog".into()),
                limit: 100,
                ..EventQuery::default()
            },
            1 << 20,
        )
        .await
        .expect("query");
    assert_eq!(
        catalog.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["c-1"]
    );
    // A page ends at its row bound.
    let page = db
        .log_range(0, head, PageSize { rows: 2, ..ALL })
        .await
        .expect("page");
    assert_eq!(page, log[..2]);
}

#[tokio::test]
async fn a_repeated_id_is_a_duplicate_and_stored_once() {
    let s = Scratch::open().await;
    let first = s.append_new(vec![player("x")]).await;
    let mut again = player("x");
    again.body = Document::from(r#"{"guid":"x","changed":true}"#);
    let answer = s.append(vec![again, player("y")]).await;
    assert_eq!(answer[0], Appended::Duplicate { id: "x".into() });
    assert!(matches!(&answer[1], Appended::Stored(e) if e.id == "y"));
    // Twice in one request: the second is the duplicate.
    let answer = s.append(vec![player("z"), player("z")]).await;
    assert!(matches!(&answer[0], Appended::Stored(e) if e.id == "z"));
    assert_eq!(answer[1], Appended::Duplicate { id: "z".into() });
    // Ids are per account.
    s.append_new(vec![event("other", "x", "player_log_event", "player")])
        .await;

    assert_eq!(s.ids(ACCOUNT).await, set(&["x", "y", "z"]));
    assert_eq!(s.ids("other").await, set(&["x"]));
    let kept = s
        .store
        .db()
        .event_by_id(ACCOUNT, "x")
        .await
        .expect("by id")
        .expect("stored");
    assert_eq!(kept, *first[0], "the first one stays as it was");
}

#[tokio::test]
async fn an_event_that_changes_a_video_is_followed_by_its_next_version() {
    let s = Scratch::open().await;
    let mut changes = Vec::new();
    for n in 1..=2 {
        let mut cause = event(ACCOUNT, &format!("v-{n}"), "asset-updated", "catalog");
        cause.video = Some("video-7".into());
        let stored = s.append_new(vec![cause]).await;
        changes.push(stored[0].seq);
    }
    let log = s.log().await;
    let versions: Vec<(i64, i64)> = log
        .iter()
        .filter(|e| e.topic == "video-changes")
        .map(|e| {
            let body: serde_json::Value = serde_json::from_str(e.body.as_str()).expect("JSON");
            assert_eq!(body["video"], "video-7");
            (e.seq, body["version"].as_i64().expect("version"))
        })
        .collect();
    // Each change right after its cause, the versions counting up from 1.
    assert_eq!(
        versions,
        vec![(changes[0] + 1, 1), (changes[1] + 1, 2)],
        "{log:?}"
    );
}

#[tokio::test]
async fn one_commit_numbers_each_videos_versions_in_log_order_and_duplicates_take_none() {
    let s = Scratch::open().await;
    let change = |id: &str, video: &str| {
        let mut cause = event(ACCOUNT, id, "asset-updated", "catalog");
        cause.video = Some(video.into());
        cause
    };
    // One request, so one commit: two changes of video-7 around one of video-8, and a
    // repeat of the first id, which is a duplicate and takes no version.
    let answer = s
        .append(vec![
            change("a", "video-7"),
            change("b", "video-8"),
            change("c", "video-7"),
            change("a", "video-7"),
        ])
        .await;
    assert_eq!(answer[3], Appended::Duplicate { id: "a".into() });
    // A later commit: an id stored already takes no version either.
    s.append(vec![change("b", "video-8"), change("d", "video-7")])
        .await;

    let log = s.log().await;
    let versions: Vec<(String, i64, i64)> = log
        .iter()
        .filter(|e| e.topic == "video-changes")
        .map(|e| {
            let body: serde_json::Value = serde_json::from_str(e.body.as_str()).expect("JSON");
            let cause = log
                .iter()
                .find(|c| c.seq == e.seq - 1)
                .expect("the cause right before its change");
            (
                format!("{}:{}", cause.id, body["video"].as_str().expect("video")),
                body["version"].as_i64().expect("version"),
                e.seq - cause.seq,
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            ("a:video-7".to_owned(), 1, 1),
            ("b:video-8".to_owned(), 1, 1),
            ("c:video-7".to_owned(), 2, 1),
            ("d:video-7".to_owned(), 3, 1),
        ],
        "{log:?}"
    );
}

#[tokio::test]
async fn progress_moves_the_cursor_and_keeps_the_count_and_the_health() {
    let s = Scratch::open().await;
    let events = s.append_new(vec![player("p-1"), player("p-2")]).await;
    s.subscribe(ACCOUNT, "sub", topics(&["player"]), 0).await;
    let at = now_millis();
    s.report(Progress {
        subscription_id: "sub".into(),
        cursor: Some(events[1].seq),
        delivered: 2,
        health: Some(Health::Succeeded { at }),
        ..Progress::default()
    })
    .await;
    let sub = s.subscription("sub").await;
    assert_eq!(
        (
            sub.cursor,
            sub.delivered,
            sub.last_success_at,
            sub.failing_since
        ),
        (events[1].seq, 2, Some(at), None)
    );
    // Failures: the run of failures starts at the first; no cursor keeps the cursor.
    for failed in [at + 10, at + 20] {
        s.report(Progress {
            subscription_id: "sub".into(),
            delivered: 1,
            health: Some(Health::Failed { at: failed }),
            ..Progress::default()
        })
        .await;
    }
    let sub = s.subscription("sub").await;
    assert_eq!(
        (
            sub.cursor,
            sub.delivered,
            sub.last_success_at,
            sub.failing_since
        ),
        (events[1].seq, 4, Some(at), Some(at + 10))
    );
    s.report(Progress {
        subscription_id: "sub".into(),
        health: Some(Health::Succeeded { at: at + 30 }),
        ..Progress::default()
    })
    .await;
    let sub = s.subscription("sub").await;
    assert_eq!(
        (sub.last_success_at, sub.failing_since),
        (Some(at + 30), None)
    );

    // A resync run's position is saved with the report.
    let run = ResyncRun {
        id: "run-1".into(),
        subscription_id: "sub".into(),
        account: ACCOUNT.into(),
        types: vec!["asset".into()],
        snapshot_seq: events[1].seq,
        total: 10,
        sent: 0,
        position: Some(ResyncPosition {
            entity_type: "asset".into(),
            after_id: String::new(),
        }),
        started_at: at,
        completed_at: None,
    };
    assert!(
        s.store
            .db()
            .insert_resync_run(&run)
            .await
            .expect("insert run")
    );
    let position = ResyncPosition {
        entity_type: "asset".into(),
        after_id: "42".into(),
    };
    s.report(Progress {
        subscription_id: "sub".into(),
        resync: Some(Box::new(ResyncProgress {
            id: "run-1".into(),
            sent: 5,
            position: Some(position.clone()),
            completed_at: None,
        })),
        ..Progress::default()
    })
    .await;
    let saved = s
        .store
        .db()
        .latest_resync_run("sub")
        .await
        .expect("read run")
        .expect("the run");
    assert_eq!((saved.sent, saved.position), (5, Some(position)));

    // Disabled once: a later reason does not replace the first.
    for reason in ["gone", "later"] {
        s.report(Progress {
            subscription_id: "sub".into(),
            disable: Some(DisabledReason::EndpointGone(reason.into())),
            ..Progress::default()
        })
        .await;
    }
    let sub = s.subscription("sub").await;
    assert_eq!(
        sub.disabled,
        Some(DisabledReason::EndpointGone("gone".into()))
    );
    assert!(sub.disabled_at.is_some_and(|t| t >= at));
}

#[tokio::test]
async fn the_last_report_of_a_deleted_subscription_is_dropped() {
    let s = Scratch::open().await;
    let events = s.append_new(vec![player("p-1")]).await;
    s.subscribe(ACCOUNT, "sub", topics(&["player"]), 0).await;
    assert!(
        s.store
            .db()
            .delete_subscription(ACCOUNT, "sub")
            .await
            .expect("delete")
    );
    s.report(Progress {
        subscription_id: "sub".into(),
        cursor: Some(events[0].seq),
        attempts: vec![attempt(events[0].seq, 1, now_millis(), "failed")],
        retries: vec![RetryUpdate {
            seq: events[0].seq,
            resync_id: None,
            state: RetryState::Scheduled {
                attempts: 1,
                next_attempt_at: now_millis(),
                error: "500".into(),
            },
        }],
        ..Progress::default()
    })
    .await;
    let db = s.store.db();
    assert!(
        db.retries_of_event(events[0].seq)
            .await
            .expect("retries")
            .is_empty()
    );
    assert!(
        db.attempts_of_event(events[0].seq)
            .await
            .expect("attempts")
            .is_empty()
    );
    assert_eq!(db.pending_retry_count().await.expect("count"), 0);
}

#[tokio::test]
async fn the_retry_set_schedules_claims_buries_and_clears() {
    let s = Scratch::open().await;
    let events = s.append_new(vec![player("r-1"), player("r-2")]).await;
    let seq = events[0].seq;
    s.subscribe(ACCOUNT, "sub", topics(&["player"]), events[1].seq)
        .await;
    let db = s.store.db();
    let now = now_millis();
    s.retry(
        "sub",
        seq,
        RetryState::Scheduled {
            attempts: 1,
            next_attempt_at: now - 1_000,
            error: "HTTP 500".into(),
        },
    )
    .await;
    let entries = db.list_retries("sub", 10).await.expect("list");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(
        (entry.seq, entry.event_id.as_str(), entry.attempts),
        (seq, "r-1", 1)
    );
    assert_eq!(
        (
            entry.next_attempt_at,
            entry.last_error.as_str(),
            entry.dead_at
        ),
        (now - 1_000, "HTTP 500", None)
    );
    assert_eq!(db.pending_retry_count().await.expect("count"), 1);
    assert_eq!(db.next_retry_at().await.expect("next"), Some(now - 1_000));
    let of_event = db.retries_of_event(seq).await.expect("of event");
    assert_eq!(of_event.len(), 1);
    assert_eq!(of_event[0].subscription_id, "sub");

    // Claimed once: its next attempt moves to the claim's end, and it is not due again.
    let claimed = db
        .claim_due_retries(now, now + 30_000, 10, 10, &HashMap::new())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].subscription_id.as_str(),
            claimed[0].seq,
            claimed[0].attempts
        ),
        ("sub", seq, 1)
    );
    assert_eq!(claimed[0].resync_id, None);
    let again = db
        .claim_due_retries(now, now + 30_000, 10, 10, &HashMap::new())
        .await
        .expect("claim again");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(
        db.list_retries("sub", 10).await.expect("list")[0].next_attempt_at,
        now + 30_000
    );
    // A subscription's share: with one in flight and a share of one, nothing is taken.
    db.unclaim_retry(&claimed[0], now - 500)
        .await
        .expect("unclaim");
    let busy = HashMap::from([("sub".to_owned(), 1)]);
    let none = db
        .claim_due_retries(now, now + 30_000, 10, 1, &busy)
        .await
        .expect("claim within share");
    assert!(none.is_empty(), "{none:?}");

    // Out of retries: a dead letter, counted as such and never claimed.
    s.retry(
        "sub",
        seq,
        RetryState::Dead {
            attempts: 3,
            error: "HTTP 503".into(),
        },
    )
    .await;
    let dead = &db.list_retries("sub", 10).await.expect("list")[0];
    assert_eq!((dead.attempts, dead.last_error.as_str()), (3, "HTTP 503"));
    assert!(dead.dead_at.is_some());
    assert_eq!(
        db.retry_counts(Some(ACCOUNT)).await.expect("counts"),
        (0, 1)
    );
    assert_eq!(
        db.retry_counts(Some("other")).await.expect("counts"),
        (0, 0)
    );
    assert!(
        db.claim_due_retries(now + DAY, now + DAY, 10, 10, &HashMap::new())
            .await
            .expect("claim")
            .is_empty()
    );
    // Retried by hand: pending again.
    assert_eq!(db.redeliver("sub", None, now).await.expect("redeliver"), 1);
    assert_eq!(
        db.retry_counts(Some(ACCOUNT)).await.expect("counts"),
        (1, 0)
    );

    // A resync's delivery of the same event is an entry of its own.
    s.report(Progress {
        subscription_id: "sub".into(),
        retries: vec![RetryUpdate {
            seq,
            resync_id: Some("run-1".into()),
            state: RetryState::Scheduled {
                attempts: 1,
                next_attempt_at: now + DAY,
                error: "HTTP 502".into(),
            },
        }],
        ..Progress::default()
    })
    .await;
    let entries = db.list_retries("sub", 10).await.expect("list");
    assert_eq!(
        entries
            .iter()
            .map(|e| e.resync_id.clone())
            .collect::<Vec<_>>(),
        [None, Some("run-1".to_owned())]
    );
    // Delivered: the incremental entry goes, the resync's stays.
    s.retry("sub", seq, RetryState::Delivered).await;
    let entries = db.list_retries("sub", 10).await.expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].resync_id.as_deref(), Some("run-1"));
    assert_eq!(
        db.retry_counts(Some(ACCOUNT)).await.expect("counts"),
        (1, 0)
    );
}

#[tokio::test]
async fn attempt_records_read_back_newest_first() {
    let s = Scratch::open().await;
    let events = s.append_new(vec![player("t-1")]).await;
    let seq = events[0].seq;
    s.subscribe(ACCOUNT, "sub", topics(&["player"]), seq).await;
    let now = now_millis();
    let first = attempt(seq, 1, now, "failed");
    let mut second = attempt(seq, 2, now + 1_000, "dead");
    second.status = None;
    second.error = Some("timed out".into());
    second.response = None;
    second.next_attempt_at = None;
    let mut resync = attempt(seq, 1, now + 2_000, "failed");
    resync.resync_id = Some("run-1".into());
    s.report(Progress {
        subscription_id: "sub".into(),
        attempts: vec![first.clone(), second.clone(), resync.clone()],
        ..Progress::default()
    })
    .await;
    let db = s.store.db();
    let listed = db.list_attempts("sub", None, 10).await.expect("list");
    let records: Vec<AttemptRecord> = listed.iter().map(|a| a.record.clone()).collect();
    assert_eq!(records, [resync, second.clone(), first.clone()]);
    assert!(listed.windows(2).all(|w| w[0].id > w[1].id));
    // Paged by id.
    let older = db
        .list_attempts("sub", Some(listed[1].id), 10)
        .await
        .expect("older");
    let older: Vec<&AttemptRecord> = older.iter().map(|a| &a.record).collect();
    assert_eq!(older, [&first]);
    // One event's incremental deliveries, oldest first.
    let of_event = db.attempts_of_event(seq).await.expect("of event");
    assert_eq!(
        of_event
            .iter()
            .map(|(sub, a)| (sub.as_str(), a.record.clone()))
            .collect::<Vec<_>>(),
        [("sub", first), ("sub", second)]
    );
}

#[tokio::test]
async fn retention_removes_what_was_delivered_and_keeps_what_a_lagging_subscription_wants() {
    let s = Scratch::open().await;
    // `current` takes every player event; `lagging` wants playback events and has
    // received none; `gone` wants the quiet topic, and was disabled long enough ago.
    s.subscribe(ACCOUNT, "current", topics(&["player"]), 0)
        .await;
    s.subscribe(ACCOUNT, "lagging", names(&["playback"]), 0)
        .await;
    s.subscribe(ACCOUNT, "gone", topics(&["quiet"]), 0).await;
    // Another account's subscription that is down holds back its own events only.
    s.subscribe("other", "down", topics(&["player"]), 0).await;
    let mut published = vec![player("p-1"), player("p-2")];
    published.push(event(ACCOUNT, "b-1", "playback", "player"));
    published.push(player("p-3"));
    published.push(event(ACCOUNT, "q-1", "quiet-event", "quiet"));
    published.push(event("other", "o-1", "player_log_event", "player"));
    published.push(event(ACCOUNT, "fresh", "player_log_event", "player"));
    let stored = s.append_new(published).await;
    let seq = |id: &str| stored.iter().find(|e| e.id == id).expect("stored").seq;
    let head = seq("fresh");
    s.move_cursor("current", head).await;
    s.report(Progress {
        subscription_id: "gone".into(),
        disable: Some(DisabledReason::Manual("paused".into())),
        ..Progress::default()
    })
    .await;

    // Not past retention yet: nothing goes.
    let report = retention_pass(&s, 0).await;
    assert_eq!(report.removed_events, 0, "{report:?}");
    assert_eq!(s.store.db().retention_mark(ACCOUNT).await.expect("mark"), 0);

    let report = retention_pass(&s, 2).await;
    assert_eq!(
        s.ids(ACCOUNT).await,
        set(&["b-1", "fresh"]),
        "delivered (or wanted by no one that still holds) goes; lagging's event and the head stay"
    );
    assert_eq!(s.ids("other").await, set(&["o-1"]));
    assert_eq!(report.removed_events, 4, "{report:?}");
    assert_eq!(report.held, 2, "b-1 and o-1: {report:?}");
    // The account's log is whole after the last position removed (`oldestSequence` is
    // the one after it); the other account's log is whole.
    let db = s.store.db();
    assert_eq!(db.retention_mark(ACCOUNT).await.expect("mark"), seq("q-1"));
    assert_eq!(db.retention_mark("other").await.expect("mark"), 0);
    // What the lagging subscription catches up from is all there.
    let wanted = db
        .events_after(ACCOUNT, 0, head, ALL)
        .await
        .expect("events_after");
    assert_eq!(
        wanted.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["b-1", "fresh"]
    );

    // Once it has received it, it goes too.
    s.move_cursor("lagging", head).await;
    let report = retention_pass(&s, 2).await;
    assert_eq!(report.removed_events, 1, "{report:?}");
    assert_eq!(s.ids(ACCOUNT).await, set(&["fresh"]));
    // The mark never moves back (b-1 was before q-1).
    assert_eq!(db.retention_mark(ACCOUNT).await.expect("mark"), seq("q-1"));
    assert_eq!(s.ids("other").await, set(&["o-1"]));
}

#[tokio::test]
async fn compaction_keeps_the_latest_event_of_every_entity() {
    let s = Scratch::open().await;
    s.append_new(vec![
        entity_event("c-1", "asset-created", "asset", "1", false),
        entity_event("c-2", "asset-created", "asset", "2", false),
        entity_event("x-9", "category-created", "category", "9", false),
    ])
    .await;
    s.append_new(vec![
        entity_event("u-1", "asset-updated", "asset", "1", false),
        entity_event("d-2", "asset-deleted", "asset", "2", true),
        player("head"),
    ])
    .await;

    let report = retention_pass(&s, 2).await;
    assert_eq!(s.ids(ACCOUNT).await, set(&["u-1", "d-2", "x-9", "head"]));
    assert_eq!(
        (report.removed_events, report.kept_entities),
        (2, 3),
        "{report:?}"
    );
    let db = s.store.db();
    let entities = |live: bool| async move {
        let page = if live {
            db.live_entities(ACCOUNT, "asset", "", ALL).await
        } else {
            db.list_entities(ACCOUNT, "asset", "", ALL).await
        };
        page.expect("entities")
            .into_iter()
            .map(|e| (e.id, e.event.id, e.deleted))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        entities(false).await,
        [entity("1", "u-1", false), entity("2", "d-2", true)]
    );
    assert_eq!(entities(true).await, [entity("1", "u-1", false)]);

    // Past the deletion's own retention too: the deletion and its entity go, the live
    // entities' latest events stay whatever their age.
    let report = retention_pass(&s, 10).await;
    assert_eq!(report.removed_tombstones, 1, "{report:?}");
    assert_eq!(s.ids(ACCOUNT).await, set(&["u-1", "x-9", "head"]));
    assert_eq!(entities(false).await, [entity("1", "u-1", false)]);
    let category = db
        .get_entity(ACCOUNT, "category", "9")
        .await
        .expect("entity")
        .expect("kept");
    assert_eq!(category.event.id, "x-9");
}

#[tokio::test]
async fn retried_events_stay_and_attempt_records_have_their_own_retention() {
    let s = Scratch::open().await;
    let stored = s
        .append_new(vec![player("dead"), player("pending"), player("head")])
        .await;
    let (dead, pending, head) = (stored[0].seq, stored[1].seq, stored[2].seq);
    s.subscribe(ACCOUNT, "sub", topics(&["player"]), head).await;
    s.retry(
        "sub",
        dead,
        RetryState::Dead {
            attempts: 3,
            error: "HTTP 500".into(),
        },
    )
    .await;
    s.retry(
        "sub",
        pending,
        RetryState::Scheduled {
            attempts: 1,
            next_attempt_at: now_millis() + 10 * DAY,
            error: "HTTP 500".into(),
        },
    )
    .await;
    // The pass runs two days on, attempts are kept a day: the first record is older
    // than that then, the second is not.
    let old = attempt(dead, 1, now_millis(), "failed");
    let recent = attempt(pending, 1, now_millis() + 2 * DAY - 3_600_000, "failed");
    s.report(Progress {
        subscription_id: "sub".into(),
        attempts: vec![old, recent.clone()],
        ..Progress::default()
    })
    .await;

    let report = retention_pass(&s, 2).await;
    // The retry set held both events back; the dead letter itself is past the records'
    // retention and goes, the pending retry stays.
    assert_eq!(s.ids(ACCOUNT).await, set(&["dead", "pending", "head"]));
    assert_eq!(
        (report.removed_attempts, report.removed_dead_letters),
        (1, 1),
        "{report:?}"
    );
    let db = s.store.db();
    let records: Vec<AttemptRecord> = db
        .list_attempts("sub", None, 10)
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| a.record)
        .collect();
    assert_eq!(records, [recent]);
    let retries = db.list_retries("sub", 10).await.expect("retries");
    assert_eq!(retries.iter().map(|r| r.seq).collect::<Vec<_>>(), [pending]);
    // Its dead letter gone, the event goes at the next pass; the pending one stays.
    retention_pass(&s, 2).await;
    assert_eq!(s.ids(ACCOUNT).await, set(&["pending", "head"]));
}
