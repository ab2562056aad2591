//! The domain of auto-recharge against the emulator (rules §8, §10.5, §10.6): one claim per
//! low-balance episode however many triggers race, credit once on success, suspend on failure
//! with no automatic retry, and the monthly cap. The Stripe call between claim and outcome
//! comes with the auto-recharge function.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use topup::account::RechargeError;
use topup::ledger::EntryKind;
use topup::pricing::PurchaseChoice;
use topup::recharge::RechargeDecision;
use topup_tests::*;

async fn enable(w: &World, account: &str, body: serde_json::Value) {
    w.save_card(account).await;
    w.set_auto_recharge(account, body).await;
}

fn declined() -> RechargeError {
    RechargeError {
        code: "card_declined".into(),
        decline_code: Some("insufficient_funds".into()),
        message: "Your card has insufficient funds.".into(),
        at: 0,
    }
}

/// 50 triggers at once (events and sweeps from several instances) for one low balance:
/// exactly one claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_triggers_claim_one_recharge() {
    let w = Arc::new(World::new("usd-overage").await);
    w.account("acme", "free").await;
    enable(&w, "acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.grant("acme", 4 * C).await; // below $5
    let instances: Vec<_> = (0..5).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let inst = instances[i % 5].clone();
        tasks.push(tokio::spawn(async move { inst.claim_recharge("acme").await }));
    }
    let mut claims = Vec::new();
    for t in tasks {
        match t.await.expect("task").unwrap_or_else(|e| panic!("{e}")) {
            RechargeDecision::Claimed(c) => claims.push(c),
            RechargeDecision::NotDue(why) => assert_eq!(why, "in_flight"),
        }
    }
    assert_eq!(claims.len(), 1, "one claim for one low balance");
    assert_eq!((claims[0].credits.get(), claims[0].charge_cents), (10 * C, 1000));
    assert_eq!(w.view("acme").await["auto_recharge"]["used_this_month"], 1);
}

#[tokio::test]
async fn a_successful_recharge_credits_once_and_releases_the_claim() {
    let w = World::new("org-runs").await;
    let observer = w.observe_bus().await;
    w.account("org", "pro").await;
    enable(&w, "org", json!({"enabled": true, "threshold": 5 * C, "amount": 20 * C})).await;
    w.grant("org", 5 * C).await; // at the threshold: low for org-runs ("at or below")
    let RechargeDecision::Claimed(claim) = w.credits.claim_recharge("org").await.expect("claim") else {
        panic!("not claimed")
    };
    let first = w.credits.complete_recharge("org", &claim, "pi_rch_1").await.expect("complete");
    // The webhook's payment_intent.succeeded for the same PaymentIntent, second or first:
    let again = w.another_instance().complete_recharge("org", &claim, "pi_rch_1").await.expect("again");
    assert_eq!(first, again);
    let v = w.view("org").await;
    assert_eq!((v["balance"].as_i64(), v["lifetime_added"].as_i64()), (Some(25 * C), Some(25 * C)));
    assert_eq!(v["recent_transactions"][0]["kind"], "auto_recharge");
    assert_eq!(v["auto_recharge"]["used_this_month"], 1);
    assert_eq!(w.ledger("org").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
    // Above the threshold now: nothing is due.
    assert_eq!(w.credits.claim_recharge("org").await.expect("claim"), RechargeDecision::NotDue("not_low".into()));
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "AutoRechargeSucceeded").len(), 1);
    assert_eq!(of_type(&events, "CreditsAdded").len(), 1);
    w.assert_invariants("org").await;
}

#[tokio::test]
async fn a_failed_recharge_adds_nothing_suspends_and_a_purchase_restores_it() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    enable(&w, "acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.grant("acme", C).await;
    let RechargeDecision::Claimed(claim) = w.credits.claim_recharge("acme").await.expect("claim") else {
        panic!("not claimed")
    };
    assert!(w.credits.fail_recharge("acme", &claim.recharge_id, &declined()).await.expect("fail"));
    assert!(!w.credits.fail_recharge("acme", &claim.recharge_id, &declined()).await.expect("again"), "once");
    let v = w.view("acme").await;
    assert_eq!(v["balance"], C, "nothing added");
    assert_eq!(v["last_recharge_error"]["code"], "card_declined");
    assert_eq!(v["last_recharge_error"]["decline_code"], "insufficient_funds");
    assert_eq!(
        v["last_recharge_error"]["do_not_retry"], false,
        "insufficient funds may be retried with the same card later"
    );
    assert_eq!(v["auto_recharge"]["used_this_month"], 0, "a failed charge is not a reload");
    assert_eq!(v["auto_recharge"]["paused"]["reason"], "payment_failed");
    // No automatic retry, however often it is triggered.
    for _ in 0..3 {
        assert_eq!(
            w.credits.claim_recharge("acme").await.expect("claim"),
            RechargeDecision::NotDue("suspended".into())
        );
    }
    // seed 000: "trigger a one-time purchase to restore service".
    let p = w.credits.record_purchase("acme", &PurchaseChoice::default(), None).await.expect("purchase");
    w.credits.purchase_paid("acme", &p.purchase_id, "pi_manual").await.expect("paid");
    assert_eq!(w.credits.claim_recharge("acme").await.expect("claim"), RechargeDecision::NotDue("not_low".into()));
    w.usage("acme", "api_calls", 1_000).await;
    w.usage("acme", "api_calls", 6_500).await; // $11 → $4.50
    assert!(matches!(w.credits.claim_recharge("acme").await.expect("claim"), RechargeDecision::Claimed(_)));
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "AutoRechargeFailed").len(), 1);
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn the_monthly_cap_pauses_with_the_seeds_message() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "pro").await;
    enable(&w, "clinic", json!({"enabled": true, "monthly_max": 1})).await;
    w.grant("clinic", 5 * C).await; // below 10 minutes
    let RechargeDecision::Claimed(claim) = w.credits.claim_recharge("clinic").await.expect("claim") else {
        panic!("not claimed")
    };
    assert_eq!((claim.credits.get(), claim.charge_cents), (100 * C, 2000), "one block at the Pro rate");
    w.credits.complete_recharge("clinic", &claim, "pi_block").await.expect("complete");
    w.usage("clinic", "voice_minutes", 1_000).await; // the plan's minutes
    w.usage("clinic", "voice_minutes", 100).await; // 105 → 5
    assert_eq!(
        w.credits.claim_recharge("clinic").await.expect("claim"),
        RechargeDecision::NotDue("monthly_cap".into())
    );
    let v = w.view("clinic").await;
    assert_eq!(v["auto_recharge"]["paused"]["reason"], "monthly_limit");
    assert_eq!(
        v["auto_recharge"]["paused"]["message"],
        "You've reached your monthly auto-reload limit. Auto-reload is paused until next month."
    );
    assert_eq!(
        (v["auto_recharge"]["used_this_month"].as_i64(), v["auto_recharge"]["level"].as_str()),
        (Some(1), Some("critical"))
    );
    w.assert_invariants("clinic").await;
}

/// A monthly money cap, an option no seed has: recharges stop before they would charge more
/// than the limit this month.
#[tokio::test]
async fn the_monthly_spending_limit_holds() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    enable(&w, "acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    let set = |body: serde_json::Value| put("/v1/accounts/acme/credits/auto-recharge", &service(), body);
    for (body, code) in [
        (json!({"enabled": true, "monthly_spend_max": 999}), "monthly_spend_max_too_low"),
        (json!({"enabled": true, "monthly_spend_max": -5}), "invalid_monthly_spend_max"),
    ] {
        let (s, b) = w.api(set(body.clone())).await;
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some(code)), "{body}: {b}");
    }
    let (s, b) = w.api(set(json!({"enabled": true, "monthly_spend_max": 1500}))).await;
    assert_eq!((s, b["monthly_spend_max"].as_i64()), (200, Some(1500)), "{b}");
    w.grant("acme", C).await;
    let RechargeDecision::Claimed(claim) = w.credits.claim_recharge("acme").await.expect("claim") else {
        panic!("not claimed")
    };
    w.credits.complete_recharge("acme", &claim, "pi_spend_1").await.expect("complete");
    w.usage("acme", "api_calls", 1_000).await;
    w.usage("acme", "api_calls", 7_000).await; // $11 → $4
    assert_eq!(
        w.credits.claim_recharge("acme").await.expect("claim"),
        RechargeDecision::NotDue("monthly_spend_cap".into())
    );
    let v = w.view("acme").await;
    assert_eq!(
        (v["auto_recharge"]["spent_this_month"].as_i64(), v["auto_recharge"]["paused"]["reason"].as_str()),
        (Some(1000), Some("monthly_spend_limit"))
    );
    // 0 removes the limit.
    let (s, _) = w.api(set(json!({"enabled": true, "monthly_spend_max": 0}))).await;
    assert_eq!(s, 200);
    assert!(matches!(w.credits.claim_recharge("acme").await.expect("claim"), RechargeDecision::Claimed(_)));
}
