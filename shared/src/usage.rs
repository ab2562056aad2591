//! Usage: debits, holds and their settlement. **Where a debit is applied**: `debit` plans the
//! draw (allowance first, then credits; `ledger::draw` is the arithmetic) and commits it with
//! its entry and idempotency key through the engine's one compare-and-swap.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock;
use crate::engine::{upstream, Applied, Change, Claim, Credits};
use crate::entities::{check_entity, entity_spend, Entity, EntitySpend, ENTITY_ATTEMPTS};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ids::IdempotencyKey;
use crate::ledger::{self, new_id, request_hash, EntryKind, HoldRecord, HoldStatus, LedgerEntry};
use crate::money::Micros;
use crate::store::{HoldWrite, Store};

/// Open holds an account may have at once.
pub const MAX_OPEN_HOLDS: usize = 100;

/// What a debit took (`POST .../usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debited {
    pub from_allowance: i64,
    pub from_credits: i64,
    pub balance: i64,
    pub transaction_id: Option<String>,
}

/// A hold opened (`POST .../usage/holds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub hold_id: String,
    pub consumable: String,
    pub reserved: i64,
    pub reserved_units: i64,
    pub reserved_allowance_units: i64,
    pub expires_at: String,
}

/// A hold settled (`POST .../holds/{hold_id}/settle`); kept on the hold's record for replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub hold_id: String,
    pub from_hold: i64,
    pub from_allowance: i64,
    pub from_credits: i64,
    pub unbilled: i64,
    pub balance: i64,
    pub transaction_id: Option<String>,
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `POST /v1/accounts/{id}/usage`: the month's allowance first, then credits at the plan's
    /// rate; refused (402) when both are exhausted. One commit with its entry and key.
    pub async fn debit(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        key: &IdempotencyKey,
    ) -> Result<Debited, ApiError> {
        self.debit_as(id, consumable, quantity, key, None).await
    }

    /// A debit of `entity`'s usage, if it names one (rules §17): decided against the entity's
    /// month as well as the account, in one commit with the entity's record. A debit naming an
    /// entity goes to the account's own item, never a part of it, so the entity's spend is
    /// decided in one place.
    pub async fn debit_as(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        key: &IdempotencyKey,
        entity: Option<&str>,
    ) -> Result<Debited, ApiError> {
        if let Some(name) = entity {
            check_entity(name)?;
            for _ in 0..ENTITY_ATTEMPTS {
                let stored = self.entity_record(id, name).await?;
                match self.debit_once(id, self.held_elsewhere(id), consumable, quantity, key, Some(&stored)).await? {
                    Applied::EntityMoved => continue,
                    applied => return applied.done(),
                }
            }
            return Err(ApiError::Busy);
        }
        // An account spread over parts: the debit goes where `route` sends it, and on where
        // `reroute` says when that item cannot take it; the account's own item decides on the
        // whole.
        let mut route = self.route(id, consumable, false).await;
        loop {
            let (target, beside) = self.target(&route);
            let failure = match self.debit_on(&target, beside, consumable, quantity, key).await {
                Ok(d) => return Ok(d),
                Err(e) => e,
            };
            match self.reroute(route, &failure, consumable, quantity, quantity).await? {
                Some(next) => route = next,
                None => return Err(failure),
            }
        }
    }

    /// A debit applied on `target`: the account's item, or one of its parts. While parts hold
    /// credits the answer adds `beside`, the rest of the account's balance as this process last
    /// knew it.
    async fn debit_on(
        &self,
        target: &str,
        beside: i64,
        consumable: &str,
        quantity: i64,
        key: &IdempotencyKey,
    ) -> Result<Debited, ApiError> {
        self.debit_once(target, beside, consumable, quantity, key, None).await?.done()
    }

    /// One attempt at a debit on `target`, of `entity`'s usage as its record was read when one
    /// is named (`Applied::EntityMoved` when it moved meanwhile).
    async fn debit_once(
        &self,
        target: &str,
        beside: i64,
        consumable: &str,
        quantity: i64,
        key: &IdempotencyKey,
        entity: Option<&Entity>,
    ) -> Result<Applied<Debited>, ApiError> {
        let id = target;
        let claim = usage_claim(key, consumable, quantity, entity.map(|e| e.entity.as_str()));
        let profile = &self.profile;
        self.apply(id, Some(&claim), |a, now| {
            // Decided on the state the write starts from (grants past their expiry gone), the
            // one it commits. The account's own refusal comes first.
            let mut next = a.next(now);
            let d = ledger::draw(profile, &next, consumable, quantity, now)?;
            let spend = match entity {
                Some(stored) => Some(entity_spend(stored, d.cost.get(), now)?),
                None => None,
            };
            ledger::apply_draw(&mut next, consumable, &d, now);
            let entry = (d.cost.get() > 0).then(|| {
                LedgerEntry::after(
                    &mut next,
                    EntryKind::Consumption,
                    Micros::new(-d.cost.get()),
                    now,
                    usage_description(consumable, quantity, d.from_allowance),
                )
                .of_entity(entity.map(|e| e.entity.as_str()))
            });
            let outcome = Debited {
                from_allowance: d.from_allowance,
                from_credits: d.cost.get(),
                balance: next.balance.get().saturating_add(crate::parts::beside_of(a, beside)),
                transaction_id: entry.as_ref().map(|e| e.id.clone()),
            };
            let (entities, events) = match spend {
                Some(s) => s.into_change(id, next.balance.get(), now),
                None => (vec![], vec![]),
            };
            Change::quiet(next, crate::cause::Cause::Usage, outcome)
                .with_entries(entry)
                .with_entities(entities)
                .with_events(events)
                .write()
        })
        .await
    }

    /// `POST /v1/accounts/{id}/usage/holds`: reserves allowance units and credits for a
    /// session, so that it can always finish.
    pub async fn reserve(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        ttl_seconds: i64,
        key: &IdempotencyKey,
    ) -> Result<Reserved, ApiError> {
        self.reserve_as(id, consumable, quantity, ttl_seconds, key, None).await
    }

    /// A hold of `entity`'s usage, if it names one: what it reserves in credits counts against
    /// the entity's month until it is settled or expires (rules §17).
    pub async fn reserve_as(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        ttl_seconds: i64,
        key: &IdempotencyKey,
        entity: Option<&str>,
    ) -> Result<Reserved, ApiError> {
        if !(1..=86_400).contains(&ttl_seconds) {
            return Err(ApiError::request_rule("invalid_ttl", "`ttl_seconds` must be between 1 and 86400."));
        }
        if let Some(name) = entity {
            check_entity(name)?;
        }
        let claim = hold_claim(key, consumable, quantity, ttl_seconds, entity);
        for _ in 0..ENTITY_ATTEMPTS {
            let stored = match entity {
                Some(name) => Some(self.entity_record(id, name).await?),
                None => None,
            };
            match self.reserve_once(id, consumable, quantity, ttl_seconds, &claim, stored.as_ref()).await? {
                Applied::EntityMoved => continue,
                applied => return applied.done(),
            }
        }
        Err(ApiError::Busy)
    }

    async fn reserve_once(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        ttl_seconds: i64,
        claim: &Claim,
        entity: Option<&Entity>,
    ) -> Result<Applied<Reserved>, ApiError> {
        let profile = &self.profile;
        let hold_id = new_id("hold");
        self.apply(id, Some(claim), |a, now| {
            let mut next = a.next(now);
            let mut hold = ledger::reserve(profile, &next, consumable, quantity, now, ttl_seconds * 1000)?;
            if next.holds.len() >= MAX_OPEN_HOLDS {
                return Err(ApiError::request_rule(
                    "too_many_holds",
                    format!("An account may have at most {MAX_OPEN_HOLDS} open holds."),
                ));
            }
            let reserved = match entity {
                Some(stored) => {
                    let mut e = stored.at(now);
                    e.room_for(hold.micros.get(), now)?;
                    let levels = e.reserve(&hold_id, hold.micros.get(), hold.expires_at, now);
                    hold.entity = Some(e.entity.clone());
                    Some(EntitySpend { stored_version: stored.version, record: e, levels, write: true })
                }
                None => None,
            };
            next.holds.insert(hold_id.clone(), hold.clone());
            let outcome = Reserved {
                hold_id: hold_id.clone(),
                consumable: consumable.to_string(),
                reserved: hold.micros.get(),
                reserved_units: hold.units,
                reserved_allowance_units: hold.allowance_units,
                expires_at: clock::rfc3339(hold.expires_at),
            };
            let record = HoldRecord {
                hold_id: hold_id.clone(),
                account_id: id.to_string(),
                hold,
                status: HoldStatus::Open,
                created_at: now,
                settle_hash: None,
                settled: None,
            };
            let (entities, events) = match reserved {
                Some(s) => s.into_change(id, next.balance.get(), now),
                None => (vec![], vec![]),
            };
            Change::quiet(next, crate::cause::Cause::Hold, outcome)
                .with_hold(HoldWrite::Create(record))
                .with_entities(entities)
                .with_events(events)
                .write()
        })
        .await
    }

    /// `POST /v1/accounts/{id}/usage/holds/{hold_id}/settle`. The threshold is checked here,
    /// at the end of the session, never while it runs.
    pub async fn settle(&self, id: &str, hold_id: &str, quantity: i64) -> Result<Settled, ApiError> {
        ledger::check_quantity(quantity, true)?;
        let hash = request_hash(&json!({"quantity": quantity}));
        // A hold of an entity's usage settles with the entity's record (rules §17).
        let mut result = Ok(Applied::EntityMoved);
        for _ in 0..ENTITY_ATTEMPTS {
            let named = match self.cached(id) {
                Some(a) if a.holds.contains_key(hold_id) => a.holds.get(hold_id).and_then(|h| h.entity.clone()),
                _ => self.load(id).await?.holds.get(hold_id).and_then(|h| h.entity.clone()),
            };
            let stored = match &named {
                Some(name) => Some(self.entity_record(id, name).await?),
                None => None,
            };
            result = self.settle_once(id, hold_id, quantity, &hash, stored.as_ref()).await;
            if !matches!(result, Ok(Applied::EntityMoved)) {
                break;
            }
        }
        let not_open = match result {
            Ok(Applied::Done(settled)) => return Ok(settled),
            Ok(Applied::HoldNotOpen(rec)) => rec.map(|r| *r),
            Ok(Applied::EntityMoved) => return Err(ApiError::Busy),
            Ok(Applied::PurchaseNotInState | Applied::KeysClaimed(_)) => return Err(ApiError::Upstream),
            // Not among the account's open holds: settled, expired or unknown? The record says.
            Err(ApiError::HoldNotFound | ApiError::HoldExpired) => {
                self.store.load_hold(id, hold_id).await.map_err(upstream)?
            }
            Err(e) => return Err(e),
        };
        match not_open {
            Some(r) if r.status == HoldStatus::Settled => match (r.settle_hash, r.settled) {
                (Some(h), Some(settled)) if h == hash => Ok(settled),
                _ => Err(ApiError::IdempotencyConflict),
            },
            Some(_) => Err(ApiError::HoldExpired),
            None => Err(ApiError::HoldNotFound),
        }
    }

    async fn settle_once(
        &self,
        id: &str,
        hold_id: &str,
        quantity: i64,
        hash: &str,
        entity: Option<&Entity>,
    ) -> Result<Applied<Settled>, ApiError> {
        let profile = &self.profile;
        self.apply(id, None, |a, now| {
                let Some(hold) = a.holds.get(hold_id).cloned() else { return Err(ApiError::HoldNotFound) };
                if hold.expires_at <= now {
                    return Err(ApiError::HoldExpired);
                }
                let mut next = a.next(now);
                next.holds.remove(hold_id);
                // Use beyond the hold stops at what its entity's budget leaves (rules §17).
                let cap = match (entity, &hold.entity) {
                    (Some(stored), Some(name))
                        if &stored.entity == name && !crate::broken::on(crate::broken::Bug::SettlePastEntityLimit) =>
                    {
                        stored.room_for_settle(hold_id, now).map(Micros::new)
                    }
                    _ => None,
                };
                let s = ledger::settle(profile, &mut next, &hold, quantity, cap, now)?;
                // The entity the hold reserved for (if its record is the one read) counts what
                // the settlement drew, and no longer what the hold reserved.
                let spend = match (entity, &hold.entity) {
                    (Some(stored), Some(name)) if &stored.entity == name => {
                        let mut e = stored.at(now);
                        let levels = e.settle(hold_id, s.from_credits.get(), now);
                        Some(EntitySpend { stored_version: stored.version, record: e, levels, write: true })
                    }
                    (None, None) => None,
                    // The hold names an entity whose record was not read: read it and plan again.
                    _ => return Err(ApiError::Busy),
                };
                let entry = (s.from_credits.get() > 0).then(|| {
                    LedgerEntry::after(
                        &mut next,
                        EntryKind::Consumption,
                        Micros::new(-s.from_credits.get()),
                        now,
                        usage_description(&hold.consumable, quantity - s.unbilled, s.from_allowance),
                    )
                    .of_entity(hold.entity.as_deref())
                });
                let outcome = Settled {
                    hold_id: hold_id.to_string(),
                    from_hold: s.from_hold,
                    from_allowance: s.from_allowance,
                    from_credits: s.from_credits.get(),
                    unbilled: s.unbilled,
                    balance: next.balance.get(),
                    transaction_id: entry.as_ref().map(|e| e.id.clone()),
                };
                let record = HoldRecord {
                    hold_id: hold_id.to_string(),
                    account_id: id.to_string(),
                    hold,
                    status: HoldStatus::Settled,
                    created_at: now,
                    settle_hash: Some(hash.to_string()),
                    settled: Some(outcome.clone()),
                };
                let (entities, events) = match spend {
                    Some(sp) => sp.into_change(id, next.balance.get(), now),
                    None => (vec![], vec![]),
                };
                Change::quiet(next, crate::cause::Cause::Settle, outcome)
                    .with_entries(entry)
                    .with_hold(HoldWrite::Settle(record))
                    .with_entities(entities)
                    .with_events(events)
                    .write()
            })
            .await
    }
}

/// The claim a debit's key makes: the scope it is claimed under and the hash of what it asked
/// (the entity only when one is named). The single debit and every event of a batch make the
/// same one, so a key means the same request whichever way it was sent.
pub(crate) fn usage_claim(key: &IdempotencyKey, consumable: &str, quantity: i64, entity: Option<&str>) -> Claim {
    let mut request = json!({"consumable": consumable, "quantity": quantity});
    if let Some(name) = entity {
        request["entity"] = json!(name);
    }
    Claim { scope_key: format!("usage:{}", key.as_str()), hash: request_hash(&request), permanent: false }
}

/// The claim a hold's key makes (its own scope: a hold and a debit may share a key).
fn hold_claim(key: &IdempotencyKey, consumable: &str, quantity: i64, ttl_seconds: i64, entity: Option<&str>) -> Claim {
    let mut request = json!({"consumable": consumable, "quantity": quantity, "ttl_seconds": ttl_seconds});
    if let Some(name) = entity {
        request["entity"] = json!(name);
    }
    Claim { scope_key: format!("hold:{}", key.as_str()), hash: request_hash(&request), permanent: false }
}

pub(crate) fn usage_description(consumable: &str, quantity: i64, from_allowance: i64) -> String {
    if from_allowance > 0 {
        format!("{quantity} {consumable} ({from_allowance} from the monthly allowance)")
    } else {
        format!("{quantity} {consumable}")
    }
}

#[cfg(test)]
mod bounds {
    use crate::store::Accounts;
    use crate::accounts::MAX_ADJUSTMENT;
    use crate::batch::UsageEvent;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::ledger::MAX_QUANTITY;
    use crate::ApiError;

    fn code<T>(r: Result<T, ApiError>) -> String {
        r.map(|_| ()).unwrap_err().code().to_string()
    }

    /// A quantity is at most `MAX_QUANTITY` on every route that takes one (rules §16): one more
    /// is 422 `invalid_quantity` and writes nothing; the largest is applied (with credits for
    /// it: 10^12 runs at 0.01 credit, 10^16 micro-credits).
    #[tokio::test]
    async fn every_quantity_is_bounded_at_its_edge() {
        let c = memory_credits("org-runs");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "runs", 1_000, &key("allowance")).await.unwrap();
        for i in 0..10 {
            c.adjust("a", MAX_ADJUSTMENT, "a lot", &key(&format!("g{i}"))).await.unwrap();
        }
        let before = c.store.load_account("a").await.unwrap();
        let over = MAX_QUANTITY + 1;
        assert_eq!(code(c.debit("a", "runs", over, &key("d")).await), "invalid_quantity");
        assert_eq!(code(c.reserve("a", "runs", over, 60, &key("h")).await), "invalid_quantity");
        let one = |quantity: i64| [UsageEvent { consumable: "runs".into(), quantity, key: key("b"), entity: None }];
        let r = c.debit_batch("a", &one(over)).await.unwrap().results.remove(0);
        assert_eq!((r.status, r.error.map(|e| e["code"].clone())), (422, Some("invalid_quantity".into())));
        assert_eq!(c.store.load_account("a").await.unwrap(), before, "the refusals wrote nothing");

        let d = c.debit("a", "runs", MAX_QUANTITY, &key("max")).await.unwrap();
        assert_eq!((d.from_credits, d.balance), (MAX_QUANTITY * 10_000, 0));

        // A hold of one run (all the balance), settled at the largest quantity: the rest is
        // unbilled; one more is refused and writes nothing.
        c.adjust("a", 10_000, "one run", &key("r")).await.unwrap();
        let hold = c.reserve("a", "runs", 1, 60, &key("h1")).await.unwrap();
        let held = c.store.load_account("a").await.unwrap();
        assert_eq!(code(c.settle("a", &hold.hold_id, over).await), "invalid_quantity");
        assert_eq!(c.store.load_account("a").await.unwrap(), held, "a refused settle writes nothing");
        let s = c.settle("a", &hold.hold_id, MAX_QUANTITY).await.unwrap();
        assert_eq!((s.from_hold, s.unbilled, s.balance), (1, MAX_QUANTITY - 1, 0), "{s:?}");
    }
}
