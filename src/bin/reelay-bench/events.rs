//! The events the bench publishes, shaped like the traffic users send: UUID guids, bodies
//! of the size and members of the seeds' examples, and the two kinds a video platform
//! publishes — player progress (most of the volume; derives nothing) and asset updates
//! (each changes a video: Reelay appends a `video-change` in the same commit).
//!
//! Each event's guid is a UUID whose last group is the event's number in its phase, so the
//! receiver can count arrivals per event without a lookup table.

use std::sync::OnceLock;

use serde_json::{Value, json};

/// Which kind of event a phase publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// `player_log_event` (seed 001): a viewer's progress, every few seconds per viewer.
    Player,
    /// `asset-updated` (seed 000): an editor changed a video's metadata.
    VideoChange,
    /// `player_log_event` on this many assets (entities) only, in turn.
    Entities(usize),
}

impl Traffic {
    pub fn event_name(self) -> &'static str {
        match self {
            Traffic::Player | Traffic::Entities(_) => "player_log_event",
            Traffic::VideoChange => "asset-updated",
        }
    }

    /// Event `n` of a phase.
    pub fn event(self, n: usize) -> Value {
        match self {
            Traffic::Player => player_event(n),
            Traffic::VideoChange => video_change_event(n),
            Traffic::Entities(count) => {
                let mut event = player_event(n);
                event["assetId"] = json!(800_000 + n % count.max(1));
                event
            }
        }
    }

    /// Events `range` of a phase as one JSON array (a batch publish).
    pub fn batch(self, range: std::ops::Range<usize>) -> String {
        Value::Array(range.map(|n| self.event(n)).collect()).to_string()
    }
}

/// The UUID of event `n`: random per bench process in its first four groups, `n` in the
/// last (48 bits), version 4 and the RFC 4122 variant like any random UUID.
pub fn guid(n: usize) -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "{}-{}-{}-{}",
            &id[..8],
            &id[8..12],
            &id[12..16],
            &id[16..20]
        )
    });
    format!("{prefix}-{:012x}", n & 0xffff_ffff_ffff)
}

/// The event number in a delivered event's id: a [`guid`], or a resync delivery's
/// `<guid>.<resync id>`. `None` for any other id.
pub fn event_number(id: &str) -> Option<usize> {
    let guid = id.split('.').next()?;
    let last = guid.rsplit('-').next()?;
    if guid.len() != 36 || last.len() != 12 {
        return None;
    }
    usize::from_str_radix(last, 16).ok()
}

/// An ISO timestamp that moves with `n`, as a stream of real events' would.
fn timestamp(n: usize) -> String {
    let millis = 1_780_000_000_000_i64 + (n as i64) * 7;
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A player's progress report, about 330 bytes as JSON.
fn player_event(n: usize) -> Value {
    json!({
        "eventName": "player_log_event",
        "originator": "vimond-player-web-7d9f8c6b5-x2kqp",
        "versions": ["1.0"],
        "timestamp": timestamp(n),
        "guid": guid(n),
        "assetId": 800_000 + n % 10_000,
        "userId": format!("user-{}", 100_000 + n % 5_000),
        "logType": "progress",
        "progress": {"position": n % 3_600, "duration": 3_600},
        "device": {"type": "web", "os": "macOS 14", "player": "vimond-web 5.2.1"}
    })
}

/// An asset update like seed 000's example, about 330 bytes as JSON.
fn video_change_event(n: usize) -> Value {
    json!({
        "eventName": "asset-updated",
        "originator": "vimond-rest-api-57484499fc-lkn8x:8080",
        "versions": ["1.0"],
        "timestamp": timestamp(n),
        "guid": guid(n),
        "assetId": 800_000 + n % 10_000,
        "properties": {},
        "metadata": {"image-pack": {"*": format!("63282a0be4b09ae28a6d36fd-{}", 1_663_576_590_106_u64 + n as u64)}}
    })
}

/// A catalog entity's state for the resync phase: asset `n` created, with the guid of
/// event `n`, so the receiver counts its resync delivery as event `n`.
pub fn catalog_event(n: usize) -> Value {
    json!({
        "eventName": "asset-created",
        "originator": "vimond-rest-api-57484499fc-lkn8x:8080",
        "versions": ["1.0"],
        "timestamp": timestamp(n),
        "guid": guid(n),
        "assetId": n,
        "metadata": {"title": {"*": format!("Episode {n}")}, "genre": {"*": "drama"}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_number_comes_back_from_its_guid_and_its_resync_id() {
        for n in [0, 1, 99_999, 0xffff_ffff_ffff] {
            let id = guid(n);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id} is a UUID");
            assert_eq!(event_number(&id), Some(n));
            assert_eq!(event_number(&format!("{id}.rs_0123")), Some(n));
        }
        assert_eq!(event_number("b-12"), None);
        assert_eq!(event_number("not-a-uuid-at-all-000000000012"), None);
    }

    #[test]
    fn the_bodies_are_the_size_of_the_traffic_the_issue_measured() {
        for traffic in [Traffic::Player, Traffic::VideoChange] {
            let size = traffic.event(123_456).to_string().len();
            assert!((280..=400).contains(&size), "{traffic:?}: {size} bytes");
        }
    }
}
