//! Domain events to the EventBridge bus. Events are first written to the outbox inside the
//! transaction that caused them (`store::Commit::outbox`), then published here, then cleared.
//! An entry PutEvents rejects is retried, and if it still fails it stays in the outbox:
//! nothing is silently dropped. The next successful publication sends along what is left
//! (`redeliver_shard`), as will the scheduled sweep (`drain_outbox`).

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ids::{PurchaseId, RechargeId};
use crate::ledger::{new_id, EntryKind};
use crate::purchases::{Charge, PurchaseStatus};
use crate::store::{Store, StoreError};

/// The `source` of every event topup puts on its bus.
pub const SOURCE: &str = "topup";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{} event(s) not published: {reason}", failed.len())]
pub struct PublishError {
    pub failed: Vec<DomainEvent>,
    pub reason: String,
}

pub trait EventBus: Send + Sync {
    /// Publishes all of `events`; on error, names those that did not go out.
    fn publish(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// An event of one account, as the outbox keeps it and the bus carries it. `id` makes
/// handlers idempotent downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainEvent {
    pub id: String,
    pub account_id: String,
    pub created_at: i64,
    /// What happened: stored as `detail_type` and `detail`.
    #[serde(flatten)]
    pub event: Event,
}

impl DomainEvent {
    /// A new event with a fresh id (consumers dedupe by it).
    pub fn new(account_id: &str, created_at: i64, event: Event) -> DomainEvent {
        DomainEvent { id: new_id("evt"), account_id: account_id.to_string(), created_at, event }
    }

    pub fn detail_type(&self) -> &'static str {
        self.event.detail_type()
    }
}

/// `PaymentDisputed` and `DisputeClosed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeMoved {
    pub dispute_id: String,
    pub payment_id: String,
    /// `open`, `won` or `lost`.
    pub status: String,
    /// What the dispute took back (micro-credits); returned when it is won.
    pub taken: i64,
    /// The disputed amount of money (minor units).
    pub disputed: Charge,
    pub balance: i64,
}

/// Every event topup puts on its bus, with its detail typed. `DomainEvent::new` serialises
/// one into the outbox; consumers read one back with `Event::read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "detail_type", content = "detail")]
pub enum Event {
    /// The balance crossed into low (the profile's comparison with the threshold).
    BalanceLow(BalanceCrossed),
    /// The balance reached zero.
    BalanceDepleted(BalanceCrossed),
    /// A payment was credited.
    CreditsAdded(CreditsAdded),
    AutoRechargeSucceeded(RechargeSucceeded),
    AutoRechargeFailed(RechargeFailed),
    AutoRechargePaused(RechargePaused),
    /// Checkout completed; the payment settles later.
    PurchaseProcessing(PurchaseMoved),
    /// The purchase's payment failed.
    PurchaseFailed(PurchaseMoved),
    /// A payment was disputed (a chargeback): its credits were taken back.
    PaymentDisputed(DisputeMoved),
    /// A dispute closed: won (what it took is returned) or lost.
    DisputeClosed(DisputeMoved),
    /// A grant's remaining credits expired (rules §15).
    GrantExpired(GrantExpired),
    /// The balance fell below one of the account's alert thresholds (rules §15).
    BalanceAlert(BalanceAlert),
    /// A refund of a credited payment took back its share of the credits (what it could).
    RefundCreated(RefundMoved),
    /// An entity's month reached 80 % or 100 % of its limit (rules §17).
    EntityBudgetAlert(EntityBudgetAlert),
}

/// `EntityBudgetAlert`: which entity, the level reached (80 or 100), its month's spend (holds
/// included) and its limit, and the account's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityBudgetAlert {
    pub entity: String,
    pub percent: u8,
    pub spent: i64,
    pub monthly_limit: i64,
    pub balance: i64,
}

/// `RefundCreated`: the payment, Stripe's running refunded total, and the credits it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundMoved {
    pub payment_id: String,
    /// Money refunded so far on the charge, and the charge (minor units).
    pub amount_refunded: i64,
    pub charge_amount: i64,
    /// Credits taken back by this refund, and those not taken (already used or reserved).
    pub taken: i64,
    pub forgiven: i64,
    pub balance: i64,
}

/// `BalanceAlert`: the threshold crossed from at-or-above to below, and the balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceAlert {
    pub threshold: i64,
    pub balance: i64,
    pub previous_balance: i64,
    pub cause: String,
    pub version: u64,
}

/// `GrantExpired`: which grant, what left with it, when it was due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantExpired {
    pub grant_id: String,
    pub expired: i64,
    pub expires_at: String,
    pub balance: i64,
}

impl Event {
    /// The EventBridge detail type.
    pub fn detail_type(&self) -> &'static str {
        match self {
            Event::BalanceLow(_) => "BalanceLow",
            Event::BalanceDepleted(_) => "BalanceDepleted",
            Event::CreditsAdded(_) => "CreditsAdded",
            Event::AutoRechargeSucceeded(_) => "AutoRechargeSucceeded",
            Event::AutoRechargeFailed(_) => "AutoRechargeFailed",
            Event::AutoRechargePaused(_) => "AutoRechargePaused",
            Event::PurchaseProcessing(_) => "PurchaseProcessing",
            Event::PurchaseFailed(_) => "PurchaseFailed",
            Event::PaymentDisputed(_) => "PaymentDisputed",
            Event::DisputeClosed(_) => "DisputeClosed",
            Event::GrantExpired(_) => "GrantExpired",
            Event::BalanceAlert(_) => "BalanceAlert",
            Event::RefundCreated(_) => "RefundCreated",
            Event::EntityBudgetAlert(_) => "EntityBudgetAlert",
        }
    }

    /// Reads a delivered event back: `None` for a detail type we do not publish, an error for
    /// a detail that does not read as its type.
    pub fn read(detail_type: &str, detail: &Value) -> Option<Result<Event, serde_json::Error>> {
        const OURS: [&str; 14] = [
            "BalanceLow",
            "BalanceDepleted",
            "CreditsAdded",
            "AutoRechargeSucceeded",
            "AutoRechargeFailed",
            "AutoRechargePaused",
            "PurchaseProcessing",
            "PurchaseFailed",
            "PaymentDisputed",
            "DisputeClosed",
            "GrantExpired",
            "BalanceAlert",
            "RefundCreated",
            "EntityBudgetAlert",
        ];
        OURS.contains(&detail_type)
            .then(|| serde_json::from_value(json!({"detail_type": detail_type, "detail": detail})))
    }

    /// The balance after the event, which every event carries.
    pub fn balance(&self) -> i64 {
        match self {
            Event::BalanceLow(d) | Event::BalanceDepleted(d) => d.balance,
            Event::CreditsAdded(d) => d.balance,
            Event::AutoRechargeSucceeded(d) => d.balance,
            Event::AutoRechargeFailed(d) => d.balance,
            Event::AutoRechargePaused(d) => d.balance,
            Event::PurchaseProcessing(d) | Event::PurchaseFailed(d) => d.balance,
            Event::PaymentDisputed(d) | Event::DisputeClosed(d) => d.balance,
            Event::GrantExpired(d) => d.balance,
            Event::BalanceAlert(d) => d.balance,
            Event::RefundCreated(d) => d.balance,
            Event::EntityBudgetAlert(d) => d.balance,
        }
    }

    /// The event's `detail` as it is put on the bus (before the envelope fields).
    pub fn detail(&self) -> Value {
        serde_json::to_value(self).map(|mut v| v["detail"].take()).unwrap_or(Value::Null)
    }
}

/// `BalanceLow` and `BalanceDepleted`: the change that crossed, from what to what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceCrossed {
    pub balance: i64,
    pub previous_balance: i64,
    pub threshold: i64,
    pub plan: String,
    pub auto_recharge_enabled: bool,
    /// What changed the balance: `usage`, `settle`, `refund`, `adjustment`, ...
    pub cause: String,
    pub version: u64,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsAdded {
    pub kind: EntryKind,
    /// seed 000: "We'll email you when it completes" — only payments that went through
    /// `processing` are announced to the customer.
    pub settled_after_processing: bool,
    pub payment_id: String,
    /// The purchase or recharge id.
    pub reference: String,
    pub credits: i64,
    pub charge: Charge,
    pub balance: i64,
    pub transaction_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeSucceeded {
    pub recharge_id: RechargeId,
    pub payment_id: String,
    pub credits: i64,
    pub charge: Charge,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeFailed {
    pub recharge_id: RechargeId,
    pub code: String,
    pub decline_code: Option<String>,
    pub do_not_retry: bool,
    pub message: String,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargePaused {
    pub month: String,
    pub reason: String,
    pub monthly_max: u32,
    pub monthly_spend_max: Option<i64>,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseMoved {
    pub purchase_id: PurchaseId,
    pub status: PurchaseStatus,
    pub message: Option<String>,
    pub credits: i64,
    pub charge: Charge,
    pub balance: i64,
}

/// A whole detail of one of our events: `overrides`' fields over neutral values. For sample
/// payloads, documentation and tests; an unknown type gets `overrides` alone.
pub fn sample_detail(detail_type: &str, overrides: Value) -> Value {
    let charge = json!({"amount": 0, "currency": "usd"});
    let mut d = match detail_type {
        "BalanceLow" | "BalanceDepleted" => json!({"balance": 0, "previous_balance": 0, "threshold": 0,
            "plan": "free", "auto_recharge_enabled": false, "cause": "usage", "version": 1, "kind": detail_type}),
        "AutoRechargeSucceeded" => json!({"recharge_id": "rch_1", "payment_id": "pi_1", "credits": 0,
            "charge": charge, "balance": 0}),
        "AutoRechargeFailed" => json!({"recharge_id": "rch_1", "code": "card_declined",
            "decline_code": null, "do_not_retry": false, "message": "", "balance": 0}),
        "CreditsAdded" => json!({"kind": "purchase", "settled_after_processing": false,
            "payment_id": "pi_1", "reference": "pur_1", "credits": 0, "charge": charge, "balance": 0,
            "transaction_id": "txn_1"}),
        "PurchaseFailed" | "PurchaseProcessing" => json!({"purchase_id": "pur_1", "status": "failed",
            "message": null, "credits": 0, "charge": charge, "balance": 0}),
        "AutoRechargePaused" => json!({"month": "2026-11", "reason": "monthly_cap", "monthly_max": 10,
            "monthly_spend_max": null, "balance": 0}),
        "RefundCreated" => json!({"payment_id": "pi_1", "amount_refunded": 0, "charge_amount": 0, "taken": 0,
            "forgiven": 0, "balance": 0}),
        "PaymentDisputed" | "DisputeClosed" => json!({"dispute_id": "dp_1", "payment_id": "pi_1", "status": "open",
            "taken": 0, "disputed": charge, "balance": 0}),
        _ => json!({}),
    };
    if let (Some(d), Value::Object(p)) = (d.as_object_mut(), overrides) {
        d.extend(p);
    }
    d
}

/// The EventBridge `Detail` of an event: its payload plus the id and time.
pub fn detail_json(e: &DomainEvent) -> Value {
    let mut d = e.event.detail();
    if let Some(o) = d.as_object_mut() {
        o.insert("event_id".into(), json!(e.id));
        o.insert("account_id".into(), json!(e.account_id));
        o.insert("occurred_at".into(), json!(crate::clock::rfc3339(e.created_at)));
        o.insert("occurred_ms".into(), json!(e.created_at));
    }
    d
}

impl<B: EventBus> EventBus for std::sync::Arc<B> {
    fn publish(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), PublishError>> + Send {
        (**self).publish(events)
    }
}

/// Publishes `events` that a commit wrote to the outbox, then clears them. Failures leave the
/// outbox entry for redelivery; the caller's request has already succeeded.
pub async fn publish_committed<S: Store, B: EventBus>(store: &S, bus: &B, events: &[DomainEvent]) {
    if events.is_empty() {
        return;
    }
    let (published, cleared) = publish_and_clear(store, bus, events.to_vec()).await;
    let healthy = published == events.len();
    if let Err(e) = cleared {
        // The events went out; redelivery may send them again, and consumers dedupe by id.
        tracing::warn!(error = %e, "outbox not cleared after publishing");
    }
    // The bus took these: send along whatever an earlier failure left behind in the same
    // shards. This runs only when a change emitted events (rare), so ordinary debits keep their
    // single write; the sweep drains every shard.
    if healthy {
        let mut shards: Vec<u32> = events.iter().map(|e| outbox_shard(&e.id)).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            match redeliver_shard(store, bus, shard, REDELIVER_BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(redelivered = n, shard, "outbox events redelivered"),
                Err(e) => tracing::warn!(error = %e, "outbox redelivery failed"),
            }
        }
    }
}

/// How many left-behind events of a shard one successful publication sends along.
const REDELIVER_BATCH: usize = 10;

/// The outbox is spread over this many partition keys, so that many writers' events never
/// concentrate on one (rules §13).
pub const OUTBOX_SHARDS: u32 = 16;

/// The outbox shard of an event: a stable hash (FNV-1a) of its id.
pub fn outbox_shard(event_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in event_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % OUTBOX_SHARDS
}

/// Publishes up to `limit` events left in one shard of the outbox (events whose first
/// publication failed) and clears those the bus took. Consumers dedupe by `event_id`, so a
/// redelivered event is harmless. Returns how many went out.
pub async fn redeliver_shard<S: Store, B: EventBus>(
    store: &S,
    bus: &B,
    shard: u32,
    limit: usize,
) -> Result<usize, StoreError> {
    let pending = store.pending_outbox(shard, limit).await?;
    let (sent, cleared) = publish_and_clear(store, bus, pending).await;
    cleared.map(|()| sent)
}

/// Publishes outbox events and clears those the bus took: how many it took, and whether they
/// were cleared (if not, they go out again later; consumers dedupe by id). What the bus refused
/// stays, logged with its id.
async fn publish_and_clear<S: Store, B: EventBus>(
    store: &S,
    bus: &B,
    events: Vec<DomainEvent>,
) -> (usize, Result<(), StoreError>) {
    if events.is_empty() {
        return (0, Ok(()));
    }
    let sent: Vec<DomainEvent> = match bus.publish(&events).await {
        Ok(()) => events,
        Err(err) => {
            for e in &err.failed {
                tracing::error!(event_id = %e.id, account_id = %e.account_id, detail_type = e.detail_type(), reason = %err.reason, "event left in the outbox for redelivery");
            }
            events.into_iter().filter(|e| !err.failed.iter().any(|f| f.id == e.id)).collect()
        }
    };
    (sent.len(), store.clear_outbox(&sent).await)
}

/// Up to `per_shard` undelivered events of every shard, oldest first in each (for checks and
/// operators; the sweep drains with `drain_outbox`).
pub async fn pending_events<S: Store>(store: &S, per_shard: usize) -> Result<Vec<DomainEvent>, StoreError> {
    let mut all = Vec::new();
    for shard in 0..OUTBOX_SHARDS {
        all.extend(store.pending_outbox(shard, per_shard).await?);
    }
    all.sort_by_key(|e| e.created_at);
    Ok(all)
}

/// What draining the outbox did: events delivered, events still there (the bus refused them),
/// and the age of the oldest event it found (what the outbox-age alarm watches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxDrain {
    pub delivered: usize,
    pub left: usize,
    pub oldest_age_ms: i64,
}

/// Events read from a shard per request while draining.
const DRAIN_PAGE: usize = 100;

/// Delivers everything in the outbox, shard by shard, page by page, until each shard is empty
/// or the bus refuses (what it refused stays for the next run). Stops early only at
/// `deadline`, so a run never dies mid-page.
pub async fn drain_outbox<S: Store, B: EventBus>(
    store: &S,
    bus: &B,
    now_ms: i64,
    deadline: Option<std::time::Instant>,
) -> Result<OutboxDrain, StoreError> {
    let mut drain = OutboxDrain::default();
    for shard in 0..OUTBOX_SHARDS {
        loop {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(drain);
            }
            let page = store.pending_outbox(shard, DRAIN_PAGE).await?;
            if page.is_empty() {
                break;
            }
            let found = page.len();
            if let Some(oldest) = page.iter().map(|e| e.created_at).min() {
                drain.oldest_age_ms = drain.oldest_age_ms.max(now_ms - oldest);
            }
            let (sent, cleared) = publish_and_clear(store, bus, page).await;
            cleared?;
            drain.delivered += sent;
            if sent < found {
                // The bus is refusing: what is left waits for the next run.
                drain.left += found - sent;
                break;
            }
        }
    }
    Ok(drain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_stored_as_its_detail_type_and_detail_and_reads_back() {
        let detail = sample_detail("AutoRechargeFailed", json!({"message": "Declined.", "balance": 7}));
        let event = Event::read("AutoRechargeFailed", &detail).expect("ours").expect("reads");
        let record = DomainEvent::new("acme", 1, event.clone());
        let stored = serde_json::to_value(&record).expect("serialises");
        assert_eq!(stored["detail_type"], "AutoRechargeFailed");
        assert_eq!(stored["detail"]["message"], "Declined.");
        assert_eq!(serde_json::from_value::<DomainEvent>(stored).expect("reads back"), record);
        let bus = detail_json(&record);
        assert_eq!((bus["event_id"].as_str(), bus["balance"].as_i64()), (Some(record.id.as_str()), Some(7)));
        assert_eq!(Event::read("AutoRechargeFailed", &bus).expect("ours").expect("reads"), event);
    }
}
