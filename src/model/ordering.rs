//! A subscription's delivery order (`"ordering"`): as fast as possible, or one at a time
//! per entity.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a webhook subscription orders its deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// No order (the default): up to `--max-in-flight` deliveries at once, in any order.
    #[default]
    None,
    /// The events of one entity key (one video, one asset, one job) go one at a time in
    /// log order, each once the one before it is delivered or dead-lettered; different
    /// entities still go in parallel.
    Entity,
}

impl Ordering {
    pub const ALL: [Ordering; 2] = [Ordering::None, Ordering::Entity];

    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Entity => "entity",
        }
    }

    pub fn parse(name: &str) -> Option<Ordering> {
        Ordering::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// Whether deliveries are ordered per entity.
    pub fn by_entity(self) -> bool {
        self == Ordering::Entity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_others_are_refused() {
        for ordering in Ordering::ALL {
            assert_eq!(Ordering::parse(ordering.as_str()), Some(ordering));
        }
        assert_eq!(Ordering::parse("Entity"), None);
        assert_eq!(Ordering::parse("fifo"), None);
        assert_eq!(Ordering::default(), Ordering::None);
    }
}
