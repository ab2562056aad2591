//! Cards: the account's Stripe customer, saving a card through a SetupIntent, and removing it.
//! Every Stripe call that creates something carries an idempotency key derived from our
//! record, so a retried request meets the object it made the first time.

use serde::{Deserialize, Serialize};

use crate::account::PaymentMethod;
use crate::engine::{Change, Credits, Plan};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ids::IdempotencyKey;
use crate::payments::{CardSetupRequest, NewCustomer, Purchases};
use crate::store::Store;

/// A card setup started: the SetupIntent the page confirms the card with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSetupStarted {
    pub setup_intent_id: String,
    pub client_secret: String,
}

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
        let customer = NewCustomer {
            email: account.contacts.first().map(|c| c.email.clone()),
            idempotency_key: self.stripe_key("customer", id),
            metadata: self.stripe_metadata(id, &[]),
        };
        let customer = payments.create_customer(&customer).await?;
        self.set_customer(id, &customer).await
    }

    /// `POST .../payment-method/setup`: a SetupIntent (`usage=off_session`) for the customer;
    /// no charge. The card becomes the default when `setup_intent.succeeded` arrives.
    pub async fn start_card_setup<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<CardSetupStarted, ApiError> {
        let customer = self.ensure_customer(payments, id).await?;
        // Stripe's keys are at most 255 characters: the client's key (up to 255 itself) is hashed.
        let key = match key {
            Some(k) => self.stripe_key("setup", &k.digest(id, 16)),
            None => self.stripe_key("setup", &crate::ledger::new_id("s")),
        };
        let request =
            CardSetupRequest { customer_id: customer, idempotency_key: key, metadata: self.stripe_metadata(id, &[]) };
        let setup = payments.create_card_setup(&request).await?;
        Ok(CardSetupStarted { setup_intent_id: setup.id, client_secret: setup.client_secret })
    }

    /// `setup_intent.succeeded`: the card it saved becomes the account's default payment method
    /// and is returned. Anything but a card is logged and left alone (`None`).
    pub async fn card_saved<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        payment_method_id: &str,
        customer_id: Option<&str>,
    ) -> Result<Option<PaymentMethod>, ApiError> {
        let Some(card) = payments.card(payment_method_id).await? else {
            tracing::warn!(account_id = id, payment_method_id, "saved payment method is not a card; ignored");
            return Ok(None);
        };
        let customer = customer_id.map(str::to_string).or(card.customer_id.clone());
        let method = PaymentMethod {
            id: card.id,
            brand: card.brand,
            last4: card.last4,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
        };
        self.save_card(id, method.clone(), customer.as_deref()).await?;
        Ok(Some(method))
    }

    /// `DELETE .../payment-method`: forgets the default card (turning auto-recharge off with
    /// it), then detaches it from the Stripe customer. Our record is what every charge reads,
    /// so a detach that fails is logged and does not undo the removal.
    pub async fn forget_card<P: Purchases>(&self, payments: &P, id: &str) -> Result<(), ApiError> {
        if let Some(pm) = self.remove_card(id).await? {
            if let Err(e) = payments.detach(&pm).await {
                tracing::warn!(account_id = id, error = %e, "card removed here but not detached in Stripe");
            }
        }
        Ok(())
    }

    /// Records the account's Stripe customer. The first one recorded stays (two concurrent
    /// requests create the same customer under one idempotency key anyway); returns it.
    pub async fn set_customer(&self, id: &str, customer_id: &str) -> Result<String, ApiError> {
        self.apply(id, None, |a, now| {
            if let Some(existing) = &a.stripe_customer_id {
                return Ok(Plan::AlreadySo(existing.clone()));
            }
            let mut next = a.next(now);
            next.stripe_customer_id = Some(customer_id.to_string());
            Change::quiet(next, crate::cause::Cause::Customer, customer_id.to_string()).write()
        })
        .await?
        .done()
    }

    /// Makes `card` the account's default payment method (`setup_intent.succeeded`). No charge
    /// is made here. A new card lifts the suspension a failed recharge left (rules §8: until an
    /// admin saves a new card or buys credits by hand); the next trigger or sweep may
    /// then charge it. The last error stays on record.
    pub async fn save_card(&self, id: &str, card: PaymentMethod, customer_id: Option<&str>) -> Result<(), ApiError> {
        self.apply(id, None, |a, now| {
            if a.payment_method.as_ref() == Some(&card) {
                return Ok(Plan::AlreadySo(()));
            }
            let mut next = a.next(now);
            if a.payment_method.as_ref().is_none_or(|m| m.id != card.id) {
                next.auto_recharge.suspended = false;
            }
            next.payment_method = Some(card.clone());
            if next.stripe_customer_id.is_none() {
                next.stripe_customer_id = customer_id.map(str::to_string);
            }
            Change::quiet(next, crate::cause::Cause::CardSaved, ()).write()
        })
        .await?
        .done()
    }

    /// Removes the default payment method. Auto-recharge cannot charge without one, so it is
    /// turned off with it. Returns the removed card's id, if there was one.
    pub async fn remove_card(&self, id: &str) -> Result<Option<String>, ApiError> {
        self.apply(id, None, |a, now| {
            let Some(card) = &a.payment_method else {
                return Ok(Plan::AlreadySo(None));
            };
            let mut next = a.next(now);
            next.payment_method = None;
            next.auto_recharge.enabled = false;
            // A setting like the others (rules §19): recorded when the service or staff remove it.
            let state = |card: Option<&str>, on: bool| serde_json::json!({"payment_method": card, "auto_recharge_enabled": on});
            let audit = crate::audit::AuditChange::new(
                "payment_method.remove",
                format!("account:{id}"),
                Some(state(Some(&card.id), a.auto_recharge.enabled)),
                Some(state(None, false)),
            );
            Change::quiet(next, crate::cause::Cause::CardRemoved, Some(card.id.clone())).with_audit(audit).write()
        })
        .await?
        .done()
    }
}
