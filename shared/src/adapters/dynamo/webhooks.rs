//! Webhook endpoints and deliveries in the same table (rules §15).
//!
//! | item     | pk                     | sk                 |
//! |----------|------------------------|--------------------|
//! | endpoint | `WEBHOOKS`             | `EP#{endpoint_id}` |
//! | delivery | `WHD#{endpoint_id}`    | `{delivery_id}` (`wd_{event ms:013}_{event id}`: newest last; TTL 30 days after the event or the last redelivery) |
//!
//! Endpoints are few (at most 100) and read on every event: one partition, one query. A
//! deleted endpoint expires (TTL) a day after its deliveries' records can.
//! Every write is a `PutItem` conditional on the stored `version`.

use aws_sdk_dynamodb::types::AttributeValue;

use super::attributes::{from_item, s, to_item, Item};
use super::{condition_held, unavailable, DynamoStore};
use crate::store::StoreError;
use crate::webhooks::{Delivery, Endpoint, WebhookStore, DELIVERY_RETENTION_MS};

const ENDPOINTS_PK: &str = "WEBHOOKS";

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

impl WebhookStore for DynamoStore {
    async fn put_endpoint(&self, e: &Endpoint, expected: Option<u64>) -> Result<bool, StoreError> {
        // A deleted endpoint leaves the table a day after the last of its deliveries can.
        let ttl = e.deleted_at.map(|d| d + DELIVERY_RETENTION_MS + 86_400_000);
        let item = to_item(e, ENDPOINTS_PK.into(), endpoint_sk(&e.id), ttl)?;
        self.put_versioned(item, expected, "PutItem webhook endpoint").await
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
