//! Persistence behind one small trait. A `Commit` is everything one balance change writes:
//! the account's new state (compare-and-swap on `version`), the ledger entry, the idempotency
//! claim, the hold record, and the outbox of events, all or nothing (SPEC §6, §10.7).
//!
//! `dynamo::DynamoStore` is the real adapter; `MemoryStore` is an in-memory one with the same
//! semantics for fast unit tests.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use crate::account::Account;
use crate::ledger::{DomainEvent, HoldRecord, HoldStatus, IdemRecord, LedgerEntry};
use crate::purchases::{PurchaseRecord, PurchaseStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused for a reason the caller may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data that does not decode: a bug or corruption, never retried blindly.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Why a commit wrote nothing.
#[derive(Debug, Clone)]
pub enum CommitError {
    /// The account changed since `expected_version` (or does not exist). Carries the current
    /// state when the store returned it with the failure, so a retry needs no read.
    Stale(Option<Box<Account>>),
    /// The idempotency key was already claimed; carries the first result.
    KeyClaimed(Box<IdemRecord>),
    /// The hold being settled is not open; carries its record if it exists.
    HoldNotOpen(Option<Box<HoldRecord>>),
    /// The purchase is not in a state the write moves from; carries it if it exists.
    PurchaseNotInState(Option<Box<PurchaseRecord>>),
    /// Two writers collided inside the store (DynamoDB `TransactionConflict`): retry.
    Conflict,
    Store(StoreError),
}

/// What to do with a hold record in a commit.
#[derive(Debug, Clone)]
pub enum HoldWrite {
    /// A new hold.
    Create(HoldRecord),
    /// Settle an open hold: written only if the stored one is still open.
    Settle(HoldRecord),
}

/// One message of one notification to one recipient: the record that it goes out at most once
/// (SPEC §8) and what happened to it, for `GET .../notifications`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryRecord {
    pub account_id: String,
    pub event_id: String,
    /// When the event happened (sorts the list).
    pub occurred_ms: i64,
    pub kind: String,
    /// `email` or `sms`.
    pub channel: String,
    pub to: String,
    /// `sending`, `sent`, `failed` (final), `retry` (a retryable failure: may be claimed again),
    /// `skipped` (an unusable address).
    pub status: String,
    pub detail: Option<String>,
    pub updated_at: i64,
}

/// A purchase record written only if the stored one is in one of `from` (empty: only if none
/// exists yet) and, when given, was last written at `expected_updated_at` — so two writers that
/// read the same record cannot both write (`updated_at` strictly increases with each write).
#[derive(Debug, Clone)]
pub struct PurchaseWrite {
    pub record: PurchaseRecord,
    pub from: Vec<PurchaseStatus>,
    pub expected_updated_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Commit {
    /// The new state; its `version` must be `expected_version + 1`.
    pub account: Account,
    /// 0 creates the account (it must not exist).
    pub expected_version: u64,
    pub ledger: Option<LedgerEntry>,
    pub idempotency: Option<IdemRecord>,
    pub hold: Option<HoldWrite>,
    /// A purchase state change that must commit with this balance change (crediting it).
    pub purchase: Option<PurchaseWrite>,
    /// Events written to the outbox in the same transaction, published after it.
    pub outbox: Vec<DomainEvent>,
}

pub trait Store: Send + Sync {
    /// The account, read with strong consistency.
    fn load_account(&self, id: &str) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<(), CommitError>> + Send;
    /// Ledger entries newest first, strictly older than `before_seq` when given.
    fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> impl Future<Output = Result<(Vec<LedgerEntry>, bool), StoreError>> + Send;
    fn load_hold(
        &self,
        account_id: &str,
        hold_id: &str,
    ) -> impl Future<Output = Result<Option<HoldRecord>, StoreError>> + Send;
    fn load_idempotency(
        &self,
        account_id: &str,
        scope_key: &str,
    ) -> impl Future<Output = Result<Option<IdemRecord>, StoreError>> + Send;
    /// Writes a purchase record on its own (a state change that moves no credits).
    fn put_purchase(&self, write: PurchaseWrite) -> impl Future<Output = Result<(), CommitError>> + Send;
    fn load_purchase(
        &self,
        account_id: &str,
        purchase_id: &str,
    ) -> impl Future<Output = Result<Option<PurchaseRecord>, StoreError>> + Send;
    /// Claims a delivery: written only if none exists or the last attempt may be retried.
    /// `false` means it went (or is going) out already.
    fn claim_delivery(&self, record: &DeliveryRecord) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records how a claimed delivery ended.
    fn finish_delivery(&self, record: &DeliveryRecord) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Recent deliveries of an account, newest first.
    fn recent_deliveries(
        &self,
        account_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeliveryRecord>, StoreError>> + Send;
    /// Accounts with auto-recharge on (the sweep's sparse index), up to `limit`.
    fn accounts_for_sweep(&self, limit: usize) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Removes outbox entries once their events are on the bus.
    fn clear_outbox(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Outbox entries whose publication has not been confirmed, oldest first.
    fn pending_outbox(&self, limit: usize) -> impl Future<Output = Result<Vec<DomainEvent>, StoreError>> + Send;
    /// Every permanent `payment:<id>` claim of an account: the payments it was credited for.
    fn payment_claims(&self, account_id: &str) -> impl Future<Output = Result<Vec<IdemRecord>, StoreError>> + Send;
    /// Account ids in the store's own order, about `limit` after the cursor `after`; the second
    /// value is the next page's cursor (`None` at the end). For reconciliation, which visits
    /// every account once.
    fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> impl Future<Output = Result<(Vec<String>, Option<String>), StoreError>> + Send;
}

/// In-memory store with the semantics of the DynamoDB adapter (one lock = one transaction).
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    accounts: HashMap<String, Account>,
    ledger: HashMap<String, BTreeMap<u64, LedgerEntry>>,
    idem: HashMap<(String, String), IdemRecord>,
    holds: HashMap<(String, String), HoldRecord>,
    purchases: HashMap<(String, String), PurchaseRecord>,
    deliveries: BTreeMap<(String, String), DeliveryRecord>,
    outbox: BTreeMap<(i64, String), DomainEvent>,
}

impl MemoryStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Memory>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Unavailable("memory store poisoned".into()))
    }
}

/// The sort key of a delivery: time first, so an account's deliveries list newest first.
pub fn delivery_key(r: &DeliveryRecord) -> String {
    format!("NOTIFY#{:013}#{}#{}#{}", r.occurred_ms, r.event_id, r.channel, r.to)
}

/// `Some(current)` when `w` may not be written over what is stored.
fn purchase_conflict(m: &Memory, account_id: &str, w: &PurchaseWrite) -> Option<Option<PurchaseRecord>> {
    let current = m.purchases.get(&(account_id.to_string(), w.record.purchase_id.clone()));
    let ok = match current {
        None => w.from.is_empty(),
        Some(p) => w.from.contains(&p.status) && w.expected_updated_at.is_none_or(|u| u == p.updated_at),
    };
    if ok {
        None
    } else {
        Some(current.cloned())
    }
}

impl Store for MemoryStore {
    async fn load_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.lock()?.accounts.get(id).cloned())
    }

    async fn commit(&self, c: Commit) -> Result<(), CommitError> {
        let mut m = self.lock().map_err(CommitError::Store)?;
        let id = c.account.id.clone();
        let current = m.accounts.get(&id);
        let stale = match current {
            None => c.expected_version != 0,
            Some(a) => a.version != c.expected_version,
        };
        let idem_claimed = c.idempotency.as_ref().and_then(|r| m.idem.get(&(id.clone(), r.scope_key.clone())).cloned());
        let hold_problem = match &c.hold {
            Some(HoldWrite::Settle(r)) => match m.holds.get(&(id.clone(), r.hold_id.clone())) {
                Some(h) if h.status == HoldStatus::Open => None,
                other => Some(other.cloned()),
            },
            _ => None,
        };
        let purchase_problem = c.purchase.as_ref().and_then(|w| purchase_conflict(&m, &id, w));
        // Same precedence as the DynamoDB adapter: a claimed key or a settled hold answers first.
        if let Some(r) = idem_claimed {
            return Err(CommitError::KeyClaimed(Box::new(r)));
        }
        if let Some(h) = hold_problem {
            return Err(CommitError::HoldNotOpen(h.map(Box::new)));
        }
        if let Some(p) = purchase_problem {
            return Err(CommitError::PurchaseNotInState(p.map(Box::new)));
        }
        if stale {
            return Err(CommitError::Stale(current.cloned().map(Box::new)));
        }
        if let Some(w) = c.purchase {
            m.purchases.insert((id.clone(), w.record.purchase_id.clone()), w.record);
        }
        if let Some(e) = c.ledger {
            m.ledger.entry(id.clone()).or_default().insert(e.seq, e);
        }
        if let Some(r) = c.idempotency {
            m.idem.insert((id.clone(), r.scope_key.clone()), r);
        }
        match c.hold {
            Some(HoldWrite::Create(r)) | Some(HoldWrite::Settle(r)) => {
                m.holds.insert((id.clone(), r.hold_id.clone()), r);
            }
            None => {}
        }
        for e in c.outbox {
            m.outbox.insert((e.created_at, e.id.clone()), e);
        }
        m.accounts.insert(id, c.account);
        Ok(())
    }

    async fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<(Vec<LedgerEntry>, bool), StoreError> {
        let m = self.lock()?;
        let Some(entries) = m.ledger.get(account_id) else { return Ok((vec![], false)) };
        let mut page: Vec<LedgerEntry> =
            entries.range(..before_seq.unwrap_or(u64::MAX)).rev().take(limit + 1).map(|(_, e)| e.clone()).collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    async fn load_hold(&self, account_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        Ok(self.lock()?.holds.get(&(account_id.to_string(), hold_id.to_string())).cloned())
    }

    async fn put_purchase(&self, w: PurchaseWrite) -> Result<(), CommitError> {
        let mut m = self.lock().map_err(CommitError::Store)?;
        let id = w.record.account_id.clone();
        if let Some(p) = purchase_conflict(&m, &id, &w) {
            return Err(CommitError::PurchaseNotInState(p.map(Box::new)));
        }
        m.purchases.insert((id, w.record.purchase_id.clone()), w.record);
        Ok(())
    }

    async fn load_purchase(&self, account_id: &str, purchase_id: &str) -> Result<Option<PurchaseRecord>, StoreError> {
        Ok(self.lock()?.purchases.get(&(account_id.to_string(), purchase_id.to_string())).cloned())
    }

    async fn load_idempotency(&self, account_id: &str, scope_key: &str) -> Result<Option<IdemRecord>, StoreError> {
        Ok(self.lock()?.idem.get(&(account_id.to_string(), scope_key.to_string())).cloned())
    }

    async fn accounts_for_sweep(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let m = self.lock()?;
        Ok(m.accounts.values().filter(|a| a.gsi1pk.is_some()).take(limit).map(|a| a.id.clone()).collect())
    }

    async fn claim_delivery(&self, r: &DeliveryRecord) -> Result<bool, StoreError> {
        let mut m = self.lock()?;
        let key = (r.account_id.clone(), delivery_key(r));
        if m.deliveries.get(&key).is_some_and(|d| d.status != "retry") {
            return Ok(false);
        }
        m.deliveries.insert(key, r.clone());
        Ok(true)
    }

    async fn finish_delivery(&self, r: &DeliveryRecord) -> Result<(), StoreError> {
        self.lock()?.deliveries.insert((r.account_id.clone(), delivery_key(r)), r.clone());
        Ok(())
    }

    async fn recent_deliveries(&self, account_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        let m = self.lock()?;
        Ok(m.deliveries
            .iter()
            .rev()
            .filter(|((a, _), _)| a == account_id)
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect())
    }

    async fn clear_outbox(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        let mut m = self.lock()?;
        for e in events {
            m.outbox.remove(&(e.created_at, e.id.clone()));
        }
        Ok(())
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        Ok(self.lock()?.outbox.values().take(limit).cloned().collect())
    }

    async fn payment_claims(&self, account_id: &str) -> Result<Vec<IdemRecord>, StoreError> {
        let m = self.lock()?;
        let mut claims: Vec<IdemRecord> = m
            .idem
            .iter()
            .filter(|((a, k), _)| a == account_id && k.starts_with("payment:"))
            .map(|(_, r)| r.clone())
            .collect();
        claims.sort_by(|a, b| a.scope_key.cmp(&b.scope_key));
        Ok(claims)
    }

    async fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let m = self.lock()?;
        let mut ids: Vec<&String> = m.accounts.keys().filter(|id| after.as_ref().is_none_or(|a| *id > a)).collect();
        ids.sort();
        let more = ids.len() > limit;
        let page: Vec<String> = ids.into_iter().take(limit).cloned().collect();
        let next = if more { page.last().cloned() } else { None };
        Ok((page, next))
    }
}

/// A shared store is a store: several services (as several Lambda instances would) over one.
impl<S: Store> Store for std::sync::Arc<S> {
    fn load_account(&self, id: &str) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send {
        (**self).load_account(id)
    }
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<(), CommitError>> + Send {
        (**self).commit(commit)
    }
    fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> impl Future<Output = Result<(Vec<LedgerEntry>, bool), StoreError>> + Send {
        (**self).ledger_page(account_id, limit, before_seq)
    }
    fn load_hold(
        &self,
        account_id: &str,
        hold_id: &str,
    ) -> impl Future<Output = Result<Option<HoldRecord>, StoreError>> + Send {
        (**self).load_hold(account_id, hold_id)
    }
    fn load_idempotency(
        &self,
        account_id: &str,
        scope_key: &str,
    ) -> impl Future<Output = Result<Option<IdemRecord>, StoreError>> + Send {
        (**self).load_idempotency(account_id, scope_key)
    }
    fn put_purchase(&self, write: PurchaseWrite) -> impl Future<Output = Result<(), CommitError>> + Send {
        (**self).put_purchase(write)
    }
    fn load_purchase(
        &self,
        account_id: &str,
        purchase_id: &str,
    ) -> impl Future<Output = Result<Option<PurchaseRecord>, StoreError>> + Send {
        (**self).load_purchase(account_id, purchase_id)
    }
    fn claim_delivery(&self, record: &DeliveryRecord) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).claim_delivery(record)
    }
    fn finish_delivery(&self, record: &DeliveryRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).finish_delivery(record)
    }
    fn recent_deliveries(
        &self,
        account_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeliveryRecord>, StoreError>> + Send {
        (**self).recent_deliveries(account_id, limit)
    }
    fn accounts_for_sweep(&self, limit: usize) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        (**self).accounts_for_sweep(limit)
    }
    fn clear_outbox(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).clear_outbox(events)
    }
    fn pending_outbox(&self, limit: usize) -> impl Future<Output = Result<Vec<DomainEvent>, StoreError>> + Send {
        (**self).pending_outbox(limit)
    }
    fn payment_claims(&self, account_id: &str) -> impl Future<Output = Result<Vec<IdemRecord>, StoreError>> + Send {
        (**self).payment_claims(account_id)
    }
    fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> impl Future<Output = Result<(Vec<String>, Option<String>), StoreError>> + Send {
        (**self).account_ids(limit, after)
    }
}
