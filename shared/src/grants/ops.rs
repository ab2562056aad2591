//! The grants' operations: the list, void, and the scheduled expiry run (rules §15).

use serde::{Deserialize, Serialize};

use super::{in_burn_order, GrantEnd, GrantView};
use crate::engine::{upstream, Change, Credits, Plan};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::store::Store;

/// `GET …/credits/grants`: active grants in burn order, then those that ended, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantList {
    pub grants: Vec<GrantView>,
}

/// What one expiry run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryReport {
    /// Accounts the index listed as due.
    pub due: usize,
    /// Accounts whose grants expired now (the others had expired at a write meanwhile, or
    /// wait for an open hold).
    pub expired: usize,
    /// Hot accounts gone quiet, brought back to their fewest parts (rules §21).
    pub narrowed: usize,
    pub failed: usize,
}

fn grant_not_found() -> ApiError {
    ApiError::NotFound("grant_not_found", "No grant with this id exists on this account.".into())
}

/// Accounts one expiry run takes at most.
pub const EXPIRY_RUN_LIMIT: usize = 1_000;

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `GET /v1/accounts/{id}/credits/grants`.
    pub async fn grants(&self, id: &str) -> Result<GrantList, ApiError> {
        let a = self.whole_account(id).await?;
        let ended = self.store.ended_grants(id).await.map_err(upstream)?;
        let mut active = a.clone();
        active.ensure_grants();
        let mut grants: Vec<GrantView> = in_burn_order(&active.grants).into_iter().map(|g| g.view()).collect();
        grants.extend(ended.iter().map(|g| g.view()));
        Ok(GrantList { grants })
    }

    /// `POST /v1/accounts/{id}/credits/grants/{grant_id}/void` (service): removes what remains
    /// of a grant with a `void` entry; voiding an ended grant answers it as it is.
    pub async fn void_grant(&self, id: &str, grant_id: &str) -> Result<GrantView, ApiError> {
        let result = self
            .apply(id, None, |a, now| {
                let mut next = a.next(now);
                let Some(g) = next.grants.iter().find(|g| g.id == grant_id).cloned() else {
                    return Err(grant_not_found());
                };
                if next.balance.get() - g.remaining.get() < next.held(now).get() {
                    return Err(ApiError::rule(
                        "grant_reserved",
                        "Open holds need this grant's credits; void it once they have settled.",
                    ));
                }
                let entry = next.end_grant(grant_id, GrantEnd::Voided, now).ok_or_else(grant_not_found)?;
                let before = serde_json::json!({"remaining": g.remaining.get(), "ended": null, "balance": a.balance.get()});
                let mut ended = g;
                ended.remaining = crate::money::Micros::ZERO;
                ended.ended = Some(GrantEnd::Voided);
                ended.ended_at = Some(now);
                let after = serde_json::json!({
                    "remaining": 0, "ended": "voided", "balance": next.balance.get(), "transaction_id": entry.id,
                });
                let audit =
                    crate::audit::AuditChange::new("grant.void", format!("grant:{grant_id}"), Some(before), Some(after));
                Change::quiet(next, crate::cause::Cause::Void, ended.view()).with_entry(entry).with_audit(audit)
                    .write()
            })
            .await;
        match result {
            Ok(applied) => applied.done(),
            Err(e) if e.code() == "grant_not_found" => {
                // Ended already (voided twice is a replay), or unknown.
                let ended = self.store.ended_grants(id).await.map_err(upstream)?;
                ended.iter().find(|g| g.id == grant_id).map(|g| g.view()).ok_or_else(grant_not_found)
            }
            Err(e) => Err(e),
        }
    }

    /// Expires whatever grants of the account are past their instant (and not kept by an open
    /// hold): `true` if any did.
    pub async fn expire_due(&self, id: &str) -> Result<bool, ApiError> {
        self.apply(id, None, |a, now| {
            let next = a.next(now);
            if next.pending.entries.is_empty() {
                return Ok(Plan::AlreadySo(false));
            }
            Change::quiet(next, crate::cause::Cause::Expiry, true).write()
        })
        .await?
        .done()
    }

    /// The scheduled expiry run: every account the expiry index lists as due, each on its own
    /// (a failure is logged and counted; the others go on).
    pub async fn expire_grants(&self, now: i64) -> Result<ExpiryReport, ApiError> {
        let due = self.store.accounts_expiring(now, EXPIRY_RUN_LIMIT).await.map_err(upstream)?;
        let mut report = ExpiryReport { due: due.len(), ..ExpiryReport::default() };
        for id in due {
            match self.expire_due(&id).await {
                Ok(true) => report.expired += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(account_id = %id, error = %e, "grant expiry failed");
                    report.failed += 1;
                    continue;
                }
            }
            // The same index lists a hot account due a look for quiet (rules §21).
            match self.settle_spread(&id).await {
                Ok(true) => report.narrowed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(account_id = %id, error = %e, "narrowing a quiet account failed");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}
