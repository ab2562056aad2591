//! The `auto-recharge` function (SPEC §8): EventBridge delivers `BalanceLow` and a schedule
//! triggers the sweep. Either way the recharge is claimed with one conditional write, charged
//! off-session once, and credited through the same exactly-once path as the webhook.

use serde_json::{json, Value};
use topup::events::EventBus;
use topup::payments::Payments;
use topup::recharge::LEASE_MS;
use topup::service::Credits;
use topup::store::Store;
use topup::ApiError;

/// Accounts one sweep looks at.
pub const SWEEP_LIMIT: usize = 500;

/// Handles one EventBridge event: `BalanceLow` for an account, or the scheduled sweep.
pub async fn handle<S: Store, B: EventBus, P: Payments>(
    credits: &Credits<S, B>,
    payments: &P,
    event: &Value,
) -> Result<Value, ApiError> {
    let detail_type = event["detail-type"].as_str().unwrap_or_default();
    let out = match detail_type {
        "BalanceLow" => {
            let Some(account_id) = event["detail"]["account_id"].as_str() else {
                tracing::warn!("BalanceLow without account_id");
                return Ok(json!({"result": "ignored"}));
            };
            let result = credits.recharge(payments, account_id).await?;
            tracing::info!(account_id, outcome = %result.to_json(), "recharge on BalanceLow");
            result.to_json()
        }
        "Scheduled Event" => {
            let report = credits.sweep(payments, SWEEP_LIMIT, LEASE_MS).await?;
            tracing::info!(report = %report, "sweep");
            report
        }
        other => {
            tracing::warn!(detail_type = other, "event ignored");
            json!({"result": "ignored"})
        }
    };
    Ok(out)
}
