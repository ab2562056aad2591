//! Webhook endpoints and deliveries in the same table (rules §15).
//!
//! | item     | pk                     | sk                 |
//! |----------|------------------------|--------------------|
//! | endpoint | `WEBHOOKS`             | `EP#{endpoint_id}` |
//! | count    | `WEBHOOKS`             | `COUNT` (`live`: endpoints not deleted; no TTL) |
//! | delivery | `WHD#{endpoint_id}`    | `{delivery_id}` (`wd_{event ms:013}_{event id}`: newest last; TTL 30 days after the event or the last redelivery) |
//!
//! Endpoints are few (at most 100) and read on every event: one partition, one query. A
//! deleted endpoint expires (TTL) a day after its deliveries' records can.
//! Every write is a `PutItem` conditional on the stored `version`, but making and deleting an
//! endpoint: each is a transaction with the count, whose own condition (`live < max` to make
//! one, present to delete one) keeps the limit however many creates run at once (rules §15).
//! A table from before the count has none: the first make or delete that finds it missing
//! counts the live endpoints and writes it, only if it is still missing. Nothing else can
//! change the live endpoints until it exists (both writes require it), so that count is exact.

use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::attributes::{from_item, s, to_item, Item};
use super::{condition_held, unavailable, DynamoStore};
use crate::store::StoreError;
use crate::webhooks::{Created, Delivery, Endpoint, WebhookStore, DELIVERY_RETENTION_MS};

const ENDPOINTS_PK: &str = "WEBHOOKS";
const COUNT_SK: &str = "COUNT";
/// Tries of a make or delete that loses to other writers of the count before giving up.
const COUNT_TRIES: u32 = 8;

fn endpoint_sk(id: &str) -> String {
    format!("EP#{id}")
}

fn deliveries_pk(endpoint_id: &str) -> String {
    format!("WHD#{endpoint_id}")
}

impl DynamoStore {
    async fn put_versioned(&self, item: Item, expected: Option<u64>, what: &str) -> Result<bool, StoreError> {
        let b = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let b = match expected {
            None => b.condition_expression("attribute_not_exists(pk)"),
            Some(v) => b
                .condition_expression("version = :v")
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        condition_held(b.send().await, what)
    }
}

/// How a transaction with the count ended: written, or each item's cancellation reason.
enum Outcome {
    Written,
    Cancelled { endpoint: Option<String>, count: Option<String> },
}

fn endpoint_item(e: &Endpoint) -> Result<Item, StoreError> {
    // A deleted endpoint leaves the table a day after the last of its deliveries can.
    let ttl = e.deleted_at.map(|d| d + DELIVERY_RETENTION_MS + 86_400_000);
    to_item(e, ENDPOINTS_PK.into(), endpoint_sk(&e.id), ttl)
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl DynamoStore {
    /// The endpoint's put, on its condition (with `:v` the version, if any), and the count's
    /// update, on its condition (with `:one`, and `:max` if any), in one transaction.
    async fn with_count(
        &self,
        e: &Endpoint,
        endpoint_condition: (&str, Option<u64>),
        count: (&str, &str, Option<usize>),
    ) -> Result<Outcome, StoreError> {
        let (cond, version) = endpoint_condition;
        let mut put =
            Put::builder().table_name(&self.table).set_item(Some(endpoint_item(e)?)).condition_expression(cond);
        if let Some(v) = version {
            put = put.expression_attribute_values(":v", n(v));
        }
        let (update, count_cond, max) = count;
        let mut up = Update::builder()
            .table_name(&self.table)
            .key("pk", s(ENDPOINTS_PK))
            .key("sk", s(COUNT_SK))
            .update_expression(update)
            .condition_expression(count_cond)
            .expression_attribute_names("#live", "live")
            .expression_attribute_values(":one", n(1));
        if let Some(max) = max {
            up = up.expression_attribute_values(":max", n(max));
        }
        let items = vec![
            TransactWriteItem::builder().put(built(put.build())?).build(),
            TransactWriteItem::builder().update(built(up.build())?).build(),
        ];
        let err = match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => return Ok(Outcome::Written),
            Err(e) => e,
        };
        match err.into_service_error() {
            TransactWriteItemsError::TransactionCanceledException(t) => {
                let code = |i: usize| t.cancellation_reasons().get(i).and_then(|r| r.code()).map(str::to_string);
                Ok(Outcome::Cancelled { endpoint: code(0), count: code(1) })
            }
            other if other.meta().code() == Some("TransactionConflictException") => {
                Ok(Outcome::Cancelled { endpoint: None, count: Some("TransactionConflict".into()) })
            }
            other => Err(unavailable("TransactWriteItems webhook endpoint and count", other)),
        }
    }

    /// The live endpoints the count item holds, `None` when there is none yet.
    async fn live_count(&self) -> Result<Option<i64>, StoreError> {
        let item = self.get(ENDPOINTS_PK.into(), COUNT_SK.into()).await?;
        Ok(item.map(|i| i.get("live").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)))
    }

    /// Writes the count of a table from before it: the live endpoints, if it is still missing.
    async fn start_count(&self) -> Result<(), StoreError> {
        let live = self.endpoints().await?.iter().filter(|e| e.status != "deleted").count();
        let item: Item =
            [("pk".to_string(), s(ENDPOINTS_PK)), ("sk".to_string(), s(COUNT_SK)), ("live".to_string(), n(live))]
                .into_iter()
                .collect();
        let b = self.client.put_item().table_name(&self.table).set_item(Some(item));
        // Another writer started it first: theirs counts the same endpoints.
        condition_held(b.condition_expression("attribute_not_exists(pk)").send().await, "PutItem webhook count")?;
        Ok(())
    }
}

/// A short pause with full jitter after losing the count to another writer.
async fn backoff(attempt: u32) {
    let cap = (8u64 << attempt.min(5)).min(200);
    let r = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([0; 8]));
    tokio::time::sleep(Duration::from_millis(r % cap)).await;
}

const FAILED: &str = "ConditionalCheckFailed";

/// Whether a cancelled transaction lost only to another writer (worth trying again).
fn conflict(endpoint: &Option<String>, count: &Option<String>) -> Result<(), StoreError> {
    let ok = |c: &Option<String>| matches!(c.as_deref(), None | Some("None") | Some("TransactionConflict"));
    if ok(endpoint) && ok(count) {
        return Ok(());
    }
    Err(StoreError::Unavailable(format!("webhook endpoint transaction cancelled: {endpoint:?}, {count:?}")))
}

impl WebhookStore for DynamoStore {
    async fn put_endpoint(&self, e: &Endpoint, expected: Option<u64>) -> Result<bool, StoreError> {
        self.put_versioned(endpoint_item(e)?, expected, "PutItem webhook endpoint").await
    }

    async fn create_endpoint(&self, e: &Endpoint, max: usize) -> Result<Created, StoreError> {
        for attempt in 0..COUNT_TRIES {
            let outcome = self
                .with_count(
                    e,
                    ("attribute_not_exists(pk)", None),
                    ("SET #live = #live + :one", "#live < :max", Some(max)),
                )
                .await?;
            let (endpoint, count) = match outcome {
                Outcome::Written => return Ok(Created::Made),
                Outcome::Cancelled { endpoint, count } => (endpoint, count),
            };
            if endpoint.as_deref() == Some(FAILED) {
                return Ok(Created::Taken);
            }
            if count.as_deref() == Some(FAILED) {
                match self.live_count().await? {
                    None => self.start_count().await?,
                    Some(live) if live >= i64::try_from(max).unwrap_or(i64::MAX) => return Ok(Created::Full),
                    // Another delete came in between: try again.
                    Some(_) => {}
                }
                continue;
            }
            conflict(&endpoint, &count)?;
            backoff(attempt).await;
        }
        Ok(Created::Contended)
    }

    async fn retire_endpoint(&self, e: &Endpoint, expected: u64) -> Result<bool, StoreError> {
        for attempt in 0..COUNT_TRIES {
            let outcome = self
                .with_count(
                    e,
                    ("version = :v", Some(expected)),
                    ("SET #live = #live - :one", "attribute_exists(#live)", None),
                )
                .await?;
            let (endpoint, count) = match outcome {
                Outcome::Written => return Ok(true),
                Outcome::Cancelled { endpoint, count } => (endpoint, count),
            };
            if endpoint.as_deref() == Some(FAILED) {
                return Ok(false);
            }
            if count.as_deref() == Some(FAILED) {
                self.start_count().await?;
                continue;
            }
            conflict(&endpoint, &count)?;
            backoff(attempt).await;
        }
        Err(StoreError::Unavailable("webhook endpoint count kept changing".into()))
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        self.get(ENDPOINTS_PK.into(), endpoint_sk(id)).await?.map(|i| from_item(&i)).transpose()
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let mut all: Vec<Endpoint> = self.query_all(ENDPOINTS_PK.into(), "EP#", "Query webhook endpoints").await?;
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn put_delivery(&self, d: &Delivery, expected: Option<u64>) -> Result<bool, StoreError> {
        // Kept for the retention after the event, or after a redelivery's window began.
        let ttl = d.created_at.max(d.retry_from) + DELIVERY_RETENTION_MS;
        let item = to_item(d, deliveries_pk(&d.endpoint_id), d.id.clone(), Some(ttl))?;
        self.put_versioned(item, expected, "PutItem webhook delivery").await
    }

    async fn delivery(&self, endpoint_id: &str, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        self.get(deliveries_pk(endpoint_id), delivery_id.to_string()).await?.map(|i| from_item(&i)).transpose()
    }

    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        let pk = deliveries_pk(endpoint_id);
        let start =
            after.map(|a| [("pk".to_string(), s(pk.clone())), ("sk".to_string(), s(a))].into_iter().collect::<Item>());
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk.clone()))
            .scan_index_forward(false)
            // Read-your-writes: a delivery just recorded (or redelivered) shows as it is now.
            .consistent_read(true)
            .limit(i32::try_from(limit).unwrap_or(100))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| unavailable("Query webhook deliveries", e))?;
        let list = page.items().iter().map(from_item).collect::<Result<Vec<Delivery>, _>>()?;
        let more = page.last_evaluated_key.is_some_and(|k| !k.is_empty());
        let next = if more { list.last().map(|d| d.id.clone()) } else { None };
        Ok((list, next))
    }
}
