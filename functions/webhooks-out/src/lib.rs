//! The `webhooks-out` function (rules §15): topup's events to the customer's own endpoints.
//!
//! Two sources invoke it:
//! - EventBridge, with one of our events (`{"detail-type", "detail"}`): a delivery per
//!   subscribed endpoint, each attempted at once. Failing (so EventBridge retries, then its
//!   failure destination keeps the event) only when a delivery could not be recorded or its
//!   follow-up not queued.
//! - SQS, with follow-ups (`{"Records": [...]}`): each is the next attempt of one delivery, or
//!   its closing once the retry window is spent. The answer names the records to receive
//!   again (`batchItemFailures`); the rest are done.

pub use aws_lambda_events::eventbridge::EventBridgeEvent;
pub use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use serde_json::{json, Value};
use topup::notify::Channels;
use topup::webhooks::deliver::{DeliverError, Dispatcher, FollowUp, RetryQueue, Sender};
use topup::webhooks::WebhookStore;

/// What invokes the function: a batch of follow-ups from the retry queue, or one of our events
/// from the bus (tried in that order: only the former has `Records`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Invocation {
    Queue(SqsEvent),
    Bus(EventBridgeEvent<Value>),
}

/// Handles one invocation, from either source; `clock` gives the time of each attempt.
pub async fn handle<W, H, Q, C>(
    d: &Dispatcher<W, H, Q, C>,
    invocation: &Invocation,
    clock: fn() -> i64,
) -> Result<Value, DeliverError>
where
    W: WebhookStore,
    H: Sender,
    Q: RetryQueue,
    C: Channels,
{
    match invocation {
        Invocation::Queue(batch) => Ok(follow_ups(d, &batch.records, clock).await),
        Invocation::Bus(event) => {
            let report = d.on_bus_event(&event.detail_type, &event.detail, clock()).await?;
            tracing::info!(
                detail_type = event.detail_type.as_str(),
                attempted = report.attempted,
                succeeded = report.succeeded,
                skipped = report.skipped,
                "event sent to webhook endpoints"
            );
            Ok(json!(report))
        }
    }
}

/// Each record on its own, all at once (each attempt may wait up to 10 s for its receiver;
/// one after another, a batch of slow receivers would outlast the function's timeout): one
/// that fails is received again; one that cannot be read is logged and dropped (it would fail
/// forever; the dead-letter queue is for the former).
async fn follow_ups<W, H, Q, C>(d: &Dispatcher<W, H, Q, C>, records: &[SqsMessage], clock: fn() -> i64) -> Value
where
    W: WebhookStore,
    H: Sender,
    Q: RetryQueue,
    C: Channels,
{
    let runs = records.iter().map(|r| async move {
        let id = r.message_id.as_deref().unwrap_or_default();
        let f = match r.body.as_deref().map(serde_json::from_str::<FollowUp>) {
            Some(Ok(f)) => f,
            _ => {
                tracing::error!(message_id = id, "a retry queue message that is not a follow-up; dropped");
                return None;
            }
        };
        match d.on_follow_up(&f, clock()).await {
            Ok(report) => {
                tracing::info!(
                    endpoint_id = %f.endpoint_id,
                    delivery_id = %f.delivery_id,
                    attempted = report.attempted,
                    succeeded = report.succeeded,
                    closed = report.closed,
                    deferred = report.deferred,
                    "follow-up handled"
                );
                None
            }
            Err(e) => {
                tracing::warn!(message_id = id, error = %e, "follow-up failed; it will be received again");
                Some(json!({"itemIdentifier": id}))
            }
        }
    });
    let failures: Vec<Value> = futures_util::future::join_all(runs).await.into_iter().flatten().collect();
    json!({"batchItemFailures": failures})
}
