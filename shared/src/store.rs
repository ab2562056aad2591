//! Persistence behind small ports, one per thing kept: `Accounts` (the account commit: a
//! `Commit` is everything one balance change writes — the account's new state, compare-and-swap
//! on `version`, its ledger entries, idempotency claims, hold, entities and the outbox of its
//! events — all or nothing, rules §6, §10.7), `PaymentRecords`, `Deliveries`, `RateCounts`,
//! `Outbox` and `Listings`. `Store` is all of them, which is what the engine is built on; a test
//! wrapper implements the port it perturbs and hands the others on with `forward_port!`.
//!
//! The adapter counts and sizes what a commit writes: a commit too large for one transaction is
//! refused with `CommitError::TooLarge`, so the engine knows DynamoDB's limits only through
//! that answer. `adapters::dynamo::DynamoStore` is the real adapter; `adapters::memory::MemoryStore`
//! an in-memory one with the same semantics for fast unit tests and the simulator.

use std::future::Future;

use serde_json::Value;

use crate::account::{Account, RechargeRecord};
use crate::events::DomainEvent;
use crate::grants::Grant;
use crate::ledger::{HoldRecord, IdemRecord, LedgerEntry};
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
    /// Idempotency keys already claimed (at least one); each carries its first result.
    KeyClaimed(Vec<IdemRecord>),
    /// The hold being settled is not open; carries its record if it exists.
    HoldNotOpen(Option<Box<HoldRecord>>),
    /// The purchase is not in a state the write moves from; carries it if it exists.
    PurchaseNotInState(Option<Box<PurchaseRecord>>),
    /// Two writers collided inside the store (DynamoDB `TransactionConflict`): retry.
    Conflict,
    /// A partition the commit writes is at its capacity, past the SDK's own retries (DynamoDB
    /// `ProvisionedThroughputExceeded`, `ThrottlingException`, `RequestLimitExceeded`): nothing
    /// was written; retry after a pause.
    Throttled,
    /// An entity named by the change moved since it was read (rules §17): read it again.
    EntityMoved,
    /// More than one transaction can carry (DynamoDB: 100 items, 400 KB an item): nothing was
    /// sent. Says what was too large.
    TooLarge(String),
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
/// (rules §8) and what happened to it, for `GET .../notifications`.
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
    /// The new state; its `version` is above `expected_version` (by one, or by the number of
    /// ledger entries of a group commit).
    pub account: Account,
    /// 0 creates the account (it must not exist).
    pub expected_version: u64,
    /// The change's ledger entries, `seq` ascending and contiguous up to the account's new
    /// `version`: one is stored as one entry; a group commit's several are packed in one block
    /// (rules §14) and read back one by one.
    pub ledger: Vec<LedgerEntry>,
    /// Idempotency keys claimed by this change: none may be claimed already.
    pub idempotency: Vec<IdemRecord>,
    pub hold: Option<HoldWrite>,
    /// A purchase state change that must commit with this balance change (crediting it).
    pub purchase: Option<PurchaseWrite>,
    /// A recharge's permanent record, written with its claim (only if none exists).
    pub recharge: Option<RechargeRecord>,
    /// A credited payment's PaymentIntent id, indexed to its account (disputes carry no
    /// metadata of ours).
    pub payment_index: Option<String>,
    /// Events written to the outbox in the same transaction, published after it.
    pub outbox: Vec<DomainEvent>,
    /// Grants that ended in this change (used up, expired, voided), each kept as its record.
    pub ended_grants: Vec<Grant>,
    /// Entities whose spend this change moves (rules §17): each written only if still at the
    /// version it was planned on.
    pub entities: Vec<crate::entities::EntityWrite>,
    /// The change's audit record (rules §19), written only if no record holds its place; the
    /// account's new state carries the chain's head it advances to.
    pub audit: Option<crate::audit::AuditRecord>,
}

impl Commit {
    /// A change of the account item alone: nothing else written with it.
    pub fn account_only(account: Account, expected_version: u64) -> Commit {
        Commit {
            account,
            expected_version,
            ledger: vec![],
            idempotency: vec![],
            hold: None,
            purchase: None,
            recharge: None,
            payment_index: None,
            outbox: vec![],
            ended_grants: vec![],
            entities: vec![],
            audit: None,
        }
    }
}

/// The account commit: an account with its ledger, idempotency claims, holds and entities,
/// written together in one transaction (rules §6, §10.7), and read back.
pub trait Accounts: Send + Sync {
    /// The account, read with strong consistency.
    fn load_account(&self, id: &str) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    fn commit(&self, commit: Commit) -> impl Future<Output = Result<(), CommitError>> + Send;
    /// Several commits (of different accounts) in one transaction, all or nothing: credits
    /// moved between an account and its parts (`parts`, rules §14). A failed
    /// condition answers as `commit` does; `Stale` carries no state when several accounts
    /// were written.
    fn commit_all(&self, commits: Vec<Commit>) -> impl Future<Output = Result<(), CommitError>> + Send;
    /// Several accounts in few requests, read eventually consistent (the sweep decides on them
    /// and every write it makes is a compare-and-swap). Each is its account or the reason it
    /// cannot be read; an account that does not exist is left out.
    fn load_accounts(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Result<Account, StoreError>)>, StoreError>> + Send;
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
    /// An entity of an account (rules §17), read with strong consistency.
    fn load_entity(
        &self,
        account_id: &str,
        entity: &str,
    ) -> impl Future<Output = Result<Option<crate::entities::Entity>, StoreError>> + Send;
    /// Every entity of an account, by name.
    fn entities(
        &self,
        account_id: &str,
    ) -> impl Future<Output = Result<Vec<crate::entities::Entity>, StoreError>> + Send;
}

/// Purchase and recharge records, and the payments an account was credited for.
pub trait PaymentRecords: Send + Sync {
    /// Writes a purchase record on its own (a state change that moves no credits).
    fn put_purchase(&self, write: PurchaseWrite) -> impl Future<Output = Result<(), CommitError>> + Send;
    fn load_purchase(
        &self,
        account_id: &str,
        purchase_id: &str,
    ) -> impl Future<Output = Result<Option<PurchaseRecord>, StoreError>> + Send;
    /// A recharge's permanent record.
    fn load_recharge(
        &self,
        account_id: &str,
        recharge_id: &str,
    ) -> impl Future<Output = Result<Option<RechargeRecord>, StoreError>> + Send;
    /// The account a credited payment (PaymentIntent id) belongs to.
    fn payment_account(
        &self,
        payment_intent_id: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Every permanent `payment:<id>` claim of an account: the payments it was credited for.
    fn payment_claims(&self, account_id: &str) -> impl Future<Output = Result<Vec<IdemRecord>, StoreError>> + Send;
}

/// Notification deliveries: each message to each recipient claimed once (rules §8).
pub trait Deliveries: Send + Sync {
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
}

/// Counted starts per window (how many purchases an account began this minute).
pub trait RateCounts: Send + Sync {
    /// Counts one more start of `what` (e.g. `purchases`) for an account in the window that
    /// began at `window_start_ms`, unless `limit` were already counted there: `false` then,
    /// and nothing is counted. The count expires with its window.
    fn count_start(
        &self,
        account_id: &str,
        what: &str,
        window_start_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The outbox: events a commit wrote, until they are on the bus.
pub trait Outbox: Send + Sync {
    /// Removes outbox entries once their events are on the bus.
    fn clear_outbox(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Outbox entries of one shard (`events::outbox_shard`) whose publication has not been
    /// confirmed, oldest first.
    fn pending_outbox(
        &self,
        shard: u32,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DomainEvent>, StoreError>> + Send;
}

/// What the batch jobs walk (the sweep's and the expiry run's sparse indexes, every account
/// for reconciliation, ended grants) and the checkpoints they resume from.
pub trait Listings: Send + Sync {
    /// Accounts with auto-recharge on (the sweep's sparse index): about `limit` after the
    /// cursor `after`, and the next page's cursor (`None` at the end).
    fn accounts_for_sweep(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> impl Future<Output = Result<(Vec<String>, Option<String>), StoreError>> + Send;
    /// Account ids in the store's own order, about `limit` after the cursor `after`; the second
    /// value is the next page's cursor (`None` at the end). For reconciliation, which visits
    /// every account once.
    fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
        segment: Segment,
    ) -> impl Future<Output = Result<(Vec<String>, Option<String>), StoreError>> + Send;
    /// Accounts whose soonest grant expiry is at or before `by_ms` (the expiry run's sparse
    /// index), at most `limit`.
    fn accounts_expiring(
        &self,
        by_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// The grants of an account that have ended (used up, expired, voided), newest first.
    fn ended_grants(&self, account_id: &str) -> impl Future<Output = Result<Vec<Grant>, StoreError>> + Send;
    /// Accounts found by their first billing email or their Stripe customer (the console's
    /// lookups, rules §19), at most 20.
    fn find_accounts(
        &self,
        by: &crate::account::AccountLookup,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// A job's saved progress under `name` (a sweep's cursor, a reconciliation segment's).
    fn load_checkpoint(&self, name: &str) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;
    fn save_checkpoint(&self, name: &str, value: &Value) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One of `total` disjoint parts of the account listing, read in parallel (DynamoDB's parallel
/// scan segments); `Segment::WHOLE` is all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub index: u32,
    pub total: u32,
}

impl Segment {
    pub const WHOLE: Segment = Segment { index: 0, total: 1 };
}

/// The sort key of a delivery: time first, so an account's deliveries list newest first.
pub fn delivery_key(r: &DeliveryRecord) -> String {
    format!("NOTIFY#{:013}#{}#{}#{}", r.occurred_ms, r.event_id, r.channel, r.to)
}

/// Implements a port by handing every call to an inner implementation of it, so that a wrapper
/// writes only the port it changes: `forward_port!(Outbox, [S: Outbox], Arc<S>, |s| (**s));`.
/// `[...]` holds the impl's generics (empty for none); `|s| expr` names the inner store.
#[macro_export]
macro_rules! forward_port {
    (Accounts, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::store::Accounts for $ty {
            fn load_account(&self, id: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::account::Account>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_account(id)
            }
            fn commit(&self, commit: $crate::store::Commit) -> impl ::std::future::Future<Output = Result<(), $crate::store::CommitError>> + Send {
                let $s = self;
                $inner.commit(commit)
            }
            fn commit_all(&self, commits: Vec<$crate::store::Commit>) -> impl ::std::future::Future<Output = Result<(), $crate::store::CommitError>> + Send {
                let $s = self;
                $inner.commit_all(commits)
            }
            fn load_accounts(&self, ids: &[String]) -> impl ::std::future::Future<Output = Result<Vec<(String, Result<$crate::account::Account, $crate::store::StoreError>)>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_accounts(ids)
            }
            fn ledger_page(&self, account_id: &str, limit: usize, before_seq: Option<u64>) -> impl ::std::future::Future<Output = Result<(Vec<$crate::ledger::LedgerEntry>, bool), $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.ledger_page(account_id, limit, before_seq)
            }
            fn load_hold(&self, account_id: &str, hold_id: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::ledger::HoldRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_hold(account_id, hold_id)
            }
            fn load_idempotency(&self, account_id: &str, scope_key: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::ledger::IdemRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_idempotency(account_id, scope_key)
            }
            fn load_entity(&self, account_id: &str, entity: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::entities::Entity>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_entity(account_id, entity)
            }
            fn entities(&self, account_id: &str) -> impl ::std::future::Future<Output = Result<Vec<$crate::entities::Entity>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.entities(account_id)
            }
        }
    };
    (PaymentRecords, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::store::PaymentRecords for $ty {
            fn put_purchase(&self, write: $crate::store::PurchaseWrite) -> impl ::std::future::Future<Output = Result<(), $crate::store::CommitError>> + Send {
                let $s = self;
                $inner.put_purchase(write)
            }
            fn load_purchase(&self, account_id: &str, purchase_id: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::purchases::PurchaseRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_purchase(account_id, purchase_id)
            }
            fn load_recharge(&self, account_id: &str, recharge_id: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::account::RechargeRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_recharge(account_id, recharge_id)
            }
            fn payment_account(&self, payment_intent_id: &str) -> impl ::std::future::Future<Output = Result<Option<String>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.payment_account(payment_intent_id)
            }
            fn payment_claims(&self, account_id: &str) -> impl ::std::future::Future<Output = Result<Vec<$crate::ledger::IdemRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.payment_claims(account_id)
            }
        }
    };
    (Deliveries, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::store::Deliveries for $ty {
            fn claim_delivery(&self, record: &$crate::store::DeliveryRecord) -> impl ::std::future::Future<Output = Result<bool, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.claim_delivery(record)
            }
            fn finish_delivery(&self, record: &$crate::store::DeliveryRecord) -> impl ::std::future::Future<Output = Result<(), $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.finish_delivery(record)
            }
            fn recent_deliveries(&self, account_id: &str, limit: usize) -> impl ::std::future::Future<Output = Result<Vec<$crate::store::DeliveryRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.recent_deliveries(account_id, limit)
            }
        }
    };
    (RateCounts, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::store::RateCounts for $ty {
            fn count_start(&self, account_id: &str, what: &str, window_start_ms: i64, limit: u32) -> impl ::std::future::Future<Output = Result<bool, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.count_start(account_id, what, window_start_ms, limit)
            }
        }
    };
    (Outbox, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::store::Outbox for $ty {
            fn clear_outbox(&self, events: &[$crate::events::DomainEvent]) -> impl ::std::future::Future<Output = Result<(), $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.clear_outbox(events)
            }
            fn pending_outbox(&self, shard: u32, limit: usize) -> impl ::std::future::Future<Output = Result<Vec<$crate::events::DomainEvent>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.pending_outbox(shard, limit)
            }
        }
    };
    (AuditLog, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::audit::AuditLog for $ty {
            fn audit_head(&self, chain: &str) -> impl ::std::future::Future<Output = Result<Option<$crate::audit::AuditHead>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.audit_head(chain)
            }
            fn append_audit(&self, record: &$crate::audit::AuditRecord, expected: Option<&$crate::audit::AuditHead>) -> impl ::std::future::Future<Output = Result<bool, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.append_audit(record, expected)
            }
            fn audit_page(&self, query: &$crate::audit::AuditQuery, limit: usize, after: Option<&$crate::audit::Position>) -> impl ::std::future::Future<Output = Result<$crate::audit::AuditPage, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.audit_page(query, limit, after)
            }
            fn audit_chain(&self, chain: &str, after_seq: u64, limit: usize) -> impl ::std::future::Future<Output = Result<Vec<$crate::audit::AuditRecord>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.audit_chain(chain, after_seq, limit)
            }
        }
    };
    (Listings, [$($g:tt)*], $ty:ty, |$s:ident| $inner:expr) => {
        impl<$($g)*> $crate::store::Listings for $ty {
            fn accounts_for_sweep(&self, limit: usize, after: Option<String>) -> impl ::std::future::Future<Output = Result<(Vec<String>, Option<String>), $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.accounts_for_sweep(limit, after)
            }
            fn account_ids(&self, limit: usize, after: Option<String>, segment: $crate::store::Segment) -> impl ::std::future::Future<Output = Result<(Vec<String>, Option<String>), $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.account_ids(limit, after, segment)
            }
            fn accounts_expiring(&self, by_ms: i64, limit: usize) -> impl ::std::future::Future<Output = Result<Vec<String>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.accounts_expiring(by_ms, limit)
            }
            fn ended_grants(&self, account_id: &str) -> impl ::std::future::Future<Output = Result<Vec<$crate::grants::Grant>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.ended_grants(account_id)
            }
            fn find_accounts(&self, by: &$crate::account::AccountLookup) -> impl ::std::future::Future<Output = Result<Vec<String>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.find_accounts(by)
            }
            fn load_checkpoint(&self, name: &str) -> impl ::std::future::Future<Output = Result<Option<::serde_json::Value>, $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.load_checkpoint(name)
            }
            fn save_checkpoint(&self, name: &str, value: &::serde_json::Value) -> impl ::std::future::Future<Output = Result<(), $crate::store::StoreError>> + Send {
                let $s = self;
                $inner.save_checkpoint(name, value)
            }
        }
    };
}

/// Every port of the table: what the engine and the functions are built on. Implemented by any
/// type that implements each port (the audit log's is `audit::AuditLog`, rules §19).
pub trait Store: Accounts + PaymentRecords + Deliveries + RateCounts + Outbox + Listings + crate::audit::AuditLog {}

impl<T: Accounts + PaymentRecords + Deliveries + RateCounts + Outbox + Listings + crate::audit::AuditLog> Store for T {}

// A shared store is a store: several services (as several Lambda instances would) over one.
crate::forward_port!(Accounts, [S: Accounts], std::sync::Arc<S>, |s| (**s));
crate::forward_port!(PaymentRecords, [S: PaymentRecords], std::sync::Arc<S>, |s| (**s));
crate::forward_port!(Deliveries, [S: Deliveries], std::sync::Arc<S>, |s| (**s));
crate::forward_port!(RateCounts, [S: RateCounts], std::sync::Arc<S>, |s| (**s));
crate::forward_port!(Outbox, [S: Outbox], std::sync::Arc<S>, |s| (**s));
crate::forward_port!(Listings, [S: Listings], std::sync::Arc<S>, |s| (**s));

