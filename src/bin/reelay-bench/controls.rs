//! The delivery controls' phases (issue 19): deliveries to 10 subscriptions that each
//! filter the payload, to 10 that each transform it, and to 10 that each deliver in
//! order per entity (over 1,000 entities), for the rows beside the plain
//! "10 subscriptions" one. Every event passes the filter, so the rows compare the same
//! number of deliveries: the difference is the cost of the controls.

use serde_json::{Value, json};

use super::Bench;
use super::events::Traffic;
use super::receiver::Expectation;
use super::report::DeliveryResult;

/// How many subscriptions each phase delivers to, as the plain row.
const SUBSCRIPTIONS: usize = 10;

/// A filter of four conditions that every bench event passes.
pub(super) fn filter() -> Value {
    json!({"filter": {
        "eventName": Traffic::Player.event_name(),
        "assetId": {"$gte": 800_000, "$lt": 810_000},
        "userId": {"$prefix": "user-"},
        "progress.duration": {"$in": [1_800, 3_600]}
    }})
}

/// A transform that picks and renames members and adds a constant.
pub(super) fn transform() -> Value {
    json!({"transform":
        "{id: .guid, asset: .assetId, user: .userId, position: .progress.position, source: \"bench\"}"})
}

/// How many entities (assets) the ordered phase's events belong to.
pub(super) const ORDERED_ENTITIES: usize = 1_000;

/// Deliveries one at a time per entity, entities in parallel.
pub(super) fn ordering() -> Value {
    json!({"ordering": "entity"})
}

impl Bench {
    /// Like the plain delivery phase, with `controls` (members of the subscription body)
    /// on each of the 10 subscriptions.
    pub(super) async fn controlled_delivery(
        &self,
        account: &str,
        events: usize,
        controls: Value,
        traffic: Traffic,
    ) -> anyhow::Result<DeliveryResult> {
        let expectation = Expectation::new(events, SUBSCRIPTIONS);
        self.receiver.expect(Some(expectation.clone()));
        for i in 0..SUBSCRIPTIONS {
            let mut body = json!({"endpoint": format!("{}/hook/{i}", self.receiver_url),
                                  "events": [traffic.event_name()]});
            for (key, value) in controls.as_object().into_iter().flatten() {
                body[key] = value.clone();
            }
            self.subscribe_to(account, body).await?;
        }
        let subscriptions_per_node = self.split(account).await?;
        let label = format!("deliver to {SUBSCRIPTIONS} subscriptions ({account})");
        self.measure_delivery(
            account,
            &label,
            expectation,
            subscriptions_per_node,
            traffic,
        )
        .await
    }
}
