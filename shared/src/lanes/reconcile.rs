//! Reconciliation of an account with lanes as a whole (rules §14). Each lane is reconciled as
//! a ledger of its own (its entries add up to its balance, its moves to its parts); this checks
//! what ties them to the account: every lease and every return recorded on both sides with the
//! same amount and grant moves; a lane never holding more than is out on lease to it; each
//! lane's entries following the account's in a total order; and the whole balance, run in that
//! order, never below zero and ending at the account's balance plus the lanes'.

use std::collections::HashMap;

use crate::account::Account;
use crate::engine::Credits;
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::reconcile::Difference;
use crate::store::Store;

use super::ledger::order_key;

impl<S: Store, B: EventBus> Credits<S, B> {
    /// What reconciling `account` (with `own`, its own item's ledger, oldest first) finds of it
    /// as a whole with its lanes (`lane_differences`): nothing for an account without lanes.
    /// Each lane is also reconciled on its own, as an account item of its own.
    pub async fn part_differences(&self, account: &Account, own: &[LedgerEntry]) -> Result<Vec<Difference>, ApiError> {
        if account.lanes_ever() == 0 {
            return Ok(vec![]);
        }
        let mut lanes = Vec::new();
        for lane in self.lanes_of(account).await? {
            let ledger = self.whole_ledger(&lane.id).await?;
            lanes.push((lane, ledger));
        }
        Ok(lane_differences(account, own, &lanes))
    }
}

/// Differences between an account (with its own ledger, oldest first) and its lanes (each
/// with its ledger, oldest first).
pub fn lane_differences(
    account: &Account,
    own: &[LedgerEntry],
    lanes: &[(Account, Vec<LedgerEntry>)],
) -> Vec<Difference> {
    let mut out = Vec::new();
    let diff = |code: &'static str, ours: i64, theirs: i64, detail: String| {
        Difference::wrong(&account.id, code, ours, theirs, detail)
    };
    // The account's side of every lease and return, by its seq.
    let mut sides: HashMap<u64, &LedgerEntry> = own
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::LeaseOut | EntryKind::LeaseReturn))
        .map(|e| (e.seq, e))
        .collect();
    let mirrored = |a: &LedgerEntry, b: &LedgerEntry| {
        let mut x: Vec<(String, i64)> = a.grants.iter().map(|(g, m)| (g.clone(), -m)).collect();
        let mut y = b.grants.clone();
        x.sort();
        y.sort();
        a.amount.get() == -b.amount.get() && x == y
    };
    for (lane, ledger) in lanes {
        let n = lane.spread.lane.as_ref().map_or(0, |l| l.n);
        let mut previous = None;
        for e in ledger {
            let key = order_key(n, e);
            if previous.is_some_and(|p| key <= p) {
                out.push(diff(
                    "lane_order_broken",
                    e.seq as i64,
                    n as i64,
                    format!("Lane {n}'s entry {} is out of the account's order.", e.id),
                ));
            }
            previous = Some(key);
            if !matches!(e.kind, EntryKind::LeaseIn | EntryKind::LeaseReturn) {
                continue;
            }
            let anchor = e.anchor.unwrap_or(0);
            let pair = sides.remove(&anchor);
            let expected = if e.kind == EntryKind::LeaseIn { EntryKind::LeaseOut } else { EntryKind::LeaseReturn };
            if !pair.is_some_and(|p| p.kind == expected && mirrored(p, e)) {
                out.push(diff(
                    "lease_unmatched",
                    e.amount.get(),
                    pair.map_or(0, |p| -p.amount.get()),
                    format!("Lane {n}'s entry {} has no matching entry on the account.", e.id),
                ));
            }
        }
        let out_to_lane: i64 =
            account.spread.lanes.as_ref().and_then(|l| l.out.get(&n)).map_or(0, |v| crate::money::total(v.iter().map(|(_, m)| *m)));
        if lane.balance.get() > out_to_lane {
            out.push(diff(
                "lane_holds_more_than_leased",
                lane.balance.get(),
                out_to_lane,
                format!("Lane {n} holds more than the account has out on lease to it."),
            ));
        }
    }
    if let Some(e) = sides.values().next() {
        out.push(diff(
            "lease_unmatched",
            e.amount.get(),
            0,
            format!("The account's entry {} has no matching entry on a lane.", e.id),
        ));
    }
    // The whole balance in the account's order.
    let mut all: Vec<((u64, u8, u32, u64), i64)> = own.iter().map(|e| (order_key(0, e), e.amount.get())).collect();
    for (lane, ledger) in lanes {
        let n = lane.spread.lane.as_ref().map_or(0, |l| l.n);
        all.extend(ledger.iter().map(|e| (order_key(n, e), e.amount.get())));
    }
    all.sort();
    let mut running = 0i64;
    for (_, amount) in &all {
        running += amount;
        // A lease's account side comes first, so only a credit spent twice takes it below zero.
        if running < 0 {
            out.push(diff("negative_balance", running, 0, "The account's balance as a whole went below zero.".into()));
            break;
        }
    }
    let whole = account.balance.get().saturating_add(crate::money::total(lanes.iter().map(|(l, _)| l.balance.get())));
    if running != whole {
        out.push(diff(
            "balance_not_ledger_sum",
            whole,
            running,
            "The whole balance is not the sum of the merged ledger.".into(),
        ));
    }
    out
}
