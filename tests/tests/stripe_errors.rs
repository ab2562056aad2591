//! Stripe's errors are not the customer's (rules §12). A Stripe that answers 401, 400 (not
//! about the card), 409, 429 or 5xx is ours or Stripe's to fix: the charge is `Unanswered`, the
//! claim stays in flight for the sweep, auto-recharge is not suspended, no `AutoRechargeFailed`
//! goes out, and the function fails (so its alarm fires). Only a `card_error` is a decline.
//!
//! The Stripe here is a few lines of HTTP on loopback that answers every request with one
//! status and Stripe's error body, so each answer can be had on demand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use topup::adapters::stripe::StripePayments;
use topup::payments::{ChargeOutcome, OffSessionCharge, Payments};
use topup::recharge::{RechargeDecision, RechargeResult};
use topup::secret::Secret;
use topup_tests::*;

const C: i64 = topup::money::MICROS_PER_CREDIT;

/// A Stripe that answers every request with `status` and `{"error": error}`; counts requests.
async fn answering(status: u16, error: Value) -> (StripePayments, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let body = json!({ "error": error }).to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                // Read the request's head and body (it is small); answer and close.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await;
                let reply = format!(
                    "HTTP/1.1 {status} Stripe\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    let payments = StripePayments::new(&Secret::new("sk_test_fake_stripe"), Some(&format!("http://127.0.0.1:{port}")))
        .expect("client");
    (payments, seen)
}

fn charge() -> OffSessionCharge {
    OffSessionCharge {
        customer_id: "cus_1".into(),
        payment_method_id: "pm_1".into(),
        amount_cents: 1000,
        currency: "usd".into(),
        idempotency_key: unique("topup-recharge-test"),
        metadata: vec![],
    }
}

/// The answers that are ours or Stripe's, each as Stripe words it.
fn not_the_customers() -> Vec<(u16, Value)> {
    vec![
        (401, json!({"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****"})),
        (403, json!({"type": "invalid_request_error", "message": "The provided key does not have access."})),
        (400, json!({"type": "invalid_request_error", "param": "amount", "message": "Invalid integer: x"})),
        (
            409,
            json!({"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters."}),
        ),
        (400, json!({"type": "idempotency_error", "message": "Keys for idempotent requests can only be used once."})),
        (429, json!({"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests."})),
        (500, json!({"type": "api_error", "message": "Something went wrong on Stripe's end."})),
        (503, json!({"type": "api_error", "message": "Service unavailable."})),
    ]
}

#[tokio::test]
async fn only_a_card_error_is_a_decline() {
    for (status, error) in not_the_customers() {
        let (payments, seen) = answering(status, error.clone()).await;
        let out = payments.charge_off_session(&charge()).await;
        assert!(out.is_err(), "{status} {error}: {out:?} must not read as the customer's decline");
        assert!(seen.load(Ordering::SeqCst) >= 1, "{status}: the request reached the fake Stripe");
    }
    let (payments, _) = answering(
        402,
        json!({"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}),
    )
    .await;
    match payments.charge_off_session(&charge()).await {
        Ok(ChargeOutcome::Failed { code, decline_code, .. }) => {
            assert_eq!((code.as_str(), decline_code.as_deref()), ("card_declined", Some("insufficient_funds")))
        }
        other => panic!("a card_error is the customer's decline: {other:?}"),
    }
}

/// A revoked key, a rate limit, an outage: nothing changes for the customer. The claim stays in
/// flight (so the sweep recovers it with the same idempotency key), auto-recharge stays on and
/// unsuspended, no error is recorded, no `AutoRechargeFailed` goes out, and the function fails.
#[tokio::test]
async fn an_error_of_ours_or_stripes_never_suspends_nor_tells_the_customer() {
    for (status, error) in
        [not_the_customers()[0].clone(), not_the_customers()[5].clone(), not_the_customers()[6].clone()]
    {
        let w = World::new("usd-overage").await;
        w.account("acme", "free").await;
        w.save_card("acme").await;
        w.set_auto_recharge("acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
        w.usage("acme", "api_calls", 1_000).await;
        w.grant("acme", 6 * C).await;
        let observer = w.observe_bus().await;
        w.usage("acme", "api_calls", 2_000).await;
        let (payments, _) = answering(status, error.clone()).await;

        let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&balance_low("acme"))).await;
        assert_eq!(
            out.as_ref().map_err(|e| e.code()),
            Err("payment_provider_unavailable"),
            "{status}: the function fails"
        );
        let a = w.credits.account("acme").await.expect("account");
        assert!(a.auto_recharge.in_flight.is_some(), "{status}: the claim stays recoverable");
        assert!(a.auto_recharge.enabled && !a.auto_recharge.suspended, "{status}: not suspended");
        assert!(a.last_recharge_error.is_none(), "{status}: no card error recorded");
        let view = w.view("acme").await;
        assert_eq!(view["auto_recharge"]["paused"], Value::Null, "{status}: {view}");
        assert_eq!(view["balance"], 4 * C, "{status}: nothing credited");
        let events = observer.drain(Duration::from_millis(500)).await;
        assert!(of_type(&events, "AutoRechargeFailed").is_empty(), "{status}: {events:?}");

        // The sweep repeats the same call after the lease, and still tells nobody.
        let RechargeDecision::NotDue(why) = w.credits.claim_recharge("acme").await.expect("claim") else {
            panic!("a second claim while one is in flight")
        };
        assert_eq!(why, "in_flight");
        let report = w.credits.sweep(&payments, 100, 0).await.expect("sweep");
        assert_eq!(report.recharges.len(), 1, "{report:?}");
        assert_eq!(report.recharges[0].outcome, RechargeResult::Unanswered);
        assert!(!w.credits.account("acme").await.expect("account").auto_recharge.suspended);
        w.assert_invariants("acme").await;
    }
}
