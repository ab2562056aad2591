//! The ledger of an account with lanes (rules §14): its own entries and every lane's, in one
//! total order that no clock decides.
//!
//! Each chain (the account, lane 1, lane 2, …) is ordered by its own `seq`. A lane's entry
//! carries the account `seq` it follows (`anchor`): the lease that funded the lane, or, for a
//! return, the account's side of that return. The order is: by anchor (an account entry's
//! anchor is its own `seq`); at one anchor, a lane's return first, then the account's entry,
//! then the lanes' other entries by lane and `seq`. It agrees with every chain's own order and
//! puts every lease's two sides next to its funding, so it depends on versions alone.
//!
//! Each entry's `balance_after` on the account's page is the running sum of all chains in
//! that order: the account's balance as a whole after it. It is computed at read time from the
//! chains' own running balances, so a page needs no earlier page: the whole balance after the
//! newest entry of a page is the sum of each chain's balance after its newest entry there.

use crate::account::Account;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{EntryKind, LedgerEntry};
use crate::money::Micros;
use crate::store::Store;

use super::lane_id;

/// Where an entry of chain `chain` (0: the account, `n`: lane `n`) sits in the account's order.
pub fn order_key(chain: u32, e: &LedgerEntry) -> (u64, u8, u32, u64) {
    if chain == 0 {
        return (e.seq, 1, 0, e.seq);
    }
    let anchor = e.anchor.unwrap_or(0);
    let rank = if e.kind == EntryKind::LeaseReturn { 0 } else { 2 };
    (anchor, rank, chain, e.seq)
}

/// Entries of several chains, each newest first, merged newest first with the whole balance
/// after each; `heads` is each chain's balance after its newest entry given.
fn merge_newest_first(chains: Vec<(u32, Vec<LedgerEntry>)>) -> Vec<(u32, LedgerEntry)> {
    let mut total = crate::money::total(chains.iter().filter_map(|(_, es)| es.first()).map(|e| e.balance_after.get()));
    let mut all: Vec<(u32, LedgerEntry)> =
        chains.into_iter().flat_map(|(c, es)| es.into_iter().map(move |e| (c, e))).collect();
    all.sort_by(|(ca, a), (cb, b)| order_key(*cb, b).cmp(&order_key(*ca, a)));
    for (_, e) in all.iter_mut() {
        let amount = e.amount.get();
        e.balance_after = Micros::new(total);
        total = total.saturating_sub(amount);
    }
    all
}

/// A page cursor of a merged ledger: each chain's bound (entries strictly older), the
/// account's first. `m` then the bounds in hex, `-` for a chain not yet read.
pub fn encode_merged_cursor(bounds: &[Option<u64>]) -> String {
    let parts: Vec<String> = bounds.iter().map(|b| b.map_or("-".to_string(), |s| format!("{s:x}"))).collect();
    format!("m{}", parts.join("."))
}

/// A cursor read back for an account with `chains` chains now. A lane added since the first
/// page has only entries newer than it (nothing of it on later pages); a cursor of the
/// account's own ledger from before it had lanes continues that ledger.
pub fn decode_merged_cursor(s: &str, chains: usize) -> Result<Vec<Option<u64>>, ApiError> {
    let bad = || ApiError::invalid("`cursor` is not a cursor this API returned.");
    let mut bounds: Vec<Option<u64>> = match s.strip_prefix('m') {
        Some(body) => body
            .split('.')
            .map(|p| if p == "-" { Ok(None) } else { u64::from_str_radix(p, 16).map(Some).map_err(|_| bad()) })
            .collect::<Result<_, _>>()?,
        None => vec![Some(crate::views::decode_cursor(s)?)],
    };
    if bounds.len() > chains {
        return Err(bad());
    }
    bounds.resize(chains, Some(0));
    Ok(bounds)
}

/// The bounds of a merged ledger's first page: everything each chain held when `a` and its
/// `lanes` were read together (`Credits::snapshot`), and nothing written since.
pub fn first_bounds(a: &Account, lanes: &[Account]) -> Vec<Option<u64>> {
    let mut bounds = vec![Some(a.version + 1)];
    for n in 1..=a.lanes_ever() {
        let id = lane_id(&a.id, n);
        bounds.push(Some(lanes.iter().find(|l| l.id == id).map_or(0, |l| l.version + 1)));
    }
    bounds
}

/// Reads of the merged ledger one page of the customer's may take.
const MAX_READS_A_PAGE: usize = 32;

impl<S: Store, B: EventBus> Credits<S, B> {
    /// One page (newest first) of what account `a`'s people see of its merged ledger below
    /// `bounds` (one per chain; the first page's from `first_bounds`), and the next page's
    /// bounds when there is more. Lease entries are ours, not the customer's (rules §16): they
    /// move credits between the account's own parts, never the whole balance, so the page skips
    /// them and the running balances of what it shows still add up.
    pub async fn merged_page(
        &self,
        a: &Account,
        limit: usize,
        bounds: Vec<Option<u64>>,
    ) -> Result<(Vec<LedgerEntry>, Option<Vec<Option<u64>>>), ApiError> {
        self.merged_page_of(a, limit, bounds, &|_| true).await
    }

    /// `merged_page` of the entries `keep` keeps (an entity's, rules §17), leases never.
    pub async fn merged_page_of(
        &self,
        a: &Account,
        limit: usize,
        bounds: Vec<Option<u64>>,
        keep: &(dyn Fn(&LedgerEntry) -> bool + Sync),
    ) -> Result<(Vec<LedgerEntry>, Option<Vec<Option<u64>>>), ApiError> {
        let mut shown = Vec::with_capacity(limit);
        let mut bounds = bounds;
        // Leases are a small share of entries (each funds many debits): a page rarely needs a
        // second read; the bound keeps a pathological run of them from holding a request.
        for _ in 0..MAX_READS_A_PAGE {
            let (read, more) = self.merged_raw(a, limit, &bounds).await?;
            let total = read.len();
            for (i, (c, e)) in read.into_iter().enumerate() {
                let slot = &mut bounds[c as usize];
                *slot = Some(slot.map_or(e.seq, |s| s.min(e.seq)));
                if !e.kind.is_lease() && keep(&e) {
                    shown.push(e);
                }
                if shown.len() == limit {
                    let rest = i + 1 < total || more;
                    return Ok((shown, rest.then_some(bounds)));
                }
            }
            if !more {
                return Ok((shown, None));
            }
        }
        Ok((shown, Some(bounds)))
    }

    /// Up to `limit` entries of the merged ledger below `bounds`, newest first, with their
    /// chains (0 the account, n lane n), leases included; whether there are more.
    async fn merged_raw(
        &self,
        a: &Account,
        limit: usize,
        bounds: &[Option<u64>],
    ) -> Result<(Vec<(u32, LedgerEntry)>, bool), ApiError> {
        let chains = a.lanes_ever() + 1;
        if bounds.len() != chains as usize {
            return Err(ApiError::invalid("`cursor` is not a cursor this API returned."));
        }
        let ids: Vec<String> = (0..chains).map(|c| if c == 0 { a.id.clone() } else { lane_id(&a.id, c) }).collect();
        let read = futures_util::future::join_all(
            ids.iter().zip(bounds).map(|(id, b)| self.store.ledger_page(id, limit, *b)),
        )
        .await;
        let mut pages = Vec::new();
        let mut more = Vec::new();
        for (c, r) in read.into_iter().enumerate() {
            let (page, m) = r.map_err(upstream)?;
            more.push((page.len(), m));
            pages.push((c as u32, page));
        }
        let mut merged = merge_newest_first(pages);
        let rest = merged.len() > limit;
        merged.truncate(limit);
        let mut taken = vec![0usize; chains as usize];
        for (c, _) in &merged {
            taken[*c as usize] += 1;
        }
        let has_more = rest || more.iter().zip(&taken).any(|((read, m), t)| *m || read > t);
        Ok((merged, has_more))
    }

    /// Every entry of account `a` and its lanes as its people see them (no leases), oldest
    /// first, with the whole balance after each.
    pub async fn customer_ledger(&self, a: &Account) -> Result<Vec<LedgerEntry>, ApiError> {
        let mut all = self.merged_ledger(a).await?;
        all.retain(|e| !e.kind.is_lease());
        Ok(all)
    }

    /// Every entry of account `a` and its lanes, oldest first, with the whole balance after each.
    pub async fn merged_ledger(&self, a: &Account) -> Result<Vec<LedgerEntry>, ApiError> {
        let mut chains = Vec::new();
        for c in 0..=a.lanes_ever() {
            let id = if c == 0 { a.id.clone() } else { lane_id(&a.id, c) };
            let mut es = self.whole_ledger(&id).await?;
            es.reverse();
            chains.push((c, es));
        }
        let mut all: Vec<LedgerEntry> = merge_newest_first(chains).into_iter().map(|(_, e)| e).collect();
        all.reverse();
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, kind: EntryKind, amount: i64, after: i64, anchor: Option<u64>) -> LedgerEntry {
        LedgerEntry {
            id: format!("t{seq}{amount}"),
            account_id: "a".into(),
            seq,
            kind,
            amount: Micros::new(amount),
            balance_after: Micros::new(after),
            created_at: 0,
            description: String::new(),
            grants: vec![],
            anchor,
            entity: None,
        }
    }

    /// A purchase of 100, a lease of 60 to lane 1 (account entry 2), two debits on the lane,
    /// a lease of 30 to lane 2 (entry 3) and one debit there, then a recall (entries 4, 5):
    /// the merged order puts each lane's entries after their lease, whatever their clocks,
    /// and the running balance is the whole balance after each.
    #[test]
    fn lanes_merge_after_their_leases_with_the_whole_balance() {
        use EntryKind::*;
        let account = vec![
            e(5, LeaseReturn, 20, 80, None),
            e(4, LeaseReturn, 50, 60, None),
            e(3, LeaseOut, -30, 10, None),
            e(2, LeaseOut, -60, 40, None),
            e(1, Purchase, 100, 100, None),
        ];
        let lane1 = vec![
            e(4, LeaseReturn, -50, 0, Some(4)),
            e(3, Consumption, -5, 50, Some(2)),
            e(2, Consumption, -5, 55, Some(2)),
            e(1, LeaseIn, 60, 60, Some(2)),
        ];
        let lane2 = vec![
            e(3, LeaseReturn, -20, 0, Some(5)),
            e(2, Consumption, -10, 20, Some(3)),
            e(1, LeaseIn, 30, 30, Some(3)),
        ];
        let merged = merge_newest_first(vec![(0, account), (1, lane1), (2, lane2)]);
        let got: Vec<(u32, u64, i64, i64)> =
            merged.iter().rev().map(|(c, e)| (*c, e.seq, e.amount.get(), e.balance_after.get())).collect();
        assert_eq!(
            got,
            [
                (0, 1, 100, 100),
                (0, 2, -60, 40),
                (1, 1, 60, 100),
                (1, 2, -5, 95),
                (1, 3, -5, 90),
                (0, 3, -30, 60),
                (2, 1, 30, 90),
                (2, 2, -10, 80),
                (1, 4, -50, 30),
                (0, 4, 50, 80),
                (2, 3, -20, 60),
                (0, 5, 20, 80),
            ]
        );
    }

    #[test]
    fn merged_cursors_read_back() {
        let b = vec![Some(0x2a), None, Some(7)];
        assert_eq!(decode_merged_cursor(&encode_merged_cursor(&b), 3).unwrap(), b);
        // A lane added since: nothing of it on later pages.
        assert_eq!(decode_merged_cursor("m1.2", 3).unwrap(), [Some(1), Some(2), Some(0)]);
        // The account's own cursor from before it had lanes.
        assert_eq!(decode_merged_cursor("c12", 3).unwrap(), [Some(0x12), Some(0), Some(0)]);
        assert!(decode_merged_cursor("m1.2.3.4", 3).is_err() && decode_merged_cursor("mz", 3).is_err());
    }
}
