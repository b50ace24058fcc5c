//! Pure domain types shared by every stage: events, subscriptions, destinations and
//! delivery outcomes. Nothing here knows about HTTP or SQL.

mod event;
mod filter;
mod key;
mod ordering;
mod rate_limit;
mod subscription;
mod token_verification;
mod trace;
mod transform;

pub use event::{Document, EntityChange, NewEvent, StoredEvent, cloudevent_id, is_cloudevent_id};
pub use filter::{FilterError, PayloadFilter};
pub use key::{ApiKey, KeyOwner, Scope};
pub use ordering::Ordering;
pub use rate_limit::{MAX_RATE, RateLimit, RateLimitError, TokenBucket};
pub use subscription::{
    AwsOptions, Destination, DisabledReason, EventFilter, Format, NewSubscription, PreviousSecret,
    Subscription, SubscriptionKind,
};
pub use token_verification::TokenVerification;
pub use trace::TraceContext;
pub use transform::{Transform, TransformError};

/// Milliseconds since the Unix epoch: the one clock unit stored and compared everywhere.
pub type Millis = i64;

/// Now, in [`Millis`].
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
