//! What people are told about their credits (rules §8, seeds 000, 001, 004): which notification
//! a bus event calls for, and its words — an email subject, a plain-text and an HTML body with
//! a link to the billing page, and a short SMS without links. Amounts are shown in the
//! profile's unit ($12.50, 340 minutes, 12 credits).

use std::future::Future;

use serde_json::Value;

use crate::account::valid_email;
use crate::clock;
use crate::money::Micros;
use crate::pricing::format_credits;
use crate::pricing::format_money;
use crate::profile::Profile;
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

/// The notification type a bus event calls for, if any (rules §8; seed 000's names).
pub fn notification_kind(detail_type: &str, detail: &Value) -> Option<&'static str> {
    match detail_type {
        "BalanceLow" => Some("credit_balance_low"),
        "BalanceDepleted" => Some("credit_balance_depleted"),
        "AutoRechargeSucceeded" => Some("credit_auto_recharge_triggered"),
        // seed 000: "a credit_purchase_failed notification if the charge fails".
        "AutoRechargeFailed" | "PurchaseFailed" => Some("credit_purchase_failed"),
        // seed 000: "We'll email you when it completes" — payments that went through processing.
        "CreditsAdded" if detail["settled_after_processing"] == Value::Bool(true) => Some("credit_purchase_settled"),
        "AutoRechargePaused" => Some("credit_auto_recharge_paused"),
        _ => None,
    }
}

fn credits(p: &Profile, detail: &Value, field: &str) -> String {
    format_credits(p, Micros(detail[field].as_i64().unwrap_or(0)))
}

fn charge(p: &Profile, detail: &Value) -> String {
    let currency = detail["charge"]["currency"].as_str().unwrap_or(&p.currency);
    format_money(detail["charge"]["amount"].as_i64().unwrap_or(0), currency)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Renders `kind` for the event `detail` on `account_id`. `billing_url` is the page where
/// people manage credits (configuration).
pub fn render(
    p: &Profile,
    kind: &'static str,
    detail_type: &str,
    account_id: &str,
    detail: &Value,
    billing_url: &str,
) -> Rendered {
    let balance = credits(p, detail, "balance");
    // (subject, paragraphs, call to action, sms)
    let (subject, paragraphs, action, sms): (String, Vec<String>, &str, String) = match kind {
        "credit_balance_low" => {
            let threshold = credits(p, detail, "threshold");
            let next = if detail["auto_recharge_enabled"] == Value::Bool(true) {
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
        "credit_balance_depleted" => (
            "You're out of credits".into(),
            vec![
                format!("The credit balance of {account_id} has reached {balance}."),
                "Usage beyond your plan's monthly allowance is paused until you add credits.".into(),
            ],
            "Buy credits",
            format!("Credits for {account_id} have run out. Usage past your plan is paused until you add credits."),
        ),
        "credit_auto_recharge_triggered" => {
            let added = credits(p, detail, "credits");
            (
                format!("We added {added} to your balance"),
                vec![
                    format!(
                        "Auto top-up charged {} to your saved card and added {added} to {account_id}. Your balance is now {balance}.",
                        charge(p, detail)
                    ),
                ],
                "View credits",
                format!("Auto top-up added {added} to {account_id}. Balance: {balance}."),
            )
        }
        "credit_purchase_failed" if detail_type == "AutoRechargeFailed" => {
            let reason = detail["message"].as_str().unwrap_or("The card was declined.");
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
        "credit_purchase_failed" => (
            "Your credit purchase failed".into(),
            vec![
                // seed 000's sentence.
                "We couldn't confirm your payment. Please try again.".into(),
                format!("No credits were added to {account_id}."),
            ],
            "Try again",
            format!("A credit payment for {account_id} failed; no credits were added."),
        ),
        "credit_purchase_settled" => {
            let added = credits(p, detail, "credits");
            (
                "Your payment has completed".into(),
                vec![format!(
                    "Your payment of {} has completed and {added} were added to {account_id}. Your balance is now {balance}.",
                    charge(p, detail)
                )],
                "View credits",
                format!("Your payment completed: {added} added to {account_id}."),
            )
        }
        _ => (
            "Auto top-up is paused until next month".into(),
            // seed 004's sentence.
            vec!["You've reached your monthly auto-reload limit. Auto-reload is paused until next month.".into()],
            "Manage auto top-up",
            "You've reached your monthly auto-reload limit. Auto-reload is paused until next month.".into(),
        ),
    };
    let text = format!("{}\n\n{action}: {billing_url}\n", paragraphs.join("\n\n"));
    let html = format!(
        "<!doctype html><html><body>{}<p><a href=\"{}\">{}</a></p></body></html>",
        paragraphs.iter().map(|p| format!("<p>{}</p>", escape(p))).collect::<String>(),
        escape(billing_url),
        escape(action)
    );
    Rendered { kind, subject, text, html, sms }
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

impl<S: Store, C: Channels> Notifier<S, C> {
    /// Delivers one bus event. A delivery per (event, channel, recipient) is claimed with a
    /// conditional write before it is sent, so however often EventBridge delivers the event, each
    /// message goes out at most once. A retryable failure releases its claim and makes the whole
    /// call fail, so EventBridge tries again and only what did not go out is sent.
    pub async fn deliver(&self, detail_type: &str, detail: &Value) -> Result<Report, RetryLater> {
        let Some(kind) = notification_kind(detail_type, detail) else { return Ok(Report::default()) };
        let mut report = Report { kind: Some(kind), ..Report::default() };
        let (Some(account_id), Some(event_id)) = (detail["account_id"].as_str(), detail["event_id"].as_str()) else {
            tracing::warn!(detail_type, "event without account_id or event_id: nothing to send");
            return Ok(report);
        };
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
        let message = render(&self.profile, kind, detail_type, account_id, detail, &self.billing_url);
        let occurred_ms = detail["occurred_ms"].as_i64().unwrap_or(0);
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
        let kind = notification_kind(detail_type, &detail).expect("a notification");
        render(&p, kind, detail_type, "acme", &detail, URL)
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
            notification_kind("CreditsAdded", &json!({"settled_after_processing": false})),
            None,
            "card payments need no email"
        );
        let d = r("voice-minutes", "BalanceDepleted", json!({"balance": 0}));
        assert!(d.text.contains("has reached 0 minutes"), "{}", d.text);
        let p = r("usd-overage", "PurchaseFailed", json!({}));
        assert!(p.text.starts_with("We couldn't confirm your payment. Please try again."));
        assert_eq!(notification_kind("Unknown", &json!({})), None);
    }

    #[test]
    fn html_is_escaped() {
        let p = Profile::load("usd-overage").unwrap();
        let m = render(&p, "credit_balance_depleted", "BalanceDepleted", "<script>", &json!({"balance": 0}), URL);
        assert!(m.html.contains("&lt;script&gt;") && !m.html.contains("<script>"));
    }
}

#[cfg(test)]
mod delivery_tests {
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
        json!({"event_id": "evt_1", "account_id": "acme", "occurred_ms": 1, "balance": 0})
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
        let paused = json!({"event_id": "evt_p", "account_id": "acme", "occurred_ms": 2});
        assert_eq!(n.deliver("AutoRechargePaused", &paused).await.unwrap().sent, 0);
        let low = json!({"event_id": "evt_l", "account_id": "acme", "occurred_ms": 3, "balance": 5, "threshold": 10});
        let r = n.deliver("BalanceLow", &low).await.unwrap();
        assert_eq!(r.sent, 2, "email only");
        assert!(n.channels.sent.lock().unwrap().iter().all(|(c, _)| c == "email"));
        assert_eq!(n.deliver("SomethingElse", &low).await.unwrap(), Report::default());
    }
}
