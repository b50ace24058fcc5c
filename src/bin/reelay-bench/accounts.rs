//! The many-publishers phase: `accounts` accounts, each with one subscription of its own,
//! all publishing at once (round-robin over the accounts, the same concurrency as the
//! single-account phase). Its deliveries/s over the single-account row says whether
//! tenants share the server's speed or each pays for the others.

use std::sync::Arc;

use serde_json::json;

use super::events::Traffic;
use super::receiver::Expectation;
use super::report::DeliveryResult;
use super::{Bench, closed_loop};

impl Bench {
    /// About `events` events in all, `events / accounts` to each account's subscription
    /// (its receiver path `/hook/<account number>`).
    pub(super) async fn publishing_accounts(
        &self,
        accounts: usize,
        events: usize,
    ) -> anyhow::Result<DeliveryResult> {
        let accounts = accounts.max(1);
        let per_account = (events / accounts).max(1);
        let expectation = Expectation::new(per_account, accounts);
        self.receiver.expect(Some(expectation.clone()));
        let traffic = Traffic::Player;
        let names: Arc<Vec<String>> = Arc::new(
            (0..accounts)
                .map(|i| self.account(&format!("accounts-{i}")))
                .collect(),
        );
        let (http, token) = (self.http.clone(), self.server.token().to_owned());
        let nodes: Arc<Vec<String>> = Arc::new(
            (0..self.server.nodes())
                .map(|n| self.server.url(n).to_owned())
                .collect(),
        );
        let subscribe = {
            let (http, token, names, nodes) =
                (http.clone(), token.clone(), names.clone(), nodes.clone());
            let receiver = self.receiver_url.clone();
            move |i: usize| {
                let url = format!(
                    "{}/v1/accounts/{}/subscriptions",
                    nodes[i % nodes.len()],
                    names[i]
                );
                let body = json!({"endpoint": format!("{receiver}/hook/{i}"),
                                  "events": [traffic.event_name()]});
                let (http, token) = (http.clone(), token.clone());
                async move {
                    let response = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status().as_u16() == 201,
                        "subscription refused: {}",
                        response.text().await.unwrap_or_default()
                    );
                    Ok(())
                }
            }
        };
        closed_loop(
            &format!("accounts: subscribing {accounts} accounts"),
            accounts,
            self.concurrency.min(16),
            subscribe,
        )
        .await?;
        if self.watcher.is_some() {
            // The nodes split new subscriptions at their next lease pass.
            tokio::time::sleep(super::LEASE_TTL_DEFAULT).await;
        }
        let total = per_account * accounts;
        let publish = move |n: usize| {
            let (account, event) = (n % accounts, n / accounts);
            let url = format!(
                "{}/v1/accounts/{}/events",
                nodes[n % nodes.len()],
                names[account]
            );
            let (http, token) = (http.clone(), token.clone());
            async move {
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .body(traffic.event(event).to_string())
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().as_u16() == 202,
                    "publish answered {}",
                    response.status()
                );
                Ok(())
            }
        };
        let watch = self.server.watch();
        let started = self.receiver.now();
        let label = format!("accounts: {accounts} accounts publishing");
        let (publish_elapsed, _) = closed_loop(&label, total, self.concurrency, publish).await?;
        Ok(self
            .delivery_result(&label, &expectation, total, watch, started, publish_elapsed)
            .await)
    }
}
