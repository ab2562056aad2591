//! Where receipts are kept (rules §20): one row per purchase or auto-recharge, ordered by when
//! it started, so an account's list is read newest first by key, a page at a time; and a
//! pointer from a payment (PaymentIntent id) to its row, for disputes and reconciliation.
//!
//! DynamoDB in `adapters::dynamo::receipts`; memory here, for unit tests. Neither touches the
//! account item or the ledger: a receipt is written beside them, after the money moved.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use super::Receipt;
use crate::store::StoreError;

/// Where a row sits in its account's list: when it started (ms), then its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReceiptKey {
    pub created_at: i64,
    pub id: String,
}

impl Receipt {
    pub fn key(&self) -> ReceiptKey {
        ReceiptKey { created_at: self.created_at, id: self.id.clone() }
    }
}

pub trait ReceiptStore: Send + Sync {
    /// Writes `r` unless its row exists (a purchase listed before it was paid): `false` then,
    /// and the stored row is left as it is.
    fn add_receipt(&self, r: &Receipt) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes `r` over its row (its invoice recorded), and points its payment, if it has one,
    /// at it; only while the row records no invoice or the same one as `r` (by id): `false`
    /// when it records another, and nothing is written.
    fn put_receipt(&self, r: &Receipt) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Points a payment at a row (known before the row has its invoice).
    fn link_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
        key: &ReceiptKey,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn receipt(
        &self,
        account_id: &str,
        key: &ReceiptKey,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send;
    /// The row a payment points at.
    fn receipt_of_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send;
    /// An account's rows newest first, at most `limit`, strictly before `before` when given;
    /// and whether more may follow.
    fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&ReceiptKey>,
    ) -> impl Future<Output = Result<(Vec<Receipt>, bool), StoreError>> + Send;
}

/// Every row of an account, newest first (reconciliation and the revenue report, which read
/// the account's whole ledger too).
pub async fn all_receipts<R: ReceiptStore>(store: &R, account_id: &str) -> Result<Vec<Receipt>, StoreError> {
    let mut out: Vec<Receipt> = Vec::new();
    loop {
        let before = out.last().map(Receipt::key);
        let (page, more) = store.receipts(account_id, 500, before.as_ref()).await?;
        let empty = page.is_empty();
        out.extend(page);
        if !more || empty {
            return Ok(out);
        }
    }
}

/// In memory, for unit tests (and the memory store's own receipts).
#[derive(Default)]
pub struct MemoryReceiptStore {
    rows: Mutex<BTreeMap<(String, ReceiptKey), Receipt>>,
    payments: Mutex<BTreeMap<(String, String), ReceiptKey>>,
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("memory receipt store lock poisoned".into())
}

impl ReceiptStore for MemoryReceiptStore {
    async fn add_receipt(&self, r: &Receipt) -> Result<bool, StoreError> {
        let mut rows = self.rows.lock().map_err(|_| poisoned())?;
        let k = (r.account_id.clone(), r.key());
        if rows.contains_key(&k) {
            return Ok(false);
        }
        rows.insert(k, r.clone());
        Ok(true)
    }

    async fn put_receipt(&self, r: &Receipt) -> Result<bool, StoreError> {
        {
            let mut rows = self.rows.lock().map_err(|_| poisoned())?;
            let k = (r.account_id.clone(), r.key());
            let recorded = rows.get(&k).and_then(|row| row.invoice.as_ref()).map(|i| i.invoice_id.as_str());
            if recorded.is_some_and(|id| Some(id) != r.invoice.as_ref().map(|i| i.invoice_id.as_str())) {
                return Ok(false);
            }
            rows.insert(k, r.clone());
        }
        if let Some(pi) = r.invoice.as_ref().and_then(|i| i.payment_intent_id.clone()) {
            self.link_payment(&r.account_id, &pi, &r.key()).await?;
        }
        Ok(true)
    }

    async fn link_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
        key: &ReceiptKey,
    ) -> Result<(), StoreError> {
        let mut p = self.payments.lock().map_err(|_| poisoned())?;
        p.insert((account_id.to_string(), payment_intent_id.to_string()), key.clone());
        Ok(())
    }

    async fn receipt(&self, account_id: &str, key: &ReceiptKey) -> Result<Option<Receipt>, StoreError> {
        Ok(self.rows.lock().map_err(|_| poisoned())?.get(&(account_id.to_string(), key.clone())).cloned())
    }

    async fn receipt_of_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
    ) -> Result<Option<Receipt>, StoreError> {
        let key = self
            .payments
            .lock()
            .map_err(|_| poisoned())?
            .get(&(account_id.to_string(), payment_intent_id.to_string()))
            .cloned();
        match key {
            Some(k) => self.receipt(account_id, &k).await,
            None => Ok(None),
        }
    }

    async fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&ReceiptKey>,
    ) -> Result<(Vec<Receipt>, bool), StoreError> {
        let rows = self.rows.lock().map_err(|_| poisoned())?;
        let mut page: Vec<Receipt> = rows
            .iter()
            .rev()
            .filter(|((a, k), _)| a == account_id && before.is_none_or(|b| k < b))
            .map(|(_, r)| r.clone())
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }
}

/// The memory store keeps its receipts beside its other maps.
impl ReceiptStore for crate::adapters::memory::MemoryStore {
    fn add_receipt(&self, r: &Receipt) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.receipts.add_receipt(r)
    }
    fn put_receipt(&self, r: &Receipt) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.receipts.put_receipt(r)
    }
    fn link_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
        key: &ReceiptKey,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.receipts.link_payment(account_id, payment_intent_id, key)
    }
    fn receipt(
        &self,
        account_id: &str,
        key: &ReceiptKey,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send {
        self.receipts.receipt(account_id, key)
    }
    fn receipt_of_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send {
        self.receipts.receipt_of_payment(account_id, payment_intent_id)
    }
    fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&ReceiptKey>,
    ) -> impl Future<Output = Result<(Vec<Receipt>, bool), StoreError>> + Send {
        self.receipts.receipts(account_id, limit, before)
    }
}

/// A shared store is a store (several services over one, as in the simulator).
impl<R: ReceiptStore> ReceiptStore for std::sync::Arc<R> {
    fn add_receipt(&self, r: &Receipt) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).add_receipt(r)
    }
    fn put_receipt(&self, r: &Receipt) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).put_receipt(r)
    }
    fn link_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
        key: &ReceiptKey,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).link_payment(account_id, payment_intent_id, key)
    }
    fn receipt(
        &self,
        account_id: &str,
        key: &ReceiptKey,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send {
        (**self).receipt(account_id, key)
    }
    fn receipt_of_payment(
        &self,
        account_id: &str,
        payment_intent_id: &str,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send {
        (**self).receipt_of_payment(account_id, payment_intent_id)
    }
    fn receipts(
        &self,
        account_id: &str,
        limit: usize,
        before: Option<&ReceiptKey>,
    ) -> impl Future<Output = Result<(Vec<Receipt>, bool), StoreError>> + Send {
        (**self).receipts(account_id, limit, before)
    }
}
