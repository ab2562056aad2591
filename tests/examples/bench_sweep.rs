//! What the scheduled sweep and reconciliation cost per 1,000 accounts: DynamoDB requests
//! (counted by an SDK interceptor) and time on the local stack as a ratio to 1,000 plain reads
//! of an account measured in the same run. Run by `./scripts/bench` (see BENCHMARKS.md), which
//! starts the emulators and sets the endpoints.
//!
//! The accounts have auto-recharge on and none is due (the common case: the sweep decides that
//! on its read and writes nothing) and no Stripe customer, so reconciliation's figure is our
//! side only; Stripe's share is arithmetic in BENCHMARKS.md.

use topup::store::Accounts;
use std::time::Instant;

use serde_json::json;
use topup::adapters::dynamo::DynamoStore;
use topup::adapters::eventbridge::EventBridgeBus;
use topup::engine::Credits;
use topup::recharge::LEASE_MS;
use topup_tests::*;

const ACCOUNTS: usize = 1_000;
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let w = World::new("usd-overage").await;
    w.account("template", "free").await;
    w.save_card("template").await;
    w.set_auto_recharge("template", json!({"enabled": true})).await;
    w.edit_account("template", |a| a.auto_recharge.low_without_usage = true).await;
    let template = w.credits.store.load_account("template").await.expect("load").expect("exists");
    let ids: Vec<String> = (1..ACCOUNTS).map(|i| format!("acct-{i:05}")).collect();
    let items = ids
        .iter()
        .map(|id| {
            let mut a = template.clone();
            a.id = id.clone();
            a.stripe_customer_id = None;
            account_item(&a)
        })
        .collect();
    write_items(&w, items).await;

    let counter = RequestCounter::default();
    let store = DynamoStore::new(counter.dynamo(&w.aws), w.config.table.clone());
    let credits = Credits::new(
        w.config.profile.clone(),
        store.clone(),
        EventBridgeBus::new(w.events.clone(), w.config.event_bus.clone()),
    );
    let payments = stripe_payments();
    let (mut plain, mut sweep, mut reconcile) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = Vec::new();
    for _ in 0..ROUNDS {
        counter.take();
        let t = Instant::now();
        for id in ids.iter().chain(std::iter::once(&"template".to_string())) {
            store.load_account(id).await.expect("read");
        }
        plain.push(t.elapsed().as_secs_f64());
        let reads = counter.take();

        let t = Instant::now();
        let report = credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
        sweep.push(t.elapsed().as_secs_f64());
        assert_eq!((report.visited, report.failed), (ACCOUNTS, 0));
        let swept = counter.take();

        let t = Instant::now();
        let report = credits.reconcile_run(&payments, &unique("bench"), 4, None).await.expect("reconcile");
        reconcile.push(t.elapsed().as_secs_f64());
        assert_eq!((report.accounts, report.complete), (ACCOUNTS, true));
        let reconciled = counter.take();
        counts.push((reads, swept, reconciled));
    }
    let (reads, swept, reconciled) = counts.pop().expect("a round");
    let total = |m: &std::collections::BTreeMap<String, u64>| m.values().sum::<u64>();
    let (p, s, r) = (median(plain), median(sweep), median(reconcile));
    println!(
        "# sweep and reconciliation per {ACCOUNTS} accounts with auto-recharge on, none due; {ROUNDS} rounds, medians"
    );
    println!("# moto serves one request at a time (tests/support/moto_serial.py)");
    println!("{:<40} {:>9} {:>13} {:>10}", "phase", "seconds", "vs 1,000 reads", "requests");
    println!("{:<40} {:>9.2} {:>13.2} {:>10}   {:?}", "1,000 plain reads (GetItem)", p, 1.0, total(&reads), reads);
    println!("{:<40} {:>9.2} {:>13.2} {:>10}   {:?}", "sweep (page 500, 8 at a time)", s, s / p, total(&swept), swept);
    println!(
        "{:<40} {:>9.2} {:>13.2} {:>10}   {:?}",
        "reconciliation (4 segments)",
        r,
        r / p,
        total(&reconciled),
        reconciled
    );
}
