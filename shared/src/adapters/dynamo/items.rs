//! The items one commit writes, as a pure function of the commit: the adapter sends exactly
//! these in one `TransactWriteItems`, and the capacity model of `./scripts bench` charges them
//! by DynamoDB's published size rules (`item_size`).
//!
//! A group commit's ledger entries are packed into one **block** item (sk `TX#{first seq}`,
//! attribute `block`: a JSON array of `[id, seq, kind, amount, balance_after, created_at,
//! description]`), read back one entry at a time (`entries_of`). Usage idempotency records live
//! on a partition key of their own (`KEY#{account}#usage:{key}`), so a hot account's partition
//! carries only its account item and its ledger (rules §14).

use aws_sdk_dynamodb::types::AttributeValue;

use super::attributes::{from_item, s, to_item, Item};
use super::{account_pk, ledger_sk, outbox_pk, outbox_sk, DAY_MS};
use crate::events::outbox_shard;
use crate::ledger::{EntryKind, LedgerEntry, IDEMPOTENCY_TTL_MS};
use crate::money::Micros;
use crate::store::{Commit, HoldWrite, PurchaseWrite, StoreError};

/// Which transaction item is which, to read the cancellation reasons by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Account,
    Idempotency,
    Hold,
    Purchase,
    Entity,
    Other,
}

/// One item of a commit, before it becomes a `Put`.
pub(crate) struct Planned {
    pub(crate) item: Item,
    /// The condition, its values, and whether it names `#status`.
    pub(crate) condition: Option<(String, Vec<(&'static str, AttributeValue)>)>,
    pub(crate) slot: Slot,
    pub(crate) kind: &'static str,
}

/// One item a commit writes, as the capacity model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemWrite {
    pub pk: String,
    pub sk: String,
    /// The item's size in bytes by DynamoDB's rules (names and values).
    pub size: usize,
    /// `account`, `ledger`, `block`, `idempotency`, `hold`, `purchase`, `payment_index`,
    /// `recharge`, `outbox` or `audit`.
    pub kind: &'static str,
}

/// The keys of an idempotency record: usage keys on their own partition key, the others
/// (holds, adjustments, payments' permanent claims, listed per account) on the account's.
pub(crate) fn idempotency_key(account_id: &str, scope_key: &str) -> (String, String) {
    if scope_key.starts_with("usage:") {
        (format!("KEY#{account_id}#{scope_key}"), "IDEM".into())
    } else {
        (account_pk(account_id), format!("IDEM#{scope_key}"))
    }
}

const NEW: &str = "attribute_not_exists(pk)";

fn planned(item: Item, condition: Option<&str>, slot: Slot, kind: &'static str) -> Planned {
    Planned { item, condition: condition.map(|c| (c.to_string(), vec![])), slot, kind }
}

/// Everything `commit` writes, in transaction order.
/// The partition of the sparse index (`gsi1`) that lists accounts with auto-recharge on.
pub const SWEEP_INDEX_KEY: &str = "AUTORECHARGE";
/// Partitions of the sparse index (`gsi2`) of accounts with an expiring grant.
pub const EXPIRY_INDEX_SHARDS: u32 = 4;

/// The `gsi2` partition of an account: one of `EXPIRY#0` … `EXPIRY#3`.
fn expiry_index_key(account_id: &str) -> String {
    let h = account_id.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("EXPIRY#{}", h % EXPIRY_INDEX_SHARDS)
}

/// The account's item: the account, and the keys of the sparse indexes that list it — the
/// sweep's (`gsi1pk`) while auto-recharge is on, the expiry run's (`gsi2pk`, `gsi2sk` the
/// soonest expiry in ms) while a grant has an expiry. A write replaces the whole item, so an
/// account no longer listed drops out of the index with it.
pub fn account_item(a: &crate::account::Account) -> Result<Item, StoreError> {
    let mut item = to_item(a, account_pk(&a.id), "ACCOUNT".into(), None)?;
    if a.swept() {
        item.insert("gsi1pk".into(), s(SWEEP_INDEX_KEY));
    }
    if let Some(t) = a.expiry_due() {
        item.insert("gsi2pk".into(), s(expiry_index_key(&a.id)));
        item.insert("gsi2sk".into(), s(format!("{:013}", t.max(0))));
    }
    // The console's lookups (rules §19): by first billing email (gsi4), by Stripe customer (gsi5).
    let (email, customer) = a.lookup_keys();
    if let Some(k) = email {
        item.insert("gsi4pk".into(), s(k));
    }
    if let Some(k) = customer {
        item.insert("gsi5pk".into(), s(k));
    }
    Ok(item)
}

pub(crate) fn plan_commit(c: &Commit) -> Result<Vec<Planned>, StoreError> {
    let pk = account_pk(&c.account.id);
    let mut out = Vec::with_capacity(3 + c.idempotency.len() + c.outbox.len());

    let account_item = account_item(&c.account)?;
    let guard = if c.expected_version == 0 {
        (NEW.to_string(), vec![])
    } else {
        ("version = :expected".to_string(), vec![(":expected", AttributeValue::N(c.expected_version.to_string()))])
    };
    out.push(Planned { item: account_item, condition: Some(guard), slot: Slot::Account, kind: "account" });

    match c.ledger.as_slice() {
        [] => {}
        [e] => out.push(planned(to_item(e, pk.clone(), ledger_sk(e.seq), None)?, Some(NEW), Slot::Other, "ledger")),
        entries => out.push(planned(block_item(&c.account.id, entries)?, Some(NEW), Slot::Other, "block")),
    }
    for r in &c.idempotency {
        let ttl = (!r.permanent).then_some(r.created_at + IDEMPOTENCY_TTL_MS);
        let (ipk, isk) = idempotency_key(&r.account_id, &r.scope_key);
        out.push(planned(to_item(r, ipk, isk, ttl)?, Some(NEW), Slot::Idempotency, "idempotency"));
    }
    match &c.hold {
        Some(HoldWrite::Create(r)) => {
            let item = to_item(r, pk.clone(), format!("HOLD#{}", r.hold_id), Some(r.hold.expires_at + 7 * DAY_MS))?;
            out.push(planned(item, Some(NEW), Slot::Hold, "hold"));
        }
        Some(HoldWrite::Settle(r)) => {
            let item = to_item(r, pk.clone(), format!("HOLD#{}", r.hold_id), Some(r.hold.expires_at + 7 * DAY_MS))?;
            out.push(Planned {
                item,
                condition: Some(("#status = :open".into(), vec![(":open", s("open"))])),
                slot: Slot::Hold,
                kind: "hold",
            });
        }
        None => {}
    }
    if let Some(w) = &c.purchase {
        out.push(purchase_planned(w)?);
    }
    if let Some(pi) = &c.payment_index {
        let mut item = Item::new();
        item.insert("pk".into(), s(format!("PAYMENT#{pi}")));
        item.insert("sk".into(), s("PAYMENT"));
        item.insert("account_id".into(), s(c.account.id.clone()));
        out.push(planned(item, None, Slot::Other, "payment_index"));
    }
    if let Some(r) = &c.recharge {
        let item = to_item(r, pk.clone(), format!("RECHARGE#{}", r.recharge_id), None)?;
        out.push(planned(item, Some(NEW), Slot::Other, "recharge"));
    }
    for w in &c.entities {
        let owner = crate::parts::owner_of(&c.account.id);
        let item = to_item(&w.record, account_pk(owner), format!("ENTITY#{}", w.record.entity), None)?;
        let condition = if w.expected_version == 0 {
            (NEW.to_string(), vec![])
        } else {
            ("version = :ev".to_string(), vec![(":ev", AttributeValue::N(w.expected_version.to_string()))])
        };
        out.push(Planned { item, condition: Some(condition), slot: Slot::Entity, kind: "entity" });
    }
    for g in &c.ended_grants {
        let item = to_item(g, pk.clone(), format!("GRANT#{}", g.id), None)?;
        out.push(planned(item, None, Slot::Other, "grant"));
    }
    if let Some(r) = &c.audit {
        // Append-only: never over another record; no TTL (rules §19).
        out.push(planned(super::audit::record_item(r)?, Some(NEW), Slot::Other, "audit"));
    }
    for e in &c.outbox {
        // No TTL: an event leaves the outbox only when the bus has it.
        out.push(planned(to_item(e, outbox_pk(outbox_shard(&e.id)), outbox_sk(e), None)?, None, Slot::Other, "outbox"));
    }
    Ok(out)
}

/// The conditional put of a purchase record: new, or moving from one of `from`.
pub(crate) fn purchase_planned(w: &PurchaseWrite) -> Result<Planned, StoreError> {
    let r = &w.record;
    let item = to_item(r, account_pk(&r.account_id), format!("PURCHASE#{}", r.purchase_id), None)?;
    if w.from.is_empty() {
        return Ok(planned(item, Some(NEW), Slot::Purchase, "purchase"));
    }
    const FROM: [&str; 8] = [":from0", ":from1", ":from2", ":from3", ":from4", ":from5", ":from6", ":from7"];
    if w.from.len() > FROM.len() {
        return Err(StoreError::Corrupt("a purchase moves from at most 8 states".into()));
    }
    let mut expr = format!("#status IN ({})", FROM[..w.from.len()].join(", "));
    let mut values: Vec<(&'static str, AttributeValue)> =
        FROM.iter().zip(&w.from).map(|(n, st)| (*n, s(st.as_str()))).collect();
    if let Some(u) = w.expected_updated_at {
        expr.push_str(" AND updated_at = :seen");
        values.push((":seen", AttributeValue::N(u.to_string())));
    }
    Ok(Planned { item, condition: Some((expr, values)), slot: Slot::Purchase, kind: "purchase" })
}

/// Items one `TransactWriteItems` carries at most, and the largest item DynamoDB stores.
pub const ITEMS_PER_TRANSACTION: usize = 100;
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Why DynamoDB would refuse a transaction of these items (more than 100, or one over 400 KB),
/// said before anything is sent.
pub fn too_large(items: &[ItemWrite]) -> Option<String> {
    if let Some(big) = items.iter().find(|i| i.size > MAX_ITEM_BYTES) {
        return Some(format!("a {} item of {} bytes (at most 400 KB)", big.kind, big.size));
    }
    (items.len() > ITEMS_PER_TRANSACTION)
        .then(|| format!("a transaction of {} items (at most {ITEMS_PER_TRANSACTION})", items.len()))
}

/// The items of a commit with their sizes: what DynamoDB charges it for.
pub fn commit_items(c: &Commit) -> Result<Vec<ItemWrite>, StoreError> {
    Ok(plan_commit(c)?
        .into_iter()
        .map(|p| ItemWrite {
            pk: p.item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
            sk: p.item.get("sk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
            size: item_size(&p.item),
            kind: p.kind,
        })
        .collect())
}

/// An item's size by DynamoDB's published rules: each attribute's name in UTF-8 bytes plus
/// its value (strings their bytes, numbers about one byte per two significant digits plus
/// one, booleans and nulls one byte, lists and maps three bytes plus one per element plus
/// their elements, map keys included).
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => {
            let digits = n.trim_start_matches('-').trim_start_matches('0').trim_end_matches('0').len().max(1);
            digits.div_ceil(2) + 1
        }
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, e)| 1 + k.len() + value_size(e)).sum::<usize>(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(l) => l.iter().map(String::len).sum(),
        AttributeValue::Ns(l) => l.iter().map(|n| n.len()).sum(),
        _ => 0,
    }
}

/// One packed entry: `[id, seq, kind, amount, balance_after, created_at, description, grants]`.
type Packed = (String, u64, EntryKind, i64, i64, i64, String, Vec<(String, i64)>);

fn block_item(account_id: &str, entries: &[LedgerEntry]) -> Result<Item, StoreError> {
    let packed: Vec<Packed> = entries
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.seq,
                e.kind,
                e.amount.get(),
                e.balance_after.get(),
                e.created_at,
                e.description.clone(),
                e.grants.clone(),
            )
        })
        .collect();
    let json = serde_json::to_string(&packed).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let first = entries.first().map_or(0, |e| e.seq);
    let last = entries.last().map_or(0, |e| e.seq);
    let mut item = Item::new();
    item.insert("pk".into(), s(account_pk(account_id)));
    item.insert("sk".into(), s(ledger_sk(first)));
    item.insert("account_id".into(), s(account_id));
    item.insert("last_seq".into(), AttributeValue::N(last.to_string()));
    item.insert("block".into(), s(json));
    // A part's group commit: every entry of it follows the same account entry (`Account::anchor`).
    if let Some(a) = entries.first().and_then(|e| e.anchor) {
        item.insert("anchor".into(), AttributeValue::N(a.to_string()));
    }
    // The entities of the entries that name one (rules §17), by seq: beside the packed
    // entries, so blocks written before entities read back as they were.
    let named: std::collections::BTreeMap<String, &str> =
        entries.iter().filter_map(|e| e.entity.as_deref().map(|n| (e.seq.to_string(), n))).collect();
    if !named.is_empty() {
        let json = serde_json::to_string(&named).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        item.insert("entities".into(), s(json));
    }
    Ok(item)
}

/// The entries of a ledger item, oldest first: one for an entry, several for a block.
pub(crate) fn entries_of(item: &Item) -> Result<Vec<LedgerEntry>, StoreError> {
    let Some(block) = item.get("block") else { return Ok(vec![from_item::<LedgerEntry>(item)?]) };
    let account_id = item
        .get("account_id")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Corrupt("ledger block without account_id".into()))?;
    let json = block.as_s().map_err(|_| StoreError::Corrupt("ledger block is not a string".into()))?;
    let packed: Vec<Packed> = serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let anchor = item.get("anchor").and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<u64>().ok());
    let named: std::collections::BTreeMap<String, String> = match item.get("entities").map(|v| v.as_s()) {
        None => Default::default(),
        Some(Ok(json)) => serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        Some(Err(_)) => return Err(StoreError::Corrupt("ledger block's entities are not a string".into())),
    };
    Ok(packed
        .into_iter()
        .map(|(id, seq, kind, amount, balance_after, created_at, description, grants)| LedgerEntry {
            id,
            account_id: account_id.clone(),
            seq,
            kind,
            amount: Micros::new(amount),
            balance_after: Micros::new(balance_after),
            created_at,
            description,
            grants,
            anchor,
            entity: named.get(&seq.to_string()).cloned(),
        })
        .collect())
}

/// Ledger items (newest first, as queried) as entries newest first, only those before
/// `before_seq`.
pub(crate) fn page_entries(items: &[Item], before_seq: Option<u64>) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut out = Vec::new();
    for item in items {
        let mut entries = entries_of(item)?;
        entries.reverse();
        out.extend(entries.into_iter().filter(|e| before_seq.is_none_or(|b| e.seq < b)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, amount: i64, after: i64) -> LedgerEntry {
        LedgerEntry {
            id: format!("txn_{seq}"),
            account_id: "a".into(),
            seq,
            kind: EntryKind::Consumption,
            amount: Micros::new(amount),
            balance_after: Micros::new(after),
            created_at: 1_795_305_600_000,
            description: "5 api_calls".into(),
            grants: vec![("grant_a".into(), amount)],
            anchor: None,
            entity: None,
        }
    }

    #[test]
    fn a_block_reads_back_as_its_entries() {
        let entries = vec![entry(7, -10, 90), entry(8, -20, 70), entry(9, -5, 65)];
        let item = block_item("a", &entries).unwrap();
        assert_eq!(item.get("sk").and_then(|v| v.as_s().ok()).unwrap(), &ledger_sk(7));
        assert_eq!(entries_of(&item).unwrap(), entries);
        let page = page_entries(&[item], Some(9)).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 7]);
    }

    #[test]
    fn sizes_follow_the_published_rules() {
        let mut item = Item::new();
        item.insert("pk".into(), s("ACCOUNT#a")); // 2 + 9
        item.insert("n".into(), AttributeValue::N("12345".into())); // 1 + 3 + 1
        item.insert("ok".into(), AttributeValue::Bool(true)); // 2 + 1
        assert_eq!(item_size(&item), 11 + 5 + 3);
    }
}
