//! Reconciliation (rules §10.1, §10.2): our books against themselves and against Stripe's.
//!
//! For each account it checks that
//! - the balance is the sum of the ledger, lifetime totals are their sums, running balances chain
//!   and never go below zero;
//! - every credited payment (a permanent `payment:<PaymentIntent>` claim) has its one ledger
//!   entry, and every purchase or auto-recharge entry has its claim;
//! - every credited payment is a PaymentIntent that succeeded at Stripe, for this account, for
//!   the amount charged and the credits it bought; every succeeded payment of ours is credited;
//! - what refunds took back matches Stripe's refunded totals;
//! - each paid purchase's or recharge's invoice (rules §20) is for the price credited and the
//!   total Stripe took, and is recorded (lagging while its `invoice.paid` is on its way).
//!
//! It reads and reports; it never writes. A difference is `wrong` (no event can mend it: a bug,
//! or data changed by hand) or `lagging` (Stripe is ahead by an event still on its way — Stripe
//! retries a webhook for three days — so it is a problem only once it is old).

use std::collections::{BTreeMap, HashMap, HashSet};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::json;

mod runs;

pub use runs::{Report, Unreadable};

use crate::account::Account;
use crate::engine::Credits;
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{request_hash, EntryKind, IdemRecord, LedgerEntry};
use crate::payments::{PaymentHistory, PaymentRecord};
use crate::receipts::{Receipt, ReceiptStore};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Wrong,
    Lagging,
}

/// One way an account's books disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub account_id: String,
    /// Stable code: `balance_not_ledger_sum`, `lifetime_added_mismatch`,
    /// `lifetime_spent_mismatch`, `ledger_chain_broken`, `negative_balance`,
    /// `claim_without_entry`, `entry_without_claim`, `credited_without_payment`,
    /// `credited_amount_mismatch`, `payment_not_credited`, `refund_not_applied`,
    /// `refund_exceeds_stripe`, `refund_without_payment`, `receipt_missing`, `invoice_mismatch`.
    pub code: Cow<'static, str>,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Our figure and Stripe's (or the ledger's), when the difference is a number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ours: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theirs: Option<i64>,
    /// Seconds since Stripe created the payment (for `lagging` differences).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<i64>,
    pub detail: String,
}

impl Difference {
    /// Whether this difference needs a person: wrong, or lagging for longer than `grace_s`.
    pub fn is_problem(&self, grace_s: i64) -> bool {
        self.severity == Severity::Wrong || self.age_s.is_none_or(|a| a > grace_s)
    }
}

/// What reconciling one account found.
#[derive(Debug, Clone, Serialize)]
pub struct AccountReport {
    pub account_id: String,
    pub balance: i64,
    pub ledger_entries: usize,
    /// Payments credited (our claims) and payments Stripe has for the customer.
    pub credited_payments: usize,
    pub stripe_payments: usize,
    pub differences: Vec<Difference>,
}

impl<S: Store + ReceiptStore, B: EventBus> Credits<S, B> {
    /// Reconciles one account against its ledger and Stripe's payments.
    pub async fn reconcile_account<H: PaymentHistory>(&self, history: &H, id: &str) -> Result<AccountReport, ApiError> {
        let account = self.account(id).await?;
        let ledger = self.whole_ledger(id).await?;
        let claims = self.store.payment_claims(id).await.map_err(|_| ApiError::Upstream)?;
        let stripe = match &account.stripe_customer_id {
            Some(customer) => history.customer_payments(customer).await?,
            None => Vec::new(),
        };
        let mut differences = ledger_differences(&account, &ledger);
        // The account as a whole, when parts of it are held on other items (`parts`).
        differences.extend(self.part_differences(&account, &ledger).await?);
        let entities = self.store.entities(id).await.map_err(|_| ApiError::Upstream)?;
        differences.extend(entity_differences(id, &entities, &ledger));
        differences
            .extend(self.payment_differences(&account, &ledger, &claims, &stripe, self.now() / 1000).await?);
        Ok(AccountReport {
            account_id: id.to_string(),
            balance: account.balance.get(),
            ledger_entries: ledger.len(),
            credited_payments: claims.len(),
            stripe_payments: stripe.len(),
            differences,
        })
    }

    async fn payment_differences(
        &self,
        account: &Account,
        ledger: &[LedgerEntry],
        claims: &[IdemRecord],
        stripe: &[PaymentRecord],
        now_s: i64,
    ) -> Result<Vec<Difference>, ApiError> {
        let id = account.id.as_str();
        let mut out = Vec::new();
        let diff = |code: &'static str, severity, payment: Option<&str>, ours, theirs, detail: String| Difference {
            account_id: id.to_string(),
            code: code.into(),
            severity,
            payment_id: payment.map(str::to_string),
            ours,
            theirs,
            age_s: None,
            detail,
        };
        let entries: HashMap<&str, &LedgerEntry> = ledger.iter().map(|e| (e.id.as_str(), e)).collect();
        let ours_at_stripe: HashMap<&str, &PaymentRecord> = stripe
            .iter()
            .filter(|p| p.metadata.get("topup_account_id").map(String::as_str) == Some(id))
            .map(|p| (p.id.as_str(), p))
            .collect();
        let claimed: HashSet<&str> = claims.iter().map(payment_of).collect();
        // Receipts by the purchase or recharge they are of (rules §20); a payment from before
        // receipts has none, and nothing is said about it.
        let rows = crate::receipts::store::all_receipts(&self.store, id).await.map_err(|_| ApiError::Upstream)?;
        let rows: HashMap<&str, &Receipt> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        let row_of = |p: &PaymentRecord| {
            let reference = p.metadata.get("topup_purchase_id").or_else(|| p.metadata.get("topup_recharge_id"));
            reference.and_then(|r| rows.get(r.as_str()).copied())
        };
        let mut claimed_entries = HashSet::new();
        let mut credited: HashMap<&str, i64> = HashMap::new();

        for claim in claims {
            let payment = payment_of(claim);
            let said = claim.credited.as_ref();
            let entry = said.and_then(|c| entries.get(c.entry_id.as_str()).copied());
            let Some(entry) = entry.filter(|e| said.is_some_and(|c| c.amount == e.amount)) else {
                out.push(diff(
                    "claim_without_entry",
                    Severity::Wrong,
                    Some(payment),
                    said.map(|c| c.amount.get()),
                    None,
                    "A payment is recorded as credited but its ledger entry is missing or differs.".into(),
                ));
                continue;
            };
            claimed_entries.insert(entry.id.as_str());
            credited.insert(payment, entry.amount.get());
            let Some(p) = ours_at_stripe.get(payment).filter(|p| p.status == "succeeded") else {
                out.push(diff(
                    "credited_without_payment",
                    Severity::Wrong,
                    Some(payment),
                    Some(entry.amount.get()),
                    None,
                    "Credits were added for a payment that Stripe does not show as succeeded for this account.".into(),
                ));
                continue;
            };
            // The claim's hash names the kind, credits and charge it was credited for: the price
            // before tax, which is what Stripe took less the invoice's tax (rules §20).
            let row = row_of(p);
            let credited_charge = said.map_or(0, |c| c.charge_cents);
            let tax = match row.and_then(|r| r.invoice.as_ref()) {
                Some(i) => i.tax,
                // A taxed payment whose invoice is not recorded yet: its tax is what Stripe took
                // above the credited price (and `receipt_missing` says the invoice is late).
                None if self.profile.tax.automatic() && row.is_some() => (p.amount - credited_charge).max(0),
                None => 0,
            };
            let price = p.amount.saturating_sub(tax);
            let hash = request_hash(&json!({"kind": entry.kind, "credits": entry.amount.get(), "charge": price}));
            let expected = self.credits_bought(id, p, price).await?;
            match row.map(|r| (r, r.invoice.as_ref())) {
                Some((_, Some(i))) if i.subtotal != credited_charge || i.total != p.amount => out.push(diff(
                    "invoice_mismatch",
                    Severity::Wrong,
                    Some(payment),
                    Some(credited_charge),
                    Some(i.subtotal),
                    format!(
                        "Invoice {} is for {} before tax and {} in all; credited for {} of a {} payment.",
                        i.invoice_id, i.subtotal, i.total, credited_charge, p.amount
                    ),
                )),
                Some((r, None)) => {
                    let mut d = diff(
                        "receipt_missing",
                        Severity::Lagging,
                        Some(payment),
                        None,
                        None,
                        format!("{} {} was paid and credited; its invoice has not been recorded.", kind_word(r), r.id),
                    );
                    d.age_s = Some(now_s - p.created);
                    out.push(d);
                }
                _ => {}
            }
            if hash != claim.request_hash
                || expected.is_some_and(|c| c != entry.amount.get())
                || p.currency != self.profile.currency
            {
                out.push(diff(
                    "credited_amount_mismatch",
                    Severity::Wrong,
                    Some(payment),
                    Some(entry.amount.get()),
                    expected,
                    format!(
                        "Credited {} micro-credits for a {} {} payment that buys {}.",
                        entry.amount.get(),
                        p.amount,
                        p.currency,
                        expected.map_or("an unknown amount".to_string(), |c| c.to_string())
                    ),
                ));
            }
        }

        for e in ledger.iter().filter(|e| matches!(e.kind, EntryKind::Purchase | EntryKind::AutoRecharge)) {
            if !claimed_entries.contains(e.id.as_str()) {
                out.push(diff(
                    "entry_without_claim",
                    Severity::Wrong,
                    None,
                    Some(e.amount.get()),
                    None,
                    format!("Ledger entry {} ({:?}) adds credits, but no payment is recorded for it.", e.id, e.kind),
                ));
            }
        }

        for p in ours_at_stripe.values().filter(|p| p.status == "succeeded") {
            let Some(&credits) = credited.get(p.id.as_str()) else {
                // A claim without its entry is reported above as `claim_without_entry`.
                if !claimed.contains(p.id.as_str()) {
                    let mut d = diff(
                        "payment_not_credited",
                        Severity::Lagging,
                        Some(&p.id),
                        None,
                        Some(p.amount),
                        "Stripe shows this payment succeeded; its credits have not been added.".into(),
                    );
                    d.age_s = Some(now_s - p.created);
                    out.push(d);
                }
                continue;
            };
            let share = if p.amount > 0 {
                (i128::from(credits) * i128::from(p.amount_refunded.min(p.amount)) / i128::from(p.amount)) as i64
            } else {
                0
            };
            let taken = account.refunded.get(&p.id).copied().unwrap_or(0);
            if taken < share {
                let mut d = diff(
                    "refund_not_applied",
                    Severity::Lagging,
                    Some(&p.id),
                    Some(taken),
                    Some(share),
                    format!(
                        "Stripe refunded {} of {}; the credits it bought have not all been taken back.",
                        p.amount_refunded, p.amount
                    ),
                );
                d.age_s = Some(now_s - p.created);
                out.push(d);
            } else if taken > share {
                out.push(diff(
                    "refund_exceeds_stripe",
                    Severity::Wrong,
                    Some(&p.id),
                    Some(taken),
                    Some(share),
                    format!("More credits were taken back than Stripe's refunds of {} cover.", p.amount_refunded),
                ));
            }
        }
        // Disputes (rules §12): a payment Stripe shows disputed has its dispute recorded here
        // (lagging while the event is on its way), and no dispute is recorded for a payment
        // that Stripe does not show disputed, or that was not credited.
        for p in ours_at_stripe.values().filter(|p| credited.contains_key(p.id.as_str())) {
            let ours = account.disputes.values().any(|d| d.payment_id == p.id);
            if p.disputed && !ours {
                let mut d = diff(
                    "dispute_not_recorded",
                    Severity::Lagging,
                    Some(&p.id),
                    None,
                    Some(p.amount),
                    "Stripe shows this payment disputed; the dispute has not taken its credits back here.".into(),
                );
                d.age_s = Some(now_s - p.created);
                out.push(d);
            } else if ours && !p.disputed {
                out.push(diff(
                    "dispute_not_at_stripe",
                    Severity::Wrong,
                    Some(&p.id),
                    None,
                    None,
                    "A dispute is recorded for a payment that Stripe does not show disputed.".into(),
                ));
            }
        }
        for (dispute, d) in &account.disputes {
            if !credited.contains_key(d.payment_id.as_str()) || !ours_at_stripe.contains_key(d.payment_id.as_str()) {
                out.push(diff(
                    "dispute_without_payment",
                    Severity::Wrong,
                    Some(&d.payment_id),
                    Some(d.taken.get()),
                    None,
                    format!(
                        "Dispute {dispute} took credits back for a payment that was not credited or is not at Stripe."
                    ),
                ));
            }
        }
        for (payment, taken) in &account.refunded {
            if !credited.contains_key(payment.as_str()) || !ours_at_stripe.contains_key(payment.as_str()) {
                out.push(diff(
                    "refund_without_payment",
                    Severity::Wrong,
                    Some(payment),
                    Some(*taken),
                    None,
                    "Credits were taken back for a payment that was not credited or is not at Stripe.".into(),
                ));
            }
        }
        Ok(out)
    }

    /// What a payment buys by our own record of it: a recharge's record (written when it was
    /// claimed), a purchase's priced credits; only when the payment's amount is the record's
    /// charge. `None` when it names neither.
    /// `price` is what the payment paid before tax.
    async fn credits_bought(&self, id: &str, p: &PaymentRecord, price: i64) -> Result<Option<i64>, ApiError> {
        if let Some(recharge) = p.metadata.get("topup_recharge_id") {
            let record = self.store.load_recharge(id, recharge).await.map_err(|_| ApiError::Upstream)?;
            return Ok(record.filter(|r| r.charge_cents == price).map(|r| r.credits.get()));
        }
        let Some(purchase) = p.metadata.get("topup_purchase_id") else { return Ok(None) };
        let record = self.store.load_purchase(id, purchase).await.map_err(|_| ApiError::Upstream)?;
        Ok(record.filter(|r| r.charge.get() == price).map(|r| r.credits.get()))
    }
}

fn kind_word(r: &Receipt) -> &'static str {
    match r.kind {
        crate::receipts::ReceiptKind::Purchase => "Purchase",
        crate::receipts::ReceiptKind::AutoRecharge => "Auto-recharge",
    }
}

/// The PaymentIntent a `payment:<id>` claim is for.
fn payment_of(claim: &IdemRecord) -> &str {
    claim.scope_key.strip_prefix("payment:").unwrap_or(&claim.scope_key)
}

impl Difference {
    /// A difference of our books with themselves (no payment in it): always wrong.
    pub(crate) fn wrong(account_id: &str, code: &'static str, ours: i64, theirs: i64, detail: String) -> Difference {
        Difference {
            account_id: account_id.to_string(),
            code: code.into(),
            severity: Severity::Wrong,
            payment_id: None,
            ours: Some(ours),
            theirs: Some(theirs),
            age_s: None,
            detail,
        }
    }
}

/// rules §17: each entity's recorded spend for its month is what its entries of that month drew
/// (a debit naming an entity writes its entry and its record in one commit). A debit naming an
/// entity is always written on the account's own item, so its own ledger holds them all.
pub fn entity_differences(account_id: &str, entities: &[crate::entities::Entity], ledger: &[LedgerEntry]) -> Vec<Difference> {
    let mut drawn: HashMap<(&str, String), i64> = HashMap::new();
    for e in ledger.iter().filter(|e| e.kind == EntryKind::Consumption) {
        if let Some(name) = e.entity.as_deref() {
            let t = drawn.entry((name, crate::clock::month_of(e.created_at))).or_default();
            *t = t.saturating_sub(e.amount.get());
        }
    }
    entities
        .iter()
        .filter_map(|ent| {
            let theirs = drawn.get(&(ent.entity.as_str(), ent.month.clone())).copied().unwrap_or(0);
            (theirs != ent.spent).then(|| {
                Difference::wrong(
                    account_id,
                    "entity_spend_mismatch",
                    ent.spent,
                    theirs,
                    format!("Entity {} records {} spent in {}; its entries drew {theirs}.", ent.entity, ent.spent, ent.month),
                )
            })
        })
        .collect()
}

/// rules §10.1 and §10.4 on one account's stored state.
pub fn ledger_differences(account: &Account, ledger: &[LedgerEntry]) -> Vec<Difference> {
    let mut out = Vec::new();
    let diff = |code: &'static str, ours: i64, theirs: i64, detail: String| {
        Difference::wrong(&account.id, code, ours, theirs, detail)
    };
    let sum = crate::money::total(ledger.iter().map(|e| e.amount.get()));
    if sum != account.balance.get() {
        out.push(diff(
            "balance_not_ledger_sum",
            account.balance.get(),
            sum,
            "The balance is not the sum of the ledger.".into(),
        ));
    }
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for e in ledger {
        let added = matches!(e.kind, EntryKind::Purchase | EntryKind::AutoRecharge)
            || (e.kind == EntryKind::Adjustment && e.amount.get() > 0);
        if added {
            let t = totals.entry("added").or_default();
            *t = t.saturating_add(e.amount.get());
        }
        if e.kind == EntryKind::Consumption {
            let t = totals.entry("spent").or_default();
            *t = t.saturating_sub(e.amount.get());
        }
    }
    let added = totals.get("added").copied().unwrap_or(0);
    let spent = totals.get("spent").copied().unwrap_or(0);
    if added != account.lifetime_added.get() {
        out.push(diff(
            "lifetime_added_mismatch",
            account.lifetime_added.get(),
            added,
            "Lifetime added is not the sum of credits added.".into(),
        ));
    }
    if spent != account.lifetime_spent.get() {
        out.push(diff(
            "lifetime_spent_mismatch",
            account.lifetime_spent.get(),
            spent,
            "Lifetime spent is not the sum of consumption.".into(),
        ));
    }
    // Grants (rules §15): the balance is the sum of what they hold (an account from before
    // grants has none until its next write), none below zero; each entry's moves add up to its
    // amount; a grant expires or is voided at most once.
    let held_by_grants = crate::money::total(account.grants.iter().map(|g| g.remaining.get()));
    if !account.grants.is_empty() && held_by_grants != account.balance.get() {
        out.push(diff(
            "grants_not_balance",
            account.balance.get(),
            held_by_grants,
            "The balance is not the sum of the grants' remaining credits.".into(),
        ));
    }
    if let Some(g) = account.grants.iter().find(|g| g.remaining.get() < 0) {
        out.push(diff("grant_negative", g.remaining.get(), 0, format!("Grant {} holds less than nothing.", g.id)));
    }
    if let Some(e) =
        ledger.iter().find(|e| !e.grants.is_empty() && crate::money::total(e.grants.iter().map(|m| m.1)) != e.amount.get())
    {
        out.push(diff(
            "grant_moves_not_amount",
            e.amount.get(),
            crate::money::total(e.grants.iter().map(|m| m.1)),
            format!("Entry {} moves other amounts of its grants than it records.", e.id),
        ));
    }
    let mut ended: BTreeMap<&str, i64> = BTreeMap::new();
    for e in ledger.iter().filter(|e| matches!(e.kind, EntryKind::Expiry | EntryKind::Void)) {
        for (g, _) in &e.grants {
            *ended.entry(g.as_str()).or_default() += 1;
        }
    }
    if let Some((g, n)) = ended.iter().find(|(_, n)| **n > 1) {
        out.push(diff("grant_ended_twice", *n, 1, format!("Grant {g} expired or was voided more than once.")));
    }
    // `seq` is the account version that wrote the entry: strictly increasing, never past the
    // account's version (a group commit's entries take consecutive versions).
    let mut previous = 0u64;
    for e in ledger {
        if e.seq <= previous || e.seq > account.version {
            out.push(diff(
                "ledger_sequence_broken",
                i64::try_from(e.seq).unwrap_or(i64::MAX),
                i64::try_from(previous).unwrap_or(i64::MAX),
                format!("Entry {} is out of order, repeated, or past the account's version.", e.id),
            ));
            break;
        }
        previous = e.seq;
    }
    let mut running = 0i64;
    let mut chain_reported = false;
    let mut negative_reported = false;
    for e in ledger {
        running = running.saturating_add(e.amount.get());
        if e.balance_after.get() != running && !chain_reported {
            chain_reported = true;
            out.push(diff(
                "ledger_chain_broken",
                e.balance_after.get(),
                running,
                format!("Entry {} records a balance the entries before it do not add up to.", e.id),
            ));
        }
        if running < 0 && !negative_reported {
            negative_reported = true;
            out.push(diff("negative_balance", running, 0, format!("The balance went below zero at entry {}.", e.id)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Micros;
    use crate::profile::Profile;

    fn entry(seq: u64, kind: EntryKind, amount: i64, after: i64) -> LedgerEntry {
        LedgerEntry {
            id: format!("txn_{seq}"),
            account_id: "a".into(),
            seq,
            kind,
            amount: Micros::new(amount),
            balance_after: Micros::new(after),
            created_at: 0,
            description: String::new(),
            grants: vec![],
            anchor: None,
            entity: None,
        }
    }

    fn account(balance: i64, added: i64, spent: i64) -> Account {
        let p = Profile::load("usd-overage").expect("profile");
        let mut a = Account::new(&p, "a", "pro", vec![], 0);
        a.balance = Micros::new(balance);
        a.lifetime_added = Micros::new(added);
        a.lifetime_spent = Micros::new(spent);
        a.version = 10;
        a
    }

    fn codes(d: &[Difference]) -> Vec<&str> {
        d.iter().map(|d| d.code.as_ref()).collect()
    }

    #[test]
    fn consistent_books_have_no_differences() {
        let ledger = [entry(2, EntryKind::Purchase, 100, 100), entry(3, EntryKind::Consumption, -30, 70)];
        assert!(ledger_differences(&account(70, 100, 30), &ledger).is_empty());
    }

    #[test]
    fn each_kind_of_ledger_difference_is_named() {
        let ledger = [entry(2, EntryKind::Purchase, 100, 100), entry(3, EntryKind::Consumption, -30, 71)];
        assert_eq!(codes(&ledger_differences(&account(70, 100, 30), &ledger)), ["ledger_chain_broken"]);
        let ledger = [entry(2, EntryKind::Purchase, 100, 100)];
        assert_eq!(
            codes(&ledger_differences(&account(90, 90, 5), &ledger)),
            ["balance_not_ledger_sum", "lifetime_added_mismatch", "lifetime_spent_mismatch"]
        );
        let ledger = [entry(2, EntryKind::Consumption, -5, -5)];
        assert_eq!(codes(&ledger_differences(&account(-5, 0, 5), &ledger)), ["negative_balance"]);
        let ledger = [entry(3, EntryKind::Purchase, 100, 100), entry(3, EntryKind::Consumption, -30, 70)];
        assert_eq!(codes(&ledger_differences(&account(70, 100, 30), &ledger)), ["ledger_sequence_broken"]);
        let ledger = [entry(2, EntryKind::Purchase, 100, 100), entry(11, EntryKind::Consumption, -30, 70)];
        assert_eq!(codes(&ledger_differences(&account(70, 100, 30), &ledger)), ["ledger_sequence_broken"]);
    }

    #[test]
    fn lagging_differences_become_problems_only_when_old() {
        let mut d = Difference {
            account_id: "a".into(),
            code: "payment_not_credited".into(),
            severity: Severity::Lagging,
            payment_id: None,
            ours: None,
            theirs: None,
            age_s: Some(60),
            detail: String::new(),
        };
        assert!(!d.is_problem(3600));
        d.age_s = Some(7200);
        assert!(d.is_problem(3600));
        d.severity = Severity::Wrong;
        d.age_s = None;
        assert!(d.is_problem(3600));
    }
}
