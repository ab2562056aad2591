//! The deterministic simulator (rules §10–§16): one process, virtual time, every choice from
//! one seeded generator, as TigerBeetle's VOPR and FoundationDB's simulation do.
//!
//! A schedule runs the functions' own handlers (`debit`, `auto-recharge`, `webhook`) and the
//! service's operations over the in-memory store (DynamoDB's semantics: conditions,
//! transactions, the 100-item and 400 KB limits) and a model of Stripe (charges that pay,
//! decline, need authentication or settle later; cancels; refunds; its events delivered late,
//! twice and out of order), from three processes with their own caches. Before a step a fault
//! may be armed: the store down (the commit does nothing), the store's answer lost (the commit
//! took effect, the caller died), Stripe down, or Stripe's answer lost (the charge was made).
//! The clock moves only when the schedule moves it: minutes, days, past month ends, so
//! allowances reset, grants expire and caps start over.
//!
//! After every step the invariants are checked, reconciliation among them: the balance is the
//! ledger's sum and the grants', never below zero, holds within it; a replayed key answers its
//! first result; a recharge is charged at most once per claim, the month's count and money
//! never pass the cap and hold every recharge that took money; a payment is credited at most
//! once, and after the last step, with everything delivered, exactly once.
//!
//! Each schedule's trace (every step and what it answered, without the random ids) is hashed:
//! one seed replays exactly (a test runs one twice). `cargo test` runs `TOPUP_SIM_SCHEDULES`
//! (default 5,000) schedules from a base seed taken from the commit (`git rev-parse HEAD`), or
//! `TOPUP_SIM_BASE`; a failure prints its seed and the command that replays it:
//! `TOPUP_SIM_SEED=N cargo test -p topup-tests --test simulation -- --nocapture`.

use topup::store::{Accounts, Outbox, PaymentRecords};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use topup::adapters::memory::{MemoryBus, MemoryStore};
use topup::clock::ManualClock;
use topup::config::Config;
use topup::engine::Credits;
use topup::ledger::EntryKind;
use topup::money::MICROS_PER_CREDIT as C;
use topup::payments::{
    CancelOutcome, Card, CardSetup, CardSetupRequest, ChargeOutcome, CheckoutRequest, CheckoutSession, NewCustomer,
    OffSessionCharge, Payments, PaymentsUnavailable, Purchases,
};
use topup::secret::Secret;
use topup_tests::{read, request, signed_event};

type Sim = Credits<Arc<MemoryStore>, Arc<MemoryBus>>;

/// What the schedules reached, summed over a run: a simulator that never reaches a path checks
/// nothing there.
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static RECHARGED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static FAILED_RECHARGES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static ON_LANES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static DISPUTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

const ACCOUNT: &str = "acme";
const JWT: &str = "simulator-secret-0123456789";
const SERVICE: &str = "sim-service";
const WEBHOOK_SECRET: &str = "whsec_simulator";
/// 2026-11-30T23:00:00Z: an hour before a month ends, so schedules cross it.
const START_MS: i64 = 1_796_079_600_000;
const STEPS: usize = 40;

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

#[derive(Default)]
struct StripeState {
    customers: HashMap<String, String>,
    intents: BTreeMap<String, Intent>,
    by_key: HashMap<String, (String, ChargeOutcome)>,
    cancels: HashMap<String, CancelOutcome>,
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

    /// Queues the event Stripe sends for `pi` now.
    fn announce(s: &mut StripeState, pi: &str, event_type: &str) {
        if let Some(i) = s.intents.get(pi) {
            let object = StripeModel::intent_json(i);
            let n = s.outbox.len();
            s.outbox.push(json!({
                "id": format!("evt_sim_{n}"), "object": "event", "api_version": "2025-11-17.clover",
                "created": 0, "livemode": false, "pending_webhooks": 1,
                "request": {"id": null, "idempotency_key": null},
                "type": event_type, "data": {"object": object},
            }));
        }
    }
}

impl Payments for StripeModel {
    async fn create_customer(&self, c: &NewCustomer) -> Result<String, PaymentsUnavailable> {
        let mut s = self.state();
        let n = s.customers.len();
        Ok(s.customers.entry(c.idempotency_key.clone()).or_insert_with(|| format!("cus_sim_{n}")).clone())
    }

    async fn charge_off_session(&self, c: &OffSessionCharge) -> Result<ChargeOutcome, PaymentsUnavailable> {
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
    async fn create_checkout(&self, _: &CheckoutRequest) -> Result<CheckoutSession, PaymentsUnavailable> {
        Err(unavailable("Checkout is not modelled"))
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
        let s = self.state();
        s.intents
            .get(pi)
            .map(|i| i.metadata.clone().into_iter().collect())
            .ok_or_else(|| unavailable("no such PaymentIntent"))
    }
}

// ---- a schedule -------------------------------------------------------------------------------

struct Schedule {
    seed: u64,
    rng: Rng,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    bus: Arc<MemoryBus>,
    procs: Vec<Sim>,
    stripe: StripeModel,
    config: Config,
    secret: Secret,
    /// Usage keys used, and the first answer each got.
    keys: Vec<(String, i64)>,
    first: HashMap<String, (u16, Value)>,
    holds: Vec<String>,
    /// Stripe events on their way, in no particular order.
    queued: Vec<Value>,
    monthly_max: u32,
    trace: Vec<String>,
}

/// The failure of a schedule: its seed, what broke, and the steps so far.
fn fail(seed: u64, trace: &[String], why: String) -> String {
    let tail: Vec<&String> = trace.iter().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    format!(
        "seed {seed}: {why}\n  last steps: {tail:#?}\n  replay: TOPUP_SIM_SEED={seed} cargo test -p topup-tests --test simulation -- --nocapture"
    )
}

impl Schedule {
    async fn new(seed: u64) -> Schedule {
        let mut rng = Rng(seed);
        let clock = Arc::new(ManualClock::at(START_MS + rng.range(0, 90 * 60_000)));
        let store = Arc::new(MemoryStore::default());
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
            trace: vec![format!("card {card:?}, monthly_max {monthly_max}")],
        };
        s.setup().await;
        s
    }

    fn p(&mut self) -> &Sim {
        let n = self.rng.below(self.procs.len() as u64) as usize;
        &self.procs[n]
    }

    async fn setup(&mut self) {
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
            Ok::<(), topup::error::ApiError>(())
        };
        if let Err(e) = done.await {
            panic!("{}", fail(self.seed, &self.trace, format!("setup failed: {e:?}")));
        }
    }

    fn usage_request(&self, path: &str, body: Value) -> lambda_http::Request {
        let svc = topup::auth::sign_hs256(&json!({"sub": "backend", "client_id": SERVICE}), &Secret::new(JWT));
        request("POST", path, Some(&svc), Some("application/json"), Some(body.to_string()))
    }

    async fn debit_call(&mut self, body: Value, path: &str) -> (u16, Value) {
        let req = self.usage_request(path, body);
        let n = self.rng.below(self.procs.len() as u64) as usize;
        read(debit::handle(&self.config, &self.procs[n], req).await)
    }

    /// A key: new, or one used before (a retry).
    fn key(&mut self, qty: i64) -> (String, i64) {
        if !self.keys.is_empty() && self.rng.chance(20) {
            let i = self.rng.below(self.keys.len() as u64) as usize;
            return self.keys[i].clone();
        }
        let k = format!("k{}", self.keys.len());
        self.keys.push((k.clone(), qty));
        (k, qty)
    }

    /// Faults before a step: at most one, at the step's next call.
    fn arm(&mut self) -> &'static str {
        use std::sync::atomic::Ordering::SeqCst;
        match self.rng.below(100) {
            0..=5 => {
                self.store.fail_next_commit.store(true, SeqCst);
                "store down"
            }
            6..=11 => {
                self.store.lose_next_answer.store(true, SeqCst);
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
            _ => "",
        }
    }

    fn disarm(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.store.fail_next_commit.store(false, SeqCst);
        self.store.lose_next_answer.store(false, SeqCst);
        let mut s = self.stripe.state();
        s.down = false;
        s.lose = false;
    }

    async fn step(&mut self, i: usize) -> Result<(), String> {
        let fault = if i > 0 { self.arm() } else { "" };
        let line = match self.rng.below(100) {
            0..=29 => {
                let qty = self.rng.range(1, 4_000);
                let (k, qty) = self.key(qty);
                let body = json!({"consumable": "api_calls", "quantity": qty, "idempotency_key": k});
                let (status, answer) = self.debit_call(body, "/v1/accounts/acme/usage").await;
                self.check_replay(&k, status, &answer)?;
                format!("debit {qty} ({k}) → {status} {}", code(&answer))
            }
            30..=39 => {
                let n = self.rng.range(1, 8);
                let events: Vec<Value> = (0..n)
                    .map(|_| {
                        let qty = self.rng.range(1, 2_000);
                        let (k, qty) = self.key(qty);
                        json!({"consumable": "api_calls", "quantity": qty, "idempotency_key": k})
                    })
                    .collect();
                let (status, answer) =
                    self.debit_call(json!({"events": events}), "/v1/accounts/acme/usage/batch").await;
                let statuses: Vec<u64> = answer["results"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x["status"].as_u64()).collect())
                    .unwrap_or_default();
                format!("batch of {n} → {status} {statuses:?} {}", code(&answer))
            }
            40..=46 => {
                let qty = self.rng.range(1, 3_000);
                let (k, _) = self.key(qty);
                let k = format!("hold-{k}");
                let r = self.p().reserve(ACCOUNT, "api_calls", qty, 600, &ids(&k)).await;
                if let Ok(h) = &r {
                    self.holds.push(h.hold_id.clone());
                }
                format!("hold {qty} → {}", outcome(&r.map(|_| ())))
            }
            47..=52 if !self.holds.is_empty() => {
                let i = self.rng.below(self.holds.len() as u64) as usize;
                let hold = self.holds[i].clone();
                let used = self.rng.range(0, 4_000);
                let r = self.p().settle(ACCOUNT, &hold, used).await;
                format!("settle {used} → {}", outcome(&r.map(|_| ())))
            }
            53..=58 => {
                let amount = if self.rng.chance(75) { self.rng.range(1, 8) * C } else { -self.rng.range(1, 4) * C };
                let k = format!("adj{i}-{}", self.rng.below(3));
                let later = self.rng.range(60_000, 3 * 86_400_000);
                let expires = self.rng.chance(30).then_some(self.clock_now() + later);
                let terms = topup::accounts::GrantTerms { expires_at: expires, ..Default::default() };
                let r = self.p().adjust_with(ACCOUNT, amount, "sim", &terms, &ids(&k)).await;
                format!("adjust {amount} → {}", outcome(&r.map(|_| ())))
            }
            67..=69 => self.dispute_step(),
            59..=66 => {
                let event = topup_tests::balance_low(ACCOUNT);
                let n = self.rng.below(self.procs.len() as u64) as usize;
                let r = auto_recharge::handle(&self.procs[n], &self.stripe, &topup_tests::trigger(&event)).await;
                format!("BalanceLow → {}", r.map(|v| v["result"].to_string()).unwrap_or_else(|e| e.code().to_string()))
            }
            70..=72 => {
                let lease = if self.rng.chance(50) { 0 } else { topup::recharge::LEASE_MS };
                let n = self.rng.below(self.procs.len() as u64) as usize;
                let r = self.procs[n].sweep(&self.stripe, 100, lease).await;
                format!("sweep → {}", r.map(|s| s.recharges.len().to_string()).unwrap_or_else(|e| e.code().to_string()))
            }
            73..=77 => {
                // The customer completes 3-D Secure, a processing payment settles, or a failed
                // one not yet cancelled is confirmed again (processing once more), so that its
                // failure event may arrive while it is processing.
                let mut s = self.stripe.state();
                let open: Vec<String> = s
                    .intents
                    .values()
                    .filter(|i| matches!(i.status, "requires_action" | "processing" | "requires_payment_method"))
                    .map(|i| i.id.clone())
                    .collect();
                if open.is_empty() {
                    "stripe: nothing to settle".into()
                } else {
                    let pi = open[self.rng.below(open.len() as u64) as usize].clone();
                    if s.intents.get(&pi).is_some_and(|i| i.status == "requires_payment_method") {
                        if let Some(i) = s.intents.get_mut(&pi) {
                            i.status = "processing";
                        }
                        drop(s);
                        return self.finish(i, fault, format!("stripe: {pi} confirmed again")).await;
                    }
                    let pays = self.rng.chance(60);
                    if let Some(intent) = s.intents.get_mut(&pi) {
                        intent.status = if pays { "succeeded" } else { "requires_payment_method" };
                    }
                    let kind = if pays { "payment_intent.succeeded" } else { "payment_intent.payment_failed" };
                    StripeModel::announce(&mut s, &pi, kind);
                    format!("stripe: {} {kind}", short(&pi))
                }
            }
            78..=80 => {
                // A refund at Stripe of a recharge that took money.
                let mut s = self.stripe.state();
                let paid: Vec<String> = s
                    .intents
                    .values()
                    .filter(|i| i.status == "succeeded" && i.refunded < i.amount)
                    .map(|i| i.id.clone())
                    .collect();
                if paid.is_empty() {
                    "stripe: nothing to refund".into()
                } else {
                    let pi = paid[self.rng.below(paid.len() as u64) as usize].clone();
                    let part = self.rng.range(1, 1_000);
                    let charge = s.intents.get_mut(&pi).map(|i| {
                        i.refunded = (i.refunded + part).min(i.amount);
                        json!({"id": format!("ch_{pi}"), "object": "charge", "payment_intent": pi, "amount": i.amount,
                               "amount_refunded": i.refunded, "metadata": i.metadata})
                    });
                    if let Some(ch) = charge {
                        let n = s.outbox.len();
                        s.outbox.push(json!({"id": format!("evt_sim_{n}"), "object": "event",
                            "api_version": "2025-11-17.clover", "created": 0, "livemode": false,
                            "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
                            "type": "charge.refunded", "data": {"object": ch}}));
                    }
                    format!("stripe: refund {part} of {}", short(&pi))
                }
            }
            81..=90 => {
                // Stripe sends what it has; an event may go twice, late and out of order.
                let out = std::mem::take(&mut self.stripe.state().outbox);
                self.queued.extend(out);
                if self.queued.is_empty() {
                    "webhook: nothing queued".into()
                } else {
                    let i = self.rng.below(self.queued.len() as u64) as usize;
                    let event = if self.rng.chance(20) { self.queued[i].clone() } else { self.queued.remove(i) };
                    let status = self.webhook(&event).await;
                    if !(200..300).contains(&status) {
                        self.queued.push(event.clone());
                    }
                    format!("webhook {} → {status}", event["type"].as_str().unwrap_or(""))
                }
            }
            91..=93 => {
                let now = self.clock_now();
                let r = self.p().expire_grants(now).await;
                format!("expiry run → {}", outcome(&r.map(|_| ())))
            }
            94..=95 => {
                // An operator spreads the account over lanes, or takes them away (1: none).
                let k = self.rng.range(1, 4) as u32;
                let r = self.p().set_lanes(ACCOUNT, k).await;
                format!("lanes {k} → {}", outcome(&r.map(|_| ())))
            }
            _ => {
                let ms = match self.rng.below(10) {
                    0..=5 => self.rng.range(1, 120_000),
                    6..=8 => self.rng.range(3_600_000, 2 * 86_400_000),
                    _ => self.rng.range(10, 35) * 86_400_000,
                };
                self.clock.advance(ms);
                format!("clock +{ms} ms")
            }
        };
        self.finish(i, fault, line).await
    }

    /// A dispute at Stripe of a recharge that took money: opened for part or all of it, or an
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
                let id = format!("dp_{}_{}", short(&pi), intent.disputes.len());
                let amount = part.min(intent.amount);
                intent.disputes.push((id.clone(), amount, true));
                ("charge.dispute.created", id, amount, "needs_response")
            }
        };
        let object = json!({"id": id, "object": "dispute", "amount": amount, "currency": "usd",
                            "charge": format!("ch_{pi}"), "payment_intent": pi, "status": status});
        let n = s.outbox.len();
        s.outbox.push(json!({"id": format!("evt_sim_{n}"), "object": "event",
            "api_version": "2025-11-17.clover", "created": 0, "livemode": false,
            "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
            "type": kind, "data": {"object": object}}));
        format!("stripe: {kind} {id} {amount} {status}")
    }

    /// Every event the engine wrote, published or still in the outbox, once each.
    async fn events(&self) -> Result<Vec<topup::events::DomainEvent>, String> {
        let mut all: BTreeMap<String, topup::events::DomainEvent> = BTreeMap::new();
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

    /// rules §12: refunds and disputes of a payment never take back more credits than it
    /// credited (a won dispute's return counts against what its dispute took).
    async fn check_takebacks(&self, settled: bool) -> Result<(), String> {
        use topup::events::Event;
        let mut credited: HashMap<String, i64> = HashMap::new();
        let mut taken: HashMap<String, i64> = HashMap::new();
        for e in self.events().await? {
            match e.event {
                Event::AutoRechargeSucceeded(r) => *credited.entry(r.payment_id).or_default() += r.credits,
                Event::RefundCreated(r) => *taken.entry(r.payment_id).or_default() += r.taken,
                Event::PaymentDisputed(d) => {
                    if settled {
                        DISPUTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    *taken.entry(d.payment_id).or_default() += d.taken
                }
                Event::DisputeClosed(d) if d.status == "won" => *taken.entry(d.payment_id).or_default() -= d.taken,
                _ => {}
            }
        }
        for (pi, t) in &taken {
            let c = credited.get(pi).copied().unwrap_or(0);
            if *t > c {
                return Err(format!("refunds and disputes took {t} back from {pi}, which credited {c}"));
            }
        }
        Ok(())
    }

    /// Ends step `i`: faults disarmed, the clock a millisecond on (grants made in different
    /// steps never tie), the step and the balance after it traced.
    async fn finish(&mut self, i: usize, fault: &str, line: String) -> Result<(), String> {
        self.disarm();
        self.clock.advance(1);
        let balance = self.procs[0].account(ACCOUNT).await.map(|a| a.balance.get()).unwrap_or(-1);
        self.trace.push(format!("{i}: [{fault}] {line} · balance {balance}"));
        Ok(())
    }

    fn clock_now(&self) -> i64 {
        self.procs[0].now()
    }

    async fn webhook(&self, event: &Value) -> u16 {
        let req = signed_event(&event.to_string(), WEBHOOK_SECRET, topup_tests::now_s());
        read(webhook::handle(&self.secret, &self.procs[0], &self.stripe, req).await).0
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

    /// rules §10–§16 on what is stored and what Stripe holds.
    async fn check(&self, settled: bool) -> Result<(), String> {
        self.check_takebacks(settled).await?;
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
                    ON_LANES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
            use std::sync::atomic::Ordering::Relaxed;
            RECHARGED.fetch_add(credited, Relaxed);
            FAILED_RECHARGES.fetch_add(recharges.iter().filter(|i| i.status == "canceled").count(), Relaxed);
        }
        if !ar.kept.is_empty() {
            KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if ar.used_month == month {
            if ar.used_this_month > self.monthly_max {
                return Err(format!("the month's count {} is past its cap {}", ar.used_this_month, self.monthly_max));
            }
            // Every recharge claimed this month that took money is in the month's count.
            let records: Vec<topup::account::RechargeRecord> = {
                let mut v = vec![];
                for i in &paid {
                    let rid = &i.metadata["topup_recharge_id"];
                    if let Ok(Some(r)) = c.store.load_recharge(ACCOUNT, rid).await {
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
        Ok(())
    }

    /// Everything on its way arrives, with no more faults.
    async fn quiesce(&mut self) -> Result<(), String> {
        self.disarm();
        for _ in 0..8 {
            // Payments left open settle (the customer never authenticates: they fail).
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
                    if let Some(i) = s.intents.get_mut(&pi) {
                        i.status = if pays { "succeeded" } else { "requires_payment_method" };
                    }
                    let kind = if pays { "payment_intent.succeeded" } else { "payment_intent.payment_failed" };
                    StripeModel::announce(&mut s, &pi, kind);
                }
            }
            let _ = self.procs[0].sweep(&self.stripe, 100, 0).await;
            let out = std::mem::take(&mut self.stripe.state().outbox);
            self.queued.extend(out);
            let queued = std::mem::take(&mut self.queued);
            for event in &queued {
                let status = self.webhook(event).await;
                if !(200..300).contains(&status) {
                    self.queued.push(event.clone());
                }
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

/// A PaymentIntent's id without what varies between runs (none: the model numbers them).
fn short(pi: &str) -> &str {
    pi
}

/// Runs schedule `seed` to its end; its trace's hash, or what broke.
async fn run(seed: u64) -> Result<String, String> {
    let mut s = Schedule::new(seed).await;
    s.check(false).await.map_err(|e| fail(seed, &s.trace, e))?;
    for i in 0..STEPS {
        s.step(i).await.map_err(|e| fail(seed, &s.trace, e))?;
        s.check(false).await.map_err(|e| fail(seed, &s.trace, e))?;
    }
    s.quiesce().await.map_err(|e| fail(seed, &s.trace, e))?;
    s.check(true).await.map_err(|e| fail(seed, &s.trace, e))?;
    Ok(s.hash())
}

/// One schedule on a single-threaded runtime in paused (virtual) time: the same seed, the
/// same interleaving of every future.
fn run_blocking(seed: u64) -> Result<String, String> {
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
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "simulator: {} schedules of {STEPS} steps, {} failed; reached: {} recharges credited, {} cancelled after failing, {} checks with a recharge kept while processing, {} with a lane holding credits, {} disputes that took credits",
        seeds.len(),
        failures.len(),
        RECHARGED.load(Relaxed),
        FAILED_RECHARGES.load(Relaxed),
        KEPT.load(Relaxed),
        ON_LANES.load(Relaxed),
        DISPUTED.load(Relaxed)
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
    ] {
        set(Some(bug));
        let found = (0..limit).find_map(|i| run_blocking(base.wrapping_add(i)).err().map(|why| (i + 1, why)));
        set(None);
        match found {
            Some((n, why)) => {
                let first = why.lines().next().unwrap_or("");
                println!("broken variant {bug:?}: caught after {n} seeds: {first}");
            }
            None => missed.push(bug),
        }
    }
    assert!(missed.is_empty(), "not caught within {limit} seeds: {missed:?}");
}
