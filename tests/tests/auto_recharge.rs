//! Auto-recharge end to end against moto and localstripe (rules §8, §10.2, §10.5, §10.6): the
//! `auto-recharge` handler on `BalanceLow` and on the schedule, the real Stripe client, and
//! the account's ledger.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use topup::ledger::EntryKind;
use topup::payments::{OffSessionCharge, Payments};
use topup::recharge::RechargeDecision;
use topup_tests::*;

async fn enabled_low_account(w: &World, card: &str) -> topup::adapters::stripe::StripePayments {
    w.account("acme", "free").await;
    let payments = w.save_stripe_card("acme", card).await;
    w.set_auto_recharge("acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;
    payments
}

/// Account `acme` with a card that pays, auto-recharge on, below its threshold ($4), and the
/// recharge claimed but not yet charged: where a function could die.
async fn claimed_below_threshold(
    w: &World,
) -> (topup::adapters::stripe::StripePayments, topup::account::RechargeClaim) {
    let payments = enabled_low_account(w, "4242424242424242").await;
    w.usage("acme", "api_calls", 2_000).await;
    let RechargeDecision::Claimed(claim) = w.credits.claim_recharge("acme").await.expect("claim") else {
        panic!("not claimed")
    };
    (payments, claim)
}

/// Charges `claim` as the function does, successfully; the PaymentIntent's id.
async fn charge_as_the_function(
    w: &World,
    payments: &topup::adapters::stripe::StripePayments,
    claim: &topup::account::RechargeClaim,
) -> String {
    let charge = the_claims_charge(w, claim).await;
    match payments.charge_off_session(&charge).await.expect("charge") {
        topup::payments::ChargeOutcome::Succeeded { payment_intent_id } => payment_intent_id,
        other => panic!("not charged: {other:?}"),
    }
}

/// The off-session charge the function makes for `claim` on account `acme` (same idempotency
/// key and metadata), for tests that play the function dying around it.
async fn the_claims_charge(w: &World, claim: &topup::account::RechargeClaim) -> OffSessionCharge {
    let a = w.credits.account("acme").await.expect("account");
    OffSessionCharge {
        customer_id: a.stripe_customer_id.clone().unwrap_or_default(),
        payment_method_id: a.payment_method.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
        amount_cents: claim.charge_cents,
        currency: "usd".into(),
        idempotency_key: w.credits.charge_key(claim),
        metadata: w.credits.stripe_metadata("acme", &[("topup_recharge_id", claim.recharge_id.as_str())]),
    }
}

fn schedule() -> Value {
    json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}})
}

/// The same `BalanceLow` delivered 20 times at once, with 5 sweeps racing it: one charge, one
/// credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_low_balance_charges_the_card_once_however_often_it_is_triggered() {
    let w = Arc::new(World::new("usd-overage").await);
    let observer = w.observe_bus().await;
    let payments = Arc::new(enabled_low_account(&w, "4242424242424242").await);
    let (s, _) = w.usage("acme", "api_calls", 2_000).await; // $6 → $4: below $5
    assert_eq!(s, 200);
    let events = observer.drain(Duration::from_secs(1)).await;
    let low = of_type(&events, "BalanceLow")[0].clone();
    let mut tasks = Vec::new();
    for i in 0..25 {
        let (inst, payments) = (Arc::new(w.another_instance()), payments.clone());
        let event = if i % 5 == 4 { schedule() } else { low.clone() };
        tasks.push(tokio::spawn(async move { auto_recharge::handle(&inst, &*payments, &topup_tests::trigger(&event)).await }));
    }
    let mut credited = Vec::new();
    for t in tasks {
        let out = t.await.expect("task").unwrap_or_else(|e| panic!("{e}"));
        let recharges = if out["result"].is_string() {
            vec![out.clone()]
        } else {
            out["recharges"].as_array().cloned().unwrap_or_default().into_iter().map(|r| r["outcome"].clone()).collect()
        };
        credited.extend(recharges.into_iter().filter(|r| r["result"] == "credited"));
    }
    assert_eq!(credited.len(), 1, "{credited:?}");
    let v = w.view("acme").await;
    assert_eq!((v["balance"].as_i64(), v["auto_recharge"]["used_this_month"].as_i64()), (Some(14 * C), Some(1)));
    assert_eq!(w.ledger("acme").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
    let after = observer.drain(Duration::from_secs(1)).await;
    // A sweep's outbox redelivery may race the first publication: consumers dedupe by event_id,
    // and there is exactly one event.
    assert_eq!(of_type(&after, "AutoRechargeSucceeded").len(), 1, "{after:?}");
    w.assert_invariants("acme").await;
}

/// A lost `BalanceLow` delays the recharge until the sweep, never skips it.
#[tokio::test]
async fn the_sweep_recharges_an_account_whose_event_was_lost() {
    let w = World::new("usd-overage").await;
    let payments = enabled_low_account(&w, "4242424242424242").await;
    w.usage("acme", "api_calls", 2_000).await; // its BalanceLow is never delivered
    let report = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&schedule())).await.expect("sweep");
    assert_eq!(report["recharges"][0]["outcome"]["result"], "credited", "{report}");
    assert_eq!(w.view("acme").await["balance"], 14 * C);
}

#[tokio::test]
async fn a_declined_card_adds_nothing_records_why_and_is_not_retried() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    let payments = enabled_low_account(&w, "4000000000000341").await;
    w.usage("acme", "api_calls", 2_000).await;
    let low = balance_low("acme");
    let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("handled");
    assert_eq!((out["result"].as_str(), out["code"].as_str()), (Some("failed"), Some("card_declined")), "{out}");
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 4 * C, "nothing added");
    assert_eq!(v["last_recharge_error"]["code"], "card_declined");
    assert_eq!(v["auto_recharge"]["paused"]["reason"], "payment_failed");
    // No automatic retry: neither the event again nor the sweep charges.
    let again = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("handled");
    assert_eq!(again["reason"], "suspended");
    let sweep = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&schedule())).await.expect("sweep");
    assert_eq!(sweep["recharges"], json!([]));
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "AutoRechargeFailed").len(), 1);
    w.assert_invariants("acme").await;

    // An admin saves a new card (SetupIntent, confirmed in the browser, then the webhook): the
    // suspension lifts and the next trigger charges the new card, once.
    let (s, setup) = w.buy(post("/v1/accounts/acme/payment-method/setup", &person("admin", "acme"), json!({}))).await;
    assert_eq!(s, 201, "{setup}");
    let seti = setup["setup_intent_id"].as_str().expect("id");
    let (s, confirmed) = local_stripe(
        "POST",
        &format!("/v1/setup_intents/{seti}/confirm"),
        &[
            ("payment_method_data[type]", "card"),
            ("payment_method_data[card][number]", "4242424242424242"),
            ("payment_method_data[card][exp_month]", "12"),
            ("payment_method_data[card][exp_year]", "2031"),
            ("payment_method_data[card][cvc]", "123"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{confirmed}");
    let (s, r) = w.deliver(&stripe_event("setup_intent.succeeded", confirmed)).await;
    assert_eq!(s, 200, "{r}");
    let v = w.view("acme").await;
    assert_eq!((v["payment_method"]["last4"].as_str(), &v["auto_recharge"]["paused"]), (Some("4242"), &Value::Null));
    let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("handled");
    assert_eq!(out["result"], "credited", "{out}");
    let again = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("handled");
    assert_eq!(again["result"], "not_due", "{again}");
    assert_eq!(w.view("acme").await["balance"], 14 * C);
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn a_card_that_needs_authentication_is_a_failure() {
    let w = World::new("usd-overage").await;
    let payments = enabled_low_account(&w, "4000002760003184").await;
    w.usage("acme", "api_calls", 2_000).await;
    let low = balance_low("acme");
    let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("handled");
    assert_eq!(out["code"], "authentication_required", "{out}");
    assert_eq!(w.view("acme").await["balance"], 4 * C);
}

/// The function died after Stripe charged but before crediting: after the lease, the sweep
/// repeats the same call, gets the same PaymentIntent, and credits it once.
#[tokio::test]
async fn a_claim_whose_function_died_is_recovered_without_a_second_charge() {
    let w = World::new("usd-overage").await;
    let (payments, claim) = claimed_below_threshold(&w).await;
    let account = w.view("acme").await;
    assert_eq!(account["balance"], 4 * C);
    let charge = the_claims_charge(&w, &claim).await;
    let first = payments.charge_off_session(&charge).await.expect("charged, then the function died");
    // Before the lease runs out nothing happens; after it, the sweep recovers.
    let early = w.credits.sweep(&payments, 100, 3_600_000).await.expect("sweep");
    assert!(early.recharges.is_empty(), "{early:?}");
    let report = json!(w.credits.sweep(&payments, 100, 0).await.expect("sweep"));
    let outcome = &report["recharges"][0]["outcome"];
    assert_eq!(outcome["result"], "credited", "{report}");
    let topup::payments::ChargeOutcome::Succeeded { payment_intent_id } = first else { panic!("{first:?}") };
    assert_eq!(outcome["payment_intent"], json!(payment_intent_id), "the same PaymentIntent: no second charge");
    assert_eq!(w.view("acme").await["balance"], 14 * C);
    assert_eq!(w.ledger("acme").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
}

/// Counts the distinct idempotency keys charged: one key is one PaymentIntent at Stripe.
struct Counting<P> {
    inner: P,
    keys: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<P: Payments> Payments for Counting<P> {
    async fn create_customer(
        &self,
        customer: &topup::payments::NewCustomer,
    ) -> Result<String, topup::payments::PaymentsUnavailable> {
        self.inner.create_customer(customer).await
    }
    async fn charge_off_session(
        &self,
        charge: &OffSessionCharge,
    ) -> Result<topup::payments::ChargeOutcome, topup::payments::PaymentsUnavailable> {
        if let Ok(mut k) = self.keys.lock() {
            k.insert(charge.idempotency_key.clone());
        }
        self.inner.charge_off_session(charge).await
    }
    async fn cancel_payment(
        &self,
        payment_intent_id: &str,
        key: &str,
    ) -> Result<topup::payments::CancelOutcome, topup::payments::PaymentsUnavailable> {
        self.inner.cancel_payment(payment_intent_id, key).await
    }
}

/// 50 triggers — 40 deliveries of one `BalanceLow` and 10 sweeps — from 5 instances: exactly
/// one PaymentIntent and exactly one credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_triggers_make_one_payment_intent() {
    let w = Arc::new(World::new("org-runs").await);
    w.account("org", "pro").await;
    let payments =
        Arc::new(Counting { inner: w.save_stripe_card("org", "4242424242424242").await, keys: Default::default() });
    let (s, b) = w.api(put("/v1/accounts/org/credits/auto-recharge", &service(), json!({"enabled": true}))).await;
    assert_eq!(s, 200, "{b}");
    w.grant("org", 4 * C).await; // at or below 5 credits
    let low = balance_low("org");
    let instances: Vec<_> = (0..5).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (inst, payments) = (instances[i % 5].clone(), payments.clone());
        let event = if i % 5 == 0 { schedule() } else { low.clone() };
        tasks.push(tokio::spawn(async move { auto_recharge::handle(&inst, &*payments, &topup_tests::trigger(&event)).await }));
    }
    for t in tasks {
        t.await.expect("task").unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(payments.keys.lock().map(|k| k.len()).unwrap_or(0), 1, "one PaymentIntent");
    assert_eq!(w.ledger("org").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
    assert_eq!(w.view("org").await["balance"], 24 * C, "4 + the default 20 credits");
    w.assert_invariants("org").await;
}

/// The function died right after claiming: the sweep charges once and credits once.
#[tokio::test]
async fn a_claim_whose_function_died_before_charging_is_recovered() {
    let w = World::new("usd-overage").await;
    let payments = Counting { inner: enabled_low_account(&w, "4242424242424242").await, keys: Default::default() };
    w.usage("acme", "api_calls", 2_000).await;
    let RechargeDecision::Claimed(_) = w.credits.claim_recharge("acme").await.expect("claim") else {
        panic!("not claimed")
    };
    let report = json!(w.credits.sweep(&payments, 100, 0).await.expect("sweep"));
    assert_eq!(report["recharges"][0]["outcome"]["result"], "credited", "{report}");
    let again = w.credits.sweep(&payments, 100, 0).await.expect("sweep");
    assert!(again.recharges.is_empty(), "nothing left to recover: {again:?}");
    assert_eq!(payments.keys.lock().map(|k| k.len()).unwrap_or(0), 1);
    assert_eq!(w.view("acme").await["balance"], 14 * C);
}

/// seed 004: "Auto-reload is checked at the end of each call, not during it. If a call ends with
/// your balance below the threshold, one block is purchased so the next call has minutes."
#[tokio::test]
async fn voice_a_call_that_ends_below_the_threshold_reloads_one_block_after_the_settle() {
    let w = World::new("voice-minutes").await;
    let observer = w.observe_bus().await;
    w.account("clinic", "pro").await;
    let payments = w.save_stripe_card("clinic", "4242424242424242").await;
    let (s, b) = w.api(put("/v1/accounts/clinic/credits/auto-recharge", &service(), json!({"enabled": true}))).await;
    assert_eq!(s, 200, "{b}");
    w.usage("clinic", "voice_minutes", 1_000).await; // the plan's minutes
    w.grant("clinic", 15 * C).await;
    let (s, h) = w
        .debit(post(
            "/v1/accounts/clinic/usage/holds",
            &service(),
            json!({"consumable": "voice_minutes", "quantity": 12, "idempotency_key": "call"}),
        ))
        .await;
    assert_eq!(s, 201, "{h}");
    // During the call nothing crosses and nothing reloads.
    assert!(of_type(&observer.drain(Duration::from_millis(500)).await, "BalanceLow").is_empty());
    let sweep = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&schedule())).await.expect("sweep");
    assert_eq!(sweep["recharges"], json!([]), "15 minutes is not below 10: no reload mid-call");
    let hold_id = h["hold_id"].as_str().unwrap_or_default();
    let (s, r) = w
        .debit(post(&format!("/v1/accounts/clinic/usage/holds/{hold_id}/settle"), &service(), json!({"quantity": 8})))
        .await;
    assert_eq!((s, r["balance"].as_i64()), (200, Some(7 * C)));
    let events = observer.drain(Duration::from_secs(1)).await;
    let low = of_type(&events, "BalanceLow");
    assert_eq!(low.len(), 1, "the settle crosses");
    let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(low[0])).await.expect("recharge");
    assert_eq!(out["result"], "credited", "{out}");
    let v = w.view("clinic").await;
    assert_eq!(v["balance"], 107 * C, "one 100-minute block");
    assert_eq!(v["recent_transactions"][0]["description"], "Auto-recharge of 100 minutes");
}

/// The (cap+1)th crossing in a month does not charge and says so once; the next month it does.
#[tokio::test]
async fn the_monthly_cap_holds_until_the_next_month() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    let payments = enabled_low_account(&w, "4242424242424242").await;
    let (s, _) = w
        .api(put("/v1/accounts/acme/credits/auto-recharge", &service(), json!({"enabled": true, "monthly_max": 1})))
        .await;
    assert_eq!(s, 200);
    w.usage("acme", "api_calls", 2_000).await; // $4
    assert_eq!(
        auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&schedule())).await.expect("sweep")["recharges"][0]["outcome"]
            ["result"],
        "credited"
    );
    w.usage("acme", "api_calls", 11_000).await; // $14 → $3: below again
    for _ in 0..3 {
        assert_eq!(
            w.credits.claim_recharge("acme").await.expect("claim"),
            RechargeDecision::NotDue("monthly_cap".into())
        );
    }
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "AutoRechargePaused").len(), 1, "announced once");
    assert_eq!(w.view("acme").await["balance"], 3 * C, "no charge past the cap");
    // A new calendar month: the counter resets (simulated by dating the count last month).
    w.edit_account("acme", |a| a.auto_recharge.used_month = "2000-01".into()).await;
    let out = auto_recharge::handle(&w.another_instance(), &payments, &topup_tests::trigger(&balance_low("acme"))).await.expect("recharge");
    assert_eq!(out["result"], "credited", "{out}");
    assert_eq!(w.view("acme").await["balance"], 13 * C);
}

/// The PaymentIntent of a claimed recharge settles through the webhook (a charge that was
/// `processing`, or the function died after Stripe answered): `payment_intent.succeeded`
/// delivered several times, racing the function's own completion, credits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recharge_is_credited_once_by_its_webhook_or_the_function_whichever_comes_first() {
    let w = Arc::new(World::new("usd-overage").await);
    let (payments, claim) = claimed_below_threshold(&w).await;
    let payment_intent_id = charge_as_the_function(&w, &payments, &claim).await;
    let (_, pi) = local_stripe("GET", &format!("/v1/payment_intents/{payment_intent_id}"), &[]).await;
    assert_eq!(pi["metadata"]["topup_recharge_id"], json!(claim.recharge_id));
    let event = stripe_event("payment_intent.succeeded", pi);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (w, event) = (w.clone(), event.clone());
        tasks.push(tokio::spawn(async move { w.deliver(&event).await }));
    }
    let (w2, claim2, pi2) = (w.clone(), claim.clone(), payment_intent_id.clone());
    let own = tokio::spawn(async move { w2.credits.complete_recharge("acme", &claim2, &pi2).await });
    for t in tasks {
        let (s, r) = t.await.expect("task");
        assert_eq!(s, 200, "{r}");
    }
    own.await.expect("task").expect("the function's completion");
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 14 * C, "4 left + 10 once");
    assert_eq!(v["auto_recharge"]["used_this_month"], 1);
    assert_eq!(w.ledger("acme").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
    w.assert_invariants("acme").await;
}

/// `payment_intent.payment_failed` for a claimed recharge: nothing added, the error recorded,
/// auto-recharge suspended (no automatic retry); a repeat changes nothing.
#[tokio::test]
async fn a_recharge_that_fails_later_is_recorded_by_its_webhook() {
    let w = World::new("usd-overage").await;
    let (_, claim) = claimed_below_threshold(&w).await;
    // A PaymentIntent that failed after it was made (still `requires_payment_method` at Stripe).
    let (s, pi) = local_stripe("POST", "/v1/payment_intents", &[("amount", "1000"), ("currency", "usd")]).await;
    assert_eq!(s, 200, "{pi}");
    let pi_id = pi["id"].as_str().expect("id").to_string();
    let failed = json!({
        "id": pi_id,
        "object": "payment_intent",
        "status": "requires_payment_method",
        "metadata": {"topup_account_id": "acme", "topup_recharge_id": claim.recharge_id},
        "last_payment_error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."},
    });
    let event = stripe_event("payment_intent.payment_failed", failed);
    let (s, r) = w.deliver(&event).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("failed")), "{r}");
    let after = w.snapshot("acme").await;
    let (s, r) = w.deliver(&event).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("unchanged")), "{r}");
    assert_eq!(w.snapshot("acme").await, after);
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 4 * C);
    assert_eq!(v["last_recharge_error"]["code"], "card_declined");
    assert_eq!(v["auto_recharge"]["used_this_month"], 0, "a failed recharge gives its count back");
    let (_, read) = local_stripe("GET", &format!("/v1/payment_intents/{pi_id}"), &[]).await;
    assert_eq!(read["status"], "canceled", "cancelled first, so it can never succeed later: {read}");
    assert!(
        !v["auto_recharge"]["paused"].is_null(),
        "suspended until a new card or a purchase: {}",
        v["auto_recharge"]
    );
    let again = w.credits.recharge(&stripe_payments(), "acme").await.expect("again");
    assert!(matches!(again, topup::recharge::RechargeResult::NotDue { .. }), "{again:?}");
    w.assert_invariants("acme").await;
}

/// A recharge recorded as failed whose payment comes through after all (the bank relents):
/// `payment_intent.succeeded` credits it once from the record made at its claim, though the
/// claim is gone (rules §10.2: a paid payment credits exactly once), and it counts again
/// toward the month's recharges and spending (rules §12).
#[tokio::test]
async fn a_payment_that_succeeds_after_its_recharge_was_recorded_failed_still_credits_once() {
    let w = World::new("usd-overage").await;
    let (payments, claim) = claimed_below_threshold(&w).await;
    let payment_intent_id = charge_as_the_function(&w, &payments, &claim).await;
    let failure = topup::account::RechargeError {
        code: "processing_error".into(),
        decline_code: None,
        message: "An error occurred while processing the card.".into(),
        at: 0,
    };
    assert!(w.credits.fail_recharge("acme", &claim.recharge_id, &failure).await.expect("fail"));
    assert_eq!(w.view("acme").await["balance"], 4 * C);
    let (_, pi) = local_stripe("GET", &format!("/v1/payment_intents/{payment_intent_id}"), &[]).await;
    let event = stripe_event("payment_intent.succeeded", pi);
    for _ in 0..3 {
        let (s, r) = w.deliver(&event).await;
        assert_eq!(s, 200, "{r}");
    }
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 14 * C, "credited once");
    assert_eq!(w.ledger("acme").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
    assert_eq!(
        (v["auto_recharge"]["used_this_month"].as_i64(), v["auto_recharge"]["spent_this_month"].as_i64()),
        (Some(1), Some(1000)),
        "the failure gave the count back; the late success takes it again: {v}"
    );
    w.assert_invariants("acme").await;
}

/// Money moves only on proof (rules §12): a PaymentIntent whose metadata names our account and
/// a recharge we never recorded, or one of ours with another amount or currency, credits
/// nothing, whatever `topup_credits` its metadata claims; the real one credits the record's
/// credits.
#[tokio::test]
async fn a_payment_intent_credits_only_a_recorded_recharge_at_its_recorded_charge() {
    let w = World::new("usd-overage").await;
    let (payments, claim) = claimed_below_threshold(&w).await;
    let payment_intent_id = charge_as_the_function(&w, &payments, &claim).await;
    let (_, real) = local_stripe("GET", &format!("/v1/payment_intents/{payment_intent_id}"), &[]).await;
    let forged = |edit: &dyn Fn(&mut Value)| {
        let mut pi = real.clone();
        pi["id"] = json!(unique("pi_forged"));
        pi["metadata"]["topup_credits"] = json!((1_000 * C).to_string());
        edit(&mut pi);
        stripe_event("payment_intent.succeeded", pi)
    };
    let cases = [
        ("unknown_recharge", forged(&|pi| pi["metadata"]["topup_recharge_id"] = json!("rch_never_made"))),
        ("amount_mismatch", forged(&|pi| pi["amount_received"] = json!(1))),
        ("currency_mismatch", forged(&|pi| pi["currency"] = json!("eur"))),
    ];
    for (reason, event) in cases {
        let (s, r) = w.deliver(&event).await;
        assert_eq!((s, r["result"].as_str(), r["reason"].as_str()), (200, Some("ignored"), Some(reason)), "{r}");
        assert_eq!(w.view("acme").await["balance"], 4 * C, "{reason}: nothing credited");
    }
    let (s, r) = w.deliver(&stripe_event("payment_intent.succeeded", real)).await;
    assert_eq!((s, r["result"]["amount"].as_i64()), (200, Some(10 * C)), "the record's credits: {r}");
    assert_eq!(w.view("acme").await["balance"], 14 * C);
    w.assert_invariants("acme").await;
}

/// One low-balance episode, one recharge (rules §10.5), even when the recharge leaves the
/// balance low: on org-runs ("at or below") a recharge of 5 credits with a 5-credit threshold
/// from zero ends at the threshold, still low. Neither the sweep nor another `BalanceLow` charges
/// again until the balance has risen above the threshold and fallen back.
#[tokio::test]
async fn a_recharge_that_leaves_the_balance_low_is_not_repeated_in_the_episode() {
    let w = World::new("org-runs").await;
    let id = unique("episode");
    w.account(&id, "free").await;
    let payments = w.save_stripe_card(&id, "4242424242424242").await;
    w.set_auto_recharge(&id, json!({"enabled": true, "threshold": 5 * C, "amount": 5 * C})).await;
    let low = balance_low(&id);
    let r = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("recharge");
    assert_eq!(r["result"], "credited", "{r}");
    assert_eq!(w.view(&id).await["balance"], 5 * C, "at the threshold: still low");
    for event in [low.clone(), schedule(), low.clone()] {
        let r = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&event)).await.expect("handled");
        assert!(r.get("recharges").is_none_or(|x| x.as_array().is_some_and(Vec::is_empty)), "{r}");
        assert!(r["result"] != "credited", "{r}");
    }
    let a = w.credits.account(&id).await.expect("account");
    assert_eq!((a.balance.get(), a.auto_recharge.used_this_month), (5 * C, 1), "one recharge in the episode");
    // Above the threshold, then back down: a new episode, a new recharge.
    w.grant(&id, C).await;
    let included = w.included(&id, "runs").await;
    let (s, b) = w.usage(&id, "runs", included + 200).await;
    assert_eq!((s, b["balance"].as_i64()), (200, Some(4 * C)), "{b}");
    let r = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("recharge");
    assert_eq!(r["result"], "credited", "{r}");
    assert_eq!(w.view(&id).await["balance"], 9 * C);
    w.assert_invariants(&id).await;
}

/// Only usage starts a recharge (rules §12): a negative adjustment or a refund that takes the
/// balance below the threshold charges nothing, by event or by sweep; usage that then draws on
/// the low balance does.
#[tokio::test]
async fn a_refund_or_a_negative_adjustment_that_crosses_the_threshold_charges_nothing() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let payments = w.save_stripe_card("acme", "4242424242424242").await;
    w.set_auto_recharge("acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.usage("acme", "api_calls", 1_000).await;
    // $20 bought through Checkout, so that it can be refunded.
    let b = open_purchase(&w, "acme", json!({"amount": 2000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    assert_eq!(w.view("acme").await["balance"], 20 * C);

    // A refund of $16 takes the balance from $20 to $4, below the $5 threshold.
    let pi = paid["payment_intent"].as_str().expect("pi");
    let (s, r) = w.deliver(&stripe_event("charge.refunded", refund_at_stripe(pi, Some(1600)).await)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view("acme").await["balance"], 4 * C);
    let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&balance_low("acme"))).await.expect("handled");
    assert_eq!((out["result"].as_str(), out["reason"].as_str()), (Some("not_due"), Some("not_started_by_usage")));
    let sweep = w.credits.sweep(&payments, 100, 0).await.expect("sweep");
    assert!(sweep.recharges.is_empty(), "the sweep charges nothing either: {sweep:?}");

    // Usage that draws on the low balance does start one.
    w.usage("acme", "api_calls", 100).await;
    let out = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&balance_low("acme"))).await.expect("handled");
    assert_eq!(out["result"], "credited", "{out}");

    // Back above the threshold, a negative adjustment into low charges nothing.
    let before = w.view("acme").await["balance"].as_i64().unwrap_or_default();
    let (s, b) = w
        .api(post(
            "/v1/accounts/acme/credits/adjustments",
            &service(),
            json!({"amount": -(before - 3 * C), "reason": "correction", "idempotency_key": unique("adj")}),
        ))
        .await;
    assert_eq!(s, 201, "{b}");
    let RechargeDecision::NotDue(why) = w.credits.claim_recharge("acme").await.expect("claim") else {
        panic!("claimed after a negative adjustment")
    };
    assert_eq!(why, "not_started_by_usage");
    w.assert_invariants("acme").await;
}

/// rules §16: a failure reported for a recharge whose PaymentIntent succeeded after all (a
/// `payment_failed` delivered after the success, or a charge answered failed that a retry of its
/// confirmation paid) is not recorded as a failure: Stripe will not cancel it, so it is credited
/// from its record, counted once, and never makes room for another charge. On the old path the
/// failure gave the count back, a second recharge was charged in the same month, and the late
/// success took the month past its cap.
#[tokio::test]
async fn a_late_success_never_makes_room_for_another_charge() {
    let w = World::new("usd-overage").await;
    let (payments, claim) = claimed_below_threshold(&w).await;
    w.set_auto_recharge("acme", json!({"enabled": true, "monthly_max": 1})).await;
    let payment_intent_id = charge_as_the_function(&w, &payments, &claim).await;
    let failure = topup::account::RechargeError {
        code: "processing_error".into(),
        decline_code: None,
        message: "An error occurred while processing the card.".into(),
        at: 0,
    };
    let recorded = w
        .credits
        .fail_charged_recharge(&payments, "acme", &claim.recharge_id, Some(&payment_intent_id), &failure)
        .await
        .expect("answered");
    assert!(!recorded, "no failure is recorded for a payment that went through");
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 14 * C, "credited from the recharge's record");
    assert!(v["last_recharge_error"].is_null(), "{v}");
    assert_eq!(
        (v["auto_recharge"]["used_this_month"].as_i64(), v["auto_recharge"]["spent_this_month"].as_i64()),
        (Some(1), Some(1000)),
        "{v}"
    );
    // Usage takes the balance low again: the cap of one is reached, nothing more is charged.
    w.usage("acme", "api_calls", 10_000).await;
    let again = w.credits.recharge(&payments, "acme").await.expect("again");
    assert!(matches!(again, topup::recharge::RechargeResult::NotDue { .. }), "{again:?}");
    // The success event, and the failure event again, change nothing.
    let (_, pi) = local_stripe("GET", &format!("/v1/payment_intents/{payment_intent_id}"), &[]).await;
    for event in [stripe_event("payment_intent.succeeded", pi.clone()), stripe_event("payment_intent.payment_failed", pi)] {
        for _ in 0..2 {
            let (s, r) = w.deliver(&event).await;
            assert_eq!(s, 200, "{r}");
        }
    }
    let v = w.view("acme").await;
    assert_eq!(v["balance"], 4 * C, "credited once");
    assert_eq!(w.ledger("acme").await.iter().filter(|e| e.kind == EntryKind::AutoRecharge).count(), 1);
    assert_eq!(
        (v["auto_recharge"]["used_this_month"].as_i64(), v["auto_recharge"]["spent_this_month"].as_i64()),
        (Some(1), Some(1000)),
        "the month's count and money never pass the cap: {v}"
    );
    w.assert_invariants("acme").await;
}
