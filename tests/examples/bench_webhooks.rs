//! Check before use beside a debit, and what webhooks out cost per event. Run by
//! `./scripts/bench` (see BENCHMARKS.md), which starts the emulators and sets the endpoints.
//!
//! - Check vs debit: emulator wall clock, as a ratio of medians measured side by side in one
//!   run (interleaved phases of the same account), and DynamoDB requests per call (counted).
//! - Webhooks out: per event sent to one endpoint, the receiver's POSTs, DynamoDB and SQS
//!   requests (counted), for a receiver that answers 200 and one that answers 500 three times
//!   first; the follow-ups come from a real SQS queue with real delays.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use topup::adapters::dynamo::DynamoStore;
use topup::adapters::eventbridge::EventBridgeBus;
use topup::engine::Credits;
use topup_tests::*;

const OPS: usize = 200;
const ROUNDS: usize = 3;
const EVENTS: usize = 40;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn per(counts: &std::collections::BTreeMap<String, u64>, n: usize) -> String {
    counts.iter().map(|(op, c)| format!("{op} {:.2}", *c as f64 / n as f64)).collect::<Vec<_>>().join(", ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let w = World::new("usd-overage").await;
    check_beside_debit(&w).await;
    println!();
    deliveries_per_event(&w).await;
}

async fn check_beside_debit(w: &World) {
    w.account("bench", "free").await;
    w.usage("bench", "api_calls", 1_000).await; // the month's allowance used: every debit costs credits
    w.grant("bench", 1_000_000 * C).await;
    let counter = RequestCounter::default();
    let credits = Credits::new(
        w.config.profile.clone(),
        DynamoStore::new(counter.dynamo(&w.aws), w.config.table.clone()),
        EventBridgeBus::new(w.events.clone(), w.config.event_bus.clone()),
    );
    let (mut checks, mut debits) = (Vec::new(), Vec::new());
    let (mut check_counts, mut debit_counts) = (Default::default(), Default::default());
    for round in 0..ROUNDS {
        counter.take();
        let t = Instant::now();
        for _ in 0..OPS {
            let req = get("/v1/accounts/bench/credits/check?consumable=api_calls&quantity=10", &service());
            let (s, b) = read(credits_api::handle(&w.config, &w.webhooks, &credits, req).await);
            assert!(s == 200 && b["allowed"] == true, "{s} {b}");
        }
        checks.push(t.elapsed().as_secs_f64() * 1000.0 / OPS as f64);
        let c = counter.take();
        let t = Instant::now();
        for i in 0..OPS {
            let body = json!({"consumable": "api_calls", "quantity": 10, "idempotency_key": format!("b{round}-{i}")});
            let (s, b) =
                read(debit::handle(&w.config, &credits, post("/v1/accounts/bench/usage", &service(), body)).await);
            assert_eq!(s, 200, "{b}");
        }
        debits.push(t.elapsed().as_secs_f64() * 1000.0 / OPS as f64);
        let d = counter.take();
        if round == 0 {
            (check_counts, debit_counts) = (c, d);
        }
    }
    let (check, debit) = (median(checks), median(debits));
    println!("# check before use beside a debit of the same account: {OPS} calls a phase, {ROUNDS} interleaved rounds, medians");
    println!("# moto serves one request at a time (tests/support/moto_serial.py); emulator wall clock, ratios only");
    println!(
        "check  {check:>7.2} ms/call   {:.2} of a debit   requests per call: {}",
        check / debit,
        per(&check_counts, OPS)
    );
    println!("debit  {debit:>7.2} ms/call   1.00              requests per call: {}", per(&debit_counts, OPS));
}

/// A bus event as EventBridge hands it to `webhooks-out`.
fn low(i: usize) -> Value {
    json!({"detail-type": "BalanceLow", "source": "topup", "detail": {"balance": 1, "previous_balance": 9,
        "threshold": 5, "plan": "free", "auto_recharge_enabled": false, "cause": "usage", "version": 2,
        "kind": "BalanceLow", "event_id": format!("evt_bench{i:05}_{}", unique("e")), "account_id": "bench",
        "occurred_at": "x", "occurred_ms": topup::clock::now_ms()}})
}

async fn deliveries_per_event(w: &World) {
    println!("# webhooks out, per event to one endpoint: {EVENTS} events; counted requests");
    println!("# follow-ups from an SQS queue on the emulator, schedule 1 s, 1 s, 2 s (the production schedule's shape, shortened)");
    for (name, fails) in [("receiver answers 200", 0usize), ("receiver answers 500 three times first", 3)] {
        let receiver = Receiver::start(&vec![500; fails * EVENTS]).await;
        let made = register(w, &receiver.url, json!(["balance.low"])).await;
        let counter = RequestCounter::default();
        let mut d = dispatcher(w);
        d.store = DynamoStore::new(counter.dynamo(&w.aws), w.config.table.clone());
        d.queue =
            topup::adapters::webhooks_out::SqsRetryQueue::new(counter.sqs(&w.aws), w.config.webhooks.queue_url.clone());
        let t = Instant::now();
        for i in 0..EVENTS {
            webhooks_out::handle(&d, &topup_tests::invocation(&low(i)), topup::clock::now_ms).await.expect("handled");
        }
        let first = t.elapsed().as_secs_f64() * 1000.0 / EVENTS as f64;
        let handed = run_follow_ups(w, &d, Duration::from_secs(4)).await;
        let counts = counter.take();
        let posts = receiver.got().len();
        println!(
            "{name:<40} POSTs {:.2}, follow-ups handled {:.2}; {}; first attempt {first:.1} ms/event",
            posts as f64 / EVENTS as f64,
            handed as f64 / EVENTS as f64,
            per(&counts, EVENTS)
        );
        let id = made["id"].as_str().unwrap_or_default();
        let (_, page) = w.api(get(&format!("/v1/webhook-endpoints/{id}/deliveries?limit=100"), &service())).await;
        let ok = page["deliveries"].as_array().map_or(0, |l| l.iter().filter(|d| d["status"] == "succeeded").count());
        assert_eq!(ok, EVENTS, "every delivery succeeded: {page}");
        w.api(lambda_http_delete(&format!("/v1/webhook-endpoints/{id}"))).await;
    }
}

fn lambda_http_delete(path: &str) -> lambda_http::Request {
    request("DELETE", path, Some(&service()), None, None)
}
