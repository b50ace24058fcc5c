//! Which accounts and subscriptions get Prometheus series of their own: the bound on
//! label cardinality. A server with 100,000 subscriptions must not answer `/metrics`
//! with 100,000 series, so by default only server-wide figures are emitted, plus the
//! `--metrics-top-subscriptions` subscriptions that look worst (most behind, failing);
//! an account's own series are opt-in (`--metrics-accounts`, `--metrics-all-accounts`).

use std::collections::HashSet;
use std::time::Duration;

use clap::Args;

use crate::config::parse_duration;

/// The metrics flags of `reelay serve`.
#[derive(Debug, Clone, Args)]
pub struct MetricsConfig {
    /// How many subscriptions get series of their own (`reelay_subscription_*`): those
    /// most behind or failing at each metrics pass. 0: none, server-wide figures only.
    #[arg(long, env = "REELAY_METRICS_TOP_SUBSCRIPTIONS", default_value_t = 20)]
    pub metrics_top_subscriptions: usize,

    /// Accounts whose publishes, refusals and deliveries get series of their own
    /// (`reelay_account_*`), comma-separated. Default: none.
    #[arg(long, env = "REELAY_METRICS_ACCOUNTS", value_delimiter = ',')]
    pub metrics_accounts: Vec<String>,

    /// Every account gets series of its own (one set per account: only for servers
    /// with few accounts).
    #[arg(long, env = "REELAY_METRICS_ALL_ACCOUNTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_all_accounts: bool,

    /// How often the per-subscription figures (lag, oldest undelivered event, retry
    /// set, breakers) are computed from the dispatcher's state and the retry set.
    #[arg(long, env = "REELAY_METRICS_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub metrics_interval: Duration,
}

impl MetricsConfig {
    pub fn scope(&self) -> MetricsScope {
        MetricsScope {
            top_subscriptions: self.metrics_top_subscriptions,
            accounts: match self.metrics_all_accounts {
                true => Accounts::All,
                false => Accounts::Listed(
                    self.metrics_accounts
                        .iter()
                        .map(|a| a.trim().to_owned())
                        .filter(|a| !a.is_empty())
                        .collect(),
                ),
            },
            interval: self.metrics_interval.max(Duration::from_millis(100)),
        }
    }
}

/// The accounts with series of their own.
#[derive(Debug, Clone, PartialEq)]
pub enum Accounts {
    Listed(HashSet<String>),
    All,
}

/// The cardinality bound, as the parts that emit series use it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsScope {
    pub top_subscriptions: usize,
    pub accounts: Accounts,
    pub interval: Duration,
}

impl Default for MetricsScope {
    fn default() -> MetricsScope {
        MetricsScope {
            top_subscriptions: 20,
            accounts: Accounts::Listed(HashSet::new()),
            interval: Duration::from_secs(10),
        }
    }
}

impl MetricsScope {
    /// Whether `account` gets series of its own.
    pub fn covers(&self, account: &str) -> bool {
        match &self.accounts {
            Accounts::All => true,
            // The default (none listed) costs no hashing per call.
            Accounts::Listed(listed) => !listed.is_empty() && listed.contains(account),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(accounts: &[&str], all: bool) -> MetricsConfig {
        MetricsConfig {
            metrics_top_subscriptions: 5,
            metrics_accounts: accounts.iter().map(|a| a.to_string()).collect(),
            metrics_all_accounts: all,
            metrics_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn accounts_are_opt_in() {
        let none = config(&[], false).scope();
        assert!(!none.covers("vimond"));
        let listed = config(&["vimond", " other ", ""], false).scope();
        assert!(listed.covers("vimond"));
        assert!(listed.covers("other"));
        assert!(!listed.covers("third"));
        assert!(!listed.covers(""));
        assert!(config(&[], true).scope().covers("anyone"));
    }
}
