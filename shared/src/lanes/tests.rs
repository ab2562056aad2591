//! Lanes over the in-memory store: routing, leases, recalls, exact refusals, crossings, and the
//! merged ledger. The same behaviour runs against the emulators in `tests/tests/lanes.rs` and
//! under faults in `tests/tests/faults.rs`.

use crate::store::Accounts;
use std::sync::Arc;

use crate::adapters::memory::{MemoryBus, MemoryStore};
use crate::engine::Credits;
use crate::adapters::memory::memory_credits;
use crate::ids::key;
use crate::lanes::lane_id;
use crate::money::MICROS_PER_CREDIT as C;
use crate::profile::Profile;
use crate::reconcile::ledger_differences;
use super::lane_differences;

type Mem = Credits<Arc<MemoryStore>, Arc<MemoryBus>>;

/// An account on `free` (1,000 api_calls a month) with its allowance used and `credits`.
async fn hot(c: &Mem, id: &str, credits: i64, lanes: u32) {
    c.upsert_account(id, "free", vec![]).await.unwrap();
    c.debit(id, "api_calls", 1_000, &key(&format!("{id}-allowance"))).await.unwrap();
    c.adjust(id, credits, "grant", &key(&format!("{id}-g"))).await.unwrap();
    c.set_lanes(id, lanes).await.unwrap();
}

/// The account's balance as a whole, and every check of reconciliation on it and its lanes.
async fn whole_and_clean(c: &Mem, id: &str) -> i64 {
    let a = c.store.load_account(id).await.unwrap().unwrap();
    let own = c.whole_ledger(id).await.unwrap();
    assert!(ledger_differences(&a, &own).is_empty(), "{:?}", ledger_differences(&a, &own));
    let mut lanes = Vec::new();
    for lane in c.lanes_of(&a).await.unwrap() {
        let l = c.whole_ledger(&lane.id).await.unwrap();
        assert!(ledger_differences(&lane, &l).is_empty(), "{}: {:?}", lane.id, ledger_differences(&lane, &l));
        lanes.push((lane, l));
    }
    let d = lane_differences(&a, &own, &lanes);
    assert!(d.is_empty(), "{d:?}");
    let whole = c.whole_account(id).await.unwrap();
    let merged = c.merged_ledger(&a).await.unwrap();
    assert_eq!(merged.last().map_or(0, |e| e.balance_after.get()), whole.balance.get());
    whole.balance.get()
}

#[tokio::test]
async fn debits_go_to_lanes_and_the_balance_is_the_whole() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 20 * C, 4).await;
    // Eight processes, each with its own lane: the first debit of each learns the account; the
    // rest go to its lane, leasing as they need.
    let others: Vec<Mem> = (0..8).map(|_| Credits::new(c.profile.clone(), c.store.clone(), c.bus.clone())).collect();
    for i in 0..200 {
        others[i % 8].debit("a", "api_calls", 3, &key(&format!("d{i}"))).await.unwrap();
    }
    let lanes = c.lanes_of(&c.account("a").await.unwrap()).await.unwrap();
    let used = lanes.iter().filter(|l| l.lifetime_spent.get() > 0).count();
    // Eight processes on four lanes: all on one lane only with odds of 4·(1/4)^8 ≈ 0.00006.
    assert!(used >= 2, "debits spread over lanes: {used}");
    assert_eq!(whole_and_clean(&c, "a").await, 20 * C - 200 * 3_000);
    // A key replays wherever it lands, and conflicts with another request.
    let again = c.debit("a", "api_calls", 3, &key("d7")).await.unwrap();
    assert_eq!(again.from_credits, 3_000);
    assert_eq!(c.debit("a", "api_calls", 4, &key("d7")).await.unwrap_err().code(), "idempotency_conflict");
    assert_eq!(whole_and_clean(&c, "a").await, 20 * C - 200 * 3_000);
    // The view, the check and the grants see the whole.
    let v = c.view("a").await.unwrap();
    assert_eq!(v.balance, 20 * C - 200 * 3_000);
    assert_eq!(v.lifetime_spent, 200 * 3_000);
    let g = c.grants("a").await.unwrap();
    assert_eq!(g.grants.iter().map(|g| g.remaining).sum::<i64>(), v.balance);
}

/// A debit is refused only when the whole account cannot pay: credits out on lanes come back
/// first (a recall), and the refusal carries the whole balance.
#[tokio::test]
async fn a_402_means_the_whole_account_is_empty() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 8 * C, 8).await;
    for i in 0..64 {
        c.debit("a", "api_calls", 10, &key(&format!("d{i}"))).await.unwrap();
    }
    let whole = whole_and_clean(&c, "a").await;
    assert_eq!(whole, 8 * C - 64 * 10_000);
    // Exactly the whole balance in one debit: it applies, though no lane nor the account alone
    // holds it.
    let all = whole / 1_000;
    let d = c.debit("a", "api_calls", all, &key("everything")).await.unwrap();
    assert_eq!(d.balance, 0);
    let e = c.debit("a", "api_calls", 1, &key("more")).await.unwrap_err();
    assert_eq!(e.code(), "usage_limit_reached");
    assert_eq!(whole_and_clean(&c, "a").await, 0);
    let a = c.account("a").await.unwrap();
    assert!(!a.leased_out());
}

/// Low balance is decided on the whole: one `BalanceLow` when the whole crosses, however the
/// credits were spread.
#[tokio::test]
async fn crossings_are_decided_on_the_whole_once() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 7 * C, 4).await;
    // $7 with a $5 threshold: 2,100 debits of $0.001 cross it once.
    for i in 0..2_100 {
        c.debit("a", "api_calls", 1, &key(&format!("d{i}"))).await.unwrap();
    }
    let low: Vec<_> =
        c.bus.published.lock().unwrap().iter().filter(|e| e.detail_type() == "BalanceLow").cloned().collect();
    assert_eq!(low.len(), 1, "{low:?}");
    assert_eq!(whole_and_clean(&c, "a").await, 7 * C - 2_100 * 1_000);
    assert!(c.bus.published.lock().unwrap().iter().all(|e| !e.account_id.contains('~')), "no event names a lane");
}

/// Many processes debiting one account with lanes at once: nothing is spent twice, every key
/// applies once, and the 402s come only when the whole is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_debits_over_lanes_spend_each_credit_once() {
    let store = Arc::new(MemoryStore::default());
    let bus = Arc::new(MemoryBus::default());
    let p = Profile::load("usd-overage").unwrap();
    let first = Credits::new(p.clone(), store.clone(), bus.clone());
    hot(&first, "a", 6 * C, 4).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = Credits::new(p.clone(), store.clone(), bus.clone());
        tasks.push(tokio::spawn(async move {
            let mut applied = 0i64;
            let mut refused = 0;
            for i in 0..150 {
                match c.debit("a", "api_calls", 10, &key(&format!("w{w}-{i}"))).await {
                    Ok(_) => applied += 1,
                    Err(e) if e.code() == "usage_limit_reached" => refused += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            (applied, refused)
        }));
    }
    let mut applied = 0;
    let mut refused = 0;
    for t in tasks {
        let (a, r) = t.await.unwrap();
        applied += a;
        refused += r;
    }
    // $6 at $0.01 a debit: exactly 600 apply, the other 600 are refused.
    assert_eq!((applied, refused), (600, 600));
    assert_eq!(whole_and_clean(&first, "a").await, 0);
}

/// A batch goes to a lane, leases as it spends, and answers each event as the single debit
/// would; the rest goes to the account when the lane cannot take it.
#[tokio::test]
async fn batches_use_lanes_and_stay_exact() {
    use crate::batch::UsageEvent;
    let c = memory_credits("usd-overage");
    hot(&c, "a", 6 * C, 4).await;
    let ev = |i: usize| UsageEvent { consumable: "api_calls".into(), quantity: 5, key: key(&format!("b{i}")), entity: None };
    for round in 0..3 {
        let events: Vec<UsageEvent> = (round * 300..round * 300 + 300).map(ev).collect();
        let r = c.debit_batch("a", &events).await.unwrap();
        assert!(r.results.iter().all(|r| r.status == 200 || r.status == 402));
    }
    // 900 events of $0.005: $4.50 of $6.
    assert_eq!(whole_and_clean(&c, "a").await, 6 * C - 900 * 5_000);
    // Replays across lanes and the account answer their first result.
    let r = c.debit_batch("a", &[ev(3), ev(600)]).await.unwrap();
    assert!(r.results.iter().all(|r| r.replayed));
    // Past the whole balance: 300 more apply, and the rest are 402, decided on the whole.
    let events: Vec<UsageEvent> = (1_000..1_400).map(ev).collect();
    let r = c.debit_batch("a", &events).await.unwrap();
    assert_eq!(r.results.iter().filter(|r| r.status == 200).count(), 300);
    assert_eq!(r.results.iter().filter(|r| r.status == 402).count(), 100);
    assert_eq!(whole_and_clean(&c, "a").await, 0);
}

/// Anything not safe beside lanes (a hold, a negative adjustment, a plan or lane change) brings
/// their credits back first; back to one lane, the account holds everything.
#[tokio::test]
async fn unsafe_changes_and_demotion_recall_the_lanes() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 20 * C, 4).await;
    for i in 0..50 {
        c.debit("a", "api_calls", 2, &key(&format!("d{i}"))).await.unwrap();
    }
    assert!(c.account("a").await.unwrap().leased_out());
    c.reserve("a", "api_calls", 100, 60, &key("h")).await.unwrap();
    let a = c.account("a").await.unwrap();
    assert!(!a.leased_out());
    assert_eq!(a.balance.get(), 20 * C - 50 * 2_000);
    for i in 0..50 {
        c.debit("a", "api_calls", 2, &key(&format!("e{i}"))).await.unwrap();
    }
    c.set_lanes("a", 1).await.unwrap();
    let a = c.account("a").await.unwrap();
    assert!(!a.leased_out());
    assert_eq!(a.balance.get(), 20 * C - 100 * 2_000);
    assert_eq!(whole_and_clean(&c, "a").await, 20 * C - 100 * 2_000);
    // No lanes now: debits are the account's alone.
    c.debit("a", "api_calls", 2, &key("after")).await.unwrap();
    assert!(!c.account("a").await.unwrap().leased_out());
    // The ledger page pages the merged ledger without gaps or repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = c.transactions("a", 7, cursor.as_deref()).await.unwrap();
        seen.extend(page.transactions.iter().map(|t| (t.id.clone(), t.balance_after)));
        match page.next_cursor {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    // The pages are the customer's ledger: no leases (ours, rules §16), running balances of the
    // whole account that add up entry by entry.
    let a = c.account("a").await.unwrap();
    let merged = c.merged_ledger(&a).await.unwrap();
    assert!(merged.iter().any(|e| e.kind.is_lease()), "the lanes were leased to");
    let shown = c.customer_ledger(&a).await.unwrap();
    assert!(shown.iter().all(|e| !e.kind.is_lease()));
    for w in shown.windows(2) {
        assert_eq!(w[1].balance_after.get(), w[0].balance_after.get() + w[1].amount.get(), "{:?}", w[1]);
    }
    assert_eq!(shown.last().map(|e| e.balance_after), Some(a.balance), "ends at the whole balance");
    let want: Vec<(String, i64)> = shown.iter().rev().map(|e| (e.id.clone(), e.balance_after.get())).collect();
    assert_eq!(seen, want);
    let csv = c.transactions_csv("a").await.unwrap();
    assert!(!csv.contains("lease"), "{csv}");
    assert_eq!(csv.lines().count(), shown.len() + 1, "a header and a line an entry");
    let lanes = c.lanes_of(&c.account("a").await.unwrap()).await.unwrap();
    assert!(!lanes.is_empty() && lanes.iter().all(|l| l.balance.get() == 0));
    assert!(lanes.iter().all(|l| l.id.starts_with("a~") && l.id != lane_id("a", 0)));
}

#[tokio::test]
async fn lanes_are_set_within_bounds() {
    let c = memory_credits("usd-overage");
    c.upsert_account("a", "free", vec![]).await.unwrap();
    assert_eq!(c.set_lanes("a", 0).await.unwrap_err().code(), "invalid_lanes");
    assert_eq!(c.set_lanes("a", 65).await.unwrap_err().code(), "invalid_lanes");
    assert_eq!(c.set_lane_bounds("a", 4, 2).await.unwrap_err().code(), "invalid_lanes");
    assert_eq!(c.set_lanes("nope", 4).await.unwrap_err().code(), "account_not_found");
    assert_eq!(c.set_lanes("a", 4).await.unwrap().lanes, 4);
}

/// A ledger read page by page while debits go on shows the ledger as it was at the first page:
/// every chain is bounded by the first page, so nothing written since slips in between pages.
#[tokio::test]
async fn pages_do_not_drift_while_debits_go_on() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 20 * C, 4).await;
    let others: Vec<Mem> = (0..6).map(|_| Credits::new(c.profile.clone(), c.store.clone(), c.bus.clone())).collect();
    for i in 0..60 {
        others[i % 6].debit("a", "api_calls", 2, &key(&format!("d{i}"))).await.unwrap();
    }
    let then = c.customer_ledger(&c.account("a").await.unwrap()).await.unwrap();
    let mut seen = Vec::new();
    let mut page = c.transactions("a", 9, None).await.unwrap();
    loop {
        seen.extend(page.transactions.iter().map(|t| (t.id.clone(), t.balance_after)));
        // More debits (and leases) between every two pages.
        for i in 0..6 {
            others[i].debit("a", "api_calls", 2, &key(&format!("x{}-{i}", seen.len()))).await.unwrap();
        }
        let Some(next) = page.next_cursor else { break };
        page = c.transactions("a", 9, Some(&next)).await.unwrap();
    }
    let want: Vec<(String, i64)> = then.iter().rev().map(|e| (e.id.clone(), e.balance_after.get())).collect();
    assert_eq!(seen, want);
}

/// A malformed or impossible request is refused on the account's own item: it does not call
/// the lanes' credits back.
#[tokio::test]
async fn bad_requests_recall_nothing() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 20 * C, 4).await;
    for i in 0..20 {
        c.debit("a", "api_calls", 2, &key(&format!("d{i}"))).await.unwrap();
    }
    assert!(c.account("a").await.unwrap().leased_out());
    assert_eq!(c.reserve("a", "nope", 1, 60, &key("h1")).await.unwrap_err().code(), "unknown_consumable");
    assert_eq!(c.reserve("a", "api_calls", 1, 0, &key("h2")).await.unwrap_err().code(), "invalid_ttl");
    assert_eq!(c.settle("a", "hold_nope", 1).await.unwrap_err().code(), "hold_not_found");
    assert!(c.account("a").await.unwrap().leased_out(), "lanes keep their credits");
    // A real hold recalls them, in the same transaction as the hold.
    let before = c.account("a").await.unwrap().version;
    c.reserve("a", "api_calls", 10, 60, &key("h3")).await.unwrap();
    let a = c.account("a").await.unwrap();
    assert!(!a.leased_out());
    let own = c.whole_ledger("a").await.unwrap();
    let returns =
        own.iter().filter(|e| e.kind == crate::ledger::EntryKind::LeaseReturn && e.seq > before).count() as u64;
    // The returns' versions, then the hold's (committed together with it).
    assert!(
        returns >= 1 && a.version == before + returns + 1,
        "{returns} returns, version {} from {before}",
        a.version
    );
    assert_eq!(whole_and_clean(&c, "a").await, 20 * C - 20 * 2_000);
}

/// Many small grants leased out whole and spent on lanes wait for the lanes to retire: the
/// recall, and every write after it, retires a bounded number, so each stays one transaction.
#[tokio::test]
async fn many_grants_spent_on_lanes_retire_a_few_at_a_time() {
    let c = memory_credits("usd-overage");
    c.upsert_account("a", "free", vec![]).await.unwrap();
    c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
    // More than one transaction's 100 items of them.
    for i in 0..200 {
        c.adjust("a", 10_000, "small", &key(&format!("s{i}"))).await.unwrap();
    }
    c.adjust("a", 8 * C, "big", &key("big")).await.unwrap();
    c.set_lanes("a", 4).await.unwrap();
    let others: Vec<Mem> = (0..8).map(|_| Credits::new(c.profile.clone(), c.store.clone(), c.bus.clone())).collect();
    for i in 0..220 {
        others[i % 8].debit("a", "api_calls", 10, &key(&format!("d{i}"))).await.unwrap();
    }
    // The lanes spent the small grants first (oldest first); they cannot retire while out.
    let before = c.account("a").await.unwrap();
    let used = before.grants.iter().filter(|g| g.remaining.get() == 0).count();
    // (A lease takes parts of at most 16 grants; many leases spread them over the lanes.)
    assert!(used > 150, "{used} used grants waiting");
    c.set_lanes("a", 1).await.unwrap();
    for i in 0..16 {
        c.debit("a", "api_calls", 10, &key(&format!("after{i}"))).await.unwrap();
    }
    let a = c.account("a").await.unwrap();
    assert!(a.grants.iter().all(|g| g.remaining.get() > 0), "every used grant retired by now");
    assert_eq!(whole_and_clean(&c, "a").await, 200 * 10_000 + 8 * C - 236 * 10_000);
}

/// An account on `free` with its allowance used and `credits`, left to spread itself (no lane
/// setting), every process on one manual clock.
async fn left_alone(clock: &Arc<crate::clock::ManualClock>, credits: i64) -> (Mem, Vec<Mem>) {
    let c = memory_credits("usd-overage").with_clock(clock.clone());
    c.upsert_account("a", "free", vec![]).await.unwrap();
    c.debit("a", "api_calls", 1_000, &key("allowance")).await.unwrap();
    c.adjust("a", credits, "grant", &key("g")).await.unwrap();
    let others = (0..8u32)
        .map(|n| Credits::new(c.profile.clone(), c.store.clone(), c.bus.clone()).with_clock(clock.clone()).with_home_lane(n))
        .collect();
    (c, others)
}

fn lanes_now(a: &crate::account::Account) -> u32 {
    super::spread::count(a.spread.lanes.as_ref())
}

/// Rules §21: a process that loses races on an account widens it (doubling, a cooldown between
/// changes); the debits then go to lanes, exactly; left quiet, the scheduled run brings it back
/// to one lane with every lane's credits home.
#[tokio::test]
async fn contention_widens_the_account_and_quiet_brings_it_home() {
    let clock = Arc::new(crate::clock::ManualClock::at(1_795_300_000_000));
    let (c, others) = left_alone(&clock, 20 * C).await;
    assert_eq!(lanes_now(&c.account("a").await.unwrap()), 1, "nothing spreads without contention");
    for step in [2u32, 4] {
        for p in &others {
            p.debit("a", "api_calls", 1, &key(&format!("warm{step}-{}", p.now()))).await.ok();
        }
        // What losing races on the account looks like to one process.
        for _ in 0..4 {
            others[0].lost_race("a");
        }
        others[0].debit("a", "api_calls", 1, &key(&format!("w{step}"))).await.unwrap();
        assert_eq!(lanes_now(&c.account("a").await.unwrap()), step);
        // Within the cooldown, more contention changes nothing.
        for _ in 0..4 {
            others[0].lost_race("a");
        }
        others[0].debit("a", "api_calls", 1, &key(&format!("cool{step}"))).await.unwrap();
        assert_eq!(lanes_now(&c.account("a").await.unwrap()), step, "inside the cooldown");
        clock.advance(super::spread::WIDEN_COOLDOWN_MS);
    }
    let mut spent = 0;
    for i in 0..400 {
        spent += others[i % 8].debit("a", "api_calls", 1, &key(&format!("d{i}"))).await.unwrap().from_credits;
    }
    let a = c.account("a").await.unwrap();
    assert!(a.leased_out(), "the debits went to lanes");
    let before = whole_and_clean(&c, "a").await;
    assert!(spent > 0 && before < 20 * C);
    // Quiet: the expiry run's index lists the account when it is due, and narrows it.
    let due = a.expiry_due().unwrap();
    assert!(due > c.now() && c.expire_grants(c.now()).await.unwrap().narrowed == 0, "not quiet yet");
    clock.set(due);
    let report = c.expire_grants(c.now()).await.unwrap();
    assert_eq!((report.due, report.narrowed, report.failed), (1, 1, 0));
    let a = c.account("a").await.unwrap();
    assert_eq!(lanes_now(&a), 1);
    assert!(!a.leased_out() && a.expiry_due().is_none());
    assert!(c.lanes_of(&a).await.unwrap().iter().all(|l| l.balance.get() == 0), "every lane's credits home");
    assert_eq!(whole_and_clean(&c, "a").await, before);
}

/// `PUT …/lanes` overrides the policy: a fixed count never moves; bounds cap it.
#[tokio::test]
async fn a_fixed_count_or_bounds_override_the_policy() {
    let clock = Arc::new(crate::clock::ManualClock::at(1_795_300_000_000));
    let (c, others) = left_alone(&clock, 20 * C).await;
    let fixed = c.set_lanes("a", 1).await.unwrap();
    assert_eq!((fixed.lanes, fixed.min, fixed.max, fixed.automatic), (1, 1, 1, false));
    for _ in 0..4 {
        others[0].lost_race("a");
    }
    others[0].debit("a", "api_calls", 1, &key("x")).await.unwrap();
    assert_eq!(lanes_now(&c.account("a").await.unwrap()), 1, "a fixed count never widens");
    let b = c.set_lane_bounds("a", 2, 3).await.unwrap();
    assert_eq!((b.lanes, b.min, b.max, b.automatic), (2, 2, 3, true));
    for round in 0..3 {
        clock.advance(super::spread::WIDEN_COOLDOWN_MS);
        for _ in 0..4 {
            others[0].lost_race("a");
        }
        others[0].debit("a", "api_calls", 1, &key(&format!("y{round}"))).await.unwrap();
    }
    assert_eq!(lanes_now(&c.account("a").await.unwrap()), 3, "capped at max");
    // Quiet: back to min, not to one.
    clock.advance(super::spread::QUIET_MS + 1);
    assert!(c.settle_spread("a").await.unwrap());
    assert_eq!(lanes_now(&c.account("a").await.unwrap()), 2);
    assert_eq!(c.set_lane_bounds("a", 3, 2).await.unwrap_err().code(), "invalid_lanes");
    assert_eq!(c.set_lane_bounds("a", 0, 2).await.unwrap_err().code(), "invalid_lanes");
    whole_and_clean(&c, "a").await;
}

/// A recall of more lanes than one transaction carries goes in parts (leases held off
/// meanwhile) and still decides on the whole: a hold that needs everything gets it.
#[tokio::test]
async fn a_recall_of_many_lanes_goes_in_parts() {
    let c = memory_credits("usd-overage");
    hot(&c, "a", 100 * C, 48).await;
    let procs: Vec<Mem> = (0..48u32)
        .map(|n| Credits::new(c.profile.clone(), c.store.clone(), c.bus.clone()).with_home_lane(n))
        .collect();
    for (i, p) in procs.iter().enumerate() {
        p.debit("a", "api_calls", 1, &key(&format!("learn{i}"))).await.unwrap();
        p.debit("a", "api_calls", 1, &key(&format!("d{i}"))).await.unwrap();
    }
    let lanes = c.lanes_of(&c.account("a").await.unwrap()).await.unwrap();
    let holding = lanes.iter().filter(|l| l.balance.get() > 0).count();
    assert!(holding > super::recall::LANES_PER_RECALL, "{holding} lanes hold credits");
    let whole = whole_and_clean(&c, "a").await;
    // A hold of nearly everything: decided on the whole, every lane home first.
    let units = whole / 1_000 - 1;
    c.reserve("a", "api_calls", units, 60, &key("big-hold")).await.unwrap();
    let a = c.account("a").await.unwrap();
    assert!(!a.leased_out() && a.spread.lanes.as_ref().is_some_and(|l| l.draining_until == 0));
    assert!(c.lanes_of(&a).await.unwrap().iter().all(|l| l.balance.get() == 0));
    assert_eq!(whole_and_clean(&c, "a").await, whole);
}

/// A change of the lanes setting records itself in the account's audit chain, with the setting
/// before and after; setting it as it is records nothing (as every change through the engine).
#[tokio::test]
async fn a_change_of_lanes_records_itself_and_a_change_to_nothing_does_not() {
    use crate::audit::{scoped, verify_chain, Actor, AuditLog, Context};
    let c = memory_credits("usd-overage");
    let svc = Context { actor: Actor { sub: "backend".into(), role: "service".into() }, request_id: "r1".into(), reason: None };
    scoped(svc, async {
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.set_lanes("a", 2).await.unwrap();
        c.set_lanes("a", 2).await.unwrap(); // as it is: nothing
    })
    .await;
    let records = c.store.audit_chain("a", 0, 100).await.unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["account.create", "lanes.update"]);
    let set = &records[1];
    assert_eq!((set.before.clone(), set.after.clone()), (
            Some(serde_json::json!({"lanes": 1, "min": 1, "max": super::spread::AUTO_MAX})),
            Some(serde_json::json!({"lanes": 2, "min": 2, "max": 2}))
        )
    );
    assert!(records.iter().all(|r| r.actor.sub == "backend" && r.request_id == "r1"));
    let head = c.store.load_account("a").await.unwrap().unwrap().audit;
    assert_eq!(verify_chain("a", &records, head.as_ref()), Ok(2));
}
