//! What the message-bus sinks (NATS JetStream, RabbitMQ) share: the subject or routing
//! key template, the headers every message carries, and the connection URL a
//! destination uses (its own, held to the operator's rules, or the server's).

use super::aws_policy::{UrlPolicy, parse_bus_url, redacted};
use super::guard::check_host;
use super::{Admission, Refusal};
use crate::model::{StoredEvent, TraceContext};

/// A subject or routing key with placeholders: `{account}`, `{eventName}`, `{topic}`,
/// `{entity}` (the event's entity key, `_` when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Account,
    EventName,
    Topic,
    Entity,
}

/// The placeholders, as written.
pub const PLACEHOLDERS: &str = "{account}, {eventName}, {topic}, {entity}";

impl Template {
    /// Reads a template; an unknown or unclosed placeholder is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{text:?} has a {{ without its }}"))?;
            parts.push(match &after[..close] {
                "account" => Part::Account,
                "eventName" => Part::EventName,
                "topic" => Part::Topic,
                "entity" => Part::Entity,
                other => {
                    return Err(format!(
                        "{{{other}}} is not a placeholder (they are {PLACEHOLDERS})"
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?} has a }} without its {{"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The subject or key itself, when the template has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// The template with every placeholder as `x`, to check its shape.
    pub fn sample(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                _ => "x",
            })
            .collect()
    }

    /// The subject or key of `event`. A value is made one token: `.`, whitespace and
    /// the wildcards (`*`, `>`, `#`) become `_`, so an entity key cannot add levels.
    pub fn render(&self, event: &StoredEvent) -> String {
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Text(text) => {
                    out.push_str(text);
                    continue;
                }
                Part::Account => event.account.as_str(),
                Part::EventName => event.name.as_str(),
                Part::Topic => event.topic.as_str(),
                Part::Entity => event.entity_key.as_deref().unwrap_or(""),
            };
            if value.is_empty() {
                out.push('_');
            }
            out.extend(value.chars().map(|c| match c {
                '.' | '*' | '>' | '#' => '_',
                c if c.is_whitespace() || c.is_control() => '_',
                c => c,
            }));
        }
        out
    }
}

/// The headers every bus message carries, beside its id (`Nats-Msg-Id`, AMQP
/// `message_id`: the delivery id, so a broker that de-duplicates drops a redelivery).
/// With `trace`, `traceparent` and `tracestate` too (W3C Trace Context).
pub fn headers(event: &StoredEvent, trace: Option<&TraceContext>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Reelay-Event-Name", event.name.clone()),
        ("Reelay-Topic", event.topic.clone()),
        ("Reelay-Account", event.account.clone()),
        ("Reelay-Sequence", event.seq.to_string()),
    ];
    if let Some(key) = &event.entity_key {
        headers.push(("Reelay-Entity-Key", key.clone()));
    }
    if let Some(trace) = trace {
        headers.push(("traceparent", trace.traceparent.clone()));
        if let Some(state) = &trace.tracestate {
            headers.push(("tracestate", state.clone()));
        }
    }
    headers
}

/// The connection URL of a bus destination: its own `url` (checked against the
/// operator's rules by [`admit_url`]), else the server's for `kind`.
pub fn connection_url(
    sinks: &super::Sinks,
    kind: &str,
    given: Option<&str>,
) -> Result<url::Url, String> {
    match given {
        Some(url) => url::Url::parse(url).map_err(|_| format!("{url:?} is not a URL")),
        None => sinks
            .config()
            .buses
            .get(kind)
            .and_then(|policy| policy.default.clone())
            .ok_or_else(|| format!("no url, and the server has no default {kind} URL")),
    }
}

/// The operator's rules on a bus destination's `url`: a URL of `schemes`, allowed for
/// this caller (`flag` names the allowlist), on a public address unless private
/// destinations are allowed; without a `url`, the server must have a default
/// (`default_flag`).
pub async fn admit_url(
    admission: &Admission<'_>,
    kind: &str,
    given: Option<&str>,
    schemes: &[&str],
    (flag, default_flag): (&str, &str),
) -> Result<(), Refusal> {
    let config = admission.sinks.config();
    let none = UrlPolicy::default();
    let policy = config.buses.get(kind).unwrap_or(&none);
    let Some(given) = given else {
        return match policy.default {
            Some(_) => Ok(()),
            None => Err(Refusal::invalid(
                Some("url"),
                format!("give url: this server has no default {kind} URL ({default_flag})"),
            )),
        };
    };
    let parsed =
        parse_bus_url(given, schemes).map_err(|message| Refusal::invalid(Some("url"), message))?;
    policy
        .check(&parsed, admission.by_admin, flag)
        .map_err(|error| Refusal {
            code: error.code(),
            field: Some("url"),
            message: error.to_string(),
        })?;
    check_host(&parsed, config.allow_private)
        .await
        .map_err(|error| Refusal {
            code: "destination_refused",
            field: Some("url"),
            message: error.to_string().replace(given, &redacted(&parsed)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Document;

    fn event(entity: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq: 7,
            account: "acme".into(),
            id: "e-7".into(),
            name: "asset-updated".into(),
            topic: "asset-operations".into(),
            entity_key: entity.map(str::to_owned),
            occurred_at: 0,
            received_at: 0,
            body: Document::from("{}"),
            trace: None,
        }
    }

    #[test]
    fn templates_fill_in_the_event_one_token_per_value() {
        let template = Template::parse("video.{account}.{eventName}.{entity}").unwrap();
        assert_eq!(
            template.render(&event(Some("a.b *>#"))),
            "video.acme.asset-updated.a_b____"
        );
        assert_eq!(template.render(&event(None)), "video.acme.asset-updated._");
        assert_eq!(
            Template::parse("{topic}").unwrap().render(&event(None)),
            "asset-operations"
        );
        assert_eq!(Template::parse("fixed").unwrap().sample(), "fixed");
        assert!(
            Template::parse("a.{tenant}")
                .unwrap_err()
                .contains("{tenant}")
        );
        assert!(Template::parse("a.{account").is_err());
        assert!(Template::parse("a.account}").is_err());
    }

    #[test]
    fn headers_name_the_event() {
        let names: Vec<&str> = headers(&event(Some("v1")), None)
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(
            names,
            [
                "Reelay-Event-Name",
                "Reelay-Topic",
                "Reelay-Account",
                "Reelay-Sequence",
                "Reelay-Entity-Key"
            ]
        );
        assert_eq!(headers(&event(None), None).len(), 4);
    }

    #[test]
    fn a_traced_delivery_carries_its_trace_context_as_headers() {
        let trace = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: Some("rojo=00f067aa0ba902b7".into()),
        };
        let headers = headers(&event(None), Some(&trace));
        assert_eq!(
            &headers[4..],
            [
                ("traceparent", trace.traceparent.clone()),
                ("tracestate", "rojo=00f067aa0ba902b7".to_owned())
            ]
        );
    }
}
