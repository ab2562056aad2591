//! Charging a saved card through Stripe (SPEC §7, §8), behind a small trait so the domain never
//! sees Stripe's types. Every call that creates something carries an idempotency key derived
//! from our own record (a recharge claim, an account), so a retry — or a recovery after the
//! caller died — gets the first result back instead of a second charge.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    CreateCheckoutSessionPaymentIntentData, ProductData,
};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{
    CreatePaymentIntent, CreatePaymentIntentOffSession, ListPaymentIntent, RetrievePaymentIntent,
};
use stripe_core::setup_intent::{CreateSetupIntent, CreateSetupIntentUsage};
use stripe_core::PaymentIntentStatus;
use stripe_payment::payment_method::{DetachPaymentMethod, RetrievePaymentMethod};
use stripe_shared::{CheckoutSessionMode, CheckoutSessionUiMode};

use crate::config::Secret;

/// How an off-session charge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        payment_intent_id: String,
    },
    /// Settles later; `payment_intent.succeeded` or `.payment_failed` will tell.
    Processing {
        payment_intent_id: String,
    },
    /// A decline, `authentication_required`, or a PaymentIntent left needing the customer.
    Failed {
        payment_intent_id: Option<String>,
        code: String,
        decline_code: Option<String>,
        message: String,
    },
}

/// Stripe could not be reached or failed on its side: the same call may be retried (with the
/// same idempotency key).
#[derive(Debug, Clone, thiserror::Error)]
#[error("stripe unavailable: {0}")]
pub struct PaymentsUnavailable(pub String);

/// A request that could not reach Stripe answers 503 `payment_provider_unavailable`. Stripe's
/// error text stays in the log, never in a response.
impl From<PaymentsUnavailable> for crate::error::ApiError {
    fn from(e: PaymentsUnavailable) -> Self {
        tracing::error!(error = %e, "stripe call failed");
        crate::error::ApiError::PaymentsUnavailable
    }
}

/// A charge of a saved card with nobody present.
#[derive(Debug, Clone)]
pub struct OffSessionCharge {
    pub customer_id: String,
    pub payment_method_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

/// How the customer sees Checkout: embedded in the billing page (`client_secret`) or on
/// Stripe's hosted page (`url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutUi {
    Embedded { return_url: String },
    Hosted { success_url: String, cancel_url: String },
}

/// A Checkout Session for one purchase.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The line's name on the payment page and the receipt.
    pub description: String,
    /// `client_reference_id`: the purchase id.
    pub reference: String,
    pub ui: CheckoutUi,
    pub idempotency_key: String,
    /// On the session and on its PaymentIntent (so refunds and disputes find the account).
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub client_secret: Option<String>,
    pub url: Option<String>,
}

/// A SetupIntent that saves a card for later off-session charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSetup {
    pub id: String,
    pub client_secret: String,
}

/// A saved card as the credits view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub id: String,
    pub customer_id: Option<String>,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

pub trait Payments: Send + Sync {
    /// Creates the Stripe customer of an account (idempotent per account).
    fn create_customer(
        &self,
        account_id: &str,
        email: Option<&str>,
    ) -> impl Future<Output = Result<String, PaymentsUnavailable>> + Send;
    fn charge_off_session(
        &self,
        charge: &OffSessionCharge,
    ) -> impl Future<Output = Result<ChargeOutcome, PaymentsUnavailable>> + Send;
}

/// What buying credits and saving a card need besides charging: Checkout Sessions,
/// SetupIntents and the cards they save.
pub trait Purchases: Payments {
    /// Creates (or, for a repeated idempotency key, returns again) a Checkout Session.
    fn create_checkout(
        &self,
        request: &CheckoutRequest,
    ) -> impl Future<Output = Result<CheckoutSession, PaymentsUnavailable>> + Send;
    /// A SetupIntent (`usage=off_session`) for the customer; no charge.
    fn create_card_setup(
        &self,
        customer_id: &str,
        account_id: &str,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<CardSetup, PaymentsUnavailable>> + Send;
    /// The card behind a payment method; `None` when it is not a card.
    fn card(&self, payment_method_id: &str) -> impl Future<Output = Result<Option<Card>, PaymentsUnavailable>> + Send;
    /// Detaches a saved payment method from its customer.
    fn detach(&self, payment_method_id: &str) -> impl Future<Output = Result<(), PaymentsUnavailable>> + Send;
    /// A PaymentIntent's metadata (who it was for).
    fn payment_metadata(
        &self,
        payment_intent_id: &str,
    ) -> impl Future<Output = Result<HashMap<String, String>, PaymentsUnavailable>> + Send;
}

/// A PaymentIntent as Stripe records it, for reconciliation (who paid what, what was refunded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: String,
    /// Stripe's status: `succeeded`, `processing`, `requires_payment_method`, ...
    pub status: String,
    /// What was charged, in minor units.
    pub amount: i64,
    /// Stripe's running total of refunds on the payment's charge.
    pub amount_refunded: i64,
    pub currency: String,
    /// Unix seconds.
    pub created: i64,
    pub metadata: HashMap<String, String>,
}

/// Stripe's side of the books: every payment of a customer (SPEC §10.2 is checked against it).
pub trait PaymentHistory: Send + Sync {
    fn customer_payments(
        &self,
        customer_id: &str,
    ) -> impl Future<Output = Result<Vec<PaymentRecord>, PaymentsUnavailable>> + Send;
}

pub struct StripePayments {
    client: Client,
}

impl StripePayments {
    /// `base_url` points the client at another Stripe API (the local emulator).
    pub fn new(secret: &Secret, base_url: Option<&str>) -> Result<Self, PaymentsUnavailable> {
        let mut b = ClientBuilder::new(secret.expose());
        if let Some(url) = base_url {
            b = b.url(url);
        }
        b.build().map(|client| StripePayments { client }).map_err(|e| PaymentsUnavailable(e.to_string()))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, PaymentsUnavailable> {
    IdempotencyKey::new(key).map(RequestStrategy::Idempotent).map_err(|e| PaymentsUnavailable(e.to_string()))
}

fn unavailable(e: StripeError) -> PaymentsUnavailable {
    PaymentsUnavailable(e.to_string())
}

/// A Stripe error: retryable (5xx, 429, network) or a final answer about this payment.
fn classify(e: StripeError) -> Result<ChargeOutcome, PaymentsUnavailable> {
    match e {
        StripeError::Stripe(api, status) if status != 429 && status < 500 => Ok(ChargeOutcome::Failed {
            payment_intent_id: api.payment_intent.as_ref().map(|pi| pi.id.to_string()),
            code: api.code.as_ref().map_or("card_error", |c| c.as_str()).to_string(),
            decline_code: api.decline_code.clone(),
            message: api.message.clone().unwrap_or_else(|| "The payment was declined.".into()),
        }),
        other => Err(PaymentsUnavailable(other.to_string())),
    }
}

impl Payments for StripePayments {
    async fn create_customer(&self, account_id: &str, email: Option<&str>) -> Result<String, PaymentsUnavailable> {
        let mut req =
            CreateCustomer::new().metadata(HashMap::from([("topup_account_id".to_string(), account_id.to_string())]));
        if let Some(e) = email {
            req = req.email(e);
        }
        let strategy = idempotent(&format!("topup-customer-{account_id}"))?;
        let customer = req
            .customize()
            .request_strategy(strategy)
            .send(&self.client)
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
        let pi = match req.customize().request_strategy(strategy).send(&self.client).await {
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
        let mut line = CreateCheckoutSessionLineItems::new();
        line.price_data = Some(price);
        line.quantity = Some(1);
        let mut intent = CreateCheckoutSessionPaymentIntentData::new();
        intent.metadata = Some(metadata.clone());
        intent.description = Some(r.description.clone());
        let mut req = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Payment)
            .customer(r.customer_id.clone())
            .client_reference_id(r.reference.clone())
            .line_items(vec![line])
            .payment_intent_data(intent)
            .metadata(metadata);
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
            .send(&self.client)
            .await
            .map_err(unavailable)?;
        Ok(CheckoutSession { id: session.id.to_string(), client_secret: session.client_secret, url: session.url })
    }

    async fn create_card_setup(
        &self,
        customer_id: &str,
        account_id: &str,
        idempotency_key: &str,
    ) -> Result<CardSetup, PaymentsUnavailable> {
        let intent = CreateSetupIntent::new()
            .customer(customer_id)
            .usage(CreateSetupIntentUsage::OffSession)
            .metadata(HashMap::from([("topup_account_id".to_string(), account_id.to_string())]))
            .customize()
            .request_strategy(idempotent(idempotency_key)?)
            .send(&self.client)
            .await
            .map_err(unavailable)?;
        let client_secret =
            intent.client_secret.ok_or_else(|| PaymentsUnavailable("SetupIntent without client_secret".into()))?;
        Ok(CardSetup { id: intent.id.to_string(), client_secret })
    }

    async fn card(&self, payment_method_id: &str) -> Result<Option<Card>, PaymentsUnavailable> {
        let pm = RetrievePaymentMethod::new(payment_method_id).send(&self.client).await.map_err(unavailable)?;
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
        DetachPaymentMethod::new(payment_method_id).send(&self.client).await.map(|_| ()).map_err(unavailable)
    }

    async fn payment_metadata(&self, payment_intent_id: &str) -> Result<HashMap<String, String>, PaymentsUnavailable> {
        let pi = RetrievePaymentIntent::new(payment_intent_id).send(&self.client).await.map_err(unavailable)?;
        Ok(pi.metadata)
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
            let page = req.send(&self.client).await.map_err(unavailable)?;
            for pi in &page.data {
                let refunded = match &pi.latest_charge {
                    None => 0,
                    Some(charge) => match charge.as_object() {
                        Some(c) => c.amount_refunded,
                        // Asked for expanded: an id alone means the answer cannot be trusted.
                        None => return Err(PaymentsUnavailable(format!("charge of {} not expanded", pi.id))),
                    },
                };
                out.push(PaymentRecord {
                    id: pi.id.to_string(),
                    status: pi.status.as_str().to_string(),
                    amount: pi.amount,
                    amount_refunded: refunded,
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
