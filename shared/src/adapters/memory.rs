//! In-memory adapters with the semantics of the real ones, for fast unit tests: a store (one
//! lock = one transaction) and a bus that records what it was given and can be told to fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::account::{Account, RechargeRecord};
use crate::events::DomainEvent;
use crate::events::{outbox_shard, EventBus, PublishError};
use crate::grants::Grant;
use crate::ledger::{HoldRecord, HoldStatus, IdemRecord, LedgerEntry};
use crate::purchases::PurchaseRecord;
use crate::store::{
    delivery_key, Accounts, Commit, CommitError, Deliveries, DeliveryRecord, HoldWrite, Listings, Outbox, PaymentRecords,
    PurchaseWrite, RateCounts, Segment, StoreError,
};
use serde_json::Value;

use crate::audit::{AuditHead, AuditLog, AuditPage, AuditQuery, AuditRecord, Position};

/// In-memory store with the semantics of the DynamoDB adapter (one lock = one transaction).
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
    /// While set, every commit loses its race (`Conflict`), as under endless contention.
    pub contend: std::sync::atomic::AtomicBool,
    /// Faults for the simulator: the next commit fails and does nothing (the store is down).
    pub fail_next_commit: std::sync::atomic::AtomicBool,
    /// The next commit takes effect and its answer is lost (the caller dies right after it).
    pub lose_next_answer: std::sync::atomic::AtomicBool,
    /// Receipts (rules §20), behind their own port (`receipts::ReceiptStore`).
    pub receipts: crate::receipts::store::MemoryReceiptStore,
}

#[derive(Default)]
struct Memory {
    accounts: HashMap<String, Account>,
    ledger: HashMap<String, BTreeMap<u64, LedgerEntry>>,
    idem: HashMap<(String, String), IdemRecord>,
    holds: HashMap<(String, String), HoldRecord>,
    purchases: HashMap<(String, String), PurchaseRecord>,
    recharges: HashMap<(String, String), RechargeRecord>,
    payments: HashMap<String, String>,
    deliveries: BTreeMap<(String, String), DeliveryRecord>,
    outbox: BTreeMap<(i64, String), DomainEvent>,
    starts: HashMap<(String, String, i64), u32>,
    checkpoints: HashMap<String, Value>,
    ended_grants: HashMap<String, Vec<Grant>>,
    entities: BTreeMap<(String, String), crate::entities::Entity>,
    /// Audit records by (chain, seq), and the heads of chains kept beside their records.
    audit: BTreeMap<(String, u64), AuditRecord>,
    audit_heads: HashMap<String, AuditHead>,
}

impl MemoryStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Memory>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Unavailable("memory store poisoned".into()))
    }
}

/// `Some(current)` when `w` may not be written over what is stored.
fn purchase_conflict(m: &Memory, account_id: &str, w: &PurchaseWrite) -> Option<Option<PurchaseRecord>> {
    let current = m.purchases.get(&(account_id.to_string(), w.record.purchase_id.to_string()));
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

/// Whether commit `c` may be written over what is stored: the conditions of one commit.
fn check(m: &Memory, c: &Commit) -> Result<(), CommitError> {
    let id = c.account.id.clone();
    let current = m.accounts.get(&id);
    let stale = match current {
        None => c.expected_version != 0,
        Some(a) => a.version != c.expected_version,
    };
    let idem_claimed: Vec<IdemRecord> = c
        .idempotency
        .iter()
        .filter_map(|r| m.idem.get(&(r.account_id.clone(), r.scope_key.clone())).cloned())
        .collect();
    let hold_problem = match &c.hold {
        Some(HoldWrite::Settle(r)) => match m.holds.get(&(id.clone(), r.hold_id.clone())) {
            Some(h) if h.status == HoldStatus::Open => None,
            other => Some(other.cloned()),
        },
        _ => None,
    };
    let purchase_problem = c.purchase.as_ref().and_then(|w| purchase_conflict(&m, &id, w));
    // Same precedence as the DynamoDB adapter: a claimed key or a settled hold answers first.
    if !idem_claimed.is_empty() && !crate::broken::on(crate::broken::Bug::DropIdempotencyCondition) {
        return Err(CommitError::KeyClaimed(idem_claimed));
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
    // As the DynamoDB adapter: an entity moved since it was read fails the whole commit.
    let owner = crate::parts::owner_of(&id).to_string();
    for w in &c.entities {
        let stored = m.entities.get(&(owner.clone(), w.record.entity.clone())).map_or(0, |e| e.version);
        if stored != w.expected_version {
            return Err(CommitError::EntityMoved);
        }
    }
    // As the DynamoDB adapter: an audit record never goes over another.
    if let Some(r) = &c.audit {
        if m.audit.contains_key(&(r.chain().to_string(), r.seq)) {
            return Err(CommitError::Store(StoreError::Unavailable("transaction cancelled: audit record exists".into())));
        }
    }
    Ok(())
}

/// Writes commit `c` (its conditions checked).
fn write(m: &mut Memory, c: Commit) {
    let id = c.account.id.clone();
    for w in c.entities {
        m.entities.insert((w.record.account_id.clone(), w.record.entity.clone()), w.record);
    }
    if let Some(pi) = c.payment_index {
        m.payments.insert(pi, id.clone());
    }
    if let Some(r) = c.recharge {
        m.recharges.insert((id.clone(), r.recharge_id.to_string()), r);
    }
    if let Some(w) = c.purchase {
        m.purchases.insert((id.clone(), w.record.purchase_id.to_string()), w.record);
    }
    for e in c.ledger {
        m.ledger.entry(id.clone()).or_default().insert(e.seq, e);
    }
    for r in c.idempotency {
        m.idem.insert((r.account_id.clone(), r.scope_key.clone()), r);
    }
    match c.hold {
        Some(HoldWrite::Create(r)) | Some(HoldWrite::Settle(r)) => {
            m.holds.insert((id.clone(), r.hold_id.clone()), r);
        }
        None => {}
    }
    for g in c.ended_grants {
        let list = m.ended_grants.entry(id.clone()).or_default();
        list.retain(|x| x.id != g.id);
        list.push(g);
    }
    for e in c.outbox {
        m.outbox.insert((e.created_at, e.id.clone()), e);
    }
    if let Some(r) = c.audit {
        m.audit.insert((r.chain().to_string(), r.seq), r);
    }
    m.accounts.insert(id, c.account);
}

impl Accounts for MemoryStore {
    async fn load_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.lock()?.accounts.get(id).cloned())
    }
    async fn commit(&self, c: Commit) -> Result<(), CommitError> {
        self.commit_all(vec![c]).await
    }
    async fn commit_all(&self, commits: Vec<Commit>) -> Result<(), CommitError> {
        if self.contend.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CommitError::Conflict);
        }
        if self.fail_next_commit.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(CommitError::Store(StoreError::Unavailable("injected: the store is down".into())));
        }
        // DynamoDB refuses a transaction of more than 100 items, or an item over 400 KB: so
        // does this store, with the same answer as the DynamoDB adapter.
        let mut items = Vec::new();
        for c in &commits {
            items.extend(crate::adapters::dynamo::commit_items(c).map_err(CommitError::Store)?);
        }
        if let Some(why) = crate::adapters::dynamo::too_large(&items) {
            return Err(CommitError::TooLarge(why));
        }
        let mut m = self.lock().map_err(CommitError::Store)?;
        let several = commits.len() > 1;
        for c in &commits {
            match check(&m, c) {
                Ok(()) => {}
                // As the DynamoDB adapter: which account moved is not said of several.
                Err(CommitError::Stale(_)) if several => return Err(CommitError::Stale(None)),
                Err(e) => return Err(e),
            }
        }
        for c in commits {
            write(&mut m, c);
        }
        if self.lose_next_answer.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(CommitError::Store(StoreError::Unavailable("injected: the answer was lost".into())));
        }
        Ok(())
    }
    async fn load_accounts(&self, ids: &[String]) -> Result<Vec<(String, Result<Account, StoreError>)>, StoreError> {
        let m = self.lock()?;
        Ok(ids.iter().filter_map(|id| m.accounts.get(id).map(|a| (id.clone(), Ok(a.clone())))).collect())
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
    async fn load_idempotency(&self, account_id: &str, scope_key: &str) -> Result<Option<IdemRecord>, StoreError> {
        Ok(self.lock()?.idem.get(&(account_id.to_string(), scope_key.to_string())).cloned())
    }
    async fn load_entity(&self, account_id: &str, entity: &str) -> Result<Option<crate::entities::Entity>, StoreError> {
        Ok(self.lock()?.entities.get(&(account_id.to_string(), entity.to_string())).cloned())
    }
    async fn entities(&self, account_id: &str) -> Result<Vec<crate::entities::Entity>, StoreError> {
        let m = self.lock()?;
        Ok(m.entities.range((account_id.to_string(), String::new())..)
            .take_while(|((a, _), _)| a == account_id)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl PaymentRecords for MemoryStore {
    async fn put_purchase(&self, w: PurchaseWrite) -> Result<(), CommitError> {
        let mut m = self.lock().map_err(CommitError::Store)?;
        let id = w.record.account_id.clone();
        if let Some(p) = purchase_conflict(&m, &id, &w) {
            return Err(CommitError::PurchaseNotInState(p.map(Box::new)));
        }
        m.purchases.insert((id, w.record.purchase_id.to_string()), w.record);
        Ok(())
    }
    async fn load_purchase(&self, account_id: &str, purchase_id: &str) -> Result<Option<PurchaseRecord>, StoreError> {
        Ok(self.lock()?.purchases.get(&(account_id.to_string(), purchase_id.to_string())).cloned())
    }
    async fn load_recharge(&self, account_id: &str, recharge_id: &str) -> Result<Option<RechargeRecord>, StoreError> {
        Ok(self.lock()?.recharges.get(&(account_id.to_string(), recharge_id.to_string())).cloned())
    }
    async fn payment_account(&self, payment_intent_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.payments.get(payment_intent_id).cloned())
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
}

impl Deliveries for MemoryStore {
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
}

impl RateCounts for MemoryStore {
    async fn count_start(
        &self,
        account_id: &str,
        what: &str,
        window_start_ms: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let mut m = self.lock()?;
        let n = m.starts.entry((account_id.to_string(), what.to_string(), window_start_ms)).or_insert(0);
        if *n >= limit {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }
}

impl Outbox for MemoryStore {
    async fn clear_outbox(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        let mut m = self.lock()?;
        for e in events {
            m.outbox.remove(&(e.created_at, e.id.clone()));
        }
        Ok(())
    }
    async fn pending_outbox(&self, shard: u32, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        let m = self.lock()?;
        Ok(m.outbox.values().filter(|e| outbox_shard(&e.id) == shard).take(limit).cloned().collect())
    }
}

impl Listings for MemoryStore {
    async fn accounts_for_sweep(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let m = self.lock()?;
        let listed = m.accounts.values().filter(|a| a.swept()).map(|a| &a.id);
        Ok(page_after(listed, limit, after.as_ref()))
    }
    async fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
        segment: Segment,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let m = self.lock()?;
        let listed = m.accounts.keys().filter(|id| outbox_shard(id) % segment.total.max(1) == segment.index);
        Ok(page_after(listed, limit, after.as_ref()))
    }
    async fn accounts_expiring(&self, by_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let m = self.lock()?;
        let mut due: Vec<(i64, String)> = m
            .accounts
            .values()
            .filter_map(|a| a.expiry_due().map(|t| (t, a.id.clone())))
            .filter(|(t, _)| *t <= by_ms)
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }
    async fn ended_grants(&self, account_id: &str) -> Result<Vec<Grant>, StoreError> {
        let mut out = self.lock()?.ended_grants.get(account_id).cloned().unwrap_or_default();
        out.sort_by_key(|g| std::cmp::Reverse((g.ended_at, g.created_at)));
        Ok(out)
    }
    async fn find_accounts(&self, by: &crate::account::AccountLookup) -> Result<Vec<String>, StoreError> {
        let m = self.lock()?;
        let mut ids: Vec<String> = m.accounts.values().filter(|a| a.found_by(by)).map(|a| a.id.clone()).collect();
        ids.sort();
        ids.truncate(20);
        Ok(ids)
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.lock()?.checkpoints.get(name).cloned())
    }
    async fn save_checkpoint(&self, name: &str, value: &Value) -> Result<(), StoreError> {
        self.lock()?.checkpoints.insert(name.to_string(), value.clone());
        Ok(())
    }
}

impl AuditLog for MemoryStore {
    async fn audit_head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError> {
        Ok(self.lock()?.audit_heads.get(chain).cloned())
    }
    async fn append_audit(&self, record: &AuditRecord, expected: Option<&AuditHead>) -> Result<bool, StoreError> {
        let mut m = self.lock()?;
        let chain = record.chain().to_string();
        if m.audit_heads.get(&chain) != expected || m.audit.contains_key(&(chain.clone(), record.seq)) {
            return Ok(false);
        }
        m.audit_heads.insert(chain.clone(), record.head());
        m.audit.insert((chain, record.seq), record.clone());
        Ok(true)
    }
    async fn audit_page(
        &self,
        query: &AuditQuery,
        limit: usize,
        after: Option<&Position>,
    ) -> Result<AuditPage, StoreError> {
        let m = self.lock()?;
        let wanted = |r: &AuditRecord| {
            query.actor.as_ref().is_none_or(|a| *a == r.actor.sub || *a == r.actor.role)
                && query.action.as_ref().is_none_or(|a| *a == r.action)
        };
        let mut matching: Vec<&AuditRecord> = match &query.account_id {
            // One chain: in its order, newest first.
            Some(acct) => m
                .audit
                .range((acct.clone(), 0)..=(acct.clone(), u64::MAX))
                .rev()
                .map(|(_, r)| r)
                .filter(|r| after.is_none_or(|p| r.seq < p.seq))
                .collect(),
            // Every chain: by time, newest first.
            None => {
                let mut all: Vec<&AuditRecord> =
                    m.audit.values().filter(|r| after.is_none_or(|p| p.is_before(&Position::of(r)))).collect();
                all.sort_by_key(|r| std::cmp::Reverse((r.at_ms(), r.chain().to_string(), r.seq)));
                all
            }
        };
        matching.retain(|r| wanted(r));
        let more = matching.len() > limit;
        let records: Vec<AuditRecord> = matching.into_iter().take(limit).cloned().collect();
        let next_cursor = if more { records.last().map(|r| Position::of(r).cursor()) } else { None };
        Ok(AuditPage { records, next_cursor })
    }
    async fn audit_chain(&self, chain: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let m = self.lock()?;
        Ok(m.audit
            .range((chain.to_string(), after_seq.saturating_add(1))..=(chain.to_string(), u64::MAX))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }
}

impl MemoryStore {
    /// Test support: changes the stored audit record at (`chain`, `seq`), as someone with
    /// access to the table could; `false` when there is none.
    pub fn tamper_audit(&self, chain: &str, seq: u64, edit: impl FnOnce(&mut AuditRecord)) -> bool {
        let Ok(mut m) = self.lock() else { return false };
        match m.audit.get_mut(&(chain.to_string(), seq)) {
            Some(r) => {
                edit(r);
                true
            }
            None => false,
        }
    }

    /// Test support: removes the stored audit record at (`chain`, `seq`).
    pub fn remove_audit(&self, chain: &str, seq: u64) -> bool {
        self.lock().is_ok_and(|mut m| m.audit.remove(&(chain.to_string(), seq)).is_some())
    }
}

/// Ids in order, `limit` of them after `after`, and the next page's cursor.
fn page_after<'a>(
    ids: impl Iterator<Item = &'a String>,
    limit: usize,
    after: Option<&String>,
) -> (Vec<String>, Option<String>) {
    let mut ids: Vec<&String> = ids.filter(|id| after.is_none_or(|a| *id > a)).collect();
    ids.sort();
    let more = ids.len() > limit;
    let page: Vec<String> = ids.into_iter().take(limit).cloned().collect();
    let next = if more { page.last().cloned() } else { None };
    (page, next)
}

/// Records events in memory; can be told to fail, for tests of the outbox.
#[derive(Default)]
pub struct MemoryBus {
    pub published: Mutex<Vec<DomainEvent>>,
    pub fail: std::sync::atomic::AtomicBool,
}

impl EventBus for MemoryBus {
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), PublishError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PublishError { failed: events.to_vec(), reason: "bus down".into() });
        }
        if let Ok(mut p) = self.published.lock() {
            p.extend_from_slice(events);
        }
        Ok(())
    }
}

/// A service over a fresh in-memory store and bus, for the unit tests.
#[cfg(test)]
pub(crate) fn memory_credits(profile: &str) -> crate::engine::Credits<std::sync::Arc<MemoryStore>, std::sync::Arc<MemoryBus>> {
    let profile = crate::profile::Profile::load(profile).unwrap_or_else(|e| panic!("{e}"));
    crate::engine::Credits::new(profile, std::sync::Arc::new(MemoryStore::default()), std::sync::Arc::new(MemoryBus::default()))
}
