//! Crediting a payment exactly once against the emulator (rules §7, §10.2): the path the
//! webhook and auto-recharge share.

use std::sync::Arc;
use std::time::Duration;

use topup::crediting::Payment;
use topup::ledger::EntryKind;
use topup::money::Micros;
use topup_tests::*;

fn paid(id: &str, credits: i64) -> Payment {
    Payment {
        payment_id: id.into(),
        kind: EntryKind::Purchase,
        credits: Micros::new(credits),
        charge_cents: credits / 10_000,
        reference: "pur_test".into(),
        description: "$10.00 of credits".into(),
        recharge_month: None,
    }
}

/// The same payment credited 20 times at once from 5 instances (as concurrent webhook
/// deliveries would): one ledger entry, one `CreditsAdded`, every caller the same entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_deliveries_of_one_payment_credit_once() {
    let w = Arc::new(World::new("usd-overage").await);
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    let instances: Vec<_> = (0..5).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let inst = instances[i % 5].clone();
        tasks.push(tokio::spawn(async move { inst.credit_payment("acme", &paid("pi_same", 10 * C)).await }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.expect("task").unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(replies.windows(2).all(|p| p[0] == p[1]), "every delivery gets the first entry");
    assert_eq!(replies[0].amount, 10 * C);
    let v = w.view("acme").await;
    assert_eq!((v["balance"].as_i64(), v["lifetime_added"].as_i64()), (Some(10 * C), Some(10 * C)));
    let ledger = w.ledger("acme").await;
    assert_eq!(ledger.iter().filter(|e| e.kind == EntryKind::Purchase).count(), 1);
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "CreditsAdded").len(), 1, "{events:?}");
    w.assert_invariants("acme").await;

    // Another payment credits; the first, delivered again much later, still does not.
    w.credits.credit_payment("acme", &paid("pi_other", 5 * C)).await.unwrap_or_else(|e| panic!("{e}"));
    let again =
        w.another_instance().credit_payment("acme", &paid("pi_same", 10 * C)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, replies[0]);
    assert_eq!(w.view("acme").await["balance"], 15 * C);
    w.assert_invariants("acme").await;
}

/// The claim on a payment is permanent: unlike idempotency keys, it has no TTL.
#[tokio::test]
async fn payment_claims_never_expire() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    w.credits.credit_payment("org", &paid("pi_forever", 5 * C)).await.unwrap_or_else(|e| panic!("{e}"));
    w.usage("org", "runs", 1_000).await; // an ordinary usage key, for contrast
    let items = w.snapshot("org").await;
    let claim =
        items.iter().find(|i| i.get("sk").and_then(|s| s.as_s().ok()).is_some_and(|s| s == "IDEM#payment:pi_forever"));
    assert!(claim.is_some_and(|c| !c.contains_key("ttl")), "payment claim without ttl");
    // Usage keys live on their own partition keys (so a hot account's partition carries only
    // its account item and ledger), and expire.
    assert!(!items
        .iter()
        .any(|i| i.get("sk").and_then(|s| s.as_s().ok()).is_some_and(|s| s.starts_with("IDEM#usage:"))));
    let scan = w.dynamo.scan().table_name(&w.config.table).send().await.expect("scan");
    let usage_keys: Vec<_> = scan
        .items()
        .iter()
        .filter(|i| i.get("pk").and_then(|s| s.as_s().ok()).is_some_and(|s| s.starts_with("KEY#org#usage:")))
        .collect();
    assert_eq!(usage_keys.len(), 1);
    assert!(usage_keys.iter().all(|c| c.contains_key("ttl")), "usage keys expire");
}
