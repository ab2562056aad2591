//! Budgets for members, projects and keys (rules §17): usage may name an `entity`, whose spend
//! this UTC month (what its usage drew from credits; the plan's allowance costs nothing) is kept
//! on an item of its own beside the account (`ENTITY#{entity}`), with its optional monthly
//! limit. An account may have thousands of entities: none of them grows the account item, and a
//! debit without an entity reads and writes exactly what it did before.
//!
//! **Exact.** A debit that names an entity commits the entity's item in the same transaction as
//! the account, conditioned on the version it was planned on; so every debit of one entity is
//! decided on its current spend, whichever process it comes from (a debit naming an entity is
//! always written on the account's own item, never on a part of it: rules §14, §17). A refusal
//! writes nothing: `entity_budget_exceeded` only when this debit would take the month past the
//! limit, and only when the account itself could pay (the account's own 402 comes first).
//!
//! **Holds** reserve against the limit what they reserve in credits, until settled or expired.
//!
//! **Alerts.** Crossing 80 % and 100 % of a limit emits `EntityBudgetAlert` once per level per
//! month, in the same transaction as the debit that crossed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::{DomainEvent, EntityBudgetAlert, Event, EventBus};
use crate::store::Store;

/// The longest entity name a request may carry.
pub const MAX_ENTITY_LEN: usize = 128;
/// The longest display name of an entity.
pub const MAX_NAME_LEN: usize = 200;
/// The levels of a limit at which `EntityBudgetAlert` is emitted, in percent.
pub const ALERT_LEVELS: [u8; 2] = [80, 100];
/// Times a write naming an entity is planned again when the entity moved meanwhile (another
/// process spent from it) before it answers 503 `account_busy`.
pub const ENTITY_ATTEMPTS: usize = 32;

/// An entity's record: its limit, and its spend in `month`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    pub account_id: String,
    pub entity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Micro-credits a month at most; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_limit: Option<i64>,
    /// The UTC month `spent` and `alerted` are of.
    pub month: String,
    /// Micro-credits its usage drew from credits in `month`.
    pub spent: i64,
    /// What open holds reserve, by hold id: micro-credits and until when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: BTreeMap<String, EntityHold>,
    /// The alert levels announced in `month`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerted: Vec<u8>,
    /// Bumped by every write: a write is conditioned on the version it was planned on.
    pub version: u64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityHold {
    pub micros: i64,
    pub expires_at: i64,
}

/// An entity's record to write with a change, if it is still at `expected_version` (0: new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityWrite {
    pub record: Entity,
    pub expected_version: u64,
}

/// An entity as the API shows it (rules §17).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityView {
    pub entity: String,
    pub name: Option<String>,
    pub monthly_limit: Option<i64>,
    pub spent_this_month: i64,
    pub remaining_this_month: Option<i64>,
}

/// `GET …/entities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityList {
    pub entities: Vec<EntityView>,
}

/// 1–128 of `A–Z a–z 0–9 . _ : @ -`, else 422 `invalid_entity`.
pub fn check_entity(entity: &str) -> Result<(), ApiError> {
    let ok = !entity.is_empty()
        && entity.len() <= MAX_ENTITY_LEN
        && entity.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::rule(
            "invalid_entity",
            format!("`entity` must be 1 to {MAX_ENTITY_LEN} letters, digits, `.`, `_`, `:`, `@` or `-`."),
        ))
    }
}

impl Entity {
    /// An entity first seen now, with no limit and nothing spent.
    pub fn new(account_id: &str, entity: &str, now: i64) -> Entity {
        Entity {
            account_id: account_id.to_string(),
            entity: entity.to_string(),
            name: None,
            monthly_limit: None,
            month: clock::month_of(now),
            spent: 0,
            holds: BTreeMap::new(),
            alerted: vec![],
            version: 0,
            updated_at: now,
        }
    }

    /// The record as of `now`: a new month starts from nothing spent and nothing announced;
    /// expired holds reserve nothing.
    pub fn at(&self, now: i64) -> Entity {
        let mut e = self.clone();
        let month = clock::month_of(now);
        if e.month != month {
            e.month = month;
            e.spent = 0;
            e.alerted.clear();
        }
        e.holds.retain(|_, h| h.expires_at > now);
        e
    }

    /// What live holds reserve against the limit.
    pub fn reserved(&self, now: i64) -> i64 {
        crate::money::total(self.holds.values().filter(|h| h.expires_at > now).map(|h| h.micros))
    }

    /// This month's spend as the API shows it: what usage drew, and what holds reserve.
    pub fn spent_this_month(&self, now: i64) -> i64 {
        let e = self.at(now);
        e.spent.saturating_add(e.reserved(now))
    }

    /// What the limit leaves this month; `None` without a limit.
    pub fn remaining(&self, now: i64) -> Option<i64> {
        self.monthly_limit.map(|l| l.saturating_sub(self.spent_this_month(now)).max(0))
    }

    /// 402 `entity_budget_exceeded` if drawing `cost` more would take the month past the limit.
    pub fn room_for(&self, cost: i64, now: i64) -> Result<(), ApiError> {
        match self.monthly_limit {
            Some(limit)
                if cost > 0
                    && self.spent_this_month(now).saturating_add(cost) > limit
                    && !crate::broken::on(crate::broken::Bug::IgnoreEntityLimit) =>
            {
                Err(ApiError::EntityBudgetExceeded {
                    entity: self.entity.clone(),
                    remaining: self.remaining(now).unwrap_or(0),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts `cost` as spent this month (the record must be `at` now); the alert levels it
    /// crossed for the first time this month, now marked announced.
    pub fn spend(&mut self, cost: i64, now: i64) -> Vec<u8> {
        self.spent = self.spent.saturating_add(cost.max(0));
        self.updated_at = now;
        self.crossed(now)
    }

    /// Levels the month's spend (with holds) has reached and that were not announced yet.
    fn crossed(&mut self, now: i64) -> Vec<u8> {
        let Some(limit) = self.monthly_limit.filter(|l| *l > 0) else { return vec![] };
        let used = i128::from(self.spent_this_month(now)) * 100;
        let mut out = vec![];
        for level in ALERT_LEVELS {
            if used >= i128::from(limit) * i128::from(level) && !self.alerted.contains(&level) {
                self.alerted.push(level);
                out.push(level);
            }
        }
        out
    }

    /// Reserves `micros` for hold `hold_id` until `expires_at` (the record must be `at` now).
    pub fn reserve(&mut self, hold_id: &str, micros: i64, expires_at: i64, now: i64) -> Vec<u8> {
        if micros > 0 {
            self.holds.insert(hold_id.to_string(), EntityHold { micros, expires_at });
        }
        self.updated_at = now;
        self.crossed(now)
    }

    /// What the limit leaves for hold `hold_id`'s settlement in all: the month's room with the
    /// hold's own reservation released. `None` without a limit.
    pub fn room_for_settle(&self, hold_id: &str, now: i64) -> Option<i64> {
        let mut e = self.at(now);
        e.holds.remove(hold_id);
        e.remaining(now)
    }

    /// Releases hold `hold_id`'s reservation and counts what its settlement drew.
    pub fn settle(&mut self, hold_id: &str, drawn: i64, now: i64) -> Vec<u8> {
        self.holds.remove(hold_id);
        self.spend(drawn, now)
    }

    /// The write of this record as the next version of `planned_on`.
    pub fn write(mut self, planned_on: u64) -> EntityWrite {
        self.version = planned_on + 1;
        EntityWrite { record: self, expected_version: planned_on }
    }

    pub fn view(&self, now: i64) -> EntityView {
        let spent = self.spent_this_month(now);
        EntityView {
            entity: self.entity.clone(),
            name: self.name.clone(),
            monthly_limit: self.monthly_limit,
            spent_this_month: spent,
            remaining_this_month: self.remaining(now),
        }
    }
}

/// What a write does to an entity: its record as of the write, and the alert levels crossed.
#[derive(Debug, Clone)]
pub(crate) struct EntitySpend {
    pub(crate) stored_version: u64,
    pub(crate) record: Entity,
    pub(crate) levels: Vec<u8>,
    /// Whether the record needs writing (a debit the allowance paid moves nothing).
    pub(crate) write: bool,
}

/// `cost` more of `stored`'s month, or 402 `entity_budget_exceeded`.
pub(crate) fn entity_spend(stored: &Entity, cost: i64, now: i64) -> Result<EntitySpend, ApiError> {
    let mut record = stored.at(now);
    record.room_for(cost, now)?;
    let levels = record.spend(cost, now);
    // A record is written when it moves, or when it is new (an entity is seen from its first use).
    let write = cost > 0 || stored.version == 0 || !levels.is_empty();
    Ok(EntitySpend { stored_version: stored.version, record, levels, write })
}

impl EntitySpend {
    /// The record to write and the alerts to emit with the change.
    pub(crate) fn into_change(self, account_id: &str, balance: i64, now: i64) -> (Vec<EntityWrite>, Vec<DomainEvent>) {
        let limit = self.record.monthly_limit.unwrap_or(0);
        let spent = self.record.spent_this_month(now);
        let events = self
            .levels
            .iter()
            .map(|level| {
                DomainEvent::new(
                    account_id,
                    now,
                    Event::EntityBudgetAlert(EntityBudgetAlert {
                        entity: self.record.entity.clone(),
                        percent: *level,
                        spent,
                        monthly_limit: limit,
                        balance,
                    }),
                )
            })
            .collect();
        let writes = if self.write { vec![self.record.write(self.stored_version)] } else { vec![] };
        (writes, events)
    }
}

/// `PUT …/entities/{entity}`: what may be set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntitySettings {
    /// `Some(None)` removes the limit; `None` leaves it.
    pub monthly_limit: Option<Option<i64>>,
    pub name: Option<String>,
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The entity's record as stored, or a new one (an entity not seen yet).
    pub(crate) async fn entity_record(&self, id: &str, entity: &str) -> Result<Entity, ApiError> {
        let owner = crate::parts::owner_of(id);
        Ok(self
            .store
            .load_entity(owner, entity)
            .await
            .map_err(upstream)?
            .unwrap_or_else(|| Entity::new(owner, entity, self.now())))
    }

    /// `GET …/entities/{entity}`: 404 `entity_not_found` for one never used nor set.
    pub async fn entity(&self, id: &str, entity: &str) -> Result<EntityView, ApiError> {
        check_entity(entity)?;
        self.load(id).await?;
        match self.store.load_entity(id, entity).await.map_err(upstream)? {
            Some(e) => Ok(e.view(self.now())),
            None => Err(ApiError::NotFound("entity_not_found", format!("No entity `{entity}` has been used or set."))),
        }
    }

    /// `GET …/entities`: every entity of the account, by name.
    pub async fn entities(&self, id: &str) -> Result<EntityList, ApiError> {
        self.load(id).await?;
        let now = self.now();
        let all = self.store.entities(id).await.map_err(upstream)?;
        Ok(EntityList { entities: all.iter().map(|e| e.view(now)).collect() })
    }

    /// `PUT …/entities/{entity}` (owners, admins, the service): its monthly limit and name. The
    /// record is written with a change of the account (which every debit of it also writes), so
    /// a new limit and the debits around it are decided one after the other, exactly.
    pub async fn set_entity(&self, id: &str, entity: &str, settings: &EntitySettings) -> Result<EntityView, ApiError> {
        check_entity(entity)?;
        if let Some(Some(limit)) = settings.monthly_limit {
            if !(0..=crate::accounts::MAX_CREDITS).contains(&limit) {
                return Err(ApiError::rule(
                    "invalid_monthly_limit",
                    format!("`monthly_limit` must be between 0 and {} micro-credits, or null.", crate::accounts::MAX_CREDITS),
                ));
            }
        }
        if let Some(name) = &settings.name {
            if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(ApiError::rule(
                    "invalid_name",
                    format!("`name` must be at most {MAX_NAME_LEN} characters, none of them control characters."),
                ));
            }
        }
        for _ in 0..ENTITY_ATTEMPTS {
            let stored = self.entity_record(id, entity).await?;
            let applied = self
                .apply(id, None, |a, now| {
                    let next = a.next(now);
                    let mut e = stored.at(now);
                    if let Some(limit) = settings.monthly_limit {
                        e.monthly_limit = limit;
                        // A new limit: its levels are announced anew when the month reaches them.
                        e.alerted.retain(|l| limit.is_some_and(|m| i128::from(e.spent) * 100 >= i128::from(m) * i128::from(*l)));
                    }
                    if let Some(name) = &settings.name {
                        e.name = Some(name.clone()).filter(|n| !n.is_empty());
                    }
                    e.updated_at = now;
                    let view = e.view(now);
                    let budget = |x: &Entity| serde_json::json!({"monthly_limit": x.monthly_limit, "name": x.name});
                    let audit = crate::audit::AuditChange::new(
                        "entity.update",
                        format!("entity:{entity}"),
                        Some(budget(&stored)),
                        Some(budget(&e)),
                    );
                    let change = crate::engine::Change::quiet(next, crate::cause::Cause::Entity, view)
                        .with_entities(vec![e.write(stored.version)])
                        .with_audit(audit);
                    change.write()
                })
                .await?;
            match applied {
                crate::engine::Applied::EntityMoved => continue,
                other => return other.done(),
            }
        }
        Err(ApiError::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const C: i64 = crate::money::MICROS_PER_CREDIT;

    #[test]
    fn names_are_checked() {
        assert!(check_entity("user:42@acme.example_team-1").is_ok());
        assert!(check_entity(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "é", "a/b", "a#b"] {
            assert_eq!(check_entity(bad).unwrap_err().code(), "invalid_entity", "{bad:?}");
        }
        assert_eq!(check_entity(&"a".repeat(129)).unwrap_err().code(), "invalid_entity");
    }

    #[test]
    fn the_limit_refuses_only_what_would_pass_it_and_alerts_once_per_level() {
        let now = 1_796_000_000_000;
        let mut e = Entity::new("a", "bob", now);
        e.monthly_limit = Some(10 * C);
        assert!(e.room_for(10 * C, now).is_ok());
        assert_eq!(e.spend(7 * C, now), Vec::<u8>::new());
        assert_eq!(e.spend(C, now), vec![80]);
        assert_eq!(e.spend(C, now), Vec::<u8>::new(), "80 % once");
        let err = e.room_for(2 * C, now).unwrap_err();
        assert_eq!(err.code(), "entity_budget_exceeded");
        assert!(matches!(err, ApiError::EntityBudgetExceeded { remaining, .. } if remaining == C));
        assert_eq!(e.spend(C, now), vec![100]);
        assert!(e.room_for(1, now).is_err());
        assert!(e.room_for(0, now).is_ok(), "what the allowance pays costs nothing");
        // Holds reserve against the limit until they settle or expire.
        let mut h = Entity::new("a", "ann", now);
        h.monthly_limit = Some(10 * C);
        h.reserve("h1", 6 * C, now + 1_000, now);
        assert_eq!(h.spent_this_month(now), 6 * C);
        assert!(h.room_for(5 * C, now).is_err());
        assert!(h.room_for(5 * C, now + 1_000).is_ok(), "an expired hold reserves nothing");
        assert_eq!(h.room_for_settle("h1", now), Some(10 * C), "the hold's own reservation is its to draw");
        h.spend(3 * C, now);
        assert_eq!(h.room_for_settle("h1", now), Some(7 * C));
        assert_eq!(h.room_for_settle("h1", now + 1_000), Some(7 * C));
        h.settle("h1", 2 * C, now);
        assert_eq!((h.spent_this_month(now), h.remaining(now)), (5 * C, Some(5 * C)));
        // A new month starts from nothing.
        let next_month = now + 40 * 86_400_000;
        assert_eq!(e.at(next_month).spent, 0);
        assert_eq!(e.remaining(next_month), Some(10 * C));
        let mut n = e.at(next_month);
        assert_eq!(n.spend(8 * C, next_month), vec![80], "announced again in a new month");
    }
}

#[cfg(test)]
mod service_tests {
    //! Budgets over the in-memory store (the same against moto in `tests/tests/entities.rs`).
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::money::MICROS_PER_CREDIT as C;

    type Mem = crate::engine::Credits<
        std::sync::Arc<crate::adapters::memory::MemoryStore>,
        std::sync::Arc<crate::adapters::memory::MemoryBus>,
    >;

    /// Account `a` with its allowance used and `credits` to spend (usd-overage: 0.001 a call).
    async fn funded(credits: i64) -> Mem {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
        c.adjust("a", credits, "grant", &key("g")).await.unwrap();
        c
    }

    fn limit(l: i64) -> EntitySettings {
        EntitySettings { monthly_limit: Some(Some(l)), name: Some("Bob".into()) }
    }

    #[tokio::test]
    async fn a_debit_past_the_limit_is_refused_and_writes_nothing() {
        let c = funded(100 * C).await;
        let v = c.set_entity("a", "user:bob", &limit(5 * C)).await.unwrap();
        assert_eq!((v.spent_this_month, v.remaining_this_month), (0, Some(5 * C)));
        let d = c.debit_as("a", "api_calls", 4_000, &key("d1"), Some("user:bob")).await.unwrap();
        assert_eq!(d.from_credits, 4 * C);
        let before = c.store.load_account("a").await.unwrap();
        let e = c.debit_as("a", "api_calls", 2_000, &key("d2"), Some("user:bob")).await.unwrap_err();
        assert!(matches!(&e, ApiError::EntityBudgetExceeded { entity, remaining } if entity == "user:bob" && *remaining == C));
        let body = crate::http::error_body(&e);
        assert_eq!(body["entity"], "user:bob");
        assert_eq!(body["remaining_this_month"], C);
        assert_eq!(crate::http::status_of(&e), 402);
        assert_eq!(c.store.load_account("a").await.unwrap(), before, "nothing written");
        // Exactly what remains is allowed; another entity and no entity are not limited.
        c.debit_as("a", "api_calls", 1_000, &key("d3"), Some("user:bob")).await.unwrap();
        c.debit_as("a", "api_calls", 9_000, &key("d4"), Some("user:ann")).await.unwrap();
        c.debit("a", "api_calls", 9_000, &key("d5")).await.unwrap();
        let bob = c.entity("a", "user:bob").await.unwrap();
        assert_eq!((bob.spent_this_month, bob.remaining_this_month, bob.name.as_deref()), (5 * C, Some(0), Some("Bob")));
        let ann = c.entity("a", "user:ann").await.unwrap();
        assert_eq!((ann.spent_this_month, ann.remaining_this_month), (9 * C, None));
        assert_eq!(c.entity("a", "user:zed").await.unwrap_err().code(), "entity_not_found");
        assert_eq!(c.entities("a").await.unwrap().entities.len(), 2);
        // A replay answers the first result, and the key's request includes its entity.
        assert_eq!(c.debit_as("a", "api_calls", 4_000, &key("d1"), Some("user:bob")).await.unwrap(), d);
        let conflict = c.debit_as("a", "api_calls", 4_000, &key("d1"), Some("user:ann")).await.unwrap_err();
        assert_eq!(conflict.code(), "idempotency_conflict");
        // The account's own refusal comes first.
        c.set_entity("a", "user:cat", &limit(1_000 * C)).await.unwrap();
        let e = c.debit_as("a", "api_calls", 500_000, &key("d6"), Some("user:cat")).await.unwrap_err();
        assert_eq!(e.code(), "usage_limit_reached");
        // The ledger's entries carry their entity; the page filters; the CSV has the column.
        let page = c.transactions_of("a", 10, None, Some("user:bob")).await.unwrap();
        assert_eq!(page.transactions.iter().map(|t| t.amount).collect::<Vec<_>>(), [-C, -4 * C]);
        assert!(page.transactions.iter().all(|t| t.entity.as_deref() == Some("user:bob")));
        let csv = c.transactions_csv("a").await.unwrap();
        assert!(csv.starts_with("id,kind,amount,balance_after,created_at,description,entity\n"), "{csv}");
        assert_eq!(csv.lines().filter(|l| l.ends_with(",user:bob")).count(), 2);
        // Reconciliation: each entity's spend is its entries'.
        let a = c.store.load_account("a").await.unwrap().unwrap();
        let ledger = c.whole_ledger("a").await.unwrap();
        let entities = c.store.entities("a").await.unwrap();
        assert!(crate::reconcile::entity_differences("a", &entities, &ledger).is_empty());
        assert!(crate::reconcile::ledger_differences(&a, &ledger).is_empty());
        // A tampered record is found.
        let mut wrong = entities.clone();
        wrong[0].spent += 1;
        assert_eq!(crate::reconcile::entity_differences("a", &wrong, &ledger)[0].code, "entity_spend_mismatch");
    }

    #[tokio::test]
    async fn alerts_at_80_and_100_percent_once_each_and_the_check_answers_alike() {
        let c = funded(100 * C).await;
        c.set_entity("a", "proj-1", &limit(10 * C)).await.unwrap();
        c.debit_as("a", "api_calls", 7_000, &key("a1"), Some("proj-1")).await.unwrap();
        c.debit_as("a", "api_calls", 1_000, &key("a2"), Some("proj-1")).await.unwrap();
        c.debit_as("a", "api_calls", 1_000, &key("a3"), Some("proj-1")).await.unwrap();
        let check = c.check_as("a", "api_calls", 1_000, Some("proj-1")).await.unwrap();
        assert!(check.allowed);
        c.debit_as("a", "api_calls", 1_000, &key("a4"), Some("proj-1")).await.unwrap();
        let check = c.check_as("a", "api_calls", 1, Some("proj-1")).await.unwrap();
        assert_eq!((check.allowed, check.reason), (false, crate::check::CheckReason::EntityBudgetExceeded));
        let alerts: Vec<(u8, i64)> = c
            .bus
            .published
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.event {
                Event::EntityBudgetAlert(a) => Some((a.percent, a.spent)),
                _ => None,
            })
            .collect();
        assert_eq!(alerts, [(80, 8 * C), (100, 10 * C)]);
        assert_eq!(c.check_as("a", "api_calls", 1, Some("bad name")).await.unwrap_err().code(), "invalid_entity");
    }

    #[tokio::test]
    async fn holds_reserve_against_the_limit_until_settled() {
        let c = funded(100 * C).await;
        c.set_entity("a", "key-9", &limit(10 * C)).await.unwrap();
        let hold = c.reserve_as("a", "api_calls", 8_000, 600, &key("h1"), Some("key-9")).await.unwrap();
        assert_eq!(c.entity("a", "key-9").await.unwrap().spent_this_month, 8 * C);
        let e = c.debit_as("a", "api_calls", 3_000, &key("d1"), Some("key-9")).await.unwrap_err();
        assert_eq!(e.code(), "entity_budget_exceeded");
        let e = c.reserve_as("a", "api_calls", 3_000, 600, &key("h2"), Some("key-9")).await.unwrap_err();
        assert_eq!(e.code(), "entity_budget_exceeded");
        c.settle("a", &hold.hold_id, 5_000).await.unwrap();
        let v = c.entity("a", "key-9").await.unwrap();
        assert_eq!((v.spent_this_month, v.remaining_this_month), (5 * C, Some(5 * C)));
        c.debit_as("a", "api_calls", 5_000, &key("d2"), Some("key-9")).await.unwrap();
        let ledger = c.whole_ledger("a").await.unwrap();
        let entities = c.store.entities("a").await.unwrap();
        assert!(crate::reconcile::entity_differences("a", &entities, &ledger).is_empty());
    }

    #[tokio::test]
    async fn a_batch_decides_each_event_against_its_entity() {
        let c = funded(100 * C).await;
        c.set_entity("a", "u1", &limit(3 * C)).await.unwrap();
        let ev = |q: i64, k: &str, e: Option<&str>| crate::batch::UsageEvent {
            consumable: "api_calls".into(),
            quantity: q,
            key: key(k),
            entity: e.map(str::to_string),
        };
        let events = [
            ev(2_000, "b1", Some("u1")),
            ev(2_000, "b2", Some("u1")),
            ev(1_000, "b3", Some("u1")),
            ev(5_000, "b4", Some("u2")),
            ev(1, "b5", Some("no way")),
            ev(1_000, "b6", None),
        ];
        let r = c.debit_batch("a", &events).await.unwrap();
        let got: Vec<(u16, String)> = r
            .results
            .iter()
            .map(|x| (x.status, x.error.as_ref().and_then(|e| e["code"].as_str()).unwrap_or("").to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (200, "".into()),
                (402, "entity_budget_exceeded".into()),
                (200, "".into()),
                (200, "".into()),
                (422, "invalid_entity".into()),
                (200, "".into())
            ]
        );
        assert_eq!(r.results[1].error.as_ref().unwrap()["remaining_this_month"], C);
        assert_eq!(c.entity("a", "u1").await.unwrap().spent_this_month, 3 * C);
        let ledger = c.whole_ledger("a").await.unwrap();
        let entities = c.store.entities("a").await.unwrap();
        assert!(crate::reconcile::entity_differences("a", &entities, &ledger).is_empty());
    }

    /// Many processes debit one limited entity at once: the month never passes the limit, and a
    /// refusal comes only when the next debit really would pass it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_debits_never_pass_the_limit() {
        let c = std::sync::Arc::new(funded(1_000 * C).await);
        c.set_entity("a", "hot", &limit(50 * C)).await.unwrap();
        let procs: Vec<std::sync::Arc<Mem>> = (0..6)
            .map(|_| std::sync::Arc::new(Credits::new(c.profile.clone(), c.store.clone(), c.bus.clone())))
            .collect();
        let mut tasks = Vec::new();
        for i in 0..120 {
            let p = procs[i % procs.len()].clone();
            tasks.push(tokio::spawn(async move {
                p.debit_as("a", "api_calls", 1_000, &key(&format!("c{i}")), Some("hot")).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.code(), "entity_budget_exceeded", "{e:?}"),
            }
        }
        assert_eq!(ok, 50, "exactly what the limit allows");
        let v = c.entity("a", "hot").await.unwrap();
        assert_eq!((v.spent_this_month, v.remaining_this_month), (50 * C, Some(0)));
        let ledger = c.whole_ledger("a").await.unwrap();
        let entities = c.store.entities("a").await.unwrap();
        assert!(crate::reconcile::entity_differences("a", &entities, &ledger).is_empty());
    }

    #[tokio::test]
    async fn settings_are_checked() {
        let c = funded(C).await;
        let bad = EntitySettings { monthly_limit: Some(Some(-1)), name: None };
        assert_eq!(c.set_entity("a", "x", &bad).await.unwrap_err().code(), "invalid_monthly_limit");
        let bad = EntitySettings { monthly_limit: None, name: Some("a\nb".into()) };
        assert_eq!(c.set_entity("a", "x", &bad).await.unwrap_err().code(), "invalid_name");
        assert_eq!(c.set_entity("a", "a/b", &limit(1)).await.unwrap_err().code(), "invalid_entity");
        assert_eq!(c.set_entity("nope", "x", &limit(1)).await.unwrap_err().code(), "account_not_found");
        // null removes the limit.
        c.set_entity("a", "x", &limit(C)).await.unwrap();
        let v = c.set_entity("a", "x", &EntitySettings { monthly_limit: Some(None), name: None }).await.unwrap();
        assert_eq!((v.monthly_limit, v.remaining_this_month, v.name.as_deref()), (None, None, Some("Bob")));
    }
}

#[cfg(test)]
mod cost_tests {
    //! What a debit naming an entity costs beside one that does not, counted by DynamoDB's
    //! published rules (a transactional write: 2 WCU per KB of each item, rounded up; a strongly
    //! consistent read: 1 RCU per 4 KB). BENCHMARKS.md quotes these figures.
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::ledger::LedgerEntry;
    use crate::money::MICROS_PER_CREDIT as C;
    use crate::store::Commit;

    fn wcu(size: usize) -> usize {
        2 * size.div_ceil(1024).max(1)
    }

    #[tokio::test]
    async fn a_debit_with_an_entity_adds_one_small_item_and_one_read() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
        c.adjust("a", 100 * C, "grant", &key("g")).await.unwrap();
        c.set_entity("a", "user:someone@example.com", &EntitySettings { monthly_limit: Some(Some(50 * C)), name: None })
            .await
            .unwrap();
        c.debit_as("a", "api_calls", 1_000, &key("d1"), Some("user:someone@example.com")).await.unwrap();
        let account = c.store.load_account("a").await.unwrap().unwrap();
        let entry = c.whole_ledger("a").await.unwrap().pop().unwrap();
        let record = c.store.load_entity("a", "user:someone@example.com").await.unwrap().unwrap();
        let key_record = crate::ledger::IdemRecord {
            account_id: "a".into(),
            scope_key: "usage:d1".into(),
            request_hash: "0".repeat(64),
            outcome: serde_json::json!({"from_allowance": 0, "from_credits": C, "balance": 99 * C, "transaction_id": entry.id}),
            created_at: 0,
            permanent: false,
            credited: None,
        };
        let plain = Commit {
            ledger: vec![LedgerEntry { entity: None, ..entry.clone() }],
            idempotency: vec![key_record.clone()],
            ..Commit::account_only(account.clone(), 1)
        };
        let named = Commit {
            ledger: vec![entry],
            idempotency: vec![key_record],
            entities: vec![EntityWrite { record: record.clone(), expected_version: record.version - 1 }],
            ..Commit::account_only(account, 1)
        };
        let cost = |c: &Commit| -> (usize, usize) {
            let items = crate::adapters::dynamo::commit_items(c).unwrap();
            (items.len(), items.iter().map(|i| wcu(i.size)).sum())
        };
        let (plain_items, plain_wcu) = cost(&plain);
        let (named_items, named_wcu) = cost(&named);
        let entity_size = crate::adapters::dynamo::commit_items(&named)
            .unwrap()
            .iter()
            .find(|i| i.kind == "entity")
            .map(|i| i.size)
            .unwrap();
        eprintln!(
            "a debit: {plain_items} items, {plain_wcu} WCU; naming an entity: {named_items} items, {named_wcu} WCU \
             (the entity's item {entity_size} bytes), and one strongly consistent read of it (1 RCU)"
        );
        assert_eq!(named_items, plain_items + 1);
        assert_eq!(named_wcu, plain_wcu + 2, "the entity's item is under 1 KB");
    }
}

