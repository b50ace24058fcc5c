//! The hot path's statements (the group commit's appends and delivery progress), written
//! once for both backends: a change to one is made here, and both log writers run it.
//!
//! They are written with PostgreSQL's `$n` placeholders, as every other query of the
//! store is (`database`, `retention`: sqlx's SQLite driver reads `$n` too). The SQLite
//! log writer talks to SQLite through rusqlite, which binds by number only with SQLite's
//! own `?n`: [`Statement::sqlite`] is the same text with `?n`, rewritten at compile time.
//!
//! Where the two writers truly differ, a statement has a form per backend, built from one
//! column list and one conflict rule, and says why: PostgreSQL inserts a whole group from
//! arrays in one round trip (`UNNEST`, which SQLite lacks), where SQLite, in process,
//! runs a prepared statement per row; and PostgreSQL checks the node's lease on the
//! subscription (several nodes share the database), which SQLite has no table for.

/// One statement in both placeholder styles.
#[derive(Debug, Clone, Copy)]
pub(super) struct Statement {
    /// `$n` placeholders: PostgreSQL.
    pub postgres: &'static str,
    /// `?n` placeholders: SQLite through rusqlite (the log writer's connection).
    pub sqlite: &'static str,
}

/// `sql` with each `$n` placeholder written `?n`, as bytes (see [`for_sqlite!`]). A `$`
/// that does not start a placeholder fails the build: none of these statements has one
/// in a literal, and a rewritten literal would change what the statement does.
const fn numbered<const N: usize>(sql: &str) -> [u8; N] {
    let bytes = sql.as_bytes();
    assert!(bytes.len() == N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        if bytes[i] == b'$' {
            assert!(
                i + 1 < N && bytes[i + 1].is_ascii_digit(),
                "a `$` that is not a placeholder"
            );
            out[i] = b'?';
        }
        i += 1;
    }
    out
}

/// A `$n` statement with `?n` placeholders instead, as a `&'static str` made at compile
/// time.
macro_rules! for_sqlite {
    ($sql:expr) => {{
        const BYTES: [u8; $sql.len()] = numbered($sql);
        const TEXT: &str = match std::str::from_utf8(&BYTES) {
            Ok(text) => text,
            Err(_) => panic!("a statement that is not UTF-8"),
        };
        TEXT
    }};
}

/// A [`Statement`] from its `$n` text.
macro_rules! statement {
    ($sql:expr) => {
        Statement {
            postgres: $sql,
            sqlite: for_sqlite!($sql),
        }
    };
}

/// The event columns both inserts write, in this order.
macro_rules! event_columns {
    () => {
        "events (seq, account, event_id, name, topic, entity_key, occurred_at, received_at, body, \
         traceparent, tracestate)"
    };
}

/// An id the account's log holds already is skipped: the publisher is told it is a
/// duplicate, nothing new is stored.
macro_rules! event_conflict {
    () => {
        " ON CONFLICT (account, event_id) DO NOTHING"
    };
}

/// SQLite: one event. The writer runs it per row (in process a prepared statement costs
/// no round trip), and its change count says whether the row was a duplicate.
pub(super) const INSERT_EVENT: &str = for_sqlite!(concat!(
    "INSERT INTO ",
    event_columns!(),
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    event_conflict!()
));

/// PostgreSQL: a group's events in one statement, from one array per column; returns
/// the positions actually stored.
pub(super) const INSERT_EVENTS: &str = concat!(
    "INSERT INTO ",
    event_columns!(),
    " SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::text[])",
    event_conflict!(),
    " RETURNING seq"
);

/// PostgreSQL: a group's append in one round trip. Takes `$12` positions from the log
/// head (its row lock orders every node's appends; the notification goes out at commit)
/// and inserts the group's events, which the writer numbered from `$13 + 1`, at the
/// positions the head gives them. Returns the new head beside each position stored (one
/// row with `NULL` when every event was a duplicate), and no row when the head has no
/// room for `$12` more positions (positions stay below the largest bigint: the writer's
/// next position must be representable).
pub(super) const APPEND_EVENTS: &str = concat!(
    "WITH head AS (UPDATE log_head SET seq = seq + $12 \
       WHERE id = 1 AND seq < 9223372036854775807 - $12 \
       RETURNING seq, pg_notify($14, seq::text) AS notified), \
     stored AS (INSERT INTO ",
    event_columns!(),
    " SELECT u.seq + (head.seq - $12 - $13), u.account, u.event_id, u.name, u.topic, \
       u.entity_key, u.occurred_at, u.received_at, u.body, u.traceparent, u.tracestate \
     FROM head, UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
       $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::text[]) \
       AS u(seq, account, event_id, name, topic, entity_key, occurred_at, received_at, body, \
       traceparent, tracestate)",
    event_conflict!(),
    " RETURNING seq) \
     SELECT head.seq AS top, stored.seq AS stored FROM head LEFT JOIN stored ON true"
);

/// PostgreSQL: the versions a group's events give their videos, in one statement. Each
/// (account, video) comes once, with the number of versions it takes (`$3`); returns the
/// last version each took (its versions are the `$3` up to it, in log order).
pub(super) const NEXT_VIDEO_VERSIONS: &str = "INSERT INTO video_versions (account, video, version) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
     ON CONFLICT (account, video) DO UPDATE SET version = video_versions.version + excluded.version \
     RETURNING account, video, version";

/// An entity's latest state: the event with the highest position wins.
macro_rules! entity_upsert {
    () => {
        " ON CONFLICT (account, type, id) DO UPDATE SET seq = excluded.seq, \
         deleted = excluded.deleted WHERE excluded.seq > entities.seq"
    };
}

/// SQLite: one entity's latest state, per stored row.
pub(super) const SET_ENTITY: &str = for_sqlite!(concat!(
    "INSERT INTO entities (account, type, id, seq, deleted) VALUES ($1, $2, $3, $4, $5)",
    entity_upsert!()
));

/// PostgreSQL: a group's entities in one statement, from arrays (one statement may not
/// update a row twice: the caller passes each entity once).
pub(super) const SET_ENTITIES: &str = concat!(
    "INSERT INTO entities (account, type, id, seq, deleted) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])",
    entity_upsert!()
);

/// The video's next version, in one statement: 1 for a video never seen.
pub(super) const NEXT_VIDEO_VERSION: Statement = statement!(
    "INSERT INTO video_versions (account, video, version) VALUES ($1, $2, 1) \
     ON CONFLICT (account, video) DO UPDATE SET version = video_versions.version + 1 \
     RETURNING version"
);

/// A dispatcher's report on one subscription (`$5`): its cursor (`$1`, `NULL`: where it
/// is), the deliveries that succeeded at once (`$2`), and its endpoint's health (`$3`
/// when it last succeeded, `$4` when it last failed). One statement for all of it: this
/// runs for every subscription at every flush. Returns the subscription's id when it was
/// updated: the rest of the report is applied only then (a worker's last report can
/// arrive after its subscription was deleted, and its retries must not outlive it).
/// `$condition` is the backend's own.
macro_rules! save_progress {
    ($condition:literal) => {
        concat!(
            "UPDATE subscriptions SET cursor = COALESCE($1, cursor), delivered = delivered + $2, \
             last_success_at = COALESCE($3, last_success_at), \
             failing_since = CASE WHEN CAST($3 AS BIGINT) IS NOT NULL THEN NULL \
                                  WHEN CAST($4 AS BIGINT) IS NOT NULL THEN COALESCE(failing_since, $4) \
                                  ELSE failing_since END \
             WHERE id = $5",
            $condition,
            " RETURNING id"
        )
    };
}

/// SQLite: one process owns every subscription.
pub(super) const SAVE_PROGRESS: &str = for_sqlite!(save_progress!(""));

/// PostgreSQL: only while this node (`$6`) holds the subscription's lease, so a node that
/// was taken over cannot move a cursor the new holder relies on. Checked by the statement
/// that moves the cursor: one round trip, not two.
pub(super) const SAVE_HELD_PROGRESS: &str = save_progress!(
    " AND EXISTS (SELECT 1 FROM subscription_leases \
     WHERE subscription_id = $5 AND node_id = $6)"
);

/// A failed or retried attempt's record.
pub(super) const INSERT_ATTEMPT: Statement = statement!(
    "INSERT INTO attempts (subscription_id, seq, event_id, attempt, at, outcome, status, \
     error, latency_ms, response, next_attempt_at, resync_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);

/// Delivered: the event leaves the subscription's retry set (if it was there).
pub(super) const DELETE_RETRY: Statement =
    statement!("DELETE FROM retries WHERE subscription_id = $1 AND seq = $2 AND resync_id = $3");

/// Failed: tried again at `$4` (a dead letter retried by hand becomes pending again).
pub(super) const SCHEDULE_RETRY: Statement = statement!(
    "INSERT INTO retries (subscription_id, seq, attempts, next_attempt_at, last_error, \
     resync_id) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (subscription_id, seq, resync_id) DO UPDATE SET \
     attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, \
     last_error = excluded.last_error, dead_at = NULL"
);

/// Out of retries: kept as a dead letter, dead since `$4`.
pub(super) const BURY_RETRY: Statement = statement!(
    "INSERT INTO retries (subscription_id, seq, attempts, next_attempt_at, last_error, \
     dead_at, resync_id) VALUES ($1, $2, $3, $4, $5, $4, $6) \
     ON CONFLICT (subscription_id, seq, resync_id) DO UPDATE SET \
     attempts = excluded.attempts, last_error = excluded.last_error, dead_at = excluded.dead_at"
);

/// Where a resync run stands.
pub(super) const SAVE_RESYNC: Statement = statement!(
    "UPDATE resync_runs SET sent = $1, position_type = $2, position_id = $3, \
     completed_at = $4 WHERE id = $5"
);

/// Disables a subscription (the first reason stays).
pub(super) const DISABLE_SUBSCRIPTION: Statement = statement!(
    "UPDATE subscriptions SET disabled_code = $1, disabled_message = $2, disabled_at = $3 \
     WHERE id = $4 AND disabled_at IS NULL"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_form_numbers_the_same_placeholders() {
        assert_eq!(
            DELETE_RETRY.sqlite,
            "DELETE FROM retries WHERE subscription_id = ?1 AND seq = ?2 AND resync_id = ?3"
        );
        // `$4` twice, and two-digit numbers: each one rewritten in place.
        assert!(
            BURY_RETRY
                .sqlite
                .contains("VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6)")
        );
        assert!(INSERT_ATTEMPT.sqlite.contains("?10, ?11, ?12)"));
        for statement in [
            NEXT_VIDEO_VERSION,
            INSERT_ATTEMPT,
            DELETE_RETRY,
            SCHEDULE_RETRY,
            BURY_RETRY,
            SAVE_RESYNC,
            DISABLE_SUBSCRIPTION,
        ] {
            assert_eq!(
                statement.sqlite.replace('?', "$"),
                statement.postgres,
                "only the placeholders differ"
            );
            assert!(!statement.sqlite.contains('$'), "{}", statement.sqlite);
        }
        for sqlite in [INSERT_EVENT, SET_ENTITY, SAVE_PROGRESS] {
            assert!(!sqlite.contains('$') && sqlite.contains("?1"), "{sqlite}");
        }
    }

    #[test]
    fn progress_differs_between_the_backends_by_the_lease_alone() {
        let held = SAVE_HELD_PROGRESS.replace('$', "?");
        let (before, after) = SAVE_PROGRESS
            .split_once(" RETURNING id")
            .expect("returns the id");
        assert!(held.starts_with(before), "{held}");
        assert!(held.contains("subscription_leases"), "{held}");
        assert!(held.ends_with(" RETURNING id") && after.is_empty());
    }
}
