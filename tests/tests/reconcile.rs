//! Reconciliation against moto and localstripe (rules §10.1, §10.2): books that agree report
//! nothing; each way they can disagree is named. Account ids are unique per test because the
//! local Stripe is shared and a customer is keyed by the account id, as in production.

use topup::store::Listings;
use std::collections::BTreeSet;

use serde_json::json;
use topup::reconcile::Severity;
use topup_tests::*;

fn codes(differences: &[topup::reconcile::Difference]) -> BTreeSet<&str> {
    differences.iter().map(|d| d.code.as_ref()).collect()
}

/// A purchase of `cents` paid in the local Stripe; the paid session (what its event carries).
async fn paid_purchase(w: &World, id: &str, cents: i64) -> serde_json::Value {
    let b = open_purchase(w, id, json!({"amount": cents})).await;
    pay(b["checkout_session_id"].as_str().expect("session"), &[]).await
}

#[tokio::test]
async fn books_that_agree_reconcile_clean() {
    let w = World::new("usd-overage").await;
    let id = unique("rec");
    w.account(&id, "free").await;
    let paid = paid_purchase(&w, &id, 4000).await;
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    // Beyond the month's allowance, so credits are consumed.
    let included = w.included(&id, "api_calls").await;
    let (s, b) = w.usage(&id, "api_calls", included + 5_000).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["from_credits"].as_i64() > Some(0), "{b}");
    let pi = paid["payment_intent"].as_str().expect("pi");
    w.deliver(&stripe_event("charge.refunded", refund_at_stripe(pi, Some(1000)).await)).await;
    // An auto-recharge on the same customer.
    let payments = w.save_stripe_card(&id, "4242424242424242").await;
    w.set_auto_recharge(&id, json!({"enabled": true, "threshold": 35 * C, "amount": 50 * C})).await;
    let low = balance_low(&id);
    let r = auto_recharge::handle(&w.credits, &payments, &topup_tests::trigger(&low)).await.expect("recharge");
    assert_eq!(r["result"], "credited", "{r}");

    let report = w.credits.reconcile_account(&payments, &id).await.expect("reconcile");
    assert_eq!(report.differences, vec![], "books agree");
    assert_eq!((report.credited_payments, report.stripe_payments, report.ledger_entries), (2, 2, 4));
    // The function's whole-table run: this table holds this one account.
    let all = reconcile::reconcile(&w.credits, &payments, None).await.expect("reconcile all");
    assert_eq!((all.accounts, all.credited_payments, all.differences.len()), (1, 2, 0));
    assert_eq!(reconcile::log_report(&all, reconcile::GRACE_S), 0);
}

#[tokio::test]
async fn each_disagreement_is_named_and_events_on_their_way_only_lag() {
    let w = World::new("usd-overage").await;
    let payments = stripe_payments();
    let id = unique("rec");
    w.account(&id, "free").await;
    // Paid at Stripe, its webhook not delivered yet.
    let undelivered = paid_purchase(&w, &id, 2000).await;
    // Paid and credited, then refunded at Stripe with the event still on its way.
    let credited = paid_purchase(&w, &id, 3000).await;
    w.deliver(&stripe_event("checkout.session.completed", credited.clone())).await;
    let refunded = refund_at_stripe(credited["payment_intent"].as_str().expect("pi"), Some(3000)).await;

    let report = w.credits.reconcile_account(&payments, &id).await.expect("reconcile");
    assert_eq!(codes(&report.differences), BTreeSet::from(["payment_not_credited", "refund_not_applied"]));
    assert!(report.differences.iter().all(|d| d.severity == Severity::Lagging && d.age_s.is_some()));
    let mut lagging = topup::reconcile::Report::empty();
    lagging.add(report.clone());
    assert_eq!(reconcile::log_report(&lagging, reconcile::GRACE_S), 0, "within the grace period");
    assert_eq!(reconcile::log_report(&lagging, -1), 2, "past it, both need a person");

    // The events arrive: nothing is left.
    w.deliver(&stripe_event("checkout.session.completed", undelivered)).await;
    w.deliver(&stripe_event("charge.refunded", refunded)).await;
    let report = w.credits.reconcile_account(&payments, &id).await.expect("reconcile");
    assert_eq!(report.differences, vec![]);

    // A credit for a payment Stripe never took, and a balance changed by hand: wrong.
    let forged = topup::crediting::Payment {
        payment_id: "pi_never_paid".into(),
        kind: topup::ledger::EntryKind::Purchase,
        credits: topup::money::Micros::new(7 * C),
        charge_cents: 700,
        reference: "pur_none".into(),
        description: "forged".into(),
        recharge_month: None,
    };
    w.credits.credit_payment(&id, &forged).await.expect("credit");
    w.edit_account(&id, |a| a.balance = topup::money::Micros::new(a.balance.get() + 5)).await;
    let report = w.credits.reconcile_account(&payments, &id).await.expect("reconcile");
    // The hand-changed balance is neither the ledger's sum nor its grants' (rules §15).
    assert_eq!(
        codes(&report.differences),
        BTreeSet::from(["balance_not_ledger_sum", "credited_without_payment", "grants_not_balance"])
    );
    let forged = report.differences.iter().find(|d| d.code == "credited_without_payment").expect("forged");
    assert_eq!((forged.payment_id.as_deref(), forged.ours), (Some("pi_never_paid"), Some(7 * C)));
    assert!(report.differences.iter().all(|d| d.severity == Severity::Wrong));

    // A refund recorded beyond Stripe's, and lifetime added changed by hand.
    let pi = credited["payment_intent"].as_str().expect("pi").to_string();
    w.edit_account(&id, |a| {
        a.refunded.insert(pi.clone(), 40 * C);
        a.lifetime_added = topup::money::Micros::new(a.lifetime_added.get() + 1);
    })
    .await;
    let report = w.credits.reconcile_account(&payments, &id).await.expect("reconcile");
    assert!(
        codes(&report.differences).is_superset(&BTreeSet::from(["refund_exceeds_stripe", "lifetime_added_mismatch"])),
        "{:?}",
        report.differences
    );
}

#[tokio::test]
async fn every_account_is_visited_once_across_pages() {
    let w = World::new("request-packs").await;
    let mut made = BTreeSet::new();
    for _ in 0..7 {
        let id = unique("page");
        w.account(&id, "free").await;
        made.insert(id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = w.credits.store.account_ids(2, after, topup::store::Segment::WHOLE).await.expect("page");
        seen.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), made);
}
