//! The Stripe adapter of `receipts::Invoicing` (rules §20): invoices for payments already made.
//!
//! async-stripe's object crate for invoices is not in the tree (it is large); these requests go
//! through the same client (its key, retries and idempotency keys) with the request builder of
//! `async-stripe-client-core`, and the answers are read into our own small types
//! (`receipts::Invoice::from_stripe`), so an invoice rendered at another API version reads.
//!
//! An auto-recharge's invoice, each step with its own idempotency key derived from the recharge:
//! 1. `POST /v1/invoices` `customer`, `currency`, `collection_method=charge_automatically`,
//!    `auto_advance=false` (Stripe never tries to collect it), `description`, `metadata`;
//! 2. `POST /v1/invoiceitems` `customer`, `invoice`, `amount`, `currency`, `description`: the
//!    one line, for what the PaymentIntent took;
//! 3. `POST /v1/invoices/{id}/finalize` `auto_advance=false`;
//! 4. `POST /v1/invoices/{id}/attach_payment` `payment_intent`: the recharge's succeeded
//!    PaymentIntent pays it (Stripe credits a succeeded one at once and marks the invoice paid),
//!    so the invoice never charges the card a second time.
//!
//! The invoice's id is kept on the recharge's receipt row right after step 1 (rules §20), so a
//! retry, even after Stripe forgot the idempotency keys (about a day), goes on with that
//! invoice from where it is: a draft gets its line if it has none and is finalized, an open one
//! is attached, a paid one is read. An open invoice whose attach Stripe refuses (a 4xx other
//! than 429) is voided (`POST /v1/invoices/{id}/void`), so neither the customer nor the
//! dashboard can pay it; the recharge is then left without an invoice, and logged.

use serde_json::Value;
use stripe::{IdempotencyKey, RequestStrategy, StripeError};
use stripe_client_core::{RequestBuilder, StripeMethod};

use super::stripe::StripePayments;
use crate::payments::PaymentsUnavailable;
use crate::receipts::{Invoice, Invoicing, PaidInvoiceRequest};

fn form(pairs: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn unavailable(what: &str, e: StripeError) -> PaymentsUnavailable {
    PaymentsUnavailable(format!("{what}: {e}"))
}

impl StripePayments {
    /// One request to Stripe's API; its JSON answer.
    async fn call(
        &self,
        method: StripeMethod,
        path: &str,
        body: Option<String>,
        key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let mut b = RequestBuilder::new(method, path);
        b.body = body;
        let mut req = b.customize::<miniserde::json::Value>();
        if let Some(k) = key {
            let key = IdempotencyKey::new(k).map_err(|e| StripeError::ClientError(e.to_string()))?;
            req = req.request_strategy(RequestStrategy::Idempotent(key));
        }
        let answer = req.send(&self.client().await.map_err(|e| StripeError::ClientError(e.0))?).await?;
        serde_json::from_str(&miniserde::json::to_string(&answer))
            .map_err(|e| StripeError::JSONDeserialize(e.to_string()))
    }

    async fn invoice_by_id(&self, id: &str) -> Result<Value, PaymentsUnavailable> {
        self.call(StripeMethod::Get, &format!("/invoices/{id}"), None, None)
            .await
            .map_err(|e| unavailable("invoice", e))
    }
}

impl Invoicing for StripePayments {
    async fn create_invoice(&self, r: &PaidInvoiceRequest) -> Result<String, PaymentsUnavailable> {
        let mut create = vec![
            ("customer", r.customer_id.clone()),
            ("currency", r.currency.clone()),
            ("collection_method", "charge_automatically".to_string()),
            ("auto_advance", "false".to_string()),
            ("description", r.description.clone()),
        ];
        let meta: Vec<(String, String)> =
            r.metadata.iter().map(|(mk, v)| (format!("metadata[{mk}]"), v.clone())).collect();
        create.extend(meta.iter().map(|(mk, v)| (mk.as_str(), v.clone())));
        let key = format!("{}-invoice", r.idempotency_key);
        let draft = self
            .call(StripeMethod::Post, "/invoices", Some(form(&create)), Some(&key))
            .await
            .map_err(|e| unavailable("create invoice", e))?;
        draft["id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| PaymentsUnavailable("invoice without id".into()))
    }

    async fn pay_invoice(
        &self,
        r: &PaidInvoiceRequest,
        id: &str,
    ) -> Result<Result<Invoice, &'static str>, PaymentsUnavailable> {
        let k = &r.idempotency_key;
        let mut current = self.invoice_by_id(id).await?;
        if current["status"] == "draft" {
            let has_line = current["lines"]["data"].as_array().is_some_and(|l| !l.is_empty());
            if !has_line {
                let item = [
                    ("customer", r.customer_id.clone()),
                    ("invoice", id.to_string()),
                    ("amount", r.amount_cents.to_string()),
                    ("currency", r.currency.clone()),
                    ("description", r.description.clone()),
                ];
                self.call(StripeMethod::Post, "/invoiceitems", Some(form(&item)), Some(&format!("{k}-item")))
                    .await
                    .map_err(|e| unavailable("invoice item", e))?;
            }
            let body = form(&[("auto_advance", "false".to_string())]);
            self.call(
                StripeMethod::Post,
                &format!("/invoices/{id}/finalize"),
                Some(body),
                Some(&format!("{k}-finalize")),
            )
            .await
            .map_err(|e| unavailable("finalize invoice", e))?;
            current = self.invoice_by_id(id).await?;
        }
        if current["status"] == "open" {
            let body = form(&[("payment_intent", r.payment_intent_id.clone())]);
            let attached = self
                .call(
                    StripeMethod::Post,
                    &format!("/invoices/{id}/attach_payment"),
                    Some(body),
                    Some(&format!("{k}-attach")),
                )
                .await;
            match attached {
                Ok(_) => {}
                // Stripe refused the payment for this invoice (not a network failure or a
                // rate limit): it is voided, so the open invoice cannot collect anything.
                Err(StripeError::Stripe(api, status)) if (400..500).contains(&status) && status != 429 => {
                    tracing::error!(invoice_id = id, status, error = ?api, "attach refused; voiding the invoice");
                    self.call(StripeMethod::Post, &format!("/invoices/{id}/void"), None, Some(&format!("{k}-void")))
                        .await
                        .map_err(|e| unavailable("void invoice", e))?;
                    return Ok(Err("invoice_void"));
                }
                Err(e) => return Err(unavailable("attach payment", e)),
            }
            current = self.invoice_by_id(id).await?;
        }
        if current["status"] == "void" {
            return Ok(Err("invoice_void"));
        }
        let mut invoice =
            Invoice::from_stripe(&current).map_err(|why| PaymentsUnavailable(format!("invoice {id}: {why}")))?;
        invoice.payment_intent_id = Some(r.payment_intent_id.clone());
        Ok(Ok(invoice))
    }
}
