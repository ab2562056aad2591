//! The Stripe adapter of `Payments`, `Purchases` and `PaymentHistory`, over async-stripe.

use std::collections::HashMap;
use std::str::FromStr;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionAutomaticTax, CreateCheckoutSessionCustomerUpdate,
    CreateCheckoutSessionCustomerUpdateAddress, CreateCheckoutSessionInvoiceCreation,
    CreateCheckoutSessionInvoiceCreationInvoiceData, CreateCheckoutSessionLineItems,
    CreateCheckoutSessionLineItemsPriceData, CreateCheckoutSessionLineItemsPriceDataTaxBehavior,
    CreateCheckoutSessionPaymentIntentData, ProductData,
};
use stripe_core::customer::CreateCustomer;
use stripe_core::refund::CreateRefund;
use stripe_core::payment_intent::{
    CancelPaymentIntent, CreatePaymentIntent, CreatePaymentIntentOffSession, ListPaymentIntent, RetrievePaymentIntent,
};
use stripe_core::setup_intent::{CreateSetupIntent, CreateSetupIntentUsage};
use stripe_core::PaymentIntentStatus;
use stripe_payment::payment_method::{DetachPaymentMethod, RetrievePaymentMethod};
use stripe_shared::{
    ApiErrorsType, CheckoutSessionBillingAddressCollection, CheckoutSessionMode, CheckoutSessionUiMode,
};

use std::sync::{Arc, Mutex};

use crate::adapters::secrets::SecretSource;
use crate::payments::*;
use crate::secret::Secret;

pub struct StripePayments {
    keys: Keys,
    base_url: Option<String>,
}

/// A fixed key (tests, tools), or the deployment's key from Secrets Manager, with a client
/// built again when the key rotates.
enum Keys {
    Fixed(Client),
    Rotating { source: Arc<SecretSource>, current: Mutex<Option<(Secret, Client)>> },
}

fn build(secret: &Secret, base_url: Option<&str>) -> Result<Client, PaymentsUnavailable> {
    let mut b = ClientBuilder::new(secret.expose());
    if let Some(url) = base_url {
        b = b.url(url);
    }
    b.build().map_err(|e| PaymentsUnavailable(e.to_string()))
}

impl StripePayments {
    /// A client with a fixed key; `base_url` points it at another Stripe API (the local emulator).
    pub fn new(secret: &Secret, base_url: Option<&str>) -> Result<Self, PaymentsUnavailable> {
        Ok(StripePayments { keys: Keys::Fixed(build(secret, base_url)?), base_url: base_url.map(str::to_string) })
    }

    /// A client whose key comes from `source` (read at init, cached, picked up again when it
    /// rotates).
    pub fn rotating(source: Arc<SecretSource>, base_url: Option<&str>) -> Self {
        StripePayments {
            keys: Keys::Rotating { source, current: Mutex::new(None) },
            base_url: base_url.map(str::to_string),
        }
    }

    /// The client for the current key.
    pub async fn client(&self) -> Result<Client, PaymentsUnavailable> {
        match &self.keys {
            Keys::Fixed(c) => Ok(c.clone()),
            Keys::Rotating { source, current } => {
                let secrets = source.get().await.map_err(|e| PaymentsUnavailable(e.to_string()))?;
                let mut current = current.lock().map_err(|_| PaymentsUnavailable("client lock poisoned".into()))?;
                match current.as_ref() {
                    Some((key, client)) if key.expose() == secrets.secret_key.expose() => Ok(client.clone()),
                    _ => {
                        let client = build(&secrets.secret_key, self.base_url.as_deref())?;
                        *current = Some((secrets.secret_key, client.clone()));
                        Ok(client)
                    }
                }
            }
        }
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, PaymentsUnavailable> {
    IdempotencyKey::new(key).map(RequestStrategy::Idempotent).map_err(|e| PaymentsUnavailable(e.to_string()))
}

fn unavailable(e: StripeError) -> PaymentsUnavailable {
    PaymentsUnavailable(e.to_string())
}

/// A Stripe error of a charge: a card outcome (`card_error`: a decline, an expired card,
/// insufficient funds, `authentication_required`) is the customer's and final for this payment;
/// anything else is ours or Stripe's (authentication or permission, a request Stripe refused
/// that is not about the card, idempotency, rate limits, 5xx, the network) and never the
/// customer's: the claim stays in flight for a retry, and nobody is told their card failed.
fn classify(e: StripeError) -> Result<ChargeOutcome, PaymentsUnavailable> {
    match e {
        StripeError::Stripe(api, _) if api.type_ == ApiErrorsType::CardError => Ok(ChargeOutcome::Failed {
            payment_intent_id: api.payment_intent.as_ref().map(|pi| pi.id.to_string()),
            code: api.code.as_ref().map_or("card_error", |c| c.as_str()).to_string(),
            decline_code: api.decline_code.clone(),
            message: api.message.clone().unwrap_or_else(|| "The payment was declined.".into()),
        }),
        StripeError::Stripe(api, status) => {
            Err(PaymentsUnavailable(format!("stripe answered {status} {}", api.type_.as_str())))
        }
        other => Err(PaymentsUnavailable(other.to_string())),
    }
}

impl Payments for StripePayments {
    async fn create_customer(&self, c: &NewCustomer) -> Result<String, PaymentsUnavailable> {
        let mut req = CreateCustomer::new().metadata(c.metadata.iter().cloned().collect::<HashMap<_, _>>());
        if let Some(e) = &c.email {
            req = req.email(e);
        }
        let strategy = idempotent(&c.idempotency_key)?;
        let customer = req
            .customize()
            .request_strategy(strategy)
            .send(&self.client().await?)
            .await
            .map_err(|e| PaymentsUnavailable(e.to_string()))?;
        Ok(customer.id.to_string())
    }

    async fn charge_off_session(&self, c: &OffSessionCharge) -> Result<ChargeOutcome, PaymentsUnavailable> {
        let currency = stripe_types::Currency::from_str(&c.currency)
            .map_err(|_| PaymentsUnavailable(format!("unknown currency {}", c.currency)))?;
        let req = CreatePaymentIntent::new(c.amount_cents, currency)
            .customer(c.customer_id.clone())
            .payment_method(c.payment_method_id.clone())
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(c.metadata.iter().cloned().collect::<HashMap<_, _>>());
        let strategy = idempotent(&c.idempotency_key)?;
        let pi = match req.customize().request_strategy(strategy).send(&self.client().await?).await {
            Ok(pi) => pi,
            Err(e) => return classify(e),
        };
        let id = pi.id.to_string();
        Ok(match pi.status {
            PaymentIntentStatus::Succeeded => ChargeOutcome::Succeeded { payment_intent_id: id },
            PaymentIntentStatus::Processing => ChargeOutcome::Processing { payment_intent_id: id },
            PaymentIntentStatus::RequiresAction => ChargeOutcome::Failed {
                payment_intent_id: Some(id),
                code: "authentication_required".into(),
                decline_code: None,
                message: "Your bank asked to confirm this payment, which can't be done while you're away.".into(),
            },
            other => ChargeOutcome::Failed {
                payment_intent_id: Some(id),
                code: other.as_str().to_string(),
                decline_code: pi.last_payment_error.as_ref().and_then(|e| e.decline_code.clone()),
                message: pi
                    .last_payment_error
                    .as_ref()
                    .and_then(|e| e.message.clone())
                    .unwrap_or_else(|| "The payment did not go through.".into()),
            },
        })
    }

    async fn cancel_payment(&self, payment_intent_id: &str, key: &str) -> Result<CancelOutcome, PaymentsUnavailable> {
        let strategy = idempotent(key)?;
        let sent = CancelPaymentIntent::new(payment_intent_id)
            .customize()
            .request_strategy(strategy)
            .send(&self.client().await?)
            .await;
        match sent {
            Ok(_) => Ok(CancelOutcome::Canceled),
            Err(StripeError::Stripe(..)) => self.after_refused_cancel(payment_intent_id).await,
            Err(e) => Err(unavailable(e)),
        }
    }
}

impl StripePayments {
    /// A PaymentIntent Stripe would not cancel: cancelled already, or past it (succeeded,
    /// processing); read to tell which. One still in a cancellable state is an error of ours or
    /// Stripe's, retried.
    async fn after_refused_cancel(&self, payment_intent_id: &str) -> Result<CancelOutcome, PaymentsUnavailable> {
        let pi =
            RetrievePaymentIntent::new(payment_intent_id).send(&self.client().await?).await.map_err(unavailable)?;
        match pi.status {
            PaymentIntentStatus::Canceled => Ok(CancelOutcome::Canceled),
            PaymentIntentStatus::Succeeded => Ok(CancelOutcome::Succeeded),
            PaymentIntentStatus::Processing => Ok(CancelOutcome::Processing),
            other => Err(PaymentsUnavailable(format!("cancel refused for a PaymentIntent in {}", other.as_str()))),
        }
    }
}

impl Purchases for StripePayments {
    async fn create_checkout(&self, r: &CheckoutRequest) -> Result<CheckoutSession, PaymentsUnavailable> {
        let currency = stripe_types::Currency::from_str(&r.currency)
            .map_err(|_| PaymentsUnavailable(format!("unknown currency {}", r.currency)))?;
        let metadata: HashMap<String, String> = r.metadata.iter().cloned().collect();
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(currency);
        price.unit_amount = Some(r.amount_cents);
        price.product_data = Some(ProductData {
            description: None,
            images: None,
            metadata: None,
            name: r.description.clone(),
            tax_code: None,
            tax_details: None,
            unit_label: None,
        });
        if r.tax.automatic() {
            // The price is before tax; Stripe Tax adds tax on top (rules §20).
            price.tax_behavior = Some(CreateCheckoutSessionLineItemsPriceDataTaxBehavior::Exclusive);
        }
        let mut line = CreateCheckoutSessionLineItems::new();
        line.price_data = Some(price);
        line.quantity = Some(1);
        let mut intent = CreateCheckoutSessionPaymentIntentData::new();
        intent.metadata = Some(metadata.clone());
        intent.description = Some(r.description.clone());
        // Every purchase has an invoice (rules §20): Checkout makes it, paid, with our metadata
        // so its `invoice.paid` finds the purchase; its hosted page is the receipt.
        let mut invoice_data = CreateCheckoutSessionInvoiceCreationInvoiceData::new();
        invoice_data.metadata = Some(metadata.clone());
        invoice_data.description = Some(r.description.clone());
        let mut invoice = CreateCheckoutSessionInvoiceCreation::new(true);
        invoice.invoice_data = Some(invoice_data);
        let mut req = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
            .customer(r.customer_id.clone())
            .client_reference_id(r.reference.clone())
            .line_items(vec![line])
            .payment_intent_data(intent)
            .invoice_creation(invoice)
            .metadata(metadata);
        if r.tax.automatic() {
            // Checkout collects the billing address Stripe Tax needs and keeps it on the
            // customer, so its receipts and later invoices carry it.
            let mut update = CreateCheckoutSessionCustomerUpdate::new();
            update.address = Some(CreateCheckoutSessionCustomerUpdateAddress::Auto);
            req = req
                .automatic_tax(CreateCheckoutSessionAutomaticTax::new(true))
                .billing_address_collection(CheckoutSessionBillingAddressCollection::Required)
                .customer_update(update);
        }
        req = match &r.ui {
            CheckoutUi::Embedded { return_url } => {
                req.ui_mode(CheckoutSessionUiMode::EmbeddedPage).return_url(return_url.clone())
            }
            CheckoutUi::Hosted { success_url, cancel_url } => req
                .ui_mode(CheckoutSessionUiMode::HostedPage)
                .success_url(success_url.clone())
                .cancel_url(cancel_url.clone()),
        };
        let session = req
            .customize()
            .request_strategy(idempotent(&r.idempotency_key)?)
            .send(&self.client().await?)
            .await
            .map_err(unavailable)?;
        Ok(CheckoutSession { id: session.id.to_string(), client_secret: session.client_secret, url: session.url })
    }

    async fn create_card_setup(&self, r: &CardSetupRequest) -> Result<CardSetup, PaymentsUnavailable> {
        let intent = CreateSetupIntent::new()
            .customer(r.customer_id.as_str())
            .usage(CreateSetupIntentUsage::OffSession)
            .metadata(r.metadata.iter().cloned().collect::<HashMap<_, _>>())
            .customize()
            .request_strategy(idempotent(&r.idempotency_key)?)
            .send(&self.client().await?)
            .await
            .map_err(unavailable)?;
        let client_secret =
            intent.client_secret.ok_or_else(|| PaymentsUnavailable("SetupIntent without client_secret".into()))?;
        Ok(CardSetup { id: intent.id.to_string(), client_secret })
    }

    async fn card(&self, payment_method_id: &str) -> Result<Option<Card>, PaymentsUnavailable> {
        let pm =
            RetrievePaymentMethod::new(payment_method_id).send(&self.client().await?).await.map_err(unavailable)?;
        let customer = pm.customer.as_ref().map(|c| c.id().to_string());
        Ok(pm.card.map(|c| Card {
            id: pm.id.to_string(),
            customer_id: customer,
            brand: c.brand,
            last4: c.last4,
            exp_month: u32::try_from(c.exp_month).unwrap_or(0),
            exp_year: u32::try_from(c.exp_year).unwrap_or(0),
        }))
    }

    async fn detach(&self, payment_method_id: &str) -> Result<(), PaymentsUnavailable> {
        DetachPaymentMethod::new(payment_method_id).send(&self.client().await?).await.map(|_| ()).map_err(unavailable)
    }

    async fn payment_metadata(&self, payment_intent_id: &str) -> Result<HashMap<String, String>, PaymentsUnavailable> {
        let pi =
            RetrievePaymentIntent::new(payment_intent_id).send(&self.client().await?).await.map_err(unavailable)?;
        Ok(pi.metadata)
    }

    async fn refund(&self, r: &RefundRequest) -> Result<RefundOutcome, PaymentsUnavailable> {
        let mut req = CreateRefund::new()
            .payment_intent(r.payment_intent_id.clone())
            .metadata(r.metadata.iter().cloned().collect::<HashMap<_, _>>());
        if let Some(a) = r.amount_cents {
            req = req.amount(a);
        }
        let sent = req.customize().request_strategy(idempotent(&r.idempotency_key)?).send(&self.client().await?).await;
        match sent {
            Ok(refund) => Ok(RefundOutcome::Made {
                refund_id: refund.id.to_string(),
                amount_cents: refund.amount,
                status: refund.status.unwrap_or_else(|| "pending".into()),
            }),
            // Stripe refused the request itself (400: nothing left to refund, a payment that
            // cannot be refunded): final, and the person who asked is told why.
            Err(StripeError::Stripe(api, 400)) => {
                Ok(RefundOutcome::Refused { message: api.message.unwrap_or_else(|| "Stripe refused the refund.".into()) })
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

impl PaymentHistory for StripePayments {
    async fn customer_payments(&self, customer_id: &str) -> Result<Vec<PaymentRecord>, PaymentsUnavailable> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = ListPaymentIntent::new()
                .customer(customer_id)
                .limit(100)
                .expand(vec!["data.latest_charge".to_string()]);
            if let Some(a) = &after {
                req = req.starting_after(a.clone());
            }
            let page = req.send(&self.client().await?).await.map_err(unavailable)?;
            for pi in &page.data {
                let (refunded, disputed) = match &pi.latest_charge {
                    None => (0, false),
                    Some(charge) => match charge.as_object() {
                        Some(c) => (c.amount_refunded, c.disputed),
                        // Asked for expanded: an id alone means the answer cannot be trusted.
                        None => return Err(PaymentsUnavailable(format!("charge of {} not expanded", pi.id))),
                    },
                };
                out.push(PaymentRecord {
                    id: pi.id.to_string(),
                    status: pi.status.as_str().to_string(),
                    amount: pi.amount,
                    amount_refunded: refunded,
                    disputed,
                    currency: pi.currency.to_string(),
                    created: pi.created,
                    metadata: pi.metadata.clone(),
                });
            }
            match page.data.last() {
                Some(last) if page.has_more => after = Some(last.id.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}
