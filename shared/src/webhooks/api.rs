//! The service's side of webhooks out: endpoints and their deliveries (rules §15).

use serde_json::{json, Value};

use super::deliver::{FollowUp, RetryQueue};
use super::store::{update_endpoint, Created, Updated};
use super::{new_secret, parse_delivery_id, url, Endpoint, WebhookSettings, WebhookStore, EVENT_TYPES};
use crate::error::ApiError;
use crate::store::StoreError;

/// At most this many endpoints (not deleted) per deployment: each event reads them all (one
/// query) and is sent to every one that subscribes, concurrently. The store keeps it, in the
/// same atomic write as the endpoint (store.rs), so concurrent creates cannot pass it.
pub const MAX_ENDPOINTS: usize = 100;
pub const MAX_DESCRIPTION: usize = 500;

fn upstream(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "webhook store failed");
    ApiError::Upstream
}

fn endpoint_not_found() -> ApiError {
    ApiError::NotFound("webhook_endpoint_not_found", "No webhook endpoint with this id exists.".into())
}

/// What a new endpoint asks for.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub contact_email: Option<String>,
}

pub struct WebhookAdmin<W, Q> {
    pub store: W,
    pub queue: Q,
    pub settings: WebhookSettings,
}

impl<W: WebhookStore, Q: RetryQueue> WebhookAdmin<W, Q> {
    /// Registers an endpoint; the answer carries its signing secret, shown this once.
    pub async fn create(&self, new: NewEndpoint, now: i64) -> Result<Value, ApiError> {
        let target = url::parse(new.url.trim(), self.settings.allow_loopback)?;
        url::check_resolved(&target, self.settings.allow_loopback).await?;
        let events = event_types(&new.events)?;
        if let Some(d) = &new.description {
            if d.chars().count() > MAX_DESCRIPTION {
                return Err(ApiError::invalid(format!("`description` may be at most {MAX_DESCRIPTION} characters.")));
            }
        }
        if let Some(c) = &new.contact_email {
            if !crate::account::valid_email(c) {
                return Err(ApiError::rule("invalid_email", "`contact_email` is not an email address."));
            }
        }
        let e = Endpoint {
            id: crate::ledger::new_id("we"),
            url: target.normalized.clone(),
            events,
            status: "enabled".into(),
            secret: new_secret(),
            previous_secrets: Vec::new(),
            description: new.description.filter(|d| !d.trim().is_empty()),
            contact_email: new.contact_email,
            created_at: now,
            failing_since: None,
            last_failure_at: None,
            disabled_at: None,
            deleted_at: None,
            version: 1,
        };
        match self.store.create_endpoint(&e, MAX_ENDPOINTS).await.map_err(upstream)? {
            Created::Made => {}
            Created::Full => {
                return Err(ApiError::rule(
                    "too_many_endpoints",
                    format!("At most {MAX_ENDPOINTS} webhook endpoints; delete one first."),
                ))
            }
            Created::Taken => return Err(ApiError::Upstream), // a fresh random id taken: retry
            Created::Contended => return Err(ApiError::Busy),
        }
        tracing::info!(endpoint_id = %e.id, "webhook endpoint registered");
        Ok(e.view_with_secret())
    }

    pub async fn list(&self) -> Result<Value, ApiError> {
        let all = self.store.endpoints().await.map_err(upstream)?;
        let views: Vec<Value> = all.iter().filter(|e| e.status != "deleted").map(Endpoint::view).collect();
        Ok(json!({ "webhook_endpoints": views }))
    }

    async fn live(&self, id: &str) -> Result<Endpoint, ApiError> {
        match self.store.endpoint(id).await.map_err(upstream)? {
            Some(e) if e.status != "deleted" => Ok(e),
            _ => Err(endpoint_not_found()),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Value, ApiError> {
        Ok(self.live(id).await?.view())
    }

    /// Changes a live endpoint with `f` (`store::update_endpoint`: conditional on its version,
    /// re-read and re-decided when another writer came first).
    async fn change(&self, id: &str, f: impl Fn(&mut Endpoint)) -> Result<Endpoint, ApiError> {
        let change = |e: &Endpoint| {
            (e.status != "deleted").then(|| {
                let mut next = e.clone();
                f(&mut next);
                next
            })
        };
        match update_endpoint(&self.store, id, change).await.map_err(upstream)? {
            Updated::Changed { after, .. } => Ok(after),
            Updated::Unchanged => Err(endpoint_not_found()),
            Updated::Contended => Err(ApiError::Busy),
        }
    }

    /// Deletes an endpoint: nothing more is sent to it; its record stays, marked deleted, until
    /// its deliveries' records are gone (DynamoDB's TTL, a day past their retention), so their
    /// follow-ups find it and close.
    pub async fn delete(&self, id: &str) -> Result<Value, ApiError> {
        let now = crate::clock::now_ms();
        self.change(id, |e| {
            e.status = "deleted".into();
            e.deleted_at = Some(now);
        })
        .await?;
        tracing::info!(endpoint_id = id, "webhook endpoint deleted");
        Ok(json!({"id": id, "deleted": true}))
    }

    /// A new secret; every earlier one keeps signing beside it for a day from its own
    /// rotation (`Endpoint::rotate`), so receivers can switch without refusing a delivery.
    pub async fn rotate(&self, id: &str, now: i64) -> Result<Value, ApiError> {
        let secret = new_secret();
        let e = self.change(id, |e| e.rotate(secret.clone(), now)).await?;
        tracing::info!(endpoint_id = id, "webhook endpoint secret rotated");
        Ok(e.view_with_secret())
    }

    /// Enables an endpoint again (after it was disabled for failing): its failing streak
    /// starts over.
    pub async fn enable(&self, id: &str) -> Result<Value, ApiError> {
        let e = self
            .change(id, |e| {
                e.status = "enabled".into();
                e.disabled_at = None;
                e.failing_since = None;
                e.last_failure_at = None;
            })
            .await?;
        Ok(e.view())
    }

    pub async fn deliveries(&self, id: &str, limit: usize, cursor: Option<&str>) -> Result<Value, ApiError> {
        self.live(id).await?;
        if let Some(c) = cursor {
            let ours = c.len() <= crate::http::MAX_ID_LEN && parse_delivery_id(c).is_some();
            if !ours {
                return Err(ApiError::invalid("`cursor` is not a cursor this list gave."));
            }
        }
        let (page, next) = self.store.deliveries(id, limit, cursor).await.map_err(upstream)?;
        let views: Vec<Value> = page.iter().map(super::Delivery::view).collect();
        Ok(json!({"deliveries": views, "next_cursor": next}))
    }

    /// Sends a delivery again now, whatever its status, with a new retry window; its event id
    /// and body are the same. The endpoint must be enabled.
    pub async fn redeliver(&self, id: &str, delivery_id: &str, now: i64) -> Result<Value, ApiError> {
        let e = self.live(id).await?;
        if e.status != "enabled" {
            return Err(ApiError::rule(
                "webhook_endpoint_disabled",
                "This endpoint is disabled; enable it before redelivering.",
            ));
        }
        let not_found = || {
            ApiError::NotFound(
                "webhook_delivery_not_found",
                "No delivery with this id exists for this endpoint.".into(),
            )
        };
        parse_delivery_id(delivery_id).ok_or_else(not_found)?;
        for _ in 0..5 {
            let d = self.store.delivery(id, delivery_id).await.map_err(upstream)?.ok_or_else(not_found)?;
            let v = d.version;
            let next = super::Delivery {
                status: "pending".into(),
                next_attempt_at: Some(now),
                retry_from: now,
                retry_base: d.attempts,
                version: v + 1,
                ..d.clone()
            };
            if !self.store.put_delivery(&next, Some(v)).await.map_err(upstream)? {
                continue;
            }
            let f =
                FollowUp { endpoint_id: id.to_string(), delivery_id: delivery_id.to_string(), attempt: next.attempts };
            if let Err(why) = self.queue.send(&f, 0).await {
                // Not queued: put the delivery back as it was, so nothing reads `pending` with
                // no follow-up on its way (if that write fails too, a redelivery fixes it).
                tracing::warn!(reason = %why, "redelivery not queued");
                let back = super::Delivery { version: v + 2, ..d };
                let _ = self.store.put_delivery(&back, Some(v + 1)).await;
                return Err(ApiError::Upstream);
            }
            tracing::info!(endpoint_id = id, delivery_id, "webhook redelivery queued");
            return Ok(next.view());
        }
        Err(ApiError::Busy)
    }
}

/// The subscribed types: known ones, at least one, `*` alone meaning all.
fn event_types(list: &[String]) -> Result<Vec<String>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::rule("invalid_event_type", "`events` needs at least one event type, or `*`."));
    }
    let mut out: Vec<String> = Vec::new();
    for t in list {
        if t != "*" && !EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::rule(
                "invalid_event_type",
                format!("Unknown event type `{t}`; the types are {} (or `*`).", EVENT_TYPES.join(", ")),
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    if out.iter().any(|t| t == "*") {
        return Ok(vec!["*".into()]);
    }
    Ok(out)
}
