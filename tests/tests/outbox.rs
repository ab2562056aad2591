//! Events are never silently dropped: a crossing event is written to the outbox in the same
//! transaction as the debit; if the bus refuses it, it stays there, and redelivery publishes it.

use topup::store::Accounts;
use std::time::Duration;

use topup::adapters::dynamo::DynamoStore;
use topup::adapters::eventbridge::EventBridgeBus;
use topup::engine::Credits;
use topup::events::{drain_outbox, pending_events};
use topup_tests::*;

#[tokio::test]
async fn an_event_the_bus_refuses_stays_in_the_outbox_until_redelivered() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;

    // The same table, but a bus that does not exist: PutEvents fails for the entry.
    let store = DynamoStore::new(w.dynamo.clone(), w.config.table.clone());
    let broken = EventBridgeBus::new(w.events.clone(), "no-such-bus");
    let credits = Credits::new(w.config.profile.clone(), store.clone(), broken.clone());
    let debited = credits.debit("acme", "api_calls", 2_000, &key("cross")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(debited.balance, 4 * C, "the debit itself succeeds");

    let pending = pending_events(&store, 10).await.expect("outbox");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].detail_type(), "BalanceLow");
    assert!(observer.drain(Duration::from_millis(500)).await.is_empty());

    // Redelivery through a bus that refuses keeps it; through the real bus publishes and clears.
    assert_eq!(drain_outbox(&store, &broken, 0, None).await.expect("redeliver").delivered, 0);
    assert_eq!(pending_events(&store, 10).await.expect("outbox").len(), 1);
    let bus = EventBridgeBus::new(w.events.clone(), w.config.event_bus.clone());
    assert_eq!(drain_outbox(&store, &bus, 0, None).await.expect("redeliver").delivered, 1);
    assert!(pending_events(&store, 10).await.expect("outbox").is_empty());
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "BalanceLow").len(), 1);
    assert_eq!(events[0]["detail"]["event_id"], serde_json::json!(pending[0].id), "the id consumers dedupe on");
    w.assert_invariants("acme").await;
}

/// What an earlier failure left goes out with the next successful publication to its shard of
/// the outbox, and in any case with the next sweep's drain of every shard.
#[tokio::test]
async fn what_was_left_goes_out_by_the_next_drain() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;
    let store = DynamoStore::new(w.dynamo.clone(), w.config.table.clone());
    let broken =
        Credits::new(w.config.profile.clone(), store.clone(), EventBridgeBus::new(w.events.clone(), "no-such-bus"));
    broken.debit("acme", "api_calls", 2_000, &key("cross")).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pending_events(&store, 10).await.expect("outbox").len(), 1, "BalanceLow left behind");
    // Through the healthy bus, a debit to zero publishes BalanceDepleted; the drain sends the rest.
    let (s, b) = w.usage("acme", "api_calls", 4_000).await;
    assert_eq!((s, b["balance"].as_i64()), (200, Some(0)));
    let drained = drain_outbox(&store, &w.credits.bus, topup::clock::now_ms(), None).await.expect("drain");
    assert_eq!(drained.left, 0);
    assert!(pending_events(&store, 10).await.expect("outbox").is_empty());
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!((of_type(&events, "BalanceLow").len(), of_type(&events, "BalanceDepleted").len()), (1, 1), "{events:?}");
}

/// The outbox is spread over `OUTBOX_SHARDS` partitions (rules §13), each event under
/// `OUTBOX#{outbox_shard(id)}`, and keeps an event until the bus has it: as stored in the
/// table, read raw, no outbox item carries the TTL attribute (`ttl`, which the idempotency
/// record of the same commit does carry), so DynamoDB never expires an undelivered event.
#[tokio::test]
async fn outbox_entries_spread_over_the_shards_and_carry_no_ttl() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use topup::events::{outbox_shard, DomainEvent, Event, OUTBOX_SHARDS};
    use topup::store::{Commit};
    assert_eq!(OUTBOX_SHARDS, 16);
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    assert_eq!(w.usage("acme", "api_calls", 10).await.0, 200); // its key's record expires
    let detail = topup::events::sample_detail("BalanceLow", serde_json::json!({}));
    let now = topup::clock::now_ms();
    let events: Vec<DomainEvent> = (0..96)
        .map(|i| {
            let event = Event::read("BalanceLow", &detail).expect("ours").expect("reads");
            DomainEvent { id: format!("evt_spread{i:03}"), ..DomainEvent::new("acme", now, event) }
        })
        .collect();
    let a = w.credits.store.load_account("acme").await.expect("load").expect("exists");
    let commit = Commit { outbox: events.clone(), ..Commit::account_only(a.next(now), a.version) };
    w.credits.store.commit(commit).await.map_err(|e| format!("{e:?}")).expect("commit");

    // Every item of the table, as stored.
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = w
            .dynamo
            .scan()
            .table_name(&w.config.table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        items.extend(out.items().iter().cloned());
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    let s = |item: &std::collections::HashMap<String, AttributeValue>, k: &str| {
        item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default()
    };
    let idem: Vec<_> = items.iter().filter(|i| s(i, "pk").starts_with("KEY#acme#usage:")).collect();
    assert!(!idem.is_empty() && idem.iter().all(|i| i.contains_key("ttl")), "the control: {idem:?}");

    let outbox: Vec<_> = items.iter().filter(|i| s(i, "pk").starts_with("OUTBOX#")).collect();
    assert_eq!(outbox.len(), events.len(), "each event once");
    let mut per_shard = std::collections::BTreeMap::new();
    for item in &outbox {
        let id = s(item, "id");
        assert_eq!(s(item, "pk"), format!("OUTBOX#{}", outbox_shard(&id)), "{id}");
        assert!(!item.contains_key("ttl"), "{id} would expire: {item:?}");
        *per_shard.entry(outbox_shard(&id)).or_insert(0) += 1;
    }
    assert_eq!(
        per_shard.keys().copied().collect::<Vec<_>>(),
        (0..OUTBOX_SHARDS).collect::<Vec<_>>(),
        "every shard used"
    );
    assert!(per_shard.values().all(|n| *n <= 96 / 4), "no shard takes a quarter: {per_shard:?}");
    assert_eq!(pending_events(&w.credits.store, 100).await.expect("outbox").len(), events.len());
}
