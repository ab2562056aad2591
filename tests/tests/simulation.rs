//! The deterministic simulator (rules §10–§17): one process, virtual time, every choice from
//! one seeded generator, as TigerBeetle's VOPR and FoundationDB's simulation do.
//!
//! A schedule runs the functions' own handlers (`debit`, `auto-recharge`, `purchase`, `webhook`,
//! `webhooks-out`) and the service's operations over the in-memory store (DynamoDB's semantics:
//! conditions, transactions, the 100-item and 400 KB limits), a model of Stripe (charges that
//! pay, decline, need authentication or settle later; cancels; refunds; disputes; Checkout
//! Sessions that customers pay by card, by a bank debit that settles later, or abandon; its
//! events delivered late, twice and out of order) and modelled receivers of webhooks out, from
//! three processes with their own caches.
//!
//! What it draws: debits and batches (some naming an entity, rules §17), holds (some for an
//! entity) and their settlement, adjustments and grants that expire, entity limits set, raised,
//! lowered and removed, `BalanceLow` to the auto-recharge function, sweeps, expiry runs, lanes,
//! purchases started through the `purchase` function (retried under their `Idempotency-Key`)
//! and paid at Checkout, Stripe's events to the `webhook` function, our events to the
//! `webhooks-out` function (from the bus, late and twice) and its follow-ups from the retry
//! queue (late and twice), webhook endpoints registered, deleted, enabled and rotated, each with
//! a receiver that is healthy (always 200), flaky (200, 500 or a timeout, from the seed) or
//! down; the clock moving minutes, days, past month ends.
//!
//! **Interleavings.** A step may run two or three operations from different processes at once:
//! every call to the store, to Stripe's model and to the webhook store, queue and receivers
//! first yields, and a tiny executor (`interleave`) polls the pending operations in an order
//! drawn from the seed, so their store calls interleave as a real deployment's would, and one
//! seed still replays exactly: a wait on time inside an operation (a retry's backoff, of random
//! length) is waited for within its turn, and `webhooks-out` is handed our committed events in
//! an order of what they say, never of their random ids.
//!
//! **Faults.** Before a step one may be armed, for whichever call of the step comes first: the
//! store down (the commit does nothing), the store's answer lost (the commit took effect, the
//! caller died), Stripe down, Stripe's answer lost (the charge was made), the webhook store down,
//! or the retry queue down.
//!
//! **Invariants**, after every step: the balance is the ledger's sum and the grants', never
//! below zero, holds within it; a replayed key answers its first result; a recharge is charged
//! at most once per claim, the month's count and money never pass the cap and hold every
//! recharge that took money; refunds and disputes never take back more than a payment credited;
//! a payment (recharge or purchase) is credited at most once, and only a Checkout Session Stripe
//! says was paid credits its purchase; an entity's month spend is exactly what its ledger
//! entries of the month drew, and never passes its limit (what rules §17 guarantees: the limit
//! set before the debit);
//! every webhook POST verifies with the endpoint's secret, a delivery makes no more attempts
//! than its retry schedule fits in the window, a receiver never gets more POSTs of an event
//! than the delivery counts attempts, and a healthy receiver gets each event at most once (a
//! webhook store failing right after a POST may send it again: at least once).
//!
//! After the last step everything on its way is delivered with no faults, and then: each
//! payment Stripe took is credited exactly once, each paid session's purchase has succeeded and
//! no other has; no delivery is left pending, and every event of ours reached every healthy
//! endpoint, exactly once.
//!
//! Each schedule's trace (every step and what it answered, without the random ids) is hashed:
//! one seed replays exactly (a test runs one twice). `cargo test` runs `TOPUP_SIM_SCHEDULES`
//! (default 5,000) schedules from a base seed taken from the commit (`git rev-parse HEAD`), or
//! `TOPUP_SIM_BASE`; a failure prints its seed and the command that replays it:
//! `TOPUP_SIM_SEED=N cargo test -p topup-tests --test simulation -- --nocapture`.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use topup::account::{Account, RechargeRecord};
use topup::adapters::memory::{MemoryBus, MemoryStore};
use topup::clock::{Clock, ManualClock};
use topup::config::Config;
use topup::engine::Credits;
use topup::entities::{Entity, EntitySettings};
use topup::events::{DomainEvent, Event};
use topup::ledger::{EntryKind, HoldRecord, IdemRecord, LedgerEntry};
use topup::money::MICROS_PER_CREDIT as C;
use topup::notify::{Channels, Rendered, SendError};
use topup::payments::{
    CancelOutcome, Card, CardSetup, CardSetupRequest, ChargeOutcome, CheckoutRequest, CheckoutSession, CheckoutUi,
    NewCustomer, OffSessionCharge, Payments, PaymentsUnavailable, Purchases,
};
use topup::purchases::{PurchaseRecord, PurchaseStatus};
use topup::receipts::{Receipt, ReceiptKey, ReceiptStore};
use topup::secret::Secret;
use topup::store::{Accounts, Commit, CommitError, Outbox, PaymentRecords, PurchaseWrite, RateCounts, StoreError};
use topup::webhooks::deliver::{Answer, Dispatcher, FollowUp, RetryQueue, Sender};
use topup::webhooks::{Delivery, Endpoint, MemoryWebhookStore, WebhookSettings, WebhookStore};
use topup_tests::{read, request, signed_event};

type Sim = Credits<Arc<SimStore>, Arc<MemoryBus>>;

/// What the schedules reached, summed over a run: a simulator that never reaches a path checks
/// nothing there.
static KEPT: AtomicUsize = AtomicUsize::new(0);
static RECHARGED: AtomicUsize = AtomicUsize::new(0);
static FAILED_RECHARGES: AtomicUsize = AtomicUsize::new(0);
static ON_LANES: AtomicUsize = AtomicUsize::new(0);
static DISPUTED: AtomicUsize = AtomicUsize::new(0);
static ENTITY_REFUSED: AtomicUsize = AtomicUsize::new(0);
static ENTITY_AT_LIMIT: AtomicUsize = AtomicUsize::new(0);
static PURCHASED: AtomicUsize = AtomicUsize::new(0);
static HOOK_POSTS: AtomicUsize = AtomicUsize::new(0);
static HOOK_RETRIED: AtomicUsize = AtomicUsize::new(0);
static GROUPS: AtomicUsize = AtomicUsize::new(0);
static SWITCHES: AtomicUsize = AtomicUsize::new(0);
static RACES: AtomicUsize = AtomicUsize::new(0);
/// Lane counts the account changed by itself (rules §21): wider on contention, narrower when
/// its lanes went unused or quiet.
static WIDENED: AtomicUsize = AtomicUsize::new(0);
static NARROWED: AtomicUsize = AtomicUsize::new(0);

const ACCOUNT: &str = "acme";
const JWT: &str = "simulator-secret-0123456789";
const SERVICE: &str = "sim-service";
const WEBHOOK_SECRET: &str = "whsec_simulator";
/// 2026-11-30T23:00:00Z: an hour before a month ends, so schedules cross it.
const START_MS: i64 = 1_796_079_600_000;
const STEPS: usize = 40;
/// The entities usage may name.
const ENTITIES: [&str; 3] = ["user:ann", "proj-x", "key-9"];
/// How often a step runs operations at once.
const CONCURRENT_PERCENT: u64 = 20;
/// How often a step is a crowd of debits from every process at once.
const CROWD_PERCENT: u64 = 4;


// ---- interleavings: yield points and a seeded executor ---------------------------------------

thread_local! {
    /// Set while `interleave` polls one of its operations: only then do yield points yield.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// Set by a yield point that yielded, so the executor can tell it from a real wait.
    static YIELDED: Cell<bool> = const { Cell::new(false) };
    /// The schedule's time, for `webhooks-out`'s clock (a plain `fn`).
    static NOW_MS: Cell<i64> = const { Cell::new(0) };
}

/// A yield point: inside `interleave`, pending once (the executor then picks which operation
/// goes on); elsewhere, ready at once.
struct Gate(bool);

impl Future for Gate {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 || !ACTIVE.with(Cell::get) {
            return Poll::Ready(());
        }
        self.0 = true;
        YIELDED.with(|y| y.set(true));
        // A combinator between us and the executor (join_all) polls us again when woken.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn gate() -> Gate {
    Gate(false)
}

fn sim_clock() -> i64 {
    NOW_MS.with(Cell::get)
}

type Running<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs `ops` at once, in turns drawn from `rng`: each turn polls one operation until it
/// reaches its next yield point (or its end). An operation that waits on time (a retry's
/// backoff, whose length is random) is waited for within its turn: virtual time passes, 300 ms
/// at a time, until it goes on, so a wait of 0 ms and one of 200 ms look alike to the turns.
/// So the order of every store call, and the answers, follow from the seed alone. (Operations
/// at once come from different processes, so none waits on another's lock.)
async fn interleave<'a, T>(rng: &mut Rng, mut ops: Vec<Running<'a, T>>) -> Vec<T> {
    let n = ops.len();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    // In the order they finished: what an operation answered is checked after those that
    // answered before it (a key refused and then applied by a retry racing it is no replay).
    let mut finished: Vec<usize> = Vec::with_capacity(n);
    let mut last = usize::MAX;
    loop {
        let live: Vec<usize> = (0..n).filter(|&i| out[i].is_none()).collect();
        if live.is_empty() {
            return finished.into_iter().filter_map(|i| out[i].take()).collect();
        }
        let i = live[rng.below(live.len() as u64) as usize];
        if i != last && last != usize::MAX && out[last].is_none() {
            SWITCHES.fetch_add(1, Relaxed);
        }
        last = i;
        for waited in 0.. {
            let (polled, yielded) = std::future::poll_fn(|cx| {
                ACTIVE.with(|a| a.set(true));
                YIELDED.with(|y| y.set(false));
                let polled = ops[i].as_mut().poll(cx);
                ACTIVE.with(|a| a.set(false));
                Poll::Ready((polled, YIELDED.with(Cell::get)))
            })
            .await;
            match polled {
                Poll::Ready(v) => {
                    out[i] = Some(v);
                    finished.push(i);
                    break;
                }
                Poll::Pending if yielded => break,
                Poll::Pending if waited > 1_000 => panic!("an operation run at once waits for ever"),
                Poll::Pending => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
            }
        }
    }
}

// ---- the store, with a yield point before every call -----------------------------------------

/// The memory store (DynamoDB's semantics), each call a yield point.
#[derive(Default)]
struct SimStore {
    mem: MemoryStore,
}

impl Accounts for SimStore {
    async fn load_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        gate().await;
        self.mem.load_account(id).await
    }
    async fn commit(&self, c: Commit) -> Result<(), CommitError> {
        gate().await;
        raced(self.mem.commit(c).await)
    }
    async fn commit_all(&self, c: Vec<Commit>) -> Result<(), CommitError> {
        gate().await;
        raced(self.mem.commit_all(c).await)
    }
    async fn load_accounts(&self, ids: &[String]) -> Result<Vec<(String, Result<Account, StoreError>)>, StoreError> {
        gate().await;
        self.mem.load_accounts(ids).await
    }
    async fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<(Vec<LedgerEntry>, bool), StoreError> {
        gate().await;
        self.mem.ledger_page(account_id, limit, before_seq).await
    }
    async fn load_hold(&self, account_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        gate().await;
        self.mem.load_hold(account_id, hold_id).await
    }
    async fn load_idempotency(&self, account_id: &str, scope_key: &str) -> Result<Option<IdemRecord>, StoreError> {
        gate().await;
        self.mem.load_idempotency(account_id, scope_key).await
    }
    async fn load_entity(&self, account_id: &str, entity: &str) -> Result<Option<Entity>, StoreError> {
        gate().await;
        self.mem.load_entity(account_id, entity).await
    }
    async fn entities(&self, account_id: &str) -> Result<Vec<Entity>, StoreError> {
        gate().await;
        self.mem.entities(account_id).await
    }
}

impl PaymentRecords for SimStore {
    async fn put_purchase(&self, w: PurchaseWrite) -> Result<(), CommitError> {
        gate().await;
        self.mem.put_purchase(w).await
    }
    async fn load_purchase(&self, account_id: &str, purchase_id: &str) -> Result<Option<PurchaseRecord>, StoreError> {
        gate().await;
        self.mem.load_purchase(account_id, purchase_id).await
    }
    async fn load_recharge(&self, account_id: &str, recharge_id: &str) -> Result<Option<RechargeRecord>, StoreError> {
        gate().await;
        self.mem.load_recharge(account_id, recharge_id).await
    }
    async fn payment_account(&self, payment_intent_id: &str) -> Result<Option<String>, StoreError> {
        gate().await;
        self.mem.payment_account(payment_intent_id).await
    }
    async fn payment_claims(&self, account_id: &str) -> Result<Vec<IdemRecord>, StoreError> {
        gate().await;
        self.mem.payment_claims(account_id).await
    }
}

impl RateCounts for SimStore {
    async fn count_start(&self, account_id: &str, what: &str, window_start_ms: i64, limit: u32) -> Result<bool, StoreError> {
        gate().await;
        self.mem.count_start(account_id, what, window_start_ms, limit).await
    }
}

/// Counts a commit another writer got to first.
fn raced(r: Result<(), CommitError>) -> Result<(), CommitError> {
    if matches!(r, Err(CommitError::Stale(_) | CommitError::EntityMoved | CommitError::PurchaseNotInState(_))) {
        RACES.fetch_add(1, Relaxed);
    }
    r
}

topup::forward_port!(Deliveries, [], SimStore, |s| s.mem);
topup::forward_port!(Outbox, [], SimStore, |s| s.mem);
topup::forward_port!(Listings, [], SimStore, |s| s.mem);
topup::forward_port!(AuditLog, [], SimStore, |s| s.mem);

impl ReceiptStore for SimStore {
    async fn add_receipt(&self, r: &Receipt) -> Result<bool, StoreError> {
        gate().await;
        self.mem.add_receipt(r).await
    }
    async fn put_receipt(&self, r: &Receipt) -> Result<bool, StoreError> {
        gate().await;
        self.mem.put_receipt(r).await
    }
    async fn link_payment(&self, account_id: &str, payment_intent_id: &str, key: &ReceiptKey) -> Result<(), StoreError> {
        self.mem.link_payment(account_id, payment_intent_id, key).await
    }
    async fn receipt(&self, account_id: &str, key: &ReceiptKey) -> Result<Option<Receipt>, StoreError> {
        self.mem.receipt(account_id, key).await
    }
    async fn receipt_of_payment(&self, account_id: &str, payment_intent_id: &str) -> Result<Option<Receipt>, StoreError> {
        self.mem.receipt_of_payment(account_id, payment_intent_id).await
    }
    async fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&ReceiptKey>,
    ) -> Result<(Vec<Receipt>, bool), StoreError> {
        self.mem.receipts(account_id, limit, before).await
    }
}

// ---- a seeded generator (splitmix64) --------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % ((hi - lo + 1).max(1) as u64)) as i64
    }
}

// ---- a model of Stripe -----------------------------------------------------------------------

/// What a saved card does when charged off-session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CardKind {
    Pays,
    Declines,
    /// Needs the customer (3-D Secure): `requires_action`, which the customer may complete later.
    Authenticates,
    /// Settles later: `processing`, then succeeded or failed.
    Settles,
}

#[derive(Debug, Clone)]
struct Intent {
    id: String,
    amount: i64,
    status: &'static str,
    metadata: BTreeMap<String, String>,
    refunded: i64,
    /// Its disputes: id, disputed amount, and whether still open.
    disputes: Vec<(String, i64, bool)>,
}

impl Intent {
    /// The Checkout Session a purchase's PaymentIntent was made by.
    fn session(&self) -> Option<&str> {
        self.metadata.get("sim_checkout_session").map(String::as_str)
    }
}

/// A Checkout Session: `open` until the customer pays (`complete`, `paid` now or once a bank
/// debit settles) or leaves it (`expired`).
#[derive(Debug, Clone)]
struct Session {
    id: String,
    amount: i64,
    metadata: BTreeMap<String, String>,
    reference: String,
    status: &'static str,
    paid: bool,
    payment_intent: Option<String>,
    /// Its page was handed to the customer (the purchase answered 201 with it).
    payable: bool,
}

#[derive(Default)]
struct StripeState {
    customers: HashMap<String, String>,
    intents: BTreeMap<String, Intent>,
    by_key: HashMap<String, (String, ChargeOutcome)>,
    cancels: HashMap<String, CancelOutcome>,
    sessions: BTreeMap<String, Session>,
    session_keys: HashMap<String, String>,
    card: Option<CardKind>,
    /// Faults: the next call fails doing nothing; the next call's answer is lost.
    down: bool,
    lose: bool,
    /// Events Stripe has to send.
    outbox: Vec<Value>,
}

#[derive(Default)]
struct StripeModel(Mutex<StripeState>);

fn unavailable(what: &str) -> PaymentsUnavailable {
    PaymentsUnavailable(format!("injected: {what}"))
}

impl StripeModel {
    fn state(&self) -> std::sync::MutexGuard<'_, StripeState> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn intent_json(i: &Intent) -> Value {
        json!({
            "id": i.id, "object": "payment_intent", "amount": i.amount,
            "amount_received": if i.status == "succeeded" { i.amount } else { 0 },
            "currency": "usd", "status": i.status, "metadata": i.metadata,
            "last_payment_error": if i.status == "requires_payment_method" {
                json!({"type": "card_error", "code": "card_declined", "message": "Your card was declined."})
            } else { Value::Null },
        })
    }

    fn push(s: &mut StripeState, event_type: &str, object: Value) {
        let n = s.outbox.len();
        s.outbox.push(json!({
            "id": format!("evt_sim_{n}"), "object": "event", "api_version": "2025-11-17.clover",
            "created": 0, "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": event_type, "data": {"object": object},
        }));
    }

    /// Queues the event Stripe sends for `pi` now.
    fn announce(s: &mut StripeState, pi: &str, event_type: &str) {
        if let Some(i) = s.intents.get(pi) {
            let object = StripeModel::intent_json(i);
            StripeModel::push(s, event_type, object);
        }
    }

    /// Queues the event Stripe sends for Checkout Session `cs` now.
    fn announce_session(s: &mut StripeState, cs: &str, event_type: &str) {
        if let Some(x) = s.sessions.get(cs) {
            let object = json!({
                "id": x.id, "object": "checkout.session", "mode": "payment", "status": x.status,
                "client_reference_id": x.reference, "metadata": x.metadata,
                "payment_status": if x.paid { "paid" } else { "unpaid" },
                "payment_intent": x.payment_intent, "amount_total": x.amount, "amount_subtotal": x.amount,
                "currency": "usd",
            });
            StripeModel::push(s, event_type, object);
        }
    }

    /// The PaymentIntent a customer's payment of session `cs` makes, in `status`.
    fn session_intent(s: &mut StripeState, cs: &str, status: &'static str) -> Option<String> {
        let x = s.sessions.get(cs)?;
        let id = format!("pi_sim_{}", s.intents.len());
        let mut metadata = x.metadata.clone();
        metadata.insert("sim_checkout_session".into(), cs.to_string());
        let intent = Intent { id: id.clone(), amount: x.amount, status, metadata, refunded: 0, disputes: vec![] };
        s.intents.insert(id.clone(), intent);
        if let Some(x) = s.sessions.get_mut(cs) {
            x.payment_intent = Some(id.clone());
        }
        Some(id)
    }

    /// A purchase's PaymentIntent settles (a bank debit): the session is paid, or not.
    fn settle_session(s: &mut StripeState, pi: &str, pays: bool) {
        let Some(cs) = s.intents.get(pi).and_then(|i| i.session().map(str::to_string)) else { return };
        if let Some(i) = s.intents.get_mut(pi) {
            i.status = if pays { "succeeded" } else { "requires_payment_method" };
        }
        if let Some(x) = s.sessions.get_mut(&cs) {
            x.paid = pays;
        }
        let kind = if pays { "checkout.session.async_payment_succeeded" } else { "checkout.session.async_payment_failed" };
        StripeModel::announce_session(s, &cs, kind);
        let kind = if pays { "payment_intent.succeeded" } else { "payment_intent.payment_failed" };
        StripeModel::announce(s, pi, kind);
    }
}

impl Payments for StripeModel {
    async fn create_customer(&self, c: &NewCustomer) -> Result<String, PaymentsUnavailable> {
        gate().await;
        let mut s = self.state();
        let n = s.customers.len();
        Ok(s.customers.entry(c.idempotency_key.clone()).or_insert_with(|| format!("cus_sim_{n}")).clone())
    }

    async fn charge_off_session(&self, c: &OffSessionCharge) -> Result<ChargeOutcome, PaymentsUnavailable> {
        gate().await;
        let mut s = self.state();
        if std::mem::take(&mut s.down) {
            return Err(unavailable("stripe down"));
        }
        if let Some((_, outcome)) = s.by_key.get(&c.idempotency_key) {
            let outcome = outcome.clone();
            return if std::mem::take(&mut s.lose) { Err(unavailable("answer lost")) } else { Ok(outcome) };
        }
        let id = format!("pi_sim_{}", s.intents.len());
        let kind = s.card.unwrap_or(CardKind::Pays);
        let (status, outcome) = match kind {
            CardKind::Pays => ("succeeded", ChargeOutcome::Succeeded { payment_intent_id: id.clone() }),
            CardKind::Settles => ("processing", ChargeOutcome::Processing { payment_intent_id: id.clone() }),
            CardKind::Declines => (
                "requires_payment_method",
                ChargeOutcome::Failed {
                    payment_intent_id: Some(id.clone()),
                    code: "card_declined".into(),
                    decline_code: Some("generic_decline".into()),
                    message: "Your card was declined.".into(),
                },
            ),
            CardKind::Authenticates => (
                "requires_action",
                ChargeOutcome::Failed {
                    payment_intent_id: Some(id.clone()),
                    code: "authentication_required".into(),
                    decline_code: None,
                    message: "Your bank asked to confirm this payment.".into(),
                },
            ),
        };
        let metadata = c.metadata.iter().cloned().collect();
        s.intents.insert(
            id.clone(),
            Intent { id: id.clone(), amount: c.amount_cents, status, metadata, refunded: 0, disputes: vec![] },
        );
        s.by_key.insert(c.idempotency_key.clone(), (id.clone(), outcome.clone()));
        if status == "succeeded" {
            StripeModel::announce(&mut s, &id, "payment_intent.succeeded");
        }
        if std::mem::take(&mut s.lose) {
            return Err(unavailable("answer lost"));
        }
        Ok(outcome)
    }

    async fn cancel_payment(&self, pi: &str, key: &str) -> Result<CancelOutcome, PaymentsUnavailable> {
        gate().await;
        let mut s = self.state();
        if std::mem::take(&mut s.down) {
            return Err(unavailable("stripe down"));
        }
        if let Some(o) = s.cancels.get(key) {
            return Ok(*o);
        }
        let Some(i) = s.intents.get_mut(pi) else { return Err(unavailable("no such PaymentIntent")) };
        let outcome = match i.status {
            "succeeded" => CancelOutcome::Succeeded,
            "processing" => CancelOutcome::Processing,
            _ => {
                i.status = "canceled";
                CancelOutcome::Canceled
            }
        };
        s.cancels.insert(key.to_string(), outcome);
        if std::mem::take(&mut s.lose) {
            return Err(unavailable("answer lost"));
        }
        Ok(outcome)
    }
}

impl Purchases for StripeModel {
    /// A Checkout Session per idempotency key (a retry gets the same one).
    async fn create_checkout(&self, r: &CheckoutRequest) -> Result<CheckoutSession, PaymentsUnavailable> {
        gate().await;
        let mut s = self.state();
        if std::mem::take(&mut s.down) {
            return Err(unavailable("stripe down"));
        }
        let id = match s.session_keys.get(&r.idempotency_key) {
            Some(id) => id.clone(),
            None => {
                let id = format!("cs_sim_{}", s.sessions.len());
                let session = Session {
                    id: id.clone(),
                    amount: r.amount_cents,
                    metadata: r.metadata.iter().cloned().collect(),
                    reference: r.reference.clone(),
                    status: "open",
                    paid: false,
                    payment_intent: None,
                    payable: false,
                };
                s.sessions.insert(id.clone(), session);
                s.session_keys.insert(r.idempotency_key.clone(), id.clone());
                id
            }
        };
        if std::mem::take(&mut s.lose) {
            return Err(unavailable("answer lost"));
        }
        Ok(CheckoutSession { id: id.clone(), client_secret: Some(format!("{id}_secret")), url: None })
    }
    async fn create_card_setup(&self, _: &CardSetupRequest) -> Result<CardSetup, PaymentsUnavailable> {
        Err(unavailable("SetupIntents are not modelled"))
    }
    async fn card(&self, pm: &str) -> Result<Option<Card>, PaymentsUnavailable> {
        Ok(Some(Card {
            id: pm.to_string(),
            customer_id: None,
            brand: "visa".into(),
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2030,
        }))
    }
    async fn detach(&self, _: &str) -> Result<(), PaymentsUnavailable> {
        Ok(())
    }
    async fn refund(&self, _: &topup::payments::RefundRequest) -> Result<topup::payments::RefundOutcome, PaymentsUnavailable> {
        Err(unavailable("refunds asked of Stripe are not modelled (the simulator draws charge.refunded itself)"))
    }
    async fn payment_metadata(&self, pi: &str) -> Result<HashMap<String, String>, PaymentsUnavailable> {
        gate().await;
        let s = self.state();
        s.intents
            .get(pi)
            .map(|i| i.metadata.clone().into_iter().collect())
            .ok_or_else(|| unavailable("no such PaymentIntent"))
    }
}

// ---- webhooks out: the webhook store, the retry queue, receivers -------------------------------

/// What a receiver of webhooks out does with a POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// Always answers 200.
    Healthy,
    /// 200, 500 or no answer in time, from the seed.
    Flaky,
    /// 500 or no answer in time.
    Down,
}

/// The webhook store (memory), each call a yield point; it may be down for its next call.
#[derive(Default)]
struct SimHooks {
    mem: MemoryWebhookStore,
    down: AtomicBool,
    /// Deliveries whose record failed to be written (one may then be POSTed again: at least
    /// once), by (endpoint id, event id).
    tainted: Mutex<HashSet<(String, String)>>,
}

impl SimHooks {
    fn fault(&self) -> Result<(), StoreError> {
        if self.down.swap(false, SeqCst) {
            return Err(StoreError::Unavailable("injected: the webhook store is down".into()));
        }
        Ok(())
    }
}

impl WebhookStore for SimHooks {
    async fn put_endpoint(&self, e: &Endpoint, expected: Option<u64>) -> Result<bool, StoreError> {
        gate().await;
        self.fault()?;
        self.mem.put_endpoint(e, expected).await
    }
    async fn create_endpoint(&self, e: &Endpoint, max: usize) -> Result<topup::webhooks::Created, StoreError> {
        gate().await;
        self.mem.create_endpoint(e, max).await
    }
    async fn retire_endpoint(&self, e: &Endpoint, expected: u64) -> Result<bool, StoreError> {
        gate().await;
        self.mem.retire_endpoint(e, expected).await
    }
    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        gate().await;
        self.fault()?;
        self.mem.endpoint(id).await
    }
    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        gate().await;
        self.fault()?;
        self.mem.endpoints().await
    }
    async fn put_delivery(&self, d: &Delivery, expected: Option<u64>) -> Result<bool, StoreError> {
        gate().await;
        if let Err(e) = self.fault() {
            if let Ok(mut t) = self.tainted.lock() {
                t.insert((d.endpoint_id.clone(), d.event_id.clone()));
            }
            return Err(e);
        }
        self.mem.put_delivery(d, expected).await
    }
    async fn delivery(&self, endpoint_id: &str, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        gate().await;
        self.fault()?;
        self.mem.delivery(endpoint_id, delivery_id).await
    }
    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        self.mem.deliveries(endpoint_id, limit, after).await
    }
}

/// One POST a receiver got.
struct Post {
    url: String,
    event_id: String,
    ok: bool,
    header: String,
    body: String,
    at_s: i64,
}

/// The receivers of every endpoint, by URL, answering from their own seeded generator.
struct Receivers {
    rng: Mutex<Rng>,
    kinds: Mutex<HashMap<String, Receiver>>,
    posts: Mutex<Vec<Post>>,
}

impl Sender for &Receivers {
    async fn post(&self, url: &str, signature: &str, body: &str) -> Answer {
        gate().await;
        let kind = self.kinds.lock().ok().and_then(|k| k.get(url).copied()).unwrap_or(Receiver::Down);
        let draw = self.rng.lock().map(|mut r| r.below(100)).unwrap_or(0);
        let answer = match (kind, draw) {
            (Receiver::Healthy, _) | (Receiver::Flaky, 0..=49) => Answer::Status(200),
            (_, 0..=69) => Answer::Status(500),
            _ => Answer::Failed("no answer within 10 s".into()),
        };
        let event_id = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        if let Ok(mut p) = self.posts.lock() {
            p.push(Post {
                url: url.to_string(),
                event_id,
                ok: answer == Answer::Status(200),
                header: signature.to_string(),
                body: body.to_string(),
                at_s: sim_clock().div_euclid(1000),
            });
        }
        HOOK_POSTS.fetch_add(1, Relaxed);
        answer
    }
}

/// One message on the retry queue: due when its delay has passed.
#[derive(Clone)]
struct Message {
    id: u64,
    follow_up: FollowUp,
    due: i64,
}

/// The retry queue (SQS with `DelaySeconds`) over the schedule's clock; it may be down for its
/// next send.
struct SimQueue {
    clock: Arc<ManualClock>,
    messages: Mutex<Vec<Message>>,
    next: AtomicU64,
    down: AtomicBool,
}

impl RetryQueue for &SimQueue {
    async fn send(&self, f: &FollowUp, delay_s: u32) -> Result<(), String> {
        gate().await;
        if self.down.swap(false, SeqCst) {
            return Err("injected: the queue is down".into());
        }
        let m = Message {
            id: self.next.fetch_add(1, SeqCst),
            follow_up: f.clone(),
            due: self.clock.now_ms() + i64::from(delay_s) * 1000,
        };
        if let Ok(mut q) = self.messages.lock() {
            q.push(m);
        }
        Ok(())
    }
}

/// Who is told that an endpoint was disabled.
#[derive(Default)]
struct SimMail {
    sent: Mutex<Vec<String>>,
}

impl Channels for &SimMail {
    async fn email(&self, _to: &str, m: &Rendered) -> Result<(), SendError> {
        if let Ok(mut s) = self.sent.lock() {
            s.push(m.text.clone());
        }
        Ok(())
    }
    async fn sms(&self, _: &str, _: &str) -> Result<(), SendError> {
        Ok(())
    }
}

/// Webhooks out: the store, the receivers, the retry queue, the owners' mailbox.
struct Hooks {
    store: SimHooks,
    receivers: Receivers,
    queue: SimQueue,
    mail: SimMail,
    settings: WebhookSettings,
}

/// A registered endpoint as the schedule knows it.
struct Hook {
    id: String,
    url: String,
    kind: Receiver,
    /// Every secret it was given (a rotated-out one signs beside the new for a day).
    secrets: Vec<String>,
    enables: usize,
}

/// The most attempts one delivery can make in its retry window: each retry comes at the
/// earliest a second before it is due (`on_follow_up` makes an attempt due within a second).
fn max_attempts(s: &WebhookSettings) -> u32 {
    let (mut t, mut n) = (0, 1);
    while t + s.delay_after(n) <= s.retry_window_s {
        t += s.delay_after(n) - 1;
        n += 1;
    }
    n
}

// ---- a schedule -------------------------------------------------------------------------------

/// One operation of a process: drawn first, then run alone or at once with others.
enum Op {
    Debit { proc: usize, qty: i64, key: String, entity: Option<String> },
    Batch { proc: usize, events: Vec<Value> },
    Hold { proc: usize, qty: i64, key: String, entity: Option<String> },
    Settle { proc: usize, hold: String, used: i64 },
    Adjust { proc: usize, amount: i64, key: String, expires: Option<i64> },
    Limit { proc: usize, entity: String, limit: Option<i64> },
    BalanceLow { proc: usize },
    Sweep { proc: usize, lease: i64 },
    Expiry { proc: usize },
    /// An operator's override: a fixed count, or bounds the account spreads itself within.
    Lanes { proc: usize, k: u32, automatic: bool },
    Purchase { proc: usize, key: String, amount: i64 },
    /// A Stripe event to the `webhook` function.
    Stripe { proc: usize, event: Value },
    /// One of our events, from the bus to `webhooks-out`.
    HooksBus { event: Value },
    /// Follow-ups, from the retry queue to `webhooks-out`.
    HooksQueue { messages: Vec<Message> },
}

/// What an operation leaves the schedule to do once it has answered.
enum Effect {
    Replay { key: String, status: u16, answer: Value },
    Hold { id: String, entity: Option<String>, units: i64 },
    /// A Stripe event not taken: Stripe sends it again.
    Stripe(Value),
    /// A Checkout Session handed to the customer.
    Payable(String),
    /// A bus event `webhooks-out` failed: the bus sends it again.
    Bus(Value),
    /// Follow-ups received again later (failed, or SQS delivering one twice).
    Queue(Vec<Message>),
}

struct Outcome {
    line: String,
    effects: Vec<Effect>,
}

impl Outcome {
    fn line(line: String) -> Outcome {
        Outcome { line, effects: vec![] }
    }
}

struct Schedule {
    seed: u64,
    rng: Rng,
    clock: Arc<ManualClock>,
    store: Arc<SimStore>,
    bus: Arc<MemoryBus>,
    procs: Vec<Sim>,
    stripe: StripeModel,
    config: Config,
    secret: Secret,
    /// Usage keys used (with their quantity and entity), and the first answer each got.
    keys: Vec<(String, i64, Option<String>)>,
    first: HashMap<String, (u16, Value)>,
    /// Open holds as drawn: id, entity, units reserved.
    holds: Vec<(String, Option<String>, i64)>,
    /// Stripe events on their way, in no particular order.
    queued: Vec<Value>,
    monthly_max: u32,
    /// (entity, month) where rules §17 lets the month pass the limit: the limit was lowered
    /// below what holds made before it reserve.
    waived: HashSet<(String, String)>,
    /// Purchases' `Idempotency-Key`s and amounts.
    purchases: Vec<(String, i64)>,
    hooks: Hooks,
    endpoints: Vec<Hook>,
    /// Our events taken so far (by id), and those on their way to `webhooks-out`.
    bus_taken: HashSet<String>,
    bus_out: Vec<Value>,
    /// POSTs whose signature was checked.
    verified: Cell<usize>,
    max_attempts: u32,
    trace: Vec<String>,
    /// The account's lane count after the last step, and whether an operator set it since.
    lanes_seen: u32,
    operator_lanes: Cell<bool>,
}

/// The failure of a schedule: its seed, what broke, and the steps so far.
fn fail(seed: u64, trace: &[String], why: String) -> String {
    // `TOPUP_SIM_TRACE`: every step, else the last twelve.
    let keep = if std::env::var("TOPUP_SIM_TRACE").is_ok() { trace.len() } else { 12 };
    let tail: Vec<&String> = trace.iter().rev().take(keep).collect::<Vec<_>>().into_iter().rev().collect();
    format!(
        "seed {seed}: {why}\n  last steps: {tail:#?}\n  replay: TOPUP_SIM_SEED={seed} cargo test -p topup-tests --test simulation -- --nocapture"
    )
}

/// One of our events as EventBridge hands it to `webhooks-out`.
fn bus_json(e: &DomainEvent) -> Value {
    json!({
        "version": "0", "id": format!("bus-{}", e.id), "detail-type": e.detail_type(), "source": "topup",
        "account": "000000000000", "time": "2026-12-01T00:00:00Z", "region": "us-east-1", "resources": [],
        "detail": topup::events::detail_json(e),
    })
}

/// Whether endpoints are sent `e` (rules §15).
fn for_endpoints(e: &DomainEvent) -> bool {
    topup::webhooks::webhook_type(e.detail_type(), &topup::events::detail_json(e)).is_some()
}

impl Schedule {
    async fn new(seed: u64) -> Schedule {
        let mut rng = Rng(seed);
        let clock = Arc::new(ManualClock::at(START_MS + rng.range(0, 90 * 60_000)));
        let store = Arc::new(SimStore::default());
        let bus = Arc::new(MemoryBus::default());
        let env = HashMap::from([
            ("TOPUP_PROFILE", "usd-overage"),
            ("TOPUP_LOCAL_JWT_SECRET", JWT),
            ("TOPUP_SERVICE_CLIENT_ID", SERVICE),
        ]);
        let config = match Config::from_lookup(|k| env.get(k).map(|v| v.to_string())) {
            Ok(c) => c,
            Err(e) => panic!("the simulator's configuration: {e}"),
        };
        let procs: Vec<Sim> = (0..3)
            .map(|n| {
                Credits::new(config.profile.clone(), store.clone(), bus.clone())
                    .with_clock(clock.clone())
                    .with_home_lane(n)
            })
            .collect();
        let monthly_max = rng.range(1, 3) as u32;
        let card = [CardKind::Pays, CardKind::Pays, CardKind::Declines, CardKind::Authenticates, CardKind::Settles]
            [rng.below(5) as usize];
        let stripe = StripeModel::default();
        stripe.state().card = Some(card);
        // The deployed retry schedule is hours long; a shorter one (as the local stack's) lets a
        // schedule see windows spent.
        let settings = WebhookSettings {
            allow_loopback: true,
            retry_schedule: vec![30, 120, 600],
            retry_window_s: 1_800,
            disable_after_s: 3_600,
            ..WebhookSettings::default()
        };
        let hooks = Hooks {
            store: SimHooks::default(),
            receivers: Receivers {
                rng: Mutex::new(Rng(rng.next())),
                kinds: Mutex::new(HashMap::new()),
                posts: Mutex::new(vec![]),
            },
            queue: SimQueue {
                clock: clock.clone(),
                messages: Mutex::new(vec![]),
                next: AtomicU64::new(0),
                down: AtomicBool::new(false),
            },
            mail: SimMail::default(),
            settings,
        };
        let max_attempts = max_attempts(&hooks.settings);
        let mut s = Schedule {
            seed,
            rng,
            clock,
            store,
            bus,
            procs,
            stripe,
            config,
            secret: Secret::new(WEBHOOK_SECRET),
            keys: vec![],
            first: HashMap::new(),
            holds: vec![],
            queued: vec![],
            monthly_max,
            waived: HashSet::new(),
            purchases: vec![],
            hooks,
            endpoints: vec![],
            bus_taken: HashSet::new(),
            bus_out: vec![],
            verified: Cell::new(0),
            max_attempts,
            trace: vec![format!("card {card:?}, monthly_max {monthly_max}")],
            lanes_seen: 1,
            operator_lanes: Cell::new(false),
        };
        s.setup().await;
        s
    }

    /// The schedule's time, for `webhooks-out`.
    fn tick(&self) {
        let now = self.clock.now_ms();
        NOW_MS.with(|c| c.set(now));
    }

    async fn setup(&mut self) {
        self.tick();
        // Endpoints first, so that every event of ours is for the healthy one.
        let subset = |rng: &mut Rng| -> Vec<String> {
            if rng.chance(30) {
                return vec!["*".into()];
            }
            let all = topup::webhooks::EVENT_TYPES;
            let mut picked: Vec<String> = vec![];
            for _ in 0..rng.range(2, 4) {
                let t = all[rng.below(all.len() as u64) as usize].to_string();
                if !picked.contains(&t) {
                    picked.push(t);
                }
            }
            picked
        };
        let flaky = subset(&mut self.rng);
        for (kind, events) in [(Receiver::Healthy, vec!["*".to_string()]), (Receiver::Flaky, flaky)] {
            if let Err(e) = self.register(kind, events).await {
                panic!("{}", fail(self.seed, &self.trace, format!("an endpoint not registered: {e}")));
            }
            self.clock.advance(1);
        }
        let limited = self.rng.chance(60).then(|| self.rng.range(1, 6) * C);
        let c = &self.procs[0];
        let done = async {
            c.upsert_account(ACCOUNT, "free", vec![]).await?;
            let a = c.account(ACCOUNT).await?;
            let mut next = a.next(c.now());
            next.payment_method = Some(topup::account::PaymentMethod {
                id: "pm_sim".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                exp_month: 12,
                exp_year: 2030,
            });
            next.stripe_customer_id = Some("cus_sim".into());
            next.pending = Default::default();
            c.store
                .commit(topup::store::Commit::account_only(next, a.version))
                .await
                .map_err(|_| topup::error::ApiError::Upstream)?;
            let input = topup::recharge::AutoRechargeInput {
                enabled: true,
                threshold: Some(5 * C),
                amount: Some(10 * C),
                monthly_max: Some(i64::from(self.monthly_max)),
                ..Default::default()
            };
            c.set_auto_recharge(ACCOUNT, &input).await?;
            c.adjust(ACCOUNT, 12 * C, "opening", &topup::ids::IdempotencyKey::parse("k", "opening")?).await?;
            if let Some(limit) = limited {
                let settings = EntitySettings { monthly_limit: Some(Some(limit)), name: Some("Ann".into()) };
                c.set_entity(ACCOUNT, ENTITIES[0], &settings).await?;
            }
            Ok::<(), topup::error::ApiError>(())
        };
        if let Err(e) = done.await {
            panic!("{}", fail(self.seed, &self.trace, format!("setup failed: {e:?}")));
        }
        self.trace.push(format!("limit of {}: {limited:?}", ENTITIES[0]));
    }

    /// Registers an endpoint whose receiver is `kind`, through the service's own route.
    async fn register(&mut self, kind: Receiver, events: Vec<String>) -> Result<String, String> {
        let n = self.endpoints.len();
        let url = format!("http://127.0.0.1:9/{kind:?}-{n}").to_lowercase();
        let new = topup::webhooks::api::NewEndpoint {
            url,
            events: events.clone(),
            description: None,
            contact_email: Some("ops@acme.example".into()),
        };
        let made = self.admin().create(new, self.clock.now_ms()).await.map_err(|e| e.code().to_string())?;
        let (Some(id), Some(url), Some(secret)) = (made["id"].as_str(), made["url"].as_str(), made["secret"].as_str())
        else {
            return Err(format!("an endpoint answered without its id, url or secret: {made}"));
        };
        if let Ok(mut k) = self.hooks.receivers.kinds.lock() {
            k.insert(url.to_string(), kind);
        }
        self.endpoints.push(Hook {
            id: id.to_string(),
            url: url.to_string(),
            kind,
            secrets: vec![secret.to_string()],
            enables: 0,
        });
        Ok(format!("{kind:?}-{n} for {events:?}"))
    }

    fn admin(&self) -> topup::webhooks::api::WebhookAdmin<&SimHooks, &SimQueue> {
        topup::webhooks::api::WebhookAdmin {
            store: &self.hooks.store,
            queue: &self.hooks.queue,
            settings: self.hooks.settings.clone(),
        }
    }

    fn dispatcher(&self) -> Dispatcher<&SimHooks, &Receivers, &SimQueue, &SimMail> {
        Dispatcher {
            store: &self.hooks.store,
            sender: &self.hooks.receivers,
            queue: &self.hooks.queue,
            channels: &self.hooks.mail,
            settings: self.hooks.settings.clone(),
            operator_email: Some("ops@topup.example".into()),
        }
    }

    fn usage_request(&self, path: &str, body: Value) -> lambda_http::Request {
        request("POST", path, Some(&self.service_token()), Some("application/json"), Some(body.to_string()))
    }

    /// The product backend's token (signed once: it never changes).
    fn service_token(&self) -> String {
        static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TOKEN.get_or_init(|| topup::auth::sign_hs256(&json!({"sub": "backend", "client_id": SERVICE}), &Secret::new(JWT))).clone()
    }

    /// A key: new, or one used before (a retry, with its quantity and entity).
    fn key(&mut self, qty: i64, entity: Option<String>) -> (String, i64, Option<String>) {
        if !self.keys.is_empty() && self.rng.chance(20) {
            let i = self.rng.below(self.keys.len() as u64) as usize;
            return self.keys[i].clone();
        }
        let k = format!("k{}", self.keys.len());
        self.keys.push((k.clone(), qty, entity.clone()));
        (k, qty, entity)
    }

    /// An entity to name, `percent` of the time.
    fn some_entity(&mut self, percent: u64) -> Option<String> {
        let named = self.rng.chance(percent);
        let e = ENTITIES[self.rng.below(ENTITIES.len() as u64) as usize];
        named.then(|| e.to_string())
    }

    fn waive(&mut self, entity: &str) {
        let month = topup::clock::month_of(self.clock_now());
        self.waived.insert((entity.to_string(), month));
    }

    /// A lowered limit: the holds made before it keep what they reserve, into the next month
    /// if they last past its start (600 s at most here).
    fn waive_lowered(&mut self, entity: &str) {
        self.waive(entity);
        let month = topup::clock::month_of(self.clock_now() + 600_000);
        self.waived.insert((entity.to_string(), month));
    }

    /// Faults before a step: at most one, at the step's next call of its kind.
    fn arm(&mut self) -> &'static str {
        match self.rng.below(100) {
            0..=5 => {
                self.store.mem.fail_next_commit.store(true, SeqCst);
                "store down"
            }
            6..=11 => {
                self.store.mem.lose_next_answer.store(true, SeqCst);
                "store answer lost"
            }
            12..=15 => {
                self.stripe.state().down = true;
                "stripe down"
            }
            16..=19 => {
                self.stripe.state().lose = true;
                "stripe answer lost"
            }
            20..=22 => {
                self.hooks.store.down.store(true, SeqCst);
                "webhook store down"
            }
            23..=24 => {
                self.hooks.queue.down.store(true, SeqCst);
                "queue down"
            }
            _ => "",
        }
    }

    fn disarm(&self) {
        self.store.mem.fail_next_commit.store(false, SeqCst);
        self.store.mem.lose_next_answer.store(false, SeqCst);
        self.hooks.store.down.store(false, SeqCst);
        self.hooks.queue.down.store(false, SeqCst);
        let mut s = self.stripe.state();
        s.down = false;
        s.lose = false;
    }

    /// Our events committed since the last look, on their way to `webhooks-out`: published
    /// already, or still in the outbox (the relay may run at any moment). Which left-behind
    /// events a commit's publication sends along depends on their random ids (their shards),
    /// so what is on the bus at a moment is not the seed's alone; what was committed is.
    async fn pull_bus(&mut self) {
        let mut all: Vec<DomainEvent> = self.bus.published.lock().map(|p| p.clone()).unwrap_or_default();
        for shard in 0..topup::events::OUTBOX_SHARDS {
            all.extend(self.store.mem.pending_outbox(shard, 10_000).await.unwrap_or_default());
        }
        let mut fresh: Vec<Value> = vec![];
        for e in all.iter().filter(|e| for_endpoints(e)) {
            if self.bus_taken.insert(e.id.clone()) {
                fresh.push(bus_json(e));
            }
        }
        // In an order of what they say, not of their random ids.
        let said = |v: &Value| {
            let mut d = v["detail"].clone();
            if let Some(o) = d.as_object_mut() {
                o.remove("event_id");
            }
            (v["detail"]["occurred_ms"].as_i64(), v["detail-type"].to_string(), d.to_string())
        };
        fresh.sort_by_cached_key(said);
        self.bus_out.extend(fresh);
    }

    /// An operation of process `proc` for draw `r` (of 100); `None` for the world's steps, or
    /// when there is nothing to act on.
    async fn draw_op(&mut self, r: u64, proc: usize) -> Option<Op> {
        Some(match r {
            0..=21 => {
                let qty = self.rng.range(1, 4_000);
                let entity = self.some_entity(35);
                let (key, qty, entity) = self.key(qty, entity);
                Op::Debit { proc, qty, key, entity }
            }
            22..=28 => {
                let n = self.rng.range(1, 8);
                let events: Vec<Value> = (0..n)
                    .map(|_| {
                        let qty = self.rng.range(1, 2_000);
                        let entity = self.some_entity(30);
                        let (k, qty, entity) = self.key(qty, entity);
                        let mut e = json!({"consumable": "api_calls", "quantity": qty, "idempotency_key": k});
                        if let Some(name) = entity {
                            e["entity"] = json!(name);
                        }
                        e
                    })
                    .collect();
                Op::Batch { proc, events }
            }
            29..=34 => {
                let qty = self.rng.range(1, 3_000);
                let entity = self.some_entity(40);
                let (k, qty, entity) = self.key(qty, entity);
                Op::Hold { proc, qty, key: format!("hold-{k}"), entity }
            }
            35..=39 if !self.holds.is_empty() => {
                let i = self.rng.below(self.holds.len() as u64) as usize;
                let hold = self.holds[i].0.clone();
                // Often more than the hold: what it uses beyond stops at the entity's limit.
                let used = self.rng.range(0, 4_000);
                Op::Settle { proc, hold, used }
            }
            40..=44 => {
                let amount = if self.rng.chance(75) { self.rng.range(1, 8) * C } else { -self.rng.range(1, 4) * C };
                let key = format!("adj{}-{}", self.trace.len(), self.rng.below(3));
                let later = self.rng.range(60_000, 3 * 86_400_000);
                let expires = self.rng.chance(30).then_some(self.clock_now() + later);
                Op::Adjust { proc, amount, key, expires }
            }
            45..=47 => {
                let entity = ENTITIES[self.rng.below(ENTITIES.len() as u64) as usize].to_string();
                let limit = (!self.rng.chance(15)).then(|| self.rng.range(0, 16) * C / 2);
                // A lower limit than the one in force holds for debits after it only.
                let now = self.store.mem.load_entity(ACCOUNT, &entity).await.ok().flatten().and_then(|e| e.monthly_limit);
                if limit.unwrap_or(i64::MAX) < now.unwrap_or(i64::MAX) {
                    self.waive_lowered(&entity);
                }
                Op::Limit { proc, entity, limit }
            }
            48..=54 => Op::BalanceLow { proc },
            55..=56 => Op::Sweep { proc, lease: if self.rng.chance(50) { 0 } else { topup::recharge::LEASE_MS } },
            57..=59 => Op::Expiry { proc },
            60..=61 => Op::Lanes { proc, k: self.rng.range(1, 4) as u32, automatic: self.rng.chance(50) },
            62..=65 => {
                if !self.purchases.is_empty() && self.rng.chance(25) {
                    let i = self.rng.below(self.purchases.len() as u64) as usize;
                    let (key, amount) = self.purchases[i].clone();
                    Op::Purchase { proc, key, amount }
                } else {
                    let key = format!("buy-{}", self.purchases.len());
                    let amount = self.rng.range(5, 60) * 100;
                    self.purchases.push((key.clone(), amount));
                    Op::Purchase { proc, key, amount }
                }
            }
            75..=82 => {
                // Stripe sends what it has; an event may go twice, late and out of order.
                let out = std::mem::take(&mut self.stripe.state().outbox);
                self.queued.extend(out);
                if self.queued.is_empty() {
                    return None;
                }
                let i = self.rng.below(self.queued.len() as u64) as usize;
                let event = if self.rng.chance(20) { self.queued[i].clone() } else { self.queued.remove(i) };
                Op::Stripe { proc, event }
            }
            83..=86 => {
                // The bus sends our events to `webhooks-out`: late, out of order, some twice.
                self.pull_bus().await;
                if self.bus_out.is_empty() {
                    return None;
                }
                let i = self.rng.below(self.bus_out.len() as u64) as usize;
                let event = if self.rng.chance(20) { self.bus_out[i].clone() } else { self.bus_out.remove(i) };
                Op::HooksBus { event }
            }
            87..=89 => {
                // The retry queue hands over up to three follow-ups whose delay has passed.
                let now = self.clock_now();
                let mut q = self.hooks.queue.messages.lock().ok()?;
                let due: Vec<usize> = (0..q.len()).filter(|&i| q[i].due <= now).collect();
                if due.is_empty() {
                    return None;
                }
                let take = 1 + self.rng.below(3.min(due.len() as u64)) as usize;
                let start = self.rng.below(due.len() as u64) as usize;
                let mut picked: Vec<usize> = (0..take).map(|j| due[(start + j) % due.len()]).collect();
                picked.sort_unstable();
                picked.dedup();
                let messages: Vec<Message> = picked.iter().rev().map(|&i| q.remove(i)).collect();
                Op::HooksQueue { messages }
            }
            _ => return None,
        })
    }

    /// Runs one operation; what it answered, and what the schedule does after.
    async fn run(&self, op: &Op) -> Outcome {
        match op {
            Op::Debit { proc, qty, key, entity } => {
                let mut body = json!({"consumable": "api_calls", "quantity": qty, "idempotency_key": key});
                if let Some(name) = entity {
                    body["entity"] = json!(name);
                }
                let req = self.usage_request("/v1/accounts/acme/usage", body);
                let (status, answer) = read(debit::handle(&self.config, &self.procs[*proc], req).await);
                if code(&answer) == "entity_budget_exceeded" {
                    ENTITY_REFUSED.fetch_add(1, Relaxed);
                }
                Outcome {
                    line: format!("debit {qty}{} ({key}) → {status} {}", of(entity), code(&answer)),
                    effects: vec![Effect::Replay { key: key.clone(), status, answer }],
                }
            }
            Op::Batch { proc, events } => {
                let req = self.usage_request("/v1/accounts/acme/usage/batch", json!({"events": events}));
                let (status, answer) = read(debit::handle(&self.config, &self.procs[*proc], req).await);
                let statuses: Vec<u64> = answer["results"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x["status"].as_u64()).collect())
                    .unwrap_or_default();
                Outcome::line(format!("batch of {} {:?} → {status} {statuses:?} {}", events.len(), events.iter().map(|e| e["idempotency_key"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>(), code(&answer)))
            }
            Op::Hold { proc, qty, key, entity } => {
                let r = self.procs[*proc].reserve_as(ACCOUNT, "api_calls", *qty, 600, &ids(key), entity.as_deref()).await;
                let said = match &r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.code().to_string(),
                };
                let line = format!("hold {qty}{} → {said}", of(entity));
                match r {
                    Ok(h) => Outcome {
                        line,
                        effects: vec![Effect::Hold { id: h.hold_id, entity: entity.clone(), units: h.reserved_units }],
                    },
                    Err(e) => {
                        if e.code() == "entity_budget_exceeded" {
                            ENTITY_REFUSED.fetch_add(1, Relaxed);
                        }
                        Outcome::line(line)
                    }
                }
            }
            Op::Settle { proc, hold, used } => {
                let r = self.procs[*proc].settle(ACCOUNT, hold, *used).await;
                Outcome::line(format!("settle {used} → {}", outcome(&r.map(|_| ()))))
            }
            Op::Adjust { proc, amount, key, expires } => {
                let terms = topup::accounts::GrantTerms { expires_at: *expires, ..Default::default() };
                let r = self.procs[*proc].adjust_with(ACCOUNT, *amount, "sim", &terms, &ids(key)).await;
                Outcome::line(format!("adjust {amount} → {}", outcome(&r.map(|_| ()))))
            }
            Op::Limit { proc, entity, limit } => {
                let settings = EntitySettings { monthly_limit: Some(*limit), name: None };
                let r = self.procs[*proc].set_entity(ACCOUNT, entity, &settings).await;
                Outcome::line(format!("limit of {entity} {limit:?} → {}", outcome(&r.map(|_| ()))))
            }
            Op::BalanceLow { proc } => {
                let event = topup_tests::balance_low(ACCOUNT);
                let r = auto_recharge::handle(&self.procs[*proc], &self.stripe, &topup_tests::trigger(&event)).await;
                Outcome::line(format!(
                    "BalanceLow → {}",
                    r.map(|v| v["result"].to_string()).unwrap_or_else(|e| e.code().to_string())
                ))
            }
            Op::Sweep { proc, lease } => {
                let r = self.procs[*proc].sweep(&self.stripe, 100, *lease).await;
                Outcome::line(format!(
                    "sweep → {}",
                    r.map(|s| s.recharges.len().to_string()).unwrap_or_else(|e| e.code().to_string())
                ))
            }
            Op::Expiry { proc } => {
                let r = self.procs[*proc].expire_grants(self.clock_now()).await;
                Outcome::line(format!("expiry run → {}", outcome(&r.map(|_| ()))))
            }
            Op::Lanes { proc, k, automatic } => {
                // An operator fixes the account's lanes (1: none), or lets it spread itself
                // within 1..=max.
                self.operator_lanes.set(true);
                if *automatic {
                    let max = (*k).max(2) * 2;
                    let r = self.procs[*proc].set_lane_bounds(ACCOUNT, 1, max).await;
                    Outcome::line(format!("lanes 1..={max} → {}", outcome(&r.map(|_| ()))))
                } else {
                    let r = self.procs[*proc].set_lanes(ACCOUNT, *k).await;
                    Outcome::line(format!("lanes {k} → {}", outcome(&r.map(|_| ()))))
                }
            }
            Op::Purchase { proc, key, amount } => {
                let body = Some(json!({"amount": amount}).to_string());
                let path = "/v1/accounts/acme/credits/purchases";
                let mut req = request("POST", path, Some(&self.service_token()), Some("application/json"), body);
                req.headers_mut().insert("idempotency-key", key.parse().expect("a header value"));
                let ui = CheckoutUi::Embedded { return_url: "https://app.acme.example/bought".into() };
                let checkout = purchase::Checkout { payments: &self.stripe, ui: &ui };
                let (status, answer) = read(purchase::handle(&self.config, &self.procs[*proc], &checkout, req).await);
                let mut effects = vec![];
                if let (201, Some(cs), Some(_)) =
                    (status, answer["checkout_session_id"].as_str(), answer["client_secret"].as_str())
                {
                    effects.push(Effect::Payable(cs.to_string()));
                }
                let state = answer["status"].as_str().unwrap_or("");
                Outcome { line: format!("purchase {amount} ({key}) → {status} {}{state}", code(&answer)), effects }
            }
            Op::Stripe { proc, event } => {
                let req = signed_event(&event.to_string(), WEBHOOK_SECRET, topup_tests::now_s());
                let (status, _) = read(webhook::handle(&self.secret, &self.procs[*proc], &self.stripe, req).await);
                let effects = if (200..300).contains(&status) { vec![] } else { vec![Effect::Stripe(event.clone())] };
                Outcome { line: format!("webhook {} → {status}", event["type"].as_str().unwrap_or("")), effects }
            }
            Op::HooksBus { event } => {
                let kind = event["detail-type"].as_str().unwrap_or("").to_string();
                let invocation = match serde_json::from_value(event.clone()) {
                    Ok(e) => webhooks_out::Invocation::Bus(e),
                    Err(e) => return Outcome::line(format!("hooks ← {kind}: not an EventBridge event: {e}")),
                };
                match webhooks_out::handle(&self.dispatcher(), &invocation, sim_clock).await {
                    Ok(r) => Outcome::line(format!(
                        "hooks ← {kind} → {} sent, {} ok, {} skipped",
                        r["attempted"], r["succeeded"], r["skipped"]
                    )),
                    Err(_) => Outcome { line: format!("hooks ← {kind} → failed"), effects: vec![Effect::Bus(event.clone())] },
                }
            }
            Op::HooksQueue { messages } => {
                let records: Vec<Value> = messages
                    .iter()
                    .map(|m| json!({"messageId": m.id.to_string(), "body": json!(m.follow_up).to_string()}))
                    .collect();
                let invocation = match serde_json::from_value(json!({"Records": records})) {
                    Ok(q) => webhooks_out::Invocation::Queue(q),
                    Err(e) => return Outcome::line(format!("hooks ← follow-ups: not an SQS batch: {e}")),
                };
                let failed: HashSet<String> = match webhooks_out::handle(&self.dispatcher(), &invocation, sim_clock).await {
                    Ok(v) => v["batchItemFailures"]
                        .as_array()
                        .map(|f| f.iter().filter_map(|x| x["itemIdentifier"].as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                    Err(_) => messages.iter().map(|m| m.id.to_string()).collect(),
                };
                HOOK_RETRIED.fetch_add(messages.len(), Relaxed);
                let again: Vec<Message> = messages.iter().filter(|m| failed.contains(&m.id.to_string())).cloned().collect();
                Outcome {
                    line: format!("hooks ← {} follow-ups → {} again", messages.len(), again.len()),
                    effects: vec![Effect::Queue(again)],
                }
            }
        }
    }

    /// Does what an operation left to do; its line.
    fn after(&mut self, out: Outcome) -> Result<String, String> {
        for e in out.effects {
            match e {
                Effect::Replay { key, status, answer } => self.check_replay(&key, status, &answer)?,
                Effect::Hold { id, entity, units } => self.holds.push((id, entity, units)),
                Effect::Stripe(event) => self.queued.push(event),
                Effect::Payable(cs) => {
                    if let Some(x) = self.stripe.state().sessions.get_mut(&cs) {
                        x.payable = true;
                    }
                }
                Effect::Bus(event) => self.bus_out.push(event),
                Effect::Queue(mut again) => {
                    // Received again after the visibility timeout; SQS may also hand over one
                    // that was handled (at least once).
                    let due = self.clock_now() + 30_000;
                    if self.rng.chance(10) {
                        if let Some(m) = self.hooks.queue.messages.lock().ok().and_then(|q| q.first().cloned()) {
                            again.push(m);
                        }
                    }
                    if let Ok(mut q) = self.hooks.queue.messages.lock() {
                        q.extend(again.into_iter().map(|m| Message { due, ..m }));
                    }
                }
            }
        }
        Ok(out.line)
    }

    async fn step(&mut self, i: usize) -> Result<(), String> {
        self.tick();
        let fault = if i > 0 { self.arm() } else { "" };
        if i > 0 && self.rng.chance(CROWD_PERCENT) {
            // A crowd: each of the three processes debits the account again and again, one
            // request after another as a Lambda environment serves them, all three at once:
            // they lose races to each other, and the account may spread itself (rules §21).
            let mut bursts: Vec<Vec<Op>> = vec![vec![], vec![], vec![]];
            for (p, burst) in bursts.iter_mut().enumerate() {
                for _ in 0..self.rng.range(2, 6) {
                    let r = self.rng.below(22);
                    if let Some(op) = self.draw_op(r, p).await {
                        burst.push(op);
                    }
                }
            }
            let mut order = Rng(self.rng.next());
            let this = &*self;
            let running: Vec<Running<'_, Vec<Outcome>>> = bursts
                .iter()
                .map(|burst| {
                    Box::pin(async move {
                        let mut outs = vec![];
                        for op in burst {
                            outs.push(this.run(op).await);
                        }
                        outs
                    }) as Running<'_, Vec<Outcome>>
                })
                .collect();
            let outs = interleave(&mut order, running).await;
            GROUPS.fetch_add(1, Relaxed);
            let mut lines = vec![];
            for out in outs.into_iter().flatten() {
                lines.push(self.after(out)?);
            }
            return self.finish(i, fault, format!("a crowd: {}", lines.join(" ‖ "))).await;
        }
        if i > 0 && self.rng.chance(CONCURRENT_PERCENT) {
            // Two or three operations from different processes, at once.
            let n = if self.rng.chance(30) { 3 } else { 2 };
            let first = self.rng.below(3) as usize;
            let mut ops = vec![];
            for _ in 0..12 {
                if ops.len() == n {
                    break;
                }
                let r = self.rng.below(90);
                if let Some(op) = self.draw_op(r, (first + ops.len()) % 3).await {
                    ops.push(op);
                }
            }
            // Two limits of one entity at once: which is set last is the race's to say.
            let limits: Vec<&String> = ops.iter().filter_map(|o| if let Op::Limit { entity, .. } = o { Some(entity) } else { None }).collect();
            let twice: Vec<String> =
                limits.iter().filter(|e| limits.iter().filter(|x| x == e).count() > 1).map(|e| e.to_string()).collect();
            for e in twice {
                self.waive_lowered(&e);
            }
            let mut order = Rng(self.rng.next());
            let running: Vec<Running<'_, Outcome>> =
                ops.iter().map(|op| Box::pin(self.run(op)) as Running<'_, Outcome>).collect();
            let outs = interleave(&mut order, running).await;
            GROUPS.fetch_add(1, Relaxed);
            let mut lines = vec![];
            for out in outs {
                lines.push(self.after(out)?);
            }
            return self.finish(i, fault, format!("at once: {}", lines.join(" ‖ "))).await;
        }
        let r = self.rng.below(100);
        let proc = self.rng.below(3) as usize;
        let line = match self.draw_op(r, proc).await {
            Some(op) => {
                let out = self.run(&op).await;
                self.after(out)?
            }
            None => self.world_step(r).await,
        };
        self.finish(i, fault, line).await
    }

    /// What happens outside the processes: customers, Stripe, operators, the clock.
    async fn world_step(&mut self, r: u64) -> String {
        match r {
            66..=67 => self.checkout_step(),
            68..=70 => self.settle_step(),
            71..=72 => self.refund_step(),
            73..=74 => self.dispute_step(),
            90 => self.hooks_admin_step().await,
            91 => {
                let now = self.clock_now();
                match topup::events::drain_outbox(&*self.store, &*self.bus, now, None).await {
                    Ok(d) => format!("outbox relay → {} published", d.delivered),
                    Err(e) => format!("outbox relay → {e}"),
                }
            }
            92..=99 => {
                let ms = match self.rng.below(10) {
                    0..=5 => self.rng.range(1, 120_000),
                    6..=8 => self.rng.range(3_600_000, 2 * 86_400_000),
                    _ => self.rng.range(10, 35) * 86_400_000,
                };
                self.clock.advance(ms);
                format!("clock +{ms} ms")
            }
            _ => "nothing to do".into(),
        }
    }

    /// A customer at a Checkout Session handed to them: pays by card, pays by a bank debit
    /// that settles later, leaves it to expire, or only looks.
    fn checkout_step(&mut self) -> String {
        let pick = self.rng.next();
        let how = self.rng.below(100);
        let mut s = self.stripe.state();
        let open: Vec<String> = s.sessions.values().filter(|x| x.status == "open" && x.payable).map(|x| x.id.clone()).collect();
        if open.is_empty() {
            return "checkout: nobody paying".into();
        }
        let cs = open[(pick % open.len() as u64) as usize].clone();
        match how {
            0..=54 => {
                let pi = StripeModel::session_intent(&mut s, &cs, "succeeded");
                if let Some(x) = s.sessions.get_mut(&cs) {
                    x.status = "complete";
                    x.paid = true;
                }
                StripeModel::announce_session(&mut s, &cs, "checkout.session.completed");
                if let Some(pi) = pi {
                    StripeModel::announce(&mut s, &pi, "payment_intent.succeeded");
                }
                format!("checkout: {cs} paid by card")
            }
            55..=74 => {
                StripeModel::session_intent(&mut s, &cs, "processing");
                if let Some(x) = s.sessions.get_mut(&cs) {
                    x.status = "complete";
                }
                StripeModel::announce_session(&mut s, &cs, "checkout.session.completed");
                format!("checkout: {cs} paid by bank debit, settling")
            }
            75..=89 => {
                if let Some(x) = s.sessions.get_mut(&cs) {
                    x.status = "expired";
                }
                StripeModel::announce_session(&mut s, &cs, "checkout.session.expired");
                format!("checkout: {cs} expired")
            }
            _ => format!("checkout: {cs} looked at"),
        }
    }

    /// The customer completes 3-D Secure, a processing payment settles, or a failed one not yet
    /// cancelled is confirmed again (processing once more), so that its failure event may
    /// arrive while it is processing. A purchase's bank debit settles its session.
    fn settle_step(&mut self) -> String {
        let pick = self.rng.next();
        let pays = self.rng.chance(60);
        let mut s = self.stripe.state();
        let open: Vec<String> = s
            .intents
            .values()
            .filter(|i| match i.session() {
                Some(_) => i.status == "processing",
                None => matches!(i.status, "requires_action" | "processing" | "requires_payment_method"),
            })
            .map(|i| i.id.clone())
            .collect();
        if open.is_empty() {
            return "stripe: nothing to settle".into();
        }
        let pi = open[(pick % open.len() as u64) as usize].clone();
        if s.intents.get(&pi).is_some_and(|i| i.session().is_some()) {
            StripeModel::settle_session(&mut s, &pi, pays);
            return format!("stripe: {pi} settled, paid {pays}");
        }
        if s.intents.get(&pi).is_some_and(|i| i.status == "requires_payment_method") {
            if let Some(i) = s.intents.get_mut(&pi) {
                i.status = "processing";
            }
            return format!("stripe: {pi} confirmed again");
        }
        if let Some(intent) = s.intents.get_mut(&pi) {
            intent.status = if pays { "succeeded" } else { "requires_payment_method" };
        }
        let kind = if pays { "payment_intent.succeeded" } else { "payment_intent.payment_failed" };
        StripeModel::announce(&mut s, &pi, kind);
        format!("stripe: {pi} {kind}")
    }

    /// A refund at Stripe of a payment that took money.
    fn refund_step(&mut self) -> String {
        let pick = self.rng.next();
        let part = self.rng.range(1, 1_000);
        let mut s = self.stripe.state();
        let paid: Vec<String> = s
            .intents
            .values()
            .filter(|i| i.status == "succeeded" && i.refunded < i.amount)
            .map(|i| i.id.clone())
            .collect();
        if paid.is_empty() {
            return "stripe: nothing to refund".into();
        }
        let pi = paid[(pick % paid.len() as u64) as usize].clone();
        let charge = s.intents.get_mut(&pi).map(|i| {
            i.refunded = (i.refunded + part).min(i.amount);
            json!({"id": format!("ch_{pi}"), "object": "charge", "payment_intent": pi, "amount": i.amount,
                   "amount_refunded": i.refunded, "metadata": i.metadata})
        });
        if let Some(ch) = charge {
            StripeModel::push(&mut s, "charge.refunded", ch);
        }
        format!("stripe: refund {part} of {pi}")
    }

    /// A dispute at Stripe of a payment that took money: opened for part or all of it, or an
    /// open one closed, won or lost.
    fn dispute_step(&mut self) -> String {
        let won = self.rng.chance(50);
        let close = self.rng.chance(50);
        let pick = self.rng.next();
        let part = self.rng.range(1, 1_000);
        let mut s = self.stripe.state();
        let paid: Vec<String> = s.intents.values().filter(|i| i.status == "succeeded").map(|i| i.id.clone()).collect();
        if paid.is_empty() {
            return "stripe: nothing to dispute".into();
        }
        let pi = paid[(pick % paid.len() as u64) as usize].clone();
        let Some(intent) = s.intents.get_mut(&pi) else { return "stripe: nothing to dispute".into() };
        let open = intent.disputes.iter().position(|d| d.2);
        let (kind, id, amount, status) = match open {
            Some(n) if close => {
                intent.disputes[n].2 = false;
                let (id, amount, _) = intent.disputes[n].clone();
                ("charge.dispute.closed", id, amount, if won { "won" } else { "lost" })
            }
            _ => {
                let id = format!("dp_{pi}_{}", intent.disputes.len());
                let amount = part.min(intent.amount);
                intent.disputes.push((id.clone(), amount, true));
                ("charge.dispute.created", id, amount, "needs_response")
            }
        };
        let object = json!({"id": id, "object": "dispute", "amount": amount, "currency": "usd",
                            "charge": format!("ch_{pi}"), "payment_intent": pi, "status": status});
        StripeModel::push(&mut s, kind, object);
        format!("stripe: {kind} {id} {amount} {status}")
    }

    /// An operator registers an endpoint (its receiver flaky or down), deletes or enables one
    /// that is not the healthy one, or rotates a secret.
    async fn hooks_admin_step(&mut self) -> String {
        let what = self.rng.below(4);
        let pick = self.rng.next();
        let flaky = self.rng.chance(50);
        let events = if self.rng.chance(50) { vec!["*".to_string()] } else { vec!["balance.low".into(), "purchase.succeeded".into()] };
        let others: Vec<usize> = (0..self.endpoints.len()).filter(|&i| self.endpoints[i].kind != Receiver::Healthy).collect();
        match what {
            0 if self.endpoints.len() < 5 => {
                let kind = if flaky { Receiver::Flaky } else { Receiver::Down };
                match self.register(kind, events).await {
                    Ok(line) => format!("endpoint registered: {line}"),
                    Err(e) => format!("endpoint not registered: {e}"),
                }
            }
            1 | 2 if !others.is_empty() => {
                let i = others[(pick % others.len() as u64) as usize];
                let id = self.endpoints[i].id.clone();
                let r = if what == 1 {
                    self.admin().delete(&id).await
                } else {
                    self.endpoints[i].enables += 1;
                    self.admin().enable(&id).await
                };
                format!("endpoint {i} {} → {}", if what == 1 { "deleted" } else { "enabled" }, outcome(&r.map(|_| ())))
            }
            _ => {
                if self.endpoints.is_empty() {
                    return "no endpoint".into();
                }
                let i = (pick % self.endpoints.len() as u64) as usize;
                let id = self.endpoints[i].id.clone();
                match self.admin().rotate(&id, self.clock_now()).await {
                    Ok(v) => {
                        if let Some(secret) = v["secret"].as_str() {
                            self.endpoints[i].secrets.push(secret.to_string());
                        }
                        format!("endpoint {i} secret rotated")
                    }
                    Err(e) => format!("endpoint {i} secret not rotated: {}", e.code()),
                }
            }
        }
    }

    /// Ends step `i`: faults disarmed, the clock a millisecond on (grants made in different
    /// steps never tie), the step and the balance after it traced.
    async fn finish(&mut self, i: usize, fault: &str, line: String) -> Result<(), String> {
        self.disarm();
        self.clock.advance(1);
        let account = self.procs[0].account(ACCOUNT).await.ok();
        let balance = account.as_ref().map_or(-1, |a| a.balance.get());
        // A count the account changed by itself (rules §21), not an operator's.
        let k = account.as_ref().map_or(1, |a| topup::lanes::spread::count(a.spread.lanes.as_ref()));
        if !self.operator_lanes.replace(false) {
            if k > self.lanes_seen {
                WIDENED.fetch_add(1, Relaxed);
            } else if k < self.lanes_seen {
                NARROWED.fetch_add(1, Relaxed);
            }
        }
        self.lanes_seen = k;
        self.trace.push(format!("{i}: [{fault}] {line} · balance {balance}"));
        Ok(())
    }

    fn clock_now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A usage key that applied answers its first result ever after, whatever happened since.
    /// (A refusal writes nothing, so a retry of a refused key is decided again.)
    fn check_replay(&mut self, key: &str, status: u16, answer: &Value) -> Result<(), String> {
        if status >= 500 {
            return Ok(());
        }
        match self.first.get(key) {
            None if status == 200 => {
                self.first.insert(key.to_string(), (status, answer.clone()));
                Ok(())
            }
            None => Ok(()),
            Some((s, a)) if *s == status && a == answer => Ok(()),
            Some((s, a)) => Err(format!("key {key} answered {status} {answer}, first {s} {a}")),
        }
    }

    /// Every event the engine wrote, published or still in the outbox, once each.
    async fn events(&self) -> Result<Vec<DomainEvent>, String> {
        let mut all: BTreeMap<String, DomainEvent> = BTreeMap::new();
        if let Ok(p) = self.bus.published.lock() {
            for e in p.iter() {
                all.insert(e.id.clone(), e.clone());
            }
        }
        for shard in 0..topup::events::OUTBOX_SHARDS {
            let pending = self.store.pending_outbox(shard, 10_000).await.map_err(|e| format!("outbox: {e:?}"))?;
            for e in pending {
                all.insert(e.id.clone(), e);
            }
        }
        Ok(all.into_values().collect())
    }

    /// rules §7, §12: a payment is credited at most once; refunds and disputes of a payment
    /// never take back more credits than it credited (a won dispute's return counts against
    /// what its dispute took).
    async fn check_payments(&self, events: &[DomainEvent], settled: bool) -> Result<(), String> {
        let mut credited: HashMap<String, i64> = HashMap::new();
        let mut times: HashMap<String, usize> = HashMap::new();
        let mut taken: HashMap<String, i64> = HashMap::new();
        for e in events {
            match &e.event {
                Event::CreditsAdded(r) if matches!(r.kind, EntryKind::Purchase | EntryKind::AutoRecharge) => {
                    *credited.entry(r.payment_id.clone()).or_default() += r.credits;
                    *times.entry(r.payment_id.clone()).or_default() += 1;
                }
                Event::RefundCreated(r) => *taken.entry(r.payment_id.clone()).or_default() += r.taken,
                Event::PaymentDisputed(d) => {
                    if settled {
                        DISPUTED.fetch_add(1, Relaxed);
                    }
                    *taken.entry(d.payment_id.clone()).or_default() += d.taken
                }
                Event::DisputeClosed(d) if d.status == "won" => *taken.entry(d.payment_id.clone()).or_default() -= d.taken,
                _ => {}
            }
        }
        if let Some((pi, n)) = times.iter().find(|(_, n)| **n > 1) {
            return Err(format!("payment {pi} credited {n} times"));
        }
        for (pi, t) in &taken {
            let c = credited.get(pi).copied().unwrap_or(0);
            if *t > c {
                return Err(format!("refunds and disputes took {t} back from {pi}, which credited {c}"));
            }
        }
        Ok(())
    }

    /// rules §17: each entity's spend this month is what its entries of the month drew, and
    /// passes its limit only where §17 allows it (`waived`).
    async fn check_entities(&self, ledger: &[LedgerEntry], now: i64) -> Result<(), String> {
        let entities = self.store.mem.entities(ACCOUNT).await.map_err(|e| format!("entities: {e:?}"))?;
        let differences = topup::reconcile::entity_differences(ACCOUNT, &entities, ledger);
        if !differences.is_empty() {
            return Err(format!("entity reconciliation: {differences:?}"));
        }
        let month = topup::clock::month_of(now);
        let mut drawn: HashMap<&str, i64> = HashMap::new();
        for e in ledger.iter().filter(|e| e.kind == EntryKind::Consumption) {
            if let Some(name) = e.entity.as_deref() {
                if topup::clock::month_of(e.created_at) == month {
                    *drawn.entry(name).or_default() -= e.amount.get();
                }
            }
        }
        for (name, d) in &drawn {
            if !entities.iter().any(|e| e.entity == *name) {
                return Err(format!("entity {name} drew {d} this month and has no record"));
            }
        }
        for e in &entities {
            let this = e.at(now);
            let d = drawn.get(e.entity.as_str()).copied().unwrap_or(0);
            if this.spent != d {
                return Err(format!("entity {} records {} spent this month; its entries drew {d}", e.entity, this.spent));
            }
            let Some(limit) = e.monthly_limit else { continue };
            let spent = e.spent_this_month(now);
            if self.waived.contains(&(e.entity.clone(), month.clone())) {
                continue;
            }
            if spent > limit {
                return Err(format!("entity {} spent {spent} this month (holds included), past its limit {limit}", e.entity));
            }
            if limit > 0 && spent * 5 >= limit * 4 {
                ENTITY_AT_LIMIT.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// rules §5, §7: a purchase is credited only for a session Stripe says was paid, and once;
    /// with everything delivered, every paid session's purchase has succeeded.
    async fn check_purchases(&self, events: &[DomainEvent], ledger: &[LedgerEntry], settled: bool) -> Result<(), String> {
        let sessions: Vec<Session> = self.stripe.state().sessions.values().cloned().collect();
        let mut paid_by: HashMap<String, &Session> = HashMap::new();
        for x in sessions.iter().filter(|x| x.paid) {
            if let Some(pi) = &x.payment_intent {
                paid_by.insert(pi.clone(), x);
            }
        }
        let mut credited: HashMap<String, usize> = HashMap::new();
        for e in events {
            if let Event::CreditsAdded(r) = &e.event {
                if r.kind == EntryKind::Purchase {
                    if !paid_by.get(&r.payment_id).is_some_and(|x| x.reference == r.reference) {
                        return Err(format!("purchase {} credited for {}, which paid no session of it", r.reference, r.payment_id));
                    }
                    *credited.entry(r.reference.clone()).or_default() += 1;
                }
            }
        }
        if let Some((p, n)) = credited.iter().find(|(_, n)| **n > 1) {
            return Err(format!("purchase {p} credited {n} times"));
        }
        let entries = ledger.iter().filter(|e| e.kind == EntryKind::Purchase).count();
        if entries != credited.values().sum::<usize>() {
            return Err(format!("{entries} purchase entries for {} purchases credited", credited.len()));
        }
        if !settled {
            return Ok(());
        }
        PURCHASED.fetch_add(entries, Relaxed);
        for (key, _) in &self.purchases {
            let id = topup::purchases::purchase_id(ACCOUNT, Some(&ids(key)));
            let Some(p) = self.store.mem.load_purchase(ACCOUNT, id.as_str()).await.map_err(|e| format!("{e:?}"))? else {
                continue;
            };
            let paid = sessions.iter().any(|x| x.paid && x.reference == p.purchase_id.as_str());
            let succeeded = p.status == PurchaseStatus::Succeeded;
            if paid != succeeded || credited.get(p.purchase_id.as_str()).copied().unwrap_or(0) != usize::from(paid) {
                return Err(format!(
                    "purchase {} is {:?} and credited {:?} times; its session paid: {paid}",
                    p.purchase_id,
                    p.status,
                    credited.get(p.purchase_id.as_str())
                ));
            }
        }
        Ok(())
    }

    /// rules §15 on what the receivers got and the deliveries say.
    async fn check_hooks(&self, settled: bool) -> Result<(), String> {
        let tainted = self.hooks.store.tainted.lock().map(|t| t.clone()).unwrap_or_default();
        let posts = self.hooks.receivers.posts.lock().map_err(|_| "posts poisoned".to_string())?;
        for p in posts.iter().skip(self.verified.get()) {
            let secrets = self.endpoints.iter().find(|h| h.url == p.url).map(|h| h.secrets.as_slice()).unwrap_or(&[]);
            if !secrets.iter().any(|k| topup::webhooks::verify(k, &p.header, &p.body, p.at_s, 300)) {
                return Err(format!("a POST to {} does not verify with its endpoint's secrets", p.url));
            }
        }
        self.verified.set(posts.len());
        let mut got: HashMap<(&str, &str), (usize, bool)> = HashMap::new();
        for p in posts.iter() {
            let g = got.entry((p.url.as_str(), p.event_id.as_str())).or_default();
            g.0 += 1;
            g.1 |= p.ok;
        }
        let mail = self.hooks.mail.sent.lock().map(|m| m.clone()).unwrap_or_default();
        for h in &self.endpoints {
            let (deliveries, _) = self.hooks.store.mem.deliveries(&h.id, 100_000, None).await.map_err(|e| format!("{e:?}"))?;
            for d in &deliveries {
                let (n, ok) = got.get(&(h.url.as_str(), d.event_id.as_str())).copied().unwrap_or_default();
                if d.attempts - d.retry_base.min(d.attempts) > self.max_attempts {
                    return Err(format!("a delivery to {} made {} attempts; its schedule fits {}", h.url, d.attempts, self.max_attempts));
                }
                if n > d.attempts as usize {
                    return Err(format!("{} got {n} POSTs of an event whose delivery counts {} attempts", h.url, d.attempts));
                }
                if d.status == "succeeded" && !ok {
                    return Err(format!("a delivery to {} succeeded that its receiver never answered 200", h.url));
                }
                if settled && d.status == "pending" {
                    return Err(format!("a delivery to {} still pending with everything delivered", h.url));
                }
            }
            if h.kind == Receiver::Healthy {
                for ((url, event), (n, _)) in &got {
                    if *url == h.url && *n > 1 && !tainted.contains(&(h.id.clone(), event.to_string())) {
                        return Err(format!("the healthy receiver got one event {n} times"));
                    }
                }
            }
            let told = mail.iter().filter(|m| m.contains(&h.id)).count();
            if told > 1 + h.enables {
                return Err(format!("the owner of {} was told {told} times it was disabled, enabled {}", h.url, h.enables));
            }
        }
        if settled {
            let ours: HashSet<String> = match self.bus.published.lock() {
                Ok(p) => p.iter().filter(|e| for_endpoints(e)).map(|e| e.id.clone()).collect(),
                Err(_) => HashSet::new(),
            };
            for h in self.endpoints.iter().filter(|h| h.kind == Receiver::Healthy) {
                for ev in &ours {
                    let (n, ok) = got.get(&(h.url.as_str(), ev.as_str())).copied().unwrap_or_default();
                    if n == 0 || !ok {
                        return Err(format!("event {ev} never reached the healthy endpoint, with everything delivered"));
                    }
                }
            }
        }
        Ok(())
    }

    /// rules §10–§17 on what is stored, what Stripe holds and what webhooks out did.
    async fn check(&self, settled: bool) -> Result<(), String> {
        let events = self.events().await?;
        self.check_payments(&events, settled).await?;
        let c = &self.procs[0];
        let a = c.account(ACCOUNT).await.map_err(|e| format!("account: {e:?}"))?;
        let ledger = c.whole_ledger(ACCOUNT).await.map_err(|e| format!("ledger: {e:?}"))?;
        let mut differences = topup::reconcile::ledger_differences(&a, &ledger);
        if a.lanes_ever() > 0 {
            // Each lane a ledger of its own, and the account with its lanes as a whole.
            let mut lanes = Vec::new();
            for lane in c.lanes_of(&a).await.map_err(|e| format!("lanes: {e:?}"))? {
                let own = c.whole_ledger(&lane.id).await.map_err(|e| format!("lane ledger: {e:?}"))?;
                differences.extend(topup::reconcile::ledger_differences(&lane, &own));
                if lane.balance.get() > 0 {
                    ON_LANES.fetch_add(1, Relaxed);
                }
                if lane.balance.get() < 0 {
                    return Err(format!("lane {} at {}", lane.id, lane.balance.get()));
                }
                lanes.push((lane, own));
            }
            differences.extend(topup::lanes::lane_differences(&a, &ledger, &lanes));
        }
        if !differences.is_empty() {
            return Err(format!("reconciliation: {differences:?}"));
        }
        let now = c.now();
        if a.balance.get() < 0 || a.held(now).get() > a.balance.get() {
            return Err(format!("balance {} with {} held", a.balance.get(), a.held(now).get()));
        }
        self.check_entities(&ledger, now).await?;
        self.check_purchases(&events, &ledger, settled).await?;
        let intents: Vec<Intent> = self.stripe.state().intents.values().cloned().collect();
        let month = topup::clock::month_of(now);
        let recharges: Vec<&Intent> = intents.iter().filter(|i| i.metadata.contains_key("topup_recharge_id")).collect();
        let mut per_claim: HashMap<&str, usize> = HashMap::new();
        for i in &recharges {
            *per_claim.entry(i.metadata["topup_recharge_id"].as_str()).or_default() += 1;
        }
        if per_claim.values().any(|n| *n > 1) {
            return Err(format!("a recharge was charged twice: {per_claim:?}"));
        }
        let paid: Vec<&&Intent> = recharges.iter().filter(|i| i.status == "succeeded").collect();
        let credited = ledger.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count();
        if credited > paid.len() {
            return Err(format!("{credited} recharges credited for {} paid", paid.len()));
        }
        if settled && credited != paid.len() {
            return Err(format!("{credited} recharges credited for {} paid, with everything delivered", paid.len()));
        }
        let ar = &a.auto_recharge;
        if settled {
            RECHARGED.fetch_add(credited, Relaxed);
            FAILED_RECHARGES.fetch_add(recharges.iter().filter(|i| i.status == "canceled").count(), Relaxed);
        }
        if !ar.kept.is_empty() {
            KEPT.fetch_add(1, Relaxed);
        }
        if ar.used_month == month {
            if ar.used_this_month > self.monthly_max {
                return Err(format!("the month's count {} is past its cap {}", ar.used_this_month, self.monthly_max));
            }
            // Every recharge claimed this month that took money is in the month's count.
            let records: Vec<RechargeRecord> = {
                let mut v = vec![];
                for i in &paid {
                    let rid = &i.metadata["topup_recharge_id"];
                    if let Ok(Some(r)) = self.store.mem.load_recharge(ACCOUNT, rid).await {
                        v.push(r);
                    }
                }
                v
            };
            let this_month: Vec<_> = records.iter().filter(|r| r.month == month).collect();
            let money: i64 = this_month.iter().map(|r| r.charge_cents).sum();
            if this_month.len() > ar.used_this_month as usize || money > ar.spent_this_month_cents {
                return Err(format!(
                    "{} recharges took {money} this month; the month counts {} and {}",
                    this_month.len(),
                    ar.used_this_month,
                    ar.spent_this_month_cents
                ));
            }
        }
        self.check_hooks(false).await
    }

    /// Everything on its way arrives, with no more faults.
    async fn quiesce(&mut self) -> Result<(), String> {
        self.disarm();
        for _ in 0..8 {
            // Payments left open settle (the customer never authenticates: they fail; a bank
            // debit goes through); sessions left open expire.
            {
                let mut s = self.stripe.state();
                let open: Vec<String> = s
                    .intents
                    .values()
                    .filter(|i| i.status == "requires_action" || i.status == "processing")
                    .map(|i| i.id.clone())
                    .collect();
                for pi in open {
                    let pays = s.intents.get(&pi).is_some_and(|i| i.status == "processing");
                    if s.intents.get(&pi).is_some_and(|i| i.session().is_some()) {
                        StripeModel::settle_session(&mut s, &pi, pays);
                        continue;
                    }
                    if let Some(i) = s.intents.get_mut(&pi) {
                        i.status = if pays { "succeeded" } else { "requires_payment_method" };
                    }
                    let kind = if pays { "payment_intent.succeeded" } else { "payment_intent.payment_failed" };
                    StripeModel::announce(&mut s, &pi, kind);
                }
                let open: Vec<String> = s.sessions.values().filter(|x| x.status == "open").map(|x| x.id.clone()).collect();
                for cs in open {
                    if let Some(x) = s.sessions.get_mut(&cs) {
                        x.status = "expired";
                    }
                    StripeModel::announce_session(&mut s, &cs, "checkout.session.expired");
                }
            }
            let _ = self.procs[0].sweep(&self.stripe, 100, 0).await;
            let out = std::mem::take(&mut self.stripe.state().outbox);
            self.queued.extend(out);
            let queued = std::mem::take(&mut self.queued);
            for event in &queued {
                let out = self.run(&Op::Stripe { proc: 0, event: event.clone() }).await;
                self.after(out)?;
            }
            if queued.is_empty() && self.stripe.state().outbox.is_empty() {
                break;
            }
        }
        if !self.queued.is_empty() {
            return Err(format!("{} Stripe events still fail with nothing injected", self.queued.len()));
        }
        // Lanes taken away: every lane's credits come home.
        let c = &self.procs[0];
        c.set_lanes(ACCOUNT, 1).await.map_err(|e| format!("lanes 1 at the end: {e:?}"))?;
        let a = c.account(ACCOUNT).await.map_err(|e| format!("account: {e:?}"))?;
        for lane in c.lanes_of(&a).await.map_err(|e| format!("lanes: {e:?}"))? {
            if lane.balance.get() != 0 {
                return Err(format!("lane {} still holds {} with lanes taken away", lane.id, lane.balance.get()));
            }
        }
        Ok(())
    }

    /// Our events all reach `webhooks-out`, and the retry queue hands over every follow-up as it
    /// falls due (the clock moving on to it), until none is left.
    async fn quiesce_hooks(&mut self) -> Result<(), String> {
        self.disarm();
        self.tick();
        let now = self.clock_now();
        topup::events::drain_outbox(&*self.store, &*self.bus, now, None).await.map_err(|e| format!("outbox: {e:?}"))?;
        self.pull_bus().await;
        for _ in 0..5 {
            for event in std::mem::take(&mut self.bus_out) {
                let out = self.run(&Op::HooksBus { event }).await;
                self.after(out)?;
            }
        }
        if !self.bus_out.is_empty() {
            return Err(format!("{} events still fail at webhooks-out with nothing injected", self.bus_out.len()));
        }
        for _ in 0..2_000 {
            let next = self.hooks.queue.messages.lock().ok().and_then(|q| q.iter().map(|m| m.due).min());
            let Some(due) = next else { return Ok(()) };
            let now = self.clock_now();
            if due > now {
                self.clock.advance(due - now);
            }
            self.tick();
            let now = self.clock_now();
            let ready: Vec<Message> = match self.hooks.queue.messages.lock() {
                Ok(mut q) => {
                    let (ready, later): (Vec<Message>, Vec<Message>) = q.drain(..).partition(|m| m.due <= now);
                    *q = later;
                    ready
                }
                Err(_) => vec![],
            };
            for batch in ready.chunks(10) {
                let out = self.run(&Op::HooksQueue { messages: batch.to_vec() }).await;
                self.after(out)?;
            }
        }
        Err("follow-ups still queued after 2,000 rounds".into())
    }

    fn hash(&self) -> String {
        let mut h = Sha256::new();
        for line in &self.trace {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn ids(k: &str) -> topup::ids::IdempotencyKey {
    match topup::ids::IdempotencyKey::parse("idempotency_key", k) {
        Ok(k) => k,
        Err(e) => panic!("a simulator key: {e:?}"),
    }
}

fn code(answer: &Value) -> String {
    answer["error"]["code"].as_str().unwrap_or("").to_string()
}

fn outcome(r: &Result<(), topup::error::ApiError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.code().to_string(),
    }
}

/// " of <entity>", when one is named.
fn of(entity: &Option<String>) -> String {
    entity.as_ref().map(|e| format!(" of {e}")).unwrap_or_default()
}

/// Runs schedule `seed` to its end; its trace's hash and how many steps ran operations at
/// once, or what broke.
async fn run(seed: u64) -> Result<(String, usize), String> {
    let mut s = Schedule::new(seed).await;
    s.check(false).await.map_err(|e| fail(seed, &s.trace, e))?;
    for i in 0..STEPS {
        s.step(i).await.map_err(|e| fail(seed, &s.trace, e))?;
        s.check(false).await.map_err(|e| fail(seed, &s.trace, e))?;
    }
    s.quiesce().await.map_err(|e| fail(seed, &s.trace, e))?;
    s.check(true).await.map_err(|e| fail(seed, &s.trace, e))?;
    s.quiesce_hooks().await.map_err(|e| fail(seed, &s.trace, e))?;
    s.check_hooks(true).await.map_err(|e| fail(seed, &s.trace, e))?;
    if std::env::var("TOPUP_SIM_TRACE").is_ok() {
        println!("seed {seed}:\n{}", s.trace.join("\n"));
    }
    let at_once = s.trace.iter().filter(|l| l.contains("] at once: ")).count();
    Ok((s.hash(), at_once))
}

/// One schedule on a single-threaded runtime in paused (virtual) time: the same seed, the
/// same interleaving of every future.
fn run_blocking(seed: u64) -> Result<(String, usize), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(run(seed))
}

/// The base seed: `TOPUP_SIM_BASE`, else from the commit under test, else fixed.
fn base_seed() -> u64 {
    if let Some(b) = std::env::var("TOPUP_SIM_BASE").ok().and_then(|v| v.parse().ok()) {
        return b;
    }
    let head = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok();
    let hex = head.and_then(|o| String::from_utf8(o.stdout).ok()).unwrap_or_default();
    u64::from_str_radix(hex.trim().get(..12).unwrap_or(""), 16).unwrap_or(20_261_204)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[cfg(not(feature = "broken"))]
#[test]
fn one_seed_replays_exactly() {
    let seed = env_u64("TOPUP_SIM_SEED", 7);
    let first = run_blocking(seed).unwrap_or_else(|e| panic!("{e}"));
    let again = run_blocking(seed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, again, "seed {seed} ran two ways");
    let other = run_blocking(seed + 1).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(first, other, "two seeds, one trace: the trace says too little");
}

/// Operations run at once replay exactly too: schedules that ran some at once, each twice,
/// give one trace each (`TOPUP_SIM_REPLAYS` of them, default 20).
#[cfg(not(feature = "broken"))]
#[test]
fn interleaved_schedules_replay_exactly() {
    let mut at_once = 0;
    for seed in 100..100 + env_u64("TOPUP_SIM_REPLAYS", 20) {
        let first = run_blocking(seed).unwrap_or_else(|e| panic!("{e}"));
        let again = run_blocking(seed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, again, "seed {seed} ran two ways");
        at_once += first.1;
    }
    assert!(at_once >= 20, "only {at_once} steps of 20 schedules ran operations at once");
}

#[cfg(not(feature = "broken"))]
#[test]
fn schedules_keep_every_invariant() {
    let seeds: Vec<u64> = match std::env::var("TOPUP_SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = base_seed();
            (0..env_u64("TOPUP_SIM_SCHEDULES", 5_000)).map(|i| base.wrapping_add(i)).collect()
        }
    };
    let threads = env_u64("TOPUP_SIM_THREADS", 2).max(1) as usize;
    let chunks: Vec<Vec<u64>> =
        (0..threads).map(|t| seeds.iter().copied().skip(t).step_by(threads).collect()).collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                std::thread::Builder::new().stack_size(16 << 20).spawn_scoped(scope, move || {
                    chunk.into_iter().filter_map(|s| run_blocking(s).err()).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| vec!["a simulator thread panicked".into()]),
                Err(e) => vec![format!("a simulator thread did not start: {e}")],
            })
            .collect()
    });
    println!(
        "simulator: {} schedules of {STEPS} steps, {} failed; reached: {} recharges credited, {} cancelled after failing, \
         {} checks with a recharge kept while processing, {} with a lane holding credits, {} disputes that took credits, \
         {} purchases credited, {} entity refusals, {} checks with an entity at 80 % of its limit or more, {} webhook POSTs, \
         {} follow-ups handled, {} steps with operations at once, {} switches between them, {} commits that lost a race, \
         {} lane counts widened and {} narrowed by the account itself",
        seeds.len(),
        failures.len(),
        RECHARGED.load(Relaxed),
        FAILED_RECHARGES.load(Relaxed),
        KEPT.load(Relaxed),
        ON_LANES.load(Relaxed),
        DISPUTED.load(Relaxed),
        PURCHASED.load(Relaxed),
        ENTITY_REFUSED.load(Relaxed),
        ENTITY_AT_LIMIT.load(Relaxed),
        HOOK_POSTS.load(Relaxed),
        HOOK_RETRIED.load(Relaxed),
        GROUPS.load(Relaxed),
        SWITCHES.load(Relaxed),
        RACES.load(Relaxed),
        WIDENED.load(Relaxed),
        NARROWED.load(Relaxed),
    );
    assert!(failures.is_empty(), "{} of {} schedules failed; the first:\n{}", failures.len(), seeds.len(), failures[0]);
}

/// Each deliberately broken variant (`topup::broken`, built with `--features broken`) is found
/// within `TOPUP_SIM_BROKEN_SEEDS` (default 2,000) seeds from the base: the simulator's
/// invariants catch the bug each one plants. Prints how many seeds each took.
#[cfg(feature = "broken")]
#[test]
fn each_broken_variant_is_caught() {
    use topup::broken::{set, Bug};
    let limit = env_u64("TOPUP_SIM_BROKEN_SEEDS", 2_000);
    let base = base_seed();
    let mut missed = vec![];
    for bug in [
        Bug::DropIdempotencyCondition,
        Bug::CreditPaymentTwice,
        Bug::ExpireGrantTwice,
        Bug::ForgetMonthlyCap,
        Bug::ForgetRefundCap,
        Bug::SkipRecall,
        Bug::IgnoreEntityLimit,
        Bug::SettlePastEntityLimit,
        Bug::DeliverTwice,
    ] {
        set(Some(bug));
        let found = (0..limit).find_map(|i| run_blocking(base.wrapping_add(i)).err().map(|why| (i + 1, why)));
        set(None);
        match found {
            Some((n, why)) => {
                // `TOPUP_SIM_VERBOSE`: the whole failure, with the steps before it.
                let first = if std::env::var("TOPUP_SIM_VERBOSE").is_ok() { why.as_str() } else { why.lines().next().unwrap_or("") };
                println!("broken variant {bug:?}: caught after {n} seeds: {first}");
            }
            None => missed.push(bug),
        }
    }
    assert!(missed.is_empty(), "not caught within {limit} seeds: {missed:?}");
}
