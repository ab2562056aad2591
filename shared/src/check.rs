//! Check before use (rules §15): `GET /v1/accounts/{id}/credits/check?consumable=&quantity=`
//! answers whether the debit of `quantity` would be applied now, what it would cost after the
//! allowance, and what the account has available, without writing anything. It decides with
//! the debit's own arithmetic (`ledger::draw`) on a strongly consistent read, and it fails
//! closed: anything it cannot decide is 503, never `allowed: true`.

use serde::{Deserialize, Serialize};

use crate::engine::Credits;
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{self, check_quantity};
use crate::store::Store;

/// Why a check answered as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckReason {
    Ok,
    /// Allowance and available credits together do not cover it.
    InsufficientCredits,
    /// A consumable of the product that the account's plan does not include.
    NotInPlan,
    /// Not a consumable of this product.
    UnknownConsumable,
    /// The account could pay, but it would take the entity past its monthly limit (rules §17).
    EntityBudgetExceeded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub allowed: bool,
    pub reason: CheckReason,
    /// Micro-credits the debit would take after the month's allowance.
    pub cost: i64,
    /// The balance less what open holds reserve (and credits past their expiry).
    pub available: i64,
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `GET …/credits/check`. `quantity` is checked by the caller (a malformed one is 400).
    pub async fn check(&self, id: &str, consumable: &str, quantity: i64) -> Result<CheckAnswer, ApiError> {
        self.check_as(id, consumable, quantity, None).await
    }

    /// The check of a debit of `entity`'s usage, if it names one: also against the entity's
    /// month, as the debit would be (rules §17).
    pub async fn check_as(
        &self,
        id: &str,
        consumable: &str,
        quantity: i64,
        entity: Option<&str>,
    ) -> Result<CheckAnswer, ApiError> {
        if let Some(name) = entity {
            crate::entities::check_entity(name)?;
        }
        if quantity < 1 {
            return Err(ApiError::invalid("`quantity` must be a positive whole number."));
        }
        // Over its documented maximum: 422 `invalid_quantity`, as the debit answers (rules §16).
        check_quantity(quantity, false)?;
        // Fresh, never the cache: a check that read an old state could allow what the debit
        // would refuse. A failed read is "cannot decide".
        let account = match self.store.load_account(id).await {
            // Credits out on parts of it: decided on the whole account (read at one instant),
            // as a debit there would be.
            Ok(Some(a)) if a.leased_out() => match self.whole_account(id).await {
                Ok(whole) => whole,
                Err(_) => return Err(ApiError::Undecided),
            },
            Ok(Some(a)) => a,
            Ok(None) => return Err(ApiError::account_not_found()),
            Err(e) => {
                tracing::warn!(account_id = id, error = %e, "check could not read the account");
                return Err(ApiError::Undecided);
            }
        };
        let now = self.now();
        // The state a debit now would start from: grants past their expiry gone, lapsed holds
        // dropped, a new month's allowance.
        let account = account.next(now);
        let available = account.available(now).get();
        let p = &self.profile;
        let answer = |allowed, reason, cost| CheckAnswer { allowed, reason, cost, available };
        if !p.consumables.contains_key(consumable) {
            return Ok(answer(false, CheckReason::UnknownConsumable, 0));
        }
        if p.plan(&account.plan).and_then(|plan| plan.consumables.get(consumable)).is_none() {
            return Ok(answer(false, CheckReason::NotInPlan, 0));
        }
        // The debit's own arithmetic: its price, then whether the account can pay it.
        let cost = match ledger::price(p, &account, consumable, quantity, now) {
            Ok((_, _, Some(cost))) => cost.get(),
            Ok((_, _, None)) => return Ok(answer(false, CheckReason::InsufficientCredits, i64::MAX)),
            Err(e) => return Err(undecided(id, consumable, &e)),
        };
        match ledger::draw(p, &account, consumable, quantity, now) {
            Ok(_) if entity.is_some() => {
                let name = entity.unwrap_or_default();
                let stored = match self.store.load_entity(crate::parts::owner_of(id), name).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(account_id = id, error = %e, "check could not read the entity");
                        return Err(ApiError::Undecided);
                    }
                };
                match stored.map(|e| e.room_for(cost, now)) {
                    Some(Err(_)) => Ok(answer(false, CheckReason::EntityBudgetExceeded, cost)),
                    _ => Ok(answer(true, CheckReason::Ok, cost)),
                }
            }
            Ok(_) => Ok(answer(true, CheckReason::Ok, cost)),
            Err(ApiError::OutOfCredits { .. }) => Ok(answer(false, CheckReason::InsufficientCredits, cost)),
            // Anything else is a state the check cannot vouch for: fail closed.
            Err(e) => Err(undecided(id, consumable, &e)),
        }
    }
}

fn undecided(account_id: &str, consumable: &str, e: &ApiError) -> ApiError {
    tracing::error!(account_id, consumable, error = ?e, "check could not decide");
    ApiError::Undecided
}

#[cfg(test)]
mod tests {
    //! The check answers what the debit does, for random states and requests on every profile.
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;
    use crate::ids::key;
    use crate::money::MICROS_PER_CREDIT as C;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    #[tokio::test]
    async fn the_check_answers_what_the_debit_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut cases = 0;
        let mut seen = std::collections::BTreeMap::new();
        for profile in ["usd-overage", "request-packs", "org-runs", "voice-minutes"] {
            let c = memory_credits(profile);
            let plans: Vec<String> = c.profile.plans.keys().cloned().collect();
            let mut consumables: Vec<String> = c.profile.consumables.keys().cloned().collect();
            consumables.push("no_such_consumable".into());
            for n in 0..6 {
                let id = format!("a{n}");
                let plan = &plans[rng.below(plans.len() as u64) as usize];
                c.upsert_account(&id, plan, vec![]).await.unwrap();
                if rng.below(3) > 0 {
                    c.adjust(&id, (1 + rng.below(20) as i64) * C / 2, "grant", &key(&format!("g{n}"))).await.unwrap();
                }
                for step in 0..40 {
                    let consumable = &consumables[rng.below(consumables.len() as u64) as usize];
                    // Mostly small, sometimes far past anything the account has.
                    let quantity = match rng.below(10) {
                        0 => 1 + rng.below(10_000_000) as i64,
                        _ => 1 + rng.below(400) as i64,
                    };
                    if rng.below(8) == 0 {
                        let _ = c
                            .reserve(&id, consumable, 1 + rng.below(50) as i64, 600, &key(&format!("h{n}-{step}")))
                            .await;
                    }
                    let before = c.store.load_account(&id).await.unwrap().unwrap();
                    let answer = c.check(&id, consumable, quantity).await.unwrap();
                    assert!(answer.available <= before.balance.get(), "holds are not available");
                    assert_eq!(c.store.load_account(&id).await.unwrap().unwrap(), before, "a check writes nothing");
                    let debit = c.debit(&id, consumable, quantity, &key(&format!("d{n}-{step}"))).await;
                    cases += 1;
                    *seen.entry(format!("{:?}", answer.reason)).or_insert(0) += 1;
                    match (&answer, &debit) {
                        (CheckAnswer { allowed: true, reason: CheckReason::Ok, cost, .. }, Ok(d)) => {
                            assert_eq!(*cost, d.from_credits, "{profile} {consumable} {quantity}")
                        }
                        (CheckAnswer { allowed: false, reason: CheckReason::InsufficientCredits, .. }, Err(e)) => {
                            assert_eq!(crate::http::status_of(e), 402, "{profile} {consumable} {quantity}: {e:?}")
                        }
                        (CheckAnswer { allowed: false, reason: CheckReason::UnknownConsumable, .. }, Err(e)) => {
                            assert_eq!(e.code(), "unknown_consumable")
                        }
                        (CheckAnswer { allowed: false, reason: CheckReason::NotInPlan, .. }, Err(e)) => {
                            assert_eq!(e.code(), "unknown_plan")
                        }
                        other => panic!("{profile} {consumable} {quantity}: check and debit disagree: {other:?}"),
                    }
                }
            }
        }
        assert!(cases >= 900);
        eprintln!("{seen:?}");
        assert!(
            ["Ok", "InsufficientCredits", "UnknownConsumable"].iter().all(|r| seen.get(*r).copied().unwrap_or(0) > 20),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn the_check_fails_closed_and_writes_nothing() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        let before = c.store.load_account("a").await.unwrap();
        // Unknown accounts are 404, malformed quantities 400, one past the maximum 422: never
        // an answer.
        assert_eq!(c.check("nobody", "api_calls", 1).await.unwrap_err().code(), "account_not_found");
        for q in [0, -1] {
            assert_eq!(c.check("a", "api_calls", q).await.unwrap_err().code(), "invalid_request");
        }
        for q in [crate::ledger::MAX_QUANTITY + 1, i64::MAX] {
            assert_eq!(c.check("a", "api_calls", q).await.unwrap_err().code(), "invalid_quantity");
        }
        // Nothing was written by any check.
        c.check("a", "api_calls", 5).await.unwrap();
        assert_eq!(c.store.load_account("a").await.unwrap(), before);
    }

    #[tokio::test]
    async fn a_consumable_the_plan_lacks_is_not_in_plan_as_the_debit_refuses_it() {
        let mut c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.adjust("a", 10 * C, "grant", &key("g")).await.unwrap();
        if let Some(plan) = c.profile.plans.get_mut("free") {
            plan.consumables.remove("sms");
        }
        let answer = c.check("a", "sms", 1).await.unwrap();
        assert_eq!((answer.allowed, answer.reason, answer.cost), (false, CheckReason::NotInPlan, 0));
        assert_eq!(c.debit("a", "sms", 1, &key("d")).await.unwrap_err().code(), "unknown_plan");
    }
}
