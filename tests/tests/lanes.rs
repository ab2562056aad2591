//! Lanes against the emulator (rules §14): one account's debits spread over lane items, funded
//! by leases, exact to the micro-credit however many processes debit at once; a 402 only when
//! the whole account is empty; crossings decided once on the whole; the ledger page merging
//! every lane's entries with the whole balance after each; back to one lane, everything home.

use std::sync::Arc;

use serde_json::{json, Value};
use topup_tests::*;

fn usage(account: &str, quantity: i64, key: &str) -> lambda_http::Request {
    post(
        &format!("/v1/accounts/{account}/usage"),
        &service(),
        json!({"consumable": "api_calls", "quantity": quantity, "idempotency_key": key}),
    )
}

/// An account on `free` with its 1,000 api_calls used and `micros` of credits, on `k` lanes.
async fn hot(w: &World, id: &str, micros: i64, k: u32) {
    w.account(id, "free").await;
    let (s, b) = w.usage(id, "api_calls", 1_000).await;
    assert_eq!(s, 200, "{b}");
    w.grant(id, micros).await;
    let (s, b) = w.api(put(&format!("/v1/accounts/{id}/lanes"), &service(), json!({"lanes": k}))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["lanes"], k);
}

#[tokio::test]
async fn the_setting_is_the_services_and_checked() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let path = "/v1/accounts/acme/lanes";
    let (s, b) = w.api(put(path, &service(), json!({"lanes": 4}))).await;
    assert_eq!((s, b["lanes"].as_u64(), b["floor"].as_i64()), (200, Some(4), Some(5 * C)), "{b}");
    assert_eq!((b["min"].as_u64(), b["max"].as_u64(), b["automatic"].as_bool()), (Some(4), Some(4), Some(false)), "{b}");
    // Bounds: the count moves into them now, and the account spreads itself within them.
    let (s, b) = w.api(put(path, &service(), json!({"min": 1, "max": 2}))).await;
    assert_eq!((s, b["lanes"].as_u64(), b["automatic"].as_bool()), (200, Some(2), Some(true)), "{b}");
    let (s, b) = w.api(put(path, &service(), json!({"min": 1}))).await;
    assert_eq!((s, b["lanes"].as_u64(), b["max"].as_u64()), (200, Some(2), Some(64)), "{b}");
    for (body, status, code) in [
        (json!({"lanes": 0}), 422, "invalid_lanes"),
        (json!({"lanes": 65}), 422, "invalid_lanes"),
        (json!({"lanes": -1}), 422, "invalid_lanes"),
        (json!({"min": 4, "max": 2}), 422, "invalid_lanes"),
        (json!({"max": 65}), 422, "invalid_lanes"),
        (json!({"lanes": 4, "max": 8}), 400, "invalid_request"),
        (json!({}), 400, "invalid_request"),
        (json!({"lanes": "4"}), 400, "invalid_request"),
        (json!({"lanes": 4, "shards": 2}), 400, "invalid_request"),
    ] {
        let (s, b) = w.api(put(path, &service(), body.clone())).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some(code)), "{body}: {b}");
    }
    let (s, _) = w.api(put(path, &person("owner", "acme"), json!({"lanes": 2}))).await;
    assert_eq!(s, 403);
    let (s, b) = w.api(put("/v1/accounts/nobody/lanes", &service(), json!({"lanes": 2}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("account_not_found")));
    let (s, _) = w.api(get(path, &service())).await;
    assert_eq!(s, 405);
}

/// Eight processes debit one account on four lanes at once: every credit is spent once, the
/// whole balance crosses the low threshold once, and a debit of exactly what is left as a whole
/// applies though no single item holds it.
#[tokio::test]
async fn concurrent_debits_over_lanes_are_exact() {
    let w = Arc::new(World::new("usd-overage").await);
    let bus = w.observe_bus().await;
    hot(&w, "hot", 6 * C, 4).await;
    let mut tasks = Vec::new();
    // Eight processes, each with its own lane of the four (all on one: odds 4·(1/4)^8).
    for p in 0..8 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let instance = w.another_instance();
            for i in 0..20 {
                let resp = debit::handle(&w.config, &instance, usage("hot", 10, &format!("p{p}-{i}"))).await;
                let (s, b) = read(resp);
                assert_eq!(s, 200, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("debits");
    }
    // 160 debits of $0.01.
    let view = w.view("hot").await;
    assert_eq!(view["balance"], 6 * C - 160 * 10_000, "{view}");
    assert_eq!(view["lifetime_spent"], 160 * 10_000);
    w.assert_invariants("hot").await;
    let account = w.credits.account("hot").await.expect("account");
    let lanes = w.credits.lanes_of(&account).await.expect("lanes");
    assert!(lanes.iter().filter(|l| l.lifetime_spent.get() > 0).count() >= 2, "debits ran on several lanes");

    // Exactly what is left, in one debit: the lanes' credits come back and it applies.
    let left = view["balance"].as_i64().expect("balance") / 1_000;
    let (s, b) = w.debit(usage("hot", left, "all")).await;
    assert_eq!((s, b["balance"].as_i64()), (200, Some(0)), "{b}");
    let (s, b) = w.debit(usage("hot", 1, "one-more")).await;
    assert_eq!((s, b["error"]["code"].as_str(), b["balance"].as_i64()), (402, Some("usage_limit_reached"), Some(0)));
    w.assert_invariants("hot").await;

    let events = bus.drain(std::time::Duration::from_secs(2)).await;
    assert_eq!(of_type(&events, "BalanceLow").len(), 1, "{events:?}");
    assert_eq!(of_type(&events, "BalanceDepleted").len(), 1, "{events:?}");
    assert!(events.iter().all(|e| !e["detail"]["account_id"].as_str().unwrap_or("").contains('~')));
}

/// Batches go to a lane and lease as they spend; replays answer their first result wherever
/// they applied; the ledger page and the CSV show every lane's entries in one order with the
/// whole balance after each; back to one lane, the account holds everything.
#[tokio::test]
async fn batches_the_ledger_page_and_demotion() {
    let w = World::new("usd-overage").await;
    hot(&w, "hot", 7 * C, 3).await;
    let ev = |i: usize| json!({"consumable": "api_calls", "quantity": 3, "idempotency_key": format!("b{i}")});
    for round in 0..4 {
        let events: Vec<Value> = (round * 100..round * 100 + 100).map(ev).collect();
        let (s, b) = w.debit(post("/v1/accounts/hot/usage/batch", &service(), json!({ "events": events }))).await;
        assert_eq!(s, 200, "{b}");
        assert!(b["results"].as_array().expect("results").iter().all(|r| r["status"] == 200), "{b}");
        // A single debit between batches, perhaps on another lane.
        let (s, _) = w.debit(usage("hot", 2, &format!("s{round}"))).await;
        assert_eq!(s, 200);
    }
    let spent = 400 * 3_000 + 4 * 2_000;
    let (s, b) = w.debit(post("/v1/accounts/hot/usage/batch", &service(), json!({"events": [ev(5), ev(250)]}))).await;
    assert_eq!(s, 200);
    assert!(b["results"].as_array().expect("results").iter().all(|r| r["replayed"] == true), "{b}");
    w.assert_invariants("hot").await;

    // The page, 37 at a time, is the merged ledger newest first, with no gap or repeat, and
    // its newest running balance is the view's.
    let merged = w.account_ledger("hot").await;
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/accounts/hot/credits/transactions?limit=37&cursor={c}"),
            None => "/v1/accounts/hot/credits/transactions?limit=37".to_string(),
        };
        let (s, page) = w.api(get(&path, &service())).await;
        assert_eq!(s, 200, "{page}");
        for t in page["transactions"].as_array().expect("transactions") {
            seen.push((t["id"].as_str().expect("id").to_string(), t["balance_after"].as_i64().expect("balance")));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // What the account's people see is the merged ledger without our leases (rules §16).
    let shown: Vec<&topup::ledger::LedgerEntry> = merged.iter().filter(|e| !e.kind.is_lease()).collect();
    let want: Vec<(String, i64)> = shown.iter().rev().map(|e| (e.id.clone(), e.balance_after.get())).collect();
    assert_eq!(seen, want);
    assert_eq!(seen.first().map(|x| x.1), Some(7 * C - spent));
    for w in shown.windows(2) {
        assert_eq!(w[1].balance_after.get(), w[0].balance_after.get() + w[1].amount.get(), "adds up: {:?}", w[1]);
    }
    assert!(merged.iter().any(|e| e.kind == topup::ledger::EntryKind::LeaseOut));
    assert!(merged.iter().any(|e| e.kind == topup::ledger::EntryKind::LeaseIn));
    let view = w.view("hot").await;
    assert_eq!(view["balance"], 7 * C - spent);
    assert!(view["recent_transactions"].as_array().expect("recent").iter().all(|t| !t["kind"].as_str().unwrap_or("").starts_with("lease")));
    let csv = w.credits.transactions_csv("hot").await.expect("csv");
    assert_eq!(csv.lines().count(), shown.len() + 1, "a header and a row per entry the customer sees");
    assert!(!csv.contains("lease"), "{csv}");

    // Back to one lane: every lane's credits come home with a return on both sides.
    let (s, _) = w.api(put("/v1/accounts/hot/lanes", &service(), json!({"lanes": 1}))).await;
    assert_eq!(s, 200);
    let account = w.credits.account("hot").await.expect("account");
    assert!(!account.leased_out());
    assert_eq!(account.balance.get(), 7 * C - spent);
    for lane in w.credits.lanes_of(&account).await.expect("lanes") {
        assert_eq!(lane.balance.get(), 0, "{}", lane.id);
    }
    w.assert_invariants("hot").await;
    let report = w.credits.reconcile_account(&stripe_payments(), "hot").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

/// Rules §21: nobody sets lanes. Eight processes debiting one account at once lose races on
/// its item; the account widens itself, the debits go on over its lanes, every credit exact;
/// left quiet, the scheduled run brings it back to one lane with every lane's credits home.
#[tokio::test]
async fn an_account_spreads_itself_and_comes_home_when_quiet() {
    let w = Arc::new(World::new("usd-overage").await.with_manual_clock(1_795_300_000_000));
    w.account("auto", "free").await;
    let (s, b) = w.usage("auto", "api_calls", 1_000).await;
    assert_eq!(s, 200, "{b}");
    w.grant("auto", 20 * C).await;
    let lanes_now = |a: &topup::account::Account| topup::lanes::spread::count(a.spread.lanes.as_ref());
    let mut debits = 0i64;
    for round in 0..8 {
        let mut tasks = Vec::new();
        for p in 0..8 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let instance = w.another_instance();
                for i in 0..6 {
                    let resp = debit::handle(&w.config, &instance, usage("auto", 1, &format!("r{round}-p{p}-{i}"))).await;
                    let (s, b) = read(resp);
                    assert_eq!(s, 200, "{b}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("debits");
        }
        debits += 8 * 6;
        // Past the cooldown between two changes of the count.
        w.advance(topup::lanes::spread::WIDEN_COOLDOWN_MS);
        if lanes_now(&w.credits.account("auto").await.expect("account")) >= 4 {
            break;
        }
    }
    let account = w.credits.account("auto").await.expect("account");
    assert!(lanes_now(&account) >= 2, "contention spread the account: {:?}", account.spread.lanes);
    let view = w.view("auto").await;
    assert_eq!(view["balance"], 20 * C - debits * 1_000, "{view}");
    w.assert_invariants("auto").await;

    // Quiet: due in the expiry run's index at its last lease plus the quiet time; the run
    // narrows it to one lane and brings every lane's credits home.
    let due = account.expiry_due().expect("listed for a look");
    w.advance(due - w.now() + 1);
    let report = w.credits.expire_grants(w.now()).await.expect("the scheduled run");
    assert_eq!((report.narrowed, report.failed), (1, 0), "{report:?}");
    let account = w.credits.account("auto").await.expect("account");
    assert_eq!(lanes_now(&account), 1);
    assert!(!account.leased_out() && account.expiry_due().is_none());
    for lane in w.credits.lanes_of(&account).await.expect("lanes") {
        assert_eq!(lane.balance.get(), 0, "{}", lane.id);
    }
    assert_eq!(w.view("auto").await["balance"], 20 * C - debits * 1_000);
    w.assert_invariants("auto").await;
    let report = w.credits.reconcile_account(&stripe_payments(), "auto").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}
