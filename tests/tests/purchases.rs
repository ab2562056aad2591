//! Purchases' life against the emulator (rules §7, §10.2): priced by the server, recorded
//! pending, moved by webhook deliveries in any order, credited exactly once.

use topup::store::PaymentRecords;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use topup::ledger::EntryKind;
use topup::pricing::PurchaseChoice;
use topup::purchases::{PurchaseStatus, FAILED_MESSAGE, PROCESSING_MESSAGE};
use topup_tests::*;

fn amount(cents: i64) -> PurchaseChoice {
    PurchaseChoice { amount: Some(cents), ..Default::default() }
}

#[tokio::test]
async fn a_purchase_is_priced_by_the_server_and_idempotent_per_key() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let p = w.credits.record_purchase("acme", &PurchaseChoice::default(), Some(&key("k1"))).await.expect("record");
    assert_eq!((p.status, p.charge.get(), p.credits.get()), (PurchaseStatus::Pending, 1000, 10 * C), "default $10");
    assert_eq!(p.view().message, None);
    // The same key and request: the same purchase. Another request under the key: 409.
    let again = w.credits.record_purchase("acme", &PurchaseChoice::default(), Some(&key("k1"))).await.expect("replay");
    assert_eq!(again, p);
    let e = w.credits.record_purchase("acme", &amount(2000), Some(&key("k1"))).await.expect_err("conflict");
    assert_eq!(e.code(), "idempotency_conflict");
    // Without a key every request is a new purchase.
    let a = w.credits.record_purchase("acme", &amount(500), None).await.expect("a");
    let b = w.credits.record_purchase("acme", &amount(500), None).await.expect("b");
    assert_ne!(a.purchase_id, b.purchase_id);
    for (choice, code) in [(amount(499), "amount_out_of_range"), (amount(100_001), "amount_out_of_range")] {
        let e = w.credits.record_purchase("acme", &choice, None).await.expect_err("refused");
        assert_eq!(e.code(), code);
    }
    assert_eq!(
        w.credits.record_purchase("ghost", &amount(500), None).await.expect_err("404").code(),
        "account_not_found"
    );
    // Recording moves no credits.
    assert_eq!(w.view("acme").await["balance"], 0);
}

#[tokio::test]
async fn a_bank_debit_goes_processing_then_credits_once() {
    let w = World::new("voice-minutes").await;
    let observer = w.observe_bus().await;
    w.account("clinic", "free").await;
    let choice = PurchaseChoice { blocks: Some(2), ..Default::default() };
    let p = w.credits.record_purchase("clinic", &choice, Some(&key("buy-2"))).await.expect("record");
    assert_eq!((p.charge.get(), p.credits.get()), (5_600, 200 * C), "2 blocks at $0.28/min");
    let p = w.credits.attach_checkout("clinic", &p.purchase_id, "cs_test_1").await.expect("attach");
    assert_eq!(p.checkout_session_id.as_deref(), Some("cs_test_1"));
    let p = w.credits.purchase_processing("clinic", &p.purchase_id).await.expect("processing");
    assert_eq!((p.status, p.message()), (PurchaseStatus::Processing, Some(PROCESSING_MESSAGE)));
    assert_eq!(w.view("clinic").await["balance"], 0, "nothing until the payment settles");
    let p = w.credits.purchase_paid("clinic", &p.purchase_id, "pi_1").await.expect("paid");
    assert_eq!((p.status, p.payment_intent_id.as_deref()), (PurchaseStatus::Succeeded, Some("pi_1")));
    // A late "processing" delivery does not move it back.
    let late = w.credits.purchase_processing("clinic", &p.purchase_id).await.expect("late");
    assert_eq!(late.status, PurchaseStatus::Succeeded);
    let v = w.view("clinic").await;
    assert_eq!((v["balance"].as_i64(), v["lifetime_added"].as_i64()), (Some(200 * C), Some(200 * C)));
    assert_eq!(v["recent_transactions"][0]["kind"], "purchase");
    assert_eq!(v["recent_transactions"][0]["id"], serde_json::json!(p.transaction_id));
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "CreditsAdded").len(), 1);
    w.assert_invariants("clinic").await;
}

/// `checkout.session.completed` (paid) 20 times at once from several instances, with
/// `async_payment_succeeded` and a stale `processing` for the same purchase mixed in, and two
/// PaymentIntents: one credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_and_out_of_order_deliveries_credit_once() {
    let w = Arc::new(World::new("request-packs").await);
    w.account("team", "free").await;
    let choice = PurchaseChoice { package: Some("pack_20".into()), ..Default::default() };
    let p = w.credits.record_purchase("team", &choice, None).await.expect("record");
    let id = p.purchase_id.clone();
    let instances: Vec<_> = (0..5).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let inst = instances[i % 5].clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            if i % 8 == 3 {
                inst.purchase_processing("team", &id).await.map(|p| p.status)
            } else {
                // Two PaymentIntents for one purchase (a retried checkout): still one credit.
                let pi = if i % 2 == 0 { "pi_pack" } else { "pi_pack_retry" };
                inst.purchase_paid("team", &id, pi).await.map(|p| p.status)
            }
        }));
    }
    for t in tasks {
        t.await.expect("task").unwrap_or_else(|e| panic!("{e}"));
    }
    let p = w.credits.purchase("team", &id).await.expect("load");
    assert_eq!(p.status, PurchaseStatus::Succeeded);
    assert_eq!(w.view("team").await["balance"], 500 * C, "$20 → 500 requests, once");
    assert_eq!(w.ledger("team").await.iter().filter(|e| e.kind == EntryKind::Purchase).count(), 1);
    w.assert_invariants("team").await;
}

#[tokio::test]
async fn a_failed_payment_is_never_credited_and_says_so() {
    let w = World::new("org-runs").await;
    w.account("org", "pro").await;
    let p = w.credits.record_purchase("org", &amount(2_500), None).await.expect("record");
    w.credits.purchase_processing("org", &p.purchase_id).await.expect("processing");
    let p = w.credits.purchase_failed("org", &p.purchase_id).await.expect("failed");
    assert_eq!((p.status, p.message()), (PurchaseStatus::Failed, Some(FAILED_MESSAGE)));
    assert_eq!(p.view().message.as_deref(), Some("We couldn't confirm your payment. Please try again."));
    assert_eq!(w.view("org").await["balance"], 0);
    // Expiry only applies to pending purchases.
    assert_eq!(w.credits.purchase_expired("org", &p.purchase_id).await.expect("noop").status, PurchaseStatus::Failed);
    let q = w.credits.record_purchase("org", &amount(500), None).await.expect("record");
    assert_eq!(
        w.credits.purchase_expired("org", &q.purchase_id).await.expect("expired").status,
        PurchaseStatus::Expired
    );
    assert_eq!(
        w.credits.purchase("org", &topup::ids::PurchaseId::new("pur_nope")).await.expect_err("404").code(),
        "purchase_not_found"
    );
    w.assert_invariants("org").await;
}

/// Two writers that read the same purchase cannot both write it: the second finds it changed
/// (no lost update of, say, the Checkout Session id when a webhook moves it at the same time).
#[tokio::test]
async fn a_purchase_write_from_a_stale_read_is_refused() {
    use topup::store::{CommitError, PurchaseWrite};
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let p = w.credits.record_purchase("acme", &amount(1000), None).await.expect("record");
    let write = |session: &str| PurchaseWrite {
        record: topup::purchases::PurchaseRecord {
            checkout_session_id: Some(session.into()),
            updated_at: p.updated_at + 1,
            ..p.clone()
        },
        from: vec![PurchaseStatus::Pending],
        expected_updated_at: Some(p.updated_at),
    };
    w.credits.store.put_purchase(write("cs_first")).await.map_err(|e| format!("{e:?}")).expect("first write");
    match w.credits.store.put_purchase(write("cs_second")).await {
        Err(CommitError::PurchaseNotInState(Some(current))) => {
            assert_eq!(current.checkout_session_id.as_deref(), Some("cs_first"))
        }
        other => panic!("a stale write must be refused, got {other:?}"),
    }
    // The service's own moves read again and succeed.
    let moved = w.credits.purchase_processing("acme", &p.purchase_id).await.expect("processing");
    assert_eq!((moved.status, moved.checkout_session_id.as_deref()), (PurchaseStatus::Processing, Some("cs_first")));
}

/// Rules §13: an account starts at most `PURCHASES_PER_MINUTE` purchases a minute, counted in
/// the table (a conditional counter per account and minute), through the `purchase` function.
/// The next start in the same minute answers 429 `too_many_requests` with the seconds until the
/// next minute, before Stripe is asked, and writes nothing; a retry of a started purchase is
/// answered, not counted; another account has its own count.
#[tokio::test]
async fn the_twenty_first_purchase_start_in_a_minute_is_refused_and_changes_nothing() {
    use topup::purchases::PURCHASES_PER_MINUTE;
    assert_eq!(PURCHASES_PER_MINUTE, 20);
    // The 21 starts fall in one minute: the world's clock stands 20 s into one until moved.
    let start = topup::clock::now_ms() / 60_000 * 60_000 + 20_000;
    let w = World::new("usd-overage").await.with_manual_clock(start);
    let id = unique("limit");
    let other = unique("limit");
    w.account(&id, "free").await;
    w.account(&other, "free").await;
    let minute = w.now() / 60_000;
    let mut keys = Vec::new();
    for i in 0..PURCHASES_PER_MINUTE {
        let k = unique(&format!("start{i}"));
        let (s, b) = w.buy(buy_request(&id, json!({"amount": 500}), Some(&k))).await;
        assert_eq!(s, 201, "start {i}: {b}");
        keys.push((k, b["purchase_id"].clone()));
    }
    let before = w.snapshot(&id).await;
    let counter = before
        .iter()
        .find(|i| i.get("sk").and_then(|v| v.as_s().ok()).is_some_and(|s| s.starts_with("RATE#purchases#")))
        .expect("the minute's counter");
    let counted = PURCHASES_PER_MINUTE.to_string();
    assert_eq!(counter.get("n").and_then(|v| v.as_n().ok()), Some(&counted));

    // Through a Stripe that cannot be reached: refused before Stripe would be asked.
    let ui = w.config.checkout_ui.clone().expect("checkout configured");
    let payments = unreachable_stripe();
    let checkout = purchase::Checkout { payments: &payments, ui: &ui };
    let resp =
        purchase::handle(&w.config, &w.credits, &checkout, buy_request(&id, json!({"amount": 500}), Some("late")))
            .await;
    let retry_after: Option<u64> =
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let (s, b) = read(resp);
    assert_eq!((s, b["error"]["code"].as_str()), (429, Some("too_many_requests")), "{b}");
    let retry_after = retry_after.expect("Retry-After");
    assert_eq!(w.now() / 60_000, minute, "all 21 in one minute");
    assert_eq!(retry_after, 40, "the seconds left of the minute");
    assert_eq!(w.snapshot(&id).await, before, "a refused start writes nothing");

    // A retry of a started purchase is answered with it; another account starts its own.
    let (k, first) = &keys[0];
    let (s, b) = w.buy(buy_request(&id, json!({"amount": 500}), Some(k))).await;
    assert_eq!((s, &b["purchase_id"]), (201, first), "{b}");
    let (s, b) = w.buy(buy_request(&other, json!({"amount": 500}), Some("late"))).await;
    assert_eq!(s, 201, "{b}");
    // The next minute counts afresh.
    w.advance(40_000);
    let (s, b) = w.buy(buy_request(&id, json!({"amount": 500}), Some("next-minute"))).await;
    assert_eq!(s, 201, "{b}");
}
