//! Debit throughput beside the emulator's raw write rate, measured side by side in one run,
//! and DynamoDB requests per debit. Run by `./scripts/bench` (see BENCHMARKS.md), which starts
//! the local stack and sets `TOPUP_TEST_AWS_ENDPOINT`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use serde_json::json;
use topup::dynamo::{create_table, DynamoStore};
use topup::events::EventBridgeBus;
use topup::service::Credits;
use topup_tests::*;

/// Counts DynamoDB HTTP requests by operation (`x-amz-target`), retries included.
#[derive(Debug, Default, Clone)]
struct Counter(Arc<Mutex<BTreeMap<String, u64>>>);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "request-counter"
    }
    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op =
            ctx.request().headers().get("x-amz-target").unwrap_or("?").rsplit('.').next().unwrap_or("?").to_string();
        if let Ok(mut m) = self.0.lock() {
            *m.entry(op).or_default() += 1;
        }
        Ok(())
    }
}

impl Counter {
    fn take(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
    }
}

const OPS: usize = 400;

async fn raw_updates(client: &aws_sdk_dynamodb::Client, table: &str, concurrency: usize, items: usize) -> f64 {
    for i in 0..items {
        client
            .put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("RAW#{i}")))
            .item("sk", AttributeValue::S("R".into()))
            .item("n", AttributeValue::N("1000000000".into()))
            .send()
            .await
            .expect("seed raw item");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let table = table.to_string();
        tasks.push(tokio::spawn(async move {
            for _ in 0..OPS / concurrency {
                client
                    .update_item()
                    .table_name(&table)
                    .key("pk", AttributeValue::S(format!("RAW#{}", w % items)))
                    .key("sk", AttributeValue::S("R".into()))
                    .update_expression("SET n = n - :one")
                    .condition_expression("n >= :one")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .send()
                    .await
                    .expect("raw update");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

/// A conditional update plus two conditional puts in one TransactWriteItems: the shape of a
/// debit, without topup's code around it.
async fn raw_transactions(client: &aws_sdk_dynamodb::Client, table: &str, concurrency: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let table = table.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..OPS / concurrency {
                let upd = Update::builder()
                    .table_name(&table)
                    .key("pk", AttributeValue::S(format!("RAW#{w}")))
                    .key("sk", AttributeValue::S("R".into()))
                    .update_expression("SET n = n - :one")
                    .condition_expression("n >= :one")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .build()
                    .expect("update");
                let put = |sk: String| {
                    aws_sdk_dynamodb::types::Put::builder()
                        .table_name(&table)
                        .item("pk", AttributeValue::S(format!("RAW#{w}")))
                        .item("sk", AttributeValue::S(sk))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .expect("put")
                };
                client
                    .transact_write_items()
                    .transact_items(TransactWriteItem::builder().update(upd).build())
                    .transact_items(TransactWriteItem::builder().put(put(format!("TX#{i}"))).build())
                    .transact_items(TransactWriteItem::builder().put(put(format!("IDEM#{i}"))).build())
                    .send()
                    .await
                    .expect("raw transaction");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

async fn handler_debits(
    config: &topup::Config,
    credits: &Arc<Credits<DynamoStore, EventBridgeBus>>,
    accounts: &[String],
    concurrency: usize,
    tag: &str,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let credits = credits.clone();
        let config = config.clone();
        let account = accounts[w % accounts.len()].clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..OPS / concurrency {
                let req = post(
                    &format!("/v1/accounts/{account}/usage"),
                    &service(),
                    json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": format!("{tag}-{w}-{i}")}),
                );
                let (s, b) = read(debit::handle(&config, &credits, req).await);
                assert_eq!(s, 200, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

async fn fresh_table(client: &aws_sdk_dynamodb::Client) -> String {
    let t = unique("bench");
    create_table(client, &t).await.expect("table");
    t
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let world = World::new("usd-overage").await;
    let counter = Counter::default();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&world.aws).interceptor(counter.clone()).build(),
    );
    let bus = EventBridgeBus::new(world.events.clone(), world.config.event_bus.clone());

    println!("# debit throughput vs the emulator's raw writes ({OPS} operations each, one run)");
    println!("# moto serves one request at a time (tests/support/moto_serial.py); each phase on a fresh table");
    println!("{:<44} {:>10} {:>10} {:>10}", "phase", "ops/s", "vs raw upd", "vs raw txn");
    for concurrency in [1usize, 16] {
        let raw_table = fresh_table(&world.dynamo).await;
        let raw = raw_updates(&world.dynamo, &raw_table, concurrency, concurrency).await;
        let txn_table = fresh_table(&world.dynamo).await;
        for w in 0..concurrency {
            world
                .dynamo
                .put_item()
                .table_name(&txn_table)
                .item("pk", AttributeValue::S(format!("RAW#{w}")))
                .item("sk", AttributeValue::S("R".into()))
                .item("n", AttributeValue::N("1000000000".into()))
                .send()
                .await
                .expect("seed");
        }
        let txn = raw_transactions(&world.dynamo, &txn_table, concurrency).await;
        println!(
            "{:<44} {:>10.0} {:>10} {:>10}",
            format!("raw conditional UpdateItem, c={concurrency}"),
            raw,
            "1.00",
            ""
        );
        println!(
            "{:<44} {:>10.0} {:>10.2} {:>10}",
            format!("raw 3-item TransactWriteItems, c={concurrency}"),
            txn,
            txn / raw,
            "1.00"
        );

        for (label, n_accounts) in
            [("debit handler, one account per worker", concurrency), ("debit handler, one hot account", 1)]
        {
            if concurrency == 1 && n_accounts == 1 && label.contains("hot") {
                continue;
            }
            let table = fresh_table(&world.dynamo).await;
            let mut cfg = world.config.clone();
            cfg.table = table.clone();
            let credits = Arc::new(Credits::new(
                cfg.profile.clone(),
                DynamoStore::new(dynamo.clone(), table.clone()),
                bus.clone(),
            ));
            let accounts: Vec<String> = (0..n_accounts).map(|i| format!("acct{i}")).collect();
            for a in &accounts {
                let (s, b) = credits.upsert_account(a, "free", vec![]).await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(s, 201, "{b}");
                credits.adjust(a, 1_000 * C, "bench", &unique("g")).await.unwrap_or_else(|e| panic!("{e}"));
                // Past the allowance so every debit draws credits.
                credits.debit(a, "api_calls", 1_000, &unique("warm")).await.unwrap_or_else(|e| panic!("{e}"));
            }
            counter.take();
            let rate = handler_debits(&cfg, &credits, &accounts, concurrency, &unique("d")).await;
            let counts = counter.take();
            println!(
                "{:<44} {:>10.0} {:>10.2} {:>10.2}",
                format!("{label}, c={concurrency}"),
                rate,
                rate / raw,
                rate / txn
            );
            let writes: u64 = counts
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "TransactWriteItems" | "PutItem" | "UpdateItem" | "DeleteItem"))
                .map(|(_, v)| v)
                .sum();
            let reads: u64 = counts
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "GetItem" | "Query" | "BatchGetItem" | "TransactGetItems"))
                .map(|(_, v)| v)
                .sum();
            println!(
                "    requests per debit: {:.3} writes, {:.3} reads   ({counts:?})",
                writes as f64 / OPS as f64,
                reads as f64 / OPS as f64
            );
        }
    }
}
