//! Domain events to the EventBridge bus. Events are first written to the outbox inside the
//! transaction that caused them (`store::Commit::outbox`), then published here, then cleared.
//! An entry PutEvents rejects is retried, and if it still fails it stays in the outbox:
//! nothing is silently dropped. The next successful publication sends along what is left
//! (`redeliver_outbox`), as will the scheduled sweep.

use serde_json::json;
use std::future::Future;

use crate::ledger::DomainEvent;
use crate::store::{Store, StoreError};

/// The `source` of every event topup puts on its bus.
pub const SOURCE: &str = "topup";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{} event(s) not published: {reason}", failed.len())]
pub struct PublishError {
    pub failed: Vec<DomainEvent>,
    pub reason: String,
}

pub trait EventBus: Send + Sync {
    /// Publishes all of `events`; on error, names those that did not go out.
    fn publish(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// The EventBridge `Detail` of an event: its payload plus the id and time.
pub fn detail_json(e: &DomainEvent) -> serde_json::Value {
    let mut d = e.detail.clone();
    if let Some(o) = d.as_object_mut() {
        o.insert("event_id".into(), json!(e.id));
        o.insert("account_id".into(), json!(e.account_id));
        o.insert("occurred_at".into(), json!(crate::clock::rfc3339(e.created_at)));
        o.insert("occurred_ms".into(), json!(e.created_at));
    }
    d
}

impl<B: EventBus> EventBus for std::sync::Arc<B> {
    fn publish(&self, events: &[DomainEvent]) -> impl Future<Output = Result<(), PublishError>> + Send {
        (**self).publish(events)
    }
}

/// Publishes `events` that a commit wrote to the outbox, then clears them. Failures leave the
/// outbox entry for `redeliver_outbox`; the caller's request has already succeeded.
pub async fn publish_committed<S: Store, B: EventBus>(store: &S, bus: &B, events: &[DomainEvent]) {
    if events.is_empty() {
        return;
    }
    let mut healthy = false;
    let published: Vec<DomainEvent> = match bus.publish(events).await {
        Ok(()) => {
            healthy = true;
            events.to_vec()
        }
        Err(e) => {
            for ev in &e.failed {
                tracing::error!(event_id = %ev.id, account_id = %ev.account_id, detail_type = %ev.detail_type, reason = %e.reason, "event left in the outbox for redelivery");
            }
            events.iter().filter(|ev| !e.failed.iter().any(|f| f.id == ev.id)).cloned().collect()
        }
    };
    if let Err(e) = store.clear_outbox(&published).await {
        // The events went out; redelivery may send them again, and consumers dedupe by id.
        tracing::warn!(error = %e, "outbox not cleared after publishing");
    }
    // The bus took these: send along whatever an earlier failure left behind. This runs only
    // when a change emitted events (rare), so ordinary debits keep their single write.
    if healthy {
        match redeliver_outbox(store, bus, REDELIVER_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(redelivered = n, "outbox events redelivered"),
            Err(e) => tracing::warn!(error = %e, "outbox redelivery failed"),
        }
    }
}

/// How many left-behind events one successful publication sends along.
const REDELIVER_BATCH: usize = 10;

/// Publishes what is left in the outbox (events whose first publication failed). Consumers
/// dedupe by `event_id`, so a redelivered event is harmless. Returns how many went out.
pub async fn redeliver_outbox<S: Store, B: EventBus>(store: &S, bus: &B, limit: usize) -> Result<usize, StoreError> {
    let pending = store.pending_outbox(limit).await?;
    let mut sent = Vec::new();
    for e in pending {
        match bus.publish(std::slice::from_ref(&e)).await {
            Ok(()) => sent.push(e),
            Err(err) => tracing::error!(event_id = %e.id, reason = %err.reason, "outbox redelivery failed"),
        }
    }
    store.clear_outbox(&sent).await?;
    Ok(sent.len())
}
