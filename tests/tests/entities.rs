//! Budgets for members, projects and keys (rules §17), through the handlers against moto.

use std::sync::Arc;

use serde_json::{json, Value};
use topup_tests::*;

fn usage(entity: &str, quantity: i64, key: &str) -> lambda_http::Request {
    post(
        "/v1/accounts/acme/usage",
        &service(),
        json!({"consumable": "api_calls", "quantity": quantity, "idempotency_key": key, "entity": entity}),
    )
}

/// `acme` with its month's allowance used and 100 credits.
async fn funded(w: &World) {
    w.account("acme", "free").await;
    let allowance = w.included("acme", "api_calls").await;
    assert_eq!(w.usage("acme", "api_calls", allowance).await.0, 200);
    w.grant("acme", 100 * C).await;
}

#[tokio::test]
async fn an_entity_is_set_spent_refused_past_its_limit_listed_and_filtered() {
    let w = World::new("usd-overage").await;
    funded(&w).await;
    // Owners, admins and the service set a budget; a member may not.
    let path = "/v1/accounts/acme/entities/user:bob@acme.example";
    let (s, b) = w.api(put(path, &person("member", "acme"), json!({"monthly_limit": 5 * C}))).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = w.api(put(path, &person("owner", "acme"), json!({"monthly_limit": 5 * C, "name": "Bob"}))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"entity": "user:bob@acme.example", "name": "Bob", "monthly_limit": 5 * C, "spent_this_month": 0, "remaining_this_month": 5 * C})
    );
    let (s, b) = w.api(put("/v1/accounts/acme/entities/bad%20name", &service(), json!({"monthly_limit": 1}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_entity")), "{b}");
    let (s, b) = w.api(put(path, &service(), json!({"monthly_limit": -1}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_monthly_limit")), "{b}");
    // A wrong type, or a number past 64 bits, is a malformed body.
    for bad in [json!("100"), json!(1.5), json!(true), json!(1e20)] {
        let (s, b) = w.api(put(path, &service(), json!({"monthly_limit": bad}))).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{bad}: {b}");
    }

    let (s, b) = w.debit(usage("user:bob@acme.example", 4_000, "b1")).await;
    assert_eq!((s, b["from_credits"].as_i64()), (200, Some(4 * C)), "{b}");
    let before = w.snapshot("acme").await;
    let (s, b) = w.debit(usage("user:bob@acme.example", 2_000, "b2")).await;
    assert_eq!(s, 402, "{b}");
    assert_eq!(b["error"]["code"], "entity_budget_exceeded");
    assert_eq!((b["entity"].as_str(), b["remaining_this_month"].as_i64()), (Some("user:bob@acme.example"), Some(C)));
    assert_eq!(w.snapshot("acme").await, before, "a refusal writes nothing");
    let (s, b) = w.debit(usage("bad name", 1, "b3")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_entity")), "{b}");
    // The check answers as the debit would.
    let (s, b) = w
        .api(get("/v1/accounts/acme/credits/check?consumable=api_calls&quantity=2000&entity=user:bob@acme.example", &service()))
        .await;
    assert_eq!((s, b["allowed"].as_bool(), b["reason"].as_str()), (200, Some(false), Some("entity_budget_exceeded")), "{b}");
    let (s, b) = w.debit(usage("user:bob@acme.example", 1_000, "b4")).await;
    assert_eq!(s, 200, "exactly what remains: {b}");
    // Another entity, never set: spend without a limit.
    assert_eq!(w.debit(usage("team-7", 3_000, "t1")).await.0, 200);

    let (s, list) = w.api(get("/v1/accounts/acme/entities", &person("admin", "acme"))).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        list["entities"],
        json!([
            {"entity": "team-7", "name": null, "monthly_limit": null, "spent_this_month": 3 * C, "remaining_this_month": null},
            {"entity": "user:bob@acme.example", "name": "Bob", "monthly_limit": 5 * C, "spent_this_month": 5 * C, "remaining_this_month": 0},
        ])
    );
    let (s, _) = w.api(get("/v1/accounts/acme/entities/nobody", &service())).await;
    assert_eq!(s, 404);
    // The ledger page's filter, and the CSV's column.
    let (s, page) = w.api(get("/v1/accounts/acme/credits/transactions?entity=user:bob@acme.example", &service())).await;
    assert_eq!(s, 200, "{page}");
    let amounts: Vec<i64> = page["transactions"].as_array().unwrap().iter().map(|t| t["amount"].as_i64().unwrap()).collect();
    assert_eq!(amounts, [-C, -4 * C]);
    assert!(page["transactions"].as_array().unwrap().iter().all(|t| t["entity"] == "user:bob@acme.example"));
    let csv = w.credits.transactions_csv("acme").await.expect("csv");
    assert!(csv.starts_with("id,kind,amount,balance_after,created_at,description,entity\n"), "{csv}");
    // Reconciliation: each entity's spend is its entries'.
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn a_batch_and_a_hold_count_against_the_entity() {
    let w = World::new("usd-overage").await;
    funded(&w).await;
    let (s, _) = w.api(put("/v1/accounts/acme/entities/k1", &service(), json!({"monthly_limit": 3 * C}))).await;
    assert_eq!(s, 200);
    let events = json!({"events": [
        {"consumable": "api_calls", "quantity": 2_000, "idempotency_key": "e1", "entity": "k1"},
        {"consumable": "api_calls", "quantity": 2_000, "idempotency_key": "e2", "entity": "k1"},
        {"consumable": "api_calls", "quantity": 1, "idempotency_key": "e3", "entity": "not ok"},
    ]});
    let (s, b) = w.debit(post("/v1/accounts/acme/usage/batch", &service(), events)).await;
    assert_eq!(s, 200, "{b}");
    let statuses: Vec<i64> = b["results"].as_array().unwrap().iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [200, 402, 422], "{b}");
    assert_eq!(b["results"][1]["error"]["code"], "entity_budget_exceeded");
    let hold = json!({"consumable": "api_calls", "quantity": 1_000, "idempotency_key": "h1", "entity": "k1"});
    let (s, h) = w.debit(post("/v1/accounts/acme/usage/holds", &service(), hold)).await;
    assert_eq!(s, 201, "{h}");
    let (_, v) = w.api(get("/v1/accounts/acme/entities/k1", &service())).await;
    assert_eq!((v["spent_this_month"].as_i64(), v["remaining_this_month"].as_i64()), (Some(3 * C), Some(0)), "{v}");
    let settle = format!("/v1/accounts/acme/usage/holds/{}/settle", h["hold_id"].as_str().unwrap());
    let (s, b) = w.debit(post(&settle, &service(), json!({"quantity": 500}))).await;
    assert_eq!(s, 200, "{b}");
    let (_, v) = w.api(get("/v1/accounts/acme/entities/k1", &service())).await;
    assert_eq!(v["spent_this_month"].as_i64(), Some(2 * C + C / 2), "{v}");
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

/// A call that runs past its hold bills what remains of its entity's budget, and no more: the
/// rest is unbilled, as when the balance runs out (rules §6, §17).
#[tokio::test]
async fn a_settle_beyond_its_hold_stops_at_the_entity_limit() {
    let w = World::new("usd-overage").await;
    funded(&w).await;
    let (s, _) = w.api(put("/v1/accounts/acme/entities/k2", &service(), json!({"monthly_limit": 5 * C}))).await;
    assert_eq!(s, 200);
    let hold = json!({"consumable": "api_calls", "quantity": 1_000, "idempotency_key": "h2", "entity": "k2"});
    let (s, h) = w.debit(post("/v1/accounts/acme/usage/holds", &service(), hold)).await;
    assert_eq!(s, 201, "{h}");
    let settle = format!("/v1/accounts/acme/usage/holds/{}/settle", h["hold_id"].as_str().unwrap_or_default());
    let (s, b) = w.debit(post(&settle, &service(), json!({"quantity": 9_000}))).await;
    assert_eq!(s, 200, "{b}");
    // 1,000 from the hold, 4,000 more that the budget leaves, 4,000 unbilled.
    assert_eq!(
        (b["from_hold"].as_i64(), b["from_credits"].as_i64(), b["unbilled"].as_i64(), b["balance"].as_i64()),
        (Some(1_000), Some(5 * C), Some(4_000), Some(95 * C)),
        "{b}"
    );
    let (_, v) = w.api(get("/v1/accounts/acme/entities/k2", &service())).await;
    assert_eq!((v["spent_this_month"].as_i64(), v["remaining_this_month"].as_i64()), (Some(5 * C), Some(0)), "{v}");
    w.assert_invariants("acme").await;
}

/// Debits of one limited entity from several instances at once, against DynamoDB's semantics:
/// the month never passes the limit, and every refusal is a real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_debits_of_one_entity_never_pass_its_limit() {
    let w = Arc::new(World::new("usd-overage").await);
    funded(&w).await;
    let (s, _) = w.api(put("/v1/accounts/acme/entities/hot", &service(), json!({"monthly_limit": 10 * C}))).await;
    assert_eq!(s, 200);
    let instances: Vec<Arc<LiveCredits>> = (0..4).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = instances[i % instances.len()].clone();
        tasks.push(tokio::spawn(async move {
            c.debit_as("acme", "api_calls", 1_000, &key(&format!("c{i}")), Some("hot")).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) if e.code() == "entity_budget_exceeded" => refused += 1,
            // Contention past the write budget is a retryable answer, not a decision.
            Err(e) => assert_eq!(e.code(), "account_busy", "{e:?}"),
        }
    }
    let (_, v): (u16, Value) = w.api(get("/v1/accounts/acme/entities/hot", &service())).await;
    assert_eq!(v["spent_this_month"].as_i64(), Some(ok * C), "{v}");
    assert!(ok <= 10, "{ok} debits of 1 credit passed a limit of 10");
    // Each debit is one credit: a refusal is real only once the month is at its limit.
    assert!(refused == 0 || ok == 10, "{refused} refused with only {ok} credits spent of 10");
    assert!(ok > 0);
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}
