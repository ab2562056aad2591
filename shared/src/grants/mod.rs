//! Grants (rules §15): every addition of credits is a grant — a purchase or auto-recharge
//! (`paid`, with its cost basis) or an adjustment (`promotional` unless it says `paid`) — with an
//! optional expiry and a priority. The balance is the sum of the active grants' remaining, and
//! every change of it says which grants it moved (`LedgerEntry::grants`).
//!
//! - **Burn order.** Usage takes from grants by priority (lower first), then soonest expiry
//!   (none last), then promotional before paid, then oldest.
//! - **Expiry.** A grant past its `expires_at` leaves with one `expiry` entry, at the next write
//!   of the account after the instant (every write starts from `Account::next`) or in the
//!   scheduled run, whichever comes first — once. While open holds need its credits it waits
//!   (a hold is a promise to a session in progress): expired credits serve only holds, and the
//!   grant expires when the holds no longer need it.
//! - **Refunds and disputes** take from their own payment's grant first, then in burn order.
//! - **Void** (service) removes what remains of one grant (`void` entry).
//!
//! Active grants live in the account item (one write per debit stays one write); a grant that
//! ends (used up, expired, voided) is written once as its own record for the grants list and
//! the revenue report.

use serde::{Deserialize, Serialize};

pub mod ops;
pub mod revenue;
#[cfg(test)]
mod limits_tests;

use crate::account::Account;
use crate::clock;
use crate::ledger::{new_id, EntryKind, LedgerEntry};
use crate::money::Micros;

/// Grants one write expires at most.
pub const MAX_EXPIRIES_PER_WRITE: usize = 8;

/// Priority of a grant that does not say (0–100; lower burns first).
pub const DEFAULT_PRIORITY: u8 = 50;
pub const MAX_PRIORITY: u8 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    Purchase,
    AutoRecharge,
    Adjustment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Given, not bought: burns before paid credits of the same priority and expiry.
    Promotional,
    /// Bought: its cost basis is `cost_cents` for `granted` credits.
    Paid,
}

/// How a grant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantEnd {
    Used,
    Expired,
    Voided,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub source: GrantSource,
    pub category: Category,
    pub granted: Micros,
    pub remaining: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub priority: u8,
    pub created_at: i64,
    /// For a paid grant, what it cost in minor units: its cost basis.
    #[serde(default)]
    pub cost_cents: i64,
    /// The PaymentIntent it came from: a refund or dispute of that payment takes from it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Set once the grant has ended; an ended grant is kept as its own record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<GrantEnd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
}

/// What a new grant is, besides its amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub source: GrantSource,
    pub category: Category,
    pub expires_at: Option<i64>,
    pub priority: u8,
    pub cost_cents: i64,
    pub payment_id: Option<String>,
}

impl NewGrant {
    /// A promotional grant with no expiry at the default priority.
    pub fn promotional() -> NewGrant {
        NewGrant {
            source: GrantSource::Adjustment,
            category: Category::Promotional,
            expires_at: None,
            priority: DEFAULT_PRIORITY,
            cost_cents: 0,
            payment_id: None,
        }
    }
}

/// Used-up grants one write retires at most (each is an item of the write's transaction, which
/// DynamoDB caps at 100 items): a use that empties more grants than this leaves the rest, at
/// zero, to later writes (rules §16).
pub const RETIRES_PER_WRITE: usize = 16;

/// Active grants an account may hold (they live in the account item, which DynamoDB caps at
/// 400 KB): an addition past this is 422 `too_many_grants` (rules §16). A payment already made
/// is never refused: its credits are granted whatever the count (a purchase is refused at its
/// start instead; an account has at most one recharge in flight).
pub const MAX_ACTIVE_GRANTS: usize = 1_000;

/// Where a decrease takes credits from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burn<'a> {
    /// Usage and negative adjustments: live grants in burn order.
    Order,
    /// A hold's settlement: expired grants it kept first, then live grants in burn order.
    Hold,
    /// A refund or dispute: this payment's grant first, then in burn order.
    Payment(&'a str),
}

/// The sort key of burn order: priority, soonest expiry (none last), promotional before paid,
/// oldest, then id (a total order).
fn burn_key(g: &Grant) -> (u8, i64, Category, i64, &str) {
    (g.priority, g.expires_at.unwrap_or(i64::MAX), g.category, g.created_at, g.id.as_str())
}

/// Grants in burn order.
pub fn in_burn_order(grants: &[Grant]) -> Vec<&Grant> {
    let mut v: Vec<&Grant> = grants.iter().collect();
    v.sort_by(|a, b| burn_key(a).cmp(&burn_key(b)));
    v
}

/// What a change of the balance did to grants, written on its ledger entry.
pub type Moves = Vec<(String, i64)>;

impl Grant {
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// What a paid grant's `micros` cost, in minor units, at its cost basis (rounded down; the
    /// last credit carries the remainder, so a grant's parts add up to its cost).
    pub fn cost_of(&self, micros: i64, already: i64) -> i64 {
        if self.category != Category::Paid || self.granted.get() <= 0 {
            return 0;
        }
        let g = i128::from(self.granted.get());
        let c = i128::from(self.cost_cents);
        let upto = |m: i64| (i128::from(m.clamp(0, self.granted.get())) * c / g) as i64;
        upto(already + micros) - upto(already)
    }
}

impl Account {
    /// Credits in grants past their expiry that open holds still need (they serve only holds).
    pub fn expired_credits(&self, now: i64) -> Micros {
        Micros::new(crate::money::total(self.grants.iter().filter(|g| g.expired(now)).map(|g| g.remaining.get())))
    }

    /// A legacy account (its balance from before grants) gets one promotional grant for the
    /// difference, so that the balance is always the sum of the grants' remaining.
    pub(crate) fn ensure_grants(&mut self) {
        let sum = crate::money::total(self.grants.iter().map(|g| g.remaining.get()));
        let missing = self.balance.get().saturating_sub(sum);
        if missing > 0 {
            self.grants.push(Grant {
                // One per account, made once: the id need only be unique within it.
                id: "grant_opening".to_string(),
                source: GrantSource::Adjustment,
                category: Category::Promotional,
                granted: Micros::new(missing),
                remaining: Micros::new(missing),
                expires_at: None,
                priority: DEFAULT_PRIORITY,
                created_at: self.created_at,
                cost_cents: 0,
                payment_id: None,
                ended: None,
                ended_at: None,
            });
        }
    }

    /// Used-up grants this write may still retire (`RETIRES_PER_WRITE` less those it has).
    pub(crate) fn retire_room(&self) -> usize {
        let retired = self.pending.ended.iter().filter(|g| g.ended == Some(GrantEnd::Used)).count();
        RETIRES_PER_WRITE.saturating_sub(retired)
    }

    /// Grants that still count against `MAX_ACTIVE_GRANTS`: all but the used-up ones waiting
    /// to be retired (a grant with credits out on a part of the account, `grant_out`, is still
    /// in use).
    pub fn active_grants(&self) -> usize {
        self.grants.iter().filter(|g| g.remaining.get() > 0 || self.grant_out(&g.id)).count()
    }

    /// 422 `too_many_grants` when one more grant would pass `MAX_ACTIVE_GRANTS`.
    pub fn room_for_grant(&self) -> Result<(), crate::error::ApiError> {
        if self.active_grants() >= MAX_ACTIVE_GRANTS {
            return Err(crate::error::ApiError::rule(
                "too_many_grants",
                format!(
                    "The account holds {MAX_ACTIVE_GRANTS} active grants, the most it may; use or void some before adding more."
                ),
            ));
        }
        Ok(())
    }

    /// Adds `amount` as a new grant; returns its id. The caller checked for overflow.
    pub fn add_credits(&mut self, amount: Micros, spec: NewGrant, now: i64) -> String {
        let id = new_id("grant");
        self.balance = Micros::new(self.balance.get() + amount.get());
        self.grants.push(Grant {
            id: id.clone(),
            source: spec.source,
            category: spec.category,
            granted: amount,
            remaining: amount,
            expires_at: spec.expires_at,
            priority: spec.priority,
            created_at: now,
            cost_cents: spec.cost_cents,
            payment_id: spec.payment_id,
            ended: None,
            ended_at: None,
        });
        self.pending.moves.push((id.clone(), amount.get()));
        id
    }

    /// Returns `amount` (a won dispute's) to the payment's grant if it is still active. If it has
    /// ended, they come back as a new grant of the payment, paid at `original`'s cost basis for
    /// those credits (the grant as it was granted), so the revenue report values them as the
    /// payment did (rules §15); promotional only for a payment with no paid grant (from before
    /// grants). The new grant's id, if one was made.
    pub fn restore_credits(
        &mut self,
        amount: Micros,
        payment_id: &str,
        original: Option<&Grant>,
        now: i64,
    ) -> Option<String> {
        if let Some(g) = self.grants.iter_mut().find(|g| g.payment_id.as_deref() == Some(payment_id)) {
            g.remaining = Micros::new(g.remaining.get() + amount.get());
            self.balance = Micros::new(self.balance.get() + amount.get());
            self.pending.moves.push((g.id.clone(), amount.get()));
            return None;
        }
        let spec = match original.filter(|o| o.category == Category::Paid) {
            Some(o) => NewGrant {
                source: o.source,
                category: Category::Paid,
                // The dispute took live credits (the payment's own had ended): they come back
                // live, with the payment's expiry only if it is still ahead.
                expires_at: o.expires_at.filter(|t| *t > now),
                priority: o.priority,
                // Proportional, rounded down: never more than the payment cost.
                cost_cents: o.cost_of(amount.get(), 0),
                payment_id: Some(payment_id.to_string()),
            },
            None => NewGrant { payment_id: Some(payment_id.to_string()), ..NewGrant::promotional() },
        };
        Some(self.add_credits(amount, spec, now))
    }

    /// Takes `amount` from the grants as `how` says; the caller made sure it is there.
    pub fn take_credits(&mut self, amount: Micros, how: Burn<'_>, now: i64) {
        self.ensure_grants();
        self.balance = Micros::new(self.balance.get() - amount.get());
        let mut left = amount.get();
        let order: Vec<String> = {
            let sorted = in_burn_order(&self.grants);
            let first = |g: &&Grant| match how {
                Burn::Order => false,
                Burn::Hold => g.expired(now),
                Burn::Payment(pi) => g.payment_id.as_deref() == Some(pi),
            };
            let (a, b): (Vec<&Grant>, Vec<&Grant>) = sorted.into_iter().partition(first);
            // Usage never draws on expired credits (they serve only holds); a refund, dispute
            // or settlement may.
            let usable = |g: &&Grant| how != Burn::Order || !g.expired(now);
            a.into_iter().chain(b.into_iter().filter(usable)).map(|g| g.id.clone()).collect()
        };
        for (id, took) in self.take_in_order(&order, left) {
            left -= took;
            self.pending.moves.push((id, -took));
        }
        if left > 0 {
            // Only expired credits are left (a refund beyond what is live): take from them.
            for g in self.grants.iter_mut() {
                let take = left.min(g.remaining.get());
                if take > 0 {
                    g.remaining = Micros::new(g.remaining.get() - take);
                    left -= take;
                    self.pending.moves.push((g.id.clone(), -take));
                }
            }
        }
        self.retire_used(now);
    }

    /// Takes up to `amount` from the grants named in `order`, in that order, and says what it
    /// took from each, `(grant id, micro-credits)`; the balance is the caller's to move.
    pub(crate) fn take_in_order(&mut self, order: &[String], amount: i64) -> Vec<(String, i64)> {
        let mut left = amount;
        let mut taken = Vec::new();
        for id in order {
            if left == 0 {
                break;
            }
            if let Some(g) = self.grants.iter_mut().find(|g| g.id == *id) {
                let take = left.min(g.remaining.get());
                if take > 0 {
                    g.remaining = Micros::new(g.remaining.get() - take);
                    left -= take;
                    taken.push((id.clone(), take));
                }
            }
        }
        taken
    }

    /// Moves used-up grants out of the active list (they are written as records): at most
    /// `RETIRES_PER_WRITE` a write, oldest first; the rest, at zero, at later writes.
    pub(crate) fn retire_used(&mut self, now: i64) {
        let max = self.retire_room();
        if max == 0 {
            return;
        }
        // A grant with credits out on a part of the account (`grant_out`) is not used up until
        // they come back.
        let mut taken = 0usize;
        let (used, active): (Vec<Grant>, Vec<Grant>) = std::mem::take(&mut self.grants).into_iter().partition(|g| {
            let done = g.remaining.get() == 0 && !self.grant_out(&g.id) && taken < max;
            taken += usize::from(done);
            done
        });
        self.grants = active;
        for mut g in used {
            g.ended = Some(GrantEnd::Used);
            g.ended_at = Some(now);
            self.pending.ended.push(g);
        }
    }

    /// Ends grant `id` with an entry of `kind` (`expiry` or `void`) for what remains; `None` if
    /// it is not active.
    pub(crate) fn end_grant(&mut self, id: &str, end: GrantEnd, now: i64) -> Option<LedgerEntry> {
        let i = self.grants.iter().position(|g| g.id == id)?;
        let mut g = self.grants.remove(i);
        let amount = g.remaining.get();
        if end == GrantEnd::Expired && crate::broken::on(crate::broken::Bug::ExpireGrantTwice) {
            self.grants.insert(i, g.clone());
        }
        self.balance = Micros::new(self.balance.get() - amount);
        g.remaining = Micros::ZERO;
        g.ended = Some(end);
        g.ended_at = Some(now);
        let (kind, what) = match end {
            GrantEnd::Expired => (EntryKind::Expiry, "expired"),
            GrantEnd::Voided | GrantEnd::Used => (EntryKind::Void, "voided"),
        };
        self.pending.moves.push((g.id.clone(), -amount));
        self.pending.ended.push(g.clone());
        let description = format!("Grant {} {what}", g.id);
        Some(LedgerEntry::after(self, kind, Micros::new(-amount), now, description))
    }

    /// Expires every grant past its instant whose credits no open hold needs, each with its
    /// `expiry` entry (called by `Account::next`, so at the start of every write).
    pub(crate) fn expire_grants(&mut self, now: i64) {
        // Nothing expires on an item that is part of an account (`Account::is_part`).
        if self.is_part() || !self.grants.iter().any(|g| g.expired(now)) {
            return;
        }
        self.ensure_grants();
        let mut due: Vec<(i64, String, i64)> = self
            .grants
            .iter()
            .filter(|g| g.expired(now))
            .map(|g| (g.expires_at.unwrap_or(0), g.id.clone(), g.remaining.get()))
            .collect();
        due.sort();
        // A bounded number a write (each is an entry, an ended-grant record and an event in one
        // transaction of at most 100 items); the rest expire at the next write or run, and
        // until then their credits are not spendable anyway.
        for (_, id, remaining) in due.into_iter().take(MAX_EXPIRIES_PER_WRITE) {
            // Open holds keep what they need: the grant waits until they end; a grant with
            // credits out on a part of the account (`grant_out`) waits for them to come back.
            if self.balance.get() - remaining < self.held(now).get() || self.grant_out(&id) {
                continue;
            }
            self.version += 1;
            match self.end_grant(&id, GrantEnd::Expired, now) {
                Some(e) => self.pending.entries.push(e),
                None => self.version -= 1,
            }
        }
    }

    /// The next grant to expire: its remaining and instant.
    pub fn next_expiry(&self) -> Option<(Micros, i64)> {
        self.grants
            .iter()
            .filter_map(|g| g.expires_at.map(|t| (t, g)))
            .min_by_key(|(t, g)| (*t, g.id.clone()))
            .map(|(t, g)| (g.remaining, t))
    }
}

/// Things a write produced besides the account's new state, collected by the engine into its
/// commit (never stored on the account).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Expiry entries made by `Account::next`, before the change's own.
    pub entries: Vec<LedgerEntry>,
    /// Grant moves of the change not yet written on an entry.
    pub moves: Moves,
    /// Grants that ended in this change.
    pub ended: Vec<Grant>,
}

/// A grant as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub id: String,
    pub source: GrantSource,
    pub category: Category,
    pub granted: i64,
    pub remaining: i64,
    pub expires_at: Option<String>,
    pub priority: u8,
    pub created_at: String,
    /// `active`, `used`, `expired` or `voided`.
    pub status: String,
}

impl Grant {
    pub fn view(&self) -> GrantView {
        GrantView {
            id: self.id.clone(),
            source: self.source,
            category: self.category,
            granted: self.granted.get(),
            remaining: self.remaining.get(),
            expires_at: self.expires_at.map(clock::rfc3339),
            priority: self.priority,
            created_at: clock::rfc3339(self.created_at),
            status: match self.ended {
                None => "active",
                Some(GrantEnd::Used) => "used",
                Some(GrantEnd::Expired) => "expired",
                Some(GrantEnd::Voided) => "voided",
            }
            .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Accounts;
    use crate::accounts::GrantTerms;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::money::MICROS_PER_CREDIT as C;

    /// A hold opened before a grant expires, a debit after: the debit sees only what is left
    /// once the grant has gone, so the hold can always settle and nothing goes below zero.
    #[tokio::test]
    async fn a_debit_after_an_expiry_cannot_take_what_a_hold_needs() {
        let c = memory_credits("org-runs");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "runs", 1_000, &key("allowance")).await.unwrap();
        c.adjust("a", 50 * C / 100, "live", &key("l")).await.unwrap();
        let soon = crate::clock::now_ms() + 150;
        let terms = GrantTerms { expires_at: Some(soon), ..GrantTerms::default() };
        c.adjust_with("a", 50 * C / 100, "short", &terms, &key("x")).await.unwrap();
        let hold = c.reserve("a", "runs", 30, 600, &key("h")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // 50 runs (0.5 credit): the short grant expires first, leaving 0.5 with 0.3 held.
        let check = c.check("a", "runs", 50).await.unwrap();
        assert!(!check.allowed, "{check:?}");
        assert_eq!(c.debit("a", "runs", 50, &key("d1")).await.unwrap_err().code(), "out_of_credits");
        c.debit("a", "runs", 20, &key("d2")).await.unwrap();
        let settled = c.settle("a", &hold.hold_id, 30).await.unwrap();
        assert_eq!(settled.from_credits, 30 * C / 100);
        let a = c.store.load_account("a").await.unwrap().unwrap();
        assert_eq!(a.balance.get(), 0);
        assert_eq!(a.grants.iter().map(|g| g.remaining.get()).sum::<i64>(), 0);
        let ledger = c.whole_ledger("a").await.unwrap();
        assert!(crate::reconcile::ledger_differences(&a, &ledger).is_empty());
    }
}
