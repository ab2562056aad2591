//! Bad input (rules §5, §11): each is a 4xx with a stable code, and nothing stored changes.

use serde_json::json;
use topup_tests::*;

const USAGE: &str = "/v1/accounts/acme/usage";

#[tokio::test]
async fn every_bad_request_is_refused_with_its_code_and_changes_nothing() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", 5 * C).await;
    let svc = service();
    let body = |v: serde_json::Value| Some(v.to_string());
    let json_ct = Some("application/json");
    let long_id = "a".repeat(65);
    let cases: Vec<(&str, lambda_http::Request, u16, &str)> = vec![
        (
            "malformed json",
            request("POST", USAGE, Some(&svc), json_ct, Some("{\"consumable\":".into())),
            400,
            "invalid_request",
        ),
        (
            "malformed json with no content type",
            request("POST", USAGE, Some(&svc), None, Some("{\"consumable\":".into())),
            400,
            "invalid_request",
        ),
        ("not an object", request("POST", USAGE, Some(&svc), json_ct, Some("[1,2]".into())), 400, "invalid_request"),
        ("empty body", request("POST", USAGE, Some(&svc), json_ct, None), 400, "invalid_request"),
        (
            "missing quantity",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "idempotency_key": "k"})),
            ),
            400,
            "invalid_request",
        ),
        (
            "missing key",
            request("POST", USAGE, Some(&svc), json_ct, body(json!({"consumable": "api_calls", "quantity": 1}))),
            400,
            "invalid_request",
        ),
        (
            "empty key",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": ""})),
            ),
            400,
            "invalid_request",
        ),
        (
            "overlong key",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k".repeat(256)})),
            ),
            400,
            "invalid_request",
        ),
        (
            "string quantity",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": "5", "idempotency_key": "k"})),
            ),
            400,
            "invalid_request",
        ),
        (
            "fractional quantity",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                Some(r#"{"consumable":"api_calls","quantity":1.5,"idempotency_key":"k"}"#.into()),
            ),
            400,
            "invalid_request",
        ),
        (
            "quantity beyond i64",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                Some(r#"{"consumable":"api_calls","quantity":9223372036854775808,"idempotency_key":"k"}"#.into()),
            ),
            400,
            "invalid_request",
        ),
        (
            "a price from the client",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k", "price": 0})),
            ),
            400,
            "invalid_request",
        ),
        (
            "zero quantity",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 0, "idempotency_key": "k"})),
            ),
            422,
            "invalid_quantity",
        ),
        (
            "negative quantity",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": -5, "idempotency_key": "k"})),
            ),
            422,
            "invalid_quantity",
        ),
        (
            "huge quantity",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": i64::MAX, "idempotency_key": "k"})),
            ),
            422,
            "invalid_quantity",
        ),
        (
            "unknown consumable",
            request(
                "POST",
                USAGE,
                Some(&svc),
                json_ct,
                body(json!({"consumable": "gold", "quantity": 1, "idempotency_key": "k"})),
            ),
            422,
            "unknown_consumable",
        ),
        (
            "wrong content type",
            request(
                "POST",
                USAGE,
                Some(&svc),
                Some("text/plain"),
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k"})),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "no token",
            request(
                "POST",
                USAGE,
                None,
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k"})),
            ),
            401,
            "unauthenticated",
        ),
        (
            "bad token",
            request(
                "POST",
                USAGE,
                Some("not.a.jwt"),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k"})),
            ),
            401,
            "unauthenticated",
        ),
        (
            "a person on a service route",
            request(
                "POST",
                USAGE,
                Some(&person("owner", "acme")),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k"})),
            ),
            403,
            "forbidden",
        ),
        (
            "another account's service token",
            request(
                "POST",
                USAGE,
                Some(&token(json!({"sub": "s", "role": "service", "client_id": SERVICE_CLIENT_ID, "account_id": "other"}))),
                json_ct,
                body(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k"})),
            ),
            403,
            "forbidden",
        ),
        ("wrong method", request("GET", USAGE, Some(&svc), None, None), 405, "method_not_allowed"),
        (
            "settle unknown hold",
            request(
                "POST",
                "/v1/accounts/acme/usage/holds/hold_nope/settle",
                Some(&svc),
                json_ct,
                body(json!({"quantity": 1})),
            ),
            404,
            "hold_not_found",
        ),
        (
            "settle negative",
            request(
                "POST",
                "/v1/accounts/acme/usage/holds/hold_nope/settle",
                Some(&svc),
                json_ct,
                body(json!({"quantity": -1})),
            ),
            422,
            "invalid_quantity",
        ),
    ];
    for (name, req, status, code) in cases {
        let before = w.snapshot("acme").await;
        let (s, b) = w.debit(req).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{name}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && !message.contains("Error {") && !message.contains("panicked"),
            "{name}: {message}"
        );
        assert_eq!(before, w.snapshot("acme").await, "{name} changed state");
    }

    // Unknown account and overlong ids.
    let (s, b) = w.usage("ghost", "api_calls", 1).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("account_not_found")));
    assert!(w.snapshot("ghost").await.is_empty());
    let (s, b) = w
        .debit(post(
            &format!("/v1/accounts/{long_id}/usage"),
            &svc,
            json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k"}),
        ))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")));
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn bad_account_and_adjustment_input_is_refused() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", 2 * C).await;
    let svc = service();
    let adj = "/v1/accounts/acme/credits/adjustments";
    let cases = vec![
        (
            "unknown plan",
            put("/v1/accounts/acme", &svc, json!({"plan": "gold", "billing_contacts": []})),
            422,
            "unknown_plan",
        ),
        ("missing contacts", put("/v1/accounts/acme", &svc, json!({"plan": "pro"})), 400, "invalid_request"),
        (
            "bad email",
            put("/v1/accounts/acme", &svc, json!({"plan": "pro", "billing_contacts": [{"email": "nope"}]})),
            422,
            "invalid_email",
        ),
        (
            "two addresses in one",
            put("/v1/accounts/acme", &svc, json!({"plan": "pro", "billing_contacts": [{"email": "a@b.co,c@x.io"}]})),
            422,
            "invalid_email",
        ),
        (
            "a display name",
            put("/v1/accounts/acme", &svc, json!({"plan": "pro", "billing_contacts": [{"email": "Ann <a@b.co>"}]})),
            422,
            "invalid_email",
        ),
        (
            "a phone with a letter",
            put(
                "/v1/accounts/acme",
                &svc,
                json!({"plan": "pro", "billing_contacts": [{"email": "a@b.co", "phone": "+1555010x1"}]}),
            ),
            422,
            "invalid_phone",
        ),
        (
            "bad phone",
            put(
                "/v1/accounts/acme",
                &svc,
                json!({"plan": "pro", "billing_contacts": [{"email": "a@b.co", "phone": "555"}]}),
            ),
            422,
            "invalid_phone",
        ),
        (
            "sms without phone",
            put(
                "/v1/accounts/acme",
                &svc,
                json!({"plan": "pro", "billing_contacts": [{"email": "a@b.co", "sms_opt_in": true}]}),
            ),
            422,
            "invalid_phone",
        ),
        (
            "person creates accounts",
            put("/v1/accounts/acme", &person("owner", "acme"), json!({"plan": "pro", "billing_contacts": []})),
            403,
            "forbidden",
        ),
        (
            "zero adjustment",
            post(adj, &svc, json!({"amount": 0, "reason": "x", "idempotency_key": "a0"})),
            422,
            "invalid_amount",
        ),
        (
            "below zero",
            post(adj, &svc, json!({"amount": -3 * C, "reason": "x", "idempotency_key": "a1"})),
            422,
            "insufficient_balance",
        ),
        (
            "no reason",
            post(adj, &svc, json!({"amount": 5, "reason": " ", "idempotency_key": "a2"})),
            400,
            "invalid_request",
        ),
        (
            "admin adjusts",
            post(adj, &person("admin", "acme"), json!({"amount": 5, "reason": "x", "idempotency_key": "a3"})),
            403,
            "forbidden",
        ),
        ("bad cursor", get("/v1/accounts/acme/credits/transactions?cursor=zzz", &svc), 400, "invalid_request"),
        ("bad limit", get("/v1/accounts/acme/credits/transactions?limit=0", &svc), 400, "invalid_request"),
        ("unknown route", get("/v1/accounts/acme/credits/nope", &svc), 404, "route_not_found"),
    ];
    for (name, req, status, code) in cases {
        let before = w.snapshot("acme").await;
        let (s, b) = w.api(req).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{name}: {b}");
        assert_eq!(before, w.snapshot("acme").await, "{name} changed state");
    }
    let (s, b) = w.api(get("/v1/accounts/ghost/credits", &svc)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("account_not_found")));
    w.assert_invariants("acme").await;
}

/// Every amount, charge and quantity has a documented maximum (rules §16): the largest is
/// accepted, one more is 422 with its code and writes nothing.
#[tokio::test]
async fn amounts_charges_and_quantities_are_bounded_at_their_edge() {
    use topup::accounts::{MAX_ADJUSTMENT, MAX_CREDITS};
    use topup::alerts::MAX_THRESHOLD;
    use topup::ledger::MAX_QUANTITY;
    use topup::pricing::MAX_CHARGE_CENTS;
    use topup::recharge::MAX_MONTHLY_SPEND_CENTS;

    let w = World::new("org-runs").await;
    let id = unique("edge");
    w.account(&id, "pro").await;
    w.usage(&id, "runs", w.included(&id, "runs").await).await;
    let svc = service();
    let adj = format!("/v1/accounts/{id}/credits/adjustments");
    let usage = format!("/v1/accounts/{id}/usage");
    let ar = format!("/v1/accounts/{id}/credits/auto-recharge");
    let paid = |cents: i64, k: &str| {
        json!({"amount": C, "reason": "paid", "idempotency_key": k, "category": "paid",
               "charge": {"amount": cents, "currency": "usd"}})
    };
    // Each refused request, and the function that answers it.
    let (api, debit, buy) = ("credits-api", "debit", "purchase");
    let refused = vec![
        (
            "an adjustment past the largest",
            api,
            post(&adj, &svc, json!({"amount": MAX_ADJUSTMENT + 1, "reason": "x", "idempotency_key": "a1"})),
            "invalid_amount",
        ),
        (
            "a negative adjustment past the largest",
            api,
            post(&adj, &svc, json!({"amount": -MAX_ADJUSTMENT - 1, "reason": "x", "idempotency_key": "a2"})),
            "invalid_amount",
        ),
        (
            "a paid adjustment's charge past one payment",
            api,
            post(&adj, &svc, paid(MAX_CHARGE_CENTS + 1, "a3")),
            "invalid_amount",
        ),
        (
            "a quantity past the largest",
            debit,
            post(&usage, &svc, json!({"consumable": "runs", "quantity": MAX_QUANTITY + 1, "idempotency_key": "u1"})),
            "invalid_quantity",
        ),
        (
            "a hold past the largest",
            debit,
            post(
                &format!("{usage}/holds"),
                &svc,
                json!({"consumable": "runs", "quantity": MAX_QUANTITY + 1, "idempotency_key": "h1"}),
            ),
            "invalid_quantity",
        ),
        (
            "an auto-recharge amount past the largest",
            api,
            put(&ar, &svc, json!({"enabled": false, "amount": MAX_CREDITS + 1})),
            "amount_out_of_range",
        ),
        (
            "an auto-recharge threshold past the largest",
            api,
            put(&ar, &svc, json!({"enabled": false, "threshold": MAX_CREDITS + 1})),
            "threshold_out_of_range",
        ),
        (
            "a monthly spending limit past the largest",
            api,
            put(&ar, &svc, json!({"enabled": false, "monthly_spend_max": MAX_MONTHLY_SPEND_CENTS + 1})),
            "invalid_monthly_spend_max",
        ),
        (
            "an alert past the largest",
            api,
            put(&format!("/v1/accounts/{id}/credits/alerts"), &svc, json!({"thresholds": [MAX_THRESHOLD + 1]})),
            "invalid_threshold",
        ),
        (
            "a purchase past one payment",
            buy,
            buy_request(&id, json!({"amount": MAX_CHARGE_CENTS + 1}), None),
            "amount_out_of_range",
        ),
    ];
    for (name, function, req, code) in refused {
        let before = w.snapshot(&id).await;
        let (s, b) = match function {
            "debit" => w.debit(req).await,
            "purchase" => w.buy(req).await,
            _ => w.api(req).await,
        };
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some(code)), "{name}: {b}");
        assert_eq!(before, w.snapshot(&id).await, "{name} changed state");
    }
    let batch = json!({"events": [{"consumable": "runs", "quantity": MAX_QUANTITY + 1, "idempotency_key": "b1"}]});
    let before = w.snapshot(&id).await;
    let (s, b) = w.debit(post(&format!("{usage}/batch"), &svc, batch)).await;
    assert_eq!((s, b["results"][0]["status"].as_i64()), (200, Some(422)), "{b}");
    assert_eq!(b["results"][0]["error"]["code"], "invalid_quantity", "{b}");
    assert_eq!(before, w.snapshot(&id).await, "a refused batch event changed state");

    // The largest of each is accepted: 10^12 runs at 0.01 credit need ten of the largest
    // adjustments.
    for i in 0..10 {
        let (s, b) = w
            .api(post(
                &adj,
                &svc,
                json!({"amount": MAX_ADJUSTMENT, "reason": "x", "idempotency_key": format!("max{i}")}),
            ))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = w.api(post(&adj, &svc, paid(MAX_CHARGE_CENTS, "paid_max"))).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = w.usage(&id, "runs", MAX_QUANTITY).await;
    assert_eq!((s, b["from_credits"].as_i64()), (200, Some(MAX_QUANTITY * 10_000)), "{b}");
    let (s, b) = w
        .api(put(&ar, &svc, json!({"enabled": false, "threshold": 0, "monthly_spend_max": MAX_MONTHLY_SPEND_CENTS})))
        .await;
    assert_eq!((s, b["monthly_spend_max"].as_i64()), (200, Some(MAX_MONTHLY_SPEND_CENTS)), "{b}");
    let (s, b) =
        w.api(put(&format!("/v1/accounts/{id}/credits/alerts"), &svc, json!({"thresholds": [MAX_THRESHOLD]}))).await;
    assert_eq!(s, 200, "{b}");
    let hold = json!({"consumable": "runs", "quantity": 1, "idempotency_key": "h2"});
    let (s, h) = w.debit(post(&format!("{usage}/holds"), &svc, hold)).await;
    assert_eq!(s, 201, "{h}");
    let settle = format!("{usage}/holds/{}/settle", h["hold_id"].as_str().unwrap_or_default());
    let before = w.snapshot(&id).await;
    let (s, b) = w.debit(post(&settle, &svc, json!({"quantity": MAX_QUANTITY + 1}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_quantity")), "{b}");
    assert_eq!(before, w.snapshot(&id).await, "a refused settle changed state");
    let (s, b) = w.debit(post(&settle, &svc, json!({"quantity": MAX_QUANTITY}))).await;
    assert_eq!((s, b["from_hold"].as_i64()), (200, Some(1)), "{b}");
    w.assert_invariants(&id).await;
}
