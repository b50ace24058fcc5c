//! The checks a subscription's destination passes before anything is stored, as its
//! sink defines them ([`crate::sinks::Sinks::check`]): its own rules, the private-address
//! rule and the operator's allowlists for what an account key gives, and, unless
//! skipped, its healthcheck, within a bounded time. Here they become API errors.

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::model::Destination;
use crate::sinks::Refusal;

/// Where a destination came in the request: the Brightcove `endpoint` (a webhook URL),
/// or `destination` (whose members the refusal names below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Given {
    Endpoint,
    Destination,
}

/// The API error of a refusal, naming the member as the request gave it.
pub(super) fn refused(refusal: Refusal, given: Given) -> ApiError {
    let field = match (given, refusal.field) {
        (Given::Endpoint, _) => "endpoint".to_owned(),
        (Given::Destination, Some(member)) => format!("destination.{member}"),
        (Given::Destination, None) => "destination".to_owned(),
    };
    ApiError::Unprocessable {
        code: refusal.code,
        message: refusal.message,
        index: None,
        field: Some(field),
    }
}

/// Checks `destination` for a subscription of `account` created by `caller`; `reach`
/// whether its healthcheck runs (it exists and answers).
pub(super) async fn check(
    state: &AppState,
    caller: &Caller,
    account: &str,
    destination: &Destination,
    given: Given,
    reach: bool,
) -> Result<(), ApiError> {
    state
        .dispatcher
        .sinks()
        .check(destination, account, *caller == Caller::Admin, reach)
        .await
        .map_err(|refusal| refused(refusal, given))
}
