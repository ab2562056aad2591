//! Recalls (rules §14): when an account brings its lanes' credits home, and how. The engine
//! asks `needs_recall` of every write it plans on an account whose lanes hold credits; a recall
//! is then planned on the state read (`plan_recall`) and committed with the change it is for.

use crate::account::Account;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::money::Micros;
use crate::store::{Commit, CommitError, Store};

use super::{floor, lane_next, part_expiring};

/// A recall planned: the account's commit (its state with every lane's credits home, the
/// `lease_return` entries, the grants it retires) and each lane's. The engine commits it with
/// the change it was made for, in one transaction, so no lease comes between them.
pub(crate) struct Recall {
    pub(crate) account: Commit,
    pub(crate) lanes: Vec<Commit>,
    /// Only the first `LANES_PER_RECALL` lanes holding credits: committed on its own, leases
    /// held off (`Lanes::draining_until`) until the last part.
    pub(crate) partial: bool,
}

/// Lanes one recall transaction brings home: the account, its entry per lane, and each lane's
/// item and entry (3 items a lane, 97 in all: under DynamoDB's 100).
pub(crate) const LANES_PER_RECALL: usize = 32;
/// How long a recall in parts holds leases off: time for its next parts, and no longer should
/// the process making it die.
const DRAIN_HOLD_MS: i64 = 2_000;

impl Recall {
    /// All of it, as one transaction on its own.
    pub(crate) fn commits(self) -> Vec<Commit> {
        let mut all = vec![self.account];
        all.extend(self.lanes);
        all
    }
}

/// Plans a recall: every lane holding credits gives them back to `account` (which holds them
/// all after). `None` when nothing is out.
pub(crate) fn plan_recall(account: &Account, lanes: &[Account], now: i64) -> Option<Recall> {
    if !account.leased_out() {
        return None;
    }
    let mut next = account.clone();
    next.pending = Default::default();
    next.updated_at = now;
    let base = account.version;
    let mut account_entries = Vec::new();
    let mut commits = Vec::new();
    let mut holding: Vec<&Account> = lanes.iter().filter(|l| l.balance.get() > 0).collect();
    let partial = holding.len() > LANES_PER_RECALL;
    holding.truncate(LANES_PER_RECALL);
    for (i, lane) in holding.iter().enumerate() {
        let Some(of) = &lane.spread.lane else { continue };
        if i + 1 == holding.len() && !partial && crate::broken::on(crate::broken::Bug::SkipRecall) {
            continue;
        }
        let parts: Vec<(String, i64)> =
            lane.grants.iter().filter(|g| g.remaining.get() > 0).map(|g| (g.id.clone(), g.remaining.get())).collect();
        let back = crate::money::total(parts.iter().map(|(_, m)| *m));
        next.version = base + account_entries.len() as u64 + 1;
        for (g, m) in &parts {
            match next.grants.iter_mut().find(|x| x.id == *g) {
                Some(x) => x.remaining = Micros::new(x.remaining.get() + m),
                // A grant with a part out stays active (`retire_used`, `expire_grants`); should
                // one be missing, the part comes back as it is, so the grants still add up.
                None => {
                    if let Some(part) = lane.grants.iter().find(|x| x.id == *g) {
                        next.grants.push(part.clone());
                    }
                }
            }
        }
        next.balance = Micros::new(next.balance.get() + back);
        next.pending.moves = parts.clone();
        account_entries.push(LedgerEntry::after(
            &mut next,
            EntryKind::LeaseReturn,
            Micros::new(back),
            now,
            format!("Return from lane {}", of.n),
        ));
        let mut lane_state = lane_next(lane, now);
        for g in lane_state.grants.iter_mut() {
            g.remaining = Micros::ZERO;
        }
        lane_state.grants.clear();
        lane_state.balance = Micros::ZERO;
        if let Some(o) = lane_state.spread.lane.as_mut() {
            o.anchor = next.version;
        }
        lane_state.pending.moves = parts.iter().map(|(g, m)| (g.clone(), -m)).collect();
        let e = LedgerEntry::after(
            &mut lane_state,
            EntryKind::LeaseReturn,
            Micros::new(-back),
            now,
            format!("Return to the account (its entry {})", next.version),
        );
        commits.push(Commit { ledger: vec![e], ..Commit::account_only(lane_state, lane.version) });
    }
    // Every lane's parts are settled: what did not come back was spent on it. A part of a
    // recall settles the lanes it brought home, and holds leases off for the rest.
    if let Some(l) = next.spread.lanes.as_mut() {
        if partial {
            for lane in &holding {
                if let Some(of) = &lane.spread.lane {
                    l.out.remove(&of.n);
                }
            }
            l.draining_until = now.saturating_add(DRAIN_HOLD_MS);
        } else {
            l.out.clear();
            l.draining_until = 0;
        }
        l.moves += 1;
    }
    next.version = base + (account_entries.len() as u64).max(1);
    // An account with lanes retires a bounded number a write (`retire_used`).
    next.retire_used(now);
    let ended = std::mem::take(&mut next.pending.ended);
    let account_commit =
        Commit { ledger: account_entries, ended_grants: ended, ..Commit::account_only(next, account.version) };
    Some(Recall { account: account_commit, lanes: commits, partial })
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// Brings every lane's credits back to the account, on its own (when the change it is for
    /// would not fit beside it in one transaction). `Ok(false)` when the account or a lane
    /// moved meanwhile (read again and retry).
    pub(crate) async fn recall(&self, recall: Recall) -> Result<bool, ApiError> {
        match self.store.commit_all(recall.commits()).await {
            Ok(()) => {
                tracing::debug!("lanes recalled");
                Ok(true)
            }
            Err(CommitError::Stale(_) | CommitError::Conflict | CommitError::Throttled) => Ok(false),
            Err(CommitError::Store(e)) => Err(upstream(e)),
            Err(_) => Err(ApiError::Upstream),
        }
    }

    /// Whether a write planned on an account whose lanes hold credits must recall them first:
    /// a refusal, a change not safe beside lanes (`Cause::beside_lanes`: one that moves no
    /// credits and touches nothing a threshold, a hold or the allowance depends on), usage that
    /// reaches the floor or refused an event, or a leased grant near its expiry (rules §14).
    pub(crate) fn needs_recall<T>(
        &self,
        current: &Account,
        result: &Result<crate::engine::Plan<T>, ApiError>,
        now: i64,
    ) -> bool {
        if part_expiring(current, now) {
            return true;
        }
        match result {
            Err(
                ApiError::RequestRule(..)
                | ApiError::InvalidRequest(_)
                | ApiError::NotFound(..)
                | ApiError::HoldNotFound
                | ApiError::HoldExpired
                | ApiError::IdempotencyConflict,
            ) => false,
            Err(_) => true,
            Ok(crate::engine::Plan::AlreadySo(_)) => false,
            Ok(crate::engine::Plan::Write(change)) => {
                // Down to the floor, or a grant expiring on the way: decided on the whole.
                let expiring = change.next.pending.entries.iter().any(|e| e.kind == crate::ledger::EntryKind::Expiry);
                if expiring || change.next.balance.get() <= floor(&self.profile, &change.next) {
                    return true;
                }
                let usage = change.cause == crate::cause::Cause::Usage && !change.refused();
                !(usage || change.cause.beside_lanes())
            }
        }
    }
}
