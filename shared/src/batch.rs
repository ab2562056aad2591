//! Batch usage (`POST /v1/accounts/{id}/usage/batch`, rules §14): up to 500 debits in one
//! request, each applied or refused on its own, in order, with the single debit's rules
//! (allowance first, strict, idempotency per key, crossing events once), and committed
//! together: **group commit**. One commit carries up to `EVENTS_PER_COMMIT` events: the account
//! item once, their ledger entries packed in one block, and one idempotency record per applied
//! event on its own partition key; a longer batch is several commits, one after another.
//!
//! Every event's answer is what `POST …/usage` would have answered for it at its place in the
//! batch: 200 (applied, or `replayed` when its key applied before, in an earlier request or
//! earlier in this batch), 402, 409 (its key applied to another request) or 422. A refused
//! event writes nothing and does not fail its neighbours.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{replay, upstream, Applied, Change, Claim, Credits, Plan};
use crate::entities::{entity_spend, Entity, EntitySpend};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::http::{error_body, status_of};
use crate::ids::IdempotencyKey;
use crate::parts::owner_of;
use crate::ledger::{self, EntryKind, IdemRecord, LedgerEntry};
use crate::money::Micros;
use crate::store::Store;
use crate::usage::{usage_claim, usage_description, Debited};

/// Events one request may carry.
pub const MAX_BATCH_EVENTS: usize = 500;
/// Events one commit carries at most: one `TransactWriteItems` holds at most 100 items (the
/// account, the ledger block, an idempotency record per event, records of grants that end,
/// and events).
pub const EVENTS_PER_COMMIT: usize = 90;
/// DynamoDB's limit on the items of one transaction. A commit takes the next event only while
/// the items it may need (its key, and every active grant ending) still fit beside the crossing
/// and expiry events.
const ITEMS_PER_TRANSACTION: usize = 100;

/// One debit of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub consumable: String,
    pub quantity: i64,
    pub key: IdempotencyKey,
    /// The member, project or key whose usage it is (rules §17).
    pub entity: Option<String>,
}

/// What one event of a batch came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResult {
    pub idempotency_key: String,
    /// What `POST …/usage` would have answered: 200, 402, 409 or 422.
    pub status: u16,
    /// The key had applied before (earlier, or earlier in this batch): this is its first result.
    pub replayed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_allowance: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_credits: Option<i64>,
    /// The balance after this event (applied), as the single debit answers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// The single debit's error: `{code, message}` (and `consumable`, `balance` for a 402).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl EventResult {
    fn applied(key: &str, d: &Debited, replayed: bool) -> EventResult {
        EventResult {
            idempotency_key: key.to_string(),
            status: 200,
            replayed,
            transaction_id: d.transaction_id.clone(),
            from_allowance: Some(d.from_allowance),
            from_credits: Some(d.from_credits),
            balance: Some(d.balance),
            error: None,
        }
    }

    fn refused(key: &str, e: &ApiError) -> EventResult {
        let body = error_body(e);
        let mut error = body.get("error").cloned().unwrap_or(Value::Null);
        if let Some(balance) = body.get("balance") {
            error["balance"] = balance.clone();
        }
        // An entity's budget refused it: which entity, and what its month still allows.
        for field in ["entity", "remaining_this_month"] {
            if let Some(v) = body.get(field) {
                error[field] = v.clone();
            }
        }
        EventResult {
            idempotency_key: key.to_string(),
            status: status_of(e),
            replayed: false,
            transaction_id: None,
            from_allowance: None,
            from_credits: None,
            balance: None,
            error: Some(error),
        }
    }
}

/// The answer of `POST …/usage/batch`: one result per event, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResults {
    pub results: Vec<EventResult>,
}

impl UsageEvent {
    /// The claim its key makes: the single debit's (`usage::usage_claim`).
    fn claim(&self) -> Claim {
        usage_claim(&self.key, &self.consumable, self.quantity, self.entity.as_deref())
    }
}

/// The answer a key's first result gives an event, as the single debit replays it: its first
/// result, or 409 for another request.
fn replayed(key: &str, rec: &IdemRecord, claim: &Claim) -> Result<EventResult, ApiError> {
    match replay::<Debited>(rec, claim) {
        Ok(d) => Ok(EventResult::applied(key, &d, true)),
        Err(ApiError::IdempotencyConflict) => Ok(EventResult::refused(key, &ApiError::IdempotencyConflict)),
        Err(e) => Err(e),
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `POST /v1/accounts/{id}/usage/batch`: each event applied or refused on its own, in order,
    /// committed `EVENTS_PER_COMMIT` at a time.
    pub async fn debit_batch(&self, id: &str, events: &[UsageEvent]) -> Result<BatchResults, ApiError> {
        if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
            return Err(ApiError::invalid(format!("`events` must hold 1 to {MAX_BATCH_EVENTS} events.")));
        }
        let mut results = Vec::with_capacity(events.len());
        // Keys found applied before, so a key repeated later in the batch replays.
        let mut known: HashMap<String, IdemRecord> = HashMap::new();
        // An account spread over parts: the batch goes where `route` sends it while that item
        // can take the events, then where `reroute` says (rules §14).
        // Events naming an entity are decided with its record on the account (rules §17).
        let named = events.iter().any(|e| e.entity.is_some());
        let Some(first) = events.first() else { return Ok(BatchResults { results }) };
        let mut route = self.route(id, &first.consumable, named).await;
        while results.len() < events.len() {
            let from = results.len();
            let upto = (from + EVENTS_PER_COMMIT).min(events.len());
            let (target, beside) = self.target(&route);
            // A commit may take fewer events than offered (see `ITEMS_PER_TRANSACTION`), and a
            // part stops at the first event it cannot take (as a single debit would answer).
            let failure = match self.commit_group(&target, beside, &events[from..upto], &mut known).await {
                Ok(done) if !done.is_empty() => {
                    results.extend(done);
                    route.moved_on();
                    continue;
                }
                Ok(_) => ApiError::Elsewhere,
                Err(e) => e,
            };
            let e = &events[from];
            // What the rest of this commit would draw of the same consumable.
            let ahead = events[from..upto]
                .iter()
                .filter(|x| x.consumable == e.consumable)
                .fold(0i64, |t, x| t.saturating_add(x.quantity));
            match self.reroute(route, &failure, &e.consumable, e.quantity, ahead).await? {
                Some(next) => route = next,
                // Nothing taken on the account itself is a failure of the store.
                None if failure == ApiError::Elsewhere => return Err(ApiError::Upstream),
                None => return Err(failure),
            }
        }
        Ok(BatchResults { results })
    }

    /// One group commit: plans every event on the account's state and commits the applied
    /// ones together; plans again when the state, or a key, turns out other than known.
    async fn commit_group(
        &self,
        id: &str,
        beside: i64,
        events: &[UsageEvent],
        known: &mut HashMap<String, IdemRecord>,
    ) -> Result<Vec<EventResult>, ApiError> {
        let claims: Vec<Claim> = events.iter().map(UsageEvent::claim).collect();
        let profile = &self.profile;
        let owner = owner_of(id);
        let mut names: Vec<&str> = events
            .iter()
            .filter_map(|e| e.entity.as_deref())
            .filter(|n| crate::entities::check_entity(n).is_ok())
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut moved = 0;
        loop {
            // The records of the entities the events name, read before each plan (rules §17).
            let mut stored: HashMap<String, Entity> = HashMap::new();
            for name in &names {
                stored.insert(name.to_string(), self.entity_record(id, name).await?);
            }
            let stored = &stored;
            let known_now = &*known;
            let applied = self
                .apply(id, None, |a, now| {
                    let mut next = a.next(now);
                    // After any expiry entries `next` made.
                    let base = next.version - 1;
                    let mut entries: Vec<LedgerEntry> = Vec::new();
                    let mut keys: Vec<IdemRecord> = Vec::new();
                    let mut results = Vec::with_capacity(events.len());
                    let mut here: HashMap<String, IdemRecord> = HashMap::new();
                    // The entities as this commit leaves them, and the alerts they cross.
                    let mut spent: HashMap<String, Entity> = HashMap::new();
                    let mut alerts: Vec<crate::events::DomainEvent> = Vec::new();
                    for (e, claim) in events.iter().zip(&claims) {
                        let expiries = next.pending.entries.len();
                        let items = 2 // the account and the ledger block
                            + keys.len()
                            + next.pending.ended.len()
                            + expiries // their GrantExpired events
                            + 2 + next.alerts.len() // crossing events
                            + 1 + next.grants.len().min(next.retire_room()) // this event's key; its grants ending
                            + spent.len() + alerts.len() + 3; // entities written, their alerts, this event's
                        if !results.is_empty() && items > ITEMS_PER_TRANSACTION {
                            break;
                        }
                        let key = e.key.as_str();
                        let sk = &claim.scope_key;
                        if let Some(rec) = here.get(sk).or_else(|| known_now.get(sk)) {
                            results.push(replayed(key, rec, claim)?);
                            continue;
                        }
                        let d = match ledger::draw(profile, &next, &e.consumable, e.quantity, now) {
                            Ok(d) => d,
                            // A part stops here: this event and the rest go elsewhere.
                            Err(ApiError::Elsewhere) => break,
                            Err(refusal) => {
                                results.push(EventResult::refused(key, &refusal));
                                continue;
                            }
                        };
                        if let Some(Err(invalid)) = e.entity.as_deref().map(crate::entities::check_entity) {
                            results.push(EventResult::refused(key, &invalid));
                            continue;
                        }
                        if let Some(name) = &e.entity {
                            let current = match spent.get(name) {
                                Some(s) => s.clone(),
                                None => match stored.get(name) {
                                    Some(s) => s.at(now),
                                    None => return Err(ApiError::Upstream),
                                },
                            };
                            match entity_spend(&current, d.cost.get(), now) {
                                Ok(s) => {
                                    let balance = next.balance.get() - d.cost.get();
                                    let version = stored.get(name).map_or(0, |e| e.version);
                                    let levels = EntitySpend { stored_version: version, write: false, ..s.clone() };
                                    let (_, events) = levels.into_change(owner, balance, now);
                                    alerts.extend(events);
                                    spent.insert(name.clone(), s.record);
                                }
                                Err(refusal) => {
                                    results.push(EventResult::refused(key, &refusal));
                                    continue;
                                }
                            }
                        }
                        ledger::apply_draw(&mut next, &e.consumable, &d, now);
                        let entry = (d.cost.get() > 0).then(|| {
                            // Entries of one commit take the versions after the account's.
                            next.version = base + entries.len() as u64 + 1;
                            LedgerEntry::after(
                                &mut next,
                                EntryKind::Consumption,
                                Micros::new(-d.cost.get()),
                                now,
                                usage_description(&e.consumable, e.quantity, d.from_allowance),
                            )
                            .of_entity(e.entity.as_deref())
                        });
                        let outcome = Debited {
                            from_allowance: d.from_allowance,
                            from_credits: d.cost.get(),
                            balance: next.balance.get().saturating_add(crate::parts::beside_of(a, beside)),
                            transaction_id: entry.as_ref().map(|en| en.id.clone()),
                        };
                        let rec = IdemRecord {
                            account_id: owner.to_string(),
                            scope_key: sk.clone(),
                            request_hash: claim.hash.clone(),
                            outcome: serde_json::to_value(&outcome).map_err(|_| ApiError::Upstream)?,
                            created_at: now,
                            permanent: false,
                            credited: None,
                        };
                        results.push(EventResult::applied(key, &outcome, false));
                        here.insert(sk.clone(), rec.clone());
                        keys.push(rec);
                        entries.extend(entry);
                    }
                    next.version = base + (entries.len() as u64).max(1);
                    let refused = results.iter().any(|r| r.status == 402);
                    if keys.is_empty() {
                        if refused && a.leased_out() {
                            // Refused while parts hold credits: decided again on the whole.
                            return Err(ApiError::Elsewhere);
                        }
                        // Nothing to write: answered on the state as read (a refusal decided
                        // on a cached state is planned again on a fresh read first).
                        return Ok(Plan::AlreadySo(results));
                    }
                    let entities = spent
                        .into_values()
                        .map(|record| {
                            let version = stored.get(&record.entity).map_or(0, |e| e.version);
                            record.write(version)
                        })
                        .collect();
                    Change::quiet(next, crate::cause::Cause::Usage, results)
                        .with_entries(entries)
                        .with_group(keys, refused)
                        .with_entities(entities)
                        .with_events(alerts)
                        .write()
                })
                .await?;
            let mut results = match applied {
                Applied::Done(r) => r,
                Applied::KeysClaimed(recs) => {
                    // Applied before: those events replay; plan the rest again.
                    known.extend(recs.into_iter().map(|r| (r.scope_key.clone(), r)));
                    continue;
                }
                Applied::EntityMoved => {
                    // Another writer spent from an entity meanwhile: read them again.
                    moved += 1;
                    if moved >= crate::entities::ENTITY_ATTEMPTS {
                        return Err(ApiError::Busy);
                    }
                    continue;
                }
                Applied::HoldNotOpen(_) | Applied::PurchaseNotInState => return Err(ApiError::Upstream),
            };
            // A refused event whose key applied before answers its first result, as the
            // single debit does. A refused event changed nothing, so the others stand. A key
            // applied later in this same commit does not count: at its place it had not.
            let applied_here: std::collections::HashSet<&str> =
                results.iter().filter(|r| r.status == 200 && !r.replayed).map(|r| r.idempotency_key.as_str()).collect();
            let refused: Vec<usize> = (0..results.len())
                .filter(|&i| results[i].status != 200 && !applied_here.contains(events[i].key.as_str()))
                .collect();
            let refused_keys: Vec<&str> = refused.iter().map(|&i| claims[i].scope_key.as_str()).collect();
            let looked =
                futures_util::future::join_all(refused_keys.iter().map(|sk| self.store.load_idempotency(owner, sk)))
                    .await;
            for (i, rec) in refused.into_iter().zip(looked) {
                if let Some(rec) = rec.map_err(upstream)? {
                    results[i] = replayed(events[i].key.as_str(), &rec, &claims[i])?;
                }
            }
            return Ok(results);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::money::MICROS_PER_CREDIT as C;

    fn ev(consumable: &str, quantity: i64, k: &str) -> UsageEvent {
        UsageEvent { consumable: consumable.into(), quantity, key: key(k), entity: None }
    }

    #[tokio::test]
    async fn a_key_refused_then_applied_later_in_the_batch_stays_refused_at_its_place() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
        c.adjust("a", C, "grant", &key("g")).await.unwrap();
        let r = c.debit_batch("a", &[ev("api_calls", 5_000, "k"), ev("api_calls", 10, "k")]).await.unwrap();
        let got: Vec<(u16, bool)> = r.results.iter().map(|r| (r.status, r.replayed)).collect();
        assert_eq!(got, [(402, false), (200, false)]);
    }

    /// Many small grants, each used up by the batch: every commit stays within a transaction's
    /// 100 items (the memory store refuses more, as DynamoDB does), and all events apply.
    #[tokio::test]
    async fn commits_stay_within_a_transactions_items() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
        for i in 0..40 {
            c.adjust("a", 10_000, "small", &key(&format!("g{i}"))).await.unwrap();
        }
        c.set_alerts("a", &[300_000, 200_000, 100_000, 50_000, 10_000]).await.unwrap();
        let events: Vec<UsageEvent> = (0..90).map(|i| ev("api_calls", 4, &format!("e{i}"))).collect();
        let r = c.debit_batch("a", &events).await.unwrap();
        assert_eq!(r.results.iter().filter(|r| r.status == 200).count(), 90);
        let a = c.store.load_account("a").await.unwrap().unwrap();
        assert_eq!(a.balance.get(), 400_000 - 90 * 4_000);
        assert_eq!(a.grants.iter().map(|g| g.remaining.get()).sum::<i64>(), a.balance.get());
    }
}
