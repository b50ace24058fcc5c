//! API keys: who a bearer token speaks for, and what it may do there (scopes, and which
//! events it may publish).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Millis;

/// What a key may do in its account. The admin token has every scope on every account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish events: the native API, CloudEvents, Dynamic Ingest job notifications.
    Publish,
    /// Read the log, the entities, the subscriptions and their deliveries.
    Read,
    /// Create, delete and enable subscriptions, replay, resync, rotate signing secrets,
    /// register job callbacks.
    Manage,
}

impl Scope {
    /// Every scope, in the order the API lists them (a key made without `scopes`).
    pub const ALL: [Scope; 3] = [Scope::Publish, Scope::Read, Scope::Manage];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Manage => "manage",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }
}

/// Whom a key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    Admin,
    Account(String),
}

/// A stored key: never the key itself, only its hash (kept by the store) and these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub owner: KeyOwner,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// Event names it may publish; with `topics`, both empty: any event.
    pub events: Vec<String>,
    /// Topics it may publish to.
    pub topics: Vec<String>,
    /// The start of the key, to tell keys apart in a listing.
    pub prefix: String,
    pub created_at: Millis,
    pub last_used_at: Option<Millis>,
    pub expires_at: Option<Millis>,
}

impl ApiKey {
    pub fn has(&self, scope: Scope) -> bool {
        self.owner == KeyOwner::Admin || self.scopes.contains(&scope)
    }

    /// Whether it may publish an event of this name and topic.
    pub fn may_publish(&self, name: &str, topic: &str) -> bool {
        (self.events.is_empty() && self.topics.is_empty())
            || self.events.iter().any(|e| e == name)
            || self.topics.iter().any(|t| t == topic)
    }

    pub fn expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(events: &[&str], topics: &[&str]) -> ApiKey {
        ApiKey {
            id: "key_1".into(),
            owner: KeyOwner::Account("vimond".into()),
            name: None,
            scopes: vec![Scope::Publish],
            events: events.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            prefix: "rl_abcdefg".into(),
            created_at: 0,
            last_used_at: None,
            expires_at: Some(10),
        }
    }

    #[test]
    fn limits_on_publishing_are_by_event_or_topic() {
        assert!(key(&[], &[]).may_publish("asset-created", "asset-operations"));
        let playback = key(&[], &["app-playback"]);
        assert!(playback.may_publish("play", "app-playback"));
        assert!(!playback.may_publish("asset-created", "asset-operations"));
        let one = key(&["asset-created"], &[]);
        assert!(one.may_publish("asset-created", "asset-operations"));
        assert!(!one.may_publish("asset-deleted", "asset-operations"));
    }

    #[test]
    fn scopes_and_expiry() {
        let publisher = key(&[], &[]);
        assert!(publisher.has(Scope::Publish));
        assert!(!publisher.has(Scope::Read));
        assert!(!publisher.expired(9));
        assert!(publisher.expired(10));
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}
