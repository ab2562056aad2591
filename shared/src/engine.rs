//! The write engine every capability shares: one compare-and-swap `apply`. Every operation
//! plans the account's next state from a known state, then commits it with a compare-and-swap on `version` in one transaction with its
//! ledger entry, idempotency claim, hold record and outbox events (rules §6, §10).
//!
//! The known state comes from a per-process cache of the last state this process wrote or
//! read, so the normal path is exactly one write and no read. When another writer got there
//! first, the failed condition returns the current item and the plan is made again. A refusal
//! (402, 422) decided on cached state is re-checked on a fresh read before it is returned.

//!
//! A plan is typed: `Plan::Write` (commit this change, answer its outcome) or `Plan::AlreadySo`
//! (nothing to write, answer this); a refusal is an `Err`. The outcome of an idempotent
//! operation is stored with its key, so a replay answers the same typed result.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::account::{Account, RechargeRecord};
use crate::clock;
use crate::error::ApiError;
use crate::cause::{Cause, Effect};
use crate::events::DomainEvent;
use crate::events::{publish_committed, EventBus};
use crate::ledger::{crossing_events, Credited, HoldRecord, IdemRecord, LedgerEntry};
use crate::profile::Profile;
use crate::store::{Commit, CommitError, HoldWrite, PurchaseWrite, Store, StoreError};

/// Attempts before a contended write answers 503 `account_busy`.
pub(crate) const MAX_ATTEMPTS: u32 = 100;
/// How long a balance write may wait (for this process's queue of the account and for
/// retries after losing a race) before it answers 503 `account_busy` with `Retry-After`:
/// well inside the shortest function timeout (10 s), so a caller gets our JSON, never the
/// gateway's timeout (rules §13).
pub const WRITE_BUDGET: Duration = Duration::from_secs(5);
/// Writes to one account from one process queue on one of these stripes instead of racing
/// each other; writers in other processes are resolved by the compare-and-swap.
const STRIPES: usize = 256;
const CACHE_CAP: usize = 10_000;

/// What a plan decides on one known state of the account.
pub(crate) enum Plan<T> {
    /// Commit this change and answer its outcome.
    Write(Box<Change<T>>),
    /// The account is already as asked: nothing is written, and this is the answer.
    AlreadySo(T),
}

/// One change to commit: the account's next state and what commits with it. A small core
/// every change has, and extras only the changes that add them name (`Change::quiet(..)` then
/// `with_*`).
pub(crate) struct Change<T> {
    pub(crate) next: Account,
    /// What the operation answers when this commits (and, keyed, on every replay).
    pub(crate) outcome: T,
    pub(crate) cause: Cause,
    /// Its ledger entries, oldest first, `seq` contiguous up to `next.version`: none, one, or a
    /// group commit's.
    pub(crate) entries: Vec<LedgerEntry>,
    /// Events besides the threshold crossings, written to the outbox with the change.
    pub(crate) events: Vec<DomainEvent>,
    /// What else commits with it.
    pub(crate) extras: Extras,
}

/// What a change may commit besides its core; each is set by its `Change::with_*`.
#[derive(Default)]
pub(crate) struct Extras {
    /// A hold created or settled.
    pub(crate) hold: Option<HoldWrite>,
    /// A purchase state change committed with this balance change.
    pub(crate) purchase: Option<PurchaseWrite>,
    /// A recharge's permanent record, written with its claim.
    pub(crate) recharge: Option<RechargeRecord>,
    /// A credited payment.
    pub(crate) payment: Option<PaymentCredit>,
    /// A group commit's keys.
    pub(crate) group: Option<Group>,
    /// Entities whose spend moves with the change (rules §17), each conditioned on the
    /// version it was planned on.
    pub(crate) entities: Vec<crate::entities::EntityWrite>,
    /// What the change records of itself in the audit log (rules §19), committed with it.
    pub(crate) audit: Option<crate::audit::AuditChange>,
}

/// A credited payment: its PaymentIntent id, indexed to the account, and what it credited, kept
/// as a field of its permanent claim.
pub(crate) struct PaymentCredit {
    pub(crate) payment_id: String,
    pub(crate) credited: Credited,
}

/// A group commit's idempotency records, each claimed with the change, and whether some event
/// of it was refused for want of credits: on an account whose lanes hold credits, that is
/// decided again on the whole (rules §14).
pub(crate) struct Group {
    pub(crate) keys: Vec<IdemRecord>,
    pub(crate) refused: bool,
}

impl<T> Change<T> {
    /// A change of the account alone: no ledger entry, no events, no extras; the others start
    /// from it and add theirs.
    pub(crate) fn quiet(next: Account, cause: Cause, outcome: T) -> Change<T> {
        Change { next, outcome, cause, entries: vec![], events: vec![], extras: Extras::default() }
    }

    /// With its ledger entry.
    pub(crate) fn with_entry(self, entry: LedgerEntry) -> Change<T> {
        self.with_entries([entry])
    }

    /// With these ledger entries (after any it has): an `Option` adds its one, if any.
    pub(crate) fn with_entries(mut self, entries: impl IntoIterator<Item = LedgerEntry>) -> Change<T> {
        self.entries.extend(entries);
        self
    }

    /// With these events (after any it has).
    pub(crate) fn with_events(mut self, events: Vec<DomainEvent>) -> Change<T> {
        self.events.extend(events);
        self
    }

    /// With one event more.
    pub(crate) fn with_event(self, event: DomainEvent) -> Change<T> {
        self.with_events(vec![event])
    }

    pub(crate) fn with_hold(mut self, hold: HoldWrite) -> Change<T> {
        self.extras.hold = Some(hold);
        self
    }

    /// With a purchase's state change, if there is one.
    pub(crate) fn with_purchase(mut self, purchase: impl Into<Option<PurchaseWrite>>) -> Change<T> {
        self.extras.purchase = purchase.into();
        self
    }

    pub(crate) fn with_recharge(mut self, record: RechargeRecord) -> Change<T> {
        self.extras.recharge = Some(record);
        self
    }

    /// With a credited payment: `payment_id` indexed to the account, `credited` on its claim.
    pub(crate) fn with_payment(mut self, payment_id: String, credited: Credited) -> Change<T> {
        self.extras.payment = Some(PaymentCredit { payment_id, credited });
        self
    }

    /// As a group commit claiming `keys`; `refused` when some event was refused for want of
    /// credits.
    pub(crate) fn with_group(mut self, keys: Vec<IdemRecord>, refused: bool) -> Change<T> {
        self.extras.group = Some(Group { keys, refused });
        self
    }

    pub(crate) fn with_entities(mut self, entities: Vec<crate::entities::EntityWrite>) -> Change<T> {
        self.extras.entities.extend(entities);
        self
    }

    pub(crate) fn with_audit(mut self, audit: crate::audit::AuditChange) -> Change<T> {
        self.extras.audit = Some(audit);
        self
    }

    /// Whether some event of a group commit was refused for want of credits.
    pub(crate) fn refused(&self) -> bool {
        self.extras.group.as_ref().is_some_and(|g| g.refused)
    }

    pub(crate) fn write(self) -> Result<Plan<T>, ApiError> {
        Ok(Plan::Write(Box::new(self)))
    }
}

/// How `apply` ended.
pub(crate) enum Applied<T> {
    /// Committed now, already so, or the first result of a replayed key.
    Done(T),
    /// The hold named by the change is no longer open; its record, if it has one.
    HoldNotOpen(Option<Box<HoldRecord>>),
    /// The purchase moved on meanwhile (another delivery): read it again.
    PurchaseNotInState,
    /// Keys of a group commit (`Change::keys`) that were claimed already, with their first
    /// results: nothing was written; plan again knowing them.
    KeysClaimed(Vec<IdemRecord>),
    /// An entity the change named moved since it was read: nothing was written; read it again
    /// and plan again (rules §17).
    EntityMoved,
}

impl<T> Applied<T> {
    /// The outcome, for changes that carry no hold or purchase condition.
    pub(crate) fn done(self) -> Result<T, ApiError> {
        match self {
            Applied::Done(t) => Ok(t),
            Applied::HoldNotOpen(_) | Applied::PurchaseNotInState | Applied::KeysClaimed(_) | Applied::EntityMoved => {
                Err(ApiError::Upstream)
            }
        }
    }
}

/// An idempotency claim: scope and key, and the hash of the request it belongs to.
pub(crate) struct Claim {
    pub(crate) scope_key: String,
    pub(crate) hash: String,
    pub(crate) permanent: bool,
}

pub struct Credits<S, B> {
    pub profile: Profile,
    /// This deployment's name: Stripe idempotency keys and metadata carry it.
    stack: String,
    pub store: S,
    pub bus: B,
    cache: Mutex<HashMap<String, Account>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    write_budget: Duration,
    /// This process's lane on an account with lanes (rules §14): one process writes one lane,
    /// so its cached state of that lane is current unless another process shares it; it moves
    /// to another when it loses a race there (rules §21).
    pub(crate) home_lane: std::sync::atomic::AtomicU32,
    /// What this process saw of each account's contention: the lanes hook widens on it.
    pub(crate) spread: crate::lanes::spread::Contention,
    /// Where every operation reads the time.
    clock: std::sync::Arc<dyn clock::Clock>,
}

pub(crate) fn upstream(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::Upstream
}

/// The first result of a claimed key, or 409 when the key was used for another request.
pub(crate) fn replay<T: DeserializeOwned>(rec: &IdemRecord, claim: &Claim) -> Result<T, ApiError> {
    if rec.request_hash != claim.hash {
        return Err(ApiError::IdempotencyConflict);
    }
    serde_json::from_value(rec.outcome.clone()).map_err(|e| {
        tracing::error!(scope_key = %rec.scope_key, error = %e, "stored outcome does not read back");
        ApiError::Upstream
    })
}

impl<S: Store, B: EventBus> Credits<S, B> {
    pub fn new(profile: Profile, store: S, bus: B) -> Self {
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Credits {
            profile,
            stack: "topup".into(),
            store,
            bus,
            cache: Mutex::new(HashMap::new()),
            stripes,
            write_budget: WRITE_BUDGET,
            home_lane: u32::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..4].try_into().unwrap_or([0; 4])).into(),
            spread: Default::default(),
            clock: std::sync::Arc::new(clock::SystemClock),
        }
    }

    /// The same service reading the time from `clock` (tests and the simulator move it).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same service writing lane `n` of a hot account (rules §14); a new process picks one
    /// at random. For the simulator, whose processes must choose alike on every run of a seed.
    pub fn with_home_lane(self, n: u32) -> Self {
        self.home_lane.store(n, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Milliseconds since the Unix epoch, by this service's clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How long a write may wait before it answers 503 `account_busy` (see `WRITE_BUDGET`).
    pub(crate) fn write_budget(&self) -> Duration {
        self.write_budget
    }

    /// The same service with another write budget (see `WRITE_BUDGET`).
    pub fn with_write_budget(mut self, budget: Duration) -> Self {
        self.write_budget = budget;
        self
    }

    /// The same service for the deployment named `stack` (configuration's `TOPUP_STACK`).
    pub fn for_stack(mut self, stack: impl Into<String>) -> Self {
        self.stack = stack.into();
        self
    }

    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// A Stripe idempotency key for `what` of `id` in this deployment: `<stack>-<what>-<id>`.
    pub fn stripe_key(&self, what: &str, id: &str) -> String {
        format!("{}-{what}-{id}", self.stack)
    }

    /// The metadata every Stripe object made for `account_id` carries: whose it is, and which
    /// deployment made it; `more` adds the object's own.
    pub fn stripe_metadata(&self, account_id: &str, more: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut m =
            vec![("topup_account_id".to_string(), account_id.to_string()), ("topup_stack".into(), self.stack.clone())];
        m.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        m
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

    pub(crate) fn remember(&self, account: &Account) {
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
    pub(crate) async fn load(&self, id: &str) -> Result<Account, ApiError> {
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


    /// Plans on the known state and commits with a compare-and-swap on `version`, planning
    /// again on the current state when another writer got there first. A refusal or "already
    /// so" decided on a cached state is checked again on a fresh read before it is answered.
    pub(crate) async fn apply<T: Serialize + DeserializeOwned>(
        &self,
        account_id: &str,
        claim: Option<&Claim>,
        plan: impl FnMut(&Account, i64) -> Result<Plan<T>, ApiError>,
    ) -> Result<Applied<T>, ApiError> {
        // On the heap: every write of every path awaits this loop, and a caller that holds it
        // inline carries all its states (store calls, recalls, backoffs) in its own future.
        Box::pin(self.plan_and_commit(account_id, claim, plan)).await
    }

    async fn plan_and_commit<T: Serialize + DeserializeOwned>(
        &self,
        account_id: &str,
        claim: Option<&Claim>,
        mut plan: impl FnMut(&Account, i64) -> Result<Plan<T>, ApiError>,
    ) -> Result<Applied<T>, ApiError> {
        let started = std::time::Instant::now();
        let Ok(_queue) = tokio::time::timeout(self.write_budget, self.stripe(account_id).lock()).await else {
            tracing::warn!(account_id, "write waited its whole budget for this process's queue of the account");
            return Err(ApiError::Busy);
        };
        let (mut current, mut fresh) = match self.cached(account_id) {
            Some(a) => (a, false),
            None => (self.load(account_id).await?, true),
        };
        // A lane's writes: its keys are its account's, and it says nothing of thresholds.
        let owner = crate::lanes::owner_of(account_id);
        let on_lane = owner != account_id;
        // A recall of the account's lanes planned on the state read, committed with the change
        // it is for in one transaction (rules §14): no lease can come between them.
        let mut recalled: Option<crate::lanes::Recall> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.now();
            let result = plan(&current, now);
            if !on_lane && current.leased_out() && self.needs_recall(&current, &result, now) {
                // Decided on the whole account: planned again with its lanes' credits home.
                if !fresh {
                    current = self.load(account_id).await?;
                    fresh = true;
                    continue;
                }
                // The account and its lanes at one instant: an account read before another
                // process's recall, beside lanes read after it, would miss what came home.
                let (account, lanes) = self.snapshot(account_id).await?;
                current = account;
                if let Some(r) = crate::lanes::plan_recall(&current, &lanes, now) {
                    if r.partial {
                        // More lanes than one transaction carries: this part on its own (it
                        // holds leases off until the last), then the rest on a fresh read.
                        if !self.recall(r).await? {
                            self.backoff(attempt.max(1), started).await;
                        }
                        current = self.load(account_id).await?;
                        continue;
                    }
                    current = r.account.account.clone();
                    recalled = Some(r);
                }
                continue;
            }
            let planned = match result {
                Ok(Plan::Write(change)) => change,
                Ok(Plan::AlreadySo(outcome)) if fresh => return Ok(Applied::Done(outcome)),
                Ok(Plan::AlreadySo(_)) => {
                    current = self.load(account_id).await?;
                    fresh = true;
                    continue;
                }
                Err(refusal) => {
                    // An applied key answers with its first result, not with today's refusal.
                    if let Some(c) = claim {
                        if let Some(rec) = self.store.load_idempotency(owner, &c.scope_key).await.map_err(upstream)? {
                            return replay(&rec, c).map(Applied::Done);
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
            let recall = recalled.take();
            let (commit, outcome) =
                assemble(&self.profile, &current, *planned, claim, recall.as_ref().map(|r| &r.account), on_lane, now)?;
            let (next, outbox) = (commit.account.clone(), commit.outbox.clone());
            let mut lanes_after: Vec<Account> = Vec::new();
            let written = match recall {
                None => self.store.commit(commit).await,
                Some(r) => {
                    lanes_after = r.lanes.iter().map(|c| c.account.clone()).collect();
                    let mut all = vec![commit];
                    all.extend(r.lanes.iter().cloned());
                    match self.store.commit_all(all).await {
                        Err(CommitError::TooLarge(_)) => {
                            // Too much for one transaction beside the change: the recall alone
                            // first, then the change planned again on what it left.
                            if !self.recall(r).await? {
                                if self.write_budget.checked_sub(started.elapsed()).is_none() {
                                    break;
                                }
                                self.backoff(attempt, started).await;
                            }
                            current = self.load(account_id).await?;
                            fresh = true;
                            continue;
                        }
                        other => other,
                    }
                }
            };
            match written {
                Ok(()) => {
                    self.wrote(account_id, !fresh);
                    self.remember(&next);
                    for l in &lanes_after {
                        self.remember(l);
                    }
                    publish_committed(&self.store, &self.bus, &outbox).await;
                    return Ok(Applied::Done(outcome));
                }
                Err(CommitError::KeyClaimed(recs)) => {
                    if let Some(c) = claim {
                        if let Some(rec) = recs.iter().find(|r| r.scope_key == c.scope_key) {
                            return replay(rec, c).map(Applied::Done);
                        }
                    }
                    if recs.is_empty() {
                        return Err(ApiError::Upstream);
                    }
                    return Ok(Applied::KeysClaimed(recs));
                }
                Err(CommitError::HoldNotOpen(rec)) => return Ok(Applied::HoldNotOpen(rec)),
                Err(CommitError::PurchaseNotInState(_)) => return Ok(Applied::PurchaseNotInState),
                Err(CommitError::EntityMoved) => return Ok(Applied::EntityMoved),
                Err(CommitError::Stale(Some(a))) => {
                    // Stale on a state known fresh: another writer won the race.
                    if fresh {
                        self.lost_race(account_id);
                    }
                    self.overtaken(account_id);
                    self.remember(&a);
                    current = *a;
                    fresh = true;
                }
                Err(CommitError::Stale(None)) => {
                    if fresh {
                        self.lost_race(account_id);
                    }
                    self.overtaken(account_id);
                    current = self.load(account_id).await?;
                    fresh = true;
                }
                Err(CommitError::Conflict) => {
                    self.lost_race(account_id);
                    self.overtaken(account_id);
                    current = self.load(account_id).await?;
                    fresh = true;
                }
                Err(CommitError::Throttled) => {
                    // The partition is at its capacity: wait and try again within the write
                    // budget (then 503 with Retry-After), never a 502 for a write that would
                    // have been taken a moment later (rules §21). Not a lost race: more lanes
                    // would not make this process's own writes fit its partition.
                    self.throttled(account_id);
                    if self.write_budget.checked_sub(started.elapsed()).is_none() {
                        break;
                    }
                    self.backoff(attempt.max(1), started).await;
                    current = self.load(account_id).await?;
                    fresh = true;
                    continue;
                }
                Err(CommitError::Store(e)) => {
                    self.forget(account_id);
                    return Err(upstream(e));
                }
                Err(CommitError::TooLarge(why)) => {
                    // Limits are checked before a change is planned (rules §16); reaching
                    // here is a bug, not the caller's to retry.
                    tracing::error!(account_id, why, "a commit too large for one transaction");
                    self.forget(account_id);
                    return Err(ApiError::Upstream);
                }
            }
            if self.write_budget.checked_sub(started.elapsed()).is_none() {
                break;
            }
            if attempt >= 1 {
                // Contention with another process: exponential backoff with full jitter, then a
                // fresh read. The state the failure returned is stale once we have slept, and
                // planning on it would only lose the race again (holding the item, and paying
                // for a failed transaction, each time).
                self.backoff(attempt, started).await;
                current = self.load(account_id).await?;
                fresh = true;
            }
        }
        tracing::warn!(account_id, "write did not settle under contention");
        Err(ApiError::Busy)
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// Exponential backoff with full jitter after losing a race, within the write budget.
    pub(crate) async fn backoff(&self, attempt: u32, started: std::time::Instant) {
        let Some(left) = self.write_budget.checked_sub(started.elapsed()) else { return };
        let cap = (4u64 << attempt.min(6)).min(250);
        let r = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]));
        tokio::time::sleep(Duration::from_millis(r % cap).min(left)).await;
    }
}

/// A service over the in-memory store and bus, for the fast tests of every capability.

/// What one planned change commits, decided on the state it was planned on and nothing else
/// (no reads, no clock but `now`): the change's state with its low-balance episode kept, the
/// entries of grants that expired on the way before its own, their `GrantExpired` events and
/// the thresholds it crosses, its idempotency claim with its outcome, and a recall of the
/// account's lanes ahead of it when one is planned. Answers the commit and the outcome the
/// operation gives once it is written.
fn assemble<T: Serialize>(
    profile: &Profile,
    current: &Account,
    mut planned: Change<T>,
    claim: Option<&Claim>,
    recall: Option<&Commit>,
    on_lane: bool,
    now: i64,
) -> Result<(Commit, T), ApiError> {
    let account_id = current.id.as_str();
    let owner = crate::lanes::owner_of(account_id);
    // What `Account::next` and the grants produced besides the state: expiry entries
    // (before the change's own), and grants that ended.
    let pending = std::mem::take(&mut planned.next.pending);
    // Grants that expired in this write take the balance down as an expiry does (no
    // recharge for breakage), unless the change itself is usage.
    let expired = pending.entries.iter().any(|e| e.kind == crate::ledger::EntryKind::Expiry);
    let cause = if expired && planned.cause.effect() != Effect::Usage { Cause::Expiry } else { planned.cause };
    if !on_lane {
        mark_episode(profile, current, &mut planned.next, cause);
    }
    debug_assert!(planned.next.version > current.version);
    let mut outbox = planned.events;
    // Each grant that expired in this write says so once (rules §15).
    for e in pending.entries.iter().filter(|e| e.kind == crate::ledger::EntryKind::Expiry) {
        let Some(g) = pending.ended.iter().find(|g| e.grants.iter().any(|(id, _)| *id == g.id)) else {
            continue;
        };
        outbox.push(DomainEvent::new(
            account_id,
            now,
            crate::events::Event::GrantExpired(crate::events::GrantExpired {
                grant_id: g.id.clone(),
                expired: -e.amount.get(),
                expires_at: clock::rfc3339(g.expires_at.unwrap_or(now)),
                balance: planned.next.balance.get(),
            }),
        ));
    }
    outbox.extend(crossing_events(profile, current, &planned.next, now, planned.cause.as_str()));
    if on_lane {
        // A lane's balance is part of its account's, whose thresholds are decided on
        // the account (never with credits out on lanes); its parts are not grants.
        outbox.clear();
    }
    let (payment_index, credited) = match planned.extras.payment.take() {
        Some(p) => (Some(p.payment_id), Some(p.credited)),
        None => (None, None),
    };
    let mut idempotency: Vec<IdemRecord> = match claim {
        Some(c) => vec![IdemRecord {
            account_id: owner.to_string(),
            scope_key: c.scope_key.clone(),
            request_hash: c.hash.clone(),
            outcome: serde_json::to_value(&planned.outcome).map_err(|_| ApiError::Upstream)?,
            created_at: now,
            permanent: c.permanent,
            credited,
        }],
        None => vec![],
    };
    if let Some(g) = planned.extras.group.as_mut() {
        idempotency.append(&mut g.keys);
    }
    let mut ledger: Vec<LedgerEntry> = pending.entries;
    ledger.append(&mut planned.entries);
    debug_assert!(pending.moves.is_empty(), "every grant move is on an entry");
    let mut ended_grants = if on_lane { vec![] } else { pending.ended };
    // The audit record advances the account's chain head in the same state (rules §19).
    let audit = match planned.extras.audit.take() {
        Some(change) if !on_lane => crate::audit::seal_on_account(change, &mut planned.next, now),
        _ => None,
    };
    let mut expected_version = current.version;
    if let Some(r) = recall {
        // The recall's entries and retired grants come first, under the version read.
        expected_version = r.expected_version;
        ledger.splice(0..0, r.ledger.iter().cloned());
        ended_grants.splice(0..0, r.ended_grants.iter().cloned());
    }
    let commit = Commit {
        account: planned.next,
        expected_version,
        ledger,
        idempotency,
        hold: planned.extras.hold,
        purchase: planned.extras.purchase,
        recharge: planned.extras.recharge,
        payment_index,
        outbox,
        ended_grants,
        entities: planned.extras.entities,
        audit,
    };
    Ok((commit, planned.outcome))
}

/// Keeps the low-balance episode of `next` (rules §10.5, §12): it ends when the balance is no
/// longer low; usage that draws on a low balance may start a recharge; a refund, dispute or
/// negative adjustment that takes the balance low may not.
fn mark_episode(profile: &Profile, current: &Account, next: &mut Account, cause: Cause) {
    let trigger = profile.low_balance.trigger;
    let ar = &mut next.auto_recharge;
    if !trigger.is_low(next.balance, ar.threshold) {
        ar.episode_charged = false;
        ar.low_without_usage = false;
    } else if cause.effect() == Effect::Usage {
        ar.low_without_usage = false;
    } else if cause.effect() == Effect::TakesBack
        && !trigger.is_low(current.balance, current.auto_recharge.threshold)
    {
        ar.low_without_usage = true;
    }
}


#[cfg(test)]
mod tests {
    //! Fast tests over the in-memory store and bus; the same behaviour is tested against the
    //! emulators in `tests/`.
    use crate::store::Accounts;
    use super::*;
    use crate::ids::key;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use crate::adapters::memory::memory_credits;
    use crate::adapters::memory::MemoryBus;
    use crate::adapters::memory::MemoryStore;
    use crate::money::MICROS_PER_CREDIT as C;

    /// `assemble` decides what a change commits from the state it was planned on alone: the
    /// version it is conditioned on, the change's entry, its claim holding its outcome, and the
    /// threshold it crosses; a recall planned ahead of it comes first, under the recall's version.
    #[test]
    fn assemble_builds_the_commit_from_the_planned_state_alone() {
        use crate::ledger::EntryKind;
        use crate::money::Micros;
        let p = Profile::load("usd-overage").unwrap();
        let mut a = Account::new(&p, "a", "free", vec![], 1_000);
        a.balance = Micros::new(6 * C);
        a.version = 4;
        let change = |a: &Account| {
            let mut next = a.next(2_000);
            next.balance = Micros::new(4 * C);
            let entry = LedgerEntry::after(&mut next, EntryKind::Adjustment, Micros::new(-2 * C), 2_000, "down");
            Change::quiet(next, Cause::Adjustment, 7u32).with_entry(entry)
        };
        let claim = Claim { scope_key: "adjust:k".into(), hash: "h".into(), permanent: false };
        let (c, outcome) = assemble(&p, &a, change(&a), Some(&claim), None, false, 2_000).unwrap();
        assert_eq!((outcome, c.expected_version, c.account.version), (7, 4, 5));
        assert_eq!(c.ledger.iter().map(|e| e.amount.get()).collect::<Vec<_>>(), [-2 * C]);
        assert_eq!(c.idempotency.len(), 1);
        assert_eq!((c.idempotency[0].outcome.clone(), c.idempotency[0].account_id.as_str()), (serde_json::json!(7), "a"));
        // $6 to $4 crosses the profile's $5 low-balance threshold: one BalanceLow, caused by
        // the adjustment, which (not usage) starts no recharge.
        let kinds: Vec<&str> = c.outbox.iter().map(|e| e.detail_type()).collect();
        assert_eq!(kinds, ["BalanceLow"]);
        assert!(c.account.auto_recharge.low_without_usage);
        // With a recall ahead: its entries first, and the commit conditioned on its version.
        let mut recall = Commit::account_only(a.clone(), 3);
        let mut r = a.clone();
        recall.ledger = vec![LedgerEntry::after(&mut r, EntryKind::LeaseReturn, Micros::new(C), 1_500, "back")];
        let (c, _) = assemble(&p, &a, change(&a), None, Some(&recall), false, 2_000).unwrap();
        assert_eq!(c.expected_version, 3);
        assert_eq!(c.ledger.iter().map(|e| e.kind).collect::<Vec<_>>(), [EntryKind::LeaseReturn, EntryKind::Adjustment]);
        assert!(c.idempotency.is_empty());
    }

    #[tokio::test]
    async fn a_second_instance_with_a_stale_cache_never_overdraws() {
        let store = Arc::new(MemoryStore::default());
        let bus = Arc::new(MemoryBus::default());
        let p = Profile::load("org-runs").unwrap();
        let one = Credits::new(p.clone(), store.clone(), bus.clone());
        let two = Credits::new(p, store.clone(), bus.clone());
        one.upsert_account("a", "free", vec![]).await.unwrap();
        one.debit("a", "runs", 1_000, &key("allowance")).await.unwrap();
        one.adjust("a", C, "grant", &key("g")).await.unwrap();
        // `two` caches the account, then `one` spends most of it.
        two.debit("a", "runs", 10, &key("t1")).await.unwrap();
        one.debit("a", "runs", 85, &key("o1")).await.unwrap();
        // `two` plans on its stale cache (0.9 left), the CAS refuses, the fresh state (0.05
        // left) refuses 10 runs with 402, and the balance never went negative.
        let e = two.debit("a", "runs", 10, &key("t2")).await.unwrap_err();
        assert_eq!(e.code(), "out_of_credits");
        let a = store.load_account("a").await.unwrap().unwrap();
        assert_eq!(a.balance.get(), C - 95 * 10_000);
    }

    #[tokio::test]
    async fn a_write_that_cannot_commit_within_its_budget_answers_busy() {
        let c = memory_credits("usd-overage").with_write_budget(Duration::from_millis(150));
        c.upsert_account("a", "free", vec![]).await.unwrap();
        // Every commit loses its race: the write gives up when the budget is spent.
        c.store.contend.store(true, Ordering::SeqCst);
        let t = std::time::Instant::now();
        let e = c.debit("a", "api_calls", 1, &key("k1")).await.unwrap_err();
        assert_eq!((e.code(), e.retry_after()), ("account_busy", Some(1)));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        c.store.contend.store(false, Ordering::SeqCst);
        // Nothing was written, and the same key applies once the account is free.
        assert!(c.store.load_idempotency("a", "usage:k1").await.unwrap().is_none());
        c.debit("a", "api_calls", 1, &key("k1")).await.unwrap();
        // A write queued behind another in this process waits at most the budget too.
        let queue = c.stripe("a").lock().await;
        let e = c.debit("a", "api_calls", 1, &key("k2")).await.unwrap_err();
        assert_eq!(e.code(), "account_busy");
        drop(queue);
        c.debit("a", "api_calls", 1, &key("k2")).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_event_in_the_outbox() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
        c.adjust("a", 6 * C, "grant", &key("g")).await.unwrap();
        c.bus.fail.store(true, Ordering::SeqCst);
        c.debit("a", "api_calls", 2_000, &key("cross")).await.unwrap();
        let pending = crate::events::pending_events(&c.store, 10).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.detail_type()).collect::<Vec<_>>(), ["BalanceLow"]);
        c.bus.fail.store(false, Ordering::SeqCst);
        assert_eq!(crate::events::drain_outbox(&c.store, &c.bus, 0, None).await.unwrap().delivered, 1);
        assert!(crate::events::pending_events(&c.store, 10).await.unwrap().is_empty());
        assert_eq!(c.bus.published.lock().unwrap().len(), 1);
    }
}
