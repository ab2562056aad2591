//! Where a balance changes. Every operation plans the account's next state from a known
//! state, then commits it with a compare-and-swap on `version` in one transaction with its
//! ledger entry, idempotency claim, hold record and outbox events (SPEC §6, §10).
//!
//! The known state comes from a per-process cache of the last state this process wrote or
//! read, so the normal path is exactly one write and no read. When another writer got there
//! first, the failed condition returns the current item and the plan is made again. A refusal
//! (402, 422) decided on cached state is re-checked on a fresh read before it is returned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::account::{Account, Contact, PaymentMethod, RechargeClaim, RechargeError};
use crate::clock;
use crate::error::ApiError;
use crate::events::{publish_committed, EventBus};
use crate::ledger::{
    self, crossing_events, new_id, request_hash, DomainEvent, EntryKind, HoldRecord, HoldStatus, IdemRecord,
    LedgerEntry,
};
use crate::money::Micros;
use crate::pricing::{self, PurchaseChoice};
use crate::profile::{Profile, Purchase};
use crate::purchase::{purchase_id, PurchaseRecord, PurchaseStatus};
use crate::store::{Commit, CommitError, HoldWrite, PurchaseWrite, Store, StoreError};

/// Attempts before a contended write answers 503 `account_busy`.
const MAX_ATTEMPTS: u32 = 100;
/// Writes to one account from one process queue on one of these stripes instead of racing
/// each other; writers in other processes are resolved by the compare-and-swap.
const STRIPES: usize = 256;
/// Open holds an account may have at once.
pub const MAX_OPEN_HOLDS: usize = 100;
/// The largest adjustment either way: a billion credits.
pub const MAX_ADJUSTMENT: i64 = 1_000_000_000 * crate::money::MICROS_PER_CREDIT;
const CACHE_CAP: usize = 10_000;

/// What one attempt plans to write and answer.
struct Planned {
    next: Account,
    ledger: Option<LedgerEntry>,
    hold: Option<HoldWrite>,
    status: u16,
    response: Value,
    cause: &'static str,
    /// Events besides the threshold crossings, written to the outbox with the change.
    events: Vec<DomainEvent>,
    /// A purchase state change committed with this balance change.
    purchase: Option<PurchaseWrite>,
}

impl Planned {
    /// A change of the account alone (200): no ledger entry, no hold, no events, no purchase;
    /// the others start from it and add theirs.
    fn quiet(next: Account, cause: &'static str, response: Value) -> Planned {
        Planned { next, ledger: None, hold: None, status: 200, response, cause, events: vec![], purchase: None }
    }
}

/// A plan's way of saying "already so": nothing is written and the caller answers as done.
const NOTHING_TO_DO: &str = "nothing_to_do";

enum Applied {
    Done(u16, Value),
    HoldNotOpen(Option<Box<HoldRecord>>),
    /// The purchase moved on meanwhile (another delivery): read it again.
    PurchaseNotInState,
}

/// An idempotency claim: scope and key, and the hash of the request it belongs to.
struct Claim {
    scope_key: String,
    hash: String,
    permanent: bool,
}

pub struct Credits<S, B> {
    pub profile: Profile,
    pub store: S,
    pub bus: B,
    cache: Mutex<HashMap<String, Account>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

fn upstream(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::Upstream
}

fn replay(rec: &IdemRecord, claim: &Claim) -> Result<(u16, Value), ApiError> {
    if rec.request_hash == claim.hash {
        Ok((rec.status, rec.response.clone()))
    } else {
        Err(ApiError::IdempotencyConflict)
    }
}

/// Validates a client-chosen key: non-empty, at most 255 printable ASCII characters.
pub fn check_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ApiError::invalid(format!("`{field}` must be 1 to 255 printable characters without spaces.")));
    }
    Ok(())
}

impl<S: Store, B: EventBus> Credits<S, B> {
    pub fn new(profile: Profile, store: S, bus: B) -> Self {
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Credits { profile, store, bus, cache: Mutex::new(HashMap::new()), stripes }
    }

    fn stripe(&self, account_id: &str) -> &tokio::sync::Mutex<()> {
        // FNV-1a: stable and cheap; any spread will do.
        let h =
            account_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    pub(crate) fn cached(&self, id: &str) -> Option<Account> {
        self.cache.lock().ok().and_then(|c| c.get(id).cloned())
    }

    fn remember(&self, account: &Account) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_CAP && !c.contains_key(&account.id) {
                c.clear();
            }
            let newer = c.get(&account.id).is_none_or(|old| old.version <= account.version);
            if newer {
                c.insert(account.id.clone(), account.clone());
            }
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(id);
        }
    }

    /// The account, read with strong consistency (404 when it does not exist).
    pub async fn account(&self, id: &str) -> Result<Account, ApiError> {
        self.load(id).await
    }

    /// The account, read fresh; 404 if there is none.
    async fn load(&self, id: &str) -> Result<Account, ApiError> {
        match self.store.load_account(id).await.map_err(upstream)? {
            Some(a) => {
                self.remember(&a);
                Ok(a)
            }
            None => {
                self.forget(id);
                Err(ApiError::account_not_found())
            }
        }
    }

    async fn apply(
        &self,
        account_id: &str,
        claim: Option<&Claim>,
        mut plan: impl FnMut(&Account, i64) -> Result<Planned, ApiError>,
    ) -> Result<Applied, ApiError> {
        let _queue = self.stripe(account_id).lock().await;
        let (mut current, mut fresh) = match self.cached(account_id) {
            Some(a) => (a, false),
            None => (self.load(account_id).await?, true),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let now = clock::now_ms();
            let planned = match plan(&current, now) {
                Ok(p) => p,
                Err(refusal) => {
                    // An applied key answers with its first result, not with today's refusal.
                    if let Some(c) = claim {
                        if let Some(rec) =
                            self.store.load_idempotency(account_id, &c.scope_key).await.map_err(upstream)?
                        {
                            return replay(&rec, c).map(|(s, v)| Applied::Done(s, v));
                        }
                    }
                    if !fresh {
                        current = self.load(account_id).await?;
                        fresh = true;
                        continue;
                    }
                    return Err(refusal);
                }
            };
            let mut planned = planned;
            planned.next.index_for_sweep();
            // A low-balance episode ends when the balance is no longer low.
            let ar = &mut planned.next.auto_recharge;
            if ar.episode_charged && !self.profile.low_balance.trigger.is_low(planned.next.balance, ar.threshold) {
                ar.episode_charged = false;
            }
            debug_assert_eq!(planned.next.version, current.version + 1);
            let mut outbox = planned.events;
            outbox.extend(crossing_events(&self.profile, &current, &planned.next, now, planned.cause));
            let idempotency = claim.map(|c| IdemRecord {
                account_id: account_id.to_string(),
                scope_key: c.scope_key.clone(),
                request_hash: c.hash.clone(),
                status: planned.status,
                response: planned.response.clone(),
                created_at: now,
                permanent: c.permanent,
            });
            let commit = Commit {
                account: planned.next.clone(),
                expected_version: current.version,
                ledger: planned.ledger,
                idempotency,
                hold: planned.hold,
                purchase: planned.purchase,
                outbox: outbox.clone(),
            };
            match self.store.commit(commit).await {
                Ok(()) => {
                    self.remember(&planned.next);
                    publish_committed(&self.store, &self.bus, &outbox).await;
                    return Ok(Applied::Done(planned.status, planned.response));
                }
                Err(CommitError::KeyClaimed(rec)) => {
                    let c = claim.ok_or(ApiError::Upstream)?;
                    return replay(&rec, c).map(|(s, v)| Applied::Done(s, v));
                }
                Err(CommitError::HoldNotOpen(rec)) => return Ok(Applied::HoldNotOpen(rec)),
                Err(CommitError::PurchaseNotInState(_)) => return Ok(Applied::PurchaseNotInState),
                Err(CommitError::Stale(Some(a))) => {
                    self.remember(&a);
                    current = *a;
                    fresh = true;
                }
                Err(CommitError::Stale(None)) => {
                    current = self.load(account_id).await?;
                    fresh = true;
                }
                Err(CommitError::Conflict) => {
                    current = self.load(account_id).await?;
                    fresh = true;
                }
                Err(CommitError::Store(e)) => {
                    self.forget(account_id);
                    return Err(upstream(e));
                }
            }
            if attempt >= 1 {
                // Contention with another process: exponential backoff with full jitter.
                let cap = (4u64 << attempt.min(6)).min(250);
                let r = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]));
                tokio::time::sleep(Duration::from_millis(r % cap)).await;
            }
        }
        tracing::warn!(account_id, "write did not settle under contention");
        Err(ApiError::Busy)
    }

    // ---- accounts -------------------------------------------------------------------------

    /// `PUT /v1/accounts/{id}`: 201 created or 200 updated.
    pub async fn upsert_account(&self, id: &str, plan: &str, contacts: Vec<Contact>) -> Result<(u16, Value), ApiError> {
        let Some(plan_rules) = self.profile.plan(plan) else {
            return Err(ApiError::rule("unknown_plan", format!("`{plan}` is not a plan of this product.")));
        };
        let limit = plan_rules.monthly_reload_limit;
        let default_max = self.profile.auto_recharge.monthly_max_default;
        let allows = plan_rules.auto_recharge;
        if self.store.load_account(id).await.map_err(upstream)?.is_none() {
            let now = clock::now_ms();
            let mut account = Account::new(&self.profile, id, plan, contacts.clone(), now);
            account.version = 1;
            let commit = Commit {
                account: account.clone(),
                expected_version: 0,
                ledger: None,
                idempotency: None,
                hold: None,
                purchase: None,
                outbox: vec![],
            };
            match self.store.commit(commit).await {
                Ok(()) => {
                    self.remember(&account);
                    return Ok((201, account_json(&account)));
                }
                // Created meanwhile by another request: update it below.
                Err(CommitError::Stale(_)) | Err(CommitError::Conflict) => {}
                Err(CommitError::Store(e)) => return Err(upstream(e)),
                Err(_) => return Err(ApiError::Upstream),
            }
        }
        let applied = self
            .apply(id, None, |a, now| {
                let mut next = a.next(now);
                next.plan = plan.to_string();
                next.contacts = contacts.clone();
                // A plan that does not allow auto-recharge turns it off (SPEC §4, seed 004).
                if !allows {
                    next.auto_recharge.enabled = false;
                }
                // Keep the chosen monthly maximum within the new plan's limit; coming from a
                // plan that allowed none, start from the profile's default.
                let ar = &mut next.auto_recharge;
                ar.monthly_max = if ar.monthly_max == 0 { default_max.min(limit) } else { ar.monthly_max.min(limit) };
                let response = account_json(&next);
                Ok(Planned::quiet(next, "account_update", response))
            })
            .await?;
        done(applied)
    }

    // ---- debits and holds -----------------------------------------------------------------

    /// `POST /v1/accounts/{id}/usage`.
    pub async fn debit(&self, id: &str, consumable: &str, quantity: i64, key: &str) -> Result<(u16, Value), ApiError> {
        let claim = Claim {
            scope_key: format!("usage:{key}"),
            hash: request_hash(&json!({"consumable": consumable, "quantity": quantity})),
            permanent: false,
        };
        let profile = &self.profile;
        let applied = self
            .apply(id, Some(&claim), |a, now| {
                let d = ledger::draw(profile, a, consumable, quantity, now)?;
                let mut next = a.next(now);
                ledger::apply_draw(&mut next, consumable, &d);
                let entry = (d.cost.0 > 0).then(|| {
                    LedgerEntry::after(
                        &next,
                        EntryKind::Consumption,
                        Micros(-d.cost.0),
                        now,
                        usage_description(consumable, quantity, d.from_allowance),
                    )
                });
                let response = json!({
                    "from_allowance": d.from_allowance,
                    "from_credits": d.cost.0,
                    "balance": next.balance.0,
                    "transaction_id": entry.as_ref().map(|e| e.id.clone()),
                });
                Ok(Planned {
                    next,
                    ledger: entry,
                    hold: None,
                    status: 200,
                    response,
                    cause: "usage",
                    events: vec![],
                    purchase: None,
                })
            })
            .await?;
        done(applied)
    }

    /// `POST /v1/accounts/{id}/usage/holds`.
    pub async fn reserve(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        ttl_seconds: i64,
        key: &str,
    ) -> Result<(u16, Value), ApiError> {
        if !(1..=86_400).contains(&ttl_seconds) {
            return Err(ApiError::rule("invalid_ttl", "`ttl_seconds` must be between 1 and 86400."));
        }
        let claim = Claim {
            scope_key: format!("hold:{key}"),
            hash: request_hash(&json!({"consumable": consumable, "quantity": quantity, "ttl_seconds": ttl_seconds})),
            permanent: false,
        };
        let profile = &self.profile;
        let hold_id = new_id("hold");
        let applied = self
            .apply(id, Some(&claim), |a, now| {
                let hold = ledger::reserve(profile, a, consumable, quantity, now, ttl_seconds * 1000)?;
                let mut next = a.next(now);
                if next.holds.len() >= MAX_OPEN_HOLDS {
                    return Err(ApiError::rule(
                        "too_many_holds",
                        format!("An account may have at most {MAX_OPEN_HOLDS} open holds."),
                    ));
                }
                next.holds.insert(hold_id.clone(), hold.clone());
                let response = json!({
                    "hold_id": hold_id,
                    "consumable": consumable,
                    "reserved": hold.micros.0,
                    "reserved_units": hold.units,
                    "reserved_allowance_units": hold.allowance_units,
                    "expires_at": clock::rfc3339(hold.expires_at),
                });
                let record = HoldRecord {
                    hold_id: hold_id.clone(),
                    account_id: id.to_string(),
                    hold,
                    status: HoldStatus::Open,
                    created_at: now,
                    settle_hash: None,
                    settle_response: None,
                };
                Ok(Planned {
                    next,
                    ledger: None,
                    hold: Some(HoldWrite::Create(record)),
                    status: 201,
                    response,
                    cause: "hold",
                    events: vec![],
                    purchase: None,
                })
            })
            .await?;
        done(applied)
    }

    /// `POST /v1/accounts/{id}/usage/holds/{hold_id}/settle`. The threshold is checked here,
    /// at the end of the session, never while it runs.
    pub async fn settle(&self, id: &str, hold_id: &str, quantity: i64) -> Result<(u16, Value), ApiError> {
        ledger::check_quantity(quantity, true)?;
        let hash = request_hash(&json!({"quantity": quantity}));
        let profile = &self.profile;
        let result = self
            .apply(id, None, |a, now| {
                let Some(hold) = a.holds.get(hold_id).cloned() else { return Err(hold_not_found()) };
                if hold.expires_at <= now {
                    return Err(ApiError::HoldExpired);
                }
                let mut next = a.next(now);
                next.holds.remove(hold_id);
                let s = ledger::settle(profile, &mut next, &hold, quantity, now)?;
                let entry = (s.from_credits.0 > 0).then(|| {
                    LedgerEntry::after(
                        &next,
                        EntryKind::Consumption,
                        Micros(-s.from_credits.0),
                        now,
                        usage_description(&hold.consumable, quantity - s.unbilled, s.from_allowance),
                    )
                });
                let response = json!({
                    "hold_id": hold_id,
                    "from_hold": s.from_hold,
                    "from_allowance": s.from_allowance,
                    "from_credits": s.from_credits.0,
                    "unbilled": s.unbilled,
                    "balance": next.balance.0,
                    "transaction_id": entry.as_ref().map(|e| e.id.clone()),
                });
                let record = HoldRecord {
                    hold_id: hold_id.to_string(),
                    account_id: id.to_string(),
                    hold,
                    status: HoldStatus::Settled,
                    created_at: now,
                    settle_hash: Some(hash.clone()),
                    settle_response: Some(response.clone()),
                };
                Ok(Planned {
                    next,
                    ledger: entry,
                    hold: Some(HoldWrite::Settle(record)),
                    status: 200,
                    response,
                    cause: "settle",
                    events: vec![],
                    purchase: None,
                })
            })
            .await;
        let not_open = match result {
            Ok(Applied::Done(s, v)) => return Ok((s, v)),
            Ok(Applied::HoldNotOpen(rec)) => rec.map(|r| *r),
            Ok(Applied::PurchaseNotInState) => return Err(ApiError::Upstream),
            // Not among the account's open holds: settled, expired or unknown? The record says.
            Err(e) if e.code() == "hold_not_found" || e.code() == "hold_expired" => {
                self.store.load_hold(id, hold_id).await.map_err(upstream)?
            }
            Err(e) => return Err(e),
        };
        match not_open {
            Some(r) if r.status == HoldStatus::Settled => match (r.settle_hash, r.settle_response) {
                (Some(h), Some(resp)) if h == hash => Ok((200, resp)),
                _ => Err(ApiError::IdempotencyConflict),
            },
            Some(_) => Err(ApiError::HoldExpired),
            None => Err(hold_not_found()),
        }
    }

    // ---- adjustments ----------------------------------------------------------------------

    /// `POST /v1/accounts/{id}/credits/adjustments`: a signed grant or correction.
    pub async fn adjust(&self, id: &str, amount: i64, reason: &str, key: &str) -> Result<(u16, Value), ApiError> {
        if amount == 0 || amount.unsigned_abs() > MAX_ADJUSTMENT.unsigned_abs() {
            return Err(ApiError::rule(
                "invalid_amount",
                format!("An adjustment must be non-zero and at most {MAX_ADJUSTMENT} micro-credits either way."),
            ));
        }
        let claim = Claim {
            scope_key: format!("adjustment:{key}"),
            hash: request_hash(&json!({"amount": amount, "reason": reason})),
            permanent: false,
        };
        let applied = self
            .apply(id, Some(&claim), |a, now| {
                let mut next = a.next(now);
                if amount < 0 && next.available(now).0 < -amount {
                    return Err(ApiError::rule(
                        "insufficient_balance",
                        "A negative adjustment may not take the balance below zero (or below what open holds reserve).",
                    ));
                }
                next.balance = next
                    .balance
                    .checked_add(Micros(amount))
                    .ok_or_else(|| ApiError::rule("invalid_amount", "The balance would overflow."))?;
                if amount > 0 {
                    next.lifetime_added = next
                        .lifetime_added
                        .checked_add(Micros(amount))
                        .ok_or_else(|| ApiError::rule("invalid_amount", "The balance would overflow."))?;
                }
                let entry = LedgerEntry::after(&next, EntryKind::Adjustment, Micros(amount), now, reason.to_string());
                let response = entry.to_json();
                Ok(Planned {
                    next,
                    ledger: Some(entry),
                    hold: None,
                    status: 201,
                    response,
                    cause: "adjustment",
                    events: vec![],
                    purchase: None,
                })
            })
            .await?;
        done(applied)
    }

    // ---- payments -------------------------------------------------------------------------

    /// Credits a paid payment exactly once (SPEC §7, §10.2): the ledger entry, the balance and
    /// lifetime added, and a permanent claim on `payment_id` commit in one transaction, so
    /// however many deliveries race — webhook retries, out-of-order events, the auto-recharge
    /// call and its webhook — one credits and the others get the first result back.
    /// Emits `CreditsAdded` with the change. `payment_id` is Stripe's PaymentIntent id.
    pub async fn credit_payment(&self, id: &str, payment: &Payment) -> Result<(u16, Value), ApiError> {
        done(self.credit(id, payment, None).await?)
    }

    /// Credits `payment`; with `purchase`, marks that purchase succeeded in the same transaction.
    async fn credit(
        &self,
        id: &str,
        payment: &Payment,
        purchase: Option<&PurchaseRecord>,
    ) -> Result<Applied, ApiError> {
        if payment.credits.0 <= 0 {
            return Err(ApiError::rule("invalid_amount", "A payment must add a positive number of credits."));
        }
        if !matches!(payment.kind, EntryKind::Purchase | EntryKind::AutoRecharge) {
            return Err(ApiError::rule("invalid_purchase", "Only purchases and auto-recharges credit a payment."));
        }
        let claim = Claim {
            scope_key: format!("payment:{}", payment.payment_id),
            hash: request_hash(
                &json!({"kind": payment.kind, "credits": payment.credits.0, "charge": payment.charge_cents}),
            ),
            permanent: true,
        };
        let applied = self
            .apply(id, Some(&claim), |a, now| {
                let mut next = a.next(now);
                let overflow = || ApiError::rule("invalid_amount", "The balance would overflow.");
                next.balance = next.balance.checked_add(payment.credits).ok_or_else(overflow)?;
                next.lifetime_added = next.lifetime_added.checked_add(payment.credits).ok_or_else(overflow)?;
                let entry = LedgerEntry::after(&next, payment.kind, payment.credits, now, payment.description.clone());
                let event = DomainEvent::new(
                    "CreditsAdded",
                    id,
                    now,
                    json!({
                        "kind": payment.kind,
                        // seed 000: "We'll email you when it completes" — only for payments
                        // that went through `processing`.
                        "settled_after_processing": purchase.is_some_and(|r| r.status == PurchaseStatus::Processing),
                        "payment_id": payment.payment_id,
                        "reference": payment.reference,
                        "credits": payment.credits.0,
                        "charge": {"amount": payment.charge_cents, "currency": self.profile.currency},
                        "balance": next.balance.0,
                        "transaction_id": entry.id,
                    }),
                );
                let mut events = vec![event];
                match payment.kind {
                    // seed 000: buying credits by hand restores a suspended auto-recharge.
                    EntryKind::Purchase => next.auto_recharge.suspended = false,
                    _ => {
                        let ar = &mut next.auto_recharge;
                        if ar.in_flight.as_ref().is_some_and(|c| c.recharge_id == payment.reference) {
                            ar.in_flight = None;
                        }
                        events.push(DomainEvent::new(
                            "AutoRechargeSucceeded",
                            id,
                            now,
                            json!({
                                "recharge_id": payment.reference,
                                "payment_id": payment.payment_id,
                                "credits": payment.credits.0,
                                "charge": {"amount": payment.charge_cents, "currency": self.profile.currency},
                                "balance": next.balance.0,
                            }),
                        ));
                    }
                }
                let response = entry.to_json();
                // A paid payment credits even if the purchase had meanwhile been marked failed or
                // expired: the money was taken (SPEC §10.2).
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
                Ok(Planned {
                    next,
                    ledger: Some(entry),
                    hold: None,
                    status: 201,
                    response,
                    cause: "payment",
                    events,
                    purchase,
                })
            })
            .await?;
        Ok(applied)
    }

    // ---- purchases ------------------------------------------------------------------------

    /// Records a pending purchase priced by the server. With an `Idempotency-Key`, the same key
    /// and request name the same purchase (201 again with it); another request under the key
    /// is 409.
    pub async fn record_purchase(
        &self,
        id: &str,
        choice: &PurchaseChoice,
        key: Option<&str>,
    ) -> Result<(u16, PurchaseRecord), ApiError> {
        let account = self.load(id).await?;
        let quote = pricing::quote(&self.profile, &account.plan, choice)?;
        let hash = request_hash(&json!({"amount": choice.amount, "package": choice.package, "blocks": choice.blocks}));
        let now = clock::now_ms();
        let record = PurchaseRecord {
            purchase_id: purchase_id(id, key),
            account_id: id.to_string(),
            status: PurchaseStatus::Pending,
            charge: quote.charge,
            currency: self.profile.currency.clone(),
            credits: quote.credits,
            description: quote.description,
            request_hash: hash.clone(),
            created_at: now,
            updated_at: now,
            checkout_session_id: None,
            payment_intent_id: None,
            transaction_id: None,
        };
        match self
            .store
            .put_purchase(PurchaseWrite { record: record.clone(), from: vec![], expected_updated_at: None })
            .await
        {
            Ok(()) => Ok((201, record)),
            Err(CommitError::PurchaseNotInState(Some(existing))) if existing.request_hash == hash => {
                Ok((201, *existing))
            }
            Err(CommitError::PurchaseNotInState(_)) => Err(ApiError::IdempotencyConflict),
            Err(CommitError::Store(e)) => Err(upstream(e)),
            Err(_) => Err(ApiError::Busy),
        }
    }

    pub async fn purchase(&self, id: &str, purchase_id: &str) -> Result<PurchaseRecord, ApiError> {
        self.store
            .load_purchase(id, purchase_id)
            .await
            .map_err(upstream)?
            .ok_or_else(|| ApiError::NotFound("purchase_not_found", "No purchase with this id exists.".into()))
    }

    /// Moves a purchase from one of `from` to `to` (no credits move). A purchase already past
    /// that point is left as it is and returned: webhook deliveries arrive in any order.
    async fn move_purchase(
        &self,
        id: &str,
        purchase_id: &str,
        from: &[PurchaseStatus],
        edit: impl Fn(&mut PurchaseRecord),
    ) -> Result<PurchaseRecord, ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.purchase(id, purchase_id).await?;
            if !from.contains(&current.status) {
                return Ok(current);
            }
            let mut next = current.clone();
            edit(&mut next);
            next.updated_at = clock::now_ms().max(current.updated_at + 1);
            let write = PurchaseWrite {
                record: next.clone(),
                from: vec![current.status],
                expected_updated_at: Some(current.updated_at),
            };
            match self.store.put_purchase(write).await {
                Ok(()) => return Ok(next),
                Err(CommitError::Store(e)) => return Err(upstream(e)),
                Err(_) => continue, // moved meanwhile: look again
            }
        }
        Err(ApiError::Busy)
    }

    /// The Checkout Session made for a pending purchase.
    pub async fn attach_checkout(
        &self,
        id: &str,
        purchase_id: &str,
        session_id: &str,
    ) -> Result<PurchaseRecord, ApiError> {
        let session = session_id.to_string();
        self.move_purchase(id, purchase_id, &[PurchaseStatus::Pending], |p| {
            p.checkout_session_id = Some(session.clone())
        })
        .await
    }

    /// Checkout completed but the payment settles later (bank debits): `processing`, with a
    /// `PurchaseProcessing` event.
    pub async fn purchase_processing(&self, id: &str, purchase_id: &str) -> Result<PurchaseRecord, ApiError> {
        self.move_purchase_announced(id, purchase_id, &[PurchaseStatus::Pending], PurchaseStatus::Processing).await
    }

    /// The payment failed: `failed`, never credited, with a `PurchaseFailed` event (seed 000:
    /// the customer is told).
    pub async fn purchase_failed(&self, id: &str, purchase_id: &str) -> Result<PurchaseRecord, ApiError> {
        self.move_purchase_announced(
            id,
            purchase_id,
            &[PurchaseStatus::Pending, PurchaseStatus::Processing],
            PurchaseStatus::Failed,
        )
        .await
    }

    /// Moves a purchase from one of `from` to `to` and announces it on the bus: the purchase
    /// write and the event's outbox entry commit with the account in one transaction, so the
    /// event goes out exactly when the move happened. A purchase already past `from` (a late
    /// or repeated delivery) is returned as it is, and nothing is announced.
    async fn move_purchase_announced(
        &self,
        id: &str,
        purchase_id: &str,
        from: &[PurchaseStatus],
        to: PurchaseStatus,
    ) -> Result<PurchaseRecord, ApiError> {
        let detail_type = match to {
            PurchaseStatus::Processing => "PurchaseProcessing",
            _ => "PurchaseFailed",
        };
        for _ in 0..MAX_ATTEMPTS {
            let current = self.purchase(id, purchase_id).await?;
            if !from.contains(&current.status) {
                return Ok(current);
            }
            let applied = self
                .apply(id, None, |a, now| {
                    let next = a.next(now);
                    let record =
                        PurchaseRecord { status: to, updated_at: now.max(current.updated_at + 1), ..current.clone() };
                    let event = DomainEvent::new(
                        detail_type,
                        id,
                        now,
                        json!({
                            "purchase_id": record.purchase_id,
                            "status": record.status.as_str(),
                            "message": record.message(),
                            "credits": record.credits.0,
                            "charge": {"amount": record.charge.0, "currency": record.currency},
                            "balance": next.balance.0,
                        }),
                    );
                    let response = record.to_json();
                    let from = vec![current.status];
                    let purchase = PurchaseWrite { record, from, expected_updated_at: Some(current.updated_at) };
                    Ok(Planned {
                        events: vec![event],
                        purchase: Some(purchase),
                        ..Planned::quiet(next, "purchase_state", response)
                    })
                })
                .await?;
            match applied {
                Applied::Done(..) => return self.purchase(id, purchase_id).await,
                Applied::PurchaseNotInState | Applied::HoldNotOpen(_) => continue,
            }
        }
        Err(ApiError::Busy)
    }

    /// The Checkout Session expired unpaid.
    pub async fn purchase_expired(&self, id: &str, purchase_id: &str) -> Result<PurchaseRecord, ApiError> {
        self.move_purchase(id, purchase_id, &[PurchaseStatus::Pending], |p| p.status = PurchaseStatus::Expired).await
    }

    /// The purchase's payment succeeded: credit it exactly once and mark it `succeeded`, in one
    /// transaction keyed by the PaymentIntent.
    pub async fn purchase_paid(
        &self,
        id: &str,
        purchase_id: &str,
        payment_intent_id: &str,
    ) -> Result<PurchaseRecord, ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.purchase(id, purchase_id).await?;
            if current.status == PurchaseStatus::Succeeded {
                return Ok(current);
            }
            let payment = Payment {
                payment_id: payment_intent_id.to_string(),
                kind: EntryKind::Purchase,
                credits: current.credits,
                charge_cents: current.charge.0,
                reference: purchase_id.to_string(),
                description: current.description.clone(),
            };
            match self.credit(id, &payment, Some(&current)).await? {
                // Credited now, or this payment was credited before (same transaction, so the
                // purchase says succeeded).
                Applied::Done(..) => return self.purchase(id, purchase_id).await,
                // The purchase changed since it was read (another delivery moved it): nothing
                // was written; read it again and credit unless it has succeeded meanwhile.
                Applied::PurchaseNotInState | Applied::HoldNotOpen(_) => continue,
            }
        }
        Err(ApiError::Busy)
    }

    // ---- Stripe customer and saved card -----------------------------------------------------

    /// Records the account's Stripe customer. The first one recorded stays (two concurrent
    /// requests create the same customer under one idempotency key anyway); returns it.
    pub async fn set_customer(&self, id: &str, customer_id: &str) -> Result<String, ApiError> {
        let result = self
            .apply(id, None, |a, now| {
                if let Some(existing) = &a.stripe_customer_id {
                    return Err(ApiError::rule(NOTHING_TO_DO, existing.clone()));
                }
                let mut next = a.next(now);
                next.stripe_customer_id = Some(customer_id.to_string());
                Ok(Planned::quiet(next, "customer", json!({"customer_id": customer_id})))
            })
            .await;
        match result {
            Ok(_) => Ok(customer_id.to_string()),
            Err(ApiError::Rule(NOTHING_TO_DO, existing)) => Ok(existing),
            Err(e) => Err(e),
        }
    }

    /// Makes `card` the account's default payment method (`setup_intent.succeeded`). No charge
    /// is made here. A new card lifts the suspension a failed recharge left (issue 4: "until an
    /// admin saves a new card or completes a manual purchase"); the next trigger or sweep may
    /// then charge it. The last error stays on record.
    pub async fn save_card(&self, id: &str, card: PaymentMethod, customer_id: Option<&str>) -> Result<Value, ApiError> {
        let result = self
            .apply(id, None, |a, now| {
                if a.payment_method.as_ref() == Some(&card) {
                    return Err(ApiError::rule(NOTHING_TO_DO, String::new()));
                }
                let mut next = a.next(now);
                if a.payment_method.as_ref().is_none_or(|m| m.id != card.id) {
                    next.auto_recharge.suspended = false;
                }
                next.payment_method = Some(card.clone());
                if next.stripe_customer_id.is_none() {
                    next.stripe_customer_id = customer_id.map(str::to_string);
                }
                Ok(Planned::quiet(next, "card_saved", payment_method_json(Some(&card))))
            })
            .await;
        match result {
            Ok(_) | Err(ApiError::Rule(NOTHING_TO_DO, _)) => Ok(payment_method_json(Some(&card))),
            Err(e) => Err(e),
        }
    }

    /// Removes the default payment method. Auto-recharge cannot charge without one, so it is
    /// turned off with it. Returns the removed card's id, if there was one.
    pub async fn remove_card(&self, id: &str) -> Result<Option<String>, ApiError> {
        let result = self
            .apply(id, None, |a, now| {
                let Some(card) = &a.payment_method else {
                    return Err(ApiError::rule(NOTHING_TO_DO, String::new()));
                };
                let mut next = a.next(now);
                next.payment_method = None;
                next.auto_recharge.enabled = false;
                next.index_for_sweep();
                Ok(Planned::quiet(next, "card_removed", json!({"payment_method_id": card.id})))
            })
            .await;
        match result {
            Ok(Applied::Done(_, v)) => Ok(v["payment_method_id"].as_str().map(str::to_string)),
            Ok(_) | Err(ApiError::Rule(NOTHING_TO_DO, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ---- refunds ----------------------------------------------------------------------------

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
    ) -> Result<Option<Value>, ApiError> {
        if charge_amount <= 0 || amount_refunded <= 0 {
            return Ok(None);
        }
        let credited =
            self.store.load_idempotency(id, &format!("payment:{payment_intent_id}")).await.map_err(upstream)?;
        let Some(credited) = credited.and_then(|r| r.response["amount"].as_i64()) else {
            // Stripe does not keep events in order: the refund can arrive before the event that
            // credits the payment. Refused, it comes again later (Stripe retries for three
            // days), by when the credit is there; answered 2xx, it would be lost for good.
            tracing::warn!(
                account_id = id,
                payment_intent_id,
                "refund before its payment was credited; Stripe will retry"
            );
            return Err(ApiError::OutOfOrder(
                "payment_not_credited_yet",
                "This refund is for a payment not credited yet; deliver it again later.".into(),
            ));
        };
        // Floor: a partial refund never takes back more than its share.
        let share =
            (i128::from(credited) * i128::from(amount_refunded.min(charge_amount)) / i128::from(charge_amount)) as i64;
        let p = &self.profile;
        let result = self
            .apply(id, None, |a, now| {
                let before = a.refunded.get(payment_intent_id).copied().unwrap_or(0);
                let owed = share - before;
                if owed <= 0 {
                    return Err(ApiError::rule(NOTHING_TO_DO, String::new()));
                }
                let mut next = a.next(now);
                // Never below zero, nor below what open holds reserve (as a negative adjustment):
                // a reserved credit is promised to a session in progress, like a used one.
                let taken = owed.min(next.available(now).0.max(0));
                next.refunded.insert(payment_intent_id.to_string(), share);
                next.balance = Micros(next.balance.0 - taken);
                let mut description = format!("Refund: {} taken back", format_credits(p, Micros(taken)));
                if taken < owed {
                    description
                        .push_str(&format!(" ({} already used or reserved)", format_credits(p, Micros(owed - taken))));
                }
                let entry = (taken > 0)
                    .then(|| LedgerEntry::after(&next, EntryKind::Refund, Micros(-taken), now, description.clone()));
                let response = entry.as_ref().map_or(Value::Null, LedgerEntry::to_json);
                Ok(Planned {
                    next,
                    ledger: entry,
                    hold: None,
                    status: 200,
                    response,
                    cause: "refund",
                    events: vec![],
                    purchase: None,
                })
            })
            .await;
        match result {
            Ok(Applied::Done(_, v)) if !v.is_null() => Ok(Some(v)),
            Ok(_) | Err(ApiError::Rule(NOTHING_TO_DO, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ---- auto-recharge: claim, complete, fail ---------------------------------------------

    /// Claims a recharge if one is due (SPEC §8): enabled on a plan that allows it, a card on
    /// file, not suspended, nothing in flight, the balance low by the profile's comparison, and
    /// the month's count under the cap. One conditional write; of any number of concurrent
    /// triggers for one low balance, exactly one gets `Claimed`. The count is taken at claim so
    /// the cap holds even with a charge in flight; a failed charge gives it back.
    pub async fn claim_recharge(&self, id: &str) -> Result<RechargeDecision, ApiError> {
        let p = &self.profile;
        let recharge_id = new_id("rch");
        let result = self
            .apply(id, None, |a, now| {
                let mut next = a.next(now);
                let ar = &next.auto_recharge;
                let not = |why: &'static str| Err(ApiError::rule(RECHARGE_NOT_DUE, why));
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
                if ar.in_flight.is_some() {
                    return not("in_flight");
                }
                if !p.low_balance.trigger.is_low(next.balance, ar.threshold) {
                    return not("not_low");
                }
                if ar.episode_charged {
                    return not("recharged_this_episode");
                }
                let credits = ar.amount;
                let charge_cents = pricing::recharge_charge(p, &next.plan, credits)?.0;
                let over_money =
                    ar.monthly_spend_max_cents.is_some_and(|cap| ar.spent_this_month_cents + charge_cents > cap);
                if ar.used_this_month >= ar.monthly_max || over_money {
                    // At the cap auto-recharge pauses until next month (seed 004); the first time
                    // a month, say so on the bus (the profile decides whether that is emailed).
                    let reason = if over_money { "monthly_spend_cap" } else { "monthly_cap" };
                    let month = clock::month_of(now);
                    if ar.paused_notice_month.as_deref() == Some(month.as_str()) {
                        return not(reason);
                    }
                    next.auto_recharge.paused_notice_month = Some(month.clone());
                    let event = DomainEvent::new(
                        "AutoRechargePaused",
                        id,
                        now,
                        json!({
                            "month": month,
                            "reason": reason,
                            "monthly_max": next.auto_recharge.monthly_max,
                            "monthly_spend_max": next.auto_recharge.monthly_spend_max_cents,
                            "balance": next.balance.0,
                        }),
                    );
                    return Ok(Planned {
                        next,
                        ledger: None,
                        hold: None,
                        status: 204,
                        response: json!({"reason": reason}),
                        cause: "recharge_paused",
                        events: vec![event],
                        purchase: None,
                    });
                }
                let claim = RechargeClaim { recharge_id: recharge_id.clone(), claimed_at: now, credits, charge_cents };
                next.auto_recharge.used_this_month += 1;
                next.auto_recharge.spent_this_month_cents += charge_cents;
                next.auto_recharge.in_flight = Some(claim.clone());
                next.auto_recharge.episode_charged = true;
                let response = serde_json::to_value(&claim).unwrap_or(Value::Null);
                Ok(Planned::quiet(next, "recharge_claim", response))
            })
            .await;
        match result {
            Ok(Applied::Done(204, v)) => {
                Ok(RechargeDecision::NotDue(v["reason"].as_str().unwrap_or("monthly_cap").into()))
            }
            Ok(Applied::Done(_, v)) => {
                serde_json::from_value(v).map(RechargeDecision::Claimed).map_err(|_| ApiError::Upstream)
            }
            Ok(_) => Err(ApiError::Upstream),
            Err(ApiError::Rule(RECHARGE_NOT_DUE, why)) => Ok(RechargeDecision::NotDue(why)),
            Err(e) => Err(e),
        }
    }

    /// The claimed recharge's PaymentIntent succeeded: credit it through the same exactly-once
    /// path as the webhook (either may come first), release the claim, emit
    /// `AutoRechargeSucceeded`.
    pub async fn complete_recharge(
        &self,
        id: &str,
        claim: &RechargeClaim,
        payment_intent_id: &str,
    ) -> Result<(u16, Value), ApiError> {
        let payment = Payment {
            payment_id: payment_intent_id.to_string(),
            kind: EntryKind::AutoRecharge,
            credits: claim.credits,
            charge_cents: claim.charge_cents,
            reference: claim.recharge_id.clone(),
            description: format!("Auto-recharge of {}", format_credits(&self.profile, claim.credits)),
        };
        done(self.credit(id, &payment, None).await?)
    }

    /// The claimed recharge's charge failed (a decline, `authentication_required`, a
    /// PaymentIntent left needing action): nothing is added, the error is recorded, the claim
    /// and its count are given back, and auto-recharge is suspended until a new card or a
    /// manual purchase — no automatic retry (seed 000). Emits `AutoRechargeFailed`. A claim that
    /// is no longer in flight (completed or failed already) is left alone: `false`.
    pub async fn fail_recharge(&self, id: &str, recharge_id: &str, failure: &RechargeError) -> Result<bool, ApiError> {
        let result = self
            .apply(id, None, |a, now| {
                if a.auto_recharge.in_flight.as_ref().is_none_or(|c| c.recharge_id != recharge_id) {
                    return Err(ApiError::rule(RECHARGE_NOT_DUE, "not_in_flight"));
                }
                let mut next = a.next(now);
                let ar = &mut next.auto_recharge;
                ar.in_flight = None;
                ar.suspended = true;
                ar.episode_charged = false;
                ar.used_this_month = ar.used_this_month.saturating_sub(1);
                if let Some(claim) = &a.auto_recharge.in_flight {
                    ar.spent_this_month_cents = (ar.spent_this_month_cents - claim.charge_cents).max(0);
                }
                next.last_recharge_error = Some(RechargeError { at: now, ..failure.clone() });
                let event = DomainEvent::new(
                    "AutoRechargeFailed",
                    id,
                    now,
                    json!({
                        "recharge_id": recharge_id,
                        "code": failure.code,
                        "decline_code": failure.decline_code,
                        "do_not_retry": failure.do_not_retry(),
                        "message": failure.message,
                        "balance": next.balance.0,
                    }),
                );
                Ok(Planned { events: vec![event], ..Planned::quiet(next, "recharge_failed", Value::Null) })
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(ApiError::Rule(RECHARGE_NOT_DUE, _)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---- auto-recharge settings -------------------------------------------------------------

    /// `PUT /v1/accounts/{id}/credits/auto-recharge` (SPEC §5, §8): validated against the
    /// profile and the plan; each broken rule is a 422 with its own code and nothing changes.
    pub async fn set_auto_recharge(&self, id: &str, input: &AutoRechargeInput) -> Result<(u16, Value), ApiError> {
        let p = &self.profile;
        let rules = &p.auto_recharge;
        let applied = self
            .apply(id, None, |a, now| {
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
                let amount =
                    if rules.fixed_amount { rules.default_amount } else { input.amount.map_or(current.amount, Micros) };
                let threshold = input.threshold.map_or(current.threshold, Micros);
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
                    let one = pricing::recharge_charge(p, &a.plan, amount)?.0;
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
                let response = auto_recharge_json(p, &next, &clock::month_of(now));
                Ok(Planned::quiet(next, "auto_recharge_settings", response))
            })
            .await?;
        done(applied)
    }

    // ---- views ----------------------------------------------------------------------------

    /// `GET /v1/accounts/{id}/credits`: the credits view (SPEC §5, §11).
    pub async fn view(&self, id: &str) -> Result<Value, ApiError> {
        let a = self.load(id).await?;
        let (recent, _) = self.store.ledger_page(id, 5, None).await.map_err(upstream)?;
        let now = clock::now_ms();
        let p = &self.profile;
        let month = clock::month_of(now);
        let plan = p.plan(&a.plan);
        let allowances: Vec<Value> = p
            .consumables
            .keys()
            .map(|c| {
                let included = plan.and_then(|pl| pl.consumables.get(c)).map_or(0, |pc| pc.included);
                json!({"consumable": c, "included": included, "used": a.used(c, &month)})
            })
            .collect();
        let threshold = a.low_balance_threshold(p);
        Ok(json!({
            "account_id": a.id,
            "plan": a.plan,
            "unit": p.unit,
            "balance": a.balance.0,
            "available": a.available(now).0,
            "held": a.held(now).0,
            "low_balance": a.balance <= threshold,
            "low_balance_threshold": threshold.0,
            "lifetime_added": a.lifetime_added.0,
            "lifetime_spent": a.lifetime_spent.0,
            "recent_transactions": recent.iter().map(LedgerEntry::to_json).collect::<Vec<_>>(),
            "allowances": allowances,
            "auto_recharge": auto_recharge_json(p, &a, &month),
            "payment_method": payment_method_json(a.payment_method.as_ref()),
            "last_recharge_error": a.last_recharge_error.as_ref().map(|e| json!({
                "code": e.code, "decline_code": e.decline_code, "do_not_retry": e.do_not_retry(),
                "message": e.message, "time": clock::rfc3339(e.at),
            })),
            "purchase_options": purchase_options(p, &a.plan),
        }))
    }

    /// `GET /v1/accounts/{id}/notifications`: recent notifications, newest first, each with its
    /// type, time, and how every channel and recipient went.
    pub async fn notifications(&self, id: &str, limit: usize) -> Result<Value, ApiError> {
        self.load(id).await?;
        let deliveries = self.store.recent_deliveries(id, limit.saturating_mul(8)).await.map_err(upstream)?;
        let mut out: Vec<(String, Value)> = Vec::new();
        for d in deliveries {
            let channel = json!({"channel": d.channel, "to": d.to, "status": d.status, "detail": d.detail});
            match out.iter().position(|(event, _)| *event == d.event_id) {
                Some(i) => {
                    if let Some(list) = out[i].1["channels"].as_array_mut() {
                        list.push(channel);
                    }
                }
                None if out.len() < limit => out.push((
                    d.event_id.clone(),
                    json!({
                        "event_id": d.event_id,
                        "type": d.kind,
                        "time": clock::rfc3339(d.occurred_ms),
                        "channels": [channel],
                    }),
                )),
                None => {}
            }
        }
        Ok(json!({"notifications": out.into_iter().map(|(_, n)| n).collect::<Vec<_>>()}))
    }

    /// `GET /v1/accounts/{id}/credits/transactions`: newest first, `cursor` from the last page.
    pub async fn transactions(&self, id: &str, limit: usize, cursor: Option<u64>) -> Result<Value, ApiError> {
        self.load(id).await?;
        let (page, more) = self.store.ledger_page(id, limit, cursor).await.map_err(upstream)?;
        let next_cursor = if more { page.last().map(|e| encode_cursor(e.seq)) } else { None };
        Ok(json!({
            "transactions": page.iter().map(LedgerEntry::to_json).collect::<Vec<_>>(),
            "next_cursor": next_cursor,
        }))
    }
}

/// Why no recharge was claimed (an internal refusal code, never sent to a client).
const RECHARGE_NOT_DUE: &str = "recharge_not_due";

/// The outcome of `claim_recharge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RechargeDecision {
    Claimed(RechargeClaim),
    /// `disabled`, `plan`, `no_payment_method`, `suspended`, `in_flight`, `not_low`,
    /// `recharged_this_episode`, `monthly_cap`.
    NotDue(String),
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
}

fn done(applied: Applied) -> Result<(u16, Value), ApiError> {
    match applied {
        Applied::Done(s, v) => Ok((s, v)),
        Applied::HoldNotOpen(_) | Applied::PurchaseNotInState => Err(ApiError::Upstream),
    }
}

fn hold_not_found() -> ApiError {
    ApiError::NotFound("hold_not_found", "No open hold with this id exists.".into())
}

fn usage_description(consumable: &str, quantity: i64, from_allowance: i64) -> String {
    if from_allowance > 0 {
        format!("{quantity} {consumable} ({from_allowance} from the monthly allowance)")
    } else {
        format!("{quantity} {consumable}")
    }
}

fn title(plan: &str) -> String {
    let mut c = plan.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn account_json(a: &Account) -> Value {
    json!({
        "account_id": a.id,
        "plan": a.plan,
        "billing_contacts": a.contacts,
        "created_at": clock::rfc3339(a.created_at),
    })
}

/// The auto-recharge part of the credits view (SPEC §5, §11; seed 004's counter and notices).
pub fn auto_recharge_json(p: &Profile, a: &Account, month: &str) -> Value {
    let plan = p.plan(&a.plan);
    let ar = &a.auto_recharge;
    let used = if ar.used_month == month { ar.used_this_month } else { 0 };
    // seed 004: the bar "turns yellow above 50% and red above 80%".
    let (u, m) = (u64::from(used) * 100, u64::from(ar.monthly_max));
    let level = if m > 0 && u > m * 80 {
        "critical"
    } else if m > 0 && u > m * 50 {
        "warning"
    } else {
        "ok"
    };
    let plan_allows = plan.is_some_and(|pl| pl.auto_recharge);
    let spent = if ar.used_month == month { ar.spent_this_month_cents } else { 0 };
    let next_charge = crate::pricing::recharge_charge(p, &a.plan, ar.amount).map_or(0, |c| c.0);
    let over_money = ar.monthly_spend_max_cents.is_some_and(|cap| spent + next_charge > cap);
    let paused = if !plan_allows {
        json!({"reason": "plan", "message": plan_unavailable_message(&a.plan)})
    } else if ar.enabled && ar.suspended {
        json!({"reason": "payment_failed", "message": "Auto-recharge is paused because the last charge failed. Update your card or buy credits to restore it."})
    } else if ar.enabled && ar.monthly_max > 0 && used >= ar.monthly_max {
        json!({"reason": "monthly_limit", "message": "You've reached your monthly auto-reload limit. Auto-reload is paused until next month."})
    } else if ar.enabled && over_money {
        json!({"reason": "monthly_spend_limit", "message": "You've reached your monthly auto-reload spending limit. Auto-reload is paused until next month."})
    } else {
        Value::Null
    };
    let rules = &p.auto_recharge;
    json!({
        "enabled": ar.enabled,
        "threshold": ar.threshold.0,
        "amount": if rules.fixed_amount { Value::Null } else { json!(ar.amount.0) },
        "monthly_max": ar.monthly_max,
        "used_this_month": used,
        "monthly_spend_max": ar.monthly_spend_max_cents,
        "spent_this_month": spent,
        "level": level,
        "paused": paused,
        "available_on_plan": plan_allows,
        "limits": {
            "threshold_min": rules.threshold_min.0,
            "threshold_max": rules.threshold_max.map(|m| m.0),
            "amount_min": rules.amount_min.0,
            "amount_max": rules.amount_max.0,
            "monthly_max_default": rules.monthly_max_default,
            "monthly_max_limit": plan.map_or(0, |pl| pl.monthly_reload_limit),
        },
    })
}

/// seed 004: "Auto-reload not available on Free plan".
fn plan_unavailable_message(plan: &str) -> String {
    format!("Auto-reload not available on {} plan", title(plan))
}

/// The saved card as the credits view shows it (SPEC §11), or null.
pub fn payment_method_json(m: Option<&PaymentMethod>) -> Value {
    m.map_or(
        Value::Null,
        |m| json!({"brand": m.brand, "last4": m.last4, "exp_month": m.exp_month, "exp_year": m.exp_year}),
    )
}

/// Credits in the profile's unit for a person: `$12.50`, `100 minutes`, `12 credits`.
pub fn format_credits(p: &Profile, micros: Micros) -> String {
    let per = p.unit.micros_per_unit.max(1);
    if p.unit.code == p.currency {
        return pricing::format_money(micros.0 / (per / 100).max(1), &p.currency);
    }
    let whole = micros.0 / per;
    let frac = (micros.0 % per).abs();
    let digits = per.to_string().len() - 1;
    let n = if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:0digits$}").trim_end_matches('0').to_string()
    };
    let unit = if n == "1" { p.unit.code.clone() } else { format!("{}s", p.unit.code) };
    format!("{n} {unit}")
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

/// `purchase_options` of the credits view (SPEC §11).
pub fn purchase_options(p: &Profile, plan: &str) -> Value {
    match &p.purchase {
        Purchase::Amount { default_cents, min_cents, max_cents, step_cents, .. } => {
            json!({"kind": "amount", "default": default_cents, "min": min_cents, "max": max_cents, "step": step_cents, "currency": p.currency})
        }
        Purchase::Packages { packages, custom, .. } => json!({
            "kind": "packages",
            "currency": p.currency,
            "packages": packages.iter().map(|k| json!({"id": k.id, "price": k.price_cents, "credits": k.credits.0})).collect::<Vec<_>>(),
            "custom": custom.as_ref().map(|c| json!({"min": c.min_cents, "max": c.max_cents})),
        }),
        Purchase::Blocks { units_per_block, min_blocks, max_blocks } => json!({
            "kind": "blocks",
            "currency": p.currency,
            "minutes_per_block": units_per_block,
            "min": min_blocks,
            "max": max_blocks,
            "price_per_block": p.plan(plan).and_then(|pl| pl.block_price_cents),
        }),
    }
}

/// Cursors are opaque to clients: `c` and the sequence in hex.
pub fn encode_cursor(seq: u64) -> String {
    format!("c{seq:x}")
}

pub fn decode_cursor(s: &str) -> Result<u64, ApiError> {
    s.strip_prefix('c')
        .filter(|h| !h.is_empty() && h.len() <= 16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| ApiError::invalid("`cursor` is not a cursor this API returned."))
}

#[cfg(test)]
mod tests {
    //! Fast tests over the in-memory store and bus; the same behaviour is tested against the
    //! emulators in `tests/`.
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::events::MemoryBus;
    use crate::money::MICROS_PER_CREDIT as C;
    use crate::store::MemoryStore;

    fn credits(profile: &str) -> Credits<Arc<MemoryStore>, Arc<MemoryBus>> {
        Credits::new(Profile::load(profile).unwrap(), Arc::new(MemoryStore::default()), Arc::new(MemoryBus::default()))
    }

    #[test]
    fn credits_read_in_the_profiles_unit() {
        let usd = Profile::load("usd-overage").unwrap();
        assert_eq!(format_credits(&usd, Micros(12_500_000)), "$12.50");
        assert_eq!(format_credits(&usd, Micros(100_000 * C)), "$100,000.00");
        let voice = Profile::load("voice-minutes").unwrap();
        assert_eq!(format_credits(&voice, Micros(100 * C)), "100 minutes");
        assert_eq!(format_credits(&voice, Micros(C)), "1 minute");
        let runs = Profile::load("org-runs").unwrap();
        assert_eq!(format_credits(&runs, Micros(1_500_000)), "1.5 credits");
    }

    #[tokio::test]
    async fn an_upgrade_from_a_plan_without_reloads_restores_the_default_maximum() {
        let c = credits("voice-minutes");
        assert_eq!(c.upsert_account("a", "free", vec![]).await.unwrap().0, 201);
        assert_eq!(c.store.load_account("a").await.unwrap().unwrap().auto_recharge.monthly_max, 0);
        assert_eq!(c.upsert_account("a", "pro", vec![]).await.unwrap().0, 200);
        assert_eq!(c.store.load_account("a").await.unwrap().unwrap().auto_recharge.monthly_max, 10);
    }

    #[tokio::test]
    async fn adjustments_are_bounded_and_never_overflow() {
        let c = credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        for amount in [0, i64::MIN, i64::MAX, MAX_ADJUSTMENT + 1, -MAX_ADJUSTMENT - 1] {
            assert_eq!(c.adjust("a", amount, "x", &format!("k{amount}")).await.unwrap_err().code(), "invalid_amount");
        }
        assert_eq!(c.adjust("a", MAX_ADJUSTMENT, "x", "max").await.unwrap().0, 201);
    }

    #[tokio::test]
    async fn a_second_instance_with_a_stale_cache_never_overdraws() {
        let store = Arc::new(MemoryStore::default());
        let bus = Arc::new(MemoryBus::default());
        let p = Profile::load("org-runs").unwrap();
        let one = Credits::new(p.clone(), store.clone(), bus.clone());
        let two = Credits::new(p, store.clone(), bus.clone());
        one.upsert_account("a", "free", vec![]).await.unwrap();
        one.debit("a", "runs", 1_000, "allowance").await.unwrap();
        one.adjust("a", C, "grant", "g").await.unwrap();
        // `two` caches the account, then `one` spends most of it.
        two.debit("a", "runs", 10, "t1").await.unwrap();
        one.debit("a", "runs", 85, "o1").await.unwrap();
        // `two` plans on its stale cache (0.9 left), the CAS refuses, the fresh state (0.05
        // left) refuses 10 runs with 402, and the balance never went negative.
        let e = two.debit("a", "runs", 10, "t2").await.unwrap_err();
        assert_eq!(e.code(), "out_of_credits");
        let a = store.load_account("a").await.unwrap().unwrap();
        assert_eq!(a.balance.0, C - 95 * 10_000);
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_event_in_the_outbox() {
        let c = credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "api_calls", 1_000, "allowance").await.unwrap();
        c.adjust("a", 6 * C, "grant", "g").await.unwrap();
        c.bus.fail.store(true, Ordering::SeqCst);
        c.debit("a", "api_calls", 2_000, "cross").await.unwrap();
        let pending = c.store.pending_outbox(10).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.detail_type.as_str()).collect::<Vec<_>>(), ["BalanceLow"]);
        c.bus.fail.store(false, Ordering::SeqCst);
        assert_eq!(crate::events::redeliver_outbox(&c.store, &c.bus, 10).await.unwrap(), 1);
        assert!(c.store.pending_outbox(10).await.unwrap().is_empty());
        assert_eq!(c.bus.published.lock().unwrap().len(), 1);
    }
}

#[cfg(test)]
mod payment_tests {
    use std::sync::Arc;

    use super::*;
    use crate::events::MemoryBus;
    use crate::money::MICROS_PER_CREDIT as C;
    use crate::store::MemoryStore;

    fn payment(id: &str, credits: i64) -> Payment {
        Payment {
            payment_id: id.into(),
            kind: EntryKind::Purchase,
            credits: Micros(credits),
            charge_cents: credits / 10_000,
            reference: "pur_1".into(),
            description: "$10.00 of credits".into(),
        }
    }

    #[tokio::test]
    async fn a_payment_credits_once_and_replays_answer_the_first_entry() {
        let c = Credits::new(
            Profile::load("usd-overage").unwrap(),
            Arc::new(MemoryStore::default()),
            Arc::new(MemoryBus::default()),
        );
        c.upsert_account("a", "free", vec![]).await.unwrap();
        let first = c.credit_payment("a", &payment("pi_1", 10 * C)).await.unwrap();
        assert_eq!(first.0, 201);
        assert_eq!(c.credit_payment("a", &payment("pi_1", 10 * C)).await.unwrap(), first);
        assert_eq!(c.credit_payment("a", &payment("pi_1", 11 * C)).await.unwrap_err().code(), "idempotency_conflict");
        c.credit_payment("a", &payment("pi_2", 5 * C)).await.unwrap();
        let a = c.store.load_account("a").await.unwrap().unwrap();
        assert_eq!((a.balance.0, a.lifetime_added.0), (15 * C, 15 * C));
        let added: Vec<_> =
            c.bus.published.lock().unwrap().iter().filter(|e| e.detail_type == "CreditsAdded").cloned().collect();
        assert_eq!(added.len(), 2, "one CreditsAdded per payment");
        assert_eq!(c.credit_payment("a", &payment("pi_3", 0)).await.unwrap_err().code(), "invalid_amount");
    }
}
