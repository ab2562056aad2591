//! Receipts in the same table (rules §20), beside the account's other items:
//!
//! | item            | pk             | sk                                   |
//! |-----------------|----------------|--------------------------------------|
//! | receipt row     | `ACCOUNT#{id}` | `RECEIPT#{created_ms:013}#{purchase or recharge id}` (no TTL) |
//! | payment pointer | `ACCOUNT#{id}` | `RECEIPTPI#{payment_intent}` (`created_at`, `id`: its row; no TTL) |
//!
//! The list is one query of the account's partition, newest first (`ScanIndexForward=false`),
//! from the cursor's row on (`ExclusiveStartKey`): never a scan. A row is added only if none
//! exists (`attribute_not_exists`), and written over when its invoice is recorded; neither is
//! part of the engine's transactions.

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

use super::attributes::{from_item, s, to_item, Item};
use super::{account_pk, condition_held, unavailable, DynamoStore};
use crate::receipts::{Receipt, ReceiptKey, ReceiptStore};
use crate::store::StoreError;

const ROW: &str = "RECEIPT#";

fn row_sk(k: &ReceiptKey) -> String {
    format!("{ROW}{:013}#{}", k.created_at, k.id)
}

fn pointer_sk(payment_intent_id: &str) -> String {
    format!("RECEIPTPI#{payment_intent_id}")
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    created_at: i64,
    id: String,
}

impl ReceiptStore for DynamoStore {
    async fn add_receipt(&self, r: &Receipt) -> Result<bool, StoreError> {
        let item = to_item(r, account_pk(&r.account_id), row_sk(&r.key()), None)?;
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        condition_held(sent, "PutItem receipt")
    }

    async fn put_receipt(&self, r: &Receipt) -> Result<bool, StoreError> {
        let item = to_item(r, account_pk(&r.account_id), row_sk(&r.key()), None)?;
        // Never over another invoice: only a row without one, or with this one.
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .expression_attribute_names("#inv", "invoice")
            .expression_attribute_names("#iid", "invoice_id");
        let put = match &r.invoice {
            Some(i) => put
                .condition_expression("attribute_not_exists(#inv.#iid) OR #inv.#iid = :iid")
                .expression_attribute_values(":iid", AttributeValue::S(i.invoice_id.clone())),
            None => put.condition_expression("attribute_not_exists(#inv.#iid)"),
        };
        if !condition_held(put.send().await, "PutItem receipt")? {
            return Ok(false);
        }
        if let Some(pi) = r.invoice.as_ref().and_then(|i| i.payment_intent_id.as_deref()) {
            self.link_payment(&r.account_id, pi, &r.key()).await?;
        }
        Ok(true)
    }

    async fn link_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
        key: &ReceiptKey,
    ) -> Result<(), StoreError> {
        let p = Pointer { created_at: key.created_at, id: key.id.clone() };
        let item = to_item(&p, account_pk(account_id), pointer_sk(payment_intent_id), None)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("PutItem receipt pointer", e))?;
        Ok(())
    }

    async fn receipt(&self, account_id: &str, key: &ReceiptKey) -> Result<Option<Receipt>, StoreError> {
        self.get(account_pk(account_id), row_sk(key)).await?.map(|i| from_item(&i)).transpose()
    }

    async fn receipt_of_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
    ) -> Result<Option<Receipt>, StoreError> {
        let Some(item) = self.get(account_pk(account_id), pointer_sk(payment_intent_id)).await? else {
            return Ok(None);
        };
        let p: Pointer = from_item(&item)?;
        self.receipt(account_id, &ReceiptKey { created_at: p.created_at, id: p.id }).await
    }

    async fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&ReceiptKey>,
    ) -> Result<(Vec<Receipt>, bool), StoreError> {
        let pk = account_pk(account_id);
        let start = before.map(|b| {
            [("pk".to_string(), s(pk.clone())), ("sk".to_string(), s(row_sk(b)))].into_iter().collect::<Item>()
        });
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :row)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":row", AttributeValue::S(ROW.into()))
            .scan_index_forward(false)
            .consistent_read(true)
            // One more than asked: whether another page follows.
            .limit(i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| unavailable("Query receipts", e))?;
        let mut list = page.items().iter().map(from_item).collect::<Result<Vec<Receipt>, _>>()?;
        let more = list.len() > limit;
        list.truncate(limit);
        Ok((list, more))
    }
}
