//! The audit log in the same table (rules §19).
//!
//! | item         | pk              | sk              |
//! |--------------|-----------------|-----------------|
//! | audit record | `AUDIT#{chain}` | `SEQ#{seq:012}` (`gsi3pk` `AUDIT`, `gsi3sk` `{at ms:013}#{chain}#{seq:012}`; no TTL) |
//! | chain head   | `AUDIT#-`       | `HEAD` (`seq`, `hash`: the chain of no account; an account's head is on its item) |
//!
//! A record is put only where none is (`attribute_not_exists`), never updated or deleted by
//! topup: the log is append-only. An account's records are written by its commit
//! (`items::plan_commit`); the chain of no account by a transaction of the record and its head,
//! conditional on the head read. `GET /v1/audit` reads one chain by its key, newest first, or
//! every chain through `gsi3` (all attributes projected), newest first; filters on the actor
//! and the action are applied by the query, and a request reads at most `MAX_READS` pages.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use super::attributes::{from_item, s, to_item, Item};
use super::{unavailable, DynamoStore, AUDIT_INDEX};
use crate::audit::{AuditHead, AuditLog, AuditPage, AuditQuery, AuditRecord, Position};
use crate::store::StoreError;

/// The partition of every record in `gsi3`.
const INDEX_KEY: &str = "AUDIT";
const HEAD_SK: &str = "HEAD";
/// Pages a request reads at most (each up to `PAGE_ITEMS` items before its filters).
const MAX_READS: usize = 8;
const PAGE_ITEMS: i32 = 200;

pub(crate) fn chain_pk(chain: &str) -> String {
    format!("AUDIT#{chain}")
}

pub(crate) fn record_sk(seq: u64) -> String {
    format!("SEQ#{seq:012}")
}

fn index_sk(at: i64, chain: &str, seq: u64) -> String {
    format!("{:013}#{chain}#{seq:012}", at.max(0))
}

/// The item of an audit record: its fields, its keys and its place in `gsi3`.
pub(crate) fn record_item(r: &AuditRecord) -> Result<Item, StoreError> {
    let mut item = to_item(r, chain_pk(r.chain()), record_sk(r.seq), None)?;
    item.insert("gsi3pk".into(), s(INDEX_KEY));
    item.insert("gsi3sk".into(), s(index_sk(r.at_ms(), r.chain(), r.seq)));
    Ok(item)
}

/// The keys (table and index) of the record at `p`, to start a query after it.
fn start_key(p: &Position, index: bool) -> Item {
    let mut k: Item = [("pk".to_string(), s(chain_pk(&p.chain))), ("sk".to_string(), s(record_sk(p.seq)))]
        .into_iter()
        .collect();
    if index {
        k.insert("gsi3pk".into(), s(INDEX_KEY));
        k.insert("gsi3sk".into(), s(index_sk(p.at, &p.chain, p.seq)));
    }
    k
}

/// The position of a key DynamoDB stopped at.
fn position_of_key(k: &Item) -> Option<Position> {
    let chain = k.get("pk")?.as_s().ok()?.strip_prefix("AUDIT#")?.to_string();
    let seq = k.get("sk")?.as_s().ok()?.strip_prefix("SEQ#")?.parse().ok()?;
    let at = match k.get("gsi3sk") {
        Some(v) => v.as_s().ok()?.split('#').next()?.parse().ok()?,
        None => 0,
    };
    Some(Position { at, chain, seq })
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl AuditLog for DynamoStore {
    async fn audit_head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError> {
        let Some(item) = self.get(chain_pk(chain), HEAD_SK.into()).await? else { return Ok(None) };
        let seq = item.get("seq").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
        let hash = item.get("hash").and_then(|v| v.as_s().ok()).cloned();
        match (seq, hash) {
            (Some(seq), Some(hash)) => Ok(Some(AuditHead { seq, hash })),
            _ => Err(StoreError::Corrupt(format!("audit head of `{chain}` without seq or hash"))),
        }
    }

    async fn append_audit(&self, record: &AuditRecord, expected: Option<&AuditHead>) -> Result<bool, StoreError> {
        let chain = record.chain();
        let put = built(
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(record_item(record)?))
                .condition_expression("attribute_not_exists(pk)")
                .build(),
        )?;
        let head: Item = [
            ("pk".to_string(), s(chain_pk(chain))),
            ("sk".to_string(), s(HEAD_SK)),
            ("seq".to_string(), n(record.seq)),
            ("hash".to_string(), s(record.hash.clone())),
        ]
        .into_iter()
        .collect();
        let head = Put::builder().table_name(&self.table).set_item(Some(head));
        let head = match expected {
            None => head.condition_expression("attribute_not_exists(pk)"),
            Some(h) => head
                .condition_expression("#seq = :seq AND #hash = :hash")
                .expression_attribute_names("#seq", "seq")
                .expression_attribute_names("#hash", "hash")
                .expression_attribute_values(":seq", n(h.seq))
                .expression_attribute_values(":hash", s(h.hash.clone())),
        };
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().put(built(head.build())?).build(),
        ];
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(true),
            Err(e) => match e.into_service_error() {
                // The head moved (or the place is taken): another writer came first.
                TransactWriteItemsError::TransactionCanceledException(t)
                    if t.cancellation_reasons().iter().all(|r| {
                        matches!(r.code(), None | Some("None" | "ConditionalCheckFailed" | "TransactionConflict"))
                    }) =>
                {
                    Ok(false)
                }
                other if other.meta().code() == Some("TransactionConflictException") => Ok(false),
                other => Err(unavailable("TransactWriteItems audit record and head", other)),
            },
        }
    }

    async fn audit_page(
        &self,
        query: &AuditQuery,
        limit: usize,
        after: Option<&Position>,
    ) -> Result<AuditPage, StoreError> {
        let index = query.account_id.is_none();
        let mut start = after.map(|p| start_key(p, index));
        let mut records: Vec<AuditRecord> = Vec::new();
        for _ in 0..MAX_READS {
            let mut q = self.client.query().table_name(&self.table).scan_index_forward(false).limit(PAGE_ITEMS);
            q = match &query.account_id {
                Some(acct) => q
                    .key_condition_expression("pk = :pk AND begins_with(sk, :seq)")
                    .expression_attribute_values(":pk", s(chain_pk(acct)))
                    .expression_attribute_values(":seq", s("SEQ#"))
                    .consistent_read(true),
                None => q
                    .index_name(AUDIT_INDEX)
                    .key_condition_expression("gsi3pk = :pk")
                    .expression_attribute_values(":pk", s(INDEX_KEY)),
            };
            let mut filters = Vec::new();
            // `actor` names a person or client (`sub`) or a role (`support`, `service`, …).
            if let Some(sub) = &query.actor {
                filters.push("(#actor.#sub = :sub OR #actor.#role = :sub)");
                q = q
                    .expression_attribute_names("#actor", "actor")
                    .expression_attribute_names("#sub", "sub")
                    .expression_attribute_names("#role", "role")
                    .expression_attribute_values(":sub", s(sub.clone()));
            }
            if let Some(action) = &query.action {
                filters.push("#action = :action");
                q = q.expression_attribute_names("#action", "action").expression_attribute_values(":action", s(action.clone()));
            }
            if !filters.is_empty() {
                q = q.filter_expression(filters.join(" AND "));
            }
            let out = q.set_exclusive_start_key(start.take()).send().await.map_err(|e| unavailable("Query audit", e))?;
            let items = out.items();
            for (i, item) in items.iter().enumerate() {
                records.push(from_item(item)?);
                if records.len() == limit {
                    let more = i + 1 < items.len() || out.last_evaluated_key.as_ref().is_some_and(|k| !k.is_empty());
                    let next_cursor = if more { records.last().map(|r| Position::of(r).cursor()) } else { None };
                    return Ok(AuditPage { records, next_cursor });
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(AuditPage { records, next_cursor: None }),
            }
        }
        // Read its budget before filling the page: the client goes on from where it stopped.
        let next_cursor = start.as_ref().and_then(position_of_key).map(|p| p.cursor());
        Ok(AuditPage { records, next_cursor })
    }

    async fn audit_chain(&self, chain: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        while out.len() < limit {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .expression_attribute_values(":pk", s(chain_pk(chain)))
                .expression_attribute_values(":lo", s(record_sk(after_seq.saturating_add(1))))
                .expression_attribute_values(":hi", s("SEQ#~"))
                .consistent_read(true)
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("Query audit chain", e))?;
            for item in page.items() {
                out.push(from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}
