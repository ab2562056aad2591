//! Auto-recharge end to end (SPEC §8): claim, charge the saved card off-session with an
//! idempotency key derived from the claim, then credit once or record the failure. A claim
//! whose caller died (before or after Stripe answered) is recovered after a lease by repeating
//! the same charge call: Stripe answers the same PaymentIntent, so a recovery never charges
//! twice.

use serde_json::{json, Value};

use crate::account::{Account, RechargeClaim, RechargeError};
use crate::clock;
use crate::error::ApiError;
use crate::events::{redeliver_outbox, EventBus};
use crate::payments::{ChargeOutcome, OffSessionCharge, Payments};
use crate::service::{Credits, RechargeDecision};
use crate::store::Store;

/// How long a claim may stay in flight before the sweep recovers it.
pub const LEASE_MS: i64 = 120_000;

/// What one recharge attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RechargeResult {
    NotDue(String),
    Credited {
        payment_intent_id: String,
    },
    /// A payment that settles later: the webhook's `payment_intent.succeeded` completes it.
    Pending {
        payment_intent_id: String,
    },
    Failed {
        code: String,
    },
    /// Stripe did not answer; the claim stays in flight and the sweep recovers it.
    Unanswered,
}

impl RechargeResult {
    pub fn to_json(&self) -> Value {
        match self {
            RechargeResult::NotDue(why) => json!({"result": "not_due", "reason": why}),
            RechargeResult::Credited { payment_intent_id } => {
                json!({"result": "credited", "payment_intent": payment_intent_id})
            }
            RechargeResult::Pending { payment_intent_id } => {
                json!({"result": "pending", "payment_intent": payment_intent_id})
            }
            RechargeResult::Failed { code } => json!({"result": "failed", "code": code}),
            RechargeResult::Unanswered => json!({"result": "unanswered"}),
        }
    }
}

/// The Stripe idempotency key of a claim's charge.
pub fn charge_key(claim: &RechargeClaim) -> String {
    format!("topup-recharge-{}", claim.recharge_id)
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// Recharges `id` if it is due: one claim, one charge, one outcome.
    pub async fn recharge<P: Payments>(&self, payments: &P, id: &str) -> Result<RechargeResult, ApiError> {
        match self.claim_recharge(id).await? {
            RechargeDecision::NotDue(why) => Ok(RechargeResult::NotDue(why)),
            RechargeDecision::Claimed(claim) => {
                // The claim's commit left this process's state of the account current.
                let account = match self.cached(id) {
                    Some(a) => a,
                    None => self
                        .store
                        .load_account(id)
                        .await
                        .map_err(|_| ApiError::Upstream)?
                        .ok_or_else(ApiError::account_not_found)?,
                };
                self.charge_claim(payments, &account, &claim).await
            }
        }
    }

    /// Repeats the charge of a claim in flight for longer than `lease_ms` and applies its outcome.
    pub async fn recover_recharge<P: Payments>(
        &self,
        payments: &P,
        id: &str,
        lease_ms: i64,
    ) -> Result<Option<RechargeResult>, ApiError> {
        let Some(account) = self.store.load_account(id).await.map_err(|_| ApiError::Upstream)? else {
            return Ok(None);
        };
        match &account.auto_recharge.in_flight {
            Some(claim) if clock::now_ms() - claim.claimed_at >= lease_ms => {
                tracing::info!(account_id = id, recharge_id = %claim.recharge_id, "recovering a recharge claim");
                self.charge_claim(payments, &account, claim).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Charges `claim` on `account` (the state holding the claim) and applies the outcome.
    async fn charge_claim<P: Payments>(
        &self,
        payments: &P,
        account: &Account,
        claim: &RechargeClaim,
    ) -> Result<RechargeResult, ApiError> {
        let id = account.id.as_str();
        let (Some(customer), Some(pm)) =
            (account.stripe_customer_id.clone(), account.payment_method.as_ref().map(|p| p.id.clone()))
        else {
            let failure = RechargeError {
                code: "no_payment_method".into(),
                decline_code: None,
                message: "There is no saved card to charge.".into(),
                at: 0,
            };
            self.fail_recharge(id, &claim.recharge_id, &failure).await?;
            return Ok(RechargeResult::Failed { code: failure.code });
        };
        let charge = OffSessionCharge {
            customer_id: customer,
            payment_method_id: pm,
            amount_cents: claim.charge_cents,
            currency: self.profile.currency.clone(),
            idempotency_key: charge_key(claim),
            metadata: vec![
                ("topup_account_id".into(), id.to_string()),
                ("topup_recharge_id".into(), claim.recharge_id.clone()),
                // What the payment buys, so its webhook can credit it even after the claim is
                // gone (a charge recorded as failed that the bank later lets through).
                ("topup_credits".into(), claim.credits.0.to_string()),
            ],
        };
        match payments.charge_off_session(&charge).await {
            Ok(ChargeOutcome::Succeeded { payment_intent_id }) => {
                self.complete_recharge(id, claim, &payment_intent_id).await?;
                Ok(RechargeResult::Credited { payment_intent_id })
            }
            Ok(ChargeOutcome::Processing { payment_intent_id }) => Ok(RechargeResult::Pending { payment_intent_id }),
            Ok(ChargeOutcome::Failed { code, decline_code, message, .. }) => {
                let failure = RechargeError { code: code.clone(), decline_code, message, at: 0 };
                self.fail_recharge(id, &claim.recharge_id, &failure).await?;
                Ok(RechargeResult::Failed { code })
            }
            Err(e) => {
                tracing::warn!(account_id = id, recharge_id = %claim.recharge_id, error = %e, "charge unanswered; the sweep will recover it");
                Ok(RechargeResult::Unanswered)
            }
        }
    }

    /// The scheduled sweep: recover stale claims, recharge accounts whose `BalanceLow` was lost,
    /// and send along events left in the outbox. A lost event delays a recharge, never skips
    /// or doubles it.
    pub async fn sweep<P: Payments>(&self, payments: &P, limit: usize, lease_ms: i64) -> Result<Value, ApiError> {
        let ids = self.store.accounts_for_sweep(limit).await.map_err(|_| ApiError::Upstream)?;
        let mut results = Vec::new();
        for id in &ids {
            let r = match self.recover_recharge(payments, id, lease_ms).await? {
                Some(r) => r,
                None => self.recharge(payments, id).await?,
            };
            if !matches!(r, RechargeResult::NotDue(_)) {
                results.push(json!({"account_id": id, "outcome": r.to_json()}));
            }
        }
        let redelivered = redeliver_outbox(&self.store, &self.bus, 100).await.map_err(|_| ApiError::Upstream)?;
        Ok(json!({"accounts": ids.len(), "recharges": results, "redelivered_events": redelivered}))
    }
}
