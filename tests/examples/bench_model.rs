//! One hot account against a **model** of DynamoDB, in tokio's virtual time: how many debits a
//! second one account sustains through single debits and through batches (group commit), what
//! transaction conflicts and partition throttling cost, and the write capacity per debit by
//! DynamoDB's published sizing rules. Everything it prints is modelled, not measured.
//!
//! The store is `MemoryStore` (the real semantics) behind `ModelStore`, which adds what the
//! emulator does not have: a latency per request, `TransactionConflict` on items another
//! transaction holds, a token bucket of write capacity per partition key with the SDK's retries
//! of a throttled request, and WCU charged for the items `adapters::dynamo::commit_items` says a
//! commit writes. Each of N "Lambda environments" is its own `Credits` (its own cache, no
//! in-process queue shared with the others) serving one request at a time.
//!
//! Needs no emulator; `./scripts/stack.py bench` runs it first. By hand:
//! `cargo build --release -p topup-tests --example bench_model && target/release/examples/bench_model`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};
use topup::account::{Account, RechargeRecord};
use topup::adapters::dynamo::{commit_items, ItemWrite};
use topup::adapters::memory::{MemoryBus, MemoryStore};
use topup::batch::{UsageEvent, EVENTS_PER_COMMIT, MAX_BATCH_EVENTS};
use topup::engine::Credits;
use topup::events::DomainEvent;
use topup::ledger::{HoldRecord, IdemRecord, LedgerEntry};
use topup::profile::Profile;
use topup::purchases::PurchaseRecord;
use topup::store::{
    Accounts, Commit, CommitError, Deliveries, DeliveryRecord, Listings, Outbox, PaymentRecords, PurchaseWrite, RateCounts,
    Segment, StoreError,
};
use topup_tests::{key, C};

// ---- the model's assumptions ------------------------------------------------------------------

/// A latency distribution: lognormal, given by its median and its 99th percentile.
#[derive(Clone, Copy)]
struct LogNormal {
    median_ms: f64,
    p99_ms: f64,
}

/// The standard normal's 99th percentile.
const Z99: f64 = 2.326_347_874;

impl LogNormal {
    fn sample(self, rng: &mut XorShift) -> Duration {
        let sigma = (self.p99_ms / self.median_ms).ln() / Z99;
        Duration::from_secs_f64(self.median_ms * (sigma * rng.normal()).exp() / 1000.0)
    }
}

/// A `TransactWriteItems` of one item, from the request to its answer; the items it writes are
/// held for this long.
const TRANSACTION: LogNormal = LogNormal { median_ms: 8.0, p99_ms: 25.0 };
/// A transaction of n items takes (1 + PER_ITEM·(n−1)) times as long: more participants.
const PER_ITEM: f64 = 0.01;
/// A one-item request: GetItem (strongly consistent), Query, PutItem, UpdateItem, and the
/// answer of a request refused for a conflict or for capacity.
const SINGLE: LogNormal = LogNormal { median_ms: 3.0, p99_ms: 10.0 };
/// Outside the store, per request: API Gateway, the Lambda invoke and the way back to the
/// client before its next request. Without it an environment's next commit would start the
/// instant its last one released the account item, and the others would rarely get it.
const FRONT: LogNormal = LogNormal { median_ms: 6.0, p99_ms: 20.0 };
/// DynamoDB's published limit of one partition; modelled per partition key.
const PARTITION_WCU_PER_S: f64 = 1000.0;
/// A bucket starts with this much capacity (steady state, not a burst after idling)...
const BUCKET_START_S: f64 = 1.0;
/// ...and keeps at most this much unused capacity (DynamoDB's burst capacity).
const BUCKET_KEEP_S: f64 = 300.0;
/// The SDK's retries of a throttled request, after which the write answers `Unavailable`.
const THROTTLE_RETRIES: u32 = 3;
/// Backoff before retry n (0-based): uniform in [25, 50) ms, times 2^n.
const BACKOFF_MS: (f64, f64) = (25.0, 50.0);
const SEED: u64 = 0x7a05_c0de_2026_1122;

/// Write capacity of one item of a transaction: 2 WCU per started KB.
fn transactional_wcu(bytes: usize) -> f64 {
    2.0 * bytes.max(1).div_ceil(1024) as f64
}

// ---- a seeded generator -----------------------------------------------------------------------

/// xorshift64: the same seed, the same latencies.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

// ---- the model store --------------------------------------------------------------------------

/// What the model counted; `since` gives a window's share.
#[derive(Default, Clone)]
struct Stats {
    /// `Store::commit` calls: the engine's commit attempts.
    commits: u64,
    /// `TransactWriteItems` requests sent, the SDK's retries of throttled ones included.
    requests: u64,
    conflicts: u64,
    throttles: u64,
    /// Commits that gave up after the SDK's retries of throttling.
    unavailable: u64,
    /// Commits admitted whose condition failed (stale version, claimed key): charged, not written.
    condition_failed: u64,
    /// Reads (GetItem, Query, BatchGetItem).
    reads: u64,
    /// Ledger entries committed: here every debit draws credits and writes one, so these are the
    /// debits that committed, answered or not.
    entries: u64,
    /// WCU charged, by item kind.
    wcu: BTreeMap<&'static str, f64>,
    /// Of those, charged for transactions whose condition failed (they wrote nothing).
    wcu_failed: f64,
    /// The largest item of each kind written, in bytes (over the whole run).
    largest: BTreeMap<&'static str, usize>,
    /// WCU charged per partition key, but for usage idempotency records' own keys (`KEY#…`).
    wcu_by_pk: BTreeMap<String, f64>,
}

impl Stats {
    fn since(&self, before: &Stats) -> Stats {
        let mut wcu = self.wcu.clone();
        for (k, v) in &before.wcu {
            *wcu.entry(k).or_default() -= v;
        }
        let mut wcu_by_pk = self.wcu_by_pk.clone();
        for (k, v) in &before.wcu_by_pk {
            *wcu_by_pk.entry(k.clone()).or_default() -= v;
        }
        Stats {
            commits: self.commits - before.commits,
            requests: self.requests - before.requests,
            conflicts: self.conflicts - before.conflicts,
            throttles: self.throttles - before.throttles,
            unavailable: self.unavailable - before.unavailable,
            condition_failed: self.condition_failed - before.condition_failed,
            reads: self.reads - before.reads,
            entries: self.entries - before.entries,
            wcu,
            wcu_failed: self.wcu_failed - before.wcu_failed,
            largest: self.largest.clone(),
            wcu_by_pk,
        }
    }
    fn total_wcu(&self) -> f64 {
        self.wcu.values().sum()
    }
    /// The busiest partition key (idempotency records' own keys aside) and its WCU.
    fn hottest(&self) -> Option<(&str, f64)> {
        self.wcu_by_pk.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, v)| (k.as_str(), *v))
    }
}

type ItemKey = (String, String);

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct State {
    rng: XorShift,
    /// Items of transactions in flight.
    held: HashSet<ItemKey>,
    /// Write capacity per partition key.
    buckets: HashMap<String, Bucket>,
    /// The last size written of each item: a replaced item is charged at the larger of its old
    /// and new size.
    sizes: HashMap<ItemKey, usize>,
    /// Outbox items by event id, to charge their deletion at their size.
    outbox: HashMap<String, (ItemKey, usize)>,
    stats: Stats,
}

impl State {
    /// The bucket of `pk`, refilled up to now.
    fn tokens(&mut self, pk: &str, now: Instant) -> f64 {
        let b = self
            .buckets
            .entry(pk.to_string())
            .or_insert(Bucket { tokens: PARTITION_WCU_PER_S * BUCKET_START_S, at: now });
        let refill = PARTITION_WCU_PER_S * now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + refill).min(PARTITION_WCU_PER_S * BUCKET_KEEP_S);
        b.at = now;
        b.tokens
    }
}

/// What DynamoDB does with one `TransactWriteItems` when it arrives.
enum Admission {
    /// A partition lacks the capacity: refused after this long.
    Throttled(Duration),
    /// An item is held by another transaction: refused after this long.
    Conflict(Duration),
    /// Taken: its items are held, and it answers after this long.
    Admitted(Duration),
}

/// DynamoDB as modelled: `MemoryStore`'s semantics, plus latency, conflicts, throttling and
/// write capacity (see the constants above).
pub struct ModelStore {
    inner: Arc<MemoryStore>,
    state: Mutex<State>,
}

impl ModelStore {
    fn new(seed: u64) -> ModelStore {
        ModelStore {
            inner: Arc::new(MemoryStore::default()),
            state: Mutex::new(State {
                rng: XorShift::new(seed),
                held: HashSet::new(),
                buckets: HashMap::new(),
                sizes: HashMap::new(),
                outbox: HashMap::new(),
                stats: Stats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("model state")
    }

    fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// A read's latency.
    async fn read(&self) {
        let d = {
            let mut st = self.lock();
            st.stats.reads += 1;
            SINGLE.sample(&mut st.rng)
        };
        sleep(d).await;
    }

    /// A standard write of one item outside a commit, charged as one item of at most 1 KB
    /// (none is on the debit path).
    async fn standard_write(&self, wcu: f64) {
        let d = {
            let mut st = self.lock();
            *st.stats.wcu.entry("other").or_default() += wcu;
            SINGLE.sample(&mut st.rng)
        };
        sleep(d).await;
    }

    fn admit(&self, items: &[ItemWrite]) -> Admission {
        let mut st = self.lock();
        st.stats.requests += 1;
        let now = Instant::now();
        let charge: Vec<f64> = items
            .iter()
            .map(|i| {
                let old = st.sizes.get(&(i.pk.clone(), i.sk.clone())).copied().unwrap_or(0);
                transactional_wcu(old.max(i.size))
            })
            .collect();
        let mut need: BTreeMap<&str, f64> = BTreeMap::new();
        for (i, w) in items.iter().zip(&charge) {
            *need.entry(i.pk.as_str()).or_default() += w;
        }
        if need.iter().any(|(pk, w)| st.tokens(pk, now) < *w) {
            st.stats.throttles += 1;
            return Admission::Throttled(SINGLE.sample(&mut st.rng));
        }
        if items.iter().any(|i| st.held.contains(&(i.pk.clone(), i.sk.clone()))) {
            st.stats.conflicts += 1;
            return Admission::Conflict(SINGLE.sample(&mut st.rng));
        }
        for (pk, w) in need {
            if let Some(b) = st.buckets.get_mut(pk) {
                b.tokens -= w;
            }
            if !pk.starts_with("KEY#") {
                *st.stats.wcu_by_pk.entry(pk.to_string()).or_default() += w;
            }
        }
        for (i, w) in items.iter().zip(charge) {
            st.held.insert((i.pk.clone(), i.sk.clone()));
            *st.stats.wcu.entry(i.kind).or_default() += w;
        }
        let scale = 1.0 + PER_ITEM * items.len().saturating_sub(1) as f64;
        Admission::Admitted(TRANSACTION.sample(&mut st.rng).mul_f64(scale))
    }
}

impl Accounts for ModelStore {
    async fn load_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.read().await;
        self.inner.load_account(id).await
    }
    async fn commit(&self, c: Commit) -> Result<(), CommitError> {
        self.commit_all(vec![c]).await
    }
    /// One transaction of several commits (a lane's lease, a recall): charged and held as one.
    async fn commit_all(&self, cs: Vec<Commit>) -> Result<(), CommitError> {
        let mut items = Vec::new();
        for c in &cs {
            items.extend(commit_items(c).map_err(CommitError::Store)?);
        }
        self.lock().stats.commits += 1;
        let mut retry = 0;
        let service = loop {
            match self.admit(&items) {
                Admission::Admitted(service) => break service,
                Admission::Conflict(after) => {
                    sleep(after).await;
                    return Err(CommitError::Conflict);
                }
                Admission::Throttled(after) => {
                    sleep(after).await;
                    if retry == THROTTLE_RETRIES {
                        self.lock().stats.unavailable += 1;
                        return Err(CommitError::Throttled);
                    }
                    let backoff = self.lock().rng.between(BACKOFF_MS.0, BACKOFF_MS.1) * f64::from(1u32 << retry);
                    sleep(Duration::from_secs_f64(backoff / 1000.0)).await;
                    retry += 1;
                }
            }
        };
        sleep(service).await;
        // Debits only: a lane's lease and return entries move credits, they are not debits.
        let entries: u64 =
            cs.iter().flat_map(|c| &c.ledger).filter(|e| e.kind == topup::ledger::EntryKind::Consumption).count()
                as u64;
        let result = self.inner.commit_all(cs).await;
        let mut st = self.lock();
        for i in &items {
            st.held.remove(&(i.pk.clone(), i.sk.clone()));
        }
        match &result {
            Ok(()) => {
                st.stats.entries += entries;
                for i in &items {
                    let l = st.stats.largest.entry(i.kind).or_default();
                    *l = (*l).max(i.size);
                    st.sizes.insert((i.pk.clone(), i.sk.clone()), i.size);
                    if i.kind == "outbox" {
                        if let Some((_, id)) = i.sk.split_once('#') {
                            st.outbox.insert(id.to_string(), ((i.pk.clone(), i.sk.clone()), i.size));
                        }
                    }
                }
            }
            Err(_) => {
                // A failed condition writes nothing and is charged as DynamoDB charges a failed
                // conditional write: by the stored item's size (at least 1 KB), not the new one's.
                st.stats.condition_failed += 1;
                let now = Instant::now();
                for i in &items {
                    let old = st.sizes.get(&(i.pk.clone(), i.sk.clone())).copied().unwrap_or(0);
                    let refund = transactional_wcu(old.max(i.size)) - transactional_wcu(old);
                    st.stats.wcu_failed += transactional_wcu(old);
                    *st.stats.wcu.entry(i.kind).or_default() -= refund;
                    if !i.pk.starts_with("KEY#") {
                        *st.stats.wcu_by_pk.entry(i.pk.clone()).or_default() -= refund;
                    }
                    st.tokens(&i.pk, now);
                    if let Some(b) = st.buckets.get_mut(&i.pk) {
                        b.tokens += refund;
                    }
                }
            }
        }
        result
    }
    async fn load_accounts(&self, ids: &[String]) -> Result<Vec<(String, Result<Account, StoreError>)>, StoreError> {
        self.read().await;
        self.inner.load_accounts(ids).await
    }
    async fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<(Vec<LedgerEntry>, bool), StoreError> {
        self.read().await;
        self.inner.ledger_page(account_id, limit, before_seq).await
    }
    async fn load_hold(&self, account_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        self.read().await;
        self.inner.load_hold(account_id, hold_id).await
    }
    async fn load_idempotency(&self, account_id: &str, scope_key: &str) -> Result<Option<IdemRecord>, StoreError> {
        self.read().await;
        self.inner.load_idempotency(account_id, scope_key).await
    }
    async fn load_entity(&self, account_id: &str, entity: &str) -> Result<Option<topup::entities::Entity>, StoreError> {
        self.read().await;
        self.inner.load_entity(account_id, entity).await
    }
    async fn entities(&self, account_id: &str) -> Result<Vec<topup::entities::Entity>, StoreError> {
        self.read().await;
        self.inner.entities(account_id).await
    }
}

impl PaymentRecords for ModelStore {
    async fn put_purchase(&self, w: PurchaseWrite) -> Result<(), CommitError> {
        // A one-item transaction of at most 1 KB.
        self.standard_write(2.0).await;
        self.inner.put_purchase(w).await
    }
    async fn load_purchase(&self, account_id: &str, purchase_id: &str) -> Result<Option<PurchaseRecord>, StoreError> {
        self.read().await;
        self.inner.load_purchase(account_id, purchase_id).await
    }
    async fn load_recharge(&self, account_id: &str, recharge_id: &str) -> Result<Option<RechargeRecord>, StoreError> {
        self.read().await;
        self.inner.load_recharge(account_id, recharge_id).await
    }
    async fn payment_account(&self, pi: &str) -> Result<Option<String>, StoreError> {
        self.read().await;
        self.inner.payment_account(pi).await
    }
    async fn payment_claims(&self, account_id: &str) -> Result<Vec<IdemRecord>, StoreError> {
        self.read().await;
        self.inner.payment_claims(account_id).await
    }
}

impl Deliveries for ModelStore {
    async fn claim_delivery(&self, r: &DeliveryRecord) -> Result<bool, StoreError> {
        self.standard_write(1.0).await;
        self.inner.claim_delivery(r).await
    }
    async fn finish_delivery(&self, r: &DeliveryRecord) -> Result<(), StoreError> {
        self.standard_write(1.0).await;
        self.inner.finish_delivery(r).await
    }
    async fn recent_deliveries(&self, account_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.read().await;
        self.inner.recent_deliveries(account_id, limit).await
    }
}

impl RateCounts for ModelStore {
    async fn count_start(
        &self,
        account_id: &str,
        what: &str,
        window_start_ms: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        self.standard_write(1.0).await;
        self.inner.count_start(account_id, what, window_start_ms, limit).await
    }
}

impl Outbox for ModelStore {
    async fn clear_outbox(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        // TransactWriteItems of deletes, 25 at a time; a delete is charged at the item's size.
        for chunk in events.chunks(25) {
            let d = {
                let mut st = self.lock();
                st.stats.requests += 1;
                let mut wcu = 0.0;
                for e in chunk {
                    if let Some(((pk, sk), size)) = st.outbox.remove(&e.id) {
                        st.sizes.remove(&(pk, sk));
                        wcu += transactional_wcu(size);
                    }
                }
                *st.stats.wcu.entry("outbox delete").or_default() += wcu;
                let scale = 1.0 + PER_ITEM * chunk.len().saturating_sub(1) as f64;
                TRANSACTION.sample(&mut st.rng).mul_f64(scale)
            };
            sleep(d).await;
        }
        self.inner.clear_outbox(events).await
    }
    async fn pending_outbox(&self, shard: u32, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        self.read().await;
        self.inner.pending_outbox(shard, limit).await
    }
}

topup::forward_port!(AuditLog, [], ModelStore, |s| s.inner);

impl Listings for ModelStore {
    async fn accounts_for_sweep(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        self.read().await;
        self.inner.accounts_for_sweep(limit, after).await
    }
    async fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
        segment: Segment,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        self.read().await;
        self.inner.account_ids(limit, after, segment).await
    }
    async fn accounts_expiring(&self, by_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.read().await;
        self.inner.accounts_expiring(by_ms, limit).await
    }
    async fn ended_grants(&self, account_id: &str) -> Result<Vec<topup::grants::Grant>, StoreError> {
        self.read().await;
        self.inner.ended_grants(account_id).await
    }
    async fn find_accounts(&self, by: &topup::account::AccountLookup) -> Result<Vec<String>, StoreError> {
        self.inner.find_accounts(by).await
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.read().await;
        self.inner.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        self.standard_write(1.0).await;
        self.inner.save_checkpoint(name, value).await
    }
}

// ---- the load ---------------------------------------------------------------------------------

type Service = Credits<Arc<ModelStore>, Arc<MemoryBus>>;

/// The model's virtual time as the service's clock: milliseconds since the Unix epoch as of
/// 2026-11-22, moving with tokio's paused clock.
struct VirtualClock(Instant);

impl topup::clock::Clock for VirtualClock {
    fn now_ms(&self) -> i64 {
        1_795_300_000_000 + Instant::now().duration_since(self.0).as_millis() as i64
    }
}

const ACCOUNT: &str = "hot";
const CONSUMABLE: &str = "api_calls";
/// Credits granted before the load: far more than any run draws.
const GRANT_CREDITS: i64 = 1_000_000;
/// Virtual time before the window (not counted), and the window counted.
const WARM: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(10);
const INSTANCES: [usize; 4] = [1, 4, 16, 64];
/// Lambda environments sending batches to an account with lanes.
const LANE_INSTANCES: [usize; 3] = [16, 64, 128];
/// Lambda environments of the sweep of an account left to spread itself (rules §21).
const SWEEP_INSTANCES: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// Credits of the drained run: about two seconds of ten thousand debits a second, past warm-up.
const DRAIN_CREDITS: i64 = 45_000 * 1_000 / 1_000_000;
/// Credits of the drained run of single debits: what it spends in its first five seconds or
/// so (its last credits go one debit at a time, on the account's item).
const AUTO_DRAIN_CREDITS: i64 = 6_000 * 1_000 / 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Single,
    Batch(usize),
    /// Batches of `batch` on an account with `k` lanes (rules §14).
    Lanes {
        k: u32,
        batch: usize,
    },
    /// Every debit names one entity with a monthly limit (rules §17): single debits
    /// (`batch` 1) or batches.
    Entity {
        batch: usize,
    },
    /// Debits in batches of `batch` (1: single debits) on an account left to spread itself
    /// (rules §21): no operator call, lanes added on contention.
    Auto {
        batch: usize,
    },
}

/// The entity every debit of `Mode::Entity` names, and its limit (never reached in a run).
const ENTITY: &str = "team-hot";

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Single => "single debits".into(),
            Mode::Batch(n) => format!("batches of {n}"),
            Mode::Lanes { k, batch } => format!("{k} lanes, b{batch}"),
            Mode::Entity { batch: 1 } => "entity, single".into(),
            Mode::Entity { batch } => format!("entity, b{batch}"),
            Mode::Auto { batch: 1 } => "auto, single".into(),
            Mode::Auto { batch } => format!("auto, b{batch}"),
        }
    }
    fn lanes(self) -> u32 {
        match self {
            Mode::Lanes { k, .. } => k,
            _ => 1,
        }
    }
}

/// What the workers saw: the window's requests, and everything for the invariant.
#[derive(Default)]
struct Tally {
    /// Debits answered as applied by requests that ended in the window.
    window_applied: u64,
    /// Latencies of the requests that started in the window, however late they ended.
    latencies_ms: Vec<f64>,
    /// Errors of requests (an `ApiError` code) and of events in a batch (their status).
    errors: BTreeMap<String, u64>,
    /// Over the whole run: debits answered as applied, and what they took.
    applied: u64,
    debited: i64,
    /// Keys whose answer was not "applied": each is looked up afterwards, in case it committed.
    unsure: Vec<String>,
    /// Debits refused for want of credits, and of those, refused while the account as a whole
    /// (its item and its lanes, read the instant the answer came) could still pay one.
    refused: u64,
    inexact_refusals: u64,
}

/// The account's balance as a whole, read from the model's store at no cost in virtual time.
async fn whole_balance(store: &ModelStore) -> i64 {
    let inner = &store.inner;
    let Ok(Some(a)) = inner.load_account(ACCOUNT).await else { return 0 };
    let mut total = a.balance.get();
    for n in 1..=a.lanes_ever() {
        if let Ok(Some(l)) = inner.load_account(&topup::lanes::lane_id(ACCOUNT, n)).await {
            total += l.balance.get();
        }
    }
    total
}

/// One Lambda environment: one request at a time until the window closes.
async fn worker(
    credits: Arc<Service>,
    store: Arc<ModelStore>,
    mode: Mode,
    w: usize,
    seed: u64,
    (from, to): (Instant, Instant),
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = XorShift::new(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut i = 0u64;
    while Instant::now() < to {
        let started = Instant::now();
        sleep(FRONT.sample(&mut rng)).await;
        let (mut applied, mut debited) = (0u64, 0i64);
        let mut refusals = 0u64;
        let mut unsure = Vec::new();
        let mut errors = Vec::new();
        match mode {
            Mode::Single | Mode::Entity { batch: 1 } | Mode::Auto { batch: 1 } => {
                let k = format!("s{w}-{i}");
                let entity = matches!(mode, Mode::Entity { .. }).then_some(ENTITY);
                match credits.debit_as(ACCOUNT, CONSUMABLE, 1, &key(&k), entity).await {
                    Ok(d) => {
                        applied = 1;
                        debited = d.from_credits;
                    }
                    Err(e) => {
                        if e.code() == "usage_limit_reached" {
                            refusals += 1;
                        }
                        errors.push(e.code().to_string());
                        unsure.push(k);
                    }
                }
            }
            Mode::Batch(n) | Mode::Lanes { batch: n, .. } | Mode::Entity { batch: n } | Mode::Auto { batch: n } => {
                let entity = matches!(mode, Mode::Entity { .. }).then(|| ENTITY.to_string());
                let events: Vec<UsageEvent> = (0..n)
                    .map(|j| UsageEvent {
                        consumable: CONSUMABLE.into(),
                        quantity: 1,
                        key: key(&format!("b{w}-{i}-{j}")),
                        entity: entity.clone(),
                    })
                    .collect();
                match credits.debit_batch(ACCOUNT, &events).await {
                    Ok(r) => {
                        for e in r.results {
                            if e.status == 200 && !e.replayed {
                                applied += 1;
                                debited += e.from_credits.unwrap_or(0);
                            } else {
                                refusals += u64::from(e.status == 402);
                                errors.push(format!("event {}{}", e.status, if e.replayed { " replayed" } else { "" }));
                                unsure.push(e.idempotency_key);
                            }
                        }
                    }
                    Err(e) => {
                        errors.push(e.code().to_string());
                        unsure.extend(events.iter().map(|e| e.key.as_str().to_string()));
                    }
                }
            }
        }
        let done = Instant::now();
        // A refusal is exact only if the whole account could not pay one more debit when it was
        // answered (credits only go down here, so it could not when it was decided either).
        let inexact = if refusals > 0 && whole_balance(&store).await >= 1_000 { refusals } else { 0 };
        if inexact > 0 && std::env::var("TOPUP_MODEL_DEBUG").is_ok() {
            if let Ok(Some(a)) = store.inner.load_account(ACCOUNT).await {
                let mut lanes = Vec::new();
                for n in 1..=a.lanes_ever() {
                    if let Ok(Some(l)) = store.inner.load_account(&topup::lanes::lane_id(ACCOUNT, n)).await {
                        if l.balance.get() != 0 {
                            lanes.push((n, l.balance.get(), l.version));
                        }
                    }
                }
                eprintln!("inexact: {errors:?} account {} v{} lanes {:?} out {:?} on lanes {lanes:?}", a.balance.get(), a.version, a.spread.lanes.as_ref().map(|l| (l.k, l.draining_until)), a.spread.lanes.as_ref().map(|l| l.out.keys().collect::<Vec<_>>()));
            }
        }
        let mut t = tally.lock().expect("tally");
        t.refused += refusals;
        t.inexact_refusals += inexact;
        if done >= from && done < to {
            t.window_applied += applied;
        }
        if started >= from && started < to {
            t.latencies_ms.push(done.duration_since(started).as_secs_f64() * 1000.0);
        }
        t.applied += applied;
        t.debited += debited;
        t.unsure.extend(unsure);
        for e in errors {
            *t.errors.entry(e).or_default() += 1;
        }
        i += 1;
    }
}

struct Row {
    mode: Mode,
    instances: usize,
    /// Debits answered as applied, per second of the window.
    debits_per_s: f64,
    /// Debits committed, per second of the window: also those whose request failed after they
    /// committed (a batch whose later commit failed), which a client's retry replays.
    committed_per_s: f64,
    /// What the busiest partition's 1,000 WCU/s sustains: at most `debits_per_s`.
    sustained_per_s: f64,
    /// WCU/s on the busiest partition key (above 1,000: spending the bucket's starting second,
    /// which a longer run would not have).
    hot_wcu_per_s: f64,
    commits_per_s: f64,
    conflict_rate: f64,
    stale_rate: f64,
    throttle_rate: f64,
    wcu_per_debit: f64,
    /// The share of `wcu_per_debit` spent on transactions whose condition failed.
    wasted_per_debit: f64,
    wcu_by_kind: String,
    p50: f64,
    p99: f64,
    errors: String,
    invariant: Result<String, String>,
    /// Debits refused for want of credits, and those refused while the whole could pay one.
    refused: u64,
    inexact: u64,
    /// The run drained its credits (the exact-refusal run).
    drained: bool,
    /// Lanes the account had when the window closed.
    lanes_at_end: u32,
    /// An `Auto` run: whether the account, left quiet, came back to one lane with every lane's
    /// credits home.
    quiet: Option<Result<String, String>>,
}

/// Leaves the account quiet for `QUIET_MS` and a minute, runs the scheduled expiry run (whose
/// index lists it), and checks it is back to one lane with nothing left on any lane.
async fn quiet_check(setup: &Service, store: &ModelStore) -> Result<String, String> {
    let before = store.inner.load_account(ACCOUNT).await.map_err(|e| e.to_string())?.ok_or("no account")?;
    let k_before = before.spread.lanes.as_ref().map_or(1, |l| l.k.max(1));
    sleep(Duration::from_millis(topup::lanes::spread::QUIET_MS as u64 + 60_000)).await;
    let report = setup.expire_grants(setup.now()).await.map_err(|e| format!("the scheduled run: {e:?}"))?;
    let after = store.inner.load_account(ACCOUNT).await.map_err(|e| e.to_string())?.ok_or("no account")?;
    let k = after.spread.lanes.as_ref().map_or(1, |l| l.k.max(1));
    let mut held = 0i64;
    for n in 1..=after.lanes_ever() {
        if let Ok(Some(l)) = store.inner.load_account(&topup::lanes::lane_id(ACCOUNT, n)).await {
            held += l.balance.get();
        }
    }
    if k != 1 || held != 0 || after.leased_out() {
        return Err(format!("after quiet: {k} lanes (from {k_before}), {held} µcr still on lanes; run: {report:?}"));
    }
    Ok(format!("{k_before} lanes → 1 by the scheduled run, every lane's credits home"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run_with(profile: &Profile, mode: Mode, instances: usize, seed: u64, grant: i64) -> Row {
    // Single debits drained to empty: with no low-balance threshold, so that the floor (below
    // which every debit is decided on the account's item, one at a time) is zero and the run
    // reaches empty inside its window.
    let mut profile = profile.clone();
    if mode == (Mode::Auto { batch: 1 }) && grant < GRANT_CREDITS * C {
        profile.low_balance.default_threshold = topup::money::Micros::ZERO;
    }
    let profile = &profile;
    let store = Arc::new(ModelStore::new(seed));
    let bus = Arc::new(MemoryBus::default());
    // The service's clock is the model's virtual time (the policy's windows and cooldowns).
    let clock: Arc<dyn topup::clock::Clock> = Arc::new(VirtualClock(Instant::now()));
    let service = || Arc::new(Credits::new(profile.clone(), store.clone(), bus.clone()).with_clock(clock.clone()));
    let setup = service();
    setup.upsert_account(ACCOUNT, "free", vec![]).await.expect("create the account");
    setup.adjust(ACCOUNT, grant, "bench", &key("grant")).await.expect("grant credits");
    // Past the month's allowance, so every debit draws credits and writes a ledger entry.
    setup.debit(ACCOUNT, CONSUMABLE, 1_000, &key("allowance")).await.expect("use the allowance");
    // Every mode but `Auto` fixes its lane count (1: the account's item alone), as an operator's
    // override would: the rows before rules §21, beside the account left to spread itself.
    if !matches!(mode, Mode::Auto { .. }) {
        setup.set_lanes(ACCOUNT, mode.lanes()).await.expect("lanes");
    }
    if matches!(mode, Mode::Entity { .. }) {
        let limit = topup::entities::EntitySettings { monthly_limit: Some(Some(grant)), name: None };
        setup.set_entity(ACCOUNT, ENTITY, &limit).await.expect("the entity's limit");
    }
    let start = store.inner.load_account(ACCOUNT).await.expect("read").expect("account");

    let tally = Arc::new(Mutex::new(Tally::default()));
    let from = Instant::now() + WARM;
    let to = from + WINDOW;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..instances {
        workers.spawn(worker(service(), store.clone(), mode, w, seed, (from, to), tally.clone()));
    }
    sleep_until(from).await;
    let before = store.stats();
    sleep_until(to).await;
    let window = store.stats().since(&before);
    while let Some(done) = workers.join_next().await {
        done.expect("worker");
    }

    let t = std::mem::take(&mut *tally.lock().expect("tally"));
    let invariant = check(&store, &start, &t).await;
    let lanes_at_end = store.inner.load_account(ACCOUNT).await.ok().flatten().map_or(1, |a| a.spread.lanes.map_or(1, |l| l.k.max(1)));
    // Left alone, an account that spread itself returns to one lane, every lane's credits home:
    // the scheduled run, `QUIET_MS` of quiet later.
    let quiet = if matches!(mode, Mode::Auto { .. }) { Some(quiet_check(&setup, &store).await) } else { None };
    let secs = WINDOW.as_secs_f64();
    // Per debit that committed in the window, answered or not.
    let debits = window.entries.max(1) as f64;
    let debits_per_s = t.window_applied as f64 / secs;
    let hot_wcu = window.hottest().map_or(0.0, |(_, w)| w);
    let sustained_per_s = if hot_wcu > 0.0 {
        debits_per_s.min(PARTITION_WCU_PER_S * secs * debits_per_s / hot_wcu)
    } else {
        debits_per_s
    };
    let mut lat = t.latencies_ms.clone();
    lat.sort_by(f64::total_cmp);
    let per_kind: Vec<String> = window
        .wcu
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| match window.largest.get(k) {
            Some(b) => format!("{k} {:.2} (largest {b} B)", v / debits),
            None => format!("{k} {:.2}", v / debits),
        })
        .collect();
    Row {
        mode,
        instances,
        debits_per_s,
        committed_per_s: window.entries as f64 / secs,
        sustained_per_s,
        hot_wcu_per_s: hot_wcu / secs,
        commits_per_s: (window.commits - window.conflicts - window.unavailable - window.condition_failed) as f64 / secs,
        conflict_rate: window.conflicts as f64 / window.commits.max(1) as f64,
        stale_rate: window.condition_failed as f64 / window.commits.max(1) as f64,
        throttle_rate: window.throttles as f64 / window.requests.max(1) as f64,
        wcu_per_debit: window.total_wcu() / debits,
        wasted_per_debit: window.wcu_failed / debits,
        wcu_by_kind: format!(
            "{}; busiest partition {}",
            per_kind.join(", "),
            window.hottest().map_or("-".to_string(), |(k, w)| format!("{k} at {:.0} WCU/s", w / secs))
        ),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        errors: if t.errors.is_empty() {
            "-".into()
        } else {
            t.errors.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
        },
        invariant,
        lanes_at_end,
        quiet,
        refused: t.refused,
        inexact: t.inexact_refusals,
        drained: false,
    }
}

/// Every entry of one chain (the account, or one of its lanes), oldest first.
async fn chain(inner: &MemoryStore, id: &str) -> Result<Vec<LedgerEntry>, String> {
    let (mut all, mut before) = (Vec::new(), None);
    loop {
        let (page, more) = inner.ledger_page(id, 1_000, before).await.map_err(|e| e.to_string())?;
        before = page.last().map(|e| e.seq);
        all.extend(page);
        if !more || before.is_none() {
            break;
        }
    }
    all.reverse();
    Ok(all)
}

/// The balance as a whole (the account's and its lanes') is the starting balance less every
/// debit that committed: those answered as applied, and any whose answer was lost (its key
/// committed, its request failed); the debits in the ledgers since the start say the same; and
/// reconciliation finds nothing wrong with the account, any lane, or the leases between them.
async fn check(store: &ModelStore, start: &Account, t: &Tally) -> Result<String, String> {
    let inner = &store.inner;
    let (mut recovered, mut recovered_n) = (0i64, 0u64);
    for k in &t.unsure {
        if let Some(rec) = inner.load_idempotency(ACCOUNT, &format!("usage:{k}")).await.map_err(|e| e.to_string())? {
            let took = rec.outcome.get("from_credits").and_then(|v| v.as_i64());
            recovered += took.ok_or_else(|| format!("the outcome of {k} has no from_credits: {}", rec.outcome))?;
            recovered_n += 1;
        }
    }
    let debited = t.debited + recovered;
    let end = inner.load_account(ACCOUNT).await.map_err(|e| e.to_string())?.ok_or("the account is gone")?;
    let whole = whole_balance(store).await;
    let expected = start.balance.get() - debited;
    if whole != expected {
        return Err(format!("whole balance {whole} != start {} − debited {debited}", start.balance.get()));
    }
    let own = chain(inner, ACCOUNT).await?;
    let mut problems = topup::reconcile::ledger_differences(&end, &own);
    let mut debits: Vec<LedgerEntry> = own.iter().filter(|e| e.seq > start.version).cloned().collect();
    let mut lanes = Vec::new();
    for n in 1..=end.lanes_ever() {
        let id = topup::lanes::lane_id(ACCOUNT, n);
        let Some(lane) = inner.load_account(&id).await.map_err(|e| e.to_string())? else { continue };
        let ledger = chain(inner, &id).await?;
        problems.extend(topup::reconcile::ledger_differences(&lane, &ledger));
        debits.extend(ledger.iter().cloned());
        lanes.push((lane, ledger));
    }
    if end.lanes_ever() > 0 {
        problems.extend(topup::lanes::lane_differences(&end, &own, &lanes));
    }
    if let Some(p) = problems.first() {
        return Err(format!("reconciliation: {} {}", p.code, p.detail));
    }
    debits.retain(|e| e.kind == topup::ledger::EntryKind::Consumption);
    let sum: i64 = debits.iter().map(|e| e.amount.get()).sum();
    let entries = debits.len() as u64;
    if sum != -debited || entries != t.applied + recovered_n {
        return Err(format!(
            "ledgers since start: {entries} debits summing {sum}; answered {} debits (+{recovered_n} recovered) of {debited}",
            t.applied
        ));
    }
    Ok(format!(
        "ok: {entries} debits, {debited} µcr, {recovered_n} recovered from keys of failed requests{}",
        if lanes.is_empty() { String::new() } else { format!("; {} lanes reconciled with the account", lanes.len()) }
    ))
}

fn print_assumptions() {
    println!("# modelled, not measured: one account against a model of DynamoDB in virtual time (tokio, paused clock)");
    println!("# model assumptions:");
    println!(
        "#   TransactWriteItems latency: lognormal, median {} ms, p99 {} ms, ×(1 + {}·(items−1)) (a {}-item commit: median {:.1} ms)",
        TRANSACTION.median_ms,
        TRANSACTION.p99_ms,
        PER_ITEM,
        EVENTS_PER_COMMIT + 2,
        TRANSACTION.median_ms * (1.0 + PER_ITEM * (EVENTS_PER_COMMIT + 1) as f64)
    );
    println!(
        "#   reads (GetItem, Query), one-item writes, and refusals (conflict, throttle): lognormal, median {} ms, p99 {} ms",
        SINGLE.median_ms, SINGLE.p99_ms
    );
    println!("#   conflict: a transaction touching an item (pk+sk) held by one in flight fails at once with TransactionConflict (nothing queues);");
    println!("#     an admitted transaction holds its items for its whole latency and is applied at its end; the holder always wins");
    println!(
        "#   capacity: token bucket per partition key, {PARTITION_WCU_PER_S} WCU/s, starting at {BUCKET_START_S} s of it, keeping at most {BUCKET_KEEP_S} s;"
    );
    println!("#     admitted only if every partition it writes has the WCU; no adaptive capacity, no split for heat");
    println!(
        "#   throttled: the SDK retries {THROTTLE_RETRIES} times after {}–{} ms·2^n, then the commit fails Unavailable",
        BACKOFF_MS.0, BACKOFF_MS.1
    );
    println!("#   WCU: 2 per started KB of each transaction item (adapters::dynamo::commit_items sizes), a replaced item at the larger");
    println!("#     of its last charged and new size; one admitted whose condition fails (stale version, claimed key) is charged like a");
    println!("#     failed conditional write, each item at its stored size (at least 1 KB); refused for conflict or capacity: not charged");
    println!(
        "#   front: API Gateway + Lambda invoke + the way back, per request: lognormal, median {} ms, p99 {} ms (in a request's latency)",
        FRONT.median_ms, FRONT.p99_ms
    );
    println!("#   Lambda: each instance is its own Credits (own cache) serving one request at a time, back to back (closed loop);");
    println!("#     handler compute time is 0 ms; the engine's retry jitter is its own (not seeded: runs differ a little); its 5 s");
    println!("#     write budget is timed on the real clock, so only its 100 attempts bound a write here");
    println!(
        "#   load: one account on `usd-overage`/free past its allowance, each debit 1 {CONSUMABLE} (1,000 µcr, a ledger entry); {} s warm-up, {} s counted; batches commit {EVENTS_PER_COMMIT} events at a time",
        WARM.as_secs(),
        WINDOW.as_secs()
    );
    println!("# columns (all modelled, over the counted window):");
    println!("#   debits/s: debits answered as applied; committed: debits that committed, also those of a batch whose request then");
    println!("#     failed (a later commit of it did not); sustained: debits/s capped at what 1,000 WCU/s on the busiest partition key");
    println!("#     allows (hot pk WCU/s above 1,000: the run spent the bucket's starting second, which a longer one would not have)");
    println!("#   commits/s: transactions that wrote; conflicts, cond fail (stale version or claimed key): per commit attempt;");
    println!("#   throttles: per TransactWriteItems sent; WCU/debit: all WCU charged / debits committed; wasted: the part of it charged");
    println!("#     for transactions whose condition failed; p50/p99: requests (a whole batch) started in the window, however late they");
    println!("#     end, retries included; errors: requests (or events) not answered as applied");
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let real = std::time::Instant::now();
    let profile = Profile::load("usd-overage").unwrap_or_else(|e| panic!("profile: {e}"));
    print_assumptions();
    println!();
    // (heading, second line, width) of each column; the first is left-aligned.
    const COLUMNS: [(&str, &str, usize); 15] = [
        ("modelled", "", 16),
        ("inst", "", 4),
        ("debits/s", "", 9),
        ("committed", "debits/s", 9),
        ("sustained", "debits/s", 9),
        ("hot pk", "WCU/s", 7),
        ("commits/s", "", 9),
        ("conflicts", "/attempt", 9),
        ("cond fail", "/attempt", 9),
        ("throttles", "/request", 9),
        ("WCU/debit", "", 9),
        ("wasted", "of it", 7),
        ("p50 ms", "request", 8),
        ("p99 ms", "request", 8),
        (" errors", "", 0),
    ];
    for line in [0, 1] {
        let cells: Vec<String> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, &(a, b, w))| {
                let text = if line == 0 { a } else { b };
                if i == 0 {
                    format!("{text:<w$}")
                } else {
                    format!("{text:>w$}")
                }
            })
            .collect();
        println!("{}", cells.join(" ").trim_end());
    }
    let modes = [
        Mode::Single,
        Mode::Batch(10),
        Mode::Batch(50),
        Mode::Batch(500.min(MAX_BATCH_EVENTS)),
        Mode::Lanes { k: 4, batch: 50 },
        Mode::Lanes { k: 8, batch: 50 },
    ];
    // `TOPUP_MODEL_ONLY=entity` runs only the rows of debits that name an entity; `=sweep`
    // only the sweep of an account left to spread itself.
    let only = std::env::var("TOPUP_MODEL_ONLY").unwrap_or_default();
    let (only_entity, only_sweep) = (only == "entity", only == "sweep");
    let entity_modes = [Mode::Entity { batch: 1 }, Mode::Entity { batch: 50 }];
    let sweep_modes = [Mode::Auto { batch: 1 }, Mode::Auto { batch: 50 }, Mode::Auto { batch: 500.min(MAX_BATCH_EVENTS) }];
    // `TOPUP_MODEL_BATCH=n` narrows the sweep to one batch size (1: single debits).
    let batch_only: Option<usize> = std::env::var("TOPUP_MODEL_BATCH").ok().and_then(|v| v.parse().ok());
    let sweep_modes: Vec<Mode> =
        sweep_modes.into_iter().filter(|m| batch_only.is_none_or(|b| *m == Mode::Auto { batch: b })).collect();
    let modes: Vec<Mode> = if only_entity {
        entity_modes.to_vec()
    } else if only_sweep {
        sweep_modes.clone()
    } else {
        modes.iter().chain(&entity_modes).chain(sweep_modes.iter()).copied().collect()
    };
    let mut runs: Vec<(Mode, usize, i64)> = Vec::new();
    // `TOPUP_MODEL_ENVS=64,128` narrows the sweep to those counts of environments.
    let envs: Option<Vec<usize>> =
        std::env::var("TOPUP_MODEL_ENVS").ok().map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let sweep_counts: Vec<usize> = SWEEP_INSTANCES.iter().copied().filter(|n| envs.as_ref().is_none_or(|e| e.contains(n))).collect();
    for mode in modes {
        let counts: &[usize] = if matches!(mode, Mode::Auto { .. }) {
            &sweep_counts
        } else if mode.lanes() > 1 {
            &LANE_INSTANCES
        } else {
            &INSTANCES
        };
        runs.extend(counts.iter().map(|n| (mode, *n, GRANT_CREDITS * C)));
    }
    // Lanes drained to empty under load: every refusal must be one the whole account could not
    // pay (credits for about two seconds of the load, then refusals for the rest of the window).
    if !only_entity && !only_sweep {
        runs.push((Mode::Lanes { k: 8, batch: 50 }, 64, DRAIN_CREDITS * C));
    }
    // The same for an account left to spread itself, single debits and batches of 50.
    if !only_entity && batch_only.is_none_or(|b| b == 1) {
        runs.push((Mode::Auto { batch: 1 }, 64, AUTO_DRAIN_CREDITS * C));
    }
    if !only_entity && batch_only.is_none_or(|b| b == 50) {
        runs.push((Mode::Auto { batch: 50 }, 64, DRAIN_CREDITS * C));
    }
    let mut rows = Vec::new();
    for (m, (mode, instances, grant)) in runs.iter().enumerate() {
        {
            let (mode, instances) = (mode, instances);
            let row = run_with(&profile, *mode, *instances, SEED ^ ((m as u64) << 8 | *instances as u64), *grant).await;
            let row = Row { drained: *grant < GRANT_CREDITS * C, ..row };
            println!(
                "{:<16} {:>4} {:>9.0} {:>9.0} {:>9.0} {:>7.0} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>9.2} {:>7.2} {:>8.1} {:>8.1}  {}",
                row.mode.label(),
                row.instances,
                row.debits_per_s,
                row.committed_per_s,
                row.sustained_per_s,
                row.hot_wcu_per_s,
                row.commits_per_s,
                row.conflict_rate,
                row.stale_rate,
                row.throttle_rate,
                row.wcu_per_debit,
                row.wasted_per_debit,
                row.p50,
                row.p99,
                row.errors
            );
            rows.push(row);
        }
    }

    println!();
    println!("# modelled WCU per debit by item kind (window)");
    for r in &rows {
        println!("{:<16} {:>4}  {}", r.mode.label(), r.instances, r.wcu_by_kind);
    }

    println!();
    println!("# invariant: balance = starting balance − what was debited, and the ledger since the start agrees");
    let mut failed = 0;
    for r in &rows {
        match &r.invariant {
            Ok(s) => println!("{:<16} {:>4}  {s}", r.mode.label(), r.instances),
            Err(e) => {
                failed += 1;
                println!("{:<16} {:>4}  FAILED: {e}", r.mode.label(), r.instances);
            }
        }
    }

    println!();
    let best = |pick: &dyn Fn(&Row) -> bool| {
        rows.iter().filter(|r| pick(r)).max_by(|a, b| a.sustained_per_s.total_cmp(&b.sustained_per_s))
    };
    if let Some(b) = best(&|r| matches!(r.mode, Mode::Batch(_))) {
        println!(
            "# modelled target ≥1,000 debits/s for one account through batches: {} (best sustained {:.0}/s, {} on {} instances)",
            if b.sustained_per_s >= 1000.0 { "met" } else { "NOT met" },
            b.sustained_per_s,
            b.mode.label(),
            b.instances
        );
    }
    let b50: Vec<String> = rows
        .iter()
        .filter(|r| r.mode == Mode::Batch(50))
        .map(|r| {
            format!("{} on {} instance(s)", if r.wcu_per_debit <= 2.5 { "met" } else { "NOT met" }, r.instances)
                + &format!(" ({:.2})", r.wcu_per_debit)
        })
        .collect();
    println!("# modelled target ≤2.5 WCU per debit at batch 50: {}", b50.join("; "));
    if let Some(s) = best(&|r| r.mode == Mode::Single) {
        println!(
            "# modelled single debits beside it: best sustained {:.0}/s on {} instances, {:.2} WCU per debit",
            s.sustained_per_s, s.instances, s.wcu_per_debit
        );
    }
    if let Some(l) = best(&|r| r.mode.lanes() > 1 && !r.drained) {
        let hot_share = l.hot_wcu_per_s / PARTITION_WCU_PER_S;
        println!(
            "# modelled target ≥10,000 debits/s for one account with lanes: {} (best sustained {:.0}/s, {} on {} instances, {:.2} WCU per debit; busiest partition at {:.0}% of 1,000 WCU/s)",
            if l.sustained_per_s >= 10_000.0 { "met" } else { "NOT met" },
            l.sustained_per_s,
            l.mode.label(),
            l.instances,
            l.wcu_per_debit,
            hot_share * 100.0
        );
        println!(
            "#   table write capacity at that rate: {:.0} WCU/s ({:.2} WCU per debit × {:.0} debits/s), ≈ ${:.2} per million debits on demand at $0.625 per million write units",
            l.wcu_per_debit * l.sustained_per_s,
            l.wcu_per_debit,
            l.sustained_per_s,
            l.wcu_per_debit * 0.625
        );
    }
    for r in rows.iter().filter(|r| r.mode.lanes() > 1 || matches!(r.mode, Mode::Auto { .. })) {
        if r.inexact > 0 || r.drained {
            println!(
                "# exact refusals ({}, {} instances{}): {} debits refused, {} of them while the whole account could pay one ({})",
                r.mode.label(),
                r.instances,
                if r.drained { ", drained to empty" } else { "" },
                r.refused,
                r.inexact,
                if r.inexact == 0 && (r.refused > 0 || !r.drained) { "exact" } else { "NOT exact" }
            );
        }
    }
    let inexact: u64 = rows.iter().map(|r| r.inexact).sum();
    let drained_refused = rows.iter().any(|r| r.drained && r.refused > 0);
    let mut sweep_failed = Vec::new();
    let sweep: Vec<&Row> = rows.iter().filter(|r| matches!(r.mode, Mode::Auto { .. }) && !r.drained).collect();
    if !sweep.is_empty() {
        println!();
        println!("# the sweep: one account left to spread itself (rules §21), no operator call; modelled");
        println!("{:<16} {:>4} {:>9} {:>8} {:>8} {:>9} {:>6}  {}", "modelled", "inst", "sustained", "p50 ms", "p99 ms", "WCU/debit", "lanes", "of the peak so far");
        let mut modes: Vec<Mode> = sweep.iter().map(|r| r.mode).collect();
        modes.dedup();
        for mode in modes {
            let mut points: Vec<&&Row> = sweep.iter().filter(|r| r.mode == mode).collect();
            points.sort_by_key(|r| r.instances);
            let (mut peak, mut lowest): (f64, Option<(f64, usize)>) = (0.0, None);
            for r in &points {
                peak = peak.max(r.sustained_per_s);
                let share = if peak > 0.0 { r.sustained_per_s / peak } else { 1.0 };
                if lowest.is_none_or(|(l, _)| share < l) {
                    lowest = Some((share, r.instances));
                }
                println!(
                    "{:<16} {:>4} {:>9.0} {:>8.1} {:>8.1} {:>9.2} {:>6}  {:.0}%",
                    r.mode.label(), r.instances, r.sustained_per_s, r.p50, r.p99, r.wcu_per_debit, r.lanes_at_end, share * 100.0
                );
            }
            let (low, at) = lowest.unwrap_or((1.0, 0));
            let held = low >= 0.9;
            println!(
                "# {}: peak {:.0}/s; from 1 to 256 environments the sustained rate {} 90% of the peak before it (lowest {:.0}%, at {at})",
                mode.label(),
                peak,
                if held { "held ≥" } else { "fell below" },
                low * 100.0
            );
            if !held {
                sweep_failed.push(format!("{}: fell to {:.0}% of its peak at {at}", mode.label(), low * 100.0));
            }
            // p99 at half the peak: of the points up to the peak's, the one whose rate is nearest
            // half the peak (the account serving half what it can, not one past its peak).
            let peak_at = points.iter().find(|r| r.sustained_per_s >= peak).map_or(usize::MAX, |r| r.instances);
            if let Some(half) = points.iter().filter(|r| r.instances <= peak_at).min_by(|a, b| {
                (a.sustained_per_s - peak / 2.0).abs().total_cmp(&(b.sustained_per_s - peak / 2.0).abs())
            }) {
                let ok = half.p99 <= 100.0;
                println!(
                    "# {}: p99 at about half the peak ({:.0}/s, {} environments): {:.1} ms ({} ≤ 100 ms)",
                    mode.label(),
                    half.sustained_per_s,
                    half.instances,
                    half.p99,
                    if ok { "met" } else { "NOT met" }
                );
                if !ok {
                    sweep_failed.push(format!("{}: p99 {:.1} ms at half the peak", mode.label(), half.p99));
                }
            }
            if mode == (Mode::Auto { batch: 1 }) {
                if let Some(r) = points.iter().find(|r| r.instances == 64) {
                    let ok = r.sustained_per_s >= 2_000.0;
                    println!(
                        "# modelled target ≥2,000 single, unbatched debits/s from 64 environments, no operator call: {} ({:.0}/s on {} lanes)",
                        if ok { "met" } else { "NOT met" },
                        r.sustained_per_s,
                        r.lanes_at_end
                    );
                    if !ok {
                        sweep_failed.push(format!("single debits from 64: {:.0}/s", r.sustained_per_s));
                    }
                }
            }
        }
        for r in rows.iter().filter(|r| r.quiet.is_some()) {
            match &r.quiet {
                Some(Ok(s)) => println!("# quiet after {} on {}: {s}", r.mode.label(), r.instances),
                Some(Err(e)) => {
                    println!("# quiet after {} on {}: FAILED: {e}", r.mode.label(), r.instances);
                    sweep_failed.push(format!("quiet: {e}"));
                }
                None => {}
            }
        }
    }
    println!("# {:.1} s of real time", real.elapsed().as_secs_f64());
    if !sweep_failed.is_empty() {
        eprintln!("the sweep missed: {}", sweep_failed.join("; "));
    }
    if inexact > 0 || (!drained_refused && !only_entity) {
        eprintln!("a refusal was not exact ({inexact}), or the drained run refused nothing");
        std::process::exit(1);
    }
    if failed > 0 {
        eprintln!("{failed} configuration(s) broke the invariant");
        std::process::exit(1);
    }
}
