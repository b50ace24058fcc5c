//! The class of one delivery attempt for the metrics (`reelay_delivery_attempts_total`'s
//! `class` label): the answer's HTTP status class, or why there was no answer. A closed,
//! small set, so the label's cardinality is fixed whatever the receivers answer.

use crate::sinks::{AttemptResult, Attempted};

/// Why an attempt ended as it did, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusClass {
    /// Arrived at a destination without HTTP statuses (a sink that is no HTTP
    /// endpoint: the AWS services, the message buses).
    Ok,
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// No answer within the delivery timeout.
    Timeout,
    /// The connection could not be made (refused, DNS, TLS handshake).
    Connect,
    /// Not sent: the subscription's transform failed on the event.
    Rejected,
    /// Any other failure without an HTTP status (an AWS or bus error).
    Error,
}

impl StatusClass {
    pub(super) const ALL: [StatusClass; 10] = [
        StatusClass::Ok,
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Timeout,
        StatusClass::Connect,
        StatusClass::Rejected,
        StatusClass::Error,
    ];

    pub(super) fn of(attempted: &Attempted) -> StatusClass {
        if let Some(status) = attempted.status {
            return match status / 100 {
                1 => StatusClass::Informational,
                2 => StatusClass::Success,
                3 => StatusClass::Redirect,
                4 => StatusClass::ClientError,
                _ => StatusClass::ServerError,
            };
        }
        match &attempted.result {
            AttemptResult::Delivered => StatusClass::Ok,
            AttemptResult::Rejected { .. } => StatusClass::Rejected,
            AttemptResult::Gone => StatusClass::ClientError,
            AttemptResult::Failed { error, .. } | AttemptResult::Throttled { error, .. } => {
                // The webhook sink's own wording (`sinks::webhook`): "timed out" for its
                // deadline, "connection failed: …" when no connection was made.
                if error.contains("timed out") {
                    StatusClass::Timeout
                } else if error.starts_with("connection failed") {
                    StatusClass::Connect
                } else {
                    StatusClass::Error
                }
            }
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            StatusClass::Ok => "ok",
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Timeout => "timeout",
            StatusClass::Connect => "connect",
            StatusClass::Rejected => "rejected",
            StatusClass::Error => "error",
        }
    }

    pub(super) fn index(self) -> usize {
        StatusClass::ALL
            .iter()
            .position(|&class| class == self)
            .unwrap_or(0)
    }
}

/// The `outcome` label of an attempt (the same names as `reelay_deliveries_total`).
pub(super) fn outcome_label(result: &AttemptResult) -> &'static str {
    match result {
        AttemptResult::Delivered => "delivered",
        AttemptResult::Gone => "gone",
        AttemptResult::Failed { .. }
        | AttemptResult::Throttled { .. }
        | AttemptResult::Rejected { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn attempted(status: Option<u16>, result: AttemptResult) -> Attempted {
        Attempted {
            result,
            status,
            latency: Duration::ZERO,
            response: None,
        }
    }

    fn failed(error: &str) -> AttemptResult {
        AttemptResult::Failed {
            error: error.into(),
            retry_after: None,
        }
    }

    #[test]
    fn classes_follow_the_status_then_the_error() {
        let class = |status, result| StatusClass::of(&attempted(status, result)).label();
        assert_eq!(class(Some(204), AttemptResult::Delivered), "2xx");
        assert_eq!(class(None, AttemptResult::Delivered), "ok");
        assert_eq!(class(Some(301), failed("redirect")), "3xx");
        assert_eq!(class(Some(404), failed("not found")), "4xx");
        assert_eq!(class(Some(410), AttemptResult::Gone), "4xx");
        assert_eq!(class(Some(503), failed("unavailable")), "5xx");
        assert_eq!(class(None, failed("timed out")), "timeout");
        assert_eq!(
            class(None, failed("connection failed: Connection refused")),
            "connect"
        );
        assert_eq!(
            class(None, failed("connection failed: connect timed out")),
            "timeout"
        );
        assert_eq!(class(None, failed("SQS: AccessDenied")), "error");
        assert_eq!(
            class(
                None,
                AttemptResult::Rejected {
                    error: "transform".into()
                }
            ),
            "rejected"
        );
        for (index, class) in StatusClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), index);
        }
    }
}
