//! Receipts, invoices and tax (rules §20): every paid purchase and auto-recharge has an
//! invoice from Stripe, whose hosted page is its receipt; purchases and auto-recharges are
//! listed newest first with their receipt links; tax, when configured, is kept apart from the
//! price that credits are granted for.
//!
//! A layer of its own beside the credits engine, with two small ports:
//! - `store::ReceiptStore`: one row per purchase or recharge (DynamoDB in
//!   `adapters::dynamo::receipts`, memory in `store`), never written in the engine's
//!   transactions: a row is written after the money moved, and every write is idempotent, so a
//!   failed one is simply done again by the next delivery or retry.
//! - `Invoicing`: Stripe's invoices for payments already made (an auto-recharge's
//!   PaymentIntent), in `adapters::stripe_invoices`; a memory one here for unit tests.
//!
//! Where the rows come from: a purchase is listed when it starts (the `purchase` function) and
//! again by any Checkout event of it; its invoice arrives in `invoice.paid` (Checkout creates
//! it: `invoice_creation`). A recharge is invoiced when it has been credited (its
//! `AutoRechargeSucceeded`, handled by the `auto-recharge` function): the invoice is made for
//! the amount its PaymentIntent took, finalized without Stripe ever collecting it, and paid by
//! attaching that PaymentIntent, so the recharge is charged once. The purchase and recharge
//! records are only read here.

pub mod store;

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::account::RechargeRecord;
use crate::clock;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ids::{PurchaseId, RechargeId};
use crate::payments::PaymentsUnavailable;
use crate::purchases::{Charge, PurchaseRecord, PurchaseStatus, PurchaseStatusView};
use crate::store::Store;
pub use store::{MemoryReceiptStore, ReceiptKey, ReceiptStore};

/// What a row is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Purchase,
    AutoRecharge,
}

/// A purchase or auto-recharge as the list shows it, with its invoice once paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub account_id: String,
    /// The purchase id (`pur_…`) or the recharge id (`rch_…`).
    pub id: String,
    pub kind: ReceiptKind,
    /// When it started (the purchase recorded, the recharge claimed), ms: orders the list.
    pub created_at: i64,
    /// The price before tax, minor units: what the credits were granted for.
    pub charge: i64,
    pub currency: String,
    pub credits: i64,
    pub invoice: Option<Invoice>,
    /// A recharge's invoice made at Stripe and not yet recorded paid: a retry goes on with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_invoice_id: Option<String>,
}

/// An invoice as Stripe issued it, as far as a receipt needs it. Money in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub invoice_id: String,
    pub payment_intent_id: Option<String>,
    /// Before tax.
    pub subtotal: i64,
    pub tax: i64,
    /// What the customer paid: subtotal and tax.
    pub total: i64,
    pub currency: String,
    /// The invoice's hosted page (`hosted_invoice_url`): the customer's receipt.
    pub receipt_url: Option<String>,
    pub invoice_pdf: Option<String>,
    /// When it was paid, ms.
    pub paid_at: i64,
}

/// The fields of a Stripe invoice that a receipt reads; every one optional, so an invoice
/// rendered at another API version still reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StripeInvoice {
    id: Option<String>,
    status: Option<String>,
    subtotal: Option<i64>,
    total: Option<i64>,
    tax: Option<i64>,
    total_taxes: Option<Vec<TaxAmount>>,
    total_tax_amounts: Option<Vec<TaxAmount>>,
    currency: Option<String>,
    hosted_invoice_url: Option<String>,
    invoice_pdf: Option<String>,
    payment_intent: Option<Value>,
    status_transitions: Option<Transitions>,
    created: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaxAmount {
    amount: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Transitions {
    paid_at: Option<i64>,
}

impl Invoice {
    /// A paid invoice from Stripe's JSON (an `invoice.paid` event's object, or an API answer).
    /// Tax is Stripe's own figure (`total_taxes`; `tax` or `total_tax_amounts` at older API
    /// versions), else what the total adds to the subtotal. `Err` with the reason when it is
    /// not a paid invoice with its amounts.
    pub fn from_stripe(v: &Value) -> Result<Invoice, &'static str> {
        let i: StripeInvoice = serde_json::from_value(v.clone()).map_err(|_| "unreadable_invoice")?;
        if i.status.as_deref() != Some("paid") {
            return Err("invoice_not_paid");
        }
        let (Some(id), Some(subtotal), Some(total), Some(currency)) = (i.id, i.subtotal, i.total, i.currency) else {
            return Err("unreadable_invoice");
        };
        let listed = i.total_taxes.or(i.total_tax_amounts).map(|t| crate::money::total(t.iter().map(|a| a.amount)));
        let tax = listed.or(i.tax).unwrap_or(total.saturating_sub(subtotal));
        let payment_intent_id = match &i.payment_intent {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let paid_s = i.status_transitions.and_then(|t| t.paid_at).or(i.created).unwrap_or(0);
        Ok(Invoice {
            invoice_id: id,
            payment_intent_id,
            subtotal,
            tax,
            total,
            currency: currency.to_lowercase(),
            receipt_url: i.hosted_invoice_url.filter(|u| web_link(u)),
            invoice_pdf: i.invoice_pdf.filter(|u| web_link(u)),
            paid_at: paid_s.saturating_mul(1000),
        })
    }
}

/// A link a page or an email may show: http(s) only, whatever an event carried.
fn web_link(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://")) && !u.chars().any(|c| c.is_whitespace() || c == '"')
}

/// An invoice for a payment already made: an auto-recharge's succeeded PaymentIntent.
#[derive(Debug, Clone)]
pub struct PaidInvoiceRequest {
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The invoice's line.
    pub description: String,
    /// The PaymentIntent that paid it.
    pub payment_intent_id: String,
    /// Every request's idempotency key starts with this (one per recharge).
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

/// Stripe's invoices, for what Checkout does not invoice itself.
///
/// A payment already made is invoiced in two steps, so the invoice's id can be kept between
/// them (rules §20): Stripe keeps idempotency keys about a day, and a replay after that must
/// go on with the invoice already made rather than make another.
pub trait Invoicing: Send + Sync {
    /// Creates the invoice, a draft without its line; its id. Idempotent per key (for as long
    /// as Stripe keeps the key).
    fn create_invoice(
        &self,
        request: &PaidInvoiceRequest,
    ) -> impl Future<Output = Result<String, PaymentsUnavailable>> + Send;
    /// Brings the invoice `create_invoice` made to paid by the payment, from wherever it is,
    /// never charging again: a draft gets its line if it has none and is finalized with
    /// `auto_advance=false` (Stripe never collects it); an open one is paid by attaching the
    /// PaymentIntent; a paid one is read. An open invoice that Stripe refuses the payment for is
    /// voided, so nothing can collect it: `Ok(Err("invoice_void"))`, as for one found void.
    fn pay_invoice(
        &self,
        request: &PaidInvoiceRequest,
        invoice_id: &str,
    ) -> impl Future<Output = Result<Result<Invoice, &'static str>, PaymentsUnavailable>> + Send;
}

/// An invoice in `MemoryInvoicing`.
#[derive(Debug, Clone)]
pub struct MemoryInvoice {
    pub id: String,
    /// `draft`, `open`, `paid` or `void`.
    pub status: &'static str,
    pub lines: Vec<i64>,
    pub payment_intent_id: Option<String>,
}

/// Invoices in memory, for unit tests, stepped as Stripe steps them. Creating does not dedupe
/// by key: it plays a retry made after Stripe forgot the key.
#[derive(Default)]
pub struct MemoryInvoicing {
    pub invoices: std::sync::Mutex<Vec<MemoryInvoice>>,
    /// While set, Stripe is down.
    pub down: std::sync::atomic::AtomicBool,
    /// While set, attaching fails as a network error would (the invoice stays open).
    pub attach_down: std::sync::atomic::AtomicBool,
    /// While set, Stripe refuses to attach the payment (a final error).
    pub attach_refused: std::sync::atomic::AtomicBool,
}

impl MemoryInvoicing {
    fn up(&self) -> Result<std::sync::MutexGuard<'_, Vec<MemoryInvoice>>, PaymentsUnavailable> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PaymentsUnavailable("stripe is down".into()));
        }
        self.invoices.lock().map_err(|_| PaymentsUnavailable("poisoned".into()))
    }
}

impl Invoicing for MemoryInvoicing {
    async fn create_invoice(&self, _r: &PaidInvoiceRequest) -> Result<String, PaymentsUnavailable> {
        let mut invoices = self.up()?;
        let id = format!("in_{}", invoices.len() + 1);
        invoices.push(MemoryInvoice { id: id.clone(), status: "draft", lines: vec![], payment_intent_id: None });
        Ok(id)
    }

    async fn pay_invoice(
        &self,
        r: &PaidInvoiceRequest,
        invoice_id: &str,
    ) -> Result<Result<Invoice, &'static str>, PaymentsUnavailable> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut invoices = self.up()?;
        let inv = invoices
            .iter_mut()
            .find(|i| i.id == invoice_id)
            .ok_or_else(|| PaymentsUnavailable("no such invoice".into()))?;
        if inv.status == "draft" {
            if inv.lines.is_empty() {
                inv.lines.push(r.amount_cents);
            }
            inv.status = "open";
        }
        if inv.status == "open" {
            if self.attach_down.load(SeqCst) {
                return Err(PaymentsUnavailable("attach: network".into()));
            }
            if self.attach_refused.load(SeqCst) {
                inv.status = "void";
            } else {
                inv.status = "paid";
                inv.payment_intent_id = Some(r.payment_intent_id.clone());
            }
        }
        if inv.status != "paid" {
            return Ok(Err("invoice_void"));
        }
        let total = inv.lines.iter().sum();
        Ok(Ok(Invoice {
            invoice_id: inv.id.clone(),
            payment_intent_id: inv.payment_intent_id.clone(),
            subtotal: total,
            tax: 0,
            total,
            currency: r.currency.clone(),
            receipt_url: Some(format!("https://invoice.example/{}", inv.id)),
            invoice_pdf: Some(format!("https://invoice.example/{}/pdf", inv.id)),
            paid_at: 0,
        }))
    }
}

/// Which purchase or recharge an invoice is for (its metadata names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceOf {
    Purchase(PurchaseId),
    Recharge(RechargeId),
}

/// What recording an invoice did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceRecorded {
    Recorded(Box<Receipt>),
    /// `unknown_purchase`, `unknown_recharge`, `currency_mismatch`, `amount_mismatch`,
    /// `payment_mismatch` (paid by another PaymentIntent than the purchase's): the invoice is
    /// not for what we recorded; `another_invoice_recorded`: the row keeps its own invoice.
    /// Nothing is written.
    Ignored(&'static str),
}

/// One line of `GET …/credits/purchases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurchaseListItem {
    pub purchase_id: String,
    pub kind: ReceiptKind,
    pub status: PurchaseStatus,
    /// The price before tax.
    pub charge: Charge,
    pub credits: i64,
    pub created_at: String,
    #[serde(flatten)]
    pub receipt: ReceiptFields,
}

/// A purchase's receipt and its money (rules §20): `subtotal` is the price before tax (what
/// the credits were granted for), `tax` and `total` are Stripe's once known (null while a
/// taxed purchase is unpaid), `receipt_url` and `invoice_pdf` once the invoice is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ReceiptFields {
    pub subtotal: i64,
    pub tax: Option<i64>,
    pub total: Option<i64>,
    pub receipt_url: Option<String>,
    pub invoice_pdf: Option<String>,
}

/// `GET …/credits/purchases`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurchasesPage {
    pub purchases: Vec<PurchaseListItem>,
    pub next_cursor: Option<String>,
}

/// `GET …/credits/purchases/{id}`: the purchase's status and its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurchaseReceiptView {
    #[serde(flatten)]
    pub status: PurchaseStatusView,
    #[serde(flatten)]
    pub receipt: ReceiptFields,
}

/// Cursors are opaque to clients: `r`, the row's time in hex, `.`, its id.
pub fn encode_receipt_cursor(k: &ReceiptKey) -> String {
    format!("r{:x}.{}", k.created_at, k.id)
}

pub fn decode_receipt_cursor(s: &str) -> Result<ReceiptKey, ApiError> {
    let bad = || ApiError::invalid("`cursor` is not a cursor this API returned.");
    let (t, id) = s.strip_prefix('r').and_then(|r| r.split_once('.')).ok_or_else(bad)?;
    let created_at =
        (!t.is_empty() && t.len() <= 15).then(|| i64::from_str_radix(t, 16).ok()).flatten().ok_or_else(bad)?;
    let id_ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(bad());
    }
    Ok(ReceiptKey { created_at, id: id.to_string() })
}

/// A purchase's receipt link, when its invoice is recorded; `None` for an unknown purchase.
pub async fn purchase_receipt_url<S: Store + ReceiptStore>(
    store: &S,
    account_id: &str,
    purchase_id: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    let Some(record) = store.load_purchase(account_id, purchase_id).await? else { return Ok(None) };
    let row = store.receipt(account_id, &purchase_row(&record).key()).await?;
    Ok(row.and_then(|r| r.invoice).and_then(|i| i.receipt_url))
}

fn purchase_row(p: &PurchaseRecord) -> Receipt {
    Receipt {
        account_id: p.account_id.clone(),
        id: p.purchase_id.to_string(),
        kind: ReceiptKind::Purchase,
        created_at: p.created_at,
        charge: p.charge.get(),
        currency: p.currency.clone(),
        credits: p.credits.get(),
        invoice: None,
        pending_invoice_id: None,
    }
}

fn recharge_row(r: &RechargeRecord) -> Receipt {
    Receipt {
        account_id: r.account_id.clone(),
        id: r.recharge_id.to_string(),
        kind: ReceiptKind::AutoRecharge,
        created_at: r.claimed_at,
        charge: r.charge_cents,
        currency: r.currency.clone(),
        credits: r.credits.get(),
        invoice: None,
        pending_invoice_id: None,
    }
}

/// The invoice is for the record's price: its subtotal is the price, in the record's currency,
/// and its total is the subtotal with a tax that is not negative.
fn invoice_matches(row: &Receipt, i: &Invoice) -> Result<(), &'static str> {
    if !i.currency.eq_ignore_ascii_case(&row.currency) {
        return Err("currency_mismatch");
    }
    if i.subtotal != row.charge || i.tax < 0 || i.subtotal.checked_add(i.tax) != Some(i.total) {
        return Err("amount_mismatch");
    }
    Ok(())
}

impl<S: Store + ReceiptStore, B: EventBus> Credits<S, B> {
    fn receipt_fields(&self, row: Option<&Receipt>, charge: i64) -> ReceiptFields {
        match row.and_then(|r| r.invoice.as_ref()) {
            Some(i) => ReceiptFields {
                subtotal: i.subtotal,
                tax: Some(i.tax),
                total: Some(i.total),
                receipt_url: i.receipt_url.clone(),
                invoice_pdf: i.invoice_pdf.clone(),
            },
            // Untaxed, the total is the price; taxed, Stripe says once paid.
            None if !self.profile.tax.automatic() => {
                ReceiptFields { subtotal: charge, tax: Some(0), total: Some(charge), ..ReceiptFields::default() }
            }
            None => ReceiptFields { subtotal: charge, ..ReceiptFields::default() },
        }
    }

    /// Lists a purchase (its row, if it has none yet), and points its payment at it once it
    /// has one. Idempotent.
    pub async fn list_purchase(&self, id: &str, purchase_id: &PurchaseId) -> Result<(), ApiError> {
        let record = self.purchase(id, purchase_id).await?;
        let row = purchase_row(&record);
        self.store.add_receipt(&row).await.map_err(upstream)?;
        if let Some(pi) = &record.payment_intent_id {
            self.store.link_payment(id, pi, &row.key()).await.map_err(upstream)?;
        }
        Ok(())
    }

    /// `invoice.paid` for a purchase or recharge of ours (rules §20): keeps its receipt. Only
    /// an invoice for the record's own price and currency is kept; another changes nothing.
    /// Any number of deliveries write the same row.
    pub async fn record_invoice(
        &self,
        id: &str,
        of: &InvoiceOf,
        invoice: &Invoice,
    ) -> Result<InvoiceRecorded, ApiError> {
        let (row, payment) = match of {
            InvoiceOf::Purchase(p) => match self.store.load_purchase(id, p.as_str()).await.map_err(upstream)? {
                Some(record) => (purchase_row(&record), record.payment_intent_id.clone()),
                None => return Ok(InvoiceRecorded::Ignored("unknown_purchase")),
            },
            InvoiceOf::Recharge(r) => match self.store.load_recharge(id, r.as_str()).await.map_err(upstream)? {
                Some(record) => (recharge_row(&record), None),
                None => return Ok(InvoiceRecorded::Ignored("unknown_recharge")),
            },
        };
        if let Err(reason) = invoice_matches(&row, invoice) {
            tracing::warn!(account_id = id, invoice_id = %invoice.invoice_id, reason, "an invoice that is not for what we recorded");
            return Ok(InvoiceRecorded::Ignored(reason));
        }
        // An invoice paid by another PaymentIntent than the one the record names is not its.
        if let (Some(paid_by), Some(ours)) = (invoice.payment_intent_id.as_deref(), payment.as_deref()) {
            if paid_by != ours {
                tracing::warn!(account_id = id, invoice_id = %invoice.invoice_id, paid_by, ours, "an invoice paid by another payment");
                return Ok(InvoiceRecorded::Ignored("payment_mismatch"));
            }
        }
        let mut invoice = invoice.clone();
        invoice.payment_intent_id = invoice.payment_intent_id.or(payment);
        let row = Receipt { invoice: Some(invoice), ..row };
        // A row records one invoice: another one never overwrites it.
        if !self.store.put_receipt(&row).await.map_err(upstream)? {
            tracing::warn!(account_id = id, of = %row.id, invoice_id = ?row.invoice.as_ref().map(|i| &i.invoice_id), "another invoice is already recorded for it");
            return Ok(InvoiceRecorded::Ignored("another_invoice_recorded"));
        }
        Ok(InvoiceRecorded::Recorded(Box::new(row)))
    }

    /// Invoices a credited auto-recharge (its `AutoRechargeSucceeded`): the invoice is for the
    /// amount its PaymentIntent took and is paid by it, so nothing is charged again; its row
    /// keeps the receipt. A recharge already invoiced is answered from its row, without
    /// Stripe. 503 `payment_provider_unavailable` when Stripe does not answer (the event is
    /// delivered again).
    pub async fn invoice_recharge<I: Invoicing>(
        &self,
        invoicing: &I,
        id: &str,
        recharge_id: &RechargeId,
        payment_intent_id: &str,
    ) -> Result<Receipt, ApiError> {
        let record =
            self.store.load_recharge(id, recharge_id.as_str()).await.map_err(upstream)?.ok_or_else(|| {
                ApiError::NotFound("recharge_not_found", "No auto-recharge with this id exists.".into())
            })?;
        let row = recharge_row(&record);
        let stored = self.store.receipt(id, &row.key()).await.map_err(upstream)?;
        if let Some(done) = &stored {
            if done.invoice.is_some() {
                return Ok(done.clone());
            }
        }
        // Listed, and its payment pointed at it, before Stripe is asked.
        self.store.add_receipt(&row).await.map_err(upstream)?;
        self.store.link_payment(id, payment_intent_id, &row.key()).await.map_err(upstream)?;
        let account = self.load(id).await?;
        let customer = account
            .stripe_customer_id
            .clone()
            .ok_or_else(|| ApiError::rule("no_customer", "The account has no Stripe customer to invoice."))?;
        let request = PaidInvoiceRequest {
            customer_id: customer,
            amount_cents: record.charge_cents,
            currency: record.currency.clone(),
            description: format!("Auto-recharge of {}", crate::pricing::format_credits(&self.profile, record.credits)),
            payment_intent_id: payment_intent_id.to_string(),
            idempotency_key: self.stripe_key("recharge-invoice", recharge_id.as_str()),
            metadata: self.stripe_metadata(
                id,
                &[("topup_recharge_id", recharge_id.as_str()), ("topup_payment_intent", payment_intent_id)],
            ),
        };
        // The invoice's id is kept before it is finalized or paid, so a retry (even after
        // Stripe forgot the idempotency keys) goes on with it instead of making another.
        let invoice_id = match stored.and_then(|r| r.pending_invoice_id) {
            Some(pending) => pending,
            None => {
                let made = invoicing.create_invoice(&request).await?;
                let pending = Receipt { pending_invoice_id: Some(made.clone()), ..row.clone() };
                if !self.store.put_receipt(&pending).await.map_err(upstream)? {
                    // Its invoice was recorded meanwhile (another delivery): that is the answer.
                    if let Some(done) = self.store.receipt(id, &row.key()).await.map_err(upstream)? {
                        return Ok(done);
                    }
                }
                made
            }
        };
        let invoice = match invoicing.pay_invoice(&request, &invoice_id).await? {
            Ok(invoice) => invoice,
            Err(reason) => {
                tracing::error!(account_id = id, recharge_id = %recharge_id, invoice_id, reason, "the recharge's payment could not pay its invoice; the invoice is void");
                return Err(ApiError::rule(reason, "The recharge's invoice was voided: its payment could not pay it."));
            }
        };
        match self.record_invoice(id, &InvoiceOf::Recharge(recharge_id.clone()), &invoice).await? {
            InvoiceRecorded::Recorded(row) => Ok(*row),
            InvoiceRecorded::Ignored(reason) => {
                tracing::error!(account_id = id, recharge_id = %recharge_id, reason, "Stripe's invoice for a recharge does not match it");
                Err(ApiError::Upstream)
            }
        }
    }

    /// `GET …/credits/purchases` (rules §20): purchases and auto-recharges newest first, `limit`
    /// a page, read by key from the cursor on. A purchase's status is its record's.
    pub async fn purchases_page(
        &self,
        id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<PurchasesPage, ApiError> {
        let before = cursor.map(decode_receipt_cursor).transpose()?;
        self.load(id).await?;
        let (rows, more) = self.store.receipts(id, limit, before.as_ref()).await.map_err(upstream)?;
        let records = futures_util::future::join_all(rows.iter().map(|r| async move {
            match r.kind {
                ReceiptKind::Purchase => self.store.load_purchase(id, &r.id).await.map(|p| p.map(|p| p.status)),
                // Only credited recharges are listed.
                ReceiptKind::AutoRecharge => Ok(Some(PurchaseStatus::Succeeded)),
            }
        }))
        .await;
        let mut purchases = Vec::with_capacity(rows.len());
        for (row, status) in rows.iter().zip(records) {
            let Some(status) = status.map_err(upstream)? else { continue };
            purchases.push(PurchaseListItem {
                purchase_id: row.id.clone(),
                kind: row.kind,
                status,
                charge: Charge { amount: row.charge, currency: row.currency.clone() },
                credits: row.credits,
                created_at: clock::rfc3339(row.created_at),
                receipt: self.receipt_fields(Some(row), row.charge),
            });
        }
        let next_cursor = if more { rows.last().map(|r| encode_receipt_cursor(&r.key())) } else { None };
        Ok(PurchasesPage { purchases, next_cursor })
    }

    /// `GET …/credits/purchases/{id}`: the status, with the receipt once paid.
    pub async fn purchase_receipt(&self, id: &str, purchase_id: &PurchaseId) -> Result<PurchaseReceiptView, ApiError> {
        let record = self.purchase(id, purchase_id).await?;
        let status = self.purchase_status(id, purchase_id).await?;
        let row = self.store.receipt(id, &purchase_row(&record).key()).await.map_err(upstream)?;
        Ok(PurchaseReceiptView { status, receipt: self.receipt_fields(row.as_ref(), record.charge.get()) })
    }

    /// `GET …/credits/purchases/{id}` for an auto-recharge's id (`rch_…`), as the list shows
    /// it: one is listed once it is credited and invoiced, and is 404 until then.
    pub async fn recharge_receipt(&self, id: &str, recharge_id: &str) -> Result<PurchaseListItem, ApiError> {
        let missing = || ApiError::NotFound("purchase_not_found", "No purchase with this id exists.".into());
        let record = self.store.load_recharge(id, recharge_id).await.map_err(upstream)?.ok_or_else(missing)?;
        let row = self.store.receipt(id, &recharge_row(&record).key()).await.map_err(upstream)?.ok_or_else(missing)?;
        Ok(PurchaseListItem {
            purchase_id: row.id.clone(),
            kind: row.kind,
            status: PurchaseStatus::Succeeded,
            charge: Charge { amount: row.charge, currency: row.currency.clone() },
            credits: row.credits,
            created_at: clock::rfc3339(row.created_at),
            receipt: self.receipt_fields(Some(&row), row.charge),
        })
    }

    /// A purchase's receipt, when its invoice is recorded (the purchase-succeeded email).
    pub async fn purchase_receipt_url(&self, id: &str, purchase_id: &str) -> Result<Option<String>, ApiError> {
        purchase_receipt_url(&self.store, id, purchase_id).await.map_err(upstream)
    }

    /// What the customer paid for a credited payment, tax included, for a dispute's share
    /// (rules §20): what its claim kept when it was credited (a purchase's session total), else
    /// the invoice's total once recorded; `None` for a payment the receipts layer
    /// never saw (from before it, or untaxed and not invoiced yet), whose charge was its price.
    /// A taxed purchase whose invoice is not recorded yet is 409 `receipt_not_recorded_yet`:
    /// its share cannot be told yet, and Stripe delivers the event again.
    pub async fn charged_total(&self, id: &str, payment_intent_id: &str) -> Result<Option<i64>, ApiError> {
        // What the payment's claim kept of the customer's payment answers without the invoice.
        let claim = self.store.load_idempotency(id, &format!("payment:{payment_intent_id}")).await.map_err(upstream)?;
        if let Some(total) = claim.and_then(|c| c.credited).and_then(|c| c.paid_total) {
            return Ok(Some(total));
        }
        let row = self.store.receipt_of_payment(id, payment_intent_id).await.map_err(upstream)?;
        match row {
            Some(Receipt { invoice: Some(i), .. }) => Ok(Some(i.total)),
            Some(r) if r.kind == ReceiptKind::Purchase && self.profile.tax.automatic() => Err(ApiError::OutOfOrder(
                "receipt_not_recorded_yet",
                "This payment's invoice has not been recorded yet; deliver it again later.".into(),
            )),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
