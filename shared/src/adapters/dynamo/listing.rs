//! Reading many accounts at once (the sweep's index pages and batched reads, reconciliation's
//! parallel scan) and the jobs' checkpoints: the parts of the adapter that list rather than
//! change, each behind a one-line method of `Store` in `mod.rs`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use super::attributes::{from_item, s, Item};
use super::{account_pk, unavailable, DynamoStore, DAY_MS, SWEEP_INDEX};
use crate::account::Account;
use crate::store::{Segment, StoreError};

/// The table key of an account's item.
fn account_key(id: &str) -> Item {
    HashMap::from([("pk".to_string(), s(account_pk(id))), ("sk".to_string(), s("ACCOUNT"))])
}

/// The account id of an item under an account's partition key.
fn account_id_of(item: &Item) -> Option<&str> {
    item.get("pk").and_then(|v| v.as_s().ok()).and_then(|pk| pk.strip_prefix("ACCOUNT#"))
}

impl DynamoStore {
    /// Accounts found by their first billing email or Stripe customer (gsi4, gsi5), at most 20.
    pub(super) async fn lookup_accounts(&self, by: &crate::account::AccountLookup) -> Result<Vec<String>, StoreError> {
        let (index, attr) = match by {
            crate::account::AccountLookup::Email(_) => (super::EMAIL_INDEX, "gsi4pk"),
            crate::account::AccountLookup::Customer(_) => (super::CUSTOMER_INDEX, "gsi5pk"),
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", attr)
            .expression_attribute_values(":k", s(crate::account::lookup_key(by)))
            .limit(20)
            .send()
            .await
            .map_err(|e| unavailable("Query(lookup index)", e))?;
        Ok(out.items().iter().filter_map(account_id_of).map(str::to_string).collect())
    }

    /// Accounts whose soonest grant expiry is at or before `by_ms`, up to `limit`, from every
    /// partition of the expiry index.
    pub(super) async fn expiry_index(&self, by_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        // Each shard its share, so that accounts that stay due on one (waiting for a hold)
        // never starve the others.
        let shards = super::items::EXPIRY_INDEX_SHARDS;
        let share = limit.div_ceil(shards as usize).max(1);
        for shard in 0..shards {
            let mut start = None;
            let mut taken = 0usize;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(super::EXPIRY_INDEX)
                    .key_condition_expression("gsi2pk = :k AND gsi2sk <= :by")
                    .expression_attribute_values(":k", s(format!("EXPIRY#{shard}")))
                    .expression_attribute_values(":by", s(format!("{:013}", by_ms.max(0))))
                    .limit(i32::try_from(share - taken).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| unavailable("Query(expiry index)", e))?;
                let page: Vec<String> = out.items().iter().filter_map(account_id_of).map(str::to_string).collect();
                taken += page.len();
                ids.extend(page);
                if taken >= share {
                    break;
                }
                match out.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        Ok(ids)
    }

    pub(super) async fn sweep_index_page(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        // The cursor is the last account's id: with the index key it is where the next page starts.
        let start = after.map(|id| {
            let mut key = account_key(&id);
            key.insert("gsi1pk".to_string(), s(super::items::SWEEP_INDEX_KEY));
            key
        });
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(SWEEP_INDEX)
            .key_condition_expression("gsi1pk = :k")
            .expression_attribute_values(":k", s(super::items::SWEEP_INDEX_KEY))
            .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| unavailable("Query(sweep index)", e))?;
        let ids: Vec<String> = out.items().iter().filter_map(account_id_of).map(str::to_string).collect();
        let next = match out.last_evaluated_key {
            Some(k) if !k.is_empty() => ids.last().cloned(),
            _ => None,
        };
        Ok((ids, next))
    }

    pub(super) async fn batch_accounts(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, Result<Account, StoreError>)>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = Vec::with_capacity(ids.len());
        // BatchGetItem takes at most 100 keys; what it leaves unprocessed (throttling) is
        // asked for again with backoff.
        for chunk in ids.chunks(100) {
            let keys: Vec<Item> = chunk.iter().map(|id| account_key(id)).collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .build()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
            let mut attempt = 0u32;
            while let Some(keys) = request.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchGetItem(accounts)", e))?;
                for item in out.responses.as_ref().and_then(|r| r.get(&self.table)).into_iter().flatten() {
                    if let Some(id) = account_id_of(item) {
                        found.push((id.to_string(), from_item::<Account>(item)));
                    }
                }
                request = out.unprocessed_keys.and_then(|mut u| u.remove(&self.table));
                if request.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(StoreError::Unavailable("BatchGetItem(accounts): keys left unprocessed".into()));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(5))).await;
                }
            }
        }
        Ok(found)
    }

    pub(super) async fn scan_account_ids(
        &self,
        limit: usize,
        after: Option<String>,
        segment: Segment,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        // A scan in pages of `limit` items, keeping the account items (sk `ACCOUNT`). The cursor
        // is the last account's id: its item's key is where the next page starts.
        let mut ids = Vec::new();
        let mut start = after.map(|id| account_key(&id));
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :account")
                .expression_attribute_values(":account", s("ACCOUNT"))
                .projection_expression("pk")
                .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
                .set_segment((segment.total > 1).then(|| i32::try_from(segment.index).unwrap_or(0)))
                .set_total_segments((segment.total > 1).then(|| i32::try_from(segment.total).unwrap_or(1)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Scan(accounts)", e))?;
            ids.extend(out.items().iter().filter_map(account_id_of).map(str::to_string));
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => {
                    if ids.len() >= limit {
                        let next = ids.last().cloned();
                        return Ok((ids, next));
                    }
                    start = Some(k);
                }
                _ => return Ok((ids, None)),
            }
        }
    }

    pub(super) async fn read_checkpoint(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let Some(item) = self.get(name.to_string(), "CHECKPOINT".into()).await? else {
            return Ok(None);
        };
        let value = item
            .get("value")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("checkpoint {name} has no value")))?;
        serde_json::from_str(value).map(Some).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub(super) async fn write_checkpoint(&self, name: &str, value: &Value) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(name))
            .item("sk", s("CHECKPOINT"))
            .item("value", s(value.to_string()))
            .item("ttl", AttributeValue::N(((crate::clock::now_ms() + 30 * DAY_MS) / 1000).to_string()))
            .send()
            .await
            .map_err(|e| unavailable("PutItem(checkpoint)", e))?;
        Ok(())
    }
}
