//! The `notify` function: EventBridge delivers topup's events (`BalanceLow`, `BalanceDepleted`,
//! `AutoRechargeSucceeded`, `AutoRechargeFailed`, `CreditsAdded`, ...) and it sends the
//! notifications they call for by email (SES v2) and SMS (SNS), each message at most once
//! (rules §8). A retryable failure fails the invocation so EventBridge retries; the template
//! gives it a dead-letter queue.

pub use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde_json::{json, Value};
use topup::notify::{Channels, Notifier, RetryLater};
use topup::store::Store;

/// Handles one EventBridge event: its `detail-type` says which of ours, its `detail` is the
/// event's detail as topup published it.
pub async fn handle<S: Store, C: Channels>(
    notifier: &Notifier<S, C>,
    event: &EventBridgeEvent<Value>,
) -> Result<Value, RetryLater> {
    let detail_type = event.detail_type.as_str();
    let report = notifier.deliver(detail_type, &event.detail).await?;
    tracing::info!(
        detail_type,
        kind = report.kind.unwrap_or("none"),
        sent = report.sent,
        already = report.already,
        skipped = report.skipped,
        failed = report.failed,
        "notification delivered"
    );
    Ok(json!({
        "kind": report.kind,
        "sent": report.sent,
        "already_sent": report.already,
        "skipped": report.skipped,
        "failed": report.failed,
    }))
}
