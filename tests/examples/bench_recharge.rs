//! Auto-recharge latency and cost: the time from the debit that crosses the threshold to the
//! credited recharge, beside a plain debit measured in the same run, and the DynamoDB and
//! Stripe requests one recharge makes. Run by `./scripts/bench` (see BENCHMARKS.md), which
//! starts the local stack (moto, localstripe) and sets the endpoints.
//!
//! The handlers run in-process over the real SDK and Stripe clients, as a Lambda would: the
//! crossing debit (`debit::handle`), then the `BalanceLow` event it published handed to
//! `auto_recharge::handle` as EventBridge would hand it. EventBridge's own delivery delay is
//! not ours and is not in the figure.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;
use topup::account::PaymentMethod;
use topup::adapters::dynamo::DynamoStore;
use topup::adapters::eventbridge::EventBridgeBus;
use topup::adapters::stripe::StripePayments;
use topup::engine::Credits;
use topup::payments::{ChargeOutcome, OffSessionCharge, Payments, PaymentsUnavailable};
use topup::recharge::AutoRechargeInput;
use topup_tests::*;

/// Counts Stripe calls: one call is one HTTP request to Stripe.
struct CountingStripe {
    inner: StripePayments,
    calls: Mutex<u64>,
}

impl CountingStripe {
    fn bump(&self) {
        if let Ok(mut n) = self.calls.lock() {
            *n += 1;
        }
    }
    fn take(&self) -> u64 {
        self.calls.lock().map(|mut n| std::mem::take(&mut *n)).unwrap_or_default()
    }
}

impl Payments for CountingStripe {
    async fn create_customer(&self, customer: &topup::payments::NewCustomer) -> Result<String, PaymentsUnavailable> {
        self.bump();
        self.inner.create_customer(customer).await
    }
    async fn charge_off_session(&self, charge: &OffSessionCharge) -> Result<ChargeOutcome, PaymentsUnavailable> {
        self.bump();
        self.inner.charge_off_session(charge).await
    }
    async fn cancel_payment(
        &self,
        payment_intent_id: &str,
        key: &str,
    ) -> Result<topup::payments::CancelOutcome, PaymentsUnavailable> {
        self.bump();
        self.inner.cancel_payment(payment_intent_id, key).await
    }
}

const RUNS: usize = 15;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let world = World::new("usd-overage").await;
    let counter = RequestCounter::default();
    let dynamo = counter.dynamo(&world.aws);
    let bus = EventBridgeBus::new(world.events.clone(), world.config.event_bus.clone());
    let credits = Credits::new(world.config.profile.clone(), DynamoStore::new(dynamo, world.config.table.clone()), bus);
    let stripe = CountingStripe { inner: stripe_payments(), calls: Mutex::new(0) };
    let (mut plain, mut crossing, mut recharge, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut dynamo_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut stripe_calls = 0;
    for i in 0..RUNS {
        let id = format!("acct{i}");
        credits.upsert_account(&id, "free", vec![]).await.unwrap_or_else(|e| panic!("{e}"));
        let new = topup::payments::NewCustomer {
            email: None,
            idempotency_key: credits.stripe_key("customer", &id),
            metadata: credits.stripe_metadata(&id, &[]),
        };
        let customer = stripe.inner.create_customer(&new).await.expect("customer");
        let pm = stripe_card(&stripe.inner, &customer, "4242424242424242").await;
        let card = PaymentMethod { id: pm, brand: "visa".into(), last4: "4242".into(), exp_month: 12, exp_year: 2030 };
        credits.save_card(&id, card, Some(&customer)).await.unwrap_or_else(|e| panic!("{e}"));
        let input = AutoRechargeInput {
            enabled: true,
            threshold: Some(5 * C),
            amount: Some(10 * C),
            monthly_max: None,
            monthly_spend_max: None,
        };
        credits.set_auto_recharge(&id, &input).await.unwrap_or_else(|e| panic!("{e}"));
        credits.adjust(&id, 6 * C, "bench", &key(&unique("g"))).await.unwrap_or_else(|e| panic!("{e}"));
        // Past the month's allowance, so the next debits draw credits.
        credits.debit(&id, "api_calls", 1_000, &key(&unique("warm"))).await.unwrap_or_else(|e| panic!("{e}"));

        let usage = |quantity: i64| {
            post(
                &format!("/v1/accounts/{id}/usage"),
                &service(),
                json!({"consumable": "api_calls", "quantity": quantity, "idempotency_key": unique("u")}),
            )
        };
        // A plain debit (crosses nothing): the yardstick.
        let t = Instant::now();
        let (s, b) = read(debit::handle(&world.config, &credits, usage(10)).await);
        assert_eq!(s, 200, "{b}");
        plain.push(t.elapsed().as_secs_f64() * 1e3);

        // The debit that crosses $5, then its BalanceLow through the auto-recharge function.
        counter.take();
        stripe.take();
        let t = Instant::now();
        let (s, b) = read(debit::handle(&world.config, &credits, usage(2_000)).await);
        assert_eq!(s, 200, "{b}");
        let crossed = t.elapsed();
        counter.take(); // the debit's own requests are the debit bench's business
        let event = balance_low(&id);
        let out = auto_recharge::handle(&credits, &stripe, &topup_tests::trigger(&event)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["result"], "credited", "{out}");
        let done = t.elapsed();
        crossing.push(crossed.as_secs_f64() * 1e3);
        recharge.push((done - crossed).as_secs_f64() * 1e3);
        total.push(done.as_secs_f64() * 1e3);
        for (k, v) in counter.take() {
            *dynamo_counts.entry(k).or_default() += v;
        }
        stripe_calls += stripe.take();
        let balance = credits.account(&id).await.expect("account").balance.get();
        assert_eq!(balance, 6 * C - 1_000_000 / 100 - 2 * C + 10 * C, "credited once");
    }
    let (plain, crossing, recharge, total) =
        (median(&mut plain), median(&mut crossing), median(&mut recharge), median(&mut total));
    println!("# auto-recharge: crossing debit → credited recharge, {RUNS} runs, medians (ms)");
    println!("# moto behind tests/support/moto_serial.py, localstripe behind tests/support/localstripe_local.py");
    println!("{:<52} {:>8} {:>14}", "step", "ms", "× plain debit");
    println!("{:<52} {:>8.1} {:>14.2}", "plain debit (handler)", plain, 1.0);
    println!(
        "{:<52} {:>8.1} {:>14.2}",
        "crossing debit (handler, BalanceLow in its outbox)",
        crossing,
        crossing / plain
    );
    println!(
        "{:<52} {:>8.1} {:>14.2}",
        "auto-recharge on BalanceLow (claim, charge, credit)",
        recharge,
        recharge / plain
    );
    println!("{:<52} {:>8.1} {:>14.2}", "crossing debit → credited recharge", total, total / plain);
    let n = RUNS as f64;
    let sum =
        |ops: &[&str]| dynamo_counts.iter().filter(|(k, _)| ops.contains(&k.as_str())).map(|(_, v)| *v).sum::<u64>();
    let writes = sum(&["TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem"]);
    let reads = sum(&["GetItem", "Query", "BatchGetItem", "TransactGetItems"]);
    println!(
        "    requests per recharge: DynamoDB {:.2} writes, {:.2} reads {:?}; Stripe {:.2}",
        writes as f64 / n,
        reads as f64 / n,
        dynamo_counts,
        stripe_calls as f64 / n
    );
}
