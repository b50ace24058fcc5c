//! `reelay tail`: follows an account's event stream (`GET …/events/stream`) and prints
//! each committed event as one JSON line, resuming after the last one it printed when
//! the connection drops (or the server cut it off as a slow reader).

use std::io::Write;
use std::time::Duration;

use clap::Args;

/// Settings of `reelay tail`.
#[derive(Debug, Clone, Args)]
pub struct TailConfig {
    /// The account whose events to follow.
    pub account: String,
    /// The server's URL.
    #[arg(long, env = "REELAY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A bearer token: the admin token, or a key of the account with the `read` scope.
    #[arg(long, env = "REELAY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Only events of this topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only events of this name.
    #[arg(long)]
    pub event: Option<String>,
    /// Only events of this entity (its key: an `assetId`, …).
    #[arg(long)]
    pub entity: Option<String>,
    /// Only events committed at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Start after this sequence number (`0`: the whole log); default: from now on.
    #[arg(long)]
    pub after: Option<i64>,
}

/// Runs until interrupted (or the server refuses the request).
pub async fn run(config: TailConfig) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut url = url::Url::parse(&config.url)?;
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("{} cannot be a server's URL", config.url))?
        .pop_if_empty()
        .extend(["v1", "accounts", &config.account, "events", "stream"]);
    let mut last: Option<i64> = config.after;
    let mut stdout = std::io::stdout();
    loop {
        let mut address = url.clone();
        for (name, value) in [
            ("topic", &config.topic),
            ("event", &config.event),
            ("entity", &config.entity),
            ("since", &config.since),
        ] {
            if let Some(value) = value {
                address.query_pairs_mut().append_pair(name, value);
            }
        }
        let mut request = http.get(address).bearer_auth(&config.token);
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                eprintln!("reelay tail: {error}; connecting again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("the server answered {status}: {text}");
        }
        let mut pending = String::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    eprintln!("reelay tail: {error}");
                    break;
                }
            };
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let message: String = pending.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                let mut kind = None;
                for line in message.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = value.trim().parse::<i64>().ok();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        kind = Some(value.trim().to_owned());
                    }
                }
                match kind.as_deref() {
                    Some("cutoff") => eprintln!("reelay tail: cut off as a slow reader; resuming"),
                    _ if !data.is_empty() => {
                        writeln!(stdout, "{data}")?;
                        stdout.flush()?;
                        if id.is_some() {
                            last = id;
                        }
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
