//! The `auto-recharge` function (rules §8): EventBridge delivers `BalanceLow` and a schedule
//! triggers the sweep. Either way the recharge is claimed with one conditional write, charged
//! off-session once, and credited through the same exactly-once path as the webhook.
//!
//! An error that retrying can help (AWS or Stripe unavailable, contention) fails the
//! invocation so Lambda retries it; any other is final: logged, answered, not retried. A charge
//! Stripe did not answer with a card outcome (an error of ours or Stripe's) fails it too: the
//! claim stays in flight and the sweep recovers it, and nobody is told their card failed.

pub use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use topup::engine::Credits;
use topup::events::EventBus;
use topup::payments::Payments;
use topup::recharge::{RechargeResult, LEASE_MS};
use topup::store::Store;
use topup::ApiError;

/// Accounts read from the sweep's index per page (the sweep goes through every page).
pub const SWEEP_PAGE: usize = topup::sweep::SWEEP_PAGE;

/// What EventBridge hands the function: `BalanceLow` for an account, or the schedule's
/// `Scheduled Event` (whose detail is `{}`).
pub type Trigger = EventBridgeEvent<TriggerDetail>;

/// The detail as far as the function reads it: whose balance is low.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerDetail {
    #[serde(default)]
    pub account_id: Option<String>,
}

/// Handles one EventBridge event: `BalanceLow` for an account, or the scheduled sweep.
pub async fn handle<S: Store, B: EventBus, P: Payments>(
    credits: &Credits<S, B>,
    payments: &P,
    trigger: &Trigger,
) -> Result<Value, ApiError> {
    handle_until(credits, payments, trigger, None).await
}

/// `handle` with a deadline for the sweep (the invocation's, less a margin): past it the
/// sweep stops between pages and the next run goes on from its cursor.
pub async fn handle_until<S: Store, B: EventBus, P: Payments>(
    credits: &Credits<S, B>,
    payments: &P,
    trigger: &Trigger,
    deadline: Option<std::time::Instant>,
) -> Result<Value, ApiError> {
    let outcome = match trigger.detail_type.as_str() {
        "BalanceLow" => {
            let Some(account_id) = trigger.detail.account_id.as_deref() else {
                tracing::warn!("BalanceLow without account_id");
                return Ok(json!({"result": "ignored"}));
            };
            credits.recharge(payments, account_id).await.and_then(|result| {
                tracing::info!(account_id, outcome = ?result, "recharge on BalanceLow");
                if result == RechargeResult::Unanswered {
                    // Stripe failed or refused us (not the card): the claim stays in flight for
                    // the sweep to recover, and the function fails so its alarm says so.
                    return Err(ApiError::PaymentsUnavailable);
                }
                serde_json::to_value(result).map_err(|_| ApiError::Upstream)
            })
        }
        "Scheduled Event" => credits.sweep_until(payments, SWEEP_PAGE, LEASE_MS, deadline).await.and_then(|report| {
            // What the alarms watch: accounts the sweep could not handle, and how old the
            // oldest event it found in the outbox was (0 when there was none).
            topup::metrics::emit(
                credits.stack(),
                &[
                    ("SweepFailedAccounts", report.failed as f64, "Count"),
                    ("OutboxOldestAgeSeconds", (report.outbox.oldest_age_ms / 1000) as f64, "Seconds"),
                ],
            );
            serde_json::to_value(report).map_err(|_| ApiError::Upstream)
        }),
        other => {
            tracing::warn!(detail_type = other, "event ignored");
            return Ok(json!({"result": "ignored"}));
        }
    };
    match outcome {
        Err(e) if !e.retryable() => {
            tracing::error!(detail_type = %trigger.detail_type, code = e.code(), "final failure; not retried");
            Ok(json!({"result": "failed", "code": e.code()}))
        }
        other => other,
    }
}
