//! The EventBridge adapter of `EventBus`: PutEvents in batches, retrying the entries it
//! rejects; what still fails is returned so it stays in the outbox.

use std::time::Duration;

use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;

use crate::events::{detail_json, DomainEvent, EventBus, PublishError, SOURCE};

#[derive(Clone)]
pub struct EventBridgeBus {
    client: Client,
    bus: String,
}

impl EventBridgeBus {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        EventBridgeBus { client, bus: bus.into() }
    }

    async fn put_once(&self, events: &[DomainEvent]) -> Result<Vec<DomainEvent>, String> {
        let entries = events
            .iter()
            .map(|e| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(SOURCE)
                    .detail_type(e.detail_type())
                    .detail(detail_json(e).to_string())
                    .resources(format!("topup:account:{}", e.account_id))
                    .build()
            })
            .collect();
        let out = self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        if out.failed_entry_count() == 0 {
            return Ok(vec![]);
        }
        // Results are positional: an entry with an error code was not accepted.
        let failed = out
            .entries()
            .iter()
            .zip(events)
            .filter(|(r, _)| r.error_code().is_some() || r.event_id().is_none())
            .map(|(r, e)| {
                tracing::warn!(event_id = %e.id, code = r.error_code().unwrap_or("?"), "PutEvents entry rejected");
                e.clone()
            })
            .collect();
        Ok(failed)
    }
}

impl EventBus for EventBridgeBus {
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), PublishError> {
        let mut pending: Vec<DomainEvent> = events.to_vec();
        let mut reason = String::new();
        for attempt in 0..3u32 {
            if pending.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            let mut still = Vec::new();
            // PutEvents takes at most 10 entries a call.
            for chunk in pending.chunks(10) {
                match self.put_once(chunk).await {
                    Ok(failed) => {
                        if !failed.is_empty() {
                            reason = "entries rejected by PutEvents".into();
                        }
                        still.extend(failed)
                    }
                    Err(e) => {
                        reason = e;
                        still.extend_from_slice(chunk)
                    }
                }
            }
            pending = still;
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(PublishError { failed: pending, reason })
        }
    }
}
