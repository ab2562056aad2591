//! The scheduled sweep (rules §13): every account with auto-recharge on, page after page of
//! the sweep index, a few at a time. It recovers stale claims, recharges accounts whose
//! `BalanceLow` was lost, and drains the outbox; one account's failure never stops the rest.

use serde::Serialize;
use serde_json::Value;

use crate::account::Account;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::{drain_outbox, EventBus, OutboxDrain};
use crate::grants::ops::ExpiryReport;
use crate::payments::Payments;
use crate::recharge::RechargeResult;
use crate::store::{Store, StoreError};

/// What one sweep did (rules §13): the accounts it visited; the recharges it started and the
/// stale claims it recovered; the accounts it could not handle (logged, counted, and never in
/// the way of the others); and the outbox it drained. `complete` is false when the run stopped
/// at its deadline: the next run starts where this one stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub visited: usize,
    pub recharged: usize,
    pub recovered: usize,
    pub failed: usize,
    pub complete: bool,
    /// Outcomes other than "not due", the first `REPORT_LIST_MAX` of them.
    pub recharges: Vec<SweptAccount>,
    /// The accounts that failed, the first `REPORT_LIST_MAX` of them.
    pub failures: Vec<SweepFailure>,
    pub outbox: OutboxDrain,
    /// Grants past their expiry, expired by this run (rules §15).
    pub expiry: ExpiryReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweptAccount {
    pub account_id: String,
    pub outcome: RechargeResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepFailure {
    pub account_id: String,
    pub code: String,
}

/// Accounts read from the sweep's index per page.
pub const SWEEP_PAGE: usize = 500;
/// Accounts the sweep works on at once.
pub const SWEEP_CONCURRENCY: usize = 8;
/// Outcomes and failures a report lists by name (its counts are complete).
const REPORT_LIST_MAX: usize = 100;
/// Where a sweep that stopped at its deadline leaves its cursor.
const SWEEP_CURSOR: &str = "SWEEP#cursor";

/// What the sweep did with one account.
enum Swept {
    NotDue,
    Recharged(RechargeResult),
    Recovered(RechargeResult),
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The scheduled sweep with no deadline (see `sweep_until`).
    pub async fn sweep<P: Payments>(&self, payments: &P, page: usize, lease_ms: i64) -> Result<SweepReport, ApiError> {
        self.sweep_until(payments, page, lease_ms, None).await
    }

    /// The scheduled sweep (rules §13): every account with auto-recharge on, page after page of
    /// the index, `SWEEP_CONCURRENCY` at a time. It recovers claims in flight for longer than
    /// `lease_ms`, recharges accounts whose `BalanceLow` was lost (a lost event delays a
    /// recharge, never skips or doubles it), and then delivers everything left in the outbox.
    /// An account that fails is logged and counted and the run goes on. At `deadline` it stops
    /// between pages and keeps its cursor; the next run starts there.
    pub async fn sweep_until<P: Payments>(
        &self,
        payments: &P,
        page: usize,
        lease_ms: i64,
        deadline: Option<std::time::Instant>,
    ) -> Result<SweepReport, ApiError> {
        use futures_util::stream::{self, StreamExt};
        let mut report = SweepReport {
            visited: 0,
            recharged: 0,
            recovered: 0,
            failed: 0,
            complete: true,
            recharges: Vec::new(),
            failures: Vec::new(),
            outbox: OutboxDrain::default(),
            expiry: ExpiryReport::default(),
        };
        let mut after = match self.store.load_checkpoint(SWEEP_CURSOR).await.map_err(upstream)? {
            Some(Value::String(cursor)) => Some(cursor),
            _ => None,
        };
        let resumed = after.is_some();
        loop {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                report.complete = false;
                break;
            }
            let (ids, next) = self.store.accounts_for_sweep(page, after.clone()).await.map_err(upstream)?;
            let loaded = match self.store.load_accounts(&ids).await {
                Ok(l) => l,
                // The page could not be read even after retries: each of its accounts counts as
                // failed, and the sweep goes on with the next page.
                Err(e) => ids.iter().map(|id| (id.clone(), Err(e.clone()))).collect(),
            };
            let results: Vec<(String, Result<Swept, ApiError>)> = stream::iter(loaded)
                .map(|(id, account)| async move {
                    let r = self.sweep_account(payments, account, lease_ms).await;
                    (id, r)
                })
                .buffer_unordered(SWEEP_CONCURRENCY)
                .collect()
                .await;
            for (id, r) in results {
                report.visited += 1;
                match r {
                    Ok(Swept::NotDue) => {}
                    Ok(Swept::Recharged(outcome)) => {
                        report.recharged += 1;
                        report.list(id, outcome);
                    }
                    Ok(Swept::Recovered(outcome)) => {
                        report.recovered += 1;
                        report.list(id, outcome);
                    }
                    Err(e) => {
                        tracing::error!(account_id = %id, code = e.code(), "sweep could not handle the account");
                        report.failed += 1;
                        if report.failures.len() < REPORT_LIST_MAX {
                            report.failures.push(SweepFailure { account_id: id, code: e.code().to_string() });
                        }
                    }
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => {
                    after = None;
                    break;
                }
            }
        }
        if !report.complete || resumed {
            let cursor = after.map_or(Value::Null, Value::String);
            self.store.save_checkpoint(SWEEP_CURSOR, &cursor).await.map_err(upstream)?;
        }
        // Grants past their instant expire here if no write of their account came first; their
        // events go out with the outbox below.
        report.expiry = match self.expire_grants(self.now()).await {
            Ok(r) => r,
            // The recharges above stand; the next run expires what this one could not list.
            Err(e) => {
                tracing::warn!(error = %e, "grant expiry run failed");
                ExpiryReport { failed: 1, ..ExpiryReport::default() }
            }
        };
        report.outbox = drain_outbox(&self.store, &self.bus, self.now(), deadline).await.map_err(upstream)?;
        tracing::info!(
            grants_expired = report.expiry.expired,
            visited = report.visited,
            recharged = report.recharged,
            recovered = report.recovered,
            failed = report.failed,
            complete = report.complete,
            delivered = report.outbox.delivered,
            "sweep done"
        );
        Ok(report)
    }

    /// One account of the sweep, as read from the index page (eventually consistent; every
    /// write after it is a compare-and-swap, and a recovery reads the account again).
    async fn sweep_account<P: Payments>(
        &self,
        payments: &P,
        account: Result<Account, StoreError>,
        lease_ms: i64,
    ) -> Result<Swept, ApiError> {
        let account = account.map_err(upstream)?;
        let id = account.id.as_str();
        match &account.auto_recharge.in_flight {
            Some(claim) if self.now() - claim.claimed_at >= lease_ms => {
                Ok(self.recover_recharge(payments, id, lease_ms).await?.map_or(Swept::NotDue, Swept::Recovered))
            }
            Some(_) => Ok(Swept::NotDue),
            None if !self.may_be_due(&account) => Ok(Swept::NotDue),
            None => match self.recharge(payments, id).await? {
                RechargeResult::NotDue { .. } => Ok(Swept::NotDue),
                outcome => Ok(Swept::Recharged(outcome)),
            },
        }
    }

    /// Whether a recharge could be due, decided on a read without writing: only conditions of
    /// `claim_recharge` that the month's turn cannot change (the claim decides the rest), so
    /// the sweep writes nothing for an account that is not due.
    fn may_be_due(&self, a: &Account) -> bool {
        let ar = &a.auto_recharge;
        ar.enabled
            && !ar.suspended
            && !ar.episode_charged
            && !ar.low_without_usage
            && !a.dispute_open()
            && a.payment_method.is_some()
            && a.stripe_customer_id.is_some()
            && self.profile.low_balance.trigger.is_low(a.balance, ar.threshold)
    }
}

impl SweepReport {
    fn list(&mut self, account_id: String, outcome: RechargeResult) {
        if self.recharges.len() < REPORT_LIST_MAX {
            self.recharges.push(SweptAccount { account_id, outcome });
        }
    }
}
