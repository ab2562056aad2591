//! The DynamoDB adapter of `Store`: one table, keys `pk`/`sk`, `ttl` for expiry.
//!
//! | item          | pk              | sk                     |
//! |---------------|-----------------|------------------------|
//! | account       | `ACCOUNT#{id}`  | `ACCOUNT`              |
//! | ledger entry  | `ACCOUNT#{id}`  | `TX#{seq:020}`         |
//! | ledger block  | `ACCOUNT#{id}`  | `TX#{first seq:020}` (`block`: a group commit's entries) |
//! | usage key     | `KEY#{id}#usage:{key}` | `IDEM` (its own partition key) |
//! | idempotency   | `ACCOUNT#{id}`  | `IDEM#{scope}:{key}` (holds, adjustments) |
//! | payment claim | `ACCOUNT#{id}`  | `IDEM#payment:{id}` (no TTL) |
//! | hold          | `ACCOUNT#{id}`  | `HOLD#{hold_id}`       |
//! | purchase      | `ACCOUNT#{id}`  | `PURCHASE#{purchase_id}` |
//! | recharge      | `ACCOUNT#{id}`  | `RECHARGE#{recharge_id}` (no TTL) |
//! | payment index | `PAYMENT#{pi}`  | `PAYMENT` (`account_id`; no TTL) |
//! | delivery      | `ACCOUNT#{id}`  | `NOTIFY#{occurred:013}#{event}#{channel}#{to}` |
//! | outbox event  | `OUTBOX#{shard}` (0–15) | `{created_ms:013}#{id}` (no TTL: kept until delivered) |
//! | ended grant   | `ACCOUNT#{id}`  | `GRANT#{grant_id}` (used up, expired or voided) |
//! | checkpoint    | `{job}#…` (`RECONCILE#…`, `SWEEP#…`) | `CHECKPOINT` (`value`: JSON) |
//! | start count   | `ACCOUNT#{id}`  | `RATE#{what}#{window_ms:013}` (`n`; TTL a day) |
//! | entity        | `ACCOUNT#{id}`  | `ENTITY#{entity}` (its limit and month's spend; rules §17) |
//! | webhook endpoint | `WEBHOOKS`   | `EP#{endpoint_id}` (and their count, `COUNT`; `webhooks.rs`) |
//! | receipt row   | `ACCOUNT#{id}`  | `RECEIPT#{created:013}#{id}`, and `RECEIPTPI#{pi}` pointers (`receipts.rs`) |
//! | audit record  | `AUDIT#{account or -}` | `SEQ#{seq:012}` (and the head of `-`, `HEAD`; `audit.rs`) |
//!
//! A commit is one `TransactWriteItems`; each condition sits next to the item it guards, and
//! failed conditions return the stored item (`ALL_OLD`) so a retry needs no read.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Delete, Put, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;

mod attributes;
mod audit;
mod items;
mod listing;
mod receipts;
mod table;
mod webhooks;

pub use items::{account_item, commit_items, item_size, too_large, ItemWrite, ITEMS_PER_TRANSACTION, MAX_ITEM_BYTES};
use items::{idempotency_key, page_entries, plan_commit, purchase_planned, Planned, Slot};

pub use attributes::{from_attr, to_attr};
pub use table::create_table;

use crate::account::{Account, RechargeRecord};
use crate::events::{outbox_shard, DomainEvent};
use crate::grants::Grant;
use crate::ledger::{HoldRecord, IdemRecord, LedgerEntry};
use crate::purchases::PurchaseRecord;
use crate::store::{
    delivery_key, Accounts, Commit, CommitError, DeliveryRecord, Deliveries, Listings, Outbox, PaymentRecords, PurchaseWrite,
    RateCounts, Segment, StoreError,
};
use attributes::{from_item, s, to_item, Item};
use serde_json::Value;

fn outbox_pk(shard: u32) -> String {
    format!("OUTBOX#{shard}")
}
/// The sparse index of accounts with auto-recharge on (`gsi1pk`), keys only.
pub const SWEEP_INDEX: &str = "gsi1";
/// The sparse index of accounts with an expiring grant (`gsi2pk` `EXPIRY#n`, `gsi2sk` the
/// soonest expiry), keys only.
pub const EXPIRY_INDEX: &str = "gsi2";
/// Every audit record, newest first (`gsi3pk` `AUDIT`, `gsi3sk` `{at ms}#{chain}#{seq}`), all
/// attributes: `GET /v1/audit` without an account (rules §19).
pub const AUDIT_INDEX: &str = "gsi3";
/// Accounts by their first billing email (`gsi4pk` `EMAIL#…`), keys only: the console's lookup.
pub const EMAIL_INDEX: &str = "gsi4";
/// Accounts by their Stripe customer (`gsi5pk` `CUSTOMER#…`), keys only: the console's lookup.
pub const CUSTOMER_INDEX: &str = "gsi5";
const DAY_MS: i64 = 86_400_000;

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore { client, table: table.into() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

fn account_pk(id: &str) -> String {
    format!("ACCOUNT#{id}")
}

fn ledger_sk(seq: u64) -> String {
    format!("TX#{seq:020}")
}

fn outbox_sk(e: &DomainEvent) -> String {
    format!("{:013}#{}", e.created_at, e.id)
}

/// The outcome of a write with a condition: `true` when it was written, `false` when its
/// condition did not hold, an error for anything else.
fn condition_held<O, E, R>(res: Result<O, SdkError<E, R>>, what: &str) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match res {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().and_then(|se| se.code()) == Some("ConditionalCheckFailedException") => Ok(false),
        Err(e) => Err(unavailable(what, e)),
    }
}

pub(crate) fn unavailable<E: std::error::Error>(what: &str, e: E) -> StoreError {
    let message = format!("{what}: {}", DisplayErrorContext(&e));
    tracing::warn!(error = %message, "dynamodb call failed");
    StoreError::Unavailable(message)
}

impl DynamoStore {
    fn put(&self, p: Planned) -> Result<TransactWriteItem, StoreError> {
        let mut b = Put::builder()
            .table_name(&self.table)
            .set_item(Some(p.item))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some((expr, values)) = p.condition {
            if expr.contains("#status") {
                b = b.expression_attribute_names("#status", "status");
            }
            b = b.condition_expression(expr);
            for (k, v) in values {
                b = b.expression_attribute_values(k, v);
            }
        }
        let put = b.build().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Every item of partition `pk` whose sort key starts with `prefix`, read page by page
    /// with strong consistency.
    async fn query_all<T: DeserializeOwned>(&self, pk: String, prefix: &str, what: &str) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable(what, e))?;
            for item in page.items() {
                out.push(from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn get(&self, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        Ok(out.item)
    }
}

fn reason_item<T: DeserializeOwned>(r: &CancellationReason) -> Option<Box<T>> {
    r.item().and_then(|i| from_item::<T>(i).ok()).map(Box::new)
}

impl Accounts for DynamoStore {
    async fn load_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.get(account_pk(id), "ACCOUNT".into()).await?.map(|i| from_item(&i)).transpose()
    }
    async fn commit(&self, c: Commit) -> Result<(), CommitError> {
        self.commit_all(vec![c]).await
    }
    async fn commit_all(&self, commits: Vec<Commit>) -> Result<(), CommitError> {
        let mut planned = Vec::new();
        for c in &commits {
            planned.extend(plan_commit(c).map_err(CommitError::Store)?);
        }
        let sized: Vec<ItemWrite> = planned
            .iter()
            .map(|p| ItemWrite { pk: String::new(), sk: String::new(), size: item_size(&p.item), kind: p.kind })
            .collect();
        if let Some(why) = too_large(&sized) {
            return Err(CommitError::TooLarge(why));
        }
        let several = commits.len() > 1;
        let slots: Vec<Slot> = planned.iter().map(|p| p.slot).collect();
        let items =
            planned.into_iter().map(|p| self.put(p)).collect::<Result<Vec<_>, _>>().map_err(CommitError::Store)?;

        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        let err = match result {
            Ok(out) => {
                // What a balance change costs, in the function's log at debug level (the
                // figure the hot-account ceiling in BENCHMARKS.md is computed from); summed
                // only when debug logging is on.
                tracing::debug!(
                    account_id = %commits.first().map_or("", |c| c.account.id.as_str()),
                    wcu = out.consumed_capacity().iter().filter_map(|c| c.capacity_units()).sum::<f64>(),
                    "commit"
                );
                return Ok(());
            }
            Err(e) => e,
        };
        let service = match err.into_service_error() {
            TransactWriteItemsError::TransactionCanceledException(t) => t,
            other => {
                match other.meta().code() {
                    Some("TransactionConflictException") => return Err(CommitError::Conflict),
                    // Past the SDK's own retries: the partition (or the table) is at capacity.
                    Some("ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded") => {
                        return Err(CommitError::Throttled)
                    }
                    _ => {}
                }
                return Err(CommitError::Store(unavailable("TransactWriteItems", other)));
            }
        };
        let reasons = service.cancellation_reasons();
        let failed_all = |slot: Slot| {
            slots
                .iter()
                .zip(reasons)
                .filter(move |(s, r)| **s == slot && r.code() == Some("ConditionalCheckFailed"))
                .map(|(_, r)| r)
        };
        let failed = |slot: Slot| failed_all(slot).next();
        // A claimed key answers first: the first result is returned whatever else changed.
        // Every claimed key of a group commit is reported, so one retry plans them all.
        let claimed: Vec<_> = failed_all(Slot::Idempotency).collect();
        if !claimed.is_empty() {
            let records: Option<Vec<IdemRecord>> =
                claimed.into_iter().map(|r| reason_item::<IdemRecord>(r).map(|b| *b)).collect();
            return match records {
                Some(recs) => Err(CommitError::KeyClaimed(recs)),
                None => Err(CommitError::Stale(None)),
            };
        }
        if let Some(r) = failed(Slot::Hold) {
            return Err(CommitError::HoldNotOpen(reason_item::<HoldRecord>(r)));
        }
        if let Some(r) = failed(Slot::Purchase) {
            return Err(CommitError::PurchaseNotInState(reason_item::<PurchaseRecord>(r)));
        }
        if let Some(r) = failed(Slot::Account) {
            return Err(CommitError::Stale(if several { None } else { reason_item::<Account>(r) }));
        }
        if failed(Slot::Entity).is_some() {
            return Err(CommitError::EntityMoved);
        }
        if reasons.iter().any(|r| r.code() == Some("TransactionConflict")) {
            return Err(CommitError::Conflict);
        }
        if reasons.iter().any(|r| matches!(r.code(), Some("ProvisionedThroughputExceeded" | "ThrottlingError"))) {
            return Err(CommitError::Throttled);
        }
        let codes: Vec<_> = reasons.iter().filter_map(|r| r.code()).collect();
        Err(CommitError::Store(StoreError::Unavailable(format!("transaction cancelled: {codes:?}"))))
    }
    async fn load_accounts(&self, ids: &[String]) -> Result<Vec<(String, Result<Account, StoreError>)>, StoreError> {
        self.batch_accounts(ids).await
    }
    async fn ledger_page(
        &self,
        account_id: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<(Vec<LedgerEntry>, bool), StoreError> {
        let hi = match before_seq {
            Some(0) => return Ok((vec![], false)),
            Some(seq) => ledger_sk(seq - 1),
            None => "TX#~".to_string(),
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(account_pk(account_id)))
            .expression_attribute_values(":lo", s("TX#"))
            .expression_attribute_values(":hi", s(hi))
            .scan_index_forward(false)
            .consistent_read(true)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| unavailable("Query", e))?;
        // An item is one entry or a group commit's block of them: `limit + 1` items hold at
        // least `limit + 1` entries before `before_seq` when there are that many.
        let mut entries = page_entries(out.items(), before_seq)?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok((entries, more))
    }
    async fn load_hold(&self, account_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        self.get(account_pk(account_id), format!("HOLD#{hold_id}")).await?.map(|i| from_item(&i)).transpose()
    }
    async fn load_idempotency(&self, account_id: &str, scope_key: &str) -> Result<Option<IdemRecord>, StoreError> {
        let (pk, sk) = idempotency_key(account_id, scope_key);
        self.get(pk, sk).await?.map(|i| from_item(&i)).transpose()
    }
    async fn load_entity(&self, account_id: &str, entity: &str) -> Result<Option<crate::entities::Entity>, StoreError> {
        self.get(account_pk(account_id), format!("ENTITY#{entity}")).await?.map(|i| from_item(&i)).transpose()
    }
    async fn entities(&self, account_id: &str) -> Result<Vec<crate::entities::Entity>, StoreError> {
        self.query_all(account_pk(account_id), "ENTITY#", "Query(entities)").await
    }
}

impl PaymentRecords for DynamoStore {
    async fn put_purchase(&self, w: PurchaseWrite) -> Result<(), CommitError> {
        let put = self.put(purchase_planned(&w).map_err(CommitError::Store)?).map_err(CommitError::Store)?;
        // One conditional write; a transaction of one item so the failure carries the item.
        match self.client.transact_write_items().transact_items(put).send().await {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(t) => {
                    let reason = t.cancellation_reasons().first();
                    if reason.and_then(|r| r.code()) == Some("ConditionalCheckFailed") {
                        Err(CommitError::PurchaseNotInState(reason.and_then(reason_item::<PurchaseRecord>)))
                    } else {
                        Err(CommitError::Conflict)
                    }
                }
                other => Err(CommitError::Store(unavailable("TransactWriteItems(purchase)", other))),
            },
        }
    }
    async fn load_purchase(&self, account_id: &str, purchase_id: &str) -> Result<Option<PurchaseRecord>, StoreError> {
        self.get(account_pk(account_id), format!("PURCHASE#{purchase_id}")).await?.map(|i| from_item(&i)).transpose()
    }
    async fn load_recharge(&self, account_id: &str, recharge_id: &str) -> Result<Option<RechargeRecord>, StoreError> {
        self.get(account_pk(account_id), format!("RECHARGE#{recharge_id}")).await?.map(|i| from_item(&i)).transpose()
    }
    async fn payment_account(&self, payment_intent_id: &str) -> Result<Option<String>, StoreError> {
        let item = self.get(format!("PAYMENT#{payment_intent_id}"), "PAYMENT".into()).await?;
        Ok(item.and_then(|i| i.get("account_id").and_then(|a| a.as_s().ok()).cloned()))
    }
    async fn payment_claims(&self, account_id: &str) -> Result<Vec<IdemRecord>, StoreError> {
        self.query_all(account_pk(account_id), "IDEM#payment:", "Query(payment claims)").await
    }
}

impl Deliveries for DynamoStore {
    async fn claim_delivery(&self, r: &DeliveryRecord) -> Result<bool, StoreError> {
        let item = to_item(r, account_pk(&r.account_id), delivery_key(r), Some(r.updated_at + 90 * DAY_MS))?;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #status = :retry")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":retry", s("retry"))
            .send()
            .await;
        condition_held(res, "PutItem(delivery)")
    }
    async fn finish_delivery(&self, r: &DeliveryRecord) -> Result<(), StoreError> {
        let item = to_item(r, account_pk(&r.account_id), delivery_key(r), Some(r.updated_at + 90 * DAY_MS))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("PutItem(delivery)", e))?;
        Ok(())
    }
    async fn recent_deliveries(&self, account_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :notify)")
            .expression_attribute_values(":pk", s(account_pk(account_id)))
            .expression_attribute_values(":notify", s("NOTIFY#"))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| unavailable("Query(deliveries)", e))?;
        out.items().iter().map(from_item).collect()
    }
}

impl RateCounts for DynamoStore {
    async fn count_start(
        &self,
        account_id: &str,
        what: &str,
        window_start_ms: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(account_pk(account_id)))
            .key("sk", s(format!("RATE#{what}#{window_start_ms:013}")))
            .update_expression("SET #ttl = :ttl ADD #n :one")
            .condition_expression("attribute_not_exists(#n) OR #n < :limit")
            .expression_attribute_names("#n", "n")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
            .expression_attribute_values(":ttl", AttributeValue::N(((window_start_ms + DAY_MS) / 1000).to_string()))
            .send()
            .await;
        condition_held(res, "UpdateItem(rate)")
    }
}

impl Outbox for DynamoStore {
    async fn clear_outbox(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(25) {
            let items = chunk
                .iter()
                .map(|e| {
                    Delete::builder()
                        .table_name(&self.table)
                        .key("pk", s(outbox_pk(outbox_shard(&e.id))))
                        .key("sk", s(outbox_sk(e)))
                        .build()
                        .map(|d| TransactWriteItem::builder().delete(d).build())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map_err(|e| unavailable("TransactWriteItems(outbox)", e))?;
        }
        Ok(())
    }
    async fn pending_outbox(&self, shard: u32, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(outbox_pk(shard)))
            .consistent_read(true)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| unavailable("Query(outbox)", e))?;
        out.items().iter().map(from_item).collect()
    }
}

impl Listings for DynamoStore {
    async fn accounts_for_sweep(
        &self,
        limit: usize,
        after: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        self.sweep_index_page(limit, after).await
    }
    async fn account_ids(
        &self,
        limit: usize,
        after: Option<String>,
        segment: Segment,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        self.scan_account_ids(limit, after, segment).await
    }
    async fn accounts_expiring(&self, by_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.expiry_index(by_ms, limit).await
    }
    async fn ended_grants(&self, account_id: &str) -> Result<Vec<Grant>, StoreError> {
        let mut out: Vec<Grant> = self.query_all(account_pk(account_id), "GRANT#", "Query(grants)").await?;
        out.sort_by_key(|g| std::cmp::Reverse((g.ended_at, g.created_at)));
        Ok(out)
    }
    async fn find_accounts(&self, by: &crate::account::AccountLookup) -> Result<Vec<String>, StoreError> {
        self.lookup_accounts(by).await
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Value>, StoreError> {
        self.read_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, value: &Value) -> Result<(), StoreError> {
        self.write_checkpoint(name, value).await
    }
}
