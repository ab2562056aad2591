//! What people are told about their credits (SPEC §8, seeds 000, 001, 004): which notification
//! a bus event calls for, and its words — an email subject, a plain-text and an HTML body with
//! a link to the billing page, and a short SMS without links. Amounts are shown in the
//! profile's unit ($12.50, 340 minutes, 12 credits).

use serde_json::Value;

use crate::money::Micros;
use crate::pricing::format_money;
use crate::profile::Profile;
use crate::service::format_credits;

/// One notification, ready for each channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: &'static str,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub sms: String,
}

/// The notification type a bus event calls for, if any (SPEC §8; seed 000's names).
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
