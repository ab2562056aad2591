//! Events are never silently dropped: a crossing event is written to the outbox in the same
//! transaction as the debit; if the bus refuses it, it stays there, and redelivery publishes it.

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
