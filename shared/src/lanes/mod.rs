//! Lanes (rules §14): one hot account's balance split over `K` items, each on its own partition
//! key, so its debits commit on `K` serial chains instead of one.
//!
//! - **A lane** is an account item of its own, id `{account}~{n}` (`n` in `1..=K`), that holds
//!   credits on lease: parts of the account's grants, moved by a **lease**, one transaction on
//!   the account and the lane (a `lease_out` entry on the account, a `lease_in` on the lane,
//!   each with the grant moves). A lease is sized to about a second of the lane's traffic.
//! - **Debits** whose consumable's allowance for the month is used up go to a lane (any lane:
//!   their idempotency keys stay the account's, on the account's key space, so a retry meets its
//!   first result wherever it lands). A lane that cannot pay asks for a lease; when the account
//!   cannot lease (it is near its **floor**), the debit goes to the account.
//! - **The floor** is the highest threshold anything is decided at (low balance, alerts, zero).
//!   Leases never take the account's own balance to the floor, so while lanes hold credits the
//!   balance as a whole is above every threshold and no crossing can happen; near the floor
//!   (**drain mode**) debits go to the account, and every crossing is decided on the whole.
//! - **A recall** is one transaction on the account and every lane holding credits: each lane's
//!   credits go back (`lease_return` on both sides). The account recalls before any write that
//!   is not safe beside lanes (holds, refunds, disputes, adjustments, expiry, void, settings
//!   that move a threshold, a plan change), before refusing a debit, and before a debit that
//!   would take it to the floor: a 402 means the whole account cannot pay.
//! - **The ledger** of the account is its own entries and its lanes', in one total order that
//!   needs no clock: each lane entry carries the account `seq` it follows (its `anchor`).
//!
//! `K = 1` (or no lanes) is the account alone, as it always was.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

mod beside;
pub mod ledger;
pub mod parts;
mod recall;
pub mod spread;
mod reconcile;
mod whole;
#[cfg(test)]
mod tests;

pub(crate) use recall::{plan_recall, Recall};
pub use reconcile::lane_differences;

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::clock;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::grants::in_burn_order;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::money::Micros;
use crate::profile::Profile;
use crate::store::{Commit, CommitError, Store};

/// The most lanes an account may have (a recall of more than `recall::LANES_PER_RECALL` lanes
/// takes several transactions, leases held off meanwhile).
pub const MAX_LANES: u32 = 64;
/// A lease takes parts of at most this many grants (the account item records each part).
const LEASE_MAX_GRANTS: usize = 16;
/// Grants expiring sooner than this are never leased: they expire on the account.
const LEASE_EXPIRY_MARGIN_MS: i64 = 3_600_000;
/// A lane hands its debits to the account once a part it holds expires sooner than this (the
/// account recalls it before the grant expires).
const LANE_EXPIRY_GUARD_MS: i64 = 1_800_000;
/// Reads of an account and its lanes before a view gives up (a lease or recall each time).
const SNAPSHOT_READS: u32 = 8;
/// Lease attempts (each after a pause) before a debit answers 503 `account_busy`.
const LEASE_ATTEMPTS: u32 = 12;

/// An account's lanes, kept on the account's item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lanes {
    /// Lanes debits are spread over now (0 or 1: none).
    pub k: u32,
    /// The most lanes the account ever had: the ledgers its own ledger merges.
    pub ever: u32,
    /// Per lane, the grant parts leased to it and not yet settled by a return,
    /// `(grant id, micro-credits)`. The lane spends them without telling the account; a return
    /// gives back what is left, and the rest was spent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub out: BTreeMap<u32, Vec<(String, i64)>>,
    /// Leases and recalls made: a read of the account and its lanes is one instant when this
    /// held still across it (`Credits::snapshot`); the account's own debits do not move it.
    #[serde(default)]
    pub moves: u64,
    /// The bounds the count moves within by itself (rules §21; `spread::Bounds`): 0 is the
    /// default (1, and `spread::AUTO_MAX`); `min == max` is a count fixed by `PUT …/lanes`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u32,
    /// When `k` last changed (ms): the policy waits between changes.
    #[serde(default)]
    pub changed_at: i64,
    /// Per lane, when it last leased: the lanes in use (`spread::narrow_to`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leased_at: BTreeMap<u32, i64>,
    /// Until this instant (ms) no lane leases: a recall in several transactions is under way,
    /// and the lanes it brought home must stay so until its last part commits.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub draining_until: i64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// On a lane's own item: whose lane it is, and what its last lease said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneOf {
    pub account: String,
    pub n: u32,
    /// The account `seq` the lane's next entries follow (its last lease, or its last return).
    pub anchor: u64,
    /// The month of the last lease, and the consumables whose allowance that month was used
    /// up then: the only debits the lane takes (allowance is never leased).
    pub month: String,
    pub credit_only: Vec<String>,
    /// The last lease: how much, and when (the next is sized from how fast it went).
    pub leased: i64,
    pub leased_at: i64,
}

/// The id of lane `n` of `account`. Account ids never hold `~`.
pub fn lane_id(account: &str, n: u32) -> String {
    format!("{account}~{n}")
}

/// The account an id belongs to: itself, or the account of a lane.
pub fn owner_of(id: &str) -> &str {
    id.split_once('~').map_or(id, |(a, _)| a)
}

impl Account {
    /// Lanes that take debits now (0 when the account has none, or one).
    pub fn active_lanes(&self) -> u32 {
        self.spread.lanes.as_ref().map_or(0, |l| if l.k > 1 { l.k } else { 0 })
    }

    /// Lanes whose ledgers belong to this account's (every lane it ever had).
    pub fn lanes_ever(&self) -> u32 {
        self.spread.lanes.as_ref().map_or(0, |l| l.ever)
    }

    /// Whether any lane may hold credits of this account.
    pub fn leased_out(&self) -> bool {
        self.spread.lanes.as_ref().is_some_and(|l| l.out.values().any(|v| !v.is_empty()))
    }

    /// Whether part of grant `id` is out on a lane (the grant stays active until it returns).
    pub fn grant_out(&self, id: &str) -> bool {
        self.spread.lanes.as_ref().is_some_and(|l| l.out.values().flatten().any(|(g, _)| g == id))
    }

    /// Credits leased out and not yet settled, per lane summed: an upper bound of what the
    /// lanes hold.
    pub fn leased_total(&self) -> i64 {
        self.spread.lanes.as_ref().map_or(0, |l| crate::money::total(l.out.values().flatten().map(|(_, m)| *m)))
    }
}

/// What a debit planned on `a` adds to its balance in its answer: `beside` on a lane, or on
/// the account while its lanes hold credits; nothing otherwise (the account holds it all).
pub fn beside_of(a: &Account, beside: i64) -> i64 {
    if a.spread.lane.is_some() || a.leased_out() {
        beside
    } else {
        0
    }
}

/// The highest balance anything is decided at: the low-balance threshold, every alert
/// threshold, and zero. While lanes hold credits the account's own balance stays above it.
pub fn floor(profile: &Profile, a: &Account) -> i64 {
    let mut f = a.low_balance_threshold(profile).get().max(0);
    for t in &a.alerts {
        f = f.max(t.get());
    }
    f
}

/// Whether a lane may take a debit of `consumable` at `now`: its lease is of this month, the
/// consumable's allowance was used up then, and none of its parts is near its expiry.
pub fn lane_serves(lane: &Account, consumable: &str, now: i64) -> bool {
    let Some(of) = &lane.spread.lane else { return false };
    of.month == clock::month_of(now)
        && of.credit_only.iter().any(|c| c == consumable)
        && lane.grants.iter().all(|g| g.expires_at.is_none_or(|t| t > now + LANE_EXPIRY_GUARD_MS))
}

/// Whether a grant with a part out on a lane expires soon (or has): the account recalls its
/// lanes before any write, so the grant expires whole, on the account.
pub fn part_expiring(a: &Account, now: i64) -> bool {
    a.grants.iter().any(|g| g.expires_at.is_some_and(|t| t <= now + LANE_EXPIRY_GUARD_MS) && a.grant_out(&g.id))
}

/// The consumables of `a`'s plan whose allowance for the month of `now` is used up (held units
/// aside, which may come back).
fn credit_only(profile: &Profile, a: &Account, now: i64) -> Vec<String> {
    let month = clock::month_of(now);
    let Some(plan) = profile.plan(&a.plan) else { return vec![] };
    profile
        .consumables
        .keys()
        .filter(|c| plan.consumables.get(*c).is_some_and(|pc| a.used(c, &month) >= pc.included))
        .cloned()
        .collect()
}

/// The next state of a lane: its next version, nothing expired (a lane's parts never expire
/// on it), no allowance.
fn lane_next(lane: &Account, now: i64) -> Account {
    let mut next = lane.clone();
    next.pending = Default::default();
    next.updated_at = now;
    next.version += 1;
    next
}

/// How much a lease to a lane should carry: about `spread::lease_window_ms` of what the lane spent
/// since its last lease (its last lease over the time it lasted), at most four times the last,
/// and at least four times `need` (the first: sixteen).
fn lease_size(lane: Option<&Account>, k: u32, need: i64, now: i64) -> i64 {
    let Some(of) = lane.and_then(|l| l.spread.lane.as_ref()).filter(|o| o.leased > 0) else { return need.saturating_mul(16) };
    let elapsed = (now - of.leased_at).max(50);
    let rate_window = i128::from(of.leased) * i128::from(spread::lease_window_ms(k)) / i128::from(elapsed);
    let sized = i64::try_from(rate_window.min(i128::from(of.leased) * 4)).unwrap_or(i64::MAX);
    sized.max(need).max(need.saturating_mul(4))
}

/// A new lane item for lane `n` of `account`.
fn new_lane(profile: &Profile, account: &Account, n: u32, now: i64) -> Account {
    let mut lane = Account::new(profile, &lane_id(&account.id, n), &account.plan, vec![], now);
    lane.spread.lane = Some(LaneOf {
        account: account.id.clone(),
        n,
        anchor: 0,
        month: clock::month_of(now),
        credit_only: vec![],
        leased: 0,
        leased_at: now,
    });
    lane
}

/// Plans a lease of up to `want` (at least `need`) from `account` to its lane `n`; `None` when
/// the account cannot spare `need` above its floor.
fn plan_lease(
    profile: &Profile,
    account: &Account,
    lane: Option<&Account>,
    n: u32,
    need: i64,
    want: i64,
    now: i64,
) -> Option<(Commit, Commit)> {
    let lanes = account.spread.lanes.as_ref()?;
    // No lease while a recall in several transactions is under way.
    if n == 0 || n > lanes.k || lanes.k < 2 || now < lanes.draining_until {
        return None;
    }
    let want = lease_size(lane, lanes.k, need, now).max(want.saturating_mul(4));
    // Grants that will not expire on the lane.
    let leasable =
        |g: &crate::grants::Grant| g.expires_at.is_none_or(|t| t > now + LEASE_EXPIRY_MARGIN_MS) && !g.expired(now);
    // What the account can spare: never to its floor, never what holds reserve.
    // The parts, in burn order: of at most `LEASE_MAX_GRANTS` grants.
    let first: Vec<&crate::grants::Grant> =
        in_burn_order(&account.grants).into_iter().filter(|g| leasable(g) && g.remaining.get() > 0).take(LEASE_MAX_GRANTS).collect();
    let order: Vec<String> = first.iter().map(|g| g.id.clone()).collect();
    let spare = (account.balance.get() - floor(profile, account) - 1)
        .min(account.available(now).get())
        .min(crate::money::total(first.iter().map(|g| g.remaining.get())));
    // A fair share: a lane takes at most what the account could give every lane alike. Near
    // empty, what is left then stays on the account (decided there, one debit at a time)
    // instead of going whole to the first lane that asks and being recalled from it by the
    // next, lease after recall, 64 lanes at a time.
    let share = spare / i64::from(lanes.k.max(1));
    let amount = want.min(share);
    if amount < need.max(1) {
        return None;
    }
    let mut next = account.clone();
    next.pending = Default::default();
    next.updated_at = now;
    next.version += 1;
    let parts = next.take_in_order(&order, amount);
    let amount = crate::money::total(parts.iter().map(|(_, m)| *m));
    next.balance = Micros::new(next.balance.get() - amount);
    next.pending.moves = parts.iter().map(|(g, m)| (g.clone(), -m)).collect();
    let lanes_now = next.spread.lanes.get_or_insert_with(Lanes::default);
    lanes_now.moves += 1;
    lanes_now.leased_at.insert(n, now);
    let out = lanes_now.out.entry(n).or_default();
    for (g, m) in &parts {
        match out.iter_mut().find(|(id, _)| id == g) {
            Some((_, held)) => *held += m,
            None => out.push((g.clone(), *m)),
        }
    }
    let lane_item = lane.cloned().unwrap_or_else(|| new_lane(profile, account, n, now));
    let lease_no = next.version;
    let out_entry =
        LedgerEntry::after(&mut next, EntryKind::LeaseOut, Micros::new(-amount), now, format!("Lease to lane {n}"));

    let mut lane_state = lane_next(&lane_item, now);
    lane_state.plan = account.plan.clone();
    lane_state.ensure_grants();
    for (g, m) in &parts {
        match lane_state.grants.iter_mut().find(|x| x.id == *g) {
            Some(x) => x.remaining = Micros::new(x.remaining.get() + m),
            None => {
                if let Some(src) = account.grants.iter().find(|x| x.id == *g) {
                    let mut part = src.clone();
                    part.remaining = Micros::new(*m);
                    lane_state.grants.push(part);
                }
            }
        }
    }
    lane_state.balance = Micros::new(lane_state.balance.get() + amount);
    lane_state.spread.lane = Some(LaneOf {
        account: account.id.clone(),
        n,
        anchor: lease_no,
        month: clock::month_of(now),
        credit_only: credit_only(profile, account, now),
        leased: amount,
        leased_at: now,
    });
    lane_state.pending.moves = parts.clone();
    let in_entry = LedgerEntry::after(
        &mut lane_state,
        EntryKind::LeaseIn,
        Micros::new(amount),
        now,
        format!("Lease from the account (its entry {lease_no})"),
    );
    let account_commit = Commit { ledger: vec![out_entry], ..Commit::account_only(next, account.version) };
    let lane_commit = Commit { ledger: vec![in_entry], ..Commit::account_only(lane_state, lane_item.version) };
    Some((account_commit, lane_commit))
}

/// What a view of the whole account shows: the account with its lanes' credits, parts and
/// spending added (`lanes` as read alongside it).
pub fn whole(account: &Account, lanes: &[Account]) -> Account {
    let mut w = account.clone();
    for lane in lanes {
        w.balance = Micros::new(w.balance.get() + lane.balance.get());
        w.lifetime_spent = Micros::new(w.lifetime_spent.get() + lane.lifetime_spent.get());
        for part in &lane.grants {
            if let Some(g) = w.grants.iter_mut().find(|g| g.id == part.id) {
                g.remaining = Micros::new(g.remaining.get() + part.remaining.get());
            }
        }
    }
    w
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The lanes of `account` as stored now (strong reads); lanes never written are left out.
    pub async fn lanes_of(&self, account: &Account) -> Result<Vec<Account>, ApiError> {
        let ids: Vec<String> = (1..=account.lanes_ever()).map(|n| lane_id(&account.id, n)).collect();
        let read = futures_util::future::join_all(ids.iter().map(|id| self.store.load_account(id))).await;
        let mut out = Vec::new();
        for r in read {
            if let Some(a) = r.map_err(upstream)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The account as a whole: its own item with what its lanes hold.
    pub async fn whole_account(&self, id: &str) -> Result<Account, ApiError> {
        let (a, lanes) = self.snapshot(id).await?;
        Ok(whole(&a, &lanes))
    }

    /// The account read with its lanes at one instant: read again until no lease or recall
    /// (each moves the account's version) came between the reads.
    pub async fn snapshot(&self, id: &str) -> Result<(Account, Vec<Account>), ApiError> {
        let moves = |a: &Account| a.spread.lanes.as_ref().map_or(0, |l| l.moves);
        let mut a = self.load(id).await?;
        for attempt in 0..SNAPSHOT_READS {
            if a.lanes_ever() == 0 {
                return Ok((a, vec![]));
            }
            let lanes = self.lanes_of(&a).await?;
            let again = self.load(id).await?;
            // Only a lease or a recall moves credits between the account and its lanes: the
            // account's own debits since the first read are in `again`, and change no lane.
            if moves(&again) == moves(&a) {
                return Ok((again, lanes));
            }
            a = again;
            tokio::time::sleep(std::time::Duration::from_millis(5 << attempt.min(4))).await;
        }
        Err(ApiError::Busy)
    }

    /// Leases credits to lane `n` of account `id`, at least `need`: `Ok(false)` when the
    /// account cannot spare them above its floor (the debit goes to the account, which decides
    /// on the whole). `Ok(true)` also when another process's lease already gave the lane what
    /// the debit needs. Leases race each other on the account's item: a lost race waits and
    /// tries again, and a lease still not taken at the end of the write budget is 503
    /// `account_busy` — never a debit sent to the account's item, which the leases are already
    /// crowding (rules §21).
    pub(crate) async fn lease(&self, id: &str, n: u32, consumable: &str, need: i64, want: i64) -> Result<bool, ApiError> {
        let started = std::time::Instant::now();
        for attempt in 0..LEASE_ATTEMPTS {
            let lane_key = lane_id(id, n);
            let (account, lane) =
                futures_util::future::join(self.store.load_account(id), self.store.load_account(&lane_key)).await;
            let Some(account) = account.map_err(upstream)? else { return Err(ApiError::account_not_found()) };
            self.remember(&account);
            let lane = lane.map_err(upstream)?;
            let now = self.now();
            if let Some(l) = &lane {
                self.remember(l);
                if l.balance.get() >= need && lane_serves(l, consumable, now) {
                    return Ok(true);
                }
            }
            // A lease for a debit the lane would still not take (allowance left) helps nobody.
            if !credit_only(&self.profile, &account, now).iter().any(|c| c == consumable) {
                return Ok(false);
            }
            let Some((a, l)) = plan_lease(&self.profile, &account, lane.as_ref(), n, need, want, now) else {
                return Ok(false);
            };
            let (next_account, next_lane) = (a.account.clone(), l.account.clone());
            match self.store.commit_all(vec![a, l]).await {
                Ok(()) => {
                    self.remember(&next_account);
                    self.remember(&next_lane);
                    // Most lanes unused lately: fewer (rules §21). This lease stands either way.
                    if spread::narrow_to(next_account.spread.lanes.as_ref(), now).is_some() {
                        if let Err(e) = self.narrow(id).await {
                            tracing::debug!(account_id = id, code = e.code(), "narrowing did not commit");
                        }
                    }
                    return Ok(true);
                }
                // Not counted as the account's contention: more lanes would only add leases.
                Err(CommitError::Stale(_) | CommitError::Conflict | CommitError::Throttled) => {
                    if self.write_budget().checked_sub(started.elapsed()).is_none() {
                        break;
                    }
                    self.backoff(attempt + 1, started).await;
                }
                Err(CommitError::Store(e)) => return Err(upstream(e)),
                Err(_) => return Err(ApiError::Upstream),
            }
        }
        tracing::warn!(account_id = id, lane = n, "lease did not settle under contention");
        Err(ApiError::Busy)
    }

    /// Where a debit of `consumable` on account `id` goes first (rules §14): this process's lane
    /// while the account has lanes and the consumable is drawn from credits, else the account.
    /// A debit naming an entity goes to the account, where the entity's month is decided (§17).
    /// An account this process saw contended is widened first (rules §21).
    pub(crate) async fn route(&self, id: &str, consumable: &str, names_entity: bool) -> Route {
        if !names_entity && self.spread.contended(id, self.now()) {
            self.widen(id, consumable).await;
        }
        match self.lane_for(id, consumable) {
            Some(n) if !names_entity => Route { id: id.to_string(), lane: Some(n), leased: 0 },
            _ => Route { id: id.to_string(), lane: None, leased: 0 },
        }
    }

    /// The item a debit on `route` writes, and what its answer's balance adds beside it (the
    /// rest of the account as this process last knew it).
    pub(crate) fn target(&self, route: &Route) -> (String, i64) {
        match route.lane {
            Some(n) => (lane_id(&route.id, n), self.balance_beside(&route.id, n)),
            None => (route.id.clone(), self.held_elsewhere(&route.id)),
        }
    }

    /// After a debit on `route` answered `failure`: `Some` route to try next — the same lane
    /// once it has leased credits (once), or the account, which decides on the whole — or
    /// `None` when the failure is the debit's answer (any failure on the account, and any on a
    /// lane but a lane that cannot take it or does not exist yet).
    pub(crate) async fn reroute(
        &self,
        route: Route,
        failure: &ApiError,
        consumable: &str,
        quantity: i64,
        ahead: i64,
    ) -> Result<Option<Route>, ApiError> {
        let Some(n) = route.lane else { return Ok(None) };
        if !matches!(failure, ApiError::Elsewhere) && *failure != ApiError::account_not_found() {
            return Ok(None);
        }
        let need = self.credits_needed(&route.id, consumable, quantity);
        // A batch's lease carries at least what the rest of its commit needs.
        let want = self.credits_needed(&route.id, consumable, ahead.max(quantity));
        if route.leased < LEASES_PER_DEBIT && self.lease(&route.id, n, consumable, need, want).await? {
            return Ok(Some(Route { leased: route.leased + 1, ..route }));
        }
        Ok(Some(Route { lane: None, ..route }))
    }

    /// The lane a debit of `consumable` goes to, known from this process's last view of the
    /// account: `None` for the account itself (no lanes, or allowance left). Each process has
    /// its own lane (keys are the account's, so any lane is right for any key), which keeps its
    /// view of that lane current and spreads processes over the lanes.
    pub(crate) fn lane_for(&self, id: &str, consumable: &str) -> Option<u32> {
        let a = self.cached(id)?;
        let k = a.active_lanes();
        if k == 0 {
            return None;
        }
        let now = self.now();
        if !credit_only(&self.profile, &a, now).iter().any(|c| c == consumable) {
            return None;
        }
        Some(1 + self.home_lane.load(Ordering::Relaxed) % k)
    }

    /// A write on `id` (an account or one of its lanes) lost a race, or was throttled: counted
    /// for the account's spread (rules §21); on a lane, this process moves to another lane, so
    /// that processes end up one to a lane when there are lanes enough. The next lane is drawn
    /// from the last (a fixed sequence per process: the simulator's runs repeat).
    pub(crate) fn lost_race(&self, id: &str) {
        let owner = owner_of(id);
        self.spread.lost(owner, self.now());
        self.move_lane(id);
    }

    /// A write on `id` was throttled by its partition (rules §21): not a lost race (more lanes
    /// would not make this process's own writes fit), but on a lane this process moves to
    /// another, whose partition may have room.
    pub(crate) fn throttled(&self, id: &str) {
        // Alone on its lane, a process moving would only land beside another (a batch of
        // 500 alone fills its partition): it waits where it is.
        if !self.spread.alone_on(id) {
            self.move_lane(id);
        }
    }

    /// A write on `id` committed; `cached`: planned on this process's cached state, which
    /// nobody else had written since (the process has its lane to itself).
    pub(crate) fn wrote(&self, id: &str, cached: bool) {
        if owner_of(id) != id {
            self.spread.wrote(id, cached);
        }
    }

    /// A write on `id` found another process's write since this process's last.
    pub(crate) fn overtaken(&self, id: &str) {
        self.spread.shared(id);
    }

    /// On a lane, this process's next lane: drawn from its last.
    fn move_lane(&self, id: &str) {
        if owner_of(id) != id {
            let h = self.home_lane.load(Ordering::Relaxed);
            let next = h.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            self.home_lane.store(next ^ (next >> 16), Ordering::Relaxed);
        }
    }

    /// Widens account `id` when this process saw it contended (rules §21): one write on the
    /// account, doubling its lanes within its bounds, unless the cooldown since the last change
    /// has not passed, or a debit of `consumable` could not go to a lane anyway. Widening moves
    /// no credits. A failure is logged, never the debit's answer.
    async fn widen(&self, id: &str, consumable: &str) {
        self.spread.reset(id);
        let now = self.now();
        let Some(a) = self.cached(id) else { return };
        if a.is_part() || !credit_only(&self.profile, &a, now).iter().any(|c| c == consumable) {
            return;
        }
        if spread::widen_to(a.spread.lanes.as_ref(), now).is_none() {
            return;
        }
        let widened = self
            .apply(id, None, |a, now| {
                let Some(k) = spread::widen_to(a.spread.lanes.as_ref(), now) else { return Ok(crate::engine::Plan::AlreadySo(0)) };
                let mut next = a.next(now);
                let l = next.spread.lanes.get_or_insert_with(Lanes::default);
                l.k = k;
                l.ever = l.ever.max(k);
                l.changed_at = now;
                crate::engine::Change::quiet(next, crate::cause::Cause::Widen, k).write()
            })
            .await
            .and_then(|a| a.done());
        match widened {
            Ok(0) => {}
            Ok(k) => tracing::info!(account_id = id, lanes = k, "contended: spread over more lanes"),
            Err(e) => tracing::debug!(account_id = id, code = e.code(), "widening did not commit"),
        }
    }

    /// Narrows account `id` to `k` lanes by itself (rules §21), every lane's credits home
    /// first; only while the policy still says so on the state it commits on.
    async fn narrow(&self, id: &str) -> Result<Option<u32>, ApiError> {
        self.apply(id, None, |a, now| {
            let Some(k) = spread::narrow_to(a.spread.lanes.as_ref(), now) else { return Ok(crate::engine::Plan::AlreadySo(None)) };
            let mut next = a.next(now);
            let l = next.spread.lanes.get_or_insert_with(Lanes::default);
            l.k = k;
            l.changed_at = now;
            l.leased_at.retain(|n, _| *n <= k);
            crate::engine::Change::quiet(next, crate::cause::Cause::Spread, Some(k)).write()
        })
        .await?
        .done()
    }

    /// The scheduled run's visit of an account due for it (rules §21): a hot account that went
    /// quiet returns to its `min` lanes (one by default), every lane's credits home. `true` if
    /// it narrowed.
    pub async fn settle_spread(&self, id: &str) -> Result<bool, ApiError> {
        let a = self.load(id).await?;
        if spread::narrow_to(a.spread.lanes.as_ref(), self.now()).is_none() {
            return Ok(false);
        }
        let k = self.narrow(id).await?;
        if let Some(k) = k {
            tracing::info!(account_id = id, lanes = k, "quiet: fewer lanes");
        }
        Ok(k.is_some())
    }

    /// The rest of account `id`'s balance beside lane `n`, as this process last knew it: the
    /// account's own and its other lanes'. A lane's debit answers its own balance plus this.
    pub(crate) fn balance_beside(&self, id: &str, n: u32) -> i64 {
        let Some(a) = self.cached(id) else { return 0 };
        let lanes: i64 = (1..=a.lanes_ever())
            .filter(|m| *m != n)
            .filter_map(|m| self.cached(&lane_id(id, m)))
            .map(|l| l.balance.get())
            .fold(0i64, i64::saturating_add);
        a.balance.get().saturating_add(lanes)
    }

    /// What account `id`'s lanes hold, as this process last knew them.
    pub(crate) fn held_elsewhere(&self, id: &str) -> i64 {
        let Some(a) = self.cached(id) else { return 0 };
        let Some(lanes) = &a.spread.lanes else { return 0 };
        // Only lanes with credits out, never more than is out (a cached lane may be stale).
        let held = crate::money::total(lanes.out.keys().filter_map(|n| self.cached(&lane_id(id, *n))).map(|l| l.balance.get()));
        held.min(a.leased_total())
    }

    /// What a debit of `quantity` would cost in credits on account `id` as last known (the
    /// least a lease must bring), at least one micro-credit.
    pub(crate) fn credits_needed(&self, id: &str, consumable: &str, quantity: i64) -> i64 {
        let Some(a) = self.cached(id) else { return 1 };
        crate::ledger::price(&self.profile, &a, consumable, quantity, self.now())
            .ok()
            .and_then(|(_, _, cost)| cost)
            .map_or(1, |c| c.get().max(1))
    }

    /// `PUT /v1/accounts/{id}/lanes {"lanes": k}`: the operator's override, a fixed count of
    /// `k` lanes (1: none, and the account never spreads itself).
    pub async fn set_lanes(&self, id: &str, k: u32) -> Result<LanesView, ApiError> {
        self.set_lane_bounds(id, k, k).await
    }

    /// `PUT /v1/accounts/{id}/lanes {"min": a, "max": b}`: the account spreads itself within
    /// `a..=b` lanes (rules §21); equal bounds fix the count. The count moves into the bounds
    /// now; when it changes, every lane's credits come back first.
    pub async fn set_lane_bounds(&self, id: &str, min: u32, max: u32) -> Result<LanesView, ApiError> {
        if !(1..=MAX_LANES).contains(&min) || !(1..=MAX_LANES).contains(&max) {
            return Err(ApiError::request_rule("invalid_lanes", format!("Lanes must be between 1 and {MAX_LANES}.")));
        }
        if min > max {
            return Err(ApiError::request_rule("invalid_lanes", "`min` must not be above `max`."));
        }
        self.apply(id, None, |a, now| {
            let (was, k_was) = (spread::Bounds::of(a.spread.lanes.as_ref()), spread::count(a.spread.lanes.as_ref()));
            let k = k_was.clamp(min, max);
            let view = LanesView { lanes: k, min, max, automatic: min < max, floor: floor(&self.profile, a) };
            if was == (spread::Bounds { min, max }) && k == k_was {
                return Ok(crate::engine::Plan::AlreadySo(view));
            }
            let mut next = a.next(now);
            let l = next.spread.lanes.get_or_insert_with(Lanes::default);
            l.k = k;
            l.min = min;
            l.max = max;
            l.ever = l.ever.max(if k > 1 { k } else { 0 });
            if k != k_was {
                l.changed_at = now;
                l.leased_at.retain(|n, _| *n <= k);
            }
            let audit = crate::audit::AuditChange::new(
                "lanes.update",
                format!("account:{id}"),
                Some(serde_json::json!({"lanes": k_was, "min": was.min, "max": was.max})),
                Some(serde_json::json!({"lanes": k, "min": min, "max": max})),
            );
            // A new count is not safe beside the lanes' credits (a recall first); new bounds
            // around the same count move nothing.
            let cause = if k == k_was { crate::cause::Cause::Widen } else { crate::cause::Cause::Spread };
            crate::engine::Change::quiet(next, cause, view).with_audit(audit).write()
        })
        .await?
        .done()
    }
}

/// Where a debit goes: account `id`, or its lane `lane`, with the leases made for it so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) id: String,
    lane: Option<u32>,
    /// Leases made (or found made) for this debit: a lane another process drains as fast as it
    /// leases asks again, up to `LEASES_PER_DEBIT`, before the account decides.
    leased: u8,
}

/// Leases one debit may ask for before it goes to the account.
const LEASES_PER_DEBIT: u8 = 3;

impl Route {
    /// The debit moved on (a batch took some of its events here): a lane may lease again for
    /// the next one it cannot take.
    pub(crate) fn moved_on(&mut self) {
        self.leased = 0;
    }
}

/// The answer of `PUT …/lanes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanesView {
    /// Lanes now.
    pub lanes: u32,
    /// The bounds the account spreads itself within; equal when the count is fixed.
    pub min: u32,
    pub max: u32,
    /// Whether the account adds and removes lanes by itself (`min < max`).
    pub automatic: bool,
    /// Below this balance (micro-credits) the account takes its debits itself.
    pub floor: i64,
}
