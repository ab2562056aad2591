//! Crediting: a paid payment credits exactly once, and a refund takes its share back once.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::account::{Account, Dispute};
use crate::engine::{upstream, Applied, Change, Claim, Credits, Plan};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::events::{CreditsAdded, DisputeMoved, DomainEvent, Event, RechargeSucceeded, RefundMoved};
use crate::grants::{Burn, Category, Grant, GrantSource, NewGrant, DEFAULT_PRIORITY};
use crate::ids::RechargeId;
use crate::ledger::{request_hash, Credited, EntryKind, EntryView, LedgerEntry};
use crate::money::Micros;
use crate::pricing::format_credits;
use crate::profile::Profile;
use crate::purchases::{Charge, PurchaseRecord, PurchaseStatus};
use crate::store::{PurchaseWrite, Store};

impl<S: Store, B: EventBus> Credits<S, B> {
    /// Credits a paid payment exactly once (rules §7, §10.2): the ledger entry, the balance and
    /// lifetime added, and a permanent claim on `payment_id` commit in one transaction, so
    /// however many deliveries race — webhook retries, out-of-order events, the auto-recharge
    /// call and its webhook — one credits and the others get the first result back.
    /// Emits `CreditsAdded` with the change. `payment_id` is Stripe's PaymentIntent id.
    pub async fn credit_payment(&self, id: &str, payment: &Payment) -> Result<EntryView, ApiError> {
        self.credit(id, payment, None).await?.done()
    }

    /// Credits `payment`; with `purchase`, marks that purchase succeeded in the same transaction.
    pub(crate) async fn credit(
        &self,
        id: &str,
        payment: &Payment,
        purchase: Option<&PurchaseRecord>,
    ) -> Result<Applied<EntryView>, ApiError> {
        if payment.credits.get() <= 0 {
            return Err(ApiError::rule("invalid_amount", "A payment must add a positive number of credits."));
        }
        if !matches!(payment.kind, EntryKind::Purchase | EntryKind::AutoRecharge) {
            return Err(ApiError::rule("invalid_purchase", "Only purchases and auto-recharges credit a payment."));
        }
        let claim = Claim {
            scope_key: if crate::broken::on(crate::broken::Bug::CreditPaymentTwice) {
                format!("payment:{}:{}", payment.payment_id, crate::ledger::new_id("again"))
            } else {
                format!("payment:{}", payment.payment_id)
            },
            hash: request_hash(
                &json!({"kind": payment.kind, "credits": payment.credits.get(), "charge": payment.charge_cents}),
            ),
            permanent: true,
        };
        let applied = self
            .apply(id, Some(&claim), |a, now| {
                let mut next = a.next(now);
                let overflow = || ApiError::rule("invalid_amount", "The balance would overflow.");
                next.balance.checked_add(payment.credits).ok_or_else(overflow)?;
                next.lifetime_added = next.lifetime_added.checked_add(payment.credits).ok_or_else(overflow)?;
                // A paid grant at its cost basis; purchases expire as the profile says.
                let expires_at = match payment.kind {
                    EntryKind::Purchase => self.profile.grants.purchase_expiry_days.map(|d| now + d * 86_400_000),
                    _ => None,
                };
                let spec = NewGrant {
                    source: if payment.kind == EntryKind::Purchase {
                        GrantSource::Purchase
                    } else {
                        GrantSource::AutoRecharge
                    },
                    category: Category::Paid,
                    expires_at,
                    priority: DEFAULT_PRIORITY,
                    cost_cents: payment.charge_cents,
                    payment_id: Some(payment.payment_id.clone()),
                };
                next.add_credits(payment.credits, spec, now);
                let entry =
                    LedgerEntry::after(&mut next, payment.kind, payment.credits, now, payment.description.clone());
                let charge = Charge { amount: payment.charge_cents, currency: self.profile.currency.clone() };
                let event = DomainEvent::new(
                    id,
                    now,
                    Event::CreditsAdded(CreditsAdded {
                        kind: payment.kind,
                        settled_after_processing: purchase.is_some_and(|r| r.status == PurchaseStatus::Processing),
                        payment_id: payment.payment_id.clone(),
                        reference: payment.reference.clone(),
                        credits: payment.credits.get(),
                        charge: charge.clone(),
                        balance: next.balance.get(),
                        transaction_id: entry.id.clone(),
                    }),
                );
                let mut events = vec![event];
                match payment.kind {
                    // seed 000: buying credits by hand restores a suspended auto-recharge.
                    EntryKind::Purchase => next.auto_recharge.suspended = false,
                    _ => {
                        let ar = &mut next.auto_recharge;
                        if ar.in_flight.as_ref().is_some_and(|c| c.recharge_id.as_str() == payment.reference) {
                            ar.in_flight = None;
                        } else if let Some(kept) =
                            ar.kept.iter().position(|k| k.recharge_id.as_str() == payment.reference)
                        {
                            // Recorded as failed with its count and money kept (it was still
                            // processing): they are already in the month (rules §16). The card
                            // paid after all, so the failure no longer suspends recharges.
                            ar.kept.remove(kept);
                            ar.suspended = false;
                        } else if let Some(month) = &payment.recharge_month {
                            // Not in flight and not credited yet: recorded as failed (its count
                            // given back, its PaymentIntent cancelled), though the money came
                            // through after all. It counts again toward the month it was
                            // claimed in (rules §12), and the episode is charged (rules §16).
                            if ar.used_month == *month {
                                ar.used_this_month = ar.used_this_month.saturating_add(1);
                                ar.spent_this_month_cents =
                                    ar.spent_this_month_cents.saturating_add(payment.charge_cents);
                            }
                            ar.episode_charged = true;
                        }
                        events.push(DomainEvent::new(
                            id,
                            now,
                            Event::AutoRechargeSucceeded(RechargeSucceeded {
                                recharge_id: RechargeId::new(payment.reference.clone()),
                                payment_id: payment.payment_id.clone(),
                                credits: payment.credits.get(),
                                charge,
                                balance: next.balance.get(),
                            }),
                        ));
                    }
                }
                let view = entry.view();
                let credited = Credited {
                    entry_id: entry.id.clone(),
                    amount: payment.credits,
                    charge_cents: payment.charge_cents,
                    paid_total: purchase.and_then(|r| r.paid_total),
                };
                // A paid payment credits even if the purchase had meanwhile been marked failed or
                // expired: the money was taken (rules §10.2).
                let purchase = purchase.map(|r| PurchaseWrite {
                    record: PurchaseRecord {
                        status: PurchaseStatus::Succeeded,
                        payment_intent_id: Some(payment.payment_id.clone()),
                        transaction_id: Some(entry.id.clone()),
                        updated_at: now.max(r.updated_at + 1),
                        ..r.clone()
                    },
                    from: vec![
                        PurchaseStatus::Pending,
                        PurchaseStatus::Processing,
                        PurchaseStatus::Failed,
                        PurchaseStatus::Expired,
                    ],
                    expected_updated_at: Some(r.updated_at),
                });
                Change::quiet(next, crate::cause::Cause::Payment, view)
                    .with_entry(entry)
                    .with_events(events)
                    .with_purchase(purchase)
                    .with_payment(payment.payment_id.clone(), credited)
                    .write()
            })
            .await?;
        Ok(applied)
    }

    /// `charge.refunded` for a payment this account was credited for: takes back the refunded
    /// share of its credits with a `refund` ledger entry. `amount_refunded` is Stripe's running
    /// total for the charge, so any number of deliveries, in any order, take back the refunded
    /// share once. Credits already used, or reserved by open holds, are not taken (the entry
    /// says so). Returns the entry, or `None` when there is nothing (more) to take back; a
    /// payment not credited yet is 409 `payment_not_credited_yet`, so that Stripe delivers the
    /// refund again later.
    pub async fn refund_payment(
        &self,
        id: &str,
        payment_intent_id: &str,
        charge_amount: i64,
        amount_refunded: i64,
    ) -> Result<Option<EntryView>, ApiError> {
        if charge_amount <= 0 || amount_refunded <= 0 {
            return Ok(None);
        }
        let credited = self.credited(id, payment_intent_id).await?.amount.get();
        let share = share_of(credited, amount_refunded, charge_amount);
        let p = &self.profile;
        self.apply(id, None, |a, now| {
            let before = a.refunded.get(payment_intent_id).copied().unwrap_or(0);
            // Never more than the payment credited, less what refunds and its disputes (open or
            // lost) already took back (rules §12).
            let left = credited.saturating_sub(before).saturating_sub(a.kept_by_disputes(payment_intent_id));
            let owed = if crate::broken::on(crate::broken::Bug::ForgetRefundCap) { share - before } else { (share - before).min(left) };
            if owed <= 0 {
                return Ok(Plan::AlreadySo(None));
            }
            let mut next = a.next(now);
            next.refunded.insert(payment_intent_id.to_string(), share);
            let (taken, entry) = take_back(p, &mut next, now, owed, (EntryKind::Refund, payment_intent_id), "Refund");
            let view = entry.as_ref().map(LedgerEntry::view);
            let event = DomainEvent::new(
                id,
                now,
                Event::RefundCreated(RefundMoved {
                    payment_id: payment_intent_id.to_string(),
                    amount_refunded,
                    charge_amount,
                    taken,
                    forgiven: owed - taken,
                    balance: next.balance.get(),
                }),
            );
            Change::quiet(next, crate::cause::Cause::Refund, view).with_entries(entry).with_event(event).write()
        })
        .await?
        .done()
    }
}

/// `part` of `whole` (minor units) as a share of `credits`, rounded down: a partial refund or
/// dispute never takes back more than its share.
fn share_of(credits: i64, part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    (i128::from(credits) * i128::from(part.clamp(0, whole)) / i128::from(whole)) as i64
}

/// Takes up to `owed` credits back from `next`, never below zero nor below what open holds
/// reserve (a reserved credit is promised to a session in progress, like a used one); the rest
/// is forgiven, and the entry says so. What was taken, and its entry of `kind` if anything was.
fn take_back(
    p: &Profile,
    next: &mut Account,
    now: i64,
    owed: i64,
    (kind, payment_id): (EntryKind, &str),
    what: &str,
) -> (i64, Option<LedgerEntry>) {
    let taken = owed.min(next.available(now).get().max(0));
    // From the payment's own grant first (rules §15).
    next.take_credits(Micros::new(taken), Burn::Payment(payment_id), now);
    let mut description = format!("{what}: {} taken back", format_credits(p, Micros::new(taken)));
    if taken < owed {
        description.push_str(&format!(" ({} already used or reserved)", format_credits(p, Micros::new(owed - taken))));
    }
    let entry = (taken > 0).then(|| LedgerEntry::after(next, kind, Micros::new(-taken), now, description));
    (taken, entry)
}

/// What a dispute event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisputeOutcome {
    /// Opened (credits taken back) or closed (won: returned); the entry, if credits moved.
    Applied(Option<EntryView>),
    /// Delivered before: nothing more.
    AlreadySo,
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The account a credited payment belongs to, from our own index.
    pub async fn payment_account(&self, payment_intent_id: &str) -> Result<Option<String>, ApiError> {
        self.store.payment_account(payment_intent_id).await.map_err(upstream)
    }

    /// The credits a payment credited and what it charged, from its permanent claim; 409
    /// `payment_not_credited_yet` when it has not been credited. Stripe does not keep events in
    /// order: a refund or dispute can arrive before the event that credits its payment.
    /// Refused, it comes again later (Stripe retries for three days), by when the credit is
    /// there; answered 2xx, it would be lost for good.
    async fn credited(&self, id: &str, payment_intent_id: &str) -> Result<Credited, ApiError> {
        let claim = self.store.load_idempotency(id, &format!("payment:{payment_intent_id}")).await.map_err(upstream)?;
        claim.and_then(|c| c.credited).ok_or_else(|| {
            tracing::warn!(
                account_id = id,
                payment_intent_id,
                "an event for a payment not credited yet; Stripe will retry"
            );
            ApiError::OutOfOrder(
                "payment_not_credited_yet",
                "This event is for a payment not credited yet; deliver it again later.".into(),
            )
        })
    }

    /// `charge.dispute.created` (rules §12): takes back the disputed payment's credits — the
    /// disputed amount at the payment's own rate, at most what it credited less what refunds
    /// and earlier disputes of it took — as one `dispute` entry, never below zero nor below what
    /// open holds reserve (the rest is forgiven, as with refunds). Once per dispute id. While
    /// the dispute is open auto-recharge is paused; `PaymentDisputed` tells the customer.
    /// Neither lifetime total counts it.
    pub async fn dispute_opened(
        &self,
        id: &str,
        dispute_id: &str,
        payment_intent_id: &str,
        disputed_cents: i64,
        currency: &str,
    ) -> Result<DisputeOutcome, ApiError> {
        self.dispute_opened_of(id, dispute_id, payment_intent_id, (disputed_cents, None), currency).await
    }

    /// `dispute_opened` for a payment that charged `charged_total` (tax included) when that
    /// differs from the price its credits were granted for (rules §20): the disputed amount is
    /// a share of the total, so only its pre-tax part takes credits back (rounded down, in the
    /// customer's favour). `None`: the payment charged its price.
    pub async fn dispute_opened_of(
        &self,
        id: &str,
        dispute_id: &str,
        payment_intent_id: &str,
        (disputed_cents, charged_total): (i64, Option<i64>),
        currency: &str,
    ) -> Result<DisputeOutcome, ApiError> {
        let credited = self.credited(id, payment_intent_id).await?;
        let amount = credited.amount.get();
        // What the customer paid as the payment's claim keeps it, else the invoice's total.
        let share = match credited.paid_total.or(charged_total).unwrap_or(credited.charge_cents) {
            c if c > 0 => share_of(amount, disputed_cents, c),
            _ => amount,
        };
        let p = &self.profile;
        self.apply(id, None, |a, now| {
            if a.disputes.contains_key(dispute_id) {
                return Ok(Plan::AlreadySo(DisputeOutcome::AlreadySo));
            }
            let before = a
                .refunded
                .get(payment_intent_id)
                .copied()
                .unwrap_or(0)
                .saturating_add(a.kept_by_disputes(payment_intent_id));
            let owed = share.min(amount.saturating_sub(before)).max(0);
            let mut next = a.next(now);
            let (taken, entry) =
                take_back(p, &mut next, now, owed, (EntryKind::Dispute, payment_intent_id), "Disputed payment");
            next.disputes.insert(
                dispute_id.to_string(),
                Dispute {
                    payment_id: payment_intent_id.to_string(),
                    taken: Micros::new(taken),
                    open: true,
                    won: false,
                },
            );
            let event = DomainEvent::new(
                id,
                now,
                Event::PaymentDisputed(DisputeMoved {
                    dispute_id: dispute_id.to_string(),
                    payment_id: payment_intent_id.to_string(),
                    status: "open".into(),
                    taken,
                    disputed: Charge { amount: disputed_cents, currency: currency.to_lowercase() },
                    balance: next.balance.get(),
                }),
            );
            let outcome = DisputeOutcome::Applied(entry.as_ref().map(LedgerEntry::view));
            Change::quiet(next, crate::cause::Cause::Dispute, outcome).with_entries(entry).with_event(event).write()
        })
        .await?
        .done()
    }

    /// `charge.dispute.closed` (rules §12): `won` returns exactly what the dispute took (a
    /// positive `dispute` entry), once; `lost` keeps it. Either way the dispute is no longer
    /// open. A close before its open is 409 `dispute_not_opened_yet`, delivered again later.
    /// Won credits go back to the payment's grant, or, if it has ended, to a new paid grant at
    /// its cost basis (rules §15).
    pub async fn dispute_closed(
        &self,
        id: &str,
        dispute_id: &str,
        won: bool,
        disputed_cents: i64,
        currency: &str,
    ) -> Result<DisputeOutcome, ApiError> {
        let p = &self.profile;
        let original = if won { self.disputed_grant(id, dispute_id).await? } else { None };
        self.apply(id, None, |a, now| {
            let Some(dispute) = a.disputes.get(dispute_id).cloned() else {
                return Err(ApiError::OutOfOrder(
                    "dispute_not_opened_yet",
                    "This dispute has not been opened here yet; deliver it again later.".into(),
                ));
            };
            if !dispute.open {
                return Ok(Plan::AlreadySo(DisputeOutcome::AlreadySo));
            }
            let mut next = a.next(now);
            next.disputes.insert(dispute_id.to_string(), Dispute { open: false, won, ..dispute.clone() });
            let returned = if won { dispute.taken.get() } else { 0 };
            next.balance
                .checked_add(Micros::new(returned))
                .ok_or_else(|| ApiError::rule("invalid_amount", "The balance would overflow."))?;
            let restored = if returned > 0 {
                next.restore_credits(Micros::new(returned), &dispute.payment_id, original.as_ref(), now)
            } else {
                None
            };
            let entry = (returned > 0).then(|| {
                let mut description = format!("Dispute won: {} returned", format_credits(p, Micros::new(returned)));
                if restored.is_some() {
                    description.push_str(" (restored as a new grant: the payment's own had ended)");
                }
                LedgerEntry::after(&mut next, EntryKind::Dispute, Micros::new(returned), now, description)
            });
            let event = DomainEvent::new(
                id,
                now,
                Event::DisputeClosed(DisputeMoved {
                    dispute_id: dispute_id.to_string(),
                    payment_id: dispute.payment_id.clone(),
                    status: if won { "won" } else { "lost" }.into(),
                    taken: dispute.taken.get(),
                    disputed: Charge { amount: disputed_cents, currency: currency.to_lowercase() },
                    balance: next.balance.get(),
                }),
            );
            let outcome = DisputeOutcome::Applied(entry.as_ref().map(LedgerEntry::view));
            Change::quiet(next, crate::cause::Cause::DisputeClosed, outcome).with_entries(entry).with_event(event).write()
        })
        .await?
        .done()
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The grant of a dispute's payment as it was granted, for a won dispute to restore its
    /// credits at their cost basis: active on the account, or else its record from when it
    /// ended. The record is read after the account, so a grant that ends in between is there;
    /// its basis never changes, so either copy serves. `None` for an unknown dispute or a
    /// payment from before grants.
    async fn disputed_grant(&self, id: &str, dispute_id: &str) -> Result<Option<Grant>, ApiError> {
        let Some(a) = self.store.load_account(id).await.map_err(upstream)? else { return Ok(None) };
        let Some(pi) = a.disputes.get(dispute_id).map(|d| d.payment_id.clone()) else { return Ok(None) };
        let of = |g: &&Grant| g.payment_id.as_deref() == Some(pi.as_str());
        if let Some(g) = a.grants.iter().find(of) {
            return Ok(Some(g.clone()));
        }
        let ended = self.store.ended_grants(id).await.map_err(upstream)?;
        // The payment's first grant (a grant restored before carries the same basis).
        Ok(ended.iter().filter(of).min_by_key(|g| (g.created_at, g.id.clone())).cloned())
    }
}

/// A payment to credit once: a purchase's or an auto-recharge's PaymentIntent.
#[derive(Debug, Clone)]
pub struct Payment {
    pub payment_id: String,
    pub kind: EntryKind,
    pub credits: Micros,
    pub charge_cents: i64,
    /// The purchase or recharge id this payment belongs to.
    pub reference: String,
    pub description: String,
    /// A recharge's: the month (UTC) it was claimed in, whose count and spending limit it
    /// counts toward.
    pub recharge_month: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;
    use crate::money::MICROS_PER_CREDIT as C;

    fn payment(id: &str, credits: i64) -> Payment {
        Payment {
            payment_id: id.into(),
            kind: EntryKind::Purchase,
            credits: Micros::new(credits),
            charge_cents: credits / 10_000,
            reference: "pur_1".into(),
            description: "$10.00 of credits".into(),
            recharge_month: None,
        }
    }

    #[tokio::test]
    async fn a_payment_credits_once_and_replays_answer_the_first_entry() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        let first = c.credit_payment("a", &payment("pi_1", 10 * C)).await.unwrap();
        assert_eq!(first.amount, 10 * C);
        assert_eq!(c.credit_payment("a", &payment("pi_1", 10 * C)).await.unwrap(), first);
        assert_eq!(c.credit_payment("a", &payment("pi_1", 11 * C)).await.unwrap_err().code(), "idempotency_conflict");
        c.credit_payment("a", &payment("pi_2", 5 * C)).await.unwrap();
        let a = c.store.load_account("a").await.unwrap().unwrap();
        assert_eq!((a.balance.get(), a.lifetime_added.get()), (15 * C, 15 * C));
        let added: Vec<_> =
            c.bus.published.lock().unwrap().iter().filter(|e| e.detail_type() == "CreditsAdded").cloned().collect();
        assert_eq!(added.len(), 2, "one CreditsAdded per payment");
        assert_eq!(c.credit_payment("a", &payment("pi_3", 0)).await.unwrap_err().code(), "invalid_amount");
    }

    /// A paid grant used up (ended), its payment disputed (the dispute takes other credits) and
    /// the dispute won: the credits come back paid at the payment's cost basis, and the revenue
    /// report recognises them when used and says they were restored.
    #[tokio::test]
    async fn a_won_dispute_of_an_ended_grant_restores_paid_credits_at_their_cost() {
        use crate::accounts::GrantTerms;
        use crate::grants::GrantSource;
        use crate::ids::key;
        let c = memory_credits("org-runs");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "runs", 1_000, &key("allowance")).await.unwrap();
        // 5 credits for $5.00, and 5 promotional ones that burn after them.
        c.credit_payment("a", &payment("pi_1", 5 * C)).await.unwrap();
        let later = GrantTerms { priority: Some(90), ..GrantTerms::default() };
        c.adjust_with("a", 5 * C, "welcome", &later, &key("w")).await.unwrap();
        c.debit("a", "runs", 500, &key("use")).await.unwrap();
        let a = c.store.load_account("a").await.unwrap().unwrap();
        assert!(a.grants.iter().all(|g| g.payment_id.is_none()), "pi_1's grant ended: {:?}", a.grants);

        let opened = c.dispute_opened("a", "dp_1", "pi_1", 500, "usd").await.unwrap();
        assert!(matches!(opened, DisputeOutcome::Applied(Some(ref e)) if e.amount == -5 * C), "{opened:?}");
        let won = c.dispute_closed("a", "dp_1", true, 500, "usd").await.unwrap();
        let DisputeOutcome::Applied(Some(entry)) = won else { panic!("{won:?}") };
        assert_eq!(entry.amount, 5 * C);
        assert!(entry.description.contains("restored"), "{}", entry.description);

        let a = c.store.load_account("a").await.unwrap().unwrap();
        let restored = a.grants.iter().find(|g| g.payment_id.as_deref() == Some("pi_1")).expect("restored");
        assert_eq!(
            (restored.category, restored.source, restored.granted.get(), restored.cost_cents),
            (Category::Paid, GrantSource::Purchase, 5 * C, 500),
            "paid, at the payment's cost basis"
        );
        let list = c.grants("a").await.unwrap().grants;
        assert!(list.iter().any(|g| g.id == restored.id && g.category == Category::Paid && g.status == "active"));

        // 2 of the restored credits used: revenue at $1.00 a credit.
        c.debit("a", "runs", 200, &key("more")).await.unwrap();
        let month = crate::clock::month_of(crate::clock::now_ms());
        let line = c.revenue_of("a", &month).await.unwrap();
        use crate::grants::revenue::Valued;
        assert_eq!(line.restored, Valued { credits: 5 * C, amount: 500 }, "{line:?}");
        assert_eq!(line.granted, Valued { credits: 5 * C, amount: 500 }, "pi_1 only: {line:?}");
        assert_eq!(line.consumed, Valued { credits: 7 * C, amount: 700 }, "{line:?}");
        assert_eq!(line.deferred, Valued { credits: 3 * C, amount: 300 }, "{line:?}");
        let a = c.store.load_account("a").await.unwrap().unwrap();
        let ledger = c.whole_ledger("a").await.unwrap();
        assert!(crate::reconcile::ledger_differences(&a, &ledger).is_empty());
    }
}
