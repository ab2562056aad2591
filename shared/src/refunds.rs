//! Refunding a payment at Stripe, for finance and the service (rules §19), and the payments an
//! account was credited for (what may be refunded).
//!
//! A refund is made at Stripe with an idempotency key of the request's; its credits are taken
//! back when Stripe's `charge.refunded` arrives (rules §12), exactly as for a refund made in
//! Stripe's dashboard. Right after Stripe made it, the refund is recorded in the account's audit
//! chain together with the request's idempotency claim, in one account write: a replay of the
//! request answers the first refund and records nothing new.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::AuditChange;
use crate::clock;
use crate::engine::{upstream, Change, Claim, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ids::IdempotencyKey;
use crate::ledger::request_hash;
use crate::payments::{Purchases, RefundOutcome, RefundRequest};
use crate::store::Store;

/// A refund as `POST …/payments/{payment_id}/refund` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    pub refund_id: String,
    pub payment_id: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    /// Stripe's: `succeeded`, `pending`, …; the credits follow with `charge.refunded`.
    pub status: String,
    pub created_at: String,
}

/// A payment the account was credited for, as `GET …/payments` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    pub payment_id: String,
    /// `purchase` (Checkout) or `auto_recharge`: the kind of the entry that credited it.
    pub kind: Option<String>,
    /// Micro-credits it credited.
    pub credits: i64,
    pub charge: crate::purchases::Charge,
    /// Micro-credits refunds have taken back so far.
    pub refunded: i64,
    /// Whether one of its disputes is open, and what disputes keep.
    pub dispute_open: bool,
    pub disputed: i64,
    pub transaction_id: String,
    pub created_at: String,
}

/// `GET …/payments`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentList {
    pub payments: Vec<PaymentView>,
}

fn payment_not_found() -> ApiError {
    ApiError::NotFound("payment_not_found", "This account was credited for no payment with this id.".into())
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The payments account `id` was credited for (its permanent payment claims).
    pub async fn payments(&self, id: &str) -> Result<PaymentList, ApiError> {
        let a = self.load(id).await?;
        let claims = self.store.payment_claims(id).await.map_err(upstream)?;
        let mut payments: Vec<PaymentView> = claims
            .iter()
            .filter_map(|c| {
                let credited = c.credited.as_ref()?;
                let pi = c.scope_key.strip_prefix("payment:")?.to_string();
                Some(PaymentView {
                    kind: c.outcome.get("kind").and_then(|k| k.as_str()).map(str::to_string),
                    refunded: a.refunded.get(&pi).copied().unwrap_or(0),
                    dispute_open: a.disputes.values().any(|d| d.payment_id == pi && d.open),
                    disputed: a.kept_by_disputes(&pi),
                    payment_id: pi,
                    credits: credited.amount.get(),
                    charge: crate::purchases::Charge { amount: credited.charge_cents, currency: self.profile.currency.clone() },
                    transaction_id: credited.entry_id.clone(),
                    created_at: clock::rfc3339(c.created_at),
                })
            })
            .collect();
        payments.sort_by(|x, y| y.created_at.cmp(&x.created_at));
        Ok(PaymentList { payments })
    }

    /// Refunds `amount_cents` (or what is left) of a payment account `id` was credited for,
    /// at Stripe; records it in the account's audit chain with the request's key.
    pub async fn refund_at_stripe<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        payment_id: &str,
        amount_cents: Option<i64>,
        key: &IdempotencyKey,
    ) -> Result<RefundView, ApiError> {
        let request = json!({"payment_id": payment_id, "amount": amount_cents});
        let claim = Claim { scope_key: format!("refund:{}", key.as_str()), hash: request_hash(&request), permanent: false };
        // A key used before answers its first refund, without asking Stripe again.
        if let Some(rec) = self.store.load_idempotency(id, &claim.scope_key).await.map_err(upstream)? {
            if rec.request_hash != claim.hash {
                return Err(ApiError::IdempotencyConflict);
            }
            return serde_json::from_value(rec.outcome).map_err(|_| ApiError::Upstream);
        }
        self.load(id).await?;
        if self.store.payment_account(payment_id).await.map_err(upstream)?.as_deref() != Some(id) {
            return Err(payment_not_found());
        }
        let paid = self
            .store
            .load_idempotency(id, &format!("payment:{payment_id}"))
            .await
            .map_err(upstream)?
            .and_then(|c| c.credited)
            .ok_or_else(payment_not_found)?;
        if let Some(a) = amount_cents {
            if a < 1 || a > paid.charge_cents {
                return Err(ApiError::rule(
                    "invalid_amount",
                    format!("A refund of this payment is 1 to {} (minor units).", paid.charge_cents),
                ));
            }
        }
        let reason = crate::audit::current().reason.unwrap_or_default();
        let made = payments
            .refund(&RefundRequest {
                payment_intent_id: payment_id.to_string(),
                amount_cents,
                idempotency_key: self.stripe_key("refund", &format!("{id}-{}", key.as_str())),
                metadata: self.stripe_metadata(id, &[("topup_reason", reason.as_str())]),
            })
            .await?;
        let (refund_id, amount, status) = match made {
            RefundOutcome::Made { refund_id, amount_cents, status } => (refund_id, amount_cents, status),
            RefundOutcome::Refused { message } => {
                tracing::info!(account_id = id, payment_id, "stripe refused a refund");
                return Err(ApiError::rule("refund_refused", format!("Stripe refused the refund: {message}")));
            }
        };
        let now = self.now();
        let view = RefundView {
            refund_id: refund_id.clone(),
            payment_id: payment_id.to_string(),
            amount,
            currency: self.profile.currency.clone(),
            status: status.clone(),
            created_at: clock::rfc3339(now),
        };
        let change = AuditChange::new(
            "payment.refund",
            format!("payment:{payment_id}"),
            Some(json!({"charge": paid.charge_cents, "credited": paid.amount.get()})),
            Some(json!({"refund_id": refund_id, "amount": amount, "status": status})),
        );
        let recorded = self
            .apply(id, Some(&claim), |a, now| {
                Change::quiet(a.next(now), crate::cause::Cause::AuditRecord, view.clone()).with_audit(change.clone())
                    .write()
            })
            .await;
        match recorded.and_then(crate::engine::Applied::done) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Stripe made the refund; only its record is missing. Say so loudly and answer the
                // failure: a retry with the same key finds the same refund at Stripe (its key is
                // the request's) and records it, once.
                tracing::error!(
                    account_id = id, payment_id, refund_id = %view.refund_id, code = e.code(),
                    "refund made at Stripe, audit record not written"
                );
                Err(e)
            }
        }
    }
}
