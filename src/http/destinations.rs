//! The checks a subscription's destination passes before anything is stored: the
//! private-address rule (webhook URLs and AWS `endpointUrl`s alike), the operator's
//! allowlists for the AWS overrides an account key gives, and, unless skipped, that the
//! AWS topic, queue or stream answers, within a bounded time.

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::model::Destination;
use crate::sinks::aws::AwsResource;
use crate::sinks::guard::check_destination;

fn refused(code: &'static str, field: &str, message: String) -> ApiError {
    ApiError::Unprocessable {
        code,
        message,
        index: None,
        field: Some(field.to_owned()),
    }
}

/// Checks `destination` for a subscription of `account` created by `caller`;
/// `webhook_field` names the member a webhook URL came in (`endpoint` or
/// `destination.url`), `reach` whether an AWS resource is asked whether it exists.
pub(super) async fn check(
    state: &AppState,
    caller: &Caller,
    account: &str,
    destination: &Destination,
    webhook_field: &str,
    reach: bool,
) -> Result<(), ApiError> {
    let allow_private = state.allow_private_destinations;
    let Some((_, options)) = AwsResource::of(destination) else {
        if let Destination::Webhook { url } = destination {
            check_destination(url, allow_private)
                .await
                .map_err(|error| {
                    refused("destination_refused", webhook_field, error.to_string())
                })?;
        }
        return Ok(());
    };
    state
        .aws_policy
        .check(options, *caller == Caller::Admin)
        .map_err(|error| refused(error.code(), error.field(), error.to_string()))?;
    // Before any request: the check below would otherwise connect to it.
    if let Some(endpoint) = &options.endpoint_url {
        check_destination(endpoint, allow_private)
            .await
            .map_err(|error| {
                refused(
                    "destination_refused",
                    "destination.endpointUrl",
                    error.to_string(),
                )
            })?;
    }
    if reach {
        state
            .dispatcher
            .check_aws_destination(account, destination)
            .await
            .map_err(|error| {
                refused(
                    "destination_unreachable",
                    "destination",
                    format!(
                        "the destination cannot be reached: {error} (set skipDestinationCheck to create it anyway)"
                    ),
                )
            })?;
    }
    Ok(())
}
