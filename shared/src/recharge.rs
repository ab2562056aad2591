//! Auto-recharge end to end (rules §8): claim, charge the saved card off-session with an
//! idempotency key derived from the claim, then credit once or record the failure. A claim
//! whose caller died (before or after Stripe answered) is recovered after a lease by repeating
//! the same charge call: Stripe answers the same PaymentIntent, so a recovery never charges
//! twice.

use serde::{Deserialize, Serialize};

use crate::account::{Account, RechargeClaim, RechargeError, RechargeRecord};
use crate::clock;
use crate::crediting::Payment;
use crate::engine::{upstream, Change, Credits, Plan};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::events::{DomainEvent, Event, RechargeFailed, RechargePaused};
use crate::ids::RechargeId;
use crate::ledger::{new_id, EntryKind, EntryView};
use crate::money::Micros;
use crate::payments::{CancelOutcome, ChargeOutcome, OffSessionCharge, Payments};
use crate::pricing::{self, format_credits};
use crate::store::Store;
use crate::views::{auto_recharge_view, plan_unavailable_message, AutoRechargeView};

/// What a failed recharge does with its claim's count and money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Its PaymentIntent can never succeed: the month gets them back.
    GiveBack,
    /// Its PaymentIntent may still succeed: they stay in the month.
    Keep,
}

/// How long a claim may stay in flight before the sweep recovers it.
pub const LEASE_MS: i64 = 120_000;

/// What one recharge attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RechargeResult {
    NotDue {
        reason: String,
    },
    Credited {
        #[serde(rename = "payment_intent")]
        payment_intent_id: String,
    },
    /// A payment that settles later: the webhook's `payment_intent.succeeded` completes it.
    Pending {
        #[serde(rename = "payment_intent")]
        payment_intent_id: String,
    },
    Failed {
        code: String,
    },
    /// Stripe did not answer with a card outcome (unreachable, 5xx, 429, or an error of ours
    /// such as a revoked key): the claim stays in flight and the sweep recovers it; the
    /// customer is not told and auto-recharge is not suspended.
    Unanswered,
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The Stripe idempotency key of a claim's charge: a recovery repeats it, so Stripe answers
    /// the same PaymentIntent instead of charging twice.
    pub fn charge_key(&self, claim: &RechargeClaim) -> String {
        self.stripe_key("recharge", claim.recharge_id.as_str())
    }

    /// Recharges `id` if it is due: one claim, one charge, one outcome.
    pub async fn recharge<P: Payments>(&self, payments: &P, id: &str) -> Result<RechargeResult, ApiError> {
        match self.claim_recharge(id).await? {
            RechargeDecision::NotDue(reason) => Ok(RechargeResult::NotDue { reason }),
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
            Some(claim) if self.now() - claim.claimed_at >= lease_ms => {
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
            idempotency_key: self.charge_key(claim),
            metadata: self.stripe_metadata(id, &[("topup_recharge_id", claim.recharge_id.as_str())]),
        };
        match payments.charge_off_session(&charge).await {
            Ok(ChargeOutcome::Succeeded { payment_intent_id }) => {
                self.complete_recharge(id, claim, &payment_intent_id).await?;
                Ok(RechargeResult::Credited { payment_intent_id })
            }
            Ok(ChargeOutcome::Processing { payment_intent_id }) => Ok(RechargeResult::Pending { payment_intent_id }),
            Ok(ChargeOutcome::Failed { payment_intent_id, code, decline_code, message }) => {
                let failure = RechargeError { code: code.clone(), decline_code, message, at: 0 };
                match self.fail_charged_recharge(payments, id, &claim.recharge_id, payment_intent_id.as_deref(), &failure).await {
                    Ok(_) => Ok(RechargeResult::Failed { code }),
                    // Stripe did not answer the cancel: the claim stays in flight, and the
                    // sweep's recovery repeats the same charge call and the cancel.
                    Err(ApiError::PaymentsUnavailable) => Ok(RechargeResult::Unanswered),
                    Err(e) => Err(e),
                }
            }
            Err(e) => {
                tracing::warn!(account_id = id, recharge_id = %claim.recharge_id, error = %e, "charge unanswered; the sweep will recover it");
                Ok(RechargeResult::Unanswered)
            }
        }
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// Claims a recharge if one is due (rules §8): enabled on a plan that allows it, a card on
    /// file, not suspended, nothing in flight, the balance low by the profile's comparison, and
    /// the month's count under the cap. One conditional write; of any number of concurrent
    /// triggers for one low balance, exactly one gets `Claimed`. The count is taken at claim so
    /// the cap holds even with a charge in flight; a failed charge gives it back.
    pub async fn claim_recharge(&self, id: &str) -> Result<RechargeDecision, ApiError> {
        let p = &self.profile;
        let recharge_id = RechargeId::new(new_id("rch"));
        self.apply(id, None, |a, now| {
            let mut next = a.next(now);
            let ar = &next.auto_recharge;
            let not = |why: &str| Ok(Plan::AlreadySo(RechargeDecision::NotDue(why.to_string())));
            if !ar.enabled {
                return not("disabled");
            }
            if !p.plan(&next.plan).is_some_and(|pl| pl.auto_recharge) {
                return not("plan");
            }
            if next.payment_method.is_none() || next.stripe_customer_id.is_none() {
                return not("no_payment_method");
            }
            if ar.suspended {
                return not("suspended");
            }
            if next.dispute_open() {
                return not("dispute");
            }
            if ar.in_flight.is_some() {
                return not("in_flight");
            }
            if !p.low_balance.trigger.is_low(next.balance, ar.threshold) {
                return not("not_low");
            }
            if ar.episode_charged {
                return not("recharged_this_episode");
            }
            if ar.low_without_usage {
                return not("not_started_by_usage");
            }
            let credits = ar.amount;
            let charge_cents = pricing::recharge_charge(p, &next.plan, credits)?.get();
            let over_money =
                ar.monthly_spend_max_cents.is_some_and(|cap| ar.spent_this_month_cents + charge_cents > cap);
            let at_cap = ar.used_this_month >= ar.monthly_max && !crate::broken::on(crate::broken::Bug::ForgetMonthlyCap);
            if at_cap || over_money {
                // At the cap auto-recharge pauses until next month (seed 004); the first time
                // a month, say so on the bus (the profile decides whether that is emailed).
                let reason = if over_money { "monthly_spend_cap" } else { "monthly_cap" };
                let month = clock::month_of(now);
                if ar.paused_notice_month.as_deref() == Some(month.as_str()) {
                    return not(reason);
                }
                next.auto_recharge.paused_notice_month = Some(month.clone());
                let event = DomainEvent::new(
                    id,
                    now,
                    Event::AutoRechargePaused(RechargePaused {
                        month,
                        reason: reason.to_string(),
                        monthly_max: next.auto_recharge.monthly_max,
                        monthly_spend_max: next.auto_recharge.monthly_spend_max_cents,
                        balance: next.balance.get(),
                    }),
                );
                let outcome = RechargeDecision::NotDue(reason.to_string());
                return Change::quiet(next, crate::cause::Cause::RechargePaused, outcome).with_event(event).write();
            }
            let claim = RechargeClaim { recharge_id: recharge_id.clone(), claimed_at: now, credits, charge_cents };
            next.auto_recharge.used_this_month += 1;
            next.auto_recharge.spent_this_month_cents += charge_cents;
            next.auto_recharge.in_flight = Some(claim.clone());
            next.auto_recharge.episode_charged = true;
            // The permanent record of what this recharge may be credited for, written with the
            // claim, before any charge.
            let record = RechargeRecord {
                recharge_id: recharge_id.clone(),
                account_id: id.to_string(),
                credits,
                charge_cents,
                currency: p.currency.clone(),
                claimed_at: now,
                month: clock::month_of(now),
            };
            let decision = RechargeDecision::Claimed(claim);
            Change::quiet(next, crate::cause::Cause::RechargeClaim, decision).with_recharge(record).write()
        })
        .await?
        .done()
    }

    /// The claimed recharge's PaymentIntent succeeded: credit it through the same exactly-once
    /// path as the webhook (either may come first), release the claim, emit
    /// `AutoRechargeSucceeded`.
    pub async fn complete_recharge(
        &self,
        id: &str,
        claim: &RechargeClaim,
        payment_intent_id: &str,
    ) -> Result<EntryView, ApiError> {
        let payment = Payment {
            payment_id: payment_intent_id.to_string(),
            kind: EntryKind::AutoRecharge,
            credits: claim.credits,
            charge_cents: claim.charge_cents,
            reference: claim.recharge_id.to_string(),
            description: format!("Auto-recharge of {}", format_credits(&self.profile, claim.credits)),
            recharge_month: Some(clock::month_of(claim.claimed_at)),
        };
        self.credit(id, &payment, None).await?.done()
    }

    /// `payment_intent.succeeded` for a recharge (rules §12): credits it only from the record
    /// the product made when it claimed it, and only when the PaymentIntent's amount and
    /// currency are the record's. Metadata names the record; it never sets an amount. A
    /// recharge recorded as failed whose payment succeeds later (the customer finished 3-D
    /// Secure) is credited once and counts toward the month it was claimed in.
    pub async fn recharge_paid(
        &self,
        id: &str,
        recharge_id: &RechargeId,
        payment_intent_id: &str,
        amount: Option<i64>,
        currency: Option<&str>,
    ) -> Result<RechargePaid, ApiError> {
        let Some(record) = self.store.load_recharge(id, recharge_id.as_str()).await.map_err(upstream)? else {
            return Ok(RechargePaid::Ignored("unknown_recharge"));
        };
        if amount != Some(record.charge_cents) {
            return Ok(RechargePaid::Ignored("amount_mismatch"));
        }
        if !currency.is_some_and(|c| c.eq_ignore_ascii_case(&record.currency)) {
            return Ok(RechargePaid::Ignored("currency_mismatch"));
        }
        let claim = RechargeClaim {
            recharge_id: record.recharge_id,
            claimed_at: record.claimed_at,
            credits: record.credits,
            charge_cents: record.charge_cents,
        };
        self.complete_recharge(id, &claim, payment_intent_id).await.map(RechargePaid::Credited)
    }

    /// The claimed recharge's charge failed (a decline, `authentication_required`, a
    /// PaymentIntent left needing action): nothing is added, the error is recorded, the claim
    /// and its count are given back, and auto-recharge is suspended until a new card or a
    /// manual purchase — no automatic retry (seed 000). Emits `AutoRechargeFailed`. A claim that
    /// is no longer in flight (completed or failed already) is left alone: `false`.
    pub async fn fail_recharge(
        &self,
        id: &str,
        recharge_id: &RechargeId,
        failure: &RechargeError,
    ) -> Result<bool, ApiError> {
        self.record_recharge_failure(id, recharge_id, failure, Release::GiveBack).await
    }

    async fn record_recharge_failure(
        &self,
        id: &str,
        recharge_id: &RechargeId,
        failure: &RechargeError,
        release: Release,
    ) -> Result<bool, ApiError> {
        self.apply(id, None, |a, now| {
            if release == Release::GiveBack && a.auto_recharge.kept.iter().any(|k| &k.recharge_id == recharge_id) {
                // A recharge kept while it was processing has failed after all: the month gets
                // its count and money back (its failure was recorded when it was kept). A new
                // month has cleared what it kept, and owes nothing back.
                let mut next = a.next(now);
                let ar = &mut next.auto_recharge;
                if let Some(i) = ar.kept.iter().position(|k| &k.recharge_id == recharge_id) {
                    let k = ar.kept.remove(i);
                    ar.used_this_month = ar.used_this_month.saturating_sub(1);
                    ar.spent_this_month_cents = (ar.spent_this_month_cents - k.charge_cents).max(0);
                    ar.episode_charged = false;
                }
                return Change::quiet(next, crate::cause::Cause::RechargeFailed, true).write();
            }
            if a.auto_recharge.in_flight.as_ref().is_none_or(|c| &c.recharge_id != recharge_id) {
                return Ok(Plan::AlreadySo(false));
            }
            let mut next = a.next(now);
            let ar = &mut next.auto_recharge;
            ar.in_flight = None;
            ar.suspended = true;
            match release {
                Release::GiveBack => {
                    ar.episode_charged = false;
                    ar.used_this_month = ar.used_this_month.saturating_sub(1);
                    if let Some(claim) = &a.auto_recharge.in_flight {
                        ar.spent_this_month_cents = (ar.spent_this_month_cents - claim.charge_cents).max(0);
                    }
                }
                // Its money may still come: it stays counted, and the episode stays charged.
                Release::Keep => {
                    if let Some(c) =
                        a.auto_recharge.in_flight.as_ref().filter(|c| clock::month_of(c.claimed_at) == ar.used_month)
                    {
                        ar.kept.push(crate::account::KeptRecharge {
                            recharge_id: recharge_id.clone(),
                            charge_cents: c.charge_cents,
                        });
                    }
                }
            }
            next.last_recharge_error = Some(RechargeError { at: now, ..failure.clone() });
            let event = DomainEvent::new(
                id,
                now,
                Event::AutoRechargeFailed(RechargeFailed {
                    recharge_id: recharge_id.clone(),
                    code: failure.code.clone(),
                    decline_code: failure.decline_code.clone(),
                    do_not_retry: failure.do_not_retry(),
                    message: failure.message.clone(),
                    balance: next.balance.get(),
                }),
            );
            Change::quiet(next, crate::cause::Cause::RechargeFailed, true).with_event(event).write()
        })
        .await?
        .done()
    }

    /// A recharge whose charge failed at Stripe (rules §16): its PaymentIntent is cancelled
    /// first, so that it can never succeed behind the cap's back, then the failure is recorded.
    /// Cancelled (or never made), the claim's count and money are given back as for any failure.
    /// One that succeeded after all (a `payment_failed` delivered after the success) is credited
    /// instead, from the recharge's record. One still processing keeps its count, money and the
    /// episode's one charge, so no second recharge can be charged beside it, until it settles.
    /// A recharge neither in flight nor kept was answered already: nothing is asked of Stripe.
    /// 502 `payment_provider_unavailable` when Stripe does not answer: nothing is recorded and
    /// the caller tries again (a recovery, or Stripe's redelivery of the webhook).
    pub async fn fail_charged_recharge<P: Payments>(
        &self,
        payments: &P,
        id: &str,
        recharge_id: &RechargeId,
        payment_intent_id: Option<&str>,
        failure: &RechargeError,
    ) -> Result<bool, ApiError> {
        let a = self.load(id).await?;
        let ar = &a.auto_recharge;
        let kept = ar.kept.iter().any(|k| &k.recharge_id == recharge_id);
        if ar.in_flight.as_ref().is_none_or(|c| &c.recharge_id != recharge_id) && !kept {
            return Ok(false);
        }
        // A key of this attempt's own: Stripe replays an answer to a key, and a PaymentIntent
        // refused once (processing) may be cancellable or settled by the next attempt.
        let key = self.stripe_key("recharge-cancel", &new_id(recharge_id.as_str()));
        let release = match payment_intent_id {
            None => Release::GiveBack,
            Some(pi) => match payments.cancel_payment(pi, &key).await {
                Ok(CancelOutcome::Canceled) => Release::GiveBack,
                Ok(CancelOutcome::Succeeded) => {
                    // Not a failure: the money came. Credited once, from the claim's record.
                    tracing::info!(account_id = id, recharge_id = %recharge_id, payment_intent_id = pi, "a recharge reported failed had succeeded: crediting it");
                    let Some(record) = self.store.load_recharge(id, recharge_id.as_str()).await.map_err(upstream)? else {
                        return Err(ApiError::Upstream);
                    };
                    let paid = self
                        .recharge_paid(id, recharge_id, pi, Some(record.charge_cents), Some(&record.currency))
                        .await?;
                    if let RechargePaid::Ignored(reason) = paid {
                        tracing::error!(account_id = id, recharge_id = %recharge_id, reason, "a succeeded recharge does not match its record");
                    }
                    return Ok(false);
                }
                Ok(CancelOutcome::Processing) => {
                    tracing::warn!(account_id = id, recharge_id = %recharge_id, payment_intent_id = pi, "a failed recharge's PaymentIntent is processing: its count and money stay in the month until it settles");
                    Release::Keep
                }
                Err(e) => {
                    tracing::warn!(account_id = id, recharge_id = %recharge_id, error = %e, "could not cancel a failed recharge's PaymentIntent");
                    return Err(ApiError::PaymentsUnavailable);
                }
            },
        };
        self.record_recharge_failure(id, recharge_id, failure, release).await
    }

    /// `PUT /v1/accounts/{id}/credits/auto-recharge` (rules §5, §8): validated against the
    /// profile and the plan; each broken rule is a 422 with its own code and nothing changes.
    pub async fn set_auto_recharge(&self, id: &str, input: &AutoRechargeInput) -> Result<AutoRechargeView, ApiError> {
        let p = &self.profile;
        let rules = &p.auto_recharge;
        input.within_bounds(rules.fixed_amount)?;
        self.apply(id, None, |a, now| {
            let plan = p
                .plan(&a.plan)
                .ok_or_else(|| ApiError::rule("unknown_plan", "The account's plan is not part of this product."))?;
            if input.amount.is_some() && rules.fixed_amount {
                return Err(ApiError::rule(
                    "amount_not_configurable",
                    format!(
                        "Each auto-reload buys exactly {}; there is no amount to set.",
                        format_credits(p, rules.default_amount)
                    ),
                ));
            }
            if input.enabled && !plan.auto_recharge {
                return Err(ApiError::rule("auto_recharge_unavailable", plan_unavailable_message(&a.plan)));
            }
            if input.enabled && a.payment_method.is_none() {
                return Err(ApiError::rule(
                    "payment_method_required",
                    "Add a default payment method before turning on auto-recharge.",
                ));
            }
            let current = &a.auto_recharge;
            let amount = if rules.fixed_amount {
                rules.default_amount
            } else {
                input.amount.map_or(current.amount, Micros::new)
            };
            let threshold = input.threshold.map_or(current.threshold, Micros::new);
            if amount < rules.amount_min || amount > rules.amount_max {
                return Err(ApiError::rule(
                    "amount_out_of_range",
                    format!(
                        "The amount must be between {} and {}.",
                        format_credits(p, rules.amount_min),
                        format_credits(p, rules.amount_max)
                    ),
                ));
            }
            // An amount one recharge could not charge (past Stripe's limit) is refused now.
            if input.amount.is_some() {
                pricing::recharge_charge(p, &a.plan, amount)?;
            }
            if threshold < rules.threshold_min {
                return Err(ApiError::rule(
                    "threshold_out_of_range",
                    format!("The threshold must be at least {}.", format_credits(p, rules.threshold_min)),
                ));
            }
            match rules.threshold_max {
                Some(max) if threshold > max => {
                    return Err(ApiError::rule(
                        "threshold_out_of_range",
                        format!("The threshold can be at most {}.", format_credits(p, max)),
                    ))
                }
                // seed 000: "$0 up to the purchase amount".
                None if threshold > amount => {
                    return Err(ApiError::rule(
                        "threshold_above_amount",
                        "The threshold can be at most the amount each recharge adds.",
                    ))
                }
                _ => {}
            }
            let monthly_max = match input.monthly_max {
                None => current.monthly_max,
                Some(m) if m < 1 => {
                    return Err(ApiError::rule("invalid_monthly_max", "The monthly maximum must be at least 1."))
                }
                Some(m) => u32::try_from(m).unwrap_or(u32::MAX),
            };
            if input.monthly_max.is_some() && monthly_max > plan.monthly_reload_limit {
                return Err(ApiError::rule(
                    "monthly_max_above_limit",
                    format!(
                        "The monthly maximum can be raised up to your plan's limit of {}.",
                        plan.monthly_reload_limit
                    ),
                ));
            }
            let spend_max = match input.monthly_spend_max {
                None => current.monthly_spend_max_cents,
                Some(0) => None,
                Some(m) if m < 0 => {
                    return Err(ApiError::rule(
                        "invalid_monthly_spend_max",
                        "The monthly spending limit must be positive, or 0 for none.",
                    ))
                }
                Some(m) => Some(m),
            };
            if let Some(cap) = spend_max {
                let one = pricing::recharge_charge(p, &a.plan, amount)?.get();
                if cap < one {
                    return Err(ApiError::rule(
                        "monthly_spend_max_too_low",
                        format!(
                            "The monthly spending limit must allow at least one recharge ({}).",
                            pricing::format_money(one, &p.currency)
                        ),
                    ));
                }
            }
            let mut next = a.next(now);
            let ar = &mut next.auto_recharge;
            ar.enabled = input.enabled;
            ar.threshold = threshold;
            ar.amount = amount;
            ar.monthly_max = monthly_max;
            ar.monthly_spend_max_cents = spend_max;
            let view = auto_recharge_view(p, &next, &clock::month_of(now));
            let audit = crate::audit::AuditChange::new(
                "auto_recharge.update",
                format!("account:{id}"),
                Some(settings_json(&a.auto_recharge)),
                Some(settings_json(&next.auto_recharge)),
            );
            Change::quiet(next, crate::cause::Cause::AutoRechargeSettings, view).with_audit(audit).write()
        })
        .await?
        .done()
    }
}

/// Auto-recharge's settings as the audit log records them (rules §19).
fn settings_json(ar: &crate::account::AutoRecharge) -> serde_json::Value {
    serde_json::json!({
        "enabled": ar.enabled,
        "threshold": ar.threshold.get(),
        "amount": ar.amount.get(),
        "monthly_max": ar.monthly_max,
        "monthly_spend_max": ar.monthly_spend_max_cents,
    })
}

/// What a recharge's `payment_intent.succeeded` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RechargePaid {
    Credited(EntryView),
    /// `unknown_recharge` (a PaymentIntent the product never made), `amount_mismatch`,
    /// `currency_mismatch`: nothing moves.
    Ignored(&'static str),
}

/// The outcome of `claim_recharge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RechargeDecision {
    Claimed(RechargeClaim),
    /// `disabled`, `plan`, `no_payment_method`, `suspended`, `in_flight`, `not_low`,
    /// `recharged_this_episode`, `not_started_by_usage`, `monthly_cap`, `monthly_spend_cap`.
    NotDue(String),
}

/// Settings asked for in `PUT .../credits/auto-recharge`; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct AutoRechargeInput {
    pub enabled: bool,
    pub threshold: Option<i64>,
    pub amount: Option<i64>,
    pub monthly_max: Option<i64>,
    /// Cents a month at most (an option no seed has); 0 removes the limit.
    pub monthly_spend_max: Option<i64>,
}

/// The largest monthly spending limit, in minor units ($1,000,000,000.00; rules §16).
pub const MAX_MONTHLY_SPEND_CENTS: i64 = 100_000_000_000;

impl AutoRechargeInput {
    /// The bounds that hold whatever the profile says (rules §16): a threshold or amount of at
    /// most `MAX_CREDITS`, a spending limit of at most `MAX_MONTHLY_SPEND_CENTS`; each past
    /// them is 422 with its field's code. The profile's own ranges are checked after.
    fn within_bounds(&self, fixed_amount: bool) -> Result<(), ApiError> {
        use crate::accounts::MAX_CREDITS;
        if !fixed_amount && self.amount.is_some_and(|a| a > MAX_CREDITS) {
            return Err(ApiError::rule(
                "amount_out_of_range",
                format!("The amount can be at most {MAX_CREDITS} micro-credits."),
            ));
        }
        if self.threshold.is_some_and(|t| t > MAX_CREDITS) {
            return Err(ApiError::rule(
                "threshold_out_of_range",
                format!("The threshold can be at most {MAX_CREDITS} micro-credits."),
            ));
        }
        if self.monthly_spend_max.is_some_and(|m| m > MAX_MONTHLY_SPEND_CENTS) {
            return Err(ApiError::rule(
                "invalid_monthly_spend_max",
                format!("The monthly spending limit can be at most {MAX_MONTHLY_SPEND_CENTS} minor units."),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod settings_bounds {
    use crate::store::Accounts;
    use super::*;
    use crate::accounts::MAX_CREDITS;
    use crate::adapters::memory::memory_credits;
    use crate::money::MICROS_PER_CREDIT as C;
    use crate::profile::Purchase;

    fn off(threshold: Option<i64>, amount: Option<i64>, spend: Option<i64>) -> AutoRechargeInput {
        AutoRechargeInput { threshold, amount, monthly_spend_max: spend, ..AutoRechargeInput::default() }
    }

    /// Each bound at its edge, with a profile that would allow more: the largest is taken, one
    /// more is 422 and changes nothing.
    #[tokio::test]
    async fn settings_are_bounded_whatever_the_profile_allows() {
        let mut c = memory_credits("usd-overage");
        c.profile.auto_recharge.amount_max = Micros::new(i64::MAX);
        // Credits cheap enough that the largest amount is a charge Stripe takes.
        if let Purchase::Amount { micros_per_cent, .. } = &mut c.profile.purchase {
            *micros_per_cent = 100_000_000;
        }
        c.upsert_account("a", "pro", vec![]).await.unwrap();
        let refused = [
            (off(None, Some(MAX_CREDITS + 1), None), "amount_out_of_range"),
            (off(Some(MAX_CREDITS + 1), Some(MAX_CREDITS), None), "threshold_out_of_range"),
            (off(None, None, Some(MAX_MONTHLY_SPEND_CENTS + 1)), "invalid_monthly_spend_max"),
        ];
        for (input, code) in refused {
            let before = c.store.load_account("a").await.unwrap();
            assert_eq!(c.set_auto_recharge("a", &input).await.unwrap_err().code(), code, "{input:?}");
            assert_eq!(c.store.load_account("a").await.unwrap(), before, "{input:?} wrote");
        }
        let v = c.set_auto_recharge("a", &off(Some(MAX_CREDITS), Some(MAX_CREDITS), None)).await.unwrap();
        assert_eq!((v.threshold, v.amount), (MAX_CREDITS, Some(MAX_CREDITS)));
        let v = c.set_auto_recharge("a", &off(Some(0), Some(10 * C), Some(MAX_MONTHLY_SPEND_CENTS))).await;
        assert_eq!(v.unwrap().monthly_spend_max, Some(MAX_MONTHLY_SPEND_CENTS));
    }

    /// An amount whose one recharge would be past Stripe's limit is refused when it is set.
    #[tokio::test]
    async fn an_amount_that_could_not_be_charged_is_refused() {
        let mut c = memory_credits("usd-overage");
        c.profile.auto_recharge.amount_max = Micros::new(i64::MAX);
        c.upsert_account("a", "pro", vec![]).await.unwrap();
        let most = crate::pricing::MAX_CHARGE_CENTS * 10_000; // usd-overage: 10,000 a cent
        c.set_auto_recharge("a", &off(Some(0), Some(most), None)).await.unwrap();
        let e = c.set_auto_recharge("a", &off(Some(0), Some(most + 1), None)).await.unwrap_err();
        assert_eq!(e.code(), "amount_out_of_range");
    }
}
