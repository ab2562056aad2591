//! Who the service is (rules §16): the backend's own OAuth client, by its client id. A person's
//! token that claims `role: "service"` is no credential: every service route answers 401, and
//! nothing stored changes. Staff (`support`, `finance`) read any account and do nothing else.

use serde_json::json;
use topup_tests::*;

/// Every route only the service may call, with a body that the service's token would have
/// had answered 2xx (or at least past authorization).
fn service_routes() -> Vec<(&'static str, &'static str, Option<serde_json::Value>)> {
    vec![
        ("POST", "/v1/accounts/acme/usage", Some(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "k1"}))),
        ("POST", "/v1/accounts/acme/usage/batch", Some(json!({"events": [{"consumable": "api_calls", "quantity": 1, "idempotency_key": "b1"}]}))),
        ("POST", "/v1/accounts/acme/usage/holds", Some(json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "h1"}))),
        ("PUT", "/v1/accounts/acme", Some(json!({"plan": "free"}))),
        ("PUT", "/v1/accounts/mallory", Some(json!({"plan": "free"}))),
        ("POST", "/v1/accounts/acme/credits/adjustments", Some(json!({"amount": 1_000_000_000, "reason": "free money", "idempotency_key": "a1"}))),
        ("PUT", "/v1/accounts/acme/lanes", Some(json!({"lanes": 4}))),
        ("GET", "/v1/reports/revenue", None),
        ("GET", "/v1/webhook-endpoints", None),
        ("POST", "/v1/webhook-endpoints", Some(json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}))),
    ]
}

fn route_request(method: &str, path: &str, bearer: &str, body: &Option<serde_json::Value>) -> lambda_http::Request {
    match body {
        Some(b) => request(method, path, Some(bearer), Some("application/json"), Some(b.to_string())),
        None => request(method, path, Some(bearer), None, None),
    }
}

async fn call(w: &World, path: &str, req: lambda_http::Request) -> (u16, serde_json::Value) {
    if path.contains("/usage") {
        w.debit(req).await
    } else {
        w.api(req).await
    }
}

#[tokio::test]
async fn a_persons_token_claiming_service_is_refused_on_every_service_route() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", 5 * C).await;
    let before = w.snapshot("acme").await;
    let forged = [
        // The role claim alone, as any person's identity provider could be made to issue.
        token(json!({"sub": "mallory", "role": "service"})),
        token(json!({"sub": "mallory", "role": "service", "account_id": "acme"})),
        // Another OAuth client of the same issuer, and `azp` naming one.
        token(json!({"sub": "mallory", "role": "service", "client_id": "the-web-app"})),
        token(json!({"sub": "mallory", "role": "service", "azp": "the-web-app"})),
    ];
    for t in &forged {
        for (method, path, body) in service_routes() {
            let (status, resp) = call(&w, path, route_request(method, path, t, &body)).await;
            assert_eq!(status, 401, "{method} {path} with a forged service token: {resp}");
            assert_eq!(resp["error"]["code"], "unauthenticated", "{method} {path}: {resp}");
        }
    }
    assert_eq!(w.snapshot("acme").await, before, "a refused caller changed nothing");
    let (status, _) = w.api(get("/v1/accounts/mallory/credits", &service())).await;
    assert_eq!(status, 404, "no account was made for the forged token");

    // The service's own client (client_id, or azp) passes the same gate.
    let (status, body) = w.api(get("/v1/reports/revenue?month=2026-01", &service())).await;
    assert_eq!(status, 200, "{body}");
    let azp = token(json!({"sub": "backend", "azp": SERVICE_CLIENT_ID}));
    let (status, body) = w.debit(post(
        "/v1/accounts/acme/usage",
        &azp,
        json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": "real"}),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Staff read every account; of the service's routes they use only what their role holds
/// (rules §19): support nothing here (its adjustment limit is below this one), finance the
/// adjustment and the report; both list the webhook endpoints; only finance pauses
/// auto-recharge.
#[tokio::test]
async fn staff_read_any_account_and_change_only_what_their_role_may() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", 5 * C).await;
    for role in ["support", "finance"] {
        let staff = token(json!({"sub": format!("{role}-1"), "role": role}));
        let (status, view) = w.api(get("/v1/accounts/acme/credits", &staff)).await;
        assert_eq!(status, 200, "{role}: {view}");
        assert_eq!(view["balance"], 5 * C, "{role}: {view}");
        let (status, _) = w.api(get("/v1/accounts/acme/credits/transactions", &staff)).await;
        assert_eq!(status, 200, "{role}");
        let before = w.snapshot("acme").await;
        for (method, path, body) in service_routes() {
            let expected = match (role, method, path) {
                (_, "GET", "/v1/webhook-endpoints") => 200,
                ("finance", "POST", "/v1/accounts/acme/credits/adjustments") => 201,
                // Past the role check: the month is missing.
                ("finance", "GET", "/v1/reports/revenue") => 400,
                _ => 403,
            };
            let (status, resp) = call(&w, path, route_request(method, path, &staff, &body)).await;
            assert_eq!(status, expected, "{role}: {method} {path}: {resp}");
        }
        let (status, _) = w
            .api(put("/v1/accounts/acme/credits/auto-recharge", &staff, json!({"enabled": false})))
            .await;
        assert_eq!(status, if role == "finance" { 200 } else { 403 }, "{role}: pausing auto-recharge");
        if role == "support" {
            assert_eq!(w.snapshot("acme").await, before, "{role} changed nothing");
        }
        // A staff role bound to one account is no role we know.
        let bound = token(json!({"sub": "s", "role": role, "account_id": "acme"}));
        assert_eq!(w.api(get("/v1/accounts/acme/credits", &bound)).await.0, 401, "{role} with an account");
    }
}
