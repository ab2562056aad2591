//! Buying credits end to end against the local Stripe (rules §5, §7, §10.2, §10.8): the
//! `purchase` function opens a real Checkout Session, the emulator plays the customer, and the
//! `webhook` function credits exactly once from signed events, whatever their number and order.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use topup::purchases::{FAILED_MESSAGE, PROCESSING_MESSAGE};
use topup_tests::*;

#[tokio::test]
async fn a_purchase_opens_a_priced_checkout_session_once_per_key() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let (s, first) = w.buy(buy_request("acme", json!({}), Some("order-1"))).await;
    assert_eq!(s, 201, "{first}");
    assert_eq!((first["status"].as_str(), first["charge"]["amount"].as_i64()), (Some("pending"), Some(1000)));
    assert_eq!(first["credits"], 10 * C, "the default $10 buys 10 credits");
    assert_eq!(first["message"], Value::Null);
    let url = first["url"].as_str().expect("hosted checkout url");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let cs = first["checkout_session_id"].as_str().expect("session id");
    let sess = session(cs).await;
    assert_eq!(sess["amount_total"], 1000, "Stripe charges the server's price");
    assert_eq!(sess["client_reference_id"], first["purchase_id"]);
    assert_eq!(sess["metadata"]["topup_account_id"], "acme");
    assert_eq!(sess["metadata"]["topup_purchase_id"], first["purchase_id"]);
    let customer = sess["customer"].as_str().expect("customer").to_string();
    // A retry with the key: the same purchase and the same session, not a second one.
    let (s, again) = w.buy(buy_request("acme", json!({}), Some("order-1"))).await;
    assert_eq!(
        (s, &again["purchase_id"], &again["checkout_session_id"]),
        (201, &first["purchase_id"], &first["checkout_session_id"])
    );
    // Another purchase reuses the account's customer.
    let other = open_purchase(&w, "acme", json!({"amount": 2500})).await;
    let other_session = session(other["checkout_session_id"].as_str().expect("id")).await;
    assert_eq!(other_session["customer"].as_str(), Some(customer.as_str()));
    assert_eq!((other["charge"]["amount"].as_i64(), other["credits"].as_i64()), (Some(2500), Some(25 * C)));
    // The key with another body: 409; out of range: 422; nothing is credited by opening.
    let (s, b) = w.buy(buy_request("acme", json!({"amount": 2000}), Some("order-1"))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    let (s, b) = w.buy(buy_request("acme", json!({"amount": 100_001}), None)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("amount_out_of_range")));
    assert_eq!(w.view("acme").await["balance"], 0);
}

/// Embedded Checkout: the purchase answers the session's `client_secret` for the billing page,
/// and the session returns to the configured URL.
#[tokio::test]
async fn embedded_checkout_answers_a_client_secret() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let ui = topup::payments::CheckoutUi::Embedded {
        return_url: "https://app.example.com/billing?cs={CHECKOUT_SESSION_ID}".into(),
    };
    let checkout = purchase::Checkout { payments: &stripe_payments(), ui: &ui };
    let req = buy_request("acme", json!({"amount": 1200}), None);
    let (s, b) = read(purchase::handle(&w.config, &w.credits, &checkout, req).await);
    assert_eq!(s, 201, "{b}");
    let cs = b["checkout_session_id"].as_str().expect("id");
    assert!(b["client_secret"].as_str().is_some_and(|c| c.starts_with(cs)), "{b}");
    assert_eq!(b["url"], Value::Null);
    let sess = session(cs).await;
    assert_eq!(
        (sess["ui_mode"].as_str(), sess["return_url"].as_str()),
        (Some("embedded_page"), Some("https://app.example.com/billing?cs={CHECKOUT_SESSION_ID}"))
    );
}

/// Each profile's way of buying reaches Stripe at the server's price (rules §3, §11).
#[tokio::test]
async fn every_profile_prices_its_purchases_on_the_server() {
    let cases: [(&str, Value, i64, i64); 5] = [
        ("request-packs", json!({"package": "pack_100"}), 10_000, 2500 * C),
        ("request-packs", json!({"amount": 4000}), 4000, 1000 * C),
        ("org-runs", json!({"amount": 700}), 700, 7 * C),
        ("voice-minutes", json!({"blocks": 3}), 8400, 300 * C),
        ("usd-overage", json!({"amount": 500}), 500, 5 * C),
    ];
    for (profile, body, charge, credits) in cases {
        let w = World::new(profile).await;
        w.account("t", "free").await;
        let b = open_purchase(&w, "t", body.clone()).await;
        assert_eq!(
            (b["charge"]["amount"].as_i64(), b["credits"].as_i64()),
            (Some(charge), Some(credits)),
            "{profile} {body}"
        );
        let sess = session(b["checkout_session_id"].as_str().expect("id")).await;
        assert_eq!(sess["amount_total"].as_i64(), Some(charge), "{profile} {body}");
    }
    let refused: [(&str, Value, u16, &str); 5] = [
        ("request-packs", json!({"package": "pack_7"}), 422, "unknown_package"),
        ("org-runs", json!({"amount": 450}), 422, "amount_out_of_range"),
        ("voice-minutes", json!({"blocks": 101}), 422, "blocks_out_of_range"),
        ("voice-minutes", json!({"blocks": 0}), 422, "blocks_out_of_range"),
        ("usd-overage", json!({"amount": "10"}), 400, "invalid_request"),
    ];
    for (profile, body, status, code) in refused {
        let w = World::new(profile).await;
        w.account("t", "free").await;
        let before = w.snapshot("t").await;
        let (s, b) = w.buy(buy_request("t", body.clone(), None)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{profile} {body}: {b}");
        assert_eq!(w.snapshot("t").await, before, "a refused purchase records nothing");
    }
}

#[tokio::test]
async fn only_billing_roles_of_the_account_buy_and_prices_come_from_the_server() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "free").await;
    w.account("other", "free").await;
    let before = w.snapshot("clinic").await;
    let body = json!({"blocks": 1});
    for (token, path) in [
        (person("editor", "clinic"), purchases("clinic")),
        (person("admin", "other"), purchases("clinic")),
        (person("editor", "clinic"), "/v1/accounts/clinic/payment-method/setup".to_string()),
    ] {
        let (s, b) = w.buy(post(&path, &token, body.clone())).await;
        assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "{path}: {b}");
    }
    for forged in [
        json!({"blocks": 1, "price": 1}),
        json!({"blocks": 1, "credits": 1_000_000_000}),
        json!({"charge": {"amount": 1}}),
    ] {
        let (s, b) = w.buy(buy_request("clinic", forged.clone(), None)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{forged}: {b}");
    }
    let (s, _) = w.buy(put(&purchases("clinic"), &person("admin", "clinic"), json!({}))).await;
    assert_eq!(s, 405);
    assert_eq!(w.snapshot("clinic").await, before, "nothing was recorded");
}

/// rules §10.2: the same `checkout.session.completed` 20 times at once across two instances,
/// with `async_payment_succeeded` for the same session before and among them: one credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_deliveries_and_an_out_of_order_one_credit_once() {
    let w = Arc::new(World::new("request-packs").await);
    let observer = w.observe_bus().await;
    w.account("team", "free").await;
    let b = open_purchase(&w, "team", json!({"package": "pack_20"})).await;
    let cs = b["checkout_session_id"].as_str().expect("id").to_string();
    let paid = pay(&cs, &[]).await;
    assert_eq!((paid["status"].as_str(), paid["payment_status"].as_str()), (Some("complete"), Some("paid")));
    assert!(paid["payment_intent"].as_str().is_some_and(|p| p.starts_with("pi_")));
    // Out of order: the async event first (it can be, for a session that was paid at once).
    let (s, r) = w.deliver(&stripe_event("checkout.session.async_payment_succeeded", paid.clone())).await;
    assert_eq!(s, 200, "{r}");
    let completed = stripe_event("checkout.session.completed", paid.clone());
    // A second Lambda instance: its own cache of the account.
    let second = Arc::new(w.another_instance());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (w, second, event) = (w.clone(), second.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                w.deliver(&event).await
            } else {
                w.deliver_to(&second, &event).await
            }
        }));
    }
    for t in tasks {
        let (s, r) = t.await.expect("task");
        assert_eq!(s, 200, "{r}");
    }
    let v = w.view("team").await;
    assert_eq!((v["balance"].as_i64(), v["lifetime_added"].as_i64()), (Some(500 * C), Some(500 * C)));
    let ledger = w.ledger("team").await;
    assert_eq!(ledger.len(), 1, "one ledger entry");
    let (s, status) = w
        .buy(get(
            &format!("{}/{}", purchases("team"), b["purchase_id"].as_str().expect("id")),
            &person("owner", "team"),
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!((status["status"].as_str(), status["balance"].as_i64()), (Some("succeeded"), Some(500 * C)));
    assert_eq!(status["transaction_id"].as_str(), Some(ledger[0].id.as_str()));
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "CreditsAdded").len(), 1, "one CreditsAdded");
    w.assert_invariants("team").await;
}

#[tokio::test]
async fn a_bank_debit_is_processing_then_fails_without_credits() {
    let w = World::new("org-runs").await;
    let observer = w.observe_bus().await;
    w.account("org", "free").await;
    let b = open_purchase(&w, "org", json!({"amount": 2000})).await;
    let cs = b["checkout_session_id"].as_str().expect("id").to_string();
    let path = format!("{}/{}", purchases("org"), b["purchase_id"].as_str().expect("id"));
    let unpaid = pay(&cs, &[("delayed", "true")]).await;
    assert_eq!((unpaid["status"].as_str(), unpaid["payment_status"].as_str()), (Some("complete"), Some("unpaid")));
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", unpaid.clone())).await;
    assert_eq!(s, 200, "{r}");
    let (_, status) = w.buy(get(&path, &person("admin", "org"))).await;
    assert_eq!((status["status"].as_str(), status["message"].as_str()), (Some("processing"), Some(PROCESSING_MESSAGE)));
    assert_eq!(w.view("org").await["balance"], 0);
    let (s, _) =
        local_stripe("POST", &format!("/_config/checkout/sessions/{cs}/settle"), &[("outcome", "failed")]).await;
    assert_eq!(s, 200);
    let failed = session(&cs).await;
    for _ in 0..3 {
        let (s, r) = w.deliver(&stripe_event("checkout.session.async_payment_failed", failed.clone())).await;
        assert_eq!(s, 200, "{r}");
    }
    // A late duplicate of the first delivery does not move it back.
    w.deliver(&stripe_event("checkout.session.completed", unpaid)).await;
    let (_, status) = w.buy(get(&path, &person("admin", "org"))).await;
    assert_eq!((status["status"].as_str(), status["message"].as_str()), (Some("failed"), Some(FAILED_MESSAGE)));
    assert_eq!(w.view("org").await["balance"], 0, "never credited");
    assert!(w.ledger("org").await.is_empty());
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "PurchaseProcessing").len(), 1);
    let failed_events = of_type(&events, "PurchaseFailed");
    assert_eq!(failed_events.len(), 1, "told once");
    assert_eq!(failed_events[0]["detail"]["message"], FAILED_MESSAGE);
    assert!(of_type(&events, "CreditsAdded").is_empty());
}

#[tokio::test]
async fn a_bank_debit_that_settles_credits_and_says_so() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    let b = open_purchase(&w, "acme", json!({"amount": 1500})).await;
    let cs = b["checkout_session_id"].as_str().expect("id").to_string();
    let unpaid = pay(&cs, &[("delayed", "true")]).await;
    w.deliver(&stripe_event("checkout.session.completed", unpaid)).await;
    local_stripe("POST", &format!("/_config/checkout/sessions/{cs}/settle"), &[("outcome", "succeeded")]).await;
    let settled = session(&cs).await;
    assert_eq!(settled["payment_status"], "paid");
    let (s, r) = w.deliver(&stripe_event("checkout.session.async_payment_succeeded", settled)).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("succeeded")), "{r}");
    assert_eq!(w.view("acme").await["balance"], 15 * C);
    let events = observer.drain(Duration::from_secs(1)).await;
    let added = of_type(&events, "CreditsAdded");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["detail"]["settled_after_processing"], true, "the email promised by seed 000");
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn an_expired_session_never_credits() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let b = open_purchase(&w, "acme", json!({})).await;
    let cs = b["checkout_session_id"].as_str().expect("id").to_string();
    let (s, expired) = local_stripe("POST", &format!("/v1/checkout/sessions/{cs}/expire"), &[]).await;
    assert_eq!((s, expired["status"].as_str()), (200, Some("expired")));
    let (s, r) = w.deliver(&stripe_event("checkout.session.expired", expired)).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("expired")));
    let (s, _) = local_stripe("POST", &format!("/_config/checkout/sessions/{cs}/pay"), &[]).await;
    assert_eq!(s, 400, "an expired session cannot be paid");
    assert_eq!(w.view("acme").await["balance"], 0);
}

/// rules §7: each refused delivery is 400 and changes nothing; an unknown type is 200.
#[tokio::test]
async fn webhook_refuses_what_stripe_did_not_sign() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let b = open_purchase(&w, "acme", json!({})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    let body = stripe_event("checkout.session.completed", paid).to_string();
    let before = w.snapshot("acme").await;
    let now = now_s();
    let no_header = request("POST", "/stripe/webhook", None, Some("application/json"), Some(body.clone()));
    let mut with_junk = signed_event(&body, WEBHOOK_SECRET, now);
    with_junk.headers_mut().insert("stripe-signature", "v1=zz,t=x".parse().expect("header"));
    let altered = {
        let mut r = signed_event(&body, WEBHOOK_SECRET, now);
        *r.body_mut() = lambda_http::Body::Text(body.replace("\"paid\"", "\"paid\" "));
        r
    };
    let cases = [
        ("no header", no_header, "missing_signature"),
        ("junk signature", with_junk, "invalid_signature"),
        ("wrong secret", signed_event(&body, "whsec_someone_else", now), "invalid_signature"),
        ("older than 300 s", signed_event(&body, WEBHOOK_SECRET, now - 301), "signature_expired"),
        ("body altered after signing", altered, "invalid_signature"),
        ("signed malformed JSON", signed_event("{\"id\": \"evt_1\", \"type\": ", WEBHOOK_SECRET, now), "invalid_event"),
        ("signed JSON that is no event", signed_event("[1, 2]", WEBHOOK_SECRET, now), "invalid_event"),
    ];
    for (what, req, code) in cases {
        let (s, r) = w.webhook(req).await;
        assert_eq!((s, r["error"]["code"].as_str()), (400, Some(code)), "{what}: {r}");
    }
    assert_eq!(w.snapshot("acme").await, before, "nothing changed");
    // A second valid `v1` (secret rotation) is accepted whichever position it has.
    let good = stripe_signature(&body, WEBHOOK_SECRET, now);
    let rotated =
        format!("t={now},v1={},{}", "ab".repeat(32), good.split_once(',').map(|(_, v)| v).unwrap_or_default());
    let mut req = request("POST", "/stripe/webhook", None, Some("application/json"), Some(body.clone()));
    req.headers_mut().insert("stripe-signature", rotated.parse().expect("header"));
    let (s, r) = w.webhook(req).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("succeeded")), "{r}");
    // Unknown types and other people's objects: acknowledged, nothing changes.
    let after = w.snapshot("acme").await;
    for event in [
        stripe_event("customer.created", json!({"id": "cus_1", "object": "customer"})),
        stripe_event(
            "checkout.session.completed",
            json!({"id": "cs_x", "object": "checkout.session", "payment_status": "paid", "metadata": {}}),
        ),
        stripe_event(
            "checkout.session.completed",
            json!({"id": "cs_y", "payment_status": "paid", "payment_intent": "pi_y", "metadata": {"topup_account_id": "ghost", "topup_purchase_id": "pur_1"}}),
        ),
        stripe_event(
            "checkout.session.completed",
            json!({"id": "cs_z", "payment_status": "paid", "payment_intent": "pi_z", "metadata": {"topup_account_id": "acme", "topup_purchase_id": "pur_unknown"}}),
        ),
    ] {
        let (s, r) = w.deliver(&event).await;
        assert_eq!(s, 200, "{r}");
        assert!(r["result"].as_str().is_some_and(|x| x.starts_with("ignored")), "{r}");
    }
    assert_eq!(w.snapshot("acme").await, after, "nothing changed");
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn stripe_down_leaves_nothing_that_could_credit_and_a_retry_resumes() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let (s, b) = w.buy_with(&unreachable_stripe(), buy_request("acme", json!({"amount": 3000}), Some("k-down"))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("payment_provider_unavailable")), "{b}");
    assert!(!b.to_string().contains("127.0.0.1"), "no upstream detail in the response: {b}");
    // The purchase is pending with no session: there is nothing anyone could pay.
    let id = topup::purchases::purchase_id("acme", Some(&key("k-down")));
    let p = w.credits.purchase("acme", &id).await.expect("recorded");
    assert_eq!((p.status.as_str(), p.checkout_session_id.as_deref()), ("pending", None));
    // Stripe is back; the client's retry opens the session for the same purchase.
    let (s, again) = w.buy(buy_request("acme", json!({"amount": 3000}), Some("k-down"))).await;
    assert_eq!((s, again["purchase_id"].as_str()), (201, Some(id.as_str())), "{again}");
    assert!(again["checkout_session_id"].as_str().is_some());
    // Card setup with Stripe down: 503 as well, and no card.
    let (s, b) = w
        .buy_with(
            &unreachable_stripe(),
            post("/v1/accounts/acme/payment-method/setup", &person("owner", "acme"), json!({})),
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("payment_provider_unavailable")));
    assert_eq!(w.view("acme").await["payment_method"], Value::Null);
}

#[tokio::test]
async fn a_refund_takes_the_refunded_credits_back_once() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    let b = open_purchase(&w, "acme", json!({"amount": 4000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    assert_eq!(w.view("acme").await["balance"], 40 * C);
    let pi = paid["payment_intent"].as_str().expect("pi").to_string();
    // A quarter refunded in Stripe, then the rest.
    let (s, r) = local_stripe("POST", "/v1/refunds", &[("payment_intent", &pi), ("amount", "1000")]).await;
    assert_eq!(s, 200, "{r}");
    let charge_id = r["charge"].as_str().expect("charge").to_string();
    let (_, quarter) = local_stripe("GET", &format!("/v1/charges/{charge_id}"), &[]).await;
    assert_eq!(quarter["amount_refunded"], 1000);
    let quarter_event = stripe_event("charge.refunded", quarter);
    for _ in 0..3 {
        let (s, r) = w.deliver(&quarter_event).await;
        assert_eq!(s, 200, "{r}");
    }
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 30 * C, "10 of 40 credits taken back once");
    assert_eq!(v["recent_transactions"][0]["kind"], "refund");
    assert_eq!(v["recent_transactions"][0]["amount"], -10 * C);
    local_stripe("POST", "/v1/refunds", &[("payment_intent", &pi), ("amount", "3000")]).await;
    let (_, full) = local_stripe("GET", &format!("/v1/charges/{charge_id}"), &[]).await;
    assert_eq!(full["amount_refunded"], 4000);
    w.deliver(&stripe_event("charge.refunded", full)).await;
    // The earlier, partial event arriving late takes nothing more.
    w.deliver(&quarter_event).await;
    let v = w.view("acme").await;
    assert_eq!((v["balance"].as_i64(), v["lifetime_added"].as_i64()), (Some(0), Some(40 * C)));
    assert_eq!(w.ledger("acme").await.len(), 3);
    // Each refund that took credits back is one RefundCreated (webhooks' `refund.created`).
    let events = observer.drain(Duration::from_secs(2)).await;
    let refunds: Vec<(i64, i64)> = of_type(&events, "RefundCreated")
        .iter()
        .map(|e| (e["detail"]["amount_refunded"].as_i64().unwrap_or(-1), e["detail"]["taken"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(refunds, [(1000, 10 * C), (4000, 30 * C)], "{events:?}");
    w.assert_invariants("acme").await;
}

/// Stripe does not keep events in order. A refund that arrives before the event that credits its
/// payment is refused with 409 (Stripe delivers it again), not acknowledged and lost; once the
/// credit is in, the same event takes the refunded share back. (Found by the fault-injection
/// suite, schedule 18 of a long run.)
#[tokio::test]
async fn a_refund_before_its_credit_waits_for_it() {
    let w = World::new("usd-overage").await;
    let id = unique("early");
    w.account(&id, "free").await;
    let b = open_purchase(&w, &id, json!({"amount": 2000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    let pi = paid["payment_intent"].as_str().expect("pi").to_string();
    let refund = stripe_event("charge.refunded", refund_at_stripe(&pi, Some(500)).await);
    let (s, r) = w.deliver(&refund).await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("payment_not_credited_yet")), "{r}");
    assert!(w.ledger(&id).await.is_empty(), "nothing taken or recorded");
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    deliver_receipt(&w, &paid).await;
    let (s, r) = w.deliver(&refund).await;
    assert_eq!(s, 200, "{r}");
    let v = w.view(&id).await;
    assert_eq!((v["balance"].as_i64(), v["lifetime_added"].as_i64()), (Some(15 * C), Some(20 * C)));
    let report = w.credits.reconcile_account(&stripe_payments(), &id).await.expect("reconcile");
    assert_eq!(report.differences, vec![]);
    w.assert_invariants(&id).await;
}

/// A refund never takes credits an open hold reserves: the session in progress settles against
/// them and the balance stays at or above zero (rules §6, §10.4). (Found by the fault-injection
/// suite, schedules 83 and 145 of a long run.)
#[tokio::test]
async fn a_refund_leaves_what_open_holds_reserve() {
    let w = World::new("usd-overage").await;
    let id = unique("held");
    w.account(&id, "free").await;
    let b = open_purchase(&w, &id, json!({"amount": 2000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    let included = w.included(&id, "voice_minutes").await;
    let (s, hold) = w
        .debit(post(
            &format!("/v1/accounts/{id}/usage/holds"),
            &service(),
            json!({"consumable": "voice_minutes", "quantity": included + 30, "idempotency_key": unique("h")}),
        ))
        .await;
    assert_eq!(s, 201, "{hold}");
    let held = w.credits.account(&id).await.expect("account").held(topup::clock::now_ms()).get();
    assert!(held > 0 && held < 20 * C, "the hold reserves some credits: {held}");
    // The whole purchase refunded while the session runs.
    let pi = paid["payment_intent"].as_str().expect("pi");
    let (s, r) = w.deliver(&stripe_event("charge.refunded", refund_at_stripe(pi, None).await)).await;
    assert_eq!(s, 200, "{r}");
    let entry = &w.view(&id).await["recent_transactions"][0];
    assert_eq!(entry["amount"], -(20 * C - held), "{entry}");
    assert!(entry["description"].as_str().is_some_and(|d| d.contains("already used or reserved")), "{entry}");
    assert_eq!(w.view(&id).await["balance"], held);
    // The session ends using all it reserved: the balance reaches zero, not below.
    let hold_id = hold["hold_id"].as_str().expect("hold id");
    let (s, r) = w
        .debit(post(
            &format!("/v1/accounts/{id}/usage/holds/{hold_id}/settle"),
            &service(),
            json!({"quantity": included + 30}),
        ))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view(&id).await["balance"], 0);
    w.assert_invariants(&id).await;
}

#[tokio::test]
async fn a_refund_of_used_credits_takes_what_is_left() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    let b = open_purchase(&w, "org", json!({"amount": 1000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    // Spend 6 of the 10 credits (600 runs at 0.01 beyond the free allowance).
    let allowance = w.included("org", "runs").await;
    let (s, r) = w.usage("org", "runs", allowance + 600).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view("org").await["balance"], 4 * C);
    let pi = paid["payment_intent"].as_str().expect("pi");
    let (_, refund) = local_stripe("POST", "/v1/refunds", &[("payment_intent", pi)]).await;
    let (_, charge) =
        local_stripe("GET", &format!("/v1/charges/{}", refund["charge"].as_str().expect("charge")), &[]).await;
    w.deliver(&stripe_event("charge.refunded", charge)).await;
    let v = w.view("org").await;
    assert_eq!(v["balance"], 0, "never below zero");
    let entry = &v["recent_transactions"][0];
    assert_eq!((entry["kind"].as_str(), entry["amount"].as_i64()), (Some("refund"), Some(-4 * C)));
    assert!(entry["description"].as_str().is_some_and(|d| d.contains("already used")), "{entry}");
    w.assert_invariants("org").await;
}

#[tokio::test]
async fn a_saved_card_becomes_the_default_and_can_be_removed() {
    let w = World::new("org-runs").await;
    w.account("org", "pro").await;
    let (s, setup) = w.buy(post("/v1/accounts/org/payment-method/setup", &person("admin", "org"), json!({}))).await;
    assert_eq!(s, 201, "{setup}");
    let seti = setup["setup_intent_id"].as_str().expect("id").to_string();
    assert!(setup["client_secret"].as_str().is_some_and(|c| c.starts_with(&seti)));
    assert_eq!(w.view("org").await["balance"], 0, "no charge");
    // The browser confirms it with the card (Stripe.js), then Stripe tells us.
    let (s, confirmed) = local_stripe(
        "POST",
        &format!("/v1/setup_intents/{seti}/confirm"),
        &[
            ("payment_method_data[type]", "card"),
            ("payment_method_data[card][number]", "4242424242424242"),
            ("payment_method_data[card][exp_month]", "8"),
            ("payment_method_data[card][exp_year]", "2031"),
            ("payment_method_data[card][cvc]", "123"),
        ],
    )
    .await;
    assert_eq!((s, confirmed["status"].as_str()), (200, Some("succeeded")), "{confirmed}");
    assert_eq!(confirmed["metadata"]["topup_account_id"], "org");
    assert_eq!(confirmed["usage"], "off_session");
    for _ in 0..2 {
        let (s, r) = w.deliver(&stripe_event("setup_intent.succeeded", confirmed.clone())).await;
        assert_eq!(s, 200, "{r}");
    }
    let v = w.view("org").await;
    assert_eq!(v["payment_method"], json!({"brand": "visa", "last4": "4242", "exp_month": 8, "exp_year": 2031}));
    // Auto-recharge can now be turned on; removing the card turns it off.
    let (s, r) =
        w.api(put("/v1/accounts/org/credits/auto-recharge", &person("owner", "org"), json!({"enabled": true}))).await;
    assert_eq!(s, 200, "{r}");
    let (s, r) =
        w.buy(request("DELETE", "/v1/accounts/org/payment-method", Some(&person("owner", "org")), None, None)).await;
    assert_eq!((s, &r["payment_method"]), (200, &Value::Null), "{r}");
    let v = w.view("org").await;
    assert_eq!((v["payment_method"].clone(), v["auto_recharge"]["enabled"].clone()), (Value::Null, json!(false)));
    // Removing it again changes nothing.
    let before = w.snapshot("org").await;
    let (s, _) =
        w.buy(request("DELETE", "/v1/accounts/org/payment-method", Some(&person("owner", "org")), None, None)).await;
    assert_eq!(s, 200);
    assert_eq!(w.snapshot("org").await, before);
}

/// A client's `Idempotency-Key` may be 255 characters; Stripe's own keys may not be longer, so
/// the card setup derives a short one: the same key gives the same SetupIntent.
#[tokio::test]
async fn a_long_idempotency_key_sets_up_one_card() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let key = "k".repeat(255);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut req = post("/v1/accounts/acme/payment-method/setup", &person("owner", "acme"), json!({}));
        req.headers_mut().insert("idempotency-key", key.parse().expect("header"));
        let (s, b) = w.buy(req).await;
        assert_eq!(s, 201, "{b}");
        ids.push(b["setup_intent_id"].as_str().expect("id").to_string());
    }
    assert_eq!(ids[0], ids[1]);
}

/// Money moves only on proof (rules §12): a validly signed Checkout event whose session, amount
/// or currency is not the purchase's, or that needed no payment, is acknowledged as ignored
/// with its reason and moves nothing; the real payment still credits afterwards, once.
#[tokio::test]
async fn a_checkout_event_credits_only_its_own_paid_session_at_the_purchases_price() {
    let w = World::new("usd-overage").await;
    let id = unique("proof");
    w.account(&id, "free").await;
    let b = open_purchase(&w, &id, json!({"amount": 2000})).await;
    let other = open_purchase(&w, &id, json!({"amount": 500})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    let other_paid = pay(other["checkout_session_id"].as_str().expect("id"), &[]).await;

    let forged = |edit: &dyn Fn(&mut Value)| {
        let mut o = paid.clone();
        edit(&mut o);
        stripe_event("checkout.session.completed", o)
    };
    let cases: Vec<(&str, Value)> = vec![
        ("amount_mismatch", forged(&|o| o["amount_total"] = json!(1))),
        ("amount_mismatch", forged(&|o| o["amount_total"] = Value::Null)),
        ("currency_mismatch", forged(&|o| o["currency"] = json!("eur"))),
        ("not_paid", forged(&|o| o["payment_status"] = json!("no_payment_required"))),
        // Another session of ours, dressed as this purchase's.
        ("session_mismatch", {
            let mut o = other_paid.clone();
            o["metadata"]["topup_purchase_id"] = b["purchase_id"].clone();
            o["client_reference_id"] = b["purchase_id"].clone();
            stripe_event("checkout.session.completed", o)
        }),
        ("session_mismatch", {
            let mut o = other_paid.clone();
            o["metadata"]["topup_purchase_id"] = b["purchase_id"].clone();
            stripe_event("checkout.session.async_payment_failed", o)
        }),
    ];
    for (reason, event) in cases {
        let (s, r) = w.deliver(&event).await;
        assert_eq!((s, r["result"].as_str(), r["reason"].as_str()), (200, Some("ignored"), Some(reason)), "{r}");
        assert_eq!(w.view(&id).await["balance"], 0, "{reason}: nothing credited");
    }
    let pid = b["purchase_id"].as_str().expect("purchase id");
    let (_, status) = w.buy(get(&format!("{}/{pid}", purchases(&id)), &person("owner", &id))).await;
    assert_eq!(status["status"], "pending", "no forged event moved the purchase: {status}");

    // The real events credit each purchase once.
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", paid)).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("succeeded")), "{r}");
    w.deliver(&stripe_event("checkout.session.completed", other_paid)).await;
    assert_eq!(w.view(&id).await["balance"], 25 * C);
    w.assert_invariants(&id).await;
}
