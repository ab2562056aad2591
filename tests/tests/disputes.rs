//! Disputes end to end against moto and localstripe (rules §12): the cardholder's bank disputes
//! a credited payment (`charge.dispute.created`, sent by the local Stripe's test route for a
//! real charge), its credits go back as one `dispute` entry, at most once however often the
//! event comes, auto-recharge pauses and the customer is told; `won` returns exactly what was
//! taken, once; `lost` keeps it. Lifetime totals count neither.

use std::time::Duration;

use serde_json::{json, Value};
use topup_tests::*;

/// A $20 purchase credited through Checkout on account `id`; the paid session.
async fn credited_purchase(w: &World, id: &str) -> Value {
    w.account(id, "free").await;
    let b = open_purchase(w, id, json!({"amount": 2000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    assert_eq!(s, 200, "{r}");
    paid
}

/// The account's grants as its owner lists them.
async fn grants_of(w: &World, id: &str) -> Vec<Value> {
    let (s, b) = w.api(get(&format!("/v1/accounts/{id}/credits/grants"), &person("owner", id))).await;
    assert_eq!(s, 200, "{b}");
    b["grants"].as_array().cloned().unwrap_or_default()
}

/// The charge of a paid session, as the local Stripe holds it.
async fn charge_of(paid: &Value) -> String {
    let pi = paid["payment_intent"].as_str().expect("pi");
    let (_, intent) = local_stripe("GET", &format!("/v1/payment_intents/{pi}"), &[]).await;
    let charge = &intent["latest_charge"];
    charge.as_str().or_else(|| charge["id"].as_str()).expect("the payment's charge").to_string()
}

#[tokio::test]
async fn a_dispute_takes_its_share_back_once_pauses_auto_recharge_and_a_won_one_returns_it() {
    let w = World::new("usd-overage").await;
    let id = unique("disputed");
    let paid = credited_purchase(&w, &id).await;
    w.save_card(&id).await;
    w.set_auto_recharge(&id, json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.usage(&id, "api_calls", w.included(&id, "api_calls").await).await;
    let observer = w.observe_bus().await;

    // The bank disputes $5 of the $20 payment: a quarter of its credits go back.
    let charge = charge_of(&paid).await;
    let (s, dispute) = local_stripe("POST", &format!("/_config/charges/{charge}/dispute"), &[("amount", "500")]).await;
    assert_eq!(s, 200, "{dispute}");
    let created = stripe_event("charge.dispute.created", dispute.clone());
    for _ in 0..3 {
        let (s, r) = w.deliver(&created).await;
        assert_eq!(s, 200, "{r}");
    }
    let v = w.view(&id).await;
    assert_eq!(v["balance"], 15 * C, "taken once: {v}");
    assert_eq!((v["lifetime_added"].as_i64(), v["lifetime_spent"].as_i64()), (Some(20 * C), Some(0)));
    let entry = &v["recent_transactions"][0];
    assert_eq!((entry["kind"].as_str(), entry["amount"].as_i64()), (Some("dispute"), Some(-5 * C)), "{entry}");
    assert_eq!(v["auto_recharge"]["paused"]["reason"], "dispute", "{v}");
    let (_, page) = w.api(get(&format!("/v1/accounts/{id}/credits/transactions"), &person("owner", &id))).await;
    assert_eq!(page["transactions"][0]["kind"], "dispute", "{page}");

    // While it is open, nothing recharges.
    let topup::recharge::RechargeDecision::NotDue(why) = w.credits.claim_recharge(&id).await.expect("claim") else {
        panic!("a recharge during an open dispute")
    };
    assert_eq!(why, "dispute");
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "PaymentDisputed").len(), 1, "told once: {events:?}");

    // Won: exactly what it took comes back, once.
    let (s, closed) = local_stripe(
        "POST",
        &format!("/_config/disputes/{}/close", dispute["id"].as_str().expect("id")),
        &[("status", "won")],
    )
    .await;
    assert_eq!(s, 200, "{closed}");
    for _ in 0..2 {
        let (s, r) = w.deliver(&stripe_event("charge.dispute.closed", closed.clone())).await;
        assert_eq!(s, 200, "{r}");
    }
    let v = w.view(&id).await;
    assert_eq!(v["balance"], 20 * C, "{v}");
    assert_eq!(v["recent_transactions"][0]["amount"], 5 * C);
    assert_eq!(v["auto_recharge"]["paused"], Value::Null, "{v}");
    assert_eq!((v["lifetime_added"].as_i64(), v["lifetime_spent"].as_i64()), (Some(20 * C), Some(0)));
    w.assert_invariants(&id).await;
}

#[tokio::test]
async fn a_lost_dispute_keeps_what_it_took_and_never_more_than_the_payment_credited() {
    let w = World::new("usd-overage").await;
    let id = unique("lost");
    let paid = credited_purchase(&w, &id).await;
    // $8 already used; the whole $20 disputed: only what is left can go, the rest is forgiven.
    w.usage(&id, "api_calls", w.included(&id, "api_calls").await + 8_000).await;
    let charge = charge_of(&paid).await;
    let (_, dispute) = local_stripe("POST", &format!("/_config/charges/{charge}/dispute"), &[]).await;
    let (s, r) = w.deliver(&stripe_event("charge.dispute.created", dispute.clone())).await;
    assert_eq!(s, 200, "{r}");
    let v = w.view(&id).await;
    assert_eq!(v["balance"], 0, "never below zero: {v}");
    assert_eq!(v["recent_transactions"][0]["amount"], -12 * C);
    let (_, closed) = local_stripe(
        "POST",
        &format!("/_config/disputes/{}/close", dispute["id"].as_str().expect("id")),
        &[("status", "lost")],
    )
    .await;
    let (s, r) = w.deliver(&stripe_event("charge.dispute.closed", closed)).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("recorded")), "{r}");
    let v = w.view(&id).await;
    assert_eq!(v["balance"], 0, "lost: kept");
    assert_eq!(v["auto_recharge"]["paused"], Value::Null, "no longer open");
    w.assert_invariants(&id).await;
}

/// A dispute's email and SMS (`credit_payment_disputed`) go to the billing contacts.
#[tokio::test]
async fn the_customer_is_told_of_a_dispute_by_email_and_sms() {
    let w = World::new("org-runs").await;
    let id = unique("told");
    let to = format!("{}@acme.example", unique("d"));
    let phone = unique_phone();
    let paid = {
        let (s, b) = w
            .api(put(
                &format!("/v1/accounts/{id}"),
                &service(),
                json!({"plan": "free", "billing_contacts": [{"email": to, "phone": phone, "sms_opt_in": true}]}),
            ))
            .await;
        assert_eq!(s, 201, "{b}");
        let b = open_purchase(&w, &id, json!({"amount": 2000})).await;
        let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
        w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
        paid
    };
    let ses = aws_sdk_sesv2::Client::new(&w.aws);
    let _ = ses.create_email_identity().email_identity("example.com").send().await;
    let observer = w.observe_bus().await;
    let charge = charge_of(&paid).await;
    let (_, dispute) = local_stripe("POST", &format!("/_config/charges/{charge}/dispute"), &[]).await;
    w.deliver(&stripe_event("charge.dispute.created", dispute)).await;
    let events = observer.drain(Duration::from_secs(1)).await;
    let disputed = of_type(&events, "PaymentDisputed");
    assert_eq!(disputed.len(), 1, "{events:?}");
    let notifier = topup::live_notifier(&w.config, &w.aws).expect("notifier");
    let report = notify::handle(&notifier, &topup_tests::bus_event(disputed[0])).await.expect("delivered");
    assert_eq!(
        (report["kind"].as_str(), report["sent"].as_i64()),
        (Some("credit_payment_disputed"), Some(2)),
        "{report}"
    );
    let data = moto_data().await;
    let mail = data["ses"]["Message"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["destinations"]["ToAddresses"][0] == json!(to)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(mail["subject"], "A payment was disputed", "{mail}");
}

/// Reconciliation compares disputes with Stripe's (rules §12): a dispute whose event has not
/// arrived is lagging (a problem after the grace period); once it is in, they agree.
#[tokio::test]
async fn reconciliation_sees_a_dispute_whose_event_has_not_arrived() {
    let w = World::new("usd-overage").await;
    let id = unique("recon");
    let paid = credited_purchase(&w, &id).await;
    let charge = charge_of(&paid).await;
    let (_, dispute) = local_stripe("POST", &format!("/_config/charges/{charge}/dispute"), &[]).await;
    let report = w.credits.reconcile_account(&stripe_payments(), &id).await.expect("reconcile");
    let codes: Vec<_> = report.differences.iter().map(|d| (d.code.as_ref(), d.is_problem(3600))).collect();
    assert_eq!(codes, vec![("dispute_not_recorded", false)], "{report:?}");
    w.deliver(&stripe_event("charge.dispute.created", dispute)).await;
    let report = w.credits.reconcile_account(&stripe_payments(), &id).await.expect("reconcile");
    assert_eq!(report.differences, vec![], "{report:?}");
    w.assert_invariants(&id).await;
}

/// A dispute won after its payment's grant was used up (rules §15): the credits come back as a
/// paid grant at the payment's cost basis, the ledger says they were restored, and the revenue
/// report recognises revenue for them when they are used (and lists them as restored).
#[tokio::test]
async fn a_won_dispute_of_a_used_up_grant_comes_back_paid_and_the_report_sees_it() {
    let w = World::new("org-runs").await;
    let id = unique("restored");
    // $20 for 20 credits, and 20 promotional credits that burn after them.
    let paid = credited_purchase(&w, &id).await;
    let (s, b) = w
        .api(post(
            &format!("/v1/accounts/{id}/credits/adjustments"),
            &service(),
            json!({"amount": 20 * C, "reason": "welcome", "idempotency_key": "w", "priority": 90}),
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    let included = w.included(&id, "runs").await;
    assert_eq!(w.usage(&id, "runs", included + 2_000).await.0, 200, "the purchase's 20 credits used up");
    let list = grants_of(&w, &id).await;
    assert!(list.iter().any(|g| g["category"] == "paid" && g["status"] == "used"), "{list:?}");

    // Disputed in full: the 20 credits come from the promotional grant; then won.
    let charge = charge_of(&paid).await;
    let (_, dispute) = local_stripe("POST", &format!("/_config/charges/{charge}/dispute"), &[]).await;
    let (s, r) = w.deliver(&stripe_event("charge.dispute.created", dispute.clone())).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view(&id).await["balance"], 0);
    let (_, closed) = local_stripe(
        "POST",
        &format!("/_config/disputes/{}/close", dispute["id"].as_str().expect("id")),
        &[("status", "won")],
    )
    .await;
    let (s, r) = w.deliver(&stripe_event("charge.dispute.closed", closed)).await;
    assert_eq!(s, 200, "{r}");
    let v = w.view(&id).await;
    assert_eq!(v["balance"], 20 * C, "{v}");
    let entry = &v["recent_transactions"][0];
    assert!(entry["description"].as_str().is_some_and(|d| d.contains("restored")), "{entry}");

    // The grants list shows them as an active paid grant of the purchase.
    let list = grants_of(&w, &id).await;
    let back = list.iter().find(|g| g["status"] == "active" && g["category"] == "paid").cloned();
    let back = back.unwrap_or_else(|| panic!("no active paid grant: {list:?}"));
    assert_eq!((back["source"].as_str(), back["remaining"].as_i64()), (Some("purchase"), Some(20 * C)), "{back}");

    // 5 of them used: $5.00 of revenue at the payment's $1.00 a credit.
    assert_eq!(w.usage(&id, "runs", 500).await.0, 200);
    let month = topup::clock::month_of(topup::clock::now_ms());
    let (s, r) = w.api(get(&format!("/v1/reports/revenue?month={month}"), &service())).await;
    assert_eq!(s, 200, "{r}");
    let line = r["accounts"].as_array().and_then(|a| a.iter().find(|l| l["account_id"] == json!(id))).cloned();
    let line = line.unwrap_or_else(|| panic!("no line: {r}"));
    assert_eq!(line["granted"], json!({"credits": 20 * C, "amount": 2_000}), "{line}");
    assert_eq!(line["restored"], json!({"credits": 20 * C, "amount": 2_000}), "{line}");
    assert_eq!(line["consumed"], json!({"credits": 25 * C, "amount": 2_500}), "{line}");
    assert_eq!(line["taken_back"], json!({"credits": 0, "amount": 0}), "promotional credits went: {line}");
    assert_eq!(line["deferred"], json!({"credits": 15 * C, "amount": 1_500}), "{line}");
    w.assert_invariants(&id).await;
}
