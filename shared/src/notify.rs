//! What people are told about their credits (rules §8, seeds 000, 001, 004): which notification
//! a bus event calls for, and its words — an email subject, a plain-text and an HTML body with
//! a link to the billing page, and a short SMS without links. Amounts are shown in the
//! profile's unit ($12.50, 340 minutes, 12 credits).

use std::future::Future;

use serde::Deserialize;
use serde_json::Value;

use crate::account::valid_email;
use crate::clock;
use crate::events::Event;
use crate::money::Micros;
use crate::pricing::format_credits;
use crate::pricing::format_money;
use crate::profile::Profile;
use crate::purchases::Charge;
use crate::store::{DeliveryRecord, Store};

/// One notification, ready for each channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: &'static str,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub sms: String,
}

/// The notification type an event calls for, if any (rules §8; seed 000's names).
pub fn notification_kind(event: &Event) -> Option<&'static str> {
    match event {
        Event::BalanceLow(_) => Some("credit_balance_low"),
        Event::BalanceDepleted(_) => Some("credit_balance_depleted"),
        Event::BalanceAlert(_) => Some("credit_balance_alert"),
        Event::AutoRechargeSucceeded(_) => Some("credit_auto_recharge_triggered"),
        // seed 000: "a credit_purchase_failed notification if the charge fails".
        Event::AutoRechargeFailed(_) | Event::PurchaseFailed(_) => Some("credit_purchase_failed"),
        // seed 000: "We'll email you when it completes" — payments that went through processing.
        Event::CreditsAdded(c) if c.settled_after_processing => Some("credit_purchase_settled"),
        Event::AutoRechargePaused(_) => Some("credit_auto_recharge_paused"),
        Event::PaymentDisputed(_) => Some("credit_payment_disputed"),
        Event::EntityBudgetAlert(_) => Some("credit_entity_budget"),
        Event::CreditsAdded(_)
        | Event::PurchaseProcessing(_)
        | Event::DisputeClosed(_)
        | Event::GrantExpired(_)
        | Event::RefundCreated(_) => None,
    }
}

/// An entity name as text: it is checked at the edge (letters, digits and `. _ : @ -`), so it
/// needs no escaping, but a message never trusts that.
fn escape_plain(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')).collect()
}

fn credits(p: &Profile, micros: i64) -> String {
    format_credits(p, Micros::new(micros))
}

fn charge(c: &Charge) -> String {
    format_money(c.amount, &c.currency)
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Renders the message `event` calls for on `account_id`, if any. `billing_url` is the page
/// where people manage credits (configuration).
pub fn render(p: &Profile, event: &Event, account_id: &str, billing_url: &str) -> Option<Rendered> {
    render_with_receipt(p, event, account_id, billing_url, None)
}

/// `render`, and a purchase's message links its receipt (rules §20): `receipt_url` once its
/// invoice is recorded, else the billing page's list of receipts.
pub fn render_with_receipt(
    p: &Profile,
    event: &Event,
    account_id: &str,
    billing_url: &str,
    receipt_url: Option<&str>,
) -> Option<Rendered> {
    let kind = notification_kind(event)?;
    let receipt = match event {
        Event::CreditsAdded(c) if c.kind == crate::ledger::EntryKind::Purchase => {
            Some(receipt_url.map_or_else(|| format!("{billing_url}#receipts"), str::to_string))
        }
        _ => None,
    };
    let balance = credits(p, event.balance());
    // (subject, paragraphs, call to action, sms)
    let (subject, paragraphs, action, sms): (String, Vec<String>, &str, String) = match event {
        Event::BalanceLow(low) => {
            let threshold = credits(p, low.threshold);
            let next = if low.auto_recharge_enabled {
                "Auto top-up is on and will add credits shortly."
            } else {
                "Buy credits or turn on auto top-up so your usage isn't interrupted."
            };
            (
                "Your credit balance is low".into(),
                vec![
                    format!("The credit balance of {account_id} is {balance}, below your low-balance threshold of {threshold}."),
                    next.into(),
                ],
                "Manage credits",
                format!("Credits for {account_id} are low: {balance} left."),
            )
        }
        Event::EntityBudgetAlert(a) => {
            let (spent, limit) = (credits(p, a.spent), credits(p, a.monthly_limit));
            let entity = escape_plain(&a.entity);
            (
                format!("{entity} has used {}% of its monthly budget", a.percent),
                vec![
                    format!("{entity} of {account_id} has spent {spent} of its {limit} monthly budget this month."),
                    if a.percent >= 100 {
                        "Its usage that would cost credits is refused until next month, or until you raise its limit.".into()
                    } else {
                        "You can raise its limit on the billing page.".into()
                    },
                ],
                "Manage budgets",
                format!("{entity} of {account_id} has used {}% of its {limit} monthly budget.", a.percent),
            )
        }
        Event::BalanceAlert(a) => {
            let threshold = credits(p, a.threshold);
            (
                format!("Your credit balance fell below {threshold}"),
                vec![
                    format!("The credit balance of {account_id} is {balance}, below the alert you set at {threshold}."),
                    "Buy credits or turn on auto top-up if you expect to need more.".into(),
                ],
                "Manage credits",
                format!("Credits for {account_id} fell below {threshold}: {balance} left."),
            )
        }
        Event::BalanceDepleted(_) => (
            "You're out of credits".into(),
            vec![
                format!("The credit balance of {account_id} has reached {balance}."),
                "Usage beyond your plan's monthly allowance is paused until you add credits.".into(),
            ],
            "Buy credits",
            format!("Credits for {account_id} have run out. Usage past your plan is paused until you add credits."),
        ),
        Event::AutoRechargeSucceeded(r) => {
            let added = credits(p, r.credits);
            (
                format!("We added {added} to your balance"),
                vec![
                    format!(
                        "Auto top-up charged {} to your saved card and added {added} to {account_id}. Your balance is now {balance}.",
                        charge(&r.charge)
                    ),
                ],
                "View credits",
                format!("Auto top-up added {added} to {account_id}. Balance: {balance}."),
            )
        }
        Event::AutoRechargeFailed(f) => {
            let reason = if f.message.is_empty() { "The card was declined." } else { f.message.as_str() };
            (
                "Your automatic top-up failed".into(),
                vec![
                    format!("We couldn't charge your saved card for the automatic top-up of {account_id}: {reason}"),
                    "No credits were added, and auto top-up is paused so we won't try again on our own.".into(),
                    "To restore service, update your card and buy credits by hand.".into(),
                ],
                "Update your card",
                format!("A top-up payment for {account_id} failed; no credits were added. Update your card and buy credits to restore service."),
            )
        }
        Event::PurchaseFailed(_) => (
            "Your credit purchase failed".into(),
            vec![
                // seed 000's sentence.
                "We couldn't confirm your payment. Please try again.".into(),
                format!("No credits were added to {account_id}."),
            ],
            "Try again",
            format!("A credit payment for {account_id} failed; no credits were added."),
        ),
        Event::CreditsAdded(c) => {
            let added = credits(p, c.credits);
            (
                "Your payment has completed".into(),
                vec![format!(
                    "Your payment of {} has completed and {added} were added to {account_id}. Your balance is now {balance}.",
                    charge(&c.charge)
                )],
                "View credits",
                format!("Your payment completed: {added} added to {account_id}."),
            )
        }
        Event::AutoRechargePaused(_) => (
            "Auto top-up is paused until next month".into(),
            // seed 004's sentence.
            vec!["You've reached your monthly auto-reload limit. Auto-reload is paused until next month.".into()],
            "Manage auto top-up",
            "You've reached your monthly auto-reload limit. Auto-reload is paused until next month.".into(),
        ),
        Event::PaymentDisputed(d) => {
            let taken = credits(p, d.taken);
            (
                "A payment was disputed".into(),
                vec![
                    format!(
                        "A payment of {} for {account_id} was disputed with the card's bank, so {taken} were taken back. Your balance is now {balance}.",
                        charge(&d.disputed)
                    ),
                    "Auto top-up is paused until the dispute is resolved. If the dispute is decided in your favour, the credits are returned.".into(),
                ],
                "View credits",
                format!("A payment for {account_id} was disputed: {taken} taken back, auto top-up paused. Balance: {balance}."),
            )
        }
        // Nothing is sent for these (`notification_kind` answered `None` above).
        Event::PurchaseProcessing(_) | Event::DisputeClosed(_) | Event::GrantExpired(_) | Event::RefundCreated(_) => {
            return None
        }
    };
    let mut text = format!("{}\n\n{action}: {billing_url}\n", paragraphs.join("\n\n"));
    let mut links = format!("<p><a href=\"{}\">{}</a></p>", escape(billing_url), escape(action));
    if let Some(r) = &receipt {
        text.push_str(&format!("View receipt: {r}\n"));
        links.push_str(&format!("<p><a href=\"{}\">View receipt</a></p>", escape(r)));
    }
    let html = format!(
        "<!doctype html><html><body>{}{links}</body></html>",
        paragraphs.iter().map(|p| format!("<p>{}</p>", escape(p))).collect::<String>(),
    );
    Some(Rendered { kind, subject, text, html, sms })
}

/// Who and when an event on the bus is about: the fields the outbox adds to every detail.
#[derive(Debug, Clone, Deserialize)]
struct Envelope {
    event_id: String,
    account_id: String,
    #[serde(default)]
    occurred_ms: i64,
}

/// Why a message did not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Throttling, a timeout, an outage: the delivery may be tried again.
    Retryable(String),
    /// The provider refused this message for good (a rejected address, a bad number).
    Rejected(String),
}

/// Email and SMS. `AwsChannels` sends through SES v2 and SNS.
pub trait Channels: Send + Sync {
    fn email(&self, to: &str, message: &Rendered) -> impl Future<Output = Result<(), SendError>> + Send;
    fn sms(&self, phone: &str, text: &str) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// What one delivery of an event did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub kind: Option<&'static str>,
    pub sent: usize,
    /// Claimed by an earlier delivery of the same event: not sent again.
    pub already: usize,
    pub skipped: usize,
    pub failed: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("delivery incomplete, retry: {0}")]
pub struct RetryLater(pub String);

/// Sends the notifications bus events call for, each message at most once.
pub struct Notifier<S, C> {
    pub profile: Profile,
    pub store: S,
    pub channels: C,
    pub billing_url: String,
}

impl<S: Store + crate::receipts::ReceiptStore, C: Channels> Notifier<S, C> {
    /// Delivers one bus event. A delivery per (event, channel, recipient) is claimed with a
    /// conditional write before it is sent, so however often EventBridge delivers the event, each
    /// message goes out at most once. A retryable failure releases its claim and makes the whole
    /// call fail, so EventBridge tries again and only what did not go out is sent.
    pub async fn deliver(&self, detail_type: &str, detail: &Value) -> Result<Report, RetryLater> {
        let event = match Event::read(detail_type, detail) {
            None => return Ok(Report::default()),
            Some(Ok(event)) => event,
            // A detail that does not read as its type cannot be fixed by a retry.
            Some(Err(e)) => {
                tracing::warn!(detail_type, error = %e, "unreadable event: nothing to send");
                return Ok(Report::default());
            }
        };
        let Some(kind) = notification_kind(&event) else { return Ok(Report::default()) };
        let mut report = Report { kind: Some(kind), ..Report::default() };
        let Ok(envelope) = serde_json::from_value::<Envelope>(detail.clone()) else {
            tracing::warn!(detail_type, "event without account_id or event_id: nothing to send");
            return Ok(report);
        };
        let (account_id, event_id) = (envelope.account_id.as_str(), envelope.event_id.as_str());
        let wants = |list: &[String]| list.iter().any(|k| k == kind);
        let (email_on, sms_on) = (wants(&self.profile.notifications.email), wants(&self.profile.notifications.sms));
        if !email_on && !sms_on {
            return Ok(report);
        }
        let account = match self.store.load_account(account_id).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                tracing::warn!(account_id, event_id, "notification for an unknown account");
                return Ok(report);
            }
            Err(e) => return Err(RetryLater(e.to_string())),
        };
        // A purchase's message links its receipt, once Stripe's invoice is recorded (rules §20).
        let receipt_url = match &event {
            Event::CreditsAdded(c) if c.kind == crate::ledger::EntryKind::Purchase => {
                crate::receipts::purchase_receipt_url(&self.store, account_id, &c.reference)
                    .await
                    .map_err(|e| RetryLater(e.to_string()))?
            }
            _ => None,
        };
        let Some(message) =
            render_with_receipt(&self.profile, &event, account_id, &self.billing_url, receipt_url.as_deref())
        else {
            return Ok(report);
        };
        let occurred_ms = envelope.occurred_ms;
        let mut targets = Vec::new();
        for c in &account.contacts {
            if email_on {
                targets.push(("email", c.email.clone(), valid_email(&c.email)));
            }
            if sms_on && c.sms_opt_in {
                if let Some(phone) = &c.phone {
                    targets.push(("sms", phone.clone(), true));
                }
            }
        }
        let mut retry = None;
        for (channel, to, usable) in targets {
            let mut record = DeliveryRecord {
                account_id: account_id.to_string(),
                event_id: event_id.to_string(),
                occurred_ms,
                kind: kind.to_string(),
                channel: channel.to_string(),
                to: to.clone(),
                status: "sending".into(),
                detail: None,
                updated_at: clock::now_ms(),
            };
            if !usable {
                tracing::warn!(account_id, event_id, channel, "contact skipped: not a usable address");
                record.status = "skipped".into();
                record.detail = Some("not a usable address".into());
                report.skipped += 1;
                if let Err(e) = self.store.finish_delivery(&record).await {
                    retry = Some(e.to_string());
                }
                continue;
            }
            match self.store.claim_delivery(&record).await {
                Ok(true) => {}
                Ok(false) => {
                    report.already += 1;
                    continue;
                }
                Err(e) => {
                    retry = Some(e.to_string());
                    continue;
                }
            }
            let sent = match channel {
                "email" => self.channels.email(&to, &message).await,
                _ => self.channels.sms(&to, &message.sms).await,
            };
            match sent {
                Ok(()) => {
                    record.status = "sent".into();
                    report.sent += 1;
                }
                Err(SendError::Rejected(why)) => {
                    tracing::warn!(account_id, event_id, channel, reason = %why, "message rejected");
                    record.status = "failed".into();
                    record.detail = Some(why);
                    report.failed += 1;
                }
                Err(SendError::Retryable(why)) => {
                    tracing::warn!(account_id, event_id, channel, reason = %why, "message will be retried");
                    record.status = "retry".into();
                    record.detail = Some(why.clone());
                    retry = Some(why);
                }
            }
            record.updated_at = clock::now_ms();
            if let Err(e) = self.store.finish_delivery(&record).await {
                // The message went (or failed for good); a lost record only shows in the list.
                tracing::warn!(account_id, event_id, error = %e, "delivery record not written");
            }
        }
        match retry {
            Some(why) => Err(RetryLater(why)),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::MICROS_PER_CREDIT as C;
    use serde_json::json;

    const URL: &str = "https://app.example.com/settings/billing";

    fn r(profile: &str, detail_type: &str, detail: Value) -> Rendered {
        let p = Profile::load(profile).unwrap();
        render(&p, &event(detail_type, detail), "acme", URL).expect("a notification")
    }

    fn event(detail_type: &str, partial: Value) -> Event {
        Event::read(detail_type, &crate::events::sample_detail(detail_type, partial)).expect("ours").expect("reads")
    }

    /// rules §20: the purchase-succeeded email links the receipt, or the billing page's list of
    /// receipts while its invoice is on its way; other messages link no receipt.
    #[test]
    fn a_completed_purchase_links_its_receipt() {
        let p = Profile::load("usd-overage").unwrap();
        let settled = event("CreditsAdded", json!({"kind": "purchase", "settled_after_processing": true}));
        let m = render_with_receipt(&p, &settled, "acme", URL, Some("https://pay.example/i/in_1?a=1&b=2")).unwrap();
        assert_eq!(m.kind, "credit_purchase_settled");
        assert!(m.text.contains("View receipt: https://pay.example/i/in_1?a=1&b=2"), "{}", m.text);
        assert!(m.html.contains("<a href=\"https://pay.example/i/in_1?a=1&amp;b=2\">View receipt</a>"), "{}", m.html);
        let m = render_with_receipt(&p, &settled, "acme", URL, None).unwrap();
        assert!(m.text.contains(&format!("View receipt: {URL}#receipts")), "{}", m.text);
        let low = event("BalanceLow", json!({"balance": 1, "threshold": 5 * C, "auto_recharge_enabled": false}));
        let m = render_with_receipt(&p, &low, "acme", URL, Some("https://pay.example/i/in_1")).unwrap();
        assert!(!m.text.contains("receipt") && !m.html.contains("receipt"), "{}", m.text);
    }

    #[test]
    fn low_balance_in_each_unit() {
        let m = r(
            "usd-overage",
            "BalanceLow",
            json!({"balance": 4_500_000, "threshold": 5 * C, "auto_recharge_enabled": false}),
        );
        assert_eq!(m.kind, "credit_balance_low");
        assert!(m.text.contains("is $4.50, below your low-balance threshold of $5.00"), "{}", m.text);
        assert!(m.text.contains("turn on auto top-up") && m.text.contains(URL));
        assert!(m.html.contains("<a href=\"https://app.example.com/settings/billing\">"));
        assert!(!m.sms.contains("http"), "no links in SMS");
        let v = r(
            "voice-minutes",
            "BalanceLow",
            json!({"balance": 9 * C, "threshold": 10 * C, "auto_recharge_enabled": true}),
        );
        assert!(v.text.contains("is 9 minutes, below your low-balance threshold of 10 minutes"), "{}", v.text);
        assert!(v.text.contains("Auto top-up is on"));
        let o = r("org-runs", "BalanceLow", json!({"balance": 5 * C, "threshold": 5 * C}));
        assert!(o.sms.contains("5 credits left"), "{}", o.sms);
    }

    #[test]
    fn an_entity_budget_alert_names_the_entity_and_its_level() {
        let m = r(
            "usd-overage",
            "EntityBudgetAlert",
            json!({"entity": "user:ann@acme.example", "percent": 80, "spent": 8 * C, "monthly_limit": 10 * C, "balance": 40 * C}),
        );
        assert_eq!(
            (m.kind, m.subject.as_str()),
            ("credit_entity_budget", "user:ann@acme.example has used 80% of its monthly budget")
        );
        assert!(m.text.contains("has spent $8.00 of its $10.00 monthly budget"), "{}", m.text);
    }

    #[test]
    fn a_balance_alert_names_its_threshold() {
        let m = r(
            "usd-overage",
            "BalanceAlert",
            json!({"threshold": 10 * C, "balance": 9 * C, "previous_balance": 20 * C, "cause": "usage", "version": 3}),
        );
        assert_eq!((m.kind, m.subject.as_str()), ("credit_balance_alert", "Your credit balance fell below $10.00"));
        assert!(m.text.contains("is $9.00, below the alert you set at $10.00"), "{}", m.text);
        assert!(m.sms.contains("fell below $10.00: $9.00 left"), "{}", m.sms);
    }

    #[test]
    fn recharges_purchases_and_depletion() {
        let m = r(
            "usd-overage",
            "AutoRechargeSucceeded",
            json!({"credits": 10 * C, "charge": {"amount": 1000, "currency": "usd"}, "balance": 14 * C}),
        );
        assert_eq!(m.subject, "We added $10.00 to your balance");
        assert!(m.text.contains("charged $10.00") && m.text.contains("now $14.00"));
        let f = r(
            "usd-overage",
            "AutoRechargeFailed",
            json!({"message": "Your card has insufficient funds.", "balance": C}),
        );
        assert_eq!(f.kind, "credit_purchase_failed");
        assert!(f.text.contains("update your card and buy credits by hand"), "{}", f.text);
        let s = r(
            "request-packs",
            "CreditsAdded",
            json!({"settled_after_processing": true, "credits": 500 * C, "charge": {"amount": 2000, "currency": "usd"}, "balance": 500 * C}),
        );
        assert!(s.text.contains("$20.00 has completed and 500 credits were added"), "{}", s.text);
        assert_eq!(
            notification_kind(&event("CreditsAdded", json!({"settled_after_processing": false}))),
            None,
            "card payments need no email"
        );
        let d = r("voice-minutes", "BalanceDepleted", json!({"balance": 0}));
        assert!(d.text.contains("has reached 0 minutes"), "{}", d.text);
        let p = r("usd-overage", "PurchaseFailed", json!({}));
        assert!(p.text.starts_with("We couldn't confirm your payment. Please try again."));
        assert!(Event::read("Unknown", &json!({})).is_none());
        assert!(Event::read("BalanceLow", &json!({"balance": "ten"})).is_some_and(|e| e.is_err()));
    }

    #[test]
    fn html_is_escaped() {
        let p = Profile::load("usd-overage").unwrap();
        let m = render(&p, &event("BalanceDepleted", json!({"balance": 0})), "<script>", URL).expect("a message");
        assert!(m.html.contains("&lt;script&gt;") && !m.html.contains("<script>"));
    }
}

#[cfg(test)]
mod delivery_tests {
    use crate::store::Deliveries;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::account::Contact;
    use crate::adapters::memory::MemoryBus;
    use crate::adapters::memory::MemoryStore;
    use crate::engine::Credits;

    #[derive(Default)]
    struct Fake {
        sent: Mutex<Vec<(String, String)>>,
        reject: HashSet<String>,
        flaky: Mutex<HashSet<String>>,
    }

    impl Channels for Fake {
        async fn email(&self, to: &str, m: &Rendered) -> Result<(), SendError> {
            self.send("email", to, &m.subject)
        }
        async fn sms(&self, phone: &str, text: &str) -> Result<(), SendError> {
            self.send("sms", phone, text)
        }
    }

    impl Fake {
        fn send(&self, channel: &str, to: &str, _what: &str) -> Result<(), SendError> {
            if self.reject.contains(to) {
                return Err(SendError::Rejected("address rejected".into()));
            }
            if self.flaky.lock().unwrap().remove(to) {
                return Err(SendError::Retryable("throttled".into()));
            }
            self.sent.lock().unwrap().push((channel.into(), to.into()));
            Ok(())
        }
    }

    async fn setup(profile: &str, fake: Fake) -> Arc<Notifier<Arc<MemoryStore>, Fake>> {
        let store = Arc::new(MemoryStore::default());
        let p = Profile::load(profile).unwrap();
        let credits = Credits::new(p.clone(), store.clone(), MemoryBus::default());
        let contacts = vec![
            Contact { email: "a@acme.example".into(), phone: Some("+15550101".into()), sms_opt_in: true },
            Contact { email: "b@acme.example".into(), phone: Some("+15550102".into()), sms_opt_in: false },
            Contact { email: "not-an-address".into(), phone: None, sms_opt_in: false },
        ];
        credits.upsert_account("acme", "pro", contacts).await.unwrap();
        Arc::new(Notifier { profile: p, store, channels: fake, billing_url: "https://app.example/billing".into() })
    }

    fn depleted() -> Value {
        crate::events::sample_detail(
            "BalanceDepleted",
            json!({"event_id": "evt_1", "account_id": "acme", "occurred_ms": 1, "balance": 0}),
        )
    }

    #[tokio::test]
    async fn ten_concurrent_deliveries_send_each_message_once_and_sms_only_to_opted_in() {
        let n = setup("usd-overage", Fake::default()).await;
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let n = n.clone();
            tasks.push(tokio::spawn(async move { n.deliver("BalanceDepleted", &depleted()).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut sent = n.channels.sent.lock().unwrap().clone();
        sent.sort();
        let want: Vec<(String, String)> =
            [("email", "a@acme.example"), ("email", "b@acme.example"), ("sms", "+15550101")]
                .iter()
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect();
        assert_eq!(sent, want, "one per contact and channel; the invalid address skipped");
        let records = n.store.recent_deliveries("acme", 10).await.unwrap();
        assert!(records.iter().any(|r| r.status == "skipped" && r.to == "not-an-address"));
    }

    #[tokio::test]
    async fn a_rejected_recipient_does_not_stop_the_others_and_is_recorded() {
        let fake = Fake { reject: HashSet::from(["b@acme.example".to_string()]), ..Fake::default() };
        let n = setup("usd-overage", fake).await;
        let r = n.deliver("BalanceDepleted", &depleted()).await.unwrap();
        assert_eq!((r.sent, r.failed, r.skipped), (2, 1, 1));
        let records = n.store.recent_deliveries("acme", 10).await.unwrap();
        assert!(records.iter().any(|r| r.to == "b@acme.example" && r.status == "failed"));
        // Not retried: a second delivery sends nothing new.
        let again = n.deliver("BalanceDepleted", &depleted()).await.unwrap();
        assert_eq!((again.sent, again.already), (0, 3));
    }

    #[tokio::test]
    async fn a_retryable_failure_fails_the_call_and_the_retry_sends_only_what_is_missing() {
        let fake = Fake { flaky: Mutex::new(HashSet::from(["a@acme.example".to_string()])), ..Fake::default() };
        let n = setup("usd-overage", fake).await;
        assert!(n.deliver("BalanceDepleted", &depleted()).await.is_err(), "EventBridge should retry");
        assert_eq!(n.channels.sent.lock().unwrap().len(), 2);
        let r = n.deliver("BalanceDepleted", &depleted()).await.unwrap();
        assert_eq!((r.sent, r.already), (1, 2));
        assert_eq!(n.channels.sent.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn the_profile_decides_what_is_sent() {
        // voice-minutes sends no email at the monthly cap (seed 004) and SMS only when depleted.
        let n = setup("voice-minutes", Fake::default()).await;
        let paused = crate::events::sample_detail(
            "AutoRechargePaused",
            json!({"event_id": "evt_p", "account_id": "acme", "occurred_ms": 2}),
        );
        assert_eq!(n.deliver("AutoRechargePaused", &paused).await.unwrap().sent, 0);
        let low = crate::events::sample_detail(
            "BalanceLow",
            json!({"event_id": "evt_l", "account_id": "acme", "occurred_ms": 3, "balance": 5, "threshold": 10}),
        );
        let r = n.deliver("BalanceLow", &low).await.unwrap();
        assert_eq!(r.sent, 2, "email only");
        assert!(n.channels.sent.lock().unwrap().iter().all(|(c, _)| c == "email"));
        assert_eq!(n.deliver("SomethingElse", &low).await.unwrap(), Report::default());
    }
}
