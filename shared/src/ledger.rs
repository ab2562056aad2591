//! The credit ledger: immutable entries, and the pure arithmetic of debits, holds and
//! adjustments. Nothing here does I/O; the capabilities apply the results through `engine`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::account::{Account, Hold};
use crate::clock;
use crate::error::ApiError;
use crate::events::{BalanceCrossed, DomainEvent, Event};
use crate::grants::Burn;
use crate::money::Micros;
use crate::parts::Draws;
use crate::profile::{PlanConsumable, Profile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Purchase,
    AutoRecharge,
    Consumption,
    Refund,
    Adjustment,
    /// A chargeback: credits taken back when a payment is disputed (negative), returned when the
    /// dispute is won (positive).
    Dispute,
    /// What remained of a grant at its expiry (negative; rules §15).
    Expiry,
    /// What remained of a grant voided by the service (negative).
    Void,
    /// Credits leased from the account to one of its parts (negative, on the account; rules
    /// §14, `parts`).
    LeaseOut,
    /// The same credits arriving on the part (positive, on the part).
    LeaseIn,
    /// A part's unspent credits going back to the account: negative on the part, positive on
    /// the account.
    LeaseReturn,
}

impl EntryKind {
    /// Entries that move credits between an account and its parts: they never change the
    /// account's balance as a whole.
    pub fn is_lease(self) -> bool {
        matches!(self, EntryKind::LeaseOut | EntryKind::LeaseIn | EntryKind::LeaseReturn)
    }
}

/// One immutable movement of credits. `seq` is the account version that wrote it, so entries
/// sort in commit order; `balance_after` is exact because every write is serialized by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: String,
    pub account_id: String,
    pub seq: u64,
    pub kind: EntryKind,
    pub amount: Micros,
    pub balance_after: Micros,
    pub created_at: i64,
    pub description: String,
    /// The grants this entry moved, `(grant id, signed micro-credits)`; they add up to
    /// `amount` (rules §15). Empty on entries from before grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<(String, i64)>,
    /// On a part's entry: the account's `seq` this entry follows in the account's ledger (the
    /// lease that funded the part, or the account's side of a return), which orders the
    /// parts' entries among the account's without clocks (`Account::anchor`, rules §14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<u64>,
    /// The member, project or key whose usage this is (rules §17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

impl LedgerEntry {
    /// The entry that records `amount` moving into (or out of) `next`, the state it produced,
    /// with the grant moves made since the last entry.
    pub fn after(
        next: &mut Account,
        kind: EntryKind,
        amount: Micros,
        now: i64,
        description: impl Into<String>,
    ) -> LedgerEntry {
        LedgerEntry {
            id: new_id("txn"),
            account_id: next.id.clone(),
            seq: next.version,
            kind,
            amount,
            balance_after: next.balance,
            created_at: now,
            description: description.into(),
            grants: std::mem::take(&mut next.pending.moves),
            anchor: next.anchor(),
            entity: None,
        }
    }

    /// The same entry, of `entity`'s usage.
    pub fn of_entity(mut self, entity: Option<&str>) -> LedgerEntry {
        self.entity = entity.map(str::to_string);
        self
    }

    /// The entry as the API shows it.
    pub fn view(&self) -> EntryView {
        EntryView {
            id: self.id.clone(),
            kind: self.kind,
            amount: self.amount.get(),
            balance_after: self.balance_after.get(),
            created_at: clock::rfc3339(self.created_at),
            description: self.description.clone(),
            entity: self.entity.clone(),
        }
    }
}

/// A ledger entry as the API shows it (amounts in micro-credits, time in RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub id: String,
    pub kind: EntryKind,
    pub amount: i64,
    pub balance_after: i64,
    pub created_at: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The first result of an idempotent request, kept so a replay returns it (rules §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    pub account_id: String,
    /// `usage:<key>`, `hold:<key>`, `adjustment:<key>`, `payment:<id>`.
    pub scope_key: String,
    pub request_hash: String,
    /// The operation's first result, as its typed outcome serialises; a replay reads it back.
    pub outcome: Value,
    pub created_at: i64,
    /// Kept forever: the claim that a payment was credited must outlive any retry.
    #[serde(default)]
    pub permanent: bool,
    /// On a payment's claim: the entry that credited it and how much.
    #[serde(default)]
    pub credited: Option<Credited>,
}

/// What a payment's permanent claim records of its credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credited {
    pub entry_id: String,
    pub amount: Micros,
    /// What the payment charged (minor units): a refund or dispute takes back its share.
    #[serde(default)]
    pub charge_cents: i64,
    /// What the customer paid, tax included (a purchase's session `amount_total`), when known:
    /// a dispute's pre-tax share is taken against it (rules §20). None: the charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_total: Option<i64>,
}

/// How long idempotency keys are kept (rules §6: at least 24 hours).
pub const IDEMPOTENCY_TTL_MS: i64 = 7 * 24 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Open,
    Settled,
}

/// A hold as its own item: found by id, and the record of its settle (replays, 409s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub hold_id: String,
    pub account_id: String,
    pub hold: Hold,
    pub status: HoldStatus,
    pub created_at: i64,
    pub settle_hash: Option<String>,
    pub settled: Option<crate::usage::Settled>,
}

/// SHA-256 of a canonical request, to tell a replay from a different request.
pub fn request_hash(canonical: &Value) -> String {
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The largest quantity one request may carry; far above any real use, far below overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;

fn plan_consumable<'p>(
    profile: &'p Profile,
    account: &Account,
    consumable: &str,
) -> Result<&'p PlanConsumable, ApiError> {
    if !profile.consumables.contains_key(consumable) {
        return Err(ApiError::request_rule(
            "unknown_consumable",
            format!("`{consumable}` is not a consumable of this product."),
        ));
    }
    profile
        .plan(&account.plan)
        .and_then(|p| p.consumables.get(consumable))
        .ok_or_else(|| ApiError::rule("unknown_plan", "The account's plan is not part of this product."))
}

pub fn check_quantity(quantity: i64, allow_zero: bool) -> Result<(), ApiError> {
    if quantity < 0 || (quantity == 0 && !allow_zero) {
        return Err(ApiError::request_rule("invalid_quantity", "Quantity must be a positive whole number."));
    }
    if quantity > MAX_QUANTITY {
        return Err(ApiError::request_rule("invalid_quantity", format!("Quantity must be at most {MAX_QUANTITY}.")));
    }
    Ok(())
}

fn out_of_credits(profile: &Profile, account: &Account, consumable: &str) -> ApiError {
    let c = &profile.consumables[consumable];
    ApiError::OutOfCredits {
        code: c.exhausted_code.clone(),
        message: c.exhausted_message.clone(),
        balance: account.balance.get(),
        consumable: consumable.to_string(),
    }
}

/// How a usage of `quantity` units splits between the allowance and credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub from_allowance: i64,
    pub credit_units: i64,
    pub cost: Micros,
}

/// How `quantity` would split between the allowance and credits, and what it would cost,
/// whether or not the account can pay it (`None` cost: beyond what a price can express).
pub fn price(
    profile: &Profile,
    account: &Account,
    consumable: &str,
    quantity: i64,
    now: i64,
) -> Result<(i64, i64, Option<Micros>), ApiError> {
    let (_, from_allowance, credit_units, cost) = priced(profile, account, consumable, quantity, now)?;
    Ok((from_allowance, credit_units, cost))
}

/// `price`, with what the item draws from (`Account::draws`: an item that is part of an
/// account draws credits only, and refuses with `ApiError::Elsewhere` what it does not take).
fn priced(
    profile: &Profile,
    account: &Account,
    consumable: &str,
    quantity: i64,
    now: i64,
) -> Result<(Draws, i64, i64, Option<Micros>), ApiError> {
    check_quantity(quantity, false)?;
    let pc = plan_consumable(profile, account, consumable)?;
    let month = clock::month_of(now);
    let draws = account.draws(consumable, now)?;
    let remaining = match draws {
        Draws::CreditsOnly => 0,
        Draws::Everything => {
            (pc.included - account.used(consumable, &month) - account.held_allowance(consumable, &month, now)).max(0)
        }
    };
    let from_allowance = quantity.min(remaining);
    let credit_units = quantity - from_allowance;
    Ok((draws, from_allowance, credit_units, pc.rate.cost(credit_units)))
}

/// Allowance first, then credits at the plan's rate, all or nothing (strict mode).
pub fn draw(profile: &Profile, account: &Account, consumable: &str, quantity: i64, now: i64) -> Result<Draw, ApiError> {
    let (draws, from_allowance, credit_units, cost) = priced(profile, account, consumable, quantity, now)?;
    let refuse = || match draws {
        Draws::Everything => out_of_credits(profile, account, consumable),
        Draws::CreditsOnly => ApiError::Elsewhere,
    };
    let cost = cost.ok_or_else(refuse)?;
    if cost > account.available(now) {
        return Err(refuse());
    }
    Ok(Draw { from_allowance, credit_units, cost })
}

/// Applies a draw to `next` (a state from `Account::next`): usage and balance.
pub fn apply_draw(next: &mut Account, consumable: &str, draw: &Draw, now: i64) {
    *next.usage.entry(consumable.to_string()).or_insert(0) += draw.from_allowance;
    next.take_credits(draw.cost, Burn::Order, now);
    next.lifetime_spent = Micros::new(next.lifetime_spent.get() + draw.cost.get());
}

/// A hold of `quantity` units: allowance first, credits for the rest; 402 if not coverable.
pub fn reserve(
    profile: &Profile,
    account: &Account,
    consumable: &str,
    quantity: i64,
    now: i64,
    ttl_ms: i64,
) -> Result<Hold, ApiError> {
    let d = draw(profile, account, consumable, quantity, now)?;
    Ok(Hold {
        consumable: consumable.to_string(),
        units: quantity,
        allowance_units: d.from_allowance,
        micros: d.cost,
        month: clock::month_of(now),
        expires_at: now + ttl_ms,
        entity: None,
    })
}

/// The outcome of settling a hold with the actual use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Units covered by the hold.
    pub from_hold: i64,
    /// Units, within or beyond the hold, covered by the allowance.
    pub from_allowance: i64,
    /// Credits charged in all.
    pub from_credits: Micros,
    /// Units beyond the hold that neither allowance nor balance could cover.
    pub unbilled: i64,
}

/// Settles `hold` (already removed from `next.holds`) for `quantity` actual units, applying
/// usage and balance to `next`. Use beyond the hold draws what remains, never below zero, and
/// never more than `credit_cap` in all (the room its entity's budget leaves, rules §17): what
/// neither covers is `unbilled`.
pub fn settle(
    profile: &Profile,
    next: &mut Account,
    hold: &Hold,
    quantity: i64,
    credit_cap: Option<Micros>,
    now: i64,
) -> Result<Settlement, ApiError> {
    check_quantity(quantity, true)?;
    let pc = *plan_consumable(profile, next, &hold.consumable)?;
    let month = clock::month_of(now);
    let from_hold = quantity.min(hold.units);
    let hold_allowance = from_hold.min(hold.allowance_units);
    let hold_credit_units = from_hold - hold_allowance;
    // Never more than was reserved: the rate is the plan's at settle, the reservation caps it.
    let hold_cost = pc.rate.cost(hold_credit_units).unwrap_or(hold.micros).min(hold.micros);

    // Allowance reserved in an earlier month was that month's; it is not counted again.
    let hold_allowance_now = if hold.month == month { hold_allowance } else { 0 };
    *next.usage.entry(hold.consumable.clone()).or_insert(0) += hold_allowance_now;
    next.take_credits(hold_cost, Burn::Hold, now);

    let extra = quantity - from_hold;
    let remaining =
        (pc.included - next.used(&hold.consumable, &month) - next.held_allowance(&hold.consumable, &month, now)).max(0);
    let extra_allowance = extra.min(remaining);
    let extra_credit_units = extra - extra_allowance;
    let mut payable = next.available(now);
    if let Some(cap) = credit_cap {
        payable = payable.min(Micros::new(cap.get().saturating_sub(hold_cost.get()).max(0)));
    }
    let affordable = pc.rate.units_affordable(payable).min(extra_credit_units);
    let extra_cost = pc.rate.cost(affordable).unwrap_or(Micros::ZERO);
    *next.usage.entry(hold.consumable.clone()).or_insert(0) += extra_allowance;
    next.take_credits(extra_cost, Burn::Order, now);
    let charged = Micros::new(hold_cost.get() + extra_cost.get());
    next.lifetime_spent = Micros::new(next.lifetime_spent.get() + charged.get());
    Ok(Settlement {
        from_hold,
        from_allowance: hold_allowance + extra_allowance,
        from_credits: charged,
        unbilled: extra_credit_units - affordable,
    })
}

/// Events for a balance change from `before` to `after` (rules §6): `BalanceLow` when the
/// balance crosses into low, `BalanceDepleted` when it reaches zero. Writes are serialized by
/// version, so exactly one change crosses however many run at once.
pub fn crossing_events(
    profile: &Profile,
    before: &Account,
    after: &Account,
    now: i64,
    cause: &str,
) -> Vec<DomainEvent> {
    let mut out = Vec::new();
    let threshold = after.low_balance_threshold(profile);
    let trigger = profile.low_balance.trigger;
    let crossed = |kind: &str| BalanceCrossed {
        balance: after.balance.get(),
        previous_balance: before.balance.get(),
        threshold: threshold.get(),
        plan: after.plan.clone(),
        auto_recharge_enabled: after.auto_recharge.enabled,
        cause: cause.to_string(),
        version: after.version,
        kind: kind.to_string(),
    };
    if !trigger.is_low(before.balance, threshold) && trigger.is_low(after.balance, threshold) {
        out.push(DomainEvent::new(&after.id, now, Event::BalanceLow(crossed("BalanceLow"))));
    }
    if before.balance.get() > 0 && after.balance.get() <= 0 {
        out.push(DomainEvent::new(&after.id, now, Event::BalanceDepleted(crossed("BalanceDepleted"))));
    }
    // Each alert threshold crossed from at-or-above to below: its own event, once a crossing.
    for t in &after.alerts {
        if before.balance >= *t && after.balance < *t {
            let alert = crate::events::BalanceAlert {
                threshold: t.get(),
                balance: after.balance.get(),
                previous_balance: before.balance.get(),
                cause: cause.to_string(),
                version: after.version,
            };
            out.push(DomainEvent::new(&after.id, now, Event::BalanceAlert(alert)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::MICROS_PER_CREDIT as C;

    const NOW: i64 = 1_795_000_000_000; // November 2026

    fn account(profile: &Profile, plan: &str, balance: i64) -> Account {
        let mut a = Account::new(profile, "acme", plan, vec![], NOW);
        a.balance = Micros::new(balance);
        a
    }

    #[test]
    fn allowance_first_then_credits_rounded_up() {
        let p = Profile::load("usd-overage").unwrap();
        let mut a = account(&p, "pro", 10 * C);
        a.usage.insert("llm_tokens".into(), 1_999_990);
        // 10 tokens left in the allowance; 5 more at 2.5 micro-credits each = 12.5 → 13.
        let d = draw(&p, &a, "llm_tokens", 15, NOW).unwrap();
        assert_eq!(d, Draw { from_allowance: 10, credit_units: 5, cost: Micros::new(13) });
    }

    #[test]
    fn exhausted_is_refused_with_the_consumables_code() {
        let p = Profile::load("usd-overage").unwrap();
        let mut a = account(&p, "free", 0);
        a.usage.insert("llm_tokens".into(), 100_000);
        a.usage.insert("api_calls".into(), 1_000);
        assert_eq!(draw(&p, &a, "llm_tokens", 1, NOW).unwrap_err().code(), "out_of_credits");
        let e = draw(&p, &a, "api_calls", 1, NOW).unwrap_err();
        assert!(matches!(e, ApiError::OutOfCredits { .. }) && e.code() == "usage_limit_reached");
        assert_eq!(draw(&p, &a, "nope", 1, NOW).unwrap_err().code(), "unknown_consumable");
        assert_eq!(draw(&p, &a, "api_calls", 0, NOW).unwrap_err().code(), "invalid_quantity");
        assert_eq!(draw(&p, &a, "api_calls", -3, NOW).unwrap_err().code(), "invalid_quantity");
    }

    #[test]
    fn a_new_month_restores_the_allowance() {
        let p = Profile::load("org-runs").unwrap();
        let mut a = account(&p, "free", 0);
        a.usage_month = "2026-10".into();
        a.usage.insert("runs".into(), 1_000);
        let d = draw(&p, &a, "runs", 1_000, NOW).unwrap();
        assert_eq!(d.cost, Micros::ZERO);
    }

    #[test]
    fn holds_reserve_and_settle_releases_the_rest() {
        let p = Profile::load("voice-minutes").unwrap();
        let mut a = account(&p, "free", 50 * C);
        a.usage.insert("voice_minutes".into(), 25); // 5 of 30 free minutes left
        let h = reserve(&p, &a, "voice_minutes", 20, NOW, 900_000).unwrap();
        assert_eq!((h.allowance_units, h.micros), (5, Micros::new(15 * C)));
        a.holds.insert("h1".into(), h.clone());
        assert_eq!(a.available(NOW), Micros::new(35 * C));
        // An expired hold reserves nothing.
        assert_eq!(a.available(NOW + 900_000), Micros::new(50 * C));

        let mut next = a.next(NOW + 1000);
        let hold = next.holds.remove("h1").unwrap();
        let s = settle(&p, &mut next, &hold, 12, None, NOW + 1000).unwrap();
        assert_eq!(s, Settlement { from_hold: 12, from_allowance: 5, from_credits: Micros::new(7 * C), unbilled: 0 });
        assert_eq!(next.balance, Micros::new(43 * C));
        assert_eq!(next.used("voice_minutes", "2026-11"), 30);
    }

    #[test]
    fn use_beyond_the_hold_never_goes_below_zero() {
        let p = Profile::load("voice-minutes").unwrap();
        let mut a = account(&p, "free", 3 * C);
        a.usage.insert("voice_minutes".into(), 30);
        let h = reserve(&p, &a, "voice_minutes", 2, NOW, 900_000).unwrap();
        a.holds.insert("h".into(), h);
        let mut next = a.next(NOW);
        let hold = next.holds.remove("h").unwrap();
        let s = settle(&p, &mut next, &hold, 10, None, NOW).unwrap();
        assert_eq!((s.from_hold, s.from_credits, s.unbilled), (2, Micros::new(3 * C), 7));
        assert_eq!(next.balance, Micros::ZERO);
    }

    #[test]
    fn use_beyond_the_hold_stops_at_the_credit_cap() {
        let p = Profile::load("voice-minutes").unwrap();
        let mut a = account(&p, "free", 50 * C);
        a.usage.insert("voice_minutes".into(), 30);
        let h = reserve(&p, &a, "voice_minutes", 2, NOW, 900_000).unwrap();
        a.holds.insert("h".into(), h);
        let mut next = a.next(NOW);
        let hold = next.holds.remove("h").unwrap();
        // 5 credits in all: the 2 the hold reserved and 3 more; 5 of the 10 minutes unbilled.
        let s = settle(&p, &mut next, &hold, 10, Some(Micros::new(5 * C)), NOW).unwrap();
        assert_eq!((s.from_hold, s.from_credits, s.unbilled), (2, Micros::new(5 * C), 5));
        assert_eq!(next.balance, Micros::new(45 * C));
        // A cap below what the hold reserved takes nothing beyond it, and never less than it.
        let mut next = a.next(NOW);
        let hold = next.holds.remove("h").unwrap();
        let s = settle(&p, &mut next, &hold, 10, Some(Micros::new(C)), NOW).unwrap();
        assert_eq!((s.from_hold, s.from_credits, s.unbilled), (2, Micros::new(2 * C), 8));
    }

    #[test]
    fn crossing_is_strict_or_inclusive_per_profile() {
        let usd = Profile::load("usd-overage").unwrap();
        let before = account(&usd, "pro", 6 * C);
        let mut after = before.clone();
        after.balance = Micros::new(5 * C);
        assert!(crossing_events(&usd, &before, &after, NOW, "t").is_empty(), "$5 is not below $5");
        after.balance = Micros::new(5 * C - 1);
        let ev = crossing_events(&usd, &before, &after, NOW, "t");
        assert_eq!(ev.iter().map(|e| e.detail_type()).collect::<Vec<_>>(), ["BalanceLow"]);

        let runs = Profile::load("org-runs").unwrap();
        let before = account(&runs, "pro", 6 * C);
        let mut after = before.clone();
        after.balance = Micros::new(5 * C);
        assert_eq!(crossing_events(&runs, &before, &after, NOW, "t").len(), 1, "at or below for org-runs");
        after.balance = Micros::ZERO;
        let kinds: Vec<_> =
            crossing_events(&runs, &before, &after, NOW, "t").into_iter().map(|e| e.detail_type()).collect();
        assert_eq!(kinds, ["BalanceLow", "BalanceDepleted"]);
        // Already low: a further debit crosses nothing (until it reaches zero).
        let mut low = before.clone();
        low.balance = Micros::new(2 * C);
        let mut lower = low.clone();
        lower.balance = Micros::new(C);
        assert!(crossing_events(&runs, &low, &lower, NOW, "t").is_empty());
    }
}
