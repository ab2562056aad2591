//! The `reconcile` function and command (rules §10.1, §10.2): compares every account's credited
//! payments with Stripe's and its ledger with its balance (`topup::reconcile`), and reports.
//!
//! The daily schedule reconciles every account; `{"account_id": "..."}` reconciles one. Each
//! difference is logged; when any needs a person (wrong, or lagging past the grace period) the
//! invocation fails, which raises the function's `Errors` alarm. It never writes.

use serde_json::Value;
use topup::engine::Credits;
use topup::events::EventBus;
use topup::payments::PaymentHistory;
use topup::reconcile::Report;
use topup::store::Store;
use topup::ApiError;

/// How long Stripe may be ahead of us before a lagging difference is a problem: a webhook
/// Stripe is still retrying (it retries for up to three days, at growing intervals).
pub const GRACE_S: i64 = 3600;

/// Reconciles one account (`account_id` in the event) or all of them.
pub async fn reconcile<S: Store, B: EventBus, H: PaymentHistory>(
    credits: &Credits<S, B>,
    history: &H,
    event: &Value,
) -> Result<Report, ApiError> {
    match event["account_id"].as_str() {
        Some(id) => {
            let mut report = Report::empty();
            report.add(credits.reconcile_account(history, id).await?);
            Ok(report)
        }
        None => credits.reconcile_all(history).await,
    }
}

/// Logs every difference; the count of those that need a person.
pub fn log_report(report: &Report, grace_s: i64) -> usize {
    let mut problems = 0;
    for d in &report.differences {
        let difference = serde_json::to_string(d).unwrap_or_default();
        if d.is_problem(grace_s) {
            problems += 1;
            tracing::error!(account_id = %d.account_id, code = d.code, %difference, "reconciliation difference");
        } else {
            tracing::warn!(account_id = %d.account_id, code = d.code, %difference, "reconciliation difference within grace");
        }
    }
    tracing::info!(
        accounts = report.accounts,
        credited_payments = report.credited_payments,
        stripe_payments = report.stripe_payments,
        differences = report.differences.len(),
        problems,
        "reconciled"
    );
    problems
}
