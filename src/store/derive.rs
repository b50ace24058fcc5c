//! Events the log writer derives from the events it commits: seed 004's `video-change`.
//!
//! Derived in the writer, inside the commit of the event that causes it, so a video's
//! version is taken from the database in the same transaction that stores the change:
//! no version is handed out for a change that was not stored, none is handed out twice,
//! and the count survives restarts. Which events change which video is catalog data
//! (`videoChange` on an event type); ingest resolves it into [`NewEvent::video`], so the
//! writer does nothing at all for the other events.
//!
//! [`NewEvent::video`]: crate::model::NewEvent::video

use serde::Serialize;

use crate::catalog::VIDEO_CHANGE;
use crate::model::{Millis, StoredEvent};

/// What the writer needs to know to derive events, taken from the catalog at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The catalog topic of `video-change`.
    pub video_change_topic: String,
}

/// The body of a `video-change`, in seed 004's shape and member order.
#[derive(Serialize)]
struct VideoChangeBody<'a> {
    /// When the change happened (the causing event's time), in epoch milliseconds.
    timestamp: Millis,
    account_id: &'a str,
    event: &'static str,
    video: &'a str,
    version: i64,
}

impl Derivation {
    /// The `video-change` that reports `cause`'s change of `video`, at position `seq`
    /// (reserved right after the cause).
    pub(super) fn video_change(
        &self,
        cause: &StoredEvent,
        video: &str,
        version: i64,
        seq: i64,
    ) -> StoredEvent {
        let body = VideoChangeBody {
            timestamp: cause.occurred_at,
            account_id: &cause.account,
            event: VIDEO_CHANGE,
            video,
            version,
        };
        StoredEvent {
            seq,
            account: cause.account.clone(),
            // Random, not derived from the video: a publisher who could predict it could
            // take the id first and make this insert conflict. A UUIDv7 (time-ordered, so
            // the id index grows at its end) from the thread's RNG: `Uuid::now_v7` asks
            // the kernel for randomness at every call, 2% of the writer under load.
            id: format!(
                "vc_{}",
                uuid::Builder::from_unix_timestamp_millis(
                    u64::try_from(cause.received_at).unwrap_or_default(),
                    &rand::random(),
                )
                .into_uuid()
                .simple()
            ),
            name: VIDEO_CHANGE.to_owned(),
            topic: self.video_change_topic.clone(),
            entity_key: Some(video.to_owned()),
            occurred_at: cause.occurred_at,
            received_at: cause.received_at,
            // Serializing strings and integers cannot fail.
            body: serde_json::to_string(&body).unwrap_or_default().into(),
            trace: cause.trace.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_change_has_seed_004s_shape() {
        let cause = StoredEvent {
            seq: 7,
            account: "775205503001".into(),
            id: "e-1".into(),
            name: "asset-updated".into(),
            topic: "asset-operations".into(),
            entity_key: Some("4020894387001".into()),
            occurred_at: 1_423_840_514_446,
            received_at: 1_423_840_514_500,
            body: "{}".into(),
            trace: None,
        };
        let derivation = Derivation {
            video_change_topic: "cms-notifications".into(),
        };
        let change = derivation.video_change(&cause, "4020894387001", 26, 8);
        assert_eq!(
            change.body.as_str(),
            r#"{"timestamp":1423840514446,"account_id":"775205503001","event":"video-change","video":"4020894387001","version":26}"#
        );
        assert_eq!(
            (change.seq, change.name.as_str(), change.topic.as_str()),
            (8, "video-change", "cms-notifications")
        );
        assert_eq!(change.entity_key.as_deref(), Some("4020894387001"));
        assert!(change.id.starts_with("vc_"));
        // Ids are JSON-escaped, never spliced in.
        let odd = derivation.video_change(&cause, "a\"b", 1, 9);
        let parsed: serde_json::Value = serde_json::from_str(odd.body.as_str()).unwrap();
        assert_eq!(parsed["video"], "a\"b");
    }
}
