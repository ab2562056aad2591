//! Debit throughput beside the emulator's raw write rate, measured side by side in one run,
//! and DynamoDB requests per debit. Run by `./scripts/bench` (see BENCHMARKS.md), which starts
//! the local stack and sets `TOPUP_TEST_AWS_ENDPOINT`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use serde_json::json;
use topup::adapters::dynamo::{create_table, DynamoStore};
use topup::adapters::eventbridge::EventBridgeBus;
use topup::engine::Credits;
use topup_tests::*;

const OPS: usize = 400;

/// 503 `account_busy` answers, retried by the bench as a client would.
static BUSY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Conditional updates on `concurrency` items of a `seeded_table`, one worker each.
async fn raw_updates(client: &aws_sdk_dynamodb::Client, table: &str, concurrency: usize) -> f64 {
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
                    .key("pk", AttributeValue::S(format!("RAW#{w}")))
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

/// Debits by `concurrency` workers; worker `w` calls `credits[w % credits.len()]`.
async fn handler_debits(
    config: &topup::Config,
    credits: &[Arc<Credits<DynamoStore, EventBridgeBus>>],
    accounts: &[String],
    concurrency: usize,
    tag: &str,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let credits = credits[w % credits.len()].clone();
        let config = config.clone();
        let account = accounts[w % accounts.len()].clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..OPS / concurrency {
                // A 503 `account_busy` (a write that lost its races for its whole budget) is
                // retried with the same key after a pause, as a client does; counted.
                loop {
                    let req = post(
                        &format!("/v1/accounts/{account}/usage"),
                        &service(),
                        json!({"consumable": "api_calls", "quantity": 1, "idempotency_key": format!("{tag}-{w}-{i}")}),
                    );
                    let (s, b) = read(debit::handle(&config, &credits, req).await);
                    if s == 503 {
                        BUSY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    assert_eq!(s, 200, "{b}");
                    break;
                }
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

/// Rounds of every phase, interleaved, so a slow spell of the emulator hits all phases alike;
/// the table shows medians.
const ROUNDS: usize = 3;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A fresh table with one funded item per worker (`RAW#0`, `RAW#1`, ...).
async fn seeded_table(world: &World, concurrency: usize) -> String {
    let table = fresh_table(&world.dynamo).await;
    for w in 0..concurrency {
        world
            .dynamo
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(format!("RAW#{w}")))
            .item("sk", AttributeValue::S("R".into()))
            .item("n", AttributeValue::N("1000000000".into()))
            .send()
            .await
            .expect("seed");
    }
    table
}

/// A fresh table with `n` funded accounts past their allowance, and a service over it whose
/// DynamoDB client counts requests.
async fn handler_setup(
    world: &World,
    dynamo: &aws_sdk_dynamodb::Client,
    bus: &EventBridgeBus,
    n: usize,
) -> (topup::Config, Arc<Credits<DynamoStore, EventBridgeBus>>, Vec<String>) {
    let table = fresh_table(&world.dynamo).await;
    let mut cfg = world.config.clone();
    cfg.table = table.clone();
    let credits = Arc::new(Credits::new(cfg.profile.clone(), DynamoStore::new(dynamo.clone(), table), bus.clone()));
    let accounts: Vec<String> = (0..n).map(|i| format!("acct{i}")).collect();
    for a in &accounts {
        let saved = credits.upsert_account(a, "free", vec![]).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(saved, topup::accounts::AccountSaved::Created(_)), "{saved:?}");
        credits.adjust(a, 1_000 * C, "bench", &key(&unique("g"))).await.unwrap_or_else(|e| panic!("{e}"));
        // Past the allowance so every debit draws credits.
        credits.debit(a, "api_calls", 1_000, &key(&unique("warm"))).await.unwrap_or_else(|e| panic!("{e}"));
    }
    (cfg, credits, accounts)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let world = World::new("usd-overage").await;
    let counter = RequestCounter::default();
    let dynamo = counter.dynamo(&world.aws);
    let bus = EventBridgeBus::new(world.events.clone(), world.config.event_bus.clone());

    println!("# debit throughput vs the emulator's raw writes: {OPS} operations a phase, {ROUNDS} interleaved rounds, medians");
    println!("# moto serves one request at a time (tests/support/moto_serial.py); every phase on a fresh table");
    println!("# the hot-account phase runs one Credits per worker (its own cache, no in-process queue shared with the others),");
    println!("# as that many Lambda environments: their writes to the one account race, and lose to each other, in the store");
    println!("{:<60} {:>8} {:>11} {:>11}", "phase", "ops/s", "vs raw upd", "vs raw txn");
    let mut hot = None;
    for concurrency in [1usize, 16] {
        // (label, accounts, one Credits per worker rather than one shared by all)
        let phases: Vec<(&str, usize, bool)> = if concurrency == 1 {
            vec![("debit handler, one account per worker", 1, false)]
        } else {
            vec![
                ("debit handler, one account per worker", concurrency, false),
                ("debit handler, one hot account, own Credits per worker", 1, true),
            ]
        };
        let (mut raw, mut txn) = (Vec::new(), Vec::new());
        let mut handler: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
        let mut counts: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); phases.len()];
        let mut capacity: Vec<Counts> = vec![Counts::default(); phases.len()];
        for _ in 0..ROUNDS {
            let t = seeded_table(&world, concurrency).await;
            raw.push(raw_updates(&world.dynamo, &t, concurrency).await);
            let t = seeded_table(&world, concurrency).await;
            txn.push(raw_transactions(&world.dynamo, &t, concurrency).await);
            for (i, (_, n, own)) in phases.iter().enumerate() {
                let (cfg, credits, accounts) = handler_setup(&world, &dynamo, &bus, *n).await;
                // Separate instances over the same table, as separate Lambda environments: the
                // conflicts between them are real (one shared `Credits` would queue its writes).
                let instances: Vec<_> = if *own {
                    (0..concurrency)
                        .map(|_| {
                            let store = DynamoStore::new(dynamo.clone(), cfg.table.clone());
                            Arc::new(Credits::new(cfg.profile.clone(), store, bus.clone()))
                        })
                        .collect()
                } else {
                    vec![credits]
                };
                counter.take();
                handler[i].push(handler_debits(&cfg, &instances, &accounts, concurrency, &unique("d")).await);
                let all = counter.take_all();
                for (k, v) in all.requests {
                    *counts[i].entry(k).or_default() += v;
                }
                let c = &mut capacity[i];
                c.reported += all.reported;
                for (k, v) in all.wcu {
                    *c.wcu.entry(k).or_default() += v;
                }
                for (k, v) in all.largest {
                    let l = c.largest.entry(k).or_default();
                    *l = (*l).max(v);
                }
            }
        }
        let (raw, txn) = (median(&mut raw), median(&mut txn));
        println!(
            "{:<60} {:>8.0} {:>11} {:>11}",
            format!("raw conditional UpdateItem, c={concurrency}"),
            raw,
            "1.00",
            ""
        );
        println!(
            "{:<60} {:>8.0} {:>11.2} {:>11}",
            format!("raw 3-item TransactWriteItems, c={concurrency}"),
            txn,
            txn / raw,
            "1.00"
        );
        for (i, (label, _, _)) in phases.iter().enumerate() {
            let rate = median(&mut handler[i]);
            println!(
                "{:<60} {:>8.0} {:>11.2} {:>11.2}",
                format!("{label}, c={concurrency}"),
                rate,
                rate / raw,
                rate / txn
            );
            let total = (OPS * ROUNDS) as f64;
            let sum = |ops: &[&str]| {
                counts[i].iter().filter(|(k, _)| ops.contains(&k.as_str())).map(|(_, v)| *v).sum::<u64>()
            };
            let writes = sum(&["TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem"]);
            let reads = sum(&["GetItem", "Query", "BatchGetItem", "TransactGetItems"]);
            println!(
                "    DynamoDB requests per debit: {:.3} writes, {:.3} reads   {:?}",
                writes as f64 / total,
                reads as f64 / total,
                counts[i]
            );
            let c = &capacity[i];
            let wcu: f64 = c.wcu.values().sum::<f64>() / total;
            let per_kind: Vec<String> = c
                .wcu
                .iter()
                .map(|(k, v)| format!("{k} {:.2} (largest {} B)", v / total, c.largest.get(k).copied().unwrap_or(0)))
                .collect();
            println!(
                "    write capacity per debit: {wcu:.2} WCU by DynamoDB's sizing rules [{}]; reported by the emulator: {:.2}",
                per_kind.join(", "),
                c.reported / total
            );
            if concurrency == 16 && label.contains("hot") {
                let on = |k: &str| c.wcu.get(k).copied().unwrap_or(0.0) / total;
                hot = Some((rate, on("ACCOUNT") + on("TX"), on("ACCOUNT")));
            }
        }
    }
    if let Some((rate, wcu, account_wcu)) = hot {
        // DynamoDB: a partition serves at most 1,000 WCU/s; one item never spreads over more
        // than one partition, and all of an account's items share its partition key.
        const PARTITION_WCU: f64 = 1000.0;
        println!();
        println!("# one hot account's ceiling (DynamoDB's published limit: 1,000 WCU/s per partition)");
        println!(
            "capacity bound, the account item and ledger entry on its partition: {:>6.0} debits/s  (1,000 / {wcu:.2} WCU; usage keys have their own)",
            PARTITION_WCU / wcu
        );
        println!(
            "capacity bound, the account item alone (after split for heat):     {:>6.0} debits/s  (1,000 / {account_wcu:.2} WCU)",
            PARTITION_WCU / account_wcu
        );
        println!(
            "serial bound, one conditional transaction at a time per account:  1 / write latency (here {:.1} ms: {rate:.0} debits/s)",
            1000.0 / rate
        );
    }
    println!(
        "503 account_busy answers, each retried by the bench after 100 ms as a client would: {}",
        BUSY.load(std::sync::atomic::Ordering::Relaxed)
    );
}
