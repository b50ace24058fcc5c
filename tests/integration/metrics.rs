//! What an operator runs on: every metric the shipped Grafana dashboard and Prometheus
//! alert rules use is emitted, per-subscription series stay bounded with 10,000
//! subscriptions, and the JSON log names the ids of each line and no secret.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::app::{ADMIN, TestApp, eventually};
use crate::publish::asset_event;
use crate::support::otlp::{MetricPoint, OtlpReceiver};
use crate::support::receiver::{Receiver, Response};

const DASHBOARD: &str = include_str!("../../docs/grafana/reelay.json");
const ALERTS: &str = include_str!("../../docs/prometheus/alerts.yml");

/// Every `reelay_*` metric name in `text` (PromQL expressions, or a whole file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("reelay_") {
        let before = rest[..start].chars().next_back();
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Part of a longer identifier (`x_reelay_y`) is no name of ours.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression of the dashboard (`expr` of its targets, its variables'
/// queries).
fn dashboard_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr" | "query", Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_expressions(inner, out),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| dashboard_expressions(item, out)),
        _ => {}
    }
}

/// The alert rules' `expr` values (single-line, or a `|` block).
fn alert_expressions(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let expr = expr.trim();
        if expr != "|" {
            exprs.push(expr.to_owned());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            } else {
                break;
            }
        }
        exprs.push(block);
    }
    exprs
}

/// The samples of a scrape: metric name → its sample lines.
fn samples(scrape: &str) -> HashMap<String, Vec<String>> {
    let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        by_name
            .entry(line[..end].to_owned())
            .or_default()
            .push(line.to_owned());
    }
    by_name
}

async fn scrape(app: &TestApp) -> String {
    let response = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

/// The value of the one sample of an unlabelled metric.
fn value(samples: &HashMap<String, Vec<String>>, name: &str) -> Option<f64> {
    let line = samples.get(name)?.first()?;
    line.rsplit(' ').next()?.parse().ok()
}

/// A server with the metrics pass and retention on a fast pace, the account "vimond"
/// opted in to series of its own.
async fn observed_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![
        ("REELAY_METRICS_INTERVAL", "200ms"),
        ("REELAY_RETENTION_INTERVAL", "1s"),
        ("REELAY_METRICS_ACCOUNTS", "vimond"),
    ];
    env.extend_from_slice(extra);
    TestApp::start_with(&env).await
}

/// What the traffic left: the subscriptions and secrets, and the published event's id.
struct Traffic {
    flaky: String,
    secrets: Vec<String>,
    event_id: String,
}

/// A publish delivered to a receiver that fails once then recovers, to one that always
/// fails (its retries run out: a dead letter), and to one that takes it at once; then a
/// refused publish.
async fn drive_traffic(app: &TestApp, receiver: &Receiver) -> Traffic {
    let filter = json!({"events": ["asset-updated"]});
    let (flaky, flaky_secret) = app
        .subscribe_receiver(
            receiver,
            "/flaky",
            filter.clone(),
            &[Response::status(503), Response::status(200)],
        )
        .await;
    let (_, down_secret) = app
        .subscribe_receiver(receiver, "/down", filter.clone(), &[Response::status(500)])
        .await;
    let (_, ok_secret) = app
        .subscribe_receiver(receiver, "/ok", filter, &[Response::status(200)])
        .await;
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("asset-updated", "metrics-1").to_string(),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let event_id = answer["ids"][0].as_str().expect("an id").to_owned();
    // Refused: no such event type.
    let (status, answer) = app
        .post(
            "/v1/accounts/vimond/events",
            &asset_event("no-such-event", "metrics-2").to_string(),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    eventually(
        Duration::from_secs(20),
        "the flaky receiver's retry",
        || async { (receiver.deliveries("/flaky").await.len() >= 2).then_some(()) },
    )
    .await;
    Traffic {
        flaky,
        secrets: vec![flaky_secret, down_secret, ok_secret],
        event_id,
    }
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alert_rules_is_emitted() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_expressions(&dashboard, &mut exprs);
    exprs.extend(alert_expressions(ALERTS));
    let mut used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // Every name in the files is in an expression (none only in a comment or summary).
    let in_files: BTreeSet<String> = metric_names(DASHBOARD)
        .into_iter()
        .chain(metric_names(ALERTS))
        .collect();
    assert_eq!(used, in_files, "names outside the parsed expressions");
    assert!(used.len() >= 30, "the files name few metrics: {used:?}");

    let app = observed_app(&[]).await;
    if app.database.starts_with("postgres") {
        // A PostgreSQL server's disk is the database server's: no disk gauges.
        used.retain(|name| !name.starts_with("reelay_disk_"));
    }
    let receiver = Receiver::start().await;
    drive_traffic(&app, &receiver).await;

    // The always-failing receiver's retries run out (200ms, 400ms, 600ms): a dead letter,
    // which keeps it among the top subscriptions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = samples(&scrape(&app).await);
        let missing: Vec<&String> = used.iter().filter(|n| !scraped.contains_key(*n)).collect();
        let dead = value(&scraped, "reelay_dead_letters").unwrap_or(0.0);
        if missing.is_empty() && dead >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not in the scrape after 30s: {missing:?} (dead letters: {dead})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And what the traffic did shows in them.
    let scraped = samples(&scrape(&app).await);
    let lines = |name: &str| scraped.get(name).cloned().unwrap_or_default().join("\n");
    let attempts = lines("reelay_delivery_attempts_total");
    assert!(
        attempts.contains(r#"class="5xx",outcome="failed"} "#)
            && !attempts.contains(r#"class="5xx",outcome="failed"} 0"#),
        "{attempts}"
    );
    assert!(
        !attempts.contains(r#"class="2xx",outcome="delivered"} 0"#),
        "{attempts}"
    );
    let refused = lines("reelay_publishes_refused_total");
    assert!(refused.contains(r#"code="invalid_event"} 1"#), "{refused}");
    let per_account = lines("reelay_account_publishes_refused_total");
    assert!(
        per_account.contains(r#"account="vimond",code="invalid_event"} 1"#),
        "{per_account}"
    );
    assert!(
        lines("reelay_account_events_published_total").contains(r#"account="vimond"} 1"#),
        "{}",
        lines("reelay_account_events_published_total")
    );
    let dead = lines("reelay_subscription_dead_letters");
    assert!(
        dead.contains("} 1"),
        "the dead letter's subscription: {dead}"
    );
    assert_eq!(value(&scraped, "reelay_storage_available"), Some(1.0));
    assert_eq!(value(&scraped, "reelay_subscriptions_running"), Some(3.0));
}

/// The metric names a scrape declares (`# TYPE name kind`), with their kinds.
fn declared(scrape: &str) -> BTreeSet<(String, String)> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// With OTLP on, the figures `/metrics` shows also reach a real OTLP/HTTP collector
/// (PyPI `opentelemetry-proto` decodes them): every metric of the scrape, as a series of
/// the same kind, with the same labels and values.
#[tokio::test]
async fn with_otlp_on_the_same_figures_reach_the_collector() {
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let app = observed_app(&[
        ("REELAY_OTLP_ENDPOINT", &endpoint),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ])
    .await;
    let receiver = Receiver::start().await;
    drive_traffic(&app, &receiver).await;

    let find = |points: &[MetricPoint], name: &str, labels: &[(&str, &str)]| {
        points
            .iter()
            .find(|point| {
                point.name == name
                    && labels.iter().all(|(key, value)| {
                        point.attributes.get(*key).and_then(Value::as_str) == Some(*value)
                    })
            })
            .map(|point| point.value)
    };
    // Every family of a scrape, of the same kind over OTLP, once both have caught up
    // with the traffic (exports come every 300 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    let points = loop {
        let points = otlp.metrics().await;
        let exported: BTreeSet<(&str, &str)> = points
            .iter()
            .map(|point| (point.name.as_str(), point.kind.as_str()))
            .collect();
        let missing: Vec<_> = declared(&scrape(&app).await)
            .into_iter()
            .filter(|(name, kind)| {
                let otlp_kind = match kind.as_str() {
                    "counter" => "sum",
                    "gauge" => "gauge",
                    _ => "histogram",
                };
                !exported.contains(&(name.as_str(), otlp_kind))
            })
            .collect();
        let refused = find(
            &points,
            "reelay_account_publishes_refused_total",
            &[("account", "vimond"), ("code", "invalid_event")],
        );
        let running = find(&points, "reelay_subscriptions_running", &[]);
        if missing.is_empty() && refused == Some(1.0) && running == Some(3.0) {
            break points;
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s, in the scrape but not over OTLP (or of another kind): {missing:?}; \
             refused {refused:?}, running {running:?}\nexported: {exported:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The per-subscription series, labelled as on /metrics.
    assert!(
        points.iter().any(
            |point| point.name == "reelay_subscription_consecutive_failures"
                && point.attributes.contains_key("subscription")
                && point.attributes.get("account").and_then(Value::as_str) == Some("vimond")
        ),
        "a top subscription's series with its labels"
    );
    assert_eq!(
        find(
            &points,
            "reelay_publishes_refused_total",
            &[("code", "invalid_event")]
        ),
        Some(1.0)
    );
    assert!(
        find(
            &points,
            "reelay_delivery_attempts_total",
            &[("class", "5xx"), ("outcome", "failed")]
        )
        .is_some_and(|failed| failed >= 1.0),
        "failed attempts by status class"
    );
    assert!(
        points
            .iter()
            .all(|point| point.service.as_deref() == Some("reelay"))
    );
    assert!(otlp.requests().await.errors.is_empty());
}

/// Adds `copies` subscriptions to the stopped server's database, each a copy of
/// `template` under a new id (its sealed secret is bound to no id, so the copies open).
/// Thousands of API calls would take minutes in a debug build.
async fn copy_subscription(database: &str, template: &str, copies: usize) {
    use sqlx::Connection;
    let statements = [
        "CREATE TEMP TABLE template AS SELECT * FROM subscriptions WHERE id = $1",
        "UPDATE template SET id = $1",
        "INSERT INTO subscriptions SELECT * FROM template",
    ];
    macro_rules! copy {
        ($connection:expr) => {{
            let mut connection = $connection;
            let mut tx = connection.begin().await.expect("begin");
            sqlx::query(statements[0])
                .bind(template)
                .execute(&mut *tx)
                .await
                .expect("the template");
            for i in 0..copies {
                let id = format!("sub_copy{i:06}");
                sqlx::query(statements[1])
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .expect("rename");
                sqlx::query(statements[2])
                    .execute(&mut *tx)
                    .await
                    .expect("copy");
            }
            tx.commit().await.expect("commit");
        }};
    }
    if database.starts_with("postgres") {
        copy!(
            sqlx::PgConnection::connect(database)
                .await
                .expect("connect")
        );
    } else {
        copy!(
            sqlx::SqliteConnection::connect(database)
                .await
                .expect("connect")
        );
    }
}

#[tokio::test]
async fn ten_thousand_subscriptions_do_not_make_ten_thousand_series() {
    const SUBSCRIPTIONS: usize = 10_000;
    const FAILING: usize = 30;
    let mut app = observed_app(&[
        ("REELAY_MAX_SUBSCRIPTIONS_PER_ACCOUNT", "20000"),
        ("REELAY_MAX_SUBSCRIPTIONS_PER_EVENT", "20000"),
        // Many opted-in accounts would be many series: none here.
        ("REELAY_METRICS_ACCOUNTS", ""),
    ])
    .await;
    let receiver = Receiver::start().await;
    for i in 0..FAILING {
        receiver
            .hook(&format!("/down/{i}"), "", &[Response::status(500)])
            .await;
    }
    let started = Instant::now();
    // A few that fail, through the API.
    let url = format!("{}/v1/accounts/vimond/subscriptions", app.url);
    let created = futures::stream::iter(0..FAILING)
        .map(|i| {
            // One endpoint each: a second subscription of the same URL is refused.
            let endpoint = receiver.url(&format!("/down/{i}"));
            let body = json!({"events": ["asset-updated"], "endpoint": endpoint});
            let (http, url) = (app.http.clone(), url.clone());
            async move {
                let response = http
                    .post(url)
                    .bearer_auth(ADMIN)
                    .json(&body)
                    .send()
                    .await
                    .expect("create");
                response.status().as_u16()
            }
        })
        .buffer_unordered(8)
        .filter(|status| std::future::ready(*status == 201))
        .count()
        .await;
    assert_eq!(created, FAILING);
    // The quiet ones (an event never published), copied in the database.
    let (quiet, _) = app
        .subscribe(
            "vimond",
            json!({"events": ["asset-deleted"], "endpoint": receiver.url("/quiet")}),
        )
        .await;
    app.terminate().await;
    copy_subscription(&app.database, &quiet, SUBSCRIPTIONS - FAILING - 1).await;
    app.kill_and_restart().await;
    eprintln!(
        "{SUBSCRIPTIONS} subscriptions stored and the server up in {:?}",
        started.elapsed()
    );
    let (status, listed) = app.get("/v1/accounts/vimond/subscriptions?limit=1").await;
    assert_eq!(status, 200, "{listed}");

    // With PostgreSQL, 10,000 workers starting at once hold the connection pool for a
    // while (`503 storage_unavailable` meanwhile): publish once it takes publishes.
    let body = asset_event("asset-updated", "cardinality-1").to_string();
    eventually(Duration::from_secs(60), "a publish taken", || async {
        let (status, _) = app.post("/v1/accounts/vimond/events", &body).await;
        (status == 202).then_some(())
    })
    .await;
    // PostgreSQL on 2 cores starts 10,000 workers in about a minute (issue 17's start
    // target is not met yet): what this test checks is the series, so it waits longer.
    let deadline = Instant::now() + Duration::from_secs(120);
    let scraped = loop {
        let scraped = samples(&scrape(&app).await);
        let running = value(&scraped, "reelay_subscriptions_running");
        let omitted = value(&scraped, "reelay_metrics_subscriptions_omitted");
        if running == Some(SUBSCRIPTIONS as f64) && omitted == Some((FAILING - 20) as f64) {
            break scraped;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: {running:?} subscriptions running (of {SUBSCRIPTIONS}), \
             {omitted:?} failing ones omitted (expected {})",
            FAILING - 20
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("scraped after {:?}", started.elapsed());
    // The default top 20 of the 30 that fail; the 9,970 quiet ones have none.
    for (name, lines) in &scraped {
        if name.starts_with("reelay_subscription_") {
            assert_eq!(lines.len(), 20, "{name}: {lines:?}");
        }
    }
    assert!(scraped.contains_key("reelay_subscription_consecutive_failures"));
    let series: usize = scraped.values().map(Vec::len).sum();
    assert!(
        series < 1_000,
        "{series} series for {SUBSCRIPTIONS} subscriptions"
    );
    // No account opted in: no per-account series.
    assert!(
        !scraped
            .keys()
            .any(|name| name.starts_with("reelay_account_"))
    );
}

#[tokio::test]
async fn the_json_log_names_the_ids_of_each_line_and_no_secret() {
    let app = observed_app(&[
        ("REELAY_LOG_FORMAT", "json"),
        ("REELAY_LOG", "reelay=debug,info"),
    ])
    .await;
    let receiver = Receiver::start().await;
    let traffic = drive_traffic(&app, &receiver).await;
    let retried = eventually(Duration::from_secs(30), "the retry's log line", || async {
        let logs = app.logs();
        let lines: Vec<Value> = logs
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        lines
            .into_iter()
            .find(|line| line["message"] == "delivered on retry")
    })
    .await;
    assert_eq!(retried["account"], "vimond", "{retried}");
    assert_eq!(retried["subscription"], traffic.flaky.as_str(), "{retried}");
    assert_eq!(retried["event"], traffic.event_id.as_str(), "{retried}");
    assert_eq!(retried["level"], "INFO", "{retried}");
    assert!(retried["timestamp"].is_string(), "{retried}");

    let logs = app.logs();
    let published = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "events published")
        .expect("a publish's log line");
    assert_eq!(published["account"], "vimond", "{published}");
    assert!(
        published["events"]
            .as_str()
            .is_some_and(|ids| ids.contains(&traffic.event_id)),
        "{published}"
    );
    assert!(
        logs.contains("\"message\":\"publish refused\""),
        "the refused publish is logged"
    );
    // Nothing secret: not the admin token, not a signing secret, nor its key part.
    assert!(!logs.contains(ADMIN), "the admin token is in the log");
    for secret in &traffic.secrets {
        let key = secret.trim_start_matches("whsec_");
        assert!(key.len() >= 16, "{secret}");
        assert!(!logs.contains(key), "a signing secret is in the log");
    }
}
