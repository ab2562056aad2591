//! Every write fits DynamoDB whatever the account's history (rules §16), against moto, which
//! refuses a transaction of more than 100 items and an item over 400 KB as DynamoDB does.

use topup::store::Accounts;
use serde_json::json;
use topup::grants::{NewGrant, MAX_ACTIVE_GRANTS, RETIRES_PER_WRITE};
use topup::money::Micros;
use topup_tests::*;

/// Adds `n` grants of one credit each straight into the account item, as years of small
/// top-ups would leave it (without their ledger entries: these tests check limits, not books).
async fn add_grants(w: &World, id: &str, n: usize) {
    w.edit_account(id, |a| {
        let now = topup::clock::now_ms();
        for i in 0..n {
            a.add_credits(Micros::new(C), NewGrant::promotional(), now + i as i64);
        }
        a.pending = Default::default();
    })
    .await;
}

#[tokio::test]
async fn a_debit_and_a_negative_adjustment_that_empty_hundreds_of_grants_answer() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let allowance = w.included("acme", "api_calls").await;
    assert_eq!(w.usage("acme", "api_calls", allowance).await.0, 200);
    add_grants(&w, "acme", 300).await;
    // 150 credits at 0.001 a call empty 150 grants in one debit: one transaction of well under
    // 100 items (a write retires 16 of them; the rest wait at zero for later writes).
    let (status, body) = w.usage("acme", "api_calls", 150_000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance"], 150 * C, "{body}");
    let (status, body) = w
        .api(post(
            "/v1/accounts/acme/credits/adjustments",
            &service(),
            json!({"amount": -120 * C, "reason": "correction", "idempotency_key": "neg"}),
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = w.api(get("/v1/accounts/acme/credits/grants", &service())).await;
    assert_eq!(status, 200, "{body}");
    let a = w.credits.store.load_account("acme").await.unwrap().unwrap();
    assert_eq!(a.balance.get(), 30 * C);
    assert_eq!(a.active_grants(), 30);
    assert!(a.grants.len() <= 300 - 2 * RETIRES_PER_WRITE, "two writes retired their share: {}", a.grants.len());
}

#[tokio::test]
async fn the_thousandth_grant_is_the_last_and_the_account_item_fits() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    add_grants(&w, "acme", MAX_ACTIVE_GRANTS - 1).await;
    let adjust = |key: &str| {
        post(
            "/v1/accounts/acme/credits/adjustments",
            &service(),
            json!({"amount": C, "reason": "one more", "idempotency_key": key}),
        )
    };
    let (status, body) = w.api(adjust("g1000")).await;
    assert_eq!(status, 201, "the 1,000th: {body}");
    let before = w.snapshot("acme").await;
    let (status, body) = w.api(adjust("g1001")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("too_many_grants")), "{body}");
    assert_eq!(w.snapshot("acme").await, before, "the 1,001st wrote nothing");
    // A purchase may not start either: its payment would be a grant no one could refuse.
    let (status, body) = w.buy(buy_request("acme", json!({"amount": 1000}), Some("buy-1"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("too_many_grants")), "{body}");
    // The account item with 1,000 grants was written and read back by moto (400 KB at most).
    let a = w.credits.store.load_account("acme").await.unwrap().unwrap();
    assert_eq!(a.active_grants(), MAX_ACTIVE_GRANTS);
}
