//! The `reconcile` function and command (rules §10.1, §10.2): compares every account's credited
//! payments with Stripe's and its ledger with its balance (`topup::reconcile`), and reports.
//!
//! The schedule reconciles every account once a day: the day's run (`run` = the UTC date) goes
//! in `SEGMENTS` parallel segments with a checkpoint after every page, stops before the
//! invocation's deadline, and the next scheduled invocation goes on from the checkpoints; once
//! the run is finished, later invocations that day answer from them and read nothing.
//! `{"account_id": "..."}` reconciles one account. Each difference is logged; an account that
//! cannot be read is reported as unreadable and the run goes on. When a difference needs a
//! person (wrong, or lagging past the grace period) or an account was unreadable, the
//! invocation that finished the run fails, which raises the function's `Errors` alarm. It writes
//! nothing but its checkpoints.

pub mod audit_verify;

pub use aws_lambda_events::eventbridge::EventBridgeEvent;
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

/// Segments of the account listing reconciled in parallel by a scheduled run.
pub const SEGMENTS: u32 = 16;

/// What invokes the function: one account by hand (`{"account_id": "..."}`), or the
/// schedule (an EventBridge `Scheduled Event`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Invocation {
    Account { account_id: String },
    Scheduled(EventBridgeEvent<Value>),
}

/// Reconciles one account (`account`) or all of them, as a run of its own.
pub async fn reconcile<S: Store + topup::receipts::ReceiptStore, B: EventBus, H: PaymentHistory>(
    credits: &Credits<S, B>,
    history: &H,
    account: Option<&str>,
) -> Result<Report, ApiError> {
    match account {
        Some(id) => {
            let mut report = Report::empty();
            report.add(credits.reconcile_account(history, id).await?);
            Ok(report)
        }
        None => credits.reconcile_all(history).await,
    }
}

/// The scheduled run of the day (`run`, the UTC date), resumed from its checkpoints; one
/// account when the event names it.
pub async fn scheduled<S: Store + topup::receipts::ReceiptStore, B: EventBus, H: PaymentHistory>(
    credits: &Credits<S, B>,
    history: &H,
    invocation: &Invocation,
    deadline: Option<std::time::Instant>,
) -> Result<Report, ApiError> {
    if let Invocation::Account { account_id } = invocation {
        return reconcile(credits, history, Some(account_id)).await;
    }
    let run = topup::clock::date_of(topup::clock::now_ms());
    credits.reconcile_run(history, &run, SEGMENTS, deadline).await
}

/// Whether an invocation should fail (and alarm): when it finished a run, or reconciled one
/// account, and found something that needs a person. An unfinished run waits for the next
/// invocation; a run finished earlier was reported then.
pub fn fails(report: &Report, problems: usize) -> bool {
    report.complete && report.worked && (problems > 0 || report.unreadable_count() > 0)
}

/// Logs every difference; the count of those that need a person.
pub fn log_report(report: &Report, grace_s: i64) -> usize {
    // Differences past the listed ones are counted as needing a person: unseen, unjudged.
    let mut problems = report.differences_not_listed;
    for d in &report.differences {
        let difference = serde_json::to_string(d).unwrap_or_default();
        if d.is_problem(grace_s) {
            problems += 1;
            tracing::error!(account_id = %d.account_id, code = d.code.as_ref(), %difference, "reconciliation difference");
        } else {
            tracing::warn!(account_id = %d.account_id, code = d.code.as_ref(), %difference, "reconciliation difference within grace");
        }
    }
    tracing::info!(
        accounts = report.accounts,
        credited_payments = report.credited_payments,
        stripe_payments = report.stripe_payments,
        differences = report.differences.len(),
        problems,
        unreadable = report.unreadable_count(),
        complete = report.complete,
        "reconciled"
    );
    problems
}
