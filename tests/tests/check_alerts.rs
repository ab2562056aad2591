//! Check before use and balance alerts against the emulator (rules §15): the served check's
//! answers and its 400s, failing closed (an unreachable store, an unreadable account: 503,
//! never allowed); alert settings and their crossings, each once.

use std::time::Duration;

use serde_json::{json, Value};
use topup_tests::*;

async fn check(w: &World, who: &str, query: &str) -> (u16, Value) {
    w.api(get(&format!("/v1/accounts/acme/credits/check?{query}"), who)).await
}

#[tokio::test]
async fn the_check_answers_without_writing_and_refuses_malformed_requests() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", C).await;
    let before = w.snapshot("acme").await;
    // 1,000 calls are included: allowed at no cost; 1,500 cost $0.50; 3,000 need $2 of $1.
    let (s, b) = check(&w, &service(), "consumable=api_calls&quantity=1000").await;
    assert_eq!((s, b), (200, json!({"allowed": true, "reason": "ok", "cost": 0, "available": C})));
    let (_, b) = check(&w, &person("owner", "acme"), "consumable=api_calls&quantity=1500").await;
    assert_eq!(b, json!({"allowed": true, "reason": "ok", "cost": 500_000, "available": C}));
    let (_, b) = check(&w, &service(), "consumable=api_calls&quantity=3000").await;
    assert_eq!(b, json!({"allowed": false, "reason": "insufficient_credits", "cost": 2 * C, "available": C}));
    let (_, b) = check(&w, &service(), "consumable=teleport&quantity=1").await;
    assert_eq!((b["allowed"].as_bool(), b["reason"].as_str()), (Some(false), Some("unknown_consumable")));
    for q in [
        "consumable=api_calls&quantity=0",
        "consumable=api_calls&quantity=-1",
        "consumable=api_calls&quantity=1.5",
        "consumable=api_calls&quantity=abc",
        "consumable=api_calls",
        "quantity=3",
        "consumable=&quantity=3",
        "consumable=api_calls&quantity=99999999999999999999",
    ] {
        let (s, b) = check(&w, &service(), q).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{q}: {b}");
    }
    // Over the documented maximum: 422 at the edge, as the debit answers (rules §16).
    let (s, b) = check(&w, &service(), "consumable=api_calls&quantity=1000000000001").await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_quantity")), "{b}");
    let (s, _) = check(&w, &service(), "consumable=api_calls&quantity=1000000000000").await;
    assert_eq!(s, 200, "the maximum itself is decided");
    let (s, _) =
        w.api(get("/v1/accounts/other/credits/check?consumable=api_calls&quantity=1", &person("owner", "acme"))).await;
    assert_eq!(s, 403);
    let (s, _) = w.api(get("/v1/accounts/nobody/credits/check?consumable=api_calls&quantity=1", &service())).await;
    assert_eq!(s, 404);
    assert_eq!(w.snapshot("acme").await, before, "a check writes nothing");

    // A hold's reservation is not available: the check refuses what the debit would.
    let (s, _) = w
        .debit(post(
            "/v1/accounts/acme/usage/holds",
            &service(),
            json!({"consumable": "api_calls", "quantity": 1_800, "idempotency_key": "h"}),
        ))
        .await;
    assert_eq!(s, 201);
    let (_, b) = check(&w, &service(), "consumable=api_calls&quantity=300").await;
    assert_eq!(b, json!({"allowed": false, "reason": "insufficient_credits", "cost": 300_000, "available": 200_000}));
    assert_eq!(w.usage("acme", "api_calls", 300).await.0, 402, "as the debit answers");
}

/// Every way the check could fail open answers 503 `check_unavailable` with `Retry-After`.
#[tokio::test]
async fn the_check_fails_closed() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", 100 * C).await;
    // The store cannot be reached.
    let down = aws_config().await.to_builder().endpoint_url("http://127.0.0.1:1").build();
    let blind = topup::live(&w.config, &down);
    let req = get("/v1/accounts/acme/credits/check?consumable=api_calls&quantity=1", &service());
    let resp = credits_api::handle(&w.config, &w.webhooks, &blind, req).await;
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let (s, b) = read(resp);
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("check_unavailable")), "{b}");
    // The account item does not read as an account.
    w.dynamo
        .put_item()
        .table_name(&w.config.table)
        .item("pk", aws_sdk_dynamodb::types::AttributeValue::S("ACCOUNT#broken".into()))
        .item("sk", aws_sdk_dynamodb::types::AttributeValue::S("ACCOUNT".into()))
        .item("balance", aws_sdk_dynamodb::types::AttributeValue::S("lots".into()))
        .send()
        .await
        .expect("put");
    let (s, b) = w.api(get("/v1/accounts/broken/credits/check?consumable=api_calls&quantity=1", &service())).await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("check_unavailable")), "{b}");
    assert!(b.get("allowed").is_none());
}

#[tokio::test]
async fn alerts_are_set_by_billing_roles_and_each_crossing_emits_once() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 20 * C).await;
    let put_alerts = |who: String, body: Value| {
        let w = &w;
        async move { w.api(put("/v1/accounts/acme/credits/alerts", &who, body)).await }
    };
    for (body, status, code) in [
        (json!({"thresholds": [1, 2, 3, 4, 5, 6]}), 422, "too_many_alerts"),
        (json!({"thresholds": [5 * C, 5 * C]}), 422, "invalid_threshold"),
        (json!({"thresholds": [0]}), 422, "invalid_threshold"),
        (json!({"thresholds": [-C]}), 422, "invalid_threshold"),
        (json!({"thresholds": [1.5]}), 400, "invalid_request"),
        (json!({"thresholds": "x"}), 400, "invalid_request"),
        (json!({}), 400, "invalid_request"),
    ] {
        let (s, b) = put_alerts(service(), body.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{body}: {b}");
    }
    let (s, _) = put_alerts(person("member", "acme"), json!({"thresholds": [C]})).await;
    assert_eq!(s, 403);
    let (s, b) = put_alerts(person("owner", "acme"), json!({"thresholds": [10 * C, 15 * C, 2 * C]})).await;
    assert_eq!((s, &b), (200, &json!({"thresholds": [15 * C, 10 * C, 2 * C]})));
    assert_eq!(w.view("acme").await["alerts"], b);

    // $20 → $9: crosses $15 and $10 (and not $2, nor the $5 low threshold): two alerts.
    assert_eq!(w.usage("acme", "api_calls", 11_000).await.0, 200);
    // $9 → $8: nothing new.
    assert_eq!(w.usage("acme", "api_calls", 1_000).await.0, 200);
    let events = observer.drain(Duration::from_secs(2)).await;
    let alerts = of_type(&events, "BalanceAlert");
    let mut crossed: Vec<i64> = alerts.iter().filter_map(|e| e["detail"]["threshold"].as_i64()).collect();
    crossed.sort_unstable();
    assert_eq!(crossed, [10 * C, 15 * C], "{events:?}");
    assert!(alerts.iter().all(|e| e["detail"]["balance"] == 9 * C));
    assert_eq!(distinct(&events), 2);
    // Back above $10 and down through it again: one more, for $10 only.
    w.grant("acme", 3 * C).await; // $11
    assert_eq!(w.usage("acme", "api_calls", 2_000).await.0, 200); // $9
    let again = observer.drain(Duration::from_secs(2)).await;
    let crossed: Vec<i64> =
        of_type(&again, "BalanceAlert").iter().filter_map(|e| e["detail"]["threshold"].as_i64()).collect();
    assert_eq!(crossed, [10 * C]);
    // Removing them: an empty list.
    let (s, b) = put_alerts(service(), json!({"thresholds": []})).await;
    assert_eq!((s, b), (200, json!({"thresholds": []})));
    w.assert_invariants("acme").await;
}
