//! Fault injection (rules §10): seeded random schedules of debits, holds, purchases,
//! webhooks (duplicated, reordered, delayed), recharges, sweeps and plan changes against moto
//! and localstripe, through the functions' own handlers, with a failure injected before each
//! step. After every step the invariants are checked, with reconciliation among them; after the
//! last, everything still on its way is delivered and the books must agree exactly.
//!
//! Faults (one armed per step, firing at a random call of the step):
//! - `store-before` / `stripe-before` / `bus-before`: the call fails and does nothing (the
//!   store, Stripe or EventBridge is down);
//! - `store-after` / `stripe-after` / `bus-after`: the call takes effect and its answer is lost
//!   — the function dies right after it (a crash), so nothing it would have done next happens;
//! - lost and duplicated events: a webhook or `BalanceLow` delivered twice, concurrently to two
//!   instances, out of order, much later, or (for bus events) never.
//!
//! `TOPUP_FAULT_SCHEDULES` (default 200) schedules of `TOPUP_FAULT_STEPS` (default 14) steps,
//! seeds `TOPUP_FAULT_BASE` (default 20261122) onwards, `TOPUP_FAULT_PARALLEL` (default 4) at
//! a time; `TOPUP_FAULT_SEED=N` replays one (with the same `TOPUP_FAULT_STEPS`).
//! A failure prints the seed, the steps so far and the command that replays it.
//! `./scripts/faults` runs this suite alone with its own emulators.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use lambda_http::Request;
use serde_json::{json, Value};
use topup::account::{Account, RechargeRecord};
use topup::adapters::dynamo::DynamoStore;
use topup::adapters::eventbridge::EventBridgeBus;
use topup::adapters::stripe::StripePayments;
use topup::engine::Credits;
use topup::events::DomainEvent;
use topup::events::{EventBus, PublishError};
use topup::ledger::{HoldRecord, IdemRecord, LedgerEntry};
use topup::money::Micros;
use topup::payments::{
    Card, CardSetup, CardSetupRequest, ChargeOutcome, CheckoutRequest, CheckoutSession, NewCustomer, OffSessionCharge,
    PaymentHistory, Payments, PaymentsUnavailable, Purchases,
};
use topup::profile::Trigger;
use topup::purchases::PurchaseRecord;
use topup::reconcile::Severity;
use topup::secret::Secret;
use topup::store::{
    Accounts, Commit, CommitError, Deliveries, DeliveryRecord, Listings, Outbox, PaymentRecords, PurchaseWrite, RateCounts,
    StoreError,
};
use topup_tests::*;

/// The entity a usage key's debits name, if any: fixed by the key, so a replay names the same.
fn entity_of(key: &str) -> Option<&'static str> {
    match key.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 3 {
        0 => Some("member-a"),
        1 => Some("member-b"),
        _ => None,
    }
}

// ---- a seeded generator (splitmix64): the same seed, the same schedule ----------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

// ---- injected failures ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dep {
    Store,
    Stripe,
    Bus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// The call fails and does nothing.
    Before,
    /// The call takes effect; its answer is lost and the caller stops there.
    After,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    dep: Dep,
    when: When,
    /// Fires on this call (0-based) of `dep` during the step.
    at_call: u32,
}

#[derive(Default)]
struct Armed(Mutex<Option<(Fault, u32, bool)>>);

impl Armed {
    fn arm(&self, f: Option<Fault>) {
        if let Ok(mut a) = self.0.lock() {
            *a = f.map(|f| (f, 0, false));
        }
    }
    /// Whether the armed fault fired during the step; disarms.
    fn disarm(&self) -> bool {
        self.0.lock().ok().and_then(|mut a| a.take()).is_some_and(|(_, _, fired)| fired)
    }
    fn check(&self, dep: Dep) -> Option<When> {
        let mut a = self.0.lock().ok()?;
        let (f, seen, fired) = a.as_mut()?;
        if f.dep != dep || *fired {
            return None;
        }
        if *seen == f.at_call {
            *fired = true;
            return Some(f.when);
        }
        *seen += 1;
        None
    }
}

/// Runs `$call` through the armed fault of `$dep`: `$err` instead of it, or after it.
macro_rules! gated {
    ($armed:expr, $dep:expr, $err:expr, $call:expr) => {{
        match $armed.check($dep) {
            Some(When::Before) => Err($err),
            Some(When::After) => {
                let _ = $call.await;
                Err($err)
            }
            None => $call.await,
        }
    }};
}

fn store_down() -> StoreError {
    StoreError::Unavailable("injected: store unavailable".into())
}

struct FaultyStore {
    inner: DynamoStore,
    armed: Arc<Armed>,
}

impl Accounts for FaultyStore {
    async fn load_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_account(id))
    }
    async fn commit(&self, c: Commit) -> Result<(), CommitError> {
        gated!(self.armed, Dep::Store, CommitError::Store(store_down()), self.inner.commit(c))
    }
    async fn commit_all(&self, cs: Vec<Commit>) -> Result<(), CommitError> {
        gated!(self.armed, Dep::Store, CommitError::Store(store_down()), self.inner.commit_all(cs))
    }
    async fn load_accounts(&self, ids: &[String]) -> Result<Vec<(String, Result<Account, StoreError>)>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_accounts(ids))
    }
    async fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<(Vec<LedgerEntry>, bool), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.ledger_page(account_id, limit, before_seq))
    }
    async fn load_hold(&self, account_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_hold(account_id, hold_id))
    }
    async fn load_idempotency(&self, account_id: &str, scope_key: &str) -> Result<Option<IdemRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_idempotency(account_id, scope_key))
    }
    async fn load_entity(&self, account_id: &str, entity: &str) -> Result<Option<topup::entities::Entity>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_entity(account_id, entity))
    }
    async fn entities(&self, account_id: &str) -> Result<Vec<topup::entities::Entity>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.entities(account_id))
    }
}

impl PaymentRecords for FaultyStore {
    async fn put_purchase(&self, w: PurchaseWrite) -> Result<(), CommitError> {
        gated!(self.armed, Dep::Store, CommitError::Store(store_down()), self.inner.put_purchase(w))
    }
    async fn load_purchase(&self, account_id: &str, purchase_id: &str) -> Result<Option<PurchaseRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_purchase(account_id, purchase_id))
    }
    async fn load_recharge(&self, account_id: &str, recharge_id: &str) -> Result<Option<RechargeRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_recharge(account_id, recharge_id))
    }
    async fn payment_account(&self, pi: &str) -> Result<Option<String>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.payment_account(pi))
    }
    async fn payment_claims(&self, account_id: &str) -> Result<Vec<IdemRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.payment_claims(account_id))
    }
}

impl Deliveries for FaultyStore {
    async fn claim_delivery(&self, r: &DeliveryRecord) -> Result<bool, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.claim_delivery(r))
    }
    async fn finish_delivery(&self, r: &DeliveryRecord) -> Result<(), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.finish_delivery(r))
    }
    async fn recent_deliveries(&self, account_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.recent_deliveries(account_id, limit))
    }
}

impl RateCounts for FaultyStore {
    async fn count_start(
        &self,
        account_id: &str,
        what: &str,
        window_start_ms: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.count_start(account_id, what, window_start_ms, limit))
    }
}

impl Outbox for FaultyStore {
    async fn clear_outbox(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.clear_outbox(events))
    }
    async fn pending_outbox(&self, shard: u32, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.pending_outbox(shard, limit))
    }
}

impl topup::audit::AuditLog for FaultyStore {
    async fn audit_head(&self, chain: &str) -> Result<Option<topup::audit::AuditHead>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.audit_head(chain))
    }
    async fn append_audit(
        &self,
        r: &topup::audit::AuditRecord,
        expected: Option<&topup::audit::AuditHead>,
    ) -> Result<bool, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.append_audit(r, expected))
    }
    async fn audit_page(
        &self,
        q: &topup::audit::AuditQuery,
        limit: usize,
        after: Option<&topup::audit::Position>,
    ) -> Result<topup::audit::AuditPage, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.audit_page(q, limit, after))
    }
    async fn audit_chain(&self, chain: &str, after: u64, limit: usize) -> Result<Vec<topup::audit::AuditRecord>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.audit_chain(chain, after, limit))
    }
}

impl Listings for FaultyStore {
    async fn accounts_for_sweep(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.accounts_for_sweep(limit, after))
    }
    async fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
        segment: topup::store::Segment,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.account_ids(limit, after, segment))
    }
    async fn accounts_expiring(&self, by_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.accounts_expiring(by_ms, limit))
    }
    async fn ended_grants(&self, account_id: &str) -> Result<Vec<topup::grants::Grant>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.ended_grants(account_id))
    }
    async fn find_accounts(&self, by: &topup::account::AccountLookup) -> Result<Vec<String>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.find_accounts(by))
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.load_checkpoint(name))
    }
    async fn save_checkpoint(&self, name: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.save_checkpoint(name, value))
    }
}

/// Receipts (rules §20) behind the same faults as the rest of the store.
impl topup::receipts::ReceiptStore for FaultyStore {
    async fn add_receipt(&self, r: &topup::receipts::Receipt) -> Result<bool, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.add_receipt(r))
    }
    async fn put_receipt(&self, r: &topup::receipts::Receipt) -> Result<bool, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.put_receipt(r))
    }
    async fn link_payment(
        &self,
        account_id: &str,
        pi: &str,
        key: &topup::receipts::ReceiptKey,
    ) -> Result<(), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.link_payment(account_id, pi, key))
    }
    async fn receipt(
        &self,
        account_id: &str,
        key: &topup::receipts::ReceiptKey,
    ) -> Result<Option<topup::receipts::Receipt>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.receipt(account_id, key))
    }
    async fn receipt_of_payment(
        &self,
        account_id: &str,
        pi: &str,
    ) -> Result<Option<topup::receipts::Receipt>, StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.receipt_of_payment(account_id, pi))
    }
    async fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&topup::receipts::ReceiptKey>,
    ) -> Result<(Vec<topup::receipts::Receipt>, bool), StoreError> {
        gated!(self.armed, Dep::Store, store_down(), self.inner.receipts(account_id, limit, before))
    }
}

fn stripe_down() -> PaymentsUnavailable {
    PaymentsUnavailable("injected: stripe unavailable".into())
}

struct FaultyStripe {
    inner: StripePayments,
    armed: Arc<Armed>,
}

impl Payments for FaultyStripe {
    async fn create_customer(&self, c: &NewCustomer) -> Result<String, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.create_customer(c))
    }
    async fn charge_off_session(&self, c: &OffSessionCharge) -> Result<ChargeOutcome, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.charge_off_session(c))
    }
    async fn cancel_payment(&self, pi: &str, key: &str) -> Result<topup::payments::CancelOutcome, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.cancel_payment(pi, key))
    }
}

impl Purchases for FaultyStripe {
    async fn create_checkout(&self, r: &CheckoutRequest) -> Result<CheckoutSession, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.create_checkout(r))
    }
    async fn create_card_setup(&self, r: &CardSetupRequest) -> Result<CardSetup, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.create_card_setup(r))
    }
    async fn card(&self, pm: &str) -> Result<Option<Card>, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.card(pm))
    }
    async fn detach(&self, pm: &str) -> Result<(), PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.detach(pm))
    }
    async fn payment_metadata(&self, pi: &str) -> Result<HashMap<String, String>, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.payment_metadata(pi))
    }
    async fn refund(&self, r: &topup::payments::RefundRequest) -> Result<topup::payments::RefundOutcome, PaymentsUnavailable> {
        gated!(self.armed, Dep::Stripe, stripe_down(), self.inner.refund(r))
    }
}

/// The real bus, and a copy of what went out for the schedule to deliver (or lose).
struct FaultyBus {
    inner: EventBridgeBus,
    armed: Arc<Armed>,
    sent: Arc<Mutex<Vec<DomainEvent>>>,
}

impl FaultyBus {
    async fn send(&self, events: &[DomainEvent]) -> Result<(), PublishError> {
        self.inner.publish(events).await?;
        if let Ok(mut s) = self.sent.lock() {
            s.extend(events.iter().cloned());
        }
        Ok(())
    }
}

impl EventBus for FaultyBus {
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), PublishError> {
        let down = PublishError { failed: events.to_vec(), reason: "injected: bus unavailable".into() };
        gated!(self.armed, Dep::Bus, down, self.send(events))
    }
}

type Faulty = Credits<FaultyStore, FaultyBus>;

// ---- one schedule ---------------------------------------------------------------------------

struct Schedule {
    seed: u64,
    rng: Rng,
    w: World,
    id: String,
    consumable: &'static str,
    trigger: Trigger,
    threshold: i64,
    monthly_max: i64,
    declining_card: bool,
    /// The account's Stripe customer (made once, at the start).
    customer: String,
    /// Two instances of every function over the same table, as Lambda runs them.
    instances: [Faulty; 2],
    stripe: FaultyStripe,
    plain_stripe: StripePayments,
    armed: Arc<Armed>,
    sent: Arc<Mutex<Vec<DomainEvent>>>,
    secret: Secret,
    /// Stripe events not yet answered 2xx (Stripe retries them), in the order they happened.
    webhooks: Vec<Value>,
    /// `BalanceLow` events on their way to auto-recharge.
    lows: Vec<Value>,
    bus_seen: usize,
    /// PaymentIntents whose events have been queued.
    announced: HashSet<String>,
    purchase_retries: Vec<(String, i64)>,
    open_sessions: Vec<String>,
    delayed_sessions: Vec<String>,
    open_holds: Vec<String>,
    /// Disputes opened at Stripe and not closed yet, and every dispute ever opened.
    open_disputes: Vec<String>,
    disputes: Vec<String>,
    /// Idempotency keys and their first 2xx answer (replays must give it back).
    answers: BTreeMap<String, Value>,
    usage_keys: Vec<(String, i64)>,
    steps: Vec<String>,
    /// How many steps this schedule runs (part of what replays it).
    length: u64,
    stats: Stats,
}

/// What the schedules did, summed: the suite's coverage, printed at the end.
#[derive(Default, Debug, Clone)]
struct Stats {
    faults_fired: u64,
    webhook_deliveries: u64,
    concurrent_deliveries: u64,
    low_balance_lost: u64,
    recharges_charged: u64,
    recharges_declined: u64,
    purchases_credited: u64,
    refunds: u64,
    disputes: u64,
    late_successes: u64,
    /// Events of batches answered (applied, replayed or refused one by one).
    batch_events: u64,
    /// Schedules whose account ran with lanes, and the leases, returns and lane changes
    /// (promotions, demotions) they made (rules §14).
    with_lanes: u64,
    leases: u64,
    returns: u64,
    lane_changes: u64,
    /// Debits (single or in batches) that a lane applied.
    lane_debits: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.faults_fired += o.faults_fired;
        self.webhook_deliveries += o.webhook_deliveries;
        self.concurrent_deliveries += o.concurrent_deliveries;
        self.low_balance_lost += o.low_balance_lost;
        self.recharges_charged += o.recharges_charged;
        self.recharges_declined += o.recharges_declined;
        self.purchases_credited += o.purchases_credited;
        self.refunds += o.refunds;
        self.disputes += o.disputes;
        self.late_successes += o.late_successes;
        self.batch_events += o.batch_events;
        self.with_lanes += o.with_lanes;
        self.leases += o.leases;
        self.returns += o.returns;
        self.lane_changes += o.lane_changes;
        self.lane_debits += o.lane_debits;
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Schedule {
    async fn new(seed: u64) -> Schedule {
        let mut rng = Rng(seed);
        let (profile, consumable) = if rng.chance(50) { ("usd-overage", "api_calls") } else { ("org-runs", "runs") };
        let w = World::new(profile).await;
        let trigger = w.config.profile.low_balance.trigger;
        let id = unique(&format!("fault{seed}"));
        let plan = if rng.chance(50) { "free" } else { "pro" };
        w.account(&id, plan).await;
        w.grant(&id, rng.range(1, 12) * C).await;
        let declining_card = rng.chance(20);
        let card = if declining_card { "4000000000000341" } else { "4242424242424242" };
        w.save_stripe_card(&id, card).await;
        let customer = w.credits.account(&id).await.ok().and_then(|a| a.stripe_customer_id).expect("a customer");
        let threshold = rng.range(1, 5) * C;
        // Sometimes equal to the threshold: a recharge from zero then leaves the balance low.
        let amount = (threshold + rng.range(0, 15) * C).max(5 * C);
        let monthly_max = rng.range(1, 3);
        w.set_auto_recharge(
            &id,
            json!({"enabled": true, "threshold": threshold, "amount": amount, "monthly_max": monthly_max}),
        )
        .await;
        // Half the accounts run with lanes (rules §14): their allowance used up first, so their
        // debits go to lanes, leasing, refilling and draining back as the balance moves.
        let lanes = if rng.chance(50) { rng.range(2, 4) } else { 1 };
        if lanes > 1 {
            let left = w.included(&id, consumable).await;
            if left > 0 {
                let (s, b) = w.usage(&id, consumable, left).await;
                assert_eq!(s, 200, "allowance: {b}");
            }
            let (s, b) = w.api(put(&format!("/v1/accounts/{id}/lanes"), &service(), json!({"lanes": lanes}))).await;
            assert_eq!(s, 200, "lanes: {b}");
            // Room above the floor, so lanes lease and refill before the balance drains.
            w.grant(&id, rng.range(5, 30) * C).await;
        }
        // Budgets (rules §17): a third of the debits name `member-a`, whose month is limited, and a
        // third `member-b`, which has no limit (by the key, so a replay names the same one).
        let member_limit = rng.range(1, 6) * C;
        let (s, b) =
            w.api(put(&format!("/v1/accounts/{id}/entities/member-a"), &service(), json!({"monthly_limit": member_limit}))).await;
        assert_eq!(s, 200, "entity: {b}");
        let armed = Arc::new(Armed::default());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let instance = || {
            Credits::new(
                w.config.profile.clone(),
                FaultyStore { inner: DynamoStore::new(w.dynamo.clone(), w.config.table.clone()), armed: armed.clone() },
                FaultyBus {
                    inner: EventBridgeBus::new(w.events.clone(), w.config.event_bus.clone()),
                    armed: armed.clone(),
                    sent: sent.clone(),
                },
            )
        };
        let instances = [instance(), instance()];
        let secret = topup::secret::Secret::new(WEBHOOK_SECRET);
        Schedule {
            seed,
            rng,
            id,
            consumable,
            trigger,
            threshold,
            monthly_max,
            declining_card,
            customer,
            instances,
            stripe: FaultyStripe { inner: stripe_payments(), armed: armed.clone() },
            plain_stripe: stripe_payments(),
            armed,
            sent,
            secret,
            webhooks: Vec::new(),
            lows: Vec::new(),
            bus_seen: 0,
            announced: HashSet::new(),
            purchase_retries: Vec::new(),
            open_sessions: Vec::new(),
            delayed_sessions: Vec::new(),
            open_holds: Vec::new(),
            open_disputes: Vec::new(),
            disputes: Vec::new(),
            answers: BTreeMap::new(),
            usage_keys: Vec::new(),
            steps: Vec::new(),
            length: 0,
            stats: Stats { with_lanes: u64::from(lanes > 1), ..Stats::default() },
            w,
        }
    }

    fn fail(&self, why: String) -> ! {
        panic!(
            "fault schedule {seed} broke an invariant: {why}\n  steps: {steps}\n  replay: \
             TOPUP_FAULT_SEED={seed} TOPUP_FAULT_STEPS={n} ./scripts/faults",
            seed = self.seed,
            steps = self.steps.join(" → "),
            n = self.length
        )
    }

    fn path(&self, tail: &str) -> String {
        format!("/v1/accounts/{}{tail}", self.id)
    }

    async fn run(mut self, steps: u64) -> Stats {
        self.length = steps;
        for _ in 0..steps {
            let fault = if self.rng.chance(70) {
                let dep = [Dep::Store, Dep::Store, Dep::Stripe, Dep::Bus][self.rng.below(4)];
                let when = if self.rng.chance(50) { When::Before } else { When::After };
                Some(Fault { dep, when, at_call: self.rng.below(3) as u32 })
            } else {
                None
            };
            let weights = self.weights();
            let total: u32 = weights.iter().map(|(_, w)| w).sum();
            let mut roll = self.rng.below(total as usize) as u32;
            let step = weights
                .iter()
                .find(|(_, w)| {
                    if roll < *w {
                        true
                    } else {
                        roll -= w;
                        false
                    }
                })
                .map_or("debit", |s| s.0);
            self.armed.arm(fault);
            let statuses = self.step(step).await;
            let fired = self.armed.disarm();
            self.stats.faults_fired += u64::from(fired);
            self.steps.push(match (fault, fired) {
                (Some(f), true) => format!("{step}[{:?}-{:?}@{}]", f.dep, f.when, f.at_call).to_lowercase(),
                _ => step.to_string(),
            });
            if !fired && statuses.contains(&500) {
                self.fail(format!("{step} answered 500 with no failure injected: {statuses:?}"));
            }
            let payments = self.collect_events().await;
            self.check(false, payments).await;
        }
        self.quiesce().await;
        let payments = self.stripe_payments().await;
        self.check(true, payments.clone()).await;
        let recharge = |p: &&topup::payments::PaymentRecord| p.metadata.contains_key("topup_recharge_id");
        self.stats.recharges_charged =
            payments.iter().filter(recharge).filter(|p| p.status == "succeeded").count() as u64;
        self.stats.recharges_declined =
            payments.iter().filter(recharge).filter(|p| p.status != "succeeded").count() as u64;
        self.stats.purchases_credited =
            self.w.ledger(&self.id).await.iter().filter(|e| e.kind == topup::ledger::EntryKind::Purchase).count()
                as u64;
        self.stats.refunds = payments.iter().filter(|p| p.amount_refunded > 0).count() as u64;
        let own = self.w.ledger(&self.id).await;
        let kind = |k: topup::ledger::EntryKind| own.iter().filter(|e| e.kind == k).count() as u64;
        self.stats.leases = kind(topup::ledger::EntryKind::LeaseOut);
        self.stats.returns = kind(topup::ledger::EntryKind::LeaseReturn);
        let merged = self.w.account_ledger(&self.id).await;
        self.stats.lane_debits = merged
            .iter()
            .filter(|e| e.kind == topup::ledger::EntryKind::Consumption && e.account_id.contains('~'))
            .count() as u64;
        self.stats
    }

    /// How likely each step is next: only steps that can do something now.
    fn weights(&self) -> Vec<(&'static str, u32)> {
        let on = |cond: bool, w: u32| if cond { w } else { 0 };
        vec![
            ("debit", 20),
            ("debits-at-once", 5),
            ("batch", 8),
            ("grant-expiring", 4),
            ("void", 2),
            ("expiry-run", 3),
            ("replay-debit", on(!self.usage_keys.is_empty(), 5)),
            ("hold", 5),
            ("settle", on(!self.open_holds.is_empty(), 6)),
            ("purchase", 7),
            ("pay", on(!self.open_sessions.is_empty(), 12)),
            ("bank-debit-settles", on(!self.delayed_sessions.is_empty(), 6)),
            ("expire", on(!self.open_sessions.is_empty(), 2)),
            ("refund", on(self.stats.webhook_deliveries > 0, 3)),
            ("deliver-webhook", on(!self.webhooks.is_empty(), 25)),
            ("deliver-low-balance", on(!self.lows.is_empty(), 20)),
            ("sweep", 4),
            ("plan-change", 2),
            ("forged-purchase", 1),
            ("dispute", on(self.stats.webhook_deliveries > 0, 2)),
            ("recharge-recorded-failed", 3),
            ("dispute-closes", on(!self.open_disputes.is_empty(), 3)),
            ("lanes", on(self.stats.with_lanes > 0, 3)),
        ]
    }

    /// One step; the HTTP statuses it saw.
    async fn step(&mut self, step: &str) -> Vec<u16> {
        let mut statuses = Vec::new();
        match step {
            "debit" | "replay-debit" => {
                let (key, qty) = match (step, self.usage_keys.is_empty()) {
                    ("replay-debit", false) => {
                        let i = self.rng.below(self.usage_keys.len());
                        self.usage_keys[i].clone()
                    }
                    _ => (unique("u"), self.quantity()),
                };
                statuses.push(self.debit(&key, qty).await);
            }
            "debits-at-once" => {
                let reqs: Vec<(String, i64)> = (0..3).map(|_| (unique("u"), self.quantity())).collect();
                let call = |i: usize| {
                    let (k, q) = &reqs[i];
                    let mut body = json!({"consumable": self.consumable, "quantity": q, "idempotency_key": k});
                    if let Some(entity) = entity_of(k) {
                        body["entity"] = json!(entity);
                    }
                    debit::handle(&self.w.config, &self.instances[i % 2], post(&self.path("/usage"), &service(), body))
                };
                let (a, b, c) = tokio::join!(call(0), call(1), call(2));
                for ((k, q), resp) in reqs.clone().into_iter().zip([a, b, c]) {
                    let (s, b) = read(resp);
                    statuses.push(s);
                    self.remember(&k, s, &b);
                    self.usage_keys.push((k, q));
                }
            }
            "batch" => {
                // 1 to 6 events: fresh keys, replays of keys used before (now and then with
                // another quantity: 409 for that event), and a key repeated inside the batch.
                let mut events: Vec<(String, i64)> = Vec::new();
                for _ in 0..1 + self.rng.below(6) {
                    let ev = match self.rng.below(4) {
                        0 if !self.usage_keys.is_empty() => {
                            let (k, q) = self.usage_keys[self.rng.below(self.usage_keys.len())].clone();
                            if self.rng.chance(20) {
                                (k, q + 1)
                            } else {
                                (k, q)
                            }
                        }
                        1 if !events.is_empty() => events[self.rng.below(events.len())].clone(),
                        _ => (unique("b"), self.quantity()),
                    };
                    events.push(ev);
                }
                // Each key names its entity, as its single debits do (null: none).
                let body = json!({"events": events.iter().map(|(k, q)| json!({
                    "consumable": self.consumable, "quantity": q, "idempotency_key": k, "entity": entity_of(k),
                })).collect::<Vec<_>>()});
                let (s, b) = Box::pin(self.call_debit(post(&self.path("/usage/batch"), &service(), body))).await;
                statuses.push(s);
                if s == 200 {
                    let results = b["results"].as_array().cloned().unwrap_or_default();
                    if results.len() != events.len() {
                        self.fail(format!("batch of {} answered {} results: {b}", events.len(), results.len()));
                    }
                    self.stats.batch_events += results.len() as u64;
                    for ((k, q), r) in events.iter().zip(&results) {
                        let status = r["status"].as_u64().and_then(|x| u16::try_from(x).ok()).unwrap_or(0);
                        if status >= 500 || status == 400 {
                            self.fail(format!("a batch event answered {status}: {r}"));
                        }
                        // The single debit's answer for this event, to hold replays to it.
                        let single = json!({
                            "from_allowance": r["from_allowance"], "from_credits": r["from_credits"],
                            "balance": r["balance"], "transaction_id": r.get("transaction_id").cloned().unwrap_or(Value::Null),
                        });
                        self.remember(k, status, &single);
                        if !self.usage_keys.iter().any(|(uk, _)| uk == k) {
                            self.usage_keys.push((k.clone(), *q));
                        }
                    }
                }
            }
            "grant-expiring" => {
                // A promotional grant that expires within three seconds, at a random priority.
                let at = topup::clock::now_ms() + self.rng.range(1, 3_000);
                let body = json!({
                    "amount": self.rng.range(1, 3) * 1_000_000, "reason": "expiring grant",
                    "idempotency_key": unique("g"), "expires_at": topup::clock::rfc3339(at),
                    "priority": self.rng.range(0, 100),
                });
                let n = self.rng.below(2);
                let req = post(&self.path("/credits/adjustments"), &service(), body);
                statuses.push(
                    read(
                        Box::pin(credits_api::handle(&self.w.config, &self.w.webhooks, &self.instances[n], req)).await,
                    )
                    .0,
                );
            }
            "void" => {
                let n = self.rng.below(2);
                let req = get(&self.path("/credits/grants"), &service());
                let (s, b) = read(
                    Box::pin(credits_api::handle(&self.w.config, &self.w.webhooks, &self.instances[n], req)).await,
                );
                statuses.push(s);
                let ids: Vec<String> = b["grants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|g| g["status"] == "active")
                    .filter_map(|g| g["id"].as_str().map(str::to_string))
                    .collect();
                if let Some(id) = self.rng.pick(&ids).cloned() {
                    let req = post(&self.path(&format!("/credits/grants/{id}/void")), &service(), json!({}));
                    let (s, b) = read(
                        Box::pin(credits_api::handle(&self.w.config, &self.w.webhooks, &self.instances[n], req)).await,
                    );
                    statuses.push(s);
                    if s == 200 && b["status"] != "voided" && b["status"] != "used" && b["status"] != "expired" {
                        self.fail(format!("void answered {b}"));
                    }
                }
            }
            "expiry-run" => {
                let n = self.rng.below(2);
                let _ = Box::pin(self.instances[n].expire_grants(topup::clock::now_ms())).await;
            }
            "hold" => {
                let key = unique("h");
                let body = json!({"consumable": self.consumable, "quantity": self.quantity(), "idempotency_key": key});
                let req = post(&self.path("/usage/holds"), &service(), body);
                let (s, b) = self.call_debit(req).await;
                statuses.push(s);
                if let (201, Some(h)) = (s, b["hold_id"].as_str()) {
                    self.open_holds.push(h.to_string());
                }
            }
            "settle" => {
                if let Some(h) = self.rng.pick(&self.open_holds).cloned() {
                    let qty = self.quantity() / 2;
                    let req =
                        post(&self.path(&format!("/usage/holds/{h}/settle")), &service(), json!({"quantity": qty}));
                    let (s, _) = self.call_debit(req).await;
                    statuses.push(s);
                    if s < 500 {
                        self.open_holds.retain(|x| x != &h);
                    }
                }
            }
            "purchase" => {
                let (key, cents) = match self.purchase_retries.pop() {
                    Some(retry) => retry,
                    None => (unique("buy"), [500, 1000, 2500][self.rng.below(3)]),
                };
                let (s, b) = self.buy(json!({"amount": cents}), &key).await;
                statuses.push(s);
                match (s, b["checkout_session_id"].as_str()) {
                    (201, Some(cs)) => self.open_sessions.push(cs.to_string()),
                    _ => self.purchase_retries.push((key, cents)),
                }
            }
            "forged-purchase" => {
                let before = self.w.snapshot(&self.id).await;
                let forged = [json!({"amount": 1000, "credits": 999 * C}), json!({"price": 1, "amount": 1000})];
                let body = forged[self.rng.below(2)].clone();
                self.armed.arm(None);
                let (s, b) = self.buy(body, &unique("forged")).await;
                if s != 400 || self.w.snapshot(&self.id).await != before {
                    self.fail(format!("a forged purchase answered {s} {b} or changed the account (§10.8)"));
                }
            }
            "pay" => {
                if let Some(cs) = self.rng.pick(&self.open_sessions).cloned() {
                    let delayed = self.rng.chance(25);
                    let form: &[(&str, &str)] = if delayed { &[("delayed", "true")] } else { &[] };
                    let (s, paid) = local_stripe("POST", &format!("/_config/checkout/sessions/{cs}/pay"), form).await;
                    self.open_sessions.retain(|x| x != &cs);
                    if s == 200 {
                        if delayed {
                            self.delayed_sessions.push(cs);
                        }
                        // Checkout's invoice (rules §20): its `invoice.paid` is on its way too.
                        let receipt = paid["invoice"].as_str().map(str::to_string);
                        self.webhooks.push(stripe_event("checkout.session.completed", paid));
                        if let Some(id) = receipt {
                            self.webhooks.push(stripe_event("invoice.paid", invoice(&id).await));
                        }
                    }
                }
            }
            "bank-debit-settles" => {
                if let Some(cs) = self.rng.pick(&self.delayed_sessions).cloned() {
                    self.delayed_sessions.retain(|x| x != &cs);
                    let ok = self.rng.chance(70);
                    let outcome = if ok { "succeeded" } else { "failed" };
                    let path = format!("/_config/checkout/sessions/{cs}/settle");
                    let (s, _) = local_stripe("POST", &path, &[("outcome", outcome)]).await;
                    if s == 200 {
                        let kind = if ok { "async_payment_succeeded" } else { "async_payment_failed" };
                        let settled = session(&cs).await;
                        let receipt = settled["invoice"].as_str().map(str::to_string);
                        self.webhooks.push(stripe_event(&format!("checkout.session.{kind}"), settled));
                        if let Some(id) = receipt {
                            self.webhooks.push(stripe_event("invoice.paid", invoice(&id).await));
                        }
                    }
                }
            }
            "expire" => {
                if let Some(cs) = self.rng.pick(&self.open_sessions).cloned() {
                    self.open_sessions.retain(|x| x != &cs);
                    let (s, b) = local_stripe("POST", &format!("/v1/checkout/sessions/{cs}/expire"), &[]).await;
                    if s == 200 {
                        self.webhooks.push(stripe_event("checkout.session.expired", b));
                    }
                }
            }
            "refund" => {
                let paid: Vec<_> = self
                    .stripe_payments()
                    .await
                    .into_iter()
                    .filter(|p| p.status == "succeeded" && p.amount_refunded < p.amount)
                    .collect();
                if let Some(p) = self.rng.pick(&paid) {
                    let amount = self.rng.range(1, p.amount - p.amount_refunded);
                    let form = [("payment_intent", p.id.as_str()), ("amount", &amount.to_string())];
                    let (s, r) = local_stripe("POST", "/v1/refunds", &form).await;
                    if s == 200 {
                        let charge = r["charge"].as_str().unwrap_or_default();
                        let (_, c) = local_stripe("GET", &format!("/v1/charges/{charge}"), &[]).await;
                        self.webhooks.push(stripe_event("charge.refunded", c));
                    }
                }
            }
            "dispute" => {
                // The cardholder's bank disputes some or all of a paid payment (rules §12).
                let paid: Vec<_> =
                    self.stripe_payments().await.into_iter().filter(|p| p.status == "succeeded").collect();
                if let Some(p) = self.rng.pick(&paid) {
                    let (_, pi) = local_stripe("GET", &format!("/v1/payment_intents/{}", p.id), &[]).await;
                    let charge = pi["latest_charge"].as_str().or_else(|| pi["latest_charge"]["id"].as_str());
                    if let Some(charge) = charge {
                        let amount = self.rng.range(1, p.amount).to_string();
                        let path = format!("/_config/charges/{charge}/dispute");
                        let (s, d) = local_stripe("POST", &path, &[("amount", &amount)]).await;
                        if let (200, Some(id)) = (s, d["id"].as_str()) {
                            self.open_disputes.push(id.to_string());
                            self.disputes.push(id.to_string());
                            self.stats.disputes += 1;
                            self.webhooks.push(stripe_event("charge.dispute.created", d));
                        }
                    }
                }
            }
            "recharge-recorded-failed" => {
                // A claim in flight is charged, the function records it failed (the bank asked
                // the customer to authenticate), and the customer then completes it: the
                // payment succeeds after all (rules §12). Recording the failure cancels the
                // PaymentIntent first; Stripe will not (it succeeded), so the recharge is
                // credited instead, from its record, and never makes room for another charge
                // (rules §16). Its success event, delivered later, credits nothing more.
                let n = self.rng.below(2);
                if let Ok(a) = self.instances[n].account(&self.id).await {
                    let method = a.payment_method.as_ref().map(|p| p.id.clone());
                    // The claim in flight, or one made now if a recharge is due (a trigger).
                    let claim = match a.auto_recharge.in_flight.clone() {
                        Some(c) => Some(c),
                        None => match self.instances[n].claim_recharge(&self.id).await {
                            Ok(topup::recharge::RechargeDecision::Claimed(c)) => Some(c),
                            _ => None,
                        },
                    };
                    if let (Some(claim), Some(customer), Some(pm)) = (claim, a.stripe_customer_id.clone(), method) {
                        let charge = OffSessionCharge {
                            customer_id: customer,
                            payment_method_id: pm,
                            amount_cents: claim.charge_cents,
                            currency: self.w.config.profile.currency.clone(),
                            idempotency_key: self.instances[n].charge_key(&claim),
                            metadata: self.instances[n]
                                .stripe_metadata(&self.id, &[("topup_recharge_id", claim.recharge_id.as_str())]),
                        };
                        if let Ok(ChargeOutcome::Succeeded { payment_intent_id }) =
                            self.plain_stripe.charge_off_session(&charge).await
                        {
                            let failure = topup::account::RechargeError {
                                code: "authentication_required".into(),
                                decline_code: None,
                                message: "The bank asked the customer to authenticate.".into(),
                                at: 0,
                            };
                            if self.instances[n]
                                .fail_charged_recharge(
                                    &self.stripe,
                                    &self.id,
                                    &claim.recharge_id,
                                    Some(&payment_intent_id),
                                    &failure,
                                )
                                .await
                                .is_ok()
                            {
                                self.stats.late_successes += 1;
                            }
                            let (_, pi) =
                                local_stripe("GET", &format!("/v1/payment_intents/{payment_intent_id}"), &[]).await;
                            self.webhooks.push(stripe_event("payment_intent.succeeded", pi));
                        }
                    }
                }
            }
            "dispute-closes" => {
                if let Some(id) = self.rng.pick(&self.open_disputes).cloned() {
                    self.open_disputes.retain(|d| d != &id);
                    let status = if self.rng.chance(50) { "won" } else { "lost" };
                    let (s, d) =
                        local_stripe("POST", &format!("/_config/disputes/{id}/close"), &[("status", status)]).await;
                    if s == 200 {
                        self.webhooks.push(stripe_event("charge.dispute.closed", d));
                    }
                }
            }
            "deliver-webhook" => {
                if !self.webhooks.is_empty() {
                    // Any queued event: Stripe does not keep order, and retries later ones first.
                    let i = self.rng.below(self.webhooks.len());
                    let event = self.webhooks[i].clone();
                    let twice = self.rng.chance(15);
                    let mut ok = false;
                    self.stats.webhook_deliveries += 1;
                    if twice {
                        self.stats.concurrent_deliveries += 1;
                        let (a, b) = tokio::join!(self.webhook(0, &event), self.webhook(1, &event));
                        statuses.extend([a, b]);
                        ok = a < 300 || b < 300;
                    } else {
                        let n = self.rng.below(2);
                        let s = self.webhook(n, &event).await;
                        statuses.push(s);
                        ok |= s < 300;
                    }
                    // Delivered: gone, unless Stripe sends it again anyway (it may).
                    if ok && !self.rng.chance(20) {
                        self.webhooks.remove(i);
                    }
                }
            }
            "deliver-low-balance" => {
                if !self.lows.is_empty() {
                    let i = self.rng.below(self.lows.len());
                    let event = self.lows[i].clone();
                    if self.rng.chance(15) {
                        // Lost for good: the sweep must make up for it.
                        self.stats.low_balance_lost += 1;
                        self.lows.remove(i);
                    } else {
                        let ok = if self.rng.chance(40) {
                            self.stats.concurrent_deliveries += 1;
                            // Two triggers of one recharge at once.
                            let trigger = topup_tests::trigger(&event);
                            let (a, b) = tokio::join!(
                                auto_recharge::handle(&self.instances[0], &self.stripe, &trigger),
                                auto_recharge::handle(&self.instances[1], &self.stripe, &trigger)
                            );
                            a.is_ok() || b.is_ok()
                        } else {
                            let n = self.rng.below(2);
                            auto_recharge::handle(&self.instances[n], &self.stripe, &topup_tests::trigger(&event)).await.is_ok()
                        };
                        if ok && !self.rng.chance(20) {
                            self.lows.remove(i);
                        }
                    }
                }
            }
            "sweep" => {
                // No lease: every claim in flight is recovered at once, whoever holds it.
                let n = self.rng.below(2);
                let _ = self.instances[n].sweep(&self.stripe, 500, 0).await;
            }
            "plan-change" => {
                let plan = if self.rng.chance(50) { "free" } else { "pro" };
                let body = json!({"plan": plan, "billing_contacts": [{"email": "billing@example.com"}]});
                let req = put(&self.path(""), &service(), body);
                let n = self.rng.below(2);
                let (s, _) = read(credits_api::handle(&self.w.config, &self.w.webhooks, &self.instances[n], req).await);
                statuses.push(s);
            }
            "lanes" => {
                // Promotion, demotion (every lane's credits recalled) or another K, with a fault
                // anywhere in it.
                let k = self.rng.range(1, 4);
                let req = put(&self.path("/lanes"), &service(), json!({ "lanes": k }));
                let n = self.rng.below(2);
                let (s, b) = read(credits_api::handle(&self.w.config, &self.w.webhooks, &self.instances[n], req).await);
                if s == 200 && b["lanes"] != k {
                    self.fail(format!("lanes set to {k} answered {b}"));
                }
                self.stats.lane_changes += u64::from(s == 200);
                statuses.push(s);
            }
            other => self.fail(format!("unknown step {other}")),
        }
        statuses
    }

    fn quantity(&mut self) -> i64 {
        // Up to about $4 (usd-overage) or 4 credits (org-runs) beyond the allowance.
        match self.consumable {
            "runs" => self.rng.range(1, 400),
            _ => self.rng.range(1, 4_000),
        }
    }

    fn remember(&mut self, key: &str, status: u16, body: &Value) {
        if !(200..300).contains(&status) {
            return;
        }
        match self.answers.get(key) {
            None => {
                self.answers.insert(key.to_string(), body.clone());
            }
            Some(first) if first != body => {
                self.fail(format!("idempotency key {key} applied twice (§10.3): first answer {first}, then {body}"))
            }
            Some(_) => {}
        }
    }

    async fn call_debit(&mut self, req: Request) -> (u16, Value) {
        let n = self.rng.below(2);
        read(debit::handle(&self.w.config, &self.instances[n], req).await)
    }

    async fn debit(&mut self, key: &str, qty: i64) -> u16 {
        let mut body = json!({"consumable": self.consumable, "quantity": qty, "idempotency_key": key});
        if let Some(entity) = entity_of(key) {
            body["entity"] = json!(entity);
        }
        let (s, b) = self.call_debit(post(&self.path("/usage"), &service(), body)).await;
        self.remember(key, s, &b);
        if !self.usage_keys.iter().any(|(k, _)| k == key) {
            self.usage_keys.push((key.to_string(), qty));
        }
        s
    }

    async fn buy(&mut self, body: Value, key: &str) -> (u16, Value) {
        let ui = self.w.config.checkout_ui.clone().expect("checkout configured");
        let n = self.rng.below(2);
        let checkout = purchase::Checkout { payments: &self.stripe, ui: &ui };
        let mut req = post(&purchases(&self.id), &person("admin", &self.id), body);
        req.headers_mut().insert("idempotency-key", key.parse().expect("header"));
        read(purchase::handle(&self.w.config, &self.instances[n], &checkout, req).await)
    }

    async fn webhook(&self, n: usize, event: &Value) -> u16 {
        let req = signed_event(&event.to_string(), WEBHOOK_SECRET, now_s());
        read(webhook::handle(&self.secret, &self.instances[n], &self.stripe, req).await).0
    }

    async fn stripe_payments(&self) -> Vec<topup::payments::PaymentRecord> {
        self.plain_stripe.customer_payments(&self.customer).await.expect("list payments")
    }

    /// Queues what happened meanwhile: `BalanceLow` events that went out on the bus, and the
    /// events Stripe sends for the recharges it charged.
    async fn collect_events(&mut self) -> Vec<topup::payments::PaymentRecord> {
        let sent: Vec<DomainEvent> = self.sent.lock().map(|s| s[self.bus_seen..].to_vec()).unwrap_or_default();
        self.bus_seen += sent.len();
        for e in sent.iter().filter(|e| e.detail_type() == "BalanceLow" && e.account_id == self.id) {
            self.lows
                .push(json!({"detail-type": "BalanceLow", "source": "topup", "detail": topup::events::detail_json(e)}));
        }
        let payments = self.stripe_payments().await;
        for p in &payments {
            if !p.metadata.contains_key("topup_recharge_id") || self.announced.contains(&p.id) {
                continue;
            }
            let kind = match p.status.as_str() {
                "succeeded" => "payment_intent.succeeded",
                "requires_payment_method" | "canceled" => "payment_intent.payment_failed",
                _ => continue,
            };
            self.announced.insert(p.id.clone());
            let (_, pi) = local_stripe("GET", &format!("/v1/payment_intents/{}", p.id), &[]).await;
            self.webhooks.push(stripe_event(kind, pi));
        }
        payments
    }

    /// Everything on its way arrives, with no more failures: Stripe's retries succeed, the
    /// sweep recovers every claim and sends the outbox along.
    async fn quiesce(&mut self) {
        self.armed.arm(None);
        for _ in 0..6 {
            let _ = self.instances[0].sweep(&self.stripe, 500, 0).await;
            self.collect_events().await;
            for event in std::mem::take(&mut self.lows) {
                let _ = auto_recharge::handle(&self.instances[0], &self.stripe, &topup_tests::trigger(&event)).await;
            }
            self.collect_events().await;
            // Stripe retries what was not answered 2xx; an event early for its turn (a refund
            // before its payment's credit) goes through on a later round.
            let queued = std::mem::take(&mut self.webhooks);
            for event in &queued {
                let s = self.webhook(0, event).await;
                match s {
                    200..=299 => {}
                    409 => self.webhooks.push(event.clone()),
                    _ => self.fail(format!("a webhook still fails with nothing injected: {s} for {}", event["type"])),
                }
            }
            if queued.is_empty() && self.webhooks.is_empty() && self.lows.is_empty() {
                let outbox = topup::events::pending_events(&self.w.credits.store, 10).await.expect("outbox");
                if outbox.is_empty() {
                    return;
                }
            }
        }
    }

    /// rules §10 on the stored state, the bus and Stripe's records.
    async fn check(&mut self, settled: bool, payments: Vec<topup::payments::PaymentRecord>) {
        let report = match self.w.credits.reconcile_account(&self.plain_stripe, &self.id).await {
            Ok(r) => r,
            Err(e) => self.fail(format!("reconciliation failed: {e:?}")),
        };
        // §10.1, §10.2, §10.4, §10.6: nothing wrong ever; once settled, nothing lagging either.
        let bad: Vec<_> = report.differences.iter().filter(|d| settled || d.severity == Severity::Wrong).collect();
        if !bad.is_empty() {
            self.fail(format!("reconciliation {}: {bad:?}", if settled { "after settling" } else { "found" }));
        }
        let account = self.w.credits.account(&self.id).await.expect("account");
        // As the ledger page shows it: with lanes, their entries merged in, with the whole
        // balance after each (rules §14); the lanes' invariants are reconciliation's above.
        let ledger = self.w.account_ledger(&self.id).await;
        if settled && account.lanes_ever() > 0 {
            // The page, paged, is that merged ledger exactly, and its newest running balance
            // is the account's with its lanes'.
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = match self.w.credits.transactions(&self.id, 40, cursor.as_deref()).await {
                    Ok(p) => p,
                    Err(e) => self.fail(format!("ledger page: {e:?}")),
                };
                seen.extend(page.transactions.iter().map(|t| (t.id.clone(), t.balance_after)));
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            // Without our leases (rules §16): only movements in and out of the account.
            let want: Vec<(String, i64)> = ledger
                .iter()
                .rev()
                .filter(|e| !e.kind.is_lease())
                .map(|e| (e.id.clone(), e.balance_after.get()))
                .collect();
            if seen != want {
                self.fail(format!("the ledger page is not the merged ledger without leases: {seen:?} vs {want:?}"));
            }
            let whole = self.w.credits.whole_account(&self.id).await.expect("whole").balance.get();
            if ledger.last().map_or(0, |e| e.balance_after.get()) != whole {
                self.fail(format!("the merged ledger ends at {:?}, the whole balance is {whole}", ledger.last()));
            }
        }
        // §10.5: one charge per recharge claim, at most one per low-balance episode, and never
        // more than the monthly cap.
        let recharges: Vec<_> = payments.iter().filter(|p| p.metadata.contains_key("topup_recharge_id")).collect();
        let claims: HashSet<&String> = recharges.iter().filter_map(|p| p.metadata.get("topup_recharge_id")).collect();
        if claims.len() != recharges.len() {
            self.fail(format!("a recharge was charged twice: {recharges:?}"));
        }
        let low = |b: i64| self.trigger.is_low(Micros::new(b), Micros::new(self.threshold));
        let episodes = ledger.iter().filter(|e| e.amount.get() < 0 && low(e.balance_after.get()) && !low(e.balance_after.get() - e.amount.get())).count()
            // an account that starts low is in an episode already
            + usize::from(ledger.first().is_some_and(|e| low(e.balance_after.get() - e.amount.get())) || ledger.is_empty());
        let succeeded = recharges.iter().filter(|p| p.status == "succeeded").count();
        if self.declining_card {
            // §10.6: not retried automatically — only a purchase (which lifts the suspension)
            // allows another attempt.
            let purchases = ledger.iter().filter(|e| e.kind == topup::ledger::EntryKind::Purchase).count();
            if recharges.len() > 1 + purchases {
                self.fail(format!(
                    "a declined recharge was retried automatically: {} attempts, {purchases} purchases",
                    recharges.len()
                ));
            }
            if succeeded > 0 {
                self.fail("a declining card was charged".into());
            }
        } else if recharges.len() > episodes {
            self.fail(format!("{} recharges for {episodes} low-balance episodes", recharges.len()));
        }
        if succeeded as i64 > self.monthly_max {
            self.fail(format!("{succeeded} recharges succeeded with a monthly cap of {}", self.monthly_max));
        }
        if account.auto_recharge.used_this_month as i64 > self.monthly_max {
            self.fail(format!("the month's count {} is above the cap", account.auto_recharge.used_this_month));
        }
        // rules §16: every recharge that took money this month is in the month's count and money
        // (a late success never slips past them), so the cap bounds what was really charged.
        let month = topup::clock::month_of(topup::clock::now_ms());
        if account.auto_recharge.used_month == month {
            let paid: Vec<_> = recharges.iter().filter(|p| p.status == "succeeded").collect();
            let money: i64 = paid.iter().map(|p| p.amount).sum();
            if paid.len() as i64 > i64::from(account.auto_recharge.used_this_month)
                || money > account.auto_recharge.spent_this_month_cents
            {
                self.fail(format!(
                    "{} recharges took {money} this month, the month counts {} and {}",
                    paid.len(),
                    account.auto_recharge.used_this_month,
                    account.auto_recharge.spent_this_month_cents
                ));
            }
        }
        // Disputes (rules §12): each takes back at most once and returns at most what it took;
        // once settled, every dispute opened at Stripe is recorded.
        let entries = |sign: i64| -> i64 {
            ledger
                .iter()
                .filter(|e| e.kind == topup::ledger::EntryKind::Dispute && e.amount.get().signum() == sign)
                .map(|e| e.amount.get())
                .sum()
        };
        let taken: i64 = account.disputes.values().map(|d| d.taken.get()).sum();
        let closed_taken: i64 = account.disputes.values().filter(|d| !d.open).map(|d| d.taken.get()).sum();
        let takes = ledger.iter().filter(|e| e.kind == topup::ledger::EntryKind::Dispute && e.amount.get() < 0).count();
        if -entries(-1) != taken || takes > account.disputes.len() {
            self.fail(format!(
                "disputes took {} in {takes} entries for {} disputes that say {taken}",
                -entries(-1),
                account.disputes.len()
            ));
        }
        if entries(1) > closed_taken {
            self.fail(format!("disputes returned {} of {closed_taken} taken by closed ones", entries(1)));
        }
        if settled {
            if let Some(missing) = self.disputes.iter().find(|d| !account.disputes.contains_key(*d)) {
                self.fail(format!("dispute {missing} was opened at Stripe but never recorded"));
            }
        }
        // Budgets (rules §17): no entity's month passes its limit (reconciliation above checked
        // each one's spend against its entries).
        let entities = match self.w.credits.store.entities(&self.id).await {
            Ok(e) => e,
            Err(e) => self.fail(format!("entities: {e:?}")),
        };
        if let Some(e) = entities.iter().find(|e| e.monthly_limit.is_some_and(|l| e.spent > l)) {
            self.fail(format!("entity {} spent {} past its limit {:?}", e.entity, e.spent, e.monthly_limit));
        }
        // Holds never hold more than the balance.
        let now = topup::clock::now_ms();
        if account.held(now).get() > account.balance.get() {
            self.fail(format!("holds of {} exceed the balance {}", account.held(now).get(), account.balance.get()));
        }
    }
}

/// The schedules run on worker threads with 16 MiB stacks: a step's future (every handler's,
/// unoptimised in a debug build) is larger than tokio's default 2 MiB allows.
#[test]
fn random_schedules_with_failures_keep_every_invariant() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_schedules());
}

async fn run_schedules() {
    let steps = env_u64("TOPUP_FAULT_STEPS", 14);
    let seeds: Vec<u64> = match std::env::var("TOPUP_FAULT_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("TOPUP_FAULT_BASE", 20_261_122);
            (0..env_u64("TOPUP_FAULT_SCHEDULES", 200)).map(|i| base + i).collect()
        }
    };
    let parallel = env_u64("TOPUP_FAULT_PARALLEL", 4) as usize;
    let started = std::time::Instant::now();
    let total = seeds.len();
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = seeds.into_iter();
    let mut failures = Vec::new();
    let mut seed_of = HashMap::new();
    let mut stats = Stats::default();
    loop {
        while tasks.len() < parallel {
            let Some(seed) = queue.next() else { break };
            let task = tasks.spawn(async move { Schedule::new(seed).await.run(steps).await });
            seed_of.insert(task.id(), seed);
        }
        match tasks.join_next().await {
            Some(Ok(s)) => stats.add(&s),
            Some(Err(e)) => {
                let seed = seed_of.get(&e.id()).copied().unwrap_or_default();
                failures.push(format!(
                    "seed {seed} (replay: TOPUP_FAULT_SEED={seed} TOPUP_FAULT_STEPS={steps} ./scripts/faults): {e}"
                ));
            }
            None => break,
        }
    }
    eprintln!(
        "fault injection: {total} schedules of {steps} steps in {:.1}s; {stats:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} of {total} schedules failed:\n{}", failures.len(), failures.join("\n"));
}
