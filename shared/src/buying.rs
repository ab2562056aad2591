//! Buying credits and saving a card through Stripe (SPEC §5, §7): the steps that call Stripe
//! around the ledger's own writes. Every Stripe call that creates something carries an
//! idempotency key derived from our record, so a retried request meets the object it made
//! the first time instead of making another.

use serde_json::{json, Value};

use crate::account::PaymentMethod;
use crate::error::ApiError;
use crate::events::EventBus;
use crate::payments::{CheckoutRequest, CheckoutUi, Purchases};
use crate::pricing::PurchaseChoice;
use crate::purchase::PurchaseStatus;
use crate::service::Credits;
use crate::store::Store;

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The account's Stripe customer, created the first time it is needed (one idempotency key
    /// per account, so concurrent first purchases share one customer).
    pub async fn ensure_customer<P: Purchases>(&self, payments: &P, id: &str) -> Result<String, ApiError> {
        // A recorded customer never changes (`set_customer` keeps the first), so this process's
        // last state of the account answers without a read; a purchase has just read it.
        if let Some(c) = self.cached(id).and_then(|a| a.stripe_customer_id) {
            return Ok(c);
        }
        let account = self.account(id).await?;
        if let Some(c) = account.stripe_customer_id {
            return Ok(c);
        }
        let email = account.contacts.first().map(|c| c.email.clone());
        let customer = payments.create_customer(id, email.as_deref()).await?;
        self.set_customer(id, &customer).await
    }

    /// `POST .../credits/purchases`: records the pending purchase (priced here, never by the
    /// client), then opens its Checkout Session. If Stripe cannot be reached the purchase stays
    /// `pending` with no session, so nothing can ever pay for it and nothing can credit; the
    /// client's retry with the same `Idempotency-Key` picks it up and opens the session.
    pub async fn start_purchase<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        choice: &PurchaseChoice,
        key: Option<&str>,
        ui: &CheckoutUi,
    ) -> Result<(u16, Value), ApiError> {
        let (status, record) = self.record_purchase(id, choice, key).await?;
        if record.status != PurchaseStatus::Pending {
            // A retry after the purchase completed: its outcome, no new session.
            return Ok((status, record.to_json()));
        }
        let customer = self.ensure_customer(payments, id).await?;
        let request = CheckoutRequest {
            customer_id: customer,
            amount_cents: record.charge.0,
            currency: record.currency.clone(),
            description: record.description.clone(),
            reference: record.purchase_id.clone(),
            ui: ui.clone(),
            idempotency_key: format!("topup-checkout-{}", record.purchase_id),
            metadata: vec![
                ("topup_account_id".into(), id.to_string()),
                ("topup_purchase_id".into(), record.purchase_id.clone()),
            ],
        };
        let session = payments.create_checkout(&request).await?;
        let record = self.attach_checkout(id, &record.purchase_id, &session.id).await?;
        let mut body = record.to_json();
        body["client_secret"] = json!(session.client_secret);
        body["url"] = json!(session.url);
        Ok((201, body))
    }

    /// `POST .../payment-method/setup`: a SetupIntent (`usage=off_session`) for the customer;
    /// no charge. The card becomes the default when `setup_intent.succeeded` arrives.
    pub async fn start_card_setup<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        key: Option<&str>,
    ) -> Result<(u16, Value), ApiError> {
        let customer = self.ensure_customer(payments, id).await?;
        // Stripe's keys are at most 255 characters: the client's key (up to 255 itself) is hashed.
        let key = match key {
            Some(k) => {
                use sha2::{Digest, Sha256};
                let digest = Sha256::digest(format!("{id}\u{0}{k}").as_bytes());
                let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
                format!("topup-setup-{hex}")
            }
            None => crate::ledger::new_id("topup-setup"),
        };
        let setup = payments.create_card_setup(&customer, id, &key).await?;
        Ok((201, json!({"setup_intent_id": setup.id, "client_secret": setup.client_secret})))
    }

    /// `setup_intent.succeeded`: the card it saved becomes the account's default payment method.
    /// Anything but a card is logged and left alone.
    pub async fn card_saved<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        payment_method_id: &str,
        customer_id: Option<&str>,
    ) -> Result<Value, ApiError> {
        let Some(card) = payments.card(payment_method_id).await? else {
            tracing::warn!(account_id = id, payment_method_id, "saved payment method is not a card; ignored");
            return Ok(Value::Null);
        };
        let customer = customer_id.map(str::to_string).or(card.customer_id.clone());
        let method = PaymentMethod {
            id: card.id,
            brand: card.brand,
            last4: card.last4,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        };
        self.save_card(id, method, customer.as_deref()).await
    }

    /// `DELETE .../payment-method`: forgets the default card (turning auto-recharge off with
    /// it), then detaches it from the Stripe customer. Our record is what every charge reads,
    /// so a detach that fails is logged and does not undo the removal.
    pub async fn forget_card<P: Purchases>(&self, payments: &P, id: &str) -> Result<(u16, Value), ApiError> {
        if let Some(pm) = self.remove_card(id).await? {
            if let Err(e) = payments.detach(&pm).await {
                tracing::warn!(account_id = id, error = %e, "card removed here but not detached in Stripe");
            }
        }
        Ok((200, json!({"payment_method": null})))
    }
}
