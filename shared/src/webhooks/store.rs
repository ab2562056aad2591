//! Where endpoints and deliveries are kept. Every write is conditional on the record's
//! `version` (`None`: it must not exist yet), so two writers never lose each other's change:
//! the loser reads again and decides again.
//!
//! The endpoint limit (rules §15) is the store's to keep: an endpoint is made only by
//! `create_endpoint` and deleted only by `retire_endpoint`, which count the live endpoints in
//! the same atomic write as the endpoint's own, so concurrent creates never pass the limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use super::{Delivery, Endpoint};
use crate::store::StoreError;

/// What `create_endpoint` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Made,
    /// `max` endpoints live already: nothing written.
    Full,
    /// An endpoint with its id exists (a fresh random id: never, in practice).
    Taken,
    /// Other writers came first every time: nothing written.
    Contended,
}

pub trait WebhookStore: Send + Sync {
    /// Writes `e` (its `version` already advanced) if the stored version is `expected`
    /// (`None`: no endpoint with its id). `false` when that did not hold. Neither makes nor
    /// deletes an endpoint: `create_endpoint` and `retire_endpoint` do, keeping the count.
    fn put_endpoint(
        &self,
        e: &Endpoint,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes the new endpoint `e` if fewer than `max` endpoints are live (not deleted), in
    /// one atomic step with counting them.
    fn create_endpoint(&self, e: &Endpoint, max: usize) -> impl Future<Output = Result<Created, StoreError>> + Send;
    /// Writes `e`, now deleted, if the stored version is `expected`, freeing its place under
    /// the limit in the same atomic step. `false` when the version did not hold.
    fn retire_endpoint(&self, e: &Endpoint, expected: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn endpoint(&self, id: &str) -> impl Future<Output = Result<Option<Endpoint>, StoreError>> + Send;
    /// Every endpoint, deleted ones too, oldest first.
    fn endpoints(&self) -> impl Future<Output = Result<Vec<Endpoint>, StoreError>> + Send;
    /// As `put_endpoint`, for a delivery.
    fn put_delivery(
        &self,
        d: &Delivery,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn delivery(
        &self,
        endpoint_id: &str,
        delivery_id: &str,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send;
    /// An endpoint's deliveries, newest first, `limit` at a time after the delivery id `after`;
    /// the page and the id to continue after, if there may be more.
    fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<Delivery>, Option<String>), StoreError>> + Send;
}

/// What `update_endpoint` did.
#[derive(Debug)]
pub enum Updated {
    /// No endpoint with the id, or the change asked for nothing.
    Unchanged,
    /// Written: the endpoint before and after.
    Changed { before: Endpoint, after: Endpoint },
    /// Other writers came first every time.
    Contended,
}

/// Reads endpoint `id`, asks `change` for its new state (`None`: leave it) and writes that under
/// the version it read; when another writer came first, reads and asks again, at most five
/// times. The one read-modify-write of an endpoint, for the service's changes and for health.
pub async fn update_endpoint<W: WebhookStore>(
    store: &W,
    id: &str,
    change: impl Fn(&Endpoint) -> Option<Endpoint>,
) -> Result<Updated, StoreError> {
    for _ in 0..5 {
        let Some(before) = store.endpoint(id).await? else { return Ok(Updated::Unchanged) };
        let Some(mut after) = change(&before) else { return Ok(Updated::Unchanged) };
        after.version = before.version + 1;
        let written = if before.status != "deleted" && after.status == "deleted" {
            store.retire_endpoint(&after, before.version).await?
        } else {
            store.put_endpoint(&after, Some(before.version)).await?
        };
        if written {
            return Ok(Updated::Changed { before, after });
        }
    }
    Ok(Updated::Contended)
}

/// In memory, for unit tests.
#[derive(Default)]
pub struct MemoryWebhookStore {
    endpoints: Mutex<BTreeMap<String, Endpoint>>,
    /// (endpoint id, delivery id) → delivery; delivery ids sort by event time.
    deliveries: Mutex<BTreeMap<(String, String), Delivery>>,
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("memory store lock poisoned".into())
}

impl WebhookStore for MemoryWebhookStore {
    async fn put_endpoint(&self, e: &Endpoint, expected: Option<u64>) -> Result<bool, StoreError> {
        let mut m = self.endpoints.lock().map_err(|_| poisoned())?;
        if m.get(&e.id).map(|s| s.version) != expected {
            return Ok(false);
        }
        m.insert(e.id.clone(), e.clone());
        Ok(true)
    }

    async fn create_endpoint(&self, e: &Endpoint, max: usize) -> Result<Created, StoreError> {
        // Counted and written under one lock: the memory store's atomic step.
        let mut m = self.endpoints.lock().map_err(|_| poisoned())?;
        if m.contains_key(&e.id) {
            return Ok(Created::Taken);
        }
        if m.values().filter(|x| x.status != "deleted").count() >= max {
            return Ok(Created::Full);
        }
        m.insert(e.id.clone(), e.clone());
        Ok(Created::Made)
    }

    async fn retire_endpoint(&self, e: &Endpoint, expected: u64) -> Result<bool, StoreError> {
        // The count is of live endpoints, so marking it deleted frees its place.
        self.put_endpoint(e, Some(expected)).await
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        Ok(self.endpoints.lock().map_err(|_| poisoned())?.get(id).cloned())
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let mut all: Vec<Endpoint> = self.endpoints.lock().map_err(|_| poisoned())?.values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn put_delivery(&self, d: &Delivery, expected: Option<u64>) -> Result<bool, StoreError> {
        let mut m = self.deliveries.lock().map_err(|_| poisoned())?;
        let key = (d.endpoint_id.clone(), d.id.clone());
        if m.get(&key).map(|s| s.version) != expected {
            return Ok(false);
        }
        m.insert(key, d.clone());
        Ok(true)
    }

    async fn delivery(&self, endpoint_id: &str, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        let m = self.deliveries.lock().map_err(|_| poisoned())?;
        Ok(m.get(&(endpoint_id.to_string(), delivery_id.to_string())).cloned())
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        let m = self.deliveries.lock().map_err(|_| poisoned())?;
        let mut page: Vec<Delivery> = m
            .iter()
            .rev()
            .filter(|((e, id), _)| e == endpoint_id && after.is_none_or(|a| id.as_str() < a))
            .map(|(_, d)| d.clone())
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|d| d.id.clone()) } else { None };
        Ok((page, next))
    }
}

/// A borrowed store is a store (tests and the function share one).
impl<T: WebhookStore> WebhookStore for &T {
    fn put_endpoint(
        &self,
        e: &Endpoint,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).put_endpoint(e, expected)
    }
    fn create_endpoint(&self, e: &Endpoint, max: usize) -> impl Future<Output = Result<Created, StoreError>> + Send {
        (**self).create_endpoint(e, max)
    }
    fn retire_endpoint(&self, e: &Endpoint, expected: u64) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).retire_endpoint(e, expected)
    }
    fn endpoint(&self, id: &str) -> impl Future<Output = Result<Option<Endpoint>, StoreError>> + Send {
        (**self).endpoint(id)
    }
    fn endpoints(&self) -> impl Future<Output = Result<Vec<Endpoint>, StoreError>> + Send {
        (**self).endpoints()
    }
    fn put_delivery(
        &self,
        d: &Delivery,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).put_delivery(d, expected)
    }
    fn delivery(
        &self,
        endpoint_id: &str,
        delivery_id: &str,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send {
        (**self).delivery(endpoint_id, delivery_id)
    }
    fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<Delivery>, Option<String>), StoreError>> + Send {
        (**self).deliveries(endpoint_id, limit, after)
    }
}
