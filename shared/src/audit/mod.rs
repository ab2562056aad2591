//! The audit log (rules §19): every change made by the service or staff — adjustments, voids,
//! refunds, settings (how an account is spread over items among them), budgets, webhook
//! endpoints, redeliveries — recorded once, append-only, with who made it, what it was, the
//! request, and the state before and after.
//!
//! **Chains.** Records form hash chains: one per account (`account_id`), and one for changes of
//! no account (`account_id: null`: webhook endpoints and redeliveries), named `-`. A record's
//! `seq` is its place in its chain (1, 2, …, no gaps), `prev_hash` the hash of the record
//! before it ([`GENESIS`] for the first), and `hash` the SHA-256 (hex) of its canonical JSON
//! (sorted keys, no whitespace, without `hash`) followed by `prev_hash`. Editing a record
//! changes its hash; removing one leaves a gap in `seq`; removing the newest leaves the chain
//! short of its head.
//!
//! **Heads and concurrent writers.** Each chain has a head (`{seq, hash}` of its newest record)
//! that every append advances with a compare-and-swap, so two writers never both append at the
//! same place. An account's head is kept on its account item (`Account::audit`): a change
//! committed through the engine (adjustments, voids, settings, budgets) carries its record
//! as one more item of the account's transaction (`Commit::audit`), and the account's
//! own compare-and-swap on `version` serialises its chain. A change of an account that is not
//! an account commit (a Stripe refund) is appended right after it succeeds, by an account
//! write that only advances the head. The chain of no account keeps its head in an item of its
//! own (`AuditLog::append_audit`, conditional on the head it read).
//!
//! **The actor** comes from the request: each route runs its work inside [`scoped`] with the
//! caller's identity and the request id; a change made outside any request (a test, a tool) is
//! recorded as `{"sub":"topup","role":"system"}`.
//!
//! A change that changes nothing (a replayed idempotency key, a void of a voided grant, a
//! setting set to what it was) records nothing.

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::store::StoreError;

pub mod verify;

pub use verify::{verify_chain, Broken};

/// `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain of changes that belong to no account.
pub const NO_ACCOUNT_CHAIN: &str = "-";

/// How long records are kept at least (rules §19). They are kept for good: no TTL.
pub const RETENTION_DAYS: i64 = 400;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    /// `service`, `support`, `finance`, a person's role, or `system`.
    pub role: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor { sub: "topup".into(), role: "system".into() }
    }
}

/// One record of the audit log, as `GET /v1/audit` answers it and as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    /// RFC 3339, milliseconds.
    pub at: String,
    pub actor: Actor,
    /// `credits.adjust`, `grant.void`, `payment.refund`, `auto_recharge.update`, …
    pub action: String,
    pub account_id: Option<String>,
    /// What was changed: `account:acme`, `grant:grant_…`, `payment:pi_…`, `webhook_endpoint:we_…`.
    pub target: String,
    pub request_id: String,
    /// Why, as the caller said (the console requires one).
    pub reason: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The record's place in its chain, from 1.
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The chain the record belongs to: its account's, or [`NO_ACCOUNT_CHAIN`].
    pub fn chain(&self) -> &str {
        self.account_id.as_deref().unwrap_or(NO_ACCOUNT_CHAIN)
    }

    /// Milliseconds since the epoch of `at` (0 when unreadable: only a corrupt record).
    pub fn at_ms(&self) -> i64 {
        clock::parse_rfc3339(&self.at).unwrap_or(0)
    }

    /// The hash this record should carry: SHA-256 of its canonical JSON without `hash`,
    /// followed by `prev_hash`.
    pub fn computed_hash(&self) -> String {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            Err(_) => return String::new(),
        };
        if let Value::Object(m) = &mut value {
            m.remove("hash");
        }
        let mut h = Sha256::new();
        h.update(canonical_json(&value).as_bytes());
        h.update(self.prev_hash.as_bytes());
        hex(&h.finalize())
    }

    /// The head this record leaves its chain at.
    pub fn head(&self) -> AuditHead {
        AuditHead { seq: self.seq, hash: self.hash.clone() }
    }
}

/// The newest record of a chain: its `seq` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// What a change declares of itself for the log; the engine or `append` makes the record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditChange {
    pub action: &'static str,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The change's own reason (an adjustment's), over the request's.
    pub reason: Option<String>,
}

impl AuditChange {
    pub fn new(action: &'static str, target: impl Into<String>, before: Option<Value>, after: Option<Value>) -> Self {
        AuditChange { action, target: target.into(), before, after, reason: None }
    }

    /// The same change, with its own reason.
    pub fn because(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// Whether there is anything to record: a change to what it was records nothing.
    pub fn changes_something(&self) -> bool {
        self.before != self.after
    }
}

/// Who is making changes now, and in which request: set by the route around its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub actor: Actor,
    pub request_id: String,
    pub reason: Option<String>,
}

impl Context {
    fn outside_requests() -> Context {
        Context { actor: Actor::system(), request_id: crate::ledger::new_id("req"), reason: None }
    }
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Runs `work` with `context` as the actor of every change it records.
pub async fn scoped<F: Future>(context: Context, work: F) -> F::Output {
    CONTEXT.scope(context, work).await
}

/// The context of the running request, or the system's outside any.
pub fn current() -> Context {
    CONTEXT.try_with(Context::clone).unwrap_or_else(|_| Context::outside_requests())
}

/// The record of `change` made now by the current context, next after `head` in `chain`'s
/// chain (`account_id` is `None` for [`NO_ACCOUNT_CHAIN`]).
pub fn seal(change: AuditChange, account_id: Option<&str>, head: Option<&AuditHead>, now: i64) -> AuditRecord {
    let ctx = current();
    let mut record = AuditRecord {
        id: crate::ledger::new_id("audit"),
        at: clock::rfc3339(now),
        actor: ctx.actor,
        action: change.action.to_string(),
        account_id: account_id.map(str::to_string),
        target: change.target,
        request_id: ctx.request_id,
        reason: change.reason.or(ctx.reason),
        before: change.before,
        after: change.after,
        seq: head.map_or(1, |h| h.seq + 1),
        prev_hash: head.map_or_else(|| GENESIS.to_string(), |h| h.hash.clone()),
        hash: String::new(),
    };
    record.hash = record.computed_hash();
    record
}

/// The record of an engine change to `account`, when it changes something: sealed after the
/// account's head, which it advances (the account's compare-and-swap guards both).
pub fn seal_on_account(
    change: AuditChange,
    account: &mut crate::account::Account,
    now: i64,
) -> Option<AuditRecord> {
    if !change.changes_something() {
        return None;
    }
    let record = seal(change, Some(&account.id), account.audit.as_ref(), now);
    account.audit = Some(record.head());
    Some(record)
}

/// Canonical JSON: object keys sorted (by their UTF-8 bytes), no whitespace; strings and
/// numbers as `serde_json` writes them.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(*k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `GET /v1/audit` filters by; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub account_id: Option<String>,
    /// The actor's `sub`, or its role.
    pub actor: Option<String>,
    pub action: Option<String>,
}

/// Where a page of records stopped: the last record it gave (newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub at: i64,
    pub chain: String,
    pub seq: u64,
}

impl Position {
    pub fn of(r: &AuditRecord) -> Position {
        Position { at: r.at_ms(), chain: r.chain().to_string(), seq: r.seq }
    }

    /// The opaque cursor clients hand back.
    pub fn cursor(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// A cursor back into a position; `None` for anything that is not one of ours.
    pub fn from_cursor(cursor: &str) -> Option<Position> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
        let p: Position = serde_json::from_slice(&bytes).ok()?;
        (!p.chain.is_empty() && p.chain.len() <= 64 && p.seq >= 1).then_some(p)
    }

    /// Newest first: whether a record at `p` comes after this position in that order.
    pub fn is_before(&self, r: &Position) -> bool {
        (r.at, &r.chain, r.seq) < (self.at, &self.chain, self.seq)
    }
}

/// A page of records, newest first, and the cursor of the next (`None` at the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub next_cursor: Option<String>,
}

/// Where audit records are kept (rules §19): append-only. Records of account changes are
/// written by the account's commit (`Commit::audit`); this port appends to the chain of no
/// account, and reads.
pub trait AuditLog: Send + Sync {
    /// The head of a chain kept beside its records (the chain of no account); `None` before
    /// its first record.
    fn audit_head(&self, chain: &str) -> impl Future<Output = Result<Option<AuditHead>, StoreError>> + Send;
    /// Writes `record` (never over another) and moves its chain's head from `expected` to it,
    /// in one atomic step; `false`, writing nothing, when the head is no longer `expected`.
    fn append_audit(
        &self,
        record: &AuditRecord,
        expected: Option<&AuditHead>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records matching `query`, newest first, at most `limit`, after `after`. A page may hold
    /// fewer than `limit` with a cursor when the store read its budget; never a full scan.
    fn audit_page(
        &self,
        query: &AuditQuery,
        limit: usize,
        after: Option<&Position>,
    ) -> impl Future<Output = Result<AuditPage, StoreError>> + Send;
    /// A chain's records in order, those after `after_seq`, at most `limit`.
    fn audit_chain(
        &self,
        chain: &str,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
}

crate::forward_port!(AuditLog, [S: AuditLog], std::sync::Arc<S>, |s| (**s));

/// How many times an append to the chain of no account reads the head again after losing it.
const APPEND_TRIES: u32 = 10;

/// Appends `change` to the chain of no account, made now by the current context: reads the
/// head and writes after it, again when another writer came first. `None` when the change
/// changes nothing.
pub async fn append_unbound<L: AuditLog>(
    log: &L,
    change: AuditChange,
    now: i64,
) -> Result<Option<AuditRecord>, StoreError> {
    if !change.changes_something() {
        return Ok(None);
    }
    for _ in 0..APPEND_TRIES {
        let head = log.audit_head(NO_ACCOUNT_CHAIN).await?;
        let record = seal(change.clone(), None, head.as_ref(), now);
        if log.append_audit(&record, head.as_ref()).await? {
            return Ok(Some(record));
        }
    }
    Err(StoreError::Unavailable("the audit chain kept moving".into()))
}

#[cfg(test)]
mod tests;

impl<S: crate::store::Store, B: crate::events::EventBus> crate::engine::Credits<S, B> {
    /// Records a change of account `id` that is not an account commit (a refund made at
    /// Stripe), right after it succeeded: an account write that only advances the chain's head,
    /// with the record in the same transaction.
    pub async fn record_change(&self, id: &str, change: AuditChange) -> Result<(), crate::error::ApiError> {
        if !change.changes_something() {
            return Ok(());
        }
        self.apply(id, None, |a, now| {
            let next = a.next(now);
            crate::engine::Change::quiet(next, crate::cause::Cause::AuditRecord, ()).with_audit(change.clone()).write()
        })
        .await?
        .done()
    }
}
