//! Batch usage against the emulator (rules §14): each event applied or refused on its own with
//! the single debit's rules, one group commit per batch, entries individual in the ledger page,
//! replays per key (across requests, across the two routes, inside one batch), concurrent
//! batches on one account, and crossing events once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use topup_tests::*;

fn batch(account: &str, events: Value) -> lambda_http::Request {
    post(&format!("/v1/accounts/{account}/usage/batch"), &service(), json!({ "events": events }))
}

fn ev(consumable: &str, quantity: i64, key: &str) -> Value {
    json!({"consumable": consumable, "quantity": quantity, "idempotency_key": key})
}

fn statuses(b: &Value) -> Vec<(i64, bool)> {
    b["results"]
        .as_array()
        .map(|r| r.iter().map(|x| (x["status"].as_i64().unwrap_or(0), x["replayed"] == true)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_mixed_batch_answers_each_event_as_the_single_debit_would() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", C).await; // $1.00
                              // A key applied earlier by the single route replays inside the batch.
    let (s, single) = w.debit(post("/v1/accounts/acme/usage", &service(), ev("api_calls", 400, "single-1"))).await;
    assert_eq!(s, 200, "{single}");

    let events = json!([
        ev("api_calls", 600, "b1"),       // the rest of the 1,000 included: allowance only
        ev("api_calls", 250, "b2"),       // $0.25 from credits
        ev("api_calls", 400, "single-1"), // applied before: its first result
        ev("api_calls", 250, "b2"),       // repeated in the batch, same request: replayed
        ev("api_calls", 251, "b2"),       // repeated with another request: 409
        ev("no_such_thing", 1, "b3"),     // 422
        ev("api_calls", 0, "b4"),         // 422
        ev("api_calls", 900, "b5"),       // $0.90 > $0.75 left: 402, strict
        ev("api_calls", 700, "b6"),       // $0.70 still fits after the refusal
    ]);
    let (s, b) = w.debit(batch("acme", events.clone())).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        statuses(&b),
        [
            (200, false),
            (200, false),
            (200, true),
            (200, true),
            (409, false),
            (422, false),
            (422, false),
            (402, false),
            (200, false)
        ],
        "{b}"
    );
    let r = &b["results"];
    assert_eq!((r[0]["from_allowance"].as_i64(), r[0]["from_credits"].as_i64()), (Some(600), Some(0)), "{b}");
    assert!(r[0].get("transaction_id").is_none(), "an allowance-only debit writes no entry: {b}");
    assert_eq!((r[1]["from_credits"].as_i64(), r[1]["balance"].as_i64()), (Some(250_000), Some(750_000)));
    assert_eq!(r[2]["from_allowance"], single["from_allowance"]);
    assert_eq!(r[2]["balance"], single["balance"], "a replay answers the first result");
    assert_eq!(r[3]["transaction_id"], r[1]["transaction_id"]);
    assert_eq!(r[4]["error"]["code"], "idempotency_conflict");
    assert_eq!(r[5]["error"]["code"], "unknown_consumable", "{b}");
    assert_eq!(r[6]["error"]["code"], "invalid_quantity");
    assert_eq!(
        (r[7]["error"]["code"].as_str(), r[7]["error"]["balance"].as_i64()),
        (Some("usage_limit_reached"), Some(750_000))
    );
    assert_eq!((r[8]["from_credits"].as_i64(), r[8]["balance"].as_i64()), (Some(700_000), Some(50_000)));
    for (i, x) in r.as_array().into_iter().flatten().enumerate() {
        assert_eq!(x["idempotency_key"], events[i]["idempotency_key"]);
    }

    // Each event keeps its own entry in the ledger page, with its running balance.
    let (s, page) = w.api(get("/v1/accounts/acme/credits/transactions?limit=10", &service())).await;
    assert_eq!(s, 200, "{page}");
    let txs: Vec<(Value, i64, i64)> = page["transactions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["id"].clone(), t["amount"].as_i64().unwrap_or(0), t["balance_after"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(
        txs,
        [
            (r[8]["transaction_id"].clone(), -700_000, 50_000),
            (r[1]["transaction_id"].clone(), -250_000, 750_000),
            (txs[2].0.clone(), C, C),
        ]
    );
    assert_eq!(w.view("acme").await["balance"], 50_000);

    // The same batch again: every applied event replays its first result; nothing moves.
    let before = w.ledger("acme").await;
    let (s, again) = w.debit(batch("acme", events)).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        statuses(&again),
        [
            (200, true),
            (200, true),
            (200, true),
            (200, true),
            (409, false),
            (422, false),
            (422, false),
            (402, false),
            (200, true)
        ]
    );
    assert_eq!(again["results"][8]["transaction_id"], r[8]["transaction_id"]);
    assert_eq!(again["results"][8]["balance"], 50_000);
    assert_eq!(w.ledger("acme").await, before);
    // A batch key replays through the single route too.
    let (s, one) = w.debit(post("/v1/accounts/acme/usage", &service(), ev("api_calls", 250, "b2"))).await;
    assert_eq!((s, &one["transaction_id"]), (200, &r[1]["transaction_id"]));
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn a_malformed_batch_is_400_and_applies_nothing() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", C).await;
    let before = w.snapshot("acme").await;
    let too_many: Vec<Value> = (0..501).map(|i| ev("api_calls", 1, &format!("k{i}"))).collect();
    for (body, why) in [
        (json!({"events": []}), "no events"),
        (json!({"events": too_many}), "501 events"),
        (json!({"events": "nope"}), "not an array"),
        (json!({}), "no events field"),
        (json!({"events": [ev("api_calls", 1, "ok"), ev("api_calls", 1, "has space")]}), "a bad key"),
        (json!({"events": [ev("api_calls", 1, "ok"), {"consumable": "api_calls", "quantity": 1}]}), "a missing key"),
        (
            json!({"events": [ev("api_calls", 1, "ok"), {"consumable": "api_calls", "quantity": 1.5, "idempotency_key": "x"}]}),
            "a float",
        ),
        (
            json!({"events": [ev("api_calls", 1, "ok"), {"consumable": "api_calls", "quantity": 1, "idempotency_key": "y", "extra": 1}]}),
            "an unknown field",
        ),
        (json!({"events": [ev("api_calls", 1, "ok")], "more": true}), "an unknown top-level field"),
    ] {
        let (s, b) = w.debit(post("/v1/accounts/acme/usage/batch", &service(), body)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{why}: {b}");
    }
    assert_eq!(w.snapshot("acme").await, before);
    // An account that does not exist, and a caller that is not the service.
    let (s, _) = w.debit(batch("nobody", json!([ev("api_calls", 1, "k")]))).await;
    assert_eq!(s, 404);
    let (s, _) = w
        .debit(post(
            "/v1/accounts/acme/usage/batch",
            &person("owner", "acme"),
            json!({"events": [ev("api_calls", 1, "k")]}),
        ))
        .await;
    assert_eq!(s, 403);
    assert_eq!(w.snapshot("acme").await, before);
}

/// 500 events: several group commits, 500 entries that page one by one across the blocks.
#[tokio::test]
async fn a_batch_of_500_pages_entry_by_entry() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await; // the month's included runs
    w.grant("org", 100 * C).await;
    let events: Vec<Value> = (0..500).map(|i| ev("runs", 1 + (i % 3), &format!("r{i}"))).collect();
    let (s, b) = w.debit(batch("org", json!(events))).await;
    assert_eq!(s, 200, "{b}");
    assert!(statuses(&b).iter().all(|&(st, rep)| st == 200 && !rep), "{b}");
    let ids: Vec<Value> = b["results"].as_array().into_iter().flatten().map(|r| r["transaction_id"].clone()).collect();
    let ledger = w.ledger("org").await;
    assert_eq!(ledger.len(), 501);
    let seqs: Vec<u64> = ledger.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "contiguous: {:?}", &seqs[..5]);
    assert_eq!(ledger[1..].iter().map(|e| json!(e.id)).collect::<Vec<_>>(), ids);
    // Paging by 7 through the API crosses block boundaries without a gap or a repeat.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/accounts/org/credits/transactions?limit=7&cursor={c}"),
            None => "/v1/accounts/org/credits/transactions?limit=7".to_string(),
        };
        let (s, p) = w.api(get(&path, &service())).await;
        assert_eq!(s, 200, "{p}");
        seen.extend(p["transactions"].as_array().cloned().unwrap_or_default());
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<Value> = ledger.iter().rev().map(|e| json!(e.id)).collect();
    assert_eq!(seen.iter().map(|t| t["id"].clone()).collect::<Vec<_>>(), expected);
    let v = w.view("org").await;
    assert_eq!(v["recent_transactions"].as_array().map(Vec::len), Some(5));
    assert_eq!(v["recent_transactions"][0]["id"], ids[499]);
    w.assert_invariants("org").await;
}

/// 20 batches at once from 20 instances on one account whose balance covers only part of
/// them: every credit is spent at most once, refusals are exact, the ledger chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_batches_on_one_account() {
    let w = Arc::new(World::new("usd-overage").await);
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 3 * C).await; // $3: 3,000 calls at $0.001
    let mut tasks = Vec::new();
    for t in 0..20 {
        let w = w.clone();
        let inst = w.another_instance();
        tasks.push(tokio::spawn(async move {
            // 25 events of 10 calls ($0.01) each: $0.25 a batch, $5 in all. A 503
            // `account_busy` is retried as a client does: every event has its own key, so a
            // retry applies nothing twice.
            let events: Vec<Value> = (0..25).map(|i| ev("api_calls", 10, &format!("t{t}-{i}"))).collect();
            for _ in 0..20 {
                let (s, b) = read(debit::handle(&w.config, &inst, batch("acme", json!(events))).await);
                if s != 503 {
                    return (s, b);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (503, json!("busy 20 times"))
        }));
    }
    let mut applied = 0;
    let mut refused = 0;
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (s, b) = t.await.expect("task");
        assert_eq!(s, 200, "{b}");
        for r in b["results"].as_array().into_iter().flatten() {
            match r["status"].as_i64() {
                Some(200) => {
                    applied += 1;
                    assert!(ids.insert(r["transaction_id"].to_string()), "one entry per event: {r}");
                }
                Some(402) => refused += 1,
                other => panic!("unexpected {other:?}: {r}"),
            }
        }
    }
    assert_eq!((applied, refused), (300, 200), "exactly $3 of $0.01 debits apply");
    let a = w.credits.account("acme").await.expect("account");
    assert_eq!(a.balance.get(), 0);
    assert_eq!(w.ledger("acme").await.len(), 301);
    w.assert_invariants("acme").await;
}

/// A batch that crosses the low threshold and reaches zero emits each crossing once.
#[tokio::test]
async fn a_batch_crossing_low_and_zero_emits_each_once() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 8 * C).await; // threshold $5
                                  // 9 events of $1: $8 apply (through $5 and down to 0), the ninth is refused.
    let events: Vec<Value> = (0..9).map(|i| ev("api_calls", 1_000, &format!("x{i}"))).collect();
    let (s, b) = w.debit(batch("acme", json!(events))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(statuses(&b).iter().filter(|s| s.0 == 200).count(), 8, "{b}");
    let seen = observer.drain(Duration::from_secs(2)).await;
    assert_eq!(of_type(&seen, "BalanceLow").len(), 1, "{seen:?}");
    assert_eq!(of_type(&seen, "BalanceDepleted").len(), 1, "{seen:?}");
    assert_eq!(distinct(&seen), 2);
    // The same batch again crosses nothing more.
    let (s, _) = w
        .debit(batch("acme", json!((0..9).map(|i| ev("api_calls", 1_000, &format!("x{i}"))).collect::<Vec<_>>())))
        .await;
    assert_eq!(s, 200);
    assert!(observer.drain(Duration::from_secs(1)).await.is_empty());
    w.assert_invariants("acme").await;
}
