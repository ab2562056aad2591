//! Accounts: create or update one (plan, contacts), and adjust its credits by hand.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::account::{Account, Contact};
use crate::audit::AuditChange;
use crate::clock;
use crate::engine::{upstream, Change, Claim, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::grants::{Burn, Category, GrantSource, NewGrant, DEFAULT_PRIORITY, MAX_PRIORITY};
use crate::ids::IdempotencyKey;
use crate::ledger::{request_hash, EntryKind, EntryView, LedgerEntry};
use crate::money::Micros;
use crate::pricing::MAX_CHARGE_CENTS;
use crate::store::{Commit, CommitError, Store};

/// The most credits one request may name (rules §16): an adjustment either way, an
/// auto-recharge's threshold or amount. A billion credits: past any real use, and thousands of
/// them still add up inside an `i64` (every sum is checked besides).
pub const MAX_CREDITS: i64 = 1_000_000_000 * crate::money::MICROS_PER_CREDIT;

/// The largest adjustment either way.
pub const MAX_ADJUSTMENT: i64 = MAX_CREDITS;

/// An account as `PUT /v1/accounts/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account_id: String,
    pub plan: String,
    pub billing_contacts: Vec<Contact>,
    pub created_at: String,
}

impl AccountView {
    fn of(a: &Account) -> AccountView {
        AccountView {
            account_id: a.id.clone(),
            plan: a.plan.clone(),
            billing_contacts: a.contacts.clone(),
            created_at: clock::rfc3339(a.created_at),
        }
    }
}

/// What `upsert_account` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSaved {
    Created(AccountView),
    Updated(AccountView),
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `PUT /v1/accounts/{id}`: creates the account, or updates its plan and contacts.
    pub async fn upsert_account(&self, id: &str, plan: &str, contacts: Vec<Contact>) -> Result<AccountSaved, ApiError> {
        let Some(plan_rules) = self.profile.plan(plan) else {
            return Err(ApiError::rule("unknown_plan", format!("`{plan}` is not a plan of this product.")));
        };
        let limit = plan_rules.monthly_reload_limit;
        let default_max = self.profile.auto_recharge.monthly_max_default;
        let allows = plan_rules.auto_recharge;
        if self.store.load_account(id).await.map_err(upstream)?.is_none() {
            let now = self.now();
            let mut account = Account::new(&self.profile, id, plan, contacts.clone(), now);
            account.version = 1;
            let change = AuditChange::new("account.create", format!("account:{id}"), None, Some(account_json(&account)));
            let audit = crate::audit::seal_on_account(change, &mut account, now);
            match self.store.commit(Commit { audit, ..Commit::account_only(account.clone(), 0) }).await {
                Ok(()) => {
                    self.remember(&account);
                    return Ok(AccountSaved::Created(AccountView::of(&account)));
                }
                // Created meanwhile by another request: update it below.
                Err(CommitError::Stale(_)) | Err(CommitError::Conflict) | Err(CommitError::Throttled) => {}
                Err(CommitError::Store(e)) => return Err(upstream(e)),
                Err(_) => return Err(ApiError::Upstream),
            }
        }
        let saved = self
            .apply(id, None, |a, now| {
                let mut next = a.next(now);
                next.plan = plan.to_string();
                next.contacts = contacts.clone();
                // A plan that does not allow auto-recharge turns it off (rules §4, seed 004).
                if !allows {
                    next.auto_recharge.enabled = false;
                }
                // Keep the chosen monthly maximum within the new plan's limit; coming from a
                // plan that allowed none, start from the profile's default.
                let ar = &mut next.auto_recharge;
                ar.monthly_max = if ar.monthly_max == 0 { default_max.min(limit) } else { ar.monthly_max.min(limit) };
                let view = AccountView::of(&next);
                let audit = AuditChange::new(
                    "account.update",
                    format!("account:{id}"),
                    Some(account_json(a)),
                    Some(account_json(&next)),
                );
                Change::quiet(next, crate::cause::Cause::AccountUpdate, view).with_audit(audit).write()
            })
            .await?
            .done()?;
        Ok(AccountSaved::Updated(saved))
    }

    /// `POST /v1/accounts/{id}/credits/adjustments`: a signed grant or correction, granted as
    /// a promotional grant with the profile's default expiry.
    pub async fn adjust(
        &self,
        id: &str,
        amount: i64,
        reason: &str,
        key: &IdempotencyKey,
    ) -> Result<EntryView, ApiError> {
        self.adjust_with(id, amount, reason, &GrantTerms::default(), key).await
    }

    /// An adjustment with its grant's terms (rules §15): a positive one becomes a grant that
    /// may expire, carry a priority, and be `paid` at a cost basis; a negative one takes
    /// credits in burn order.
    pub async fn adjust_with(
        &self,
        id: &str,
        amount: i64,
        reason: &str,
        terms: &GrantTerms,
        key: &IdempotencyKey,
    ) -> Result<EntryView, ApiError> {
        if amount == 0 || amount.unsigned_abs() > MAX_ADJUSTMENT.unsigned_abs() {
            return Err(ApiError::rule(
                "invalid_amount",
                format!("An adjustment must be non-zero and at most {MAX_ADJUSTMENT} micro-credits either way."),
            ));
        }
        if amount < 0 && *terms != GrantTerms::default() {
            return Err(ApiError::rule(
                "invalid_grant_terms",
                "`expires_at`, `priority` and `category` describe a grant: only a positive adjustment has them.",
            ));
        }
        if terms.priority.is_some_and(|p| p > MAX_PRIORITY) {
            return Err(ApiError::rule("invalid_priority", "`priority` must be between 0 and 100."));
        }
        if terms.cost_cents.is_some_and(|c| c < 0) {
            return Err(ApiError::rule("invalid_amount", "A paid grant's `charge.amount` may not be negative."));
        }
        // A cost basis is what one payment took: no more than one charge can be (rules §16).
        if terms.cost_cents.is_some_and(|c| c > MAX_CHARGE_CENTS) {
            return Err(ApiError::rule(
                "invalid_amount",
                format!("A paid grant's `charge.amount` may be at most {MAX_CHARGE_CENTS} minor units."),
            ));
        }
        let mut request = json!({"amount": amount, "reason": reason});
        if *terms != GrantTerms::default() {
            request["grant"] =
                json!({"expires_at": terms.expires_at, "priority": terms.priority, "cost": terms.cost_cents});
        }
        let claim =
            Claim { scope_key: format!("adjustment:{}", key.as_str()), hash: request_hash(&request), permanent: false };
        let profile = &self.profile;
        self.apply(id, Some(&claim), |a, now| {
            if terms.expires_at.is_some_and(|t| t <= now || t > clock::MAX_MS) {
                return Err(ApiError::rule(
                    "invalid_expiry",
                    "`expires_at` must be in the future, before the year 10000.",
                ));
            }
            let mut next = a.next(now);
            if amount < 0 && next.available(now).get() < -amount {
                return Err(ApiError::rule(
                    "insufficient_balance",
                    "A negative adjustment may not take the balance below zero (or below what open holds reserve).",
                ));
            }
            let overflow = || ApiError::rule("invalid_amount", "The balance would overflow.");
            next.balance.checked_add(Micros::new(amount)).ok_or_else(overflow)?;
            if amount > 0 {
                next.room_for_grant()?;
                next.lifetime_added = next.lifetime_added.checked_add(Micros::new(amount)).ok_or_else(overflow)?;
                let spec = NewGrant {
                    source: GrantSource::Adjustment,
                    category: if terms.cost_cents.is_some() { Category::Paid } else { Category::Promotional },
                    expires_at: terms
                        .expires_at
                        .or_else(|| profile.grants.adjustment_expiry_days.map(|d| now + d * 86_400_000)),
                    priority: terms.priority.unwrap_or(DEFAULT_PRIORITY),
                    cost_cents: terms.cost_cents.unwrap_or(0),
                    payment_id: None,
                };
                next.add_credits(Micros::new(amount), spec, now);
            } else {
                next.take_credits(Micros::new(-amount), Burn::Order, now);
            }
            let entry =
                LedgerEntry::after(&mut next, EntryKind::Adjustment, Micros::new(amount), now, reason.to_string());
            let view = entry.view();
            let audit = AuditChange::new(
                "credits.adjust",
                format!("account:{id}"),
                Some(json!({"balance": a.balance.get()})),
                Some(json!({"balance": next.balance.get(), "amount": amount, "transaction_id": entry.id})),
            )
            .because(reason);
            Change::quiet(next, crate::cause::Cause::Adjustment, view).with_entry(entry).with_audit(audit)
                .write()
        })
        .await?
        .done()
    }
}

/// An account's settings as the audit log records them (rules §19).
fn account_json(a: &Account) -> serde_json::Value {
    json!({"plan": a.plan, "billing_contacts": a.contacts, "auto_recharge_enabled": a.auto_recharge.enabled})
}

/// The terms of an adjustment's grant; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantTerms {
    /// Milliseconds since the epoch.
    pub expires_at: Option<i64>,
    pub priority: Option<u8>,
    /// `category: paid` with `charge.amount` in minor units; `None` is promotional.
    pub cost_cents: Option<i64>,
}

#[cfg(test)]
mod tests {
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::money::MICROS_PER_CREDIT as C;

    #[tokio::test]
    async fn an_upgrade_from_a_plan_without_reloads_restores_the_default_maximum() {
        let c = memory_credits("voice-minutes");
        assert!(matches!(c.upsert_account("a", "free", vec![]).await.unwrap(), AccountSaved::Created(_)));
        assert_eq!(c.store.load_account("a").await.unwrap().unwrap().auto_recharge.monthly_max, 0);
        assert!(matches!(c.upsert_account("a", "pro", vec![]).await.unwrap(), AccountSaved::Updated(_)));
        assert_eq!(c.store.load_account("a").await.unwrap().unwrap().auto_recharge.monthly_max, 10);
    }

    #[tokio::test]
    async fn adjustments_are_bounded_and_never_overflow() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        for amount in [0, i64::MIN, i64::MAX, MAX_ADJUSTMENT + 1, -MAX_ADJUSTMENT - 1] {
            assert_eq!(
                c.adjust("a", amount, "x", &key(&format!("k{amount}"))).await.unwrap_err().code(),
                "invalid_amount"
            );
        }
        assert_eq!(c.adjust("a", MAX_ADJUSTMENT, "x", &key("max")).await.unwrap().amount, MAX_ADJUSTMENT);
        assert_eq!(c.adjust("a", -MAX_ADJUSTMENT, "x", &key("-max")).await.unwrap().amount, -MAX_ADJUSTMENT);
    }

    /// A paid adjustment's charge (its cost basis) is at most one charge's worth: the largest
    /// is granted, one more cent is 422 and writes nothing.
    #[tokio::test]
    async fn a_paid_adjustments_charge_is_bounded() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        let paid = |cents: i64| GrantTerms { cost_cents: Some(cents), ..GrantTerms::default() };
        let before = c.store.load_account("a").await.unwrap().unwrap();
        let e = c.adjust_with("a", C, "x", &paid(MAX_CHARGE_CENTS + 1), &key("over")).await.unwrap_err();
        assert_eq!(e.code(), "invalid_amount");
        assert_eq!(c.store.load_account("a").await.unwrap().unwrap(), before, "nothing written");
        c.adjust_with("a", C, "x", &paid(MAX_CHARGE_CENTS), &key("max")).await.unwrap();
        let a = c.store.load_account("a").await.unwrap().unwrap();
        assert_eq!(a.grants.iter().map(|g| g.cost_cents).collect::<Vec<_>>(), vec![MAX_CHARGE_CENTS]);
    }
}
