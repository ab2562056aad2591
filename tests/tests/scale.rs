//! Every account, every event (rules §13), against the emulators with thousands of accounts:
//! one sweep visits every account with auto-recharge on, page after page, recovers claims stuck
//! on accounts past the first page, and goes on past an account it cannot read; reconciliation
//! over the same table finishes, reports that account as unreadable, checkpoints, and resumes;
//! one sweep delivers an outbox of a thousand events.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use topup::account::RechargeClaim;
use topup::events::{pending_events, DomainEvent, Event};
use topup::ids::RechargeId;
use topup::money::{Micros, MICROS_PER_CREDIT as C};
use topup::recharge::LEASE_MS;
use topup::store::{Commit, Store};
use topup_tests::*;

/// Accounts written straight to the table beside the few driven through the API.
const BULK: usize = 2_000;
/// Accounts whose recharge claim was left in flight by a function that died.
const STUCK: usize = 6;

/// `BULK` accounts with auto-recharge on (none of them due), `STUCK` accounts with a real card
/// whose claim has been in flight for an hour (named to sort after the bulk, so past the first
/// page of the index), and one account whose stored item cannot be read.
async fn crowd(w: &World) -> Vec<String> {
    w.account("template", "free").await;
    w.save_card("template").await;
    w.set_auto_recharge("template", json!({"enabled": true})).await;
    w.edit_account("template", |a| a.auto_recharge.low_without_usage = true).await;
    let template = w.credits.store.load_account("template").await.expect("load").expect("exists");
    assert!(template.gsi1pk.is_some(), "auto-recharge on lists the account for the sweep");
    let mut items = Vec::new();
    for i in 0..BULK {
        let mut a = template.clone();
        a.id = format!("bulk-{i:05}");
        // Low, but not reached through usage: not due, so the sweep writes nothing for them;
        // and no Stripe customer, so reconciliation reads only our books for them.
        a.auto_recharge.low_without_usage = true;
        a.stripe_customer_id = None;
        items.push(account_item(&a));
    }
    let mut broken = account_item(&template);
    broken.insert("pk".into(), AttributeValue::S("ACCOUNT#bulk-00700x".into()));
    broken.insert("balance".into(), AttributeValue::S("not a number".into()));
    items.push(broken);
    write_items(w, items).await;

    let mut stuck = Vec::new();
    for i in 0..STUCK {
        let id = format!("stuck-{i:02}");
        w.account(&id, "free").await;
        w.save_stripe_card(&id, "4242424242424242").await;
        w.set_auto_recharge(&id, json!({"enabled": true})).await;
        w.edit_account(&id, |a| {
            a.auto_recharge.in_flight = Some(RechargeClaim {
                recharge_id: RechargeId::new(format!("rch_stuck{i}")),
                claimed_at: topup::clock::now_ms() - 3_600_000,
                credits: Micros::new(10 * C),
                charge_cents: 1_000,
            });
            a.auto_recharge.episode_charged = true;
            a.auto_recharge.used_this_month = 1;
        })
        .await;
        stuck.push(id);
    }
    stuck
}

#[tokio::test]
async fn one_sweep_visits_every_account_recovers_stuck_claims_and_goes_past_a_broken_one() {
    let w = World::new("usd-overage").await;
    let stuck = crowd(&w).await;
    let payments = stripe_payments();

    let report = w.credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
    let everyone = BULK + 1 + 1 + STUCK; // the bulk, the unreadable one, the template, the stuck
    assert_eq!(
        (report.visited, report.recovered, report.recharged, report.failed, report.complete),
        (everyone, STUCK, 0, 1, true),
        "{:?} {:?}",
        report.failures,
        report.recharges
    );
    assert_eq!(report.failures[0].account_id, "bulk-00700x");
    for id in &stuck {
        let v = w.view(id).await;
        assert_eq!(v["balance"], 10 * C, "{id} credited once: {v}");
        let a = w.credits.store.load_account(id).await.expect("load").expect("exists");
        assert!(a.auto_recharge.in_flight.is_none(), "{id}: the claim is released");
        w.assert_invariants(id).await;
    }
    // Nothing left to recover: the next sweep charges nobody and fails on the same account only.
    let again = w.credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
    assert_eq!((again.visited, again.recovered, again.recharged, again.failed), (everyone, 0, 0, 1));

    // Reconciliation over the same table, in segments with checkpoints: a run that reaches its
    // deadline at once leaves every segment to the next invocation, which finishes it.
    let run = unique("run");
    let early = w.credits.reconcile_run(&payments, &run, 4, Some(std::time::Instant::now())).await.expect("run");
    assert_eq!((early.complete, early.accounts), (false, 0));
    let done = w.credits.reconcile_run(&payments, &run, 4, None).await.expect("run");
    assert!(done.complete && done.worked);
    assert_eq!(done.accounts, everyone - 1, "every readable account");
    assert_eq!(done.unreadable.iter().map(|u| u.account_id.as_str()).collect::<Vec<_>>(), ["bulk-00700x"]);
    assert_eq!(done.differences, vec![], "the books agree");
    assert_eq!(done.stripe_payments, STUCK, "each recovered recharge is one payment at Stripe");
    // The finished run answers from its checkpoints and reads no account again.
    let later = w.credits.reconcile_run(&payments, &run, 4, None).await.expect("run");
    assert!(later.complete && !later.worked);
    assert_eq!((later.accounts, later.unreadable.len()), (done.accounts, 1));
}

#[tokio::test]
async fn one_sweep_delivers_an_outbox_of_a_thousand_events() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    // A thousand events left behind twenty minutes ago, committed with changes of the account
    // (99 to a transaction, the most one takes beside the account).
    let old = topup::clock::now_ms() - 20 * 60_000;
    let detail = topup::events::sample_detail("BalanceLow", json!({}));
    let mut left = 1_000;
    while left > 0 {
        let a = w.credits.store.load_account("acme").await.expect("load").expect("exists");
        let n = left.min(99);
        let outbox: Vec<DomainEvent> = (0..n)
            .map(|_| {
                let event = Event::read("BalanceLow", &detail).expect("ours").expect("reads");
                DomainEvent::new("acme", old, event)
            })
            .collect();
        let commit = Commit { outbox, ..Commit::account_only(a.next(topup::clock::now_ms()), a.version) };
        w.credits.store.commit(commit).await.map_err(|e| format!("{e:?}")).expect("commit");
        left -= n;
    }
    assert_eq!(pending_events(&w.credits.store, 1_000).await.expect("outbox").len(), 1_000);

    let report = w.credits.sweep(&stripe_payments(), 500, LEASE_MS).await.expect("sweep");
    assert_eq!((report.outbox.delivered, report.outbox.left), (1_000, 0));
    assert!(report.outbox.oldest_age_ms >= 20 * 60_000, "the age the alarm watches: {:?}", report.outbox);
    assert!(pending_events(&w.credits.store, 10).await.expect("outbox").is_empty());
    let seen = observer.drain(std::time::Duration::from_secs(2)).await;
    assert_eq!(distinct(&seen), 1_000, "each event on the bus, by its id");
}
