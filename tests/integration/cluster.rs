//! Several nodes on one PostgreSQL database: three `reelay serve` processes share the
//! work, every event published to any of them reaches every subscriber once, and when a
//! node is killed the others take its subscriptions over with nothing lost.
//!
//! These tests need PostgreSQL: they run in the suite's PostgreSQL pass (`scripts/test`)
//! and say so and stop in the SQLite pass.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use crate::app::{TestApp, eventually, scratch_database};
use crate::publish::asset_event;
use crate::support::receiver::Receiver;

const SUBSCRIPTIONS: usize = 6;

/// Three nodes on one fresh PostgreSQL schema, with the default lease (5 s: a dead
/// node's work moves within seconds, and a node starved of CPU for a second or two on a
/// busy test machine still renews in time). PostgreSQL only: the tests that use it are
/// ignored in the SQLite pass.
async fn three_nodes() -> Vec<TestApp> {
    three_nodes_with(&[]).await
}

async fn three_nodes_with(extra: &[(&str, &str)]) -> Vec<TestApp> {
    let first_dir = tempfile::tempdir().expect("temp dir");
    let database = scratch_database(first_dir.path()).await;
    assert!(
        database.starts_with("postgres"),
        "several nodes need PostgreSQL: set REELAY_TEST_POSTGRES_URL (scripts/test does)"
    );
    let env = extra;
    let mut nodes = vec![TestApp::start_on(database.clone(), env, first_dir).await];
    for _ in 1..3 {
        let dir = tempfile::tempdir().expect("temp dir");
        nodes.push(TestApp::start_on(database.clone(), env, dir).await);
    }
    nodes
}

/// Which node holds which subscriptions, from the database's leases.
async fn leases(database: &str) -> HashMap<String, String> {
    let pool = sqlx::PgPool::connect(database).await.expect("connect");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT subscription_id, node_id FROM subscription_leases")
            .fetch_all(&pool)
            .await
            .expect("leases");
    rows.into_iter().collect()
}

/// How many subscriptions each node holds.
async fn lease_counts(database: &str) -> HashMap<String, i64> {
    let mut counts = HashMap::new();
    for node in leases(database).await.into_values() {
        *counts.entry(node).or_default() += 1;
    }
    counts
}

/// Subscribes `SUBSCRIPTIONS` receiver paths to the asset topic, through the first node;
/// returns the paths with their subscription ids.
async fn subscribe_all(node: &TestApp, receiver: &Receiver) -> Vec<(String, String)> {
    let mut subscribed = Vec::new();
    for n in 0..SUBSCRIPTIONS {
        let path = format!("/s{n}");
        let (id, _) = node
            .subscribe_receiver(
                receiver,
                &path,
                json!({"topics": ["asset-operations"]}),
                &[],
            )
            .await;
        subscribed.push((path, id));
    }
    subscribed
}

/// Publishes `ids` one event per request, spread round-robin over `nodes`; returns the
/// ids acknowledged with `202`.
async fn publish_round_robin(nodes: &[&TestApp], ids: &[String]) -> HashSet<String> {
    let requests = ids.iter().enumerate().map(|(n, id)| {
        let node = nodes[n % nodes.len()];
        let body = asset_event("asset-published", id).to_string();
        async move {
            let (status, answer) = node.post("/v1/accounts/vimond/events", &body).await;
            assert_eq!(status, 202, "{answer}");
            id.clone()
        }
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .collect()
}

/// Per path: (distinct ids received, deliveries in all).
async fn received(receiver: &Receiver, path: &str) -> (HashSet<String>, usize) {
    let deliveries = receiver.deliveries(path).await;
    assert!(
        deliveries.iter().all(|d| d.verified == Some(true)),
        "every delivery is signed with the subscription's secret"
    );
    let ids = deliveries
        .iter()
        .filter_map(|d| d.webhook_id.clone())
        .collect();
    (ids, deliveries.len())
}

/// Waits until every path got every id in `expected`; returns the duplicates per path.
async fn wait_for_all(
    receiver: &Receiver,
    paths: &[String],
    expected: &HashSet<String>,
) -> HashMap<String, usize> {
    eventually(
        Duration::from_secs(60),
        "every event at every subscriber",
        || async {
            let mut duplicates = HashMap::new();
            for path in paths {
                let (ids, deliveries) = received(receiver, path).await;
                if !expected.is_subset(&ids) {
                    return None;
                }
                duplicates.insert(path.clone(), deliveries - ids.len());
            }
            Some(duplicates)
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs PostgreSQL: runs in the PostgreSQL pass of scripts/test"]
async fn three_nodes_share_the_subscriptions_and_deliver_every_event_once() {
    let nodes = three_nodes().await;
    let receiver = Receiver::start().await;
    let subscribed = subscribe_all(&nodes[0], &receiver).await;
    let paths: Vec<String> = subscribed.into_iter().map(|(path, _)| path).collect();

    // The work is split: each live node holds its share (2 of 6).
    let counts = eventually(Duration::from_secs(20), "the leases to spread", || async {
        let counts = lease_counts(&nodes[0].database).await;
        (counts.len() == 3 && counts.values().all(|&n| n == 2)).then_some(counts)
    })
    .await;
    eprintln!("leases per node: {counts:?}");

    let ids: Vec<String> = (0..300).map(|n| format!("rr-{n}")).collect();
    let acknowledged = publish_round_robin(&nodes.iter().collect::<Vec<_>>(), &ids).await;
    assert_eq!(acknowledged.len(), ids.len());
    let duplicates = wait_for_all(&receiver, &paths, &acknowledged).await;
    // A moment more: a duplicate would arrive after the originals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in &paths {
        let (ids, deliveries) = received(&receiver, path).await;
        assert_eq!(ids, acknowledged, "{path} got exactly the published events");
        assert_eq!(deliveries, ids.len(), "{path}: nothing delivered twice");
    }
    eprintln!(
        "{} events round-robin over 3 nodes, {} subscriptions: every event delivered, duplicates {:?}",
        ids.len(),
        paths.len(),
        duplicates
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: runs in the PostgreSQL pass of scripts/test"]
async fn a_killed_node_s_subscriptions_are_taken_over_with_nothing_lost() {
    let mut nodes = three_nodes().await;
    let receiver = Receiver::start().await;
    let subscribed = subscribe_all(&nodes[0], &receiver).await;
    let paths: Vec<String> = subscribed.iter().map(|(path, _)| path.clone()).collect();
    eventually(Duration::from_secs(20), "the leases to spread", || async {
        let counts = lease_counts(&nodes[0].database).await;
        (counts.len() == 3 && counts.values().all(|&n| n == 2)).then_some(())
    })
    .await;
    // Slow the receiver a little so deliveries are in flight when the node dies.
    for path in &paths {
        receiver.delay(path, 5).await;
    }

    // Publishing goes on through the kill: to all three nodes before, to the two
    // survivors after.
    let before: Vec<String> = (0..200).map(|n| format!("k-before-{n}")).collect();
    let after: Vec<String> = (0..200).map(|n| format!("k-after-{n}")).collect();
    let mut acknowledged = publish_round_robin(&nodes.iter().collect::<Vec<_>>(), &before).await;
    let mut victim = nodes.pop().expect("three nodes");
    let victim_node = victim.node_id().expect("a node id").to_owned();
    let held: HashSet<String> = leases(&victim.database)
        .await
        .into_iter()
        .filter(|(_, node)| *node == victim_node)
        .map(|(subscription, _)| subscription)
        .collect();
    let held_by_victim: Vec<&String> = subscribed
        .iter()
        .filter(|(_, id)| held.contains(id))
        .map(|(path, _)| path)
        .collect();
    assert_eq!(held_by_victim.len(), 2, "the victim holds its share");
    victim.kill().await;
    let survivors: Vec<&TestApp> = nodes.iter().collect();
    acknowledged.extend(publish_round_robin(&survivors, &after).await);

    let duplicates = wait_for_all(&receiver, &paths, &acknowledged).await;
    let counts = lease_counts(&nodes[0].database).await;
    assert_eq!(
        counts.len(),
        2,
        "only the survivors hold leases: {counts:?}"
    );
    assert_eq!(counts.values().sum::<i64>(), SUBSCRIPTIONS as i64);
    let total: usize = duplicates.values().sum();
    eprintln!(
        "killed a node holding {held_by_victim:?}; {} events acknowledged, all delivered to {} subscriptions; duplicates (in flight on the dead node): {total} {duplicates:?}",
        acknowledged.len(),
        paths.len()
    );
    // Duplicates can only come from deliveries the dead node made but had not saved,
    // so only at the subscriptions it held.
    for path in &paths {
        let (ids, _) = received(&receiver, path).await;
        assert!(ids.is_superset(&acknowledged), "{path}: nothing lost");
        if !held_by_victim.contains(&path) {
            assert_eq!(duplicates[path], 0, "{path} was never on the dead node");
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: runs in the PostgreSQL pass of scripts/test"]
async fn derived_state_stays_exact_under_concurrent_publishes_to_different_nodes() {
    let nodes = three_nodes_with(&[("REELAY_MAX_SUBSCRIPTIONS_PER_EVENT", "3")]).await;

    // One video changed 150 times through three nodes at once: versions 1 to 150, each
    // once, in log order.
    let changes = (0..150).map(|n| {
        let node = &nodes[n % 3];
        let body = json!({
            "eventName": "asset-updated", "originator": "tests", "tenant": "vimond",
            "timestamp": "2022-09-19T08:36:30.321Z", "guid": format!("v-{n}"), "assetId": 42
        })
        .to_string();
        async move {
            let (status, answer) = node.post("/v1/accounts/vimond/events", &body).await;
            assert_eq!(status, 202, "{answer}");
        }
    });
    futures::future::join_all(changes).await;
    let logged = nodes[1].stored_events("vimond").await;
    let versions: Vec<i64> = logged
        .iter()
        .filter(|event| event["name"] == "video-change")
        .map(|event| event["event"]["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, (1..=150).collect::<Vec<i64>>());

    // Nine subscriptions to one event name asked of three nodes at once, with a limit
    // of three: three are created, six refused.
    let receiver = Receiver::start().await;
    let requests = (0..9).map(|n| {
        let node = &nodes[n % 3];
        let body =
            json!({"endpoint": receiver.url(&format!("/limit{n}")), "events": ["asset-updated"]})
                .to_string();
        async move {
            node.post("/v1/accounts/vimond/subscriptions", &body)
                .await
                .0
        }
    });
    let mut statuses = futures::future::join_all(requests).await;
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 422, 422, 422, 422, 422, 422]);
    let (_, listed) = nodes[2].get("/v1/accounts/vimond/subscriptions").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
}
