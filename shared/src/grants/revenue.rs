//! The revenue report (rules §15): for a calendar month, per account and in total, the paid
//! credits granted, consumed (revenue, at each grant's cost basis), expired or voided
//! (breakage), taken back (refunds, disputes, negative adjustments), restored (a won dispute
//! whose payment's grant had ended) and remaining at the month's end (deferred). Read from the
//! ledger's grant moves, so its totals are the ledger's; and the ledger as CSV.
//!
//! Every sum is checked (rules §16): a total that would not fit an `i64` refuses the report
//! (logged), never wraps into a wrong figure.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Category, Grant};
use crate::clock;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::store::{Segment, Store};

/// Credits and the money they stand for at cost basis (minor units of the profile's currency).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Valued {
    pub credits: i64,
    pub amount: i64,
}

/// A sum of the report would overflow: it is refused, not wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Valued {
    fn add(&mut self, credits: i64, amount: i64) -> Result<(), Overflow> {
        let credits = self.credits.checked_add(credits).ok_or(Overflow)?;
        let amount = self.amount.checked_add(amount).ok_or(Overflow)?;
        *self = Valued { credits, amount };
        Ok(())
    }
    fn plus(&mut self, o: &Valued) -> Result<(), Overflow> {
        self.add(o.credits, o.amount)
    }
}

/// One account's month of paid credits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevenueLine {
    pub account_id: String,
    /// Paid credits granted in the month, at what they cost.
    pub granted: Valued,
    /// Paid credits used in the month: revenue recognised.
    pub consumed: Valued,
    /// Paid credits expired or voided in the month: breakage.
    pub expired_or_voided: Valued,
    /// Paid credits taken back in the month (refunds, disputes, negative adjustments), less
    /// any returned to their grant.
    pub taken_back: Valued,
    /// Paid credits restored in the month after a won dispute whose payment's grant had ended:
    /// a new paid grant at that payment's cost basis (not new money, so not `granted`).
    #[serde(default)]
    pub restored: Valued,
    /// Paid credits left at the month's end: deferred revenue.
    pub deferred: Valued,
    /// Tax on the receipts paid in the month, minor units (rules §20): collected for the tax
    /// authority, never revenue; every figure above is before tax.
    #[serde(default)]
    pub tax_collected: i64,
}

impl RevenueLine {
    fn is_empty(&self) -> bool {
        *self == RevenueLine { account_id: self.account_id.clone(), ..RevenueLine::default() }
    }

    /// Adds `o`'s figures to this line's.
    fn plus(&mut self, o: &RevenueLine) -> Result<(), Overflow> {
        self.granted.plus(&o.granted)?;
        self.consumed.plus(&o.consumed)?;
        self.expired_or_voided.plus(&o.expired_or_voided)?;
        self.taken_back.plus(&o.taken_back)?;
        self.restored.plus(&o.restored)?;
        self.tax_collected = self.tax_collected.checked_add(o.tax_collected).ok_or(Overflow)?;
        self.deferred.plus(&o.deferred)
    }
}

/// An overflowing sum as the API answers it: logged, and a failure rather than a wrong figure.
fn overflowed(account_id: &str, month: &str) -> ApiError {
    tracing::error!(account_id, month, "a revenue report sum overflowed; the report is refused");
    ApiError::Upstream
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevenueReport {
    pub month: String,
    pub currency: String,
    pub accounts: Vec<RevenueLine>,
    pub total: RevenueLine,
}

/// One account's line from its grants and its whole ledger (oldest first); `Overflow` when a
/// sum would not fit.
pub fn revenue_line(
    account_id: &str,
    grants: &[Grant],
    ledger: &[LedgerEntry],
    start: i64,
    end: i64,
) -> Result<RevenueLine, Overflow> {
    let by_id: HashMap<&str, &Grant> = grants.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut line = RevenueLine { account_id: account_id.to_string(), ..RevenueLine::default() };
    // Per paid grant: credits taken so far (returns give back), to value each move at cost.
    let mut taken: HashMap<&str, i64> = HashMap::new();
    let mut granted: HashMap<&str, i64> = HashMap::new();
    for e in ledger.iter().filter(|e| e.created_at < end && !e.kind.is_lease()) {
        let in_month = e.created_at >= start;
        for (gid, m) in &e.grants {
            let Some(g) = by_id.get(gid.as_str()).filter(|g| g.category == Category::Paid) else { continue };
            let id = g.id.as_str();
            if *m > 0 {
                let was_taken = taken.get(id).copied().unwrap_or(0);
                if granted.contains_key(id) && was_taken > 0 {
                    // Credits returned to a grant (a won dispute): no longer taken back.
                    let back = (*m).min(was_taken);
                    let value = g.cost_of(back, was_taken - back);
                    taken.insert(id, was_taken - back);
                    if in_month {
                        line.taken_back.add(-back, -value)?;
                    }
                } else {
                    granted.insert(id, *m);
                    if in_month {
                        // A grant a won dispute made (its payment's own had ended) gives back
                        // what the dispute took: restored, not granted anew.
                        let to = if e.kind == EntryKind::Dispute { &mut line.restored } else { &mut line.granted };
                        to.add(*m, g.cost_of(*m, 0))?;
                    }
                }
                continue;
            }
            let amount = m.checked_neg().ok_or(Overflow)?;
            let before = taken.get(id).copied().unwrap_or(0);
            let value = g.cost_of(amount, before);
            taken.insert(id, before.checked_add(amount).ok_or(Overflow)?);
            if !in_month {
                continue;
            }
            match e.kind {
                EntryKind::Consumption => line.consumed.add(amount, value)?,
                EntryKind::Expiry | EntryKind::Void => line.expired_or_voided.add(amount, value)?,
                _ => line.taken_back.add(amount, value)?,
            }
        }
    }
    for (id, g) in &by_id {
        if g.category != Category::Paid || !granted.contains_key(id) {
            continue;
        }
        let t = taken.get(id).copied().unwrap_or(0);
        let left = g.granted.get().checked_sub(t).ok_or(Overflow)?;
        if left > 0 {
            line.deferred.add(left, g.cost_of(left, t))?;
        }
    }
    Ok(line)
}

/// The ledger as CSV, newest first, with the page's columns.
pub fn ledger_csv(entries: &[LedgerEntry]) -> String {
    let field = |s: &str| {
        // A text cell a spreadsheet would run as a formula is kept as text.
        let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() };
        let s = s.as_str();
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("id,kind,amount,balance_after,created_at,description,entity\n");
    for e in entries {
        let v = e.view();
        let kind = serde_json::to_value(v.kind).ok().and_then(|k| k.as_str().map(str::to_string)).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            field(&v.id),
            kind,
            v.amount,
            v.balance_after,
            v.created_at,
            field(&v.description),
            field(v.entity.as_deref().unwrap_or(""))
        ));
    }
    out
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// Every entry of an account, oldest first.
    pub async fn whole_ledger(&self, id: &str) -> Result<Vec<LedgerEntry>, ApiError> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let (page, more) = self.store.ledger_page(id, 1000, before).await.map_err(upstream)?;
            before = page.last().map(|e| e.seq);
            all.extend(page);
            if !more || before.is_none() {
                break;
            }
        }
        all.reverse();
        Ok(all)
    }

    /// `GET …/credits/transactions.csv`.
    pub async fn transactions_csv(&self, id: &str) -> Result<String, ApiError> {
        let a = self.load(id).await?;
        // What the account's people see of it as a whole (rules §16).
        let mut all = self.shown_entries(&a).await?;
        all.reverse();
        Ok(ledger_csv(&all))
    }
}

impl<S: Store + crate::receipts::ReceiptStore, B: EventBus> Credits<S, B> {
    /// One account's revenue line for `month` (`YYYY-MM`), with the tax its receipts paid in
    /// the month collected (rules §20).
    pub async fn revenue_of(&self, id: &str, month: &str) -> Result<RevenueLine, ApiError> {
        let (start, end) = month_range(month)?;
        let a = self.load(id).await?;
        let mut grants = self.store.ended_grants(id).await.map_err(upstream)?;
        grants.extend(a.grants.iter().cloned());
        // The account as a whole: its parts' usage too (moves between its parts net to nothing).
        let ledger = self.whole_entries(&a).await?;
        let mut line = revenue_line(id, &grants, &ledger, start, end).map_err(|Overflow| overflowed(id, month))?;
        let receipts = crate::receipts::store::all_receipts(&self.store, id).await.map_err(upstream)?;
        let taxes = receipts.iter().filter_map(|r| r.invoice.as_ref()).filter(|i| (start..end).contains(&i.paid_at));
        for i in taxes {
            line.tax_collected = line.tax_collected.checked_add(i.tax).ok_or_else(|| overflowed(id, month))?;
        }
        Ok(line)
    }

    /// `GET /v1/reports/revenue?month=YYYY-MM` (service): every account with paid credits
    /// moving or deferred in the month, and the total.
    pub async fn revenue_report(&self, month: &str) -> Result<RevenueReport, ApiError> {
        month_range(month)?;
        let mut accounts = Vec::new();
        let mut after = None;
        loop {
            let (ids, next) = self.store.account_ids(500, after, Segment::WHOLE).await.map_err(upstream)?;
            // A part's line is its account's (`parts::owner_of`).
            for id in ids.into_iter().filter(|id| crate::parts::owner_of(id) == id.as_str()) {
                let line = self.revenue_of(&id, month).await?;
                if !line.is_empty() {
                    accounts.push(line);
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        let total = total_of(&accounts).map_err(|Overflow| overflowed("total", month))?;
        Ok(RevenueReport { month: month.to_string(), currency: self.profile.currency.clone(), accounts, total })
    }
}

/// The total of the accounts' lines, every sum checked.
fn total_of(accounts: &[RevenueLine]) -> Result<RevenueLine, Overflow> {
    let mut total = RevenueLine { account_id: "total".into(), ..RevenueLine::default() };
    for l in accounts {
        total.plus(l)?;
    }
    Ok(total)
}

fn month_range(month: &str) -> Result<(i64, i64), ApiError> {
    clock::month_bounds(month).ok_or_else(|| ApiError::invalid("`month` must be a calendar month, `YYYY-MM`."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{GrantSource, DEFAULT_PRIORITY};
    use crate::money::Micros;

    fn grant(id: &str, granted: i64, cost: i64, category: Category) -> Grant {
        Grant {
            id: id.into(),
            source: GrantSource::Purchase,
            category,
            granted: Micros::new(granted),
            remaining: Micros::ZERO,
            expires_at: None,
            priority: DEFAULT_PRIORITY,
            created_at: 0,
            cost_cents: cost,
            payment_id: None,
            ended: None,
            ended_at: None,
        }
    }

    fn entry(seq: u64, at: i64, kind: EntryKind, moves: &[(&str, i64)]) -> LedgerEntry {
        LedgerEntry {
            id: format!("txn_{seq}"),
            account_id: "a".into(),
            seq,
            kind,
            amount: Micros::new(moves.iter().map(|m| m.1).sum()),
            balance_after: Micros::ZERO,
            created_at: at,
            description: String::new(),
            grants: moves.iter().map(|(g, m)| (g.to_string(), *m)).collect(),
            anchor: None,
            entity: None,
        }
    }

    #[test]
    fn the_lines_add_up_to_the_grants() {
        // $10 for 3 credits (cost basis 333.33… cents a credit), a promotional credit beside it.
        let grants = [grant("p", 3, 1000, Category::Paid), grant("f", 1, 0, Category::Promotional)];
        let ledger = [
            entry(1, 5, EntryKind::Purchase, &[("p", 3)]),
            entry(2, 6, EntryKind::Adjustment, &[("f", 1)]),
            entry(3, 15, EntryKind::Consumption, &[("f", -1), ("p", -1)]),
            entry(4, 16, EntryKind::Consumption, &[("p", -1)]),
            entry(5, 25, EntryKind::Expiry, &[("p", -1)]),
        ];
        // Month [10, 20): two paid credits consumed; one deferred at the end.
        let l = revenue_line("a", &grants, &ledger, 10, 20).unwrap();
        assert_eq!(l.granted, Valued::default());
        assert_eq!(l.consumed, Valued { credits: 2, amount: 666 });
        assert_eq!(l.deferred, Valued { credits: 1, amount: 334 });
        // The month before: granted, nothing used, all deferred; after: the rest expires.
        let before = revenue_line("a", &grants, &ledger, 0, 10).unwrap();
        assert_eq!(
            (before.granted, before.deferred),
            (Valued { credits: 3, amount: 1000 }, Valued { credits: 3, amount: 1000 })
        );
        let after = revenue_line("a", &grants, &ledger, 20, 30).unwrap();
        assert_eq!((after.expired_or_voided, after.deferred), (Valued { credits: 1, amount: 334 }, Valued::default()));
        // Every cent of the grant is accounted for exactly once across the months.
        assert_eq!(before.consumed.amount + l.consumed.amount + after.expired_or_voided.amount, 1000);
    }

    #[test]
    fn a_grant_restored_after_a_won_dispute_is_paid_at_its_cost_and_says_so() {
        // $10 for 3 credits, used up (ended); a dispute takes 3 credits from a promotional
        // grant; won, they come back as a new paid grant `r` at the payment's cost basis.
        let grants = [
            grant("p", 3, 1000, Category::Paid),
            grant("f", 5, 0, Category::Promotional),
            grant("r", 3, 1000, Category::Paid),
        ];
        let ledger = [
            entry(1, 5, EntryKind::Purchase, &[("p", 3)]),
            entry(2, 6, EntryKind::Adjustment, &[("f", 5)]),
            entry(3, 7, EntryKind::Consumption, &[("p", -3)]),
            entry(4, 8, EntryKind::Dispute, &[("f", -3)]),
            entry(5, 15, EntryKind::Dispute, &[("r", 3)]),
            entry(6, 16, EntryKind::Consumption, &[("r", -2)]),
        ];
        let l = revenue_line("a", &grants, &ledger, 10, 20).unwrap();
        assert_eq!(l.restored, Valued { credits: 3, amount: 1000 }, "{l:?}");
        assert_eq!(l.granted, Valued::default(), "not new money");
        assert_eq!(l.consumed, Valued { credits: 2, amount: 666 }, "revenue when used");
        assert_eq!(l.deferred, Valued { credits: 1, amount: 334 });
        assert_eq!(l.taken_back, Valued::default(), "the dispute took promotional credits");
    }

    #[test]
    fn a_sum_that_would_overflow_is_refused_not_wrapped() {
        // Two paid grants each costing more than half of i64: their revenue cannot be summed.
        let big = i64::MAX / 2 + 1;
        let grants = [grant("a", 1, big, Category::Paid), grant("b", 1, big, Category::Paid)];
        let ledger = [
            entry(1, 5, EntryKind::Purchase, &[("a", 1)]),
            entry(2, 5, EntryKind::Purchase, &[("b", 1)]),
            entry(3, 15, EntryKind::Consumption, &[("a", -1), ("b", -1)]),
        ];
        assert_eq!(revenue_line("a", &grants, &ledger, 10, 20), Err(Overflow));
        // Each alone fits; their total across accounts does not.
        let one = revenue_line("a", &grants[..1], &ledger[..1], 0, 10).unwrap();
        assert_eq!(one.granted, Valued { credits: 1, amount: big });
        assert_eq!(total_of(&[one.clone(), one.clone()]), Err(Overflow));
        assert_eq!(total_of(std::slice::from_ref(&one)).map(|t| t.granted), Ok(one.granted));
    }

    #[test]
    fn csv_keeps_formulas_as_text() {
        let mut e = entry(1, 0, EntryKind::Adjustment, &[("f", 5)]);
        e.description = "=HYPERLINK(\"x\")".into();
        assert!(ledger_csv(&[e]).ends_with(",\"'=HYPERLINK(\"\"x\"\")\",\n"), "{}", "quoted and prefixed");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut e = entry(1, 0, EntryKind::Adjustment, &[("f", 5)]);
        e.description = "Promo, \"welcome\"".into();
        let csv = ledger_csv(&[e]);
        assert_eq!(
            csv,
            "id,kind,amount,balance_after,created_at,description,entity\ntxn_1,adjustment,5,0,1970-01-01T00:00:00.000Z,\"Promo, \"\"welcome\"\"\",\n"
        );
        // An entry of an entity (rules §17) names it in the last column.
        let mut named = entry(2, 0, EntryKind::Consumption, &[("f", -5)]);
        named.entity = Some("user:bob@acme.example".into());
        assert!(ledger_csv(&[named]).ends_with(",user:bob@acme.example\n"));
    }
}
