//! Every write fits DynamoDB whatever the account's history (rules §16): a use that empties any
//! number of grants answers like any other (the memory store refuses more than 100 items and an
//! item over 400 KB, as DynamoDB does), the rest retire at later writes, and an account holds at
//! most `MAX_ACTIVE_GRANTS`.

use crate::store::Accounts;
use super::*;
use crate::accounts::GrantTerms;
use crate::engine::memory_credits;
use crate::ids::key;
use crate::money::MICROS_PER_CREDIT as C;

/// `n` grants of one credit each, as years of small top-ups would leave the account, with the
/// month's allowance used.
async fn account_with_grants(
    c: &crate::engine::Credits<
        std::sync::Arc<crate::adapters::memory::MemoryStore>,
        std::sync::Arc<crate::adapters::memory::MemoryBus>,
    >,
    n: usize,
) {
    c.upsert_account("a", "free", vec![]).await.unwrap();
    c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
    for i in 0..n {
        c.adjust("a", C, "top-up", &key(&format!("g{i}"))).await.unwrap();
    }
}

#[tokio::test]
async fn a_debit_that_empties_hundreds_of_grants_answers_and_the_rest_retire_later() {
    let c = memory_credits("usd-overage");
    account_with_grants(&c, 300).await;
    // 250 credits at 0.001 a call: 250 grants emptied by one debit.
    let d = c.debit("a", "api_calls", 250_000, &key("big")).await.unwrap();
    assert_eq!(d.from_credits, 250 * C);
    let a = c.store.load_account("a").await.unwrap().unwrap();
    assert_eq!(a.balance.get(), 50 * C);
    assert_eq!(a.grants.len(), 300 - RETIRES_PER_WRITE, "16 retired with the debit, the rest wait at zero");
    assert_eq!(a.active_grants(), 50);
    // Every later write retires its share, whatever it is.
    for i in 0..((250 - RETIRES_PER_WRITE) / RETIRES_PER_WRITE + 1) {
        c.debit("a", "api_calls", 1, &key(&format!("small{i}"))).await.unwrap();
    }
    let a = c.store.load_account("a").await.unwrap().unwrap();
    assert_eq!(a.grants.len(), 50, "only live grants are left");
    let ledger = c.whole_ledger("a").await.unwrap();
    assert!(crate::reconcile::ledger_differences(&a, &ledger).is_empty());
    let list = c.grants("a").await.unwrap();
    assert_eq!(list.grants.iter().filter(|g| g.status == "used").count(), 250);
}

#[tokio::test]
async fn a_negative_adjustment_a_hold_and_its_settlement_over_hundreds_of_grants_answer() {
    let c = memory_credits("usd-overage");
    account_with_grants(&c, 400).await;
    c.adjust("a", -150 * C, "correction", &key("neg")).await.unwrap();
    let hold = c.reserve("a", "api_calls", 200_000, 600, &key("h")).await.unwrap();
    let settled = c.settle("a", &hold.hold_id, 200_000).await.unwrap();
    assert_eq!(settled.from_credits, 200 * C);
    let a = c.store.load_account("a").await.unwrap().unwrap();
    assert_eq!(a.balance.get(), 50 * C);
    let ledger = c.whole_ledger("a").await.unwrap();
    assert!(crate::reconcile::ledger_differences(&a, &ledger).is_empty());
}

#[tokio::test]
async fn a_batch_that_empties_hundreds_of_grants_applies_every_event() {
    let c = memory_credits("usd-overage");
    account_with_grants(&c, 300).await;
    let events: Vec<crate::batch::UsageEvent> = (0..50)
        .map(|i| crate::batch::UsageEvent {
            consumable: "api_calls".into(),
            quantity: 5_000,
            key: key(&format!("b{i}")),
            entity: None,
        })
        .collect();
    let r = c.debit_batch("a", &events).await.unwrap();
    assert!(r.results.iter().all(|e| e.status == 200), "{r:?}");
    let a = c.store.load_account("a").await.unwrap().unwrap();
    assert_eq!(a.balance.get(), 50 * C);
}

#[tokio::test]
async fn the_thousandth_grant_is_the_last_and_a_refusal_writes_nothing() {
    let c = memory_credits("usd-overage");
    account_with_grants(&c, MAX_ACTIVE_GRANTS - 1).await;
    c.adjust("a", C, "the 1,000th", &key("g1000")).await.unwrap();
    let before = c.store.load_account("a").await.unwrap().unwrap();
    assert_eq!(before.active_grants(), MAX_ACTIVE_GRANTS);
    let e = c.adjust("a", C, "one too many", &key("g1001")).await.unwrap_err();
    assert_eq!(e.code(), "too_many_grants");
    assert!(matches!(e, crate::error::ApiError::Rule(..)), "a 422");
    let terms = GrantTerms { priority: Some(10), ..GrantTerms::default() };
    assert_eq!(c.adjust_with("a", C, "still", &terms, &key("g1001b")).await.unwrap_err().code(), "too_many_grants");
    assert_eq!(c.store.load_account("a").await.unwrap().unwrap(), before, "nothing written");
    // A purchase may not start either (its payment would be a grant no one could refuse).
    let choice = crate::pricing::PurchaseChoice { amount: Some(1_000), package: None, blocks: None };
    assert_eq!(c.record_purchase("a", &choice, None).await.unwrap_err().code(), "too_many_grants");
    // Using one up makes room again.
    c.debit("a", "api_calls", 1_000, &key("use-one")).await.unwrap();
    c.adjust("a", C, "room again", &key("g1001c")).await.unwrap();
    // The account item at the limits (1,000 grants, 100 open holds) stays inside its budget
    // (DynamoDB's 400 KB, with room).
    for i in 0..crate::usage::MAX_OPEN_HOLDS {
        c.reserve("a", "api_calls", 1, 600, &key(&format!("hold{i}"))).await.unwrap();
    }
    let a = c.store.load_account("a").await.unwrap().unwrap();
    assert_eq!(a.holds.len(), crate::usage::MAX_OPEN_HOLDS);
    let item = crate::adapters::dynamo::commit_items(&crate::store::Commit::account_only(a, 0)).unwrap();
    let size = item.iter().find(|i| i.kind == "account").map(|i| i.size).unwrap();
    eprintln!("account item at {MAX_ACTIVE_GRANTS} grants: {size} bytes");
    assert!(size <= crate::account::ACCOUNT_ITEM_BUDGET, "{size} bytes");
}
