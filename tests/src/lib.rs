//! Shared fixtures for the integration tests: the local stack's endpoint, a fresh table and bus
//! per test, handlers called in-process over the real SDK clients, tokens, and the invariant
//! checks of rules §10.
//!
//! The stack is started by `./scripts/test` (moto on 127.0.0.1); its address comes in
//! `TOPUP_TEST_AWS_ENDPOINT`. Each test makes its own table and bus, so tests run in parallel
//! without resetting one another.

use topup::store::Accounts;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{json, Value};
use topup::adapters::dynamo::{create_table, DynamoStore};
use topup::adapters::eventbridge::EventBridgeBus;
use topup::auth::sign_hs256;
use topup::config::Config;
use topup::engine::Credits;
use topup::ledger::LedgerEntry;
use topup::profile::Profile;
use topup::secret::Secret;
use topup::webhooks::deliver::Dispatcher;

pub const JWT_SECRET: &str = "integration-test-secret-0123456789";
/// The webhook endpoint's signing secret in the tests.
pub const WEBHOOK_SECRET: &str = "whsec_integration_test_0123456789";

pub type LiveCredits = Credits<DynamoStore, EventBridgeBus>;

/// The moto endpoint of the running local stack.
pub fn endpoint() -> String {
    std::env::var("TOPUP_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("TOPUP_TEST_AWS_ENDPOINT is not set: run the integration tests with ./scripts/test, which starts the local stack")
    })
}

pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await
}

/// One test's world: its own table and bus on the emulator, a profile, and the handlers.
pub struct World {
    pub config: Config,
    pub credits: LiveCredits,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub aws: aws_config::SdkConfig,
    /// Webhook endpoints, over this world's table and its own follow-up queue
    /// (`config.webhooks.queue_url`).
    pub webhooks: topup::webhooks::api::WebhookAdmin<
        topup::adapters::dynamo::DynamoStore,
        topup::adapters::webhooks_out::SqsRetryQueue,
    >,
    /// The clock every instance of this world reads, when a test moves time itself
    /// (`with_manual_clock`); the system clock otherwise.
    pub clock: Option<std::sync::Arc<topup::clock::ManualClock>>,
}

/// An idempotency key for a test, checked like any other.
pub fn key(k: &str) -> topup::ids::IdempotencyKey {
    topup::ids::IdempotencyKey::parse("idempotency_key", k).unwrap_or_else(|e| panic!("{e}"))
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

impl World {
    pub async fn new(profile: &str) -> World {
        let aws = aws_config().await;
        let table = unique("topup");
        let bus = unique("bus");
        let dynamo = aws_sdk_dynamodb::Client::new(&aws);
        let events = aws_sdk_eventbridge::Client::new(&aws);
        create_table(&dynamo, &table).await.expect("create table on the emulator");
        events.create_event_bus().name(&bus).send().await.expect("create bus on the emulator");
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let queue = sqs.create_queue().queue_name(unique("whq")).send().await.expect("create queue on the emulator");
        let config = Config {
            profile: Profile::load(profile).expect("shipped profile"),
            // Each world is its own deployment: its Stripe keys and objects are its own.
            stack: table.clone(),
            table: table.clone(),
            event_bus: bus.clone(),
            local_jwt_secret: Some(Secret::new(JWT_SECRET)),
            service_client_id: Some(SERVICE_CLIENT_ID.into()),
            email_from: Some("billing@example.com".into()),
            billing_url: Some("https://app.example.com/settings/billing".into()),
            stripe_secret_id: None,
            stripe_api_base: std::env::var("TOPUP_TEST_STRIPE_API_BASE").ok(),
            stripe_publishable_key: None,
            checkout_ui: Some(topup::payments::CheckoutUi::Hosted {
                success_url: "https://app.example.com/settings/billing?checkout_session={CHECKOUT_SESSION_ID}".into(),
                cancel_url: "https://app.example.com/settings/billing".into(),
            }),
            // Receivers in tests listen on 127.0.0.1; retries a second apart.
            webhooks: topup::webhooks::WebhookSettings {
                queue_url: queue.queue_url().map(str::to_string),
                allow_loopback: true,
                retry_schedule: vec![1, 1, 2],
                retry_window_s: 60,
                ..topup::webhooks::WebhookSettings::default()
            },
            support_adjust_limit: topup::config::DEFAULT_SUPPORT_ADJUST_LIMIT,
            dead_letter_queues: vec![],
        };
        let credits = topup::live(&config, &aws);
        let webhooks = topup::live_webhook_admin(&config, &aws);
        World { config, credits, dynamo, events, sqs, aws, webhooks, clock: None }
    }

    /// A world whose deployment taxes with Stripe Tax (`TOPUP_TAX=stripe_automatic`, rules §20).
    pub async fn taxed(profile: &str) -> World {
        let mut w = World::new(profile).await;
        w.config.profile.tax = topup::profile::Tax::StripeAutomatic;
        w.credits = topup::live(&w.config, &w.aws);
        w
    }

    /// Another process's view of the same table and bus: a fresh cache, as a second Lambda
    /// instance would have.
    pub fn another_instance(&self) -> LiveCredits {
        let credits = topup::live(&self.config, &self.aws);
        match &self.clock {
            Some(c) => credits.with_clock(c.clone()),
            None => credits,
        }
    }

    /// The same world on a clock that moves only when the test moves it (`advance`), starting
    /// at `start_ms`: no test sleeps for a grant, a hold or a minute to pass.
    pub fn with_manual_clock(mut self, start_ms: i64) -> World {
        let clock = std::sync::Arc::new(topup::clock::ManualClock::at(start_ms));
        self.credits = self.credits.with_clock(clock.clone());
        self.clock = Some(clock);
        self
    }

    /// Now, by this world's clock.
    pub fn now(&self) -> i64 {
        self.credits.now()
    }

    /// Moves this world's manual clock on by `ms`.
    pub fn advance(&self, ms: i64) {
        match &self.clock {
            Some(c) => c.advance(ms),
            None => panic!("advance needs World::with_manual_clock"),
        }
    }

    /// A queue that receives every event on this world's bus (a rule with an SQS target).
    pub async fn observe_bus(&self) -> Observer {
        let name = unique("q");
        let q = self.sqs.create_queue().queue_name(&name).send().await.expect("create queue");
        let url = q.queue_url().expect("queue url").to_string();
        let arn = format!("arn:aws:sqs:us-east-1:123456789012:{name}");
        let rule = unique("all");
        self.events
            .put_rule()
            .name(&rule)
            .event_bus_name(&self.config.event_bus)
            .event_pattern(json!({"source": ["topup"]}).to_string())
            .send()
            .await
            .expect("put rule");
        self.events
            .put_targets()
            .rule(&rule)
            .event_bus_name(&self.config.event_bus)
            .targets(aws_sdk_eventbridge::types::Target::builder().id("q").arn(arn).build().expect("target"))
            .send()
            .await
            .expect("put targets");
        Observer { sqs: self.sqs.clone(), url }
    }

    pub async fn debit(&self, req: Request) -> (u16, Value) {
        read(debit::handle(&self.config, &self.credits, req).await)
    }

    pub async fn api(&self, req: Request) -> (u16, Value) {
        read(credits_api::handle(&self.config, &self.webhooks, &self.credits, req).await)
    }

    /// The `purchase` function against the local Stripe.
    pub async fn buy(&self, req: Request) -> (u16, Value) {
        self.buy_with(&stripe_payments(), req).await
    }

    /// The `purchase` function with another Stripe client (one that cannot reach Stripe).
    pub async fn buy_with(&self, payments: &topup::adapters::stripe::StripePayments, req: Request) -> (u16, Value) {
        let ui = self.config.checkout_ui.clone().expect("checkout configured");
        let checkout = purchase::Checkout { payments, ui: &ui };
        read(purchase::handle(&self.config, &self.credits, &checkout, req).await)
    }

    /// The `webhook` function, verifying with this world's secret and the local Stripe.
    pub async fn webhook(&self, req: Request) -> (u16, Value) {
        let secret = Secret::new(WEBHOOK_SECRET);
        read(webhook::handle(&secret, &self.credits, &stripe_payments(), req).await)
    }

    /// Delivers `event` signed now with the world's secret, as Stripe does.
    pub async fn deliver(&self, event: &Value) -> (u16, Value) {
        self.deliver_to(&self.credits, event).await
    }

    /// Delivers `event` to a webhook running on `credits` (another instance's service).
    pub async fn deliver_to(&self, credits: &LiveCredits, event: &Value) -> (u16, Value) {
        let secret = Secret::new(WEBHOOK_SECRET);
        let req = signed_event(&event.to_string(), WEBHOOK_SECRET, now_s());
        read(webhook::handle(&secret, credits, &stripe_payments(), req).await)
    }

    /// Creates an account through `PUT /v1/accounts/{id}`.
    pub async fn account(&self, id: &str, plan: &str) {
        let (s, b) = self
            .api(put(
                &format!("/v1/accounts/{id}"),
                &service(),
                json!({"plan": plan, "billing_contacts": [{"email": "billing@example.com"}]}),
            ))
            .await;
        assert_eq!(s, 201, "{b}");
    }

    /// Grants credits with a service adjustment.
    pub async fn grant(&self, id: &str, micros: i64) {
        let (s, b) = self
            .api(post(
                &format!("/v1/accounts/{id}/credits/adjustments"),
                &service(),
                json!({"amount": micros, "reason": "test grant", "idempotency_key": unique("grant")}),
            ))
            .await;
        assert_eq!(s, 201, "{b}");
    }

    pub async fn usage(&self, id: &str, consumable: &str, quantity: i64) -> (u16, Value) {
        self.debit(post(
            &format!("/v1/accounts/{id}/usage"),
            &service(),
            json!({"consumable": consumable, "quantity": quantity, "idempotency_key": unique("u")}),
        ))
        .await
    }

    pub async fn view(&self, id: &str) -> Value {
        let (s, b) = self.api(get(&format!("/v1/accounts/{id}/credits"), &service())).await;
        assert_eq!(s, 200, "{b}");
        b
    }

    /// The units of `consumable` the account's plan includes each month (from the view).
    pub async fn included(&self, id: &str, consumable: &str) -> i64 {
        let v = self.view(id).await;
        v["allowances"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["consumable"] == consumable).and_then(|x| x["included"].as_i64()))
            .unwrap_or_else(|| panic!("no {consumable} allowance: {v}"))
    }

    /// Changes the stored account directly, as a flow this test does not drive would: one
    /// compare-and-swap from the current state (`Account::next`), edited by `edit`.
    pub async fn edit_account(&self, id: &str, edit: impl FnOnce(&mut topup::account::Account)) {
        let a = self.credits.store.load_account(id).await.expect("load").expect("account exists");
        let mut next = a.next(topup::clock::now_ms());
        edit(&mut next);
        let commit = topup::store::Commit::account_only(next, a.version);
        self.credits.store.commit(commit).await.map_err(|e| format!("{e:?}")).expect("edit account");
    }

    /// Saves a default card on the account the way the `setup_intent.succeeded` webhook will.
    pub async fn save_card(&self, id: &str) {
        self.edit_account(id, |a| {
            a.payment_method = Some(topup::account::PaymentMethod {
                id: "pm_card_visa".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                exp_month: 12,
                exp_year: 2030,
            });
            a.stripe_customer_id = Some("cus_test".into());
        })
        .await;
    }

    /// A real card in the local Stripe (localstripe): a customer for the account and a test card
    /// (`4242424242424242` pays, `4000000000000341` is declined when charged,
    /// `4000002760003184` needs authentication) saved as its default, as the setup flow does.
    pub async fn save_stripe_card(&self, id: &str, number: &str) -> topup::adapters::stripe::StripePayments {
        use topup::payments::Payments;
        let payments = stripe_payments();
        let customer = topup::payments::NewCustomer {
            email: Some("billing@example.com".into()),
            idempotency_key: self.credits.stripe_key("customer", id),
            metadata: self.credits.stripe_metadata(id, &[]),
        };
        let customer = payments.create_customer(&customer).await.expect("customer");
        let pm = stripe_card(&payments, &customer, number).await;
        self.edit_account(id, |a| {
            a.payment_method = Some(topup::account::PaymentMethod {
                id: pm,
                brand: "visa".into(),
                last4: number[number.len() - 4..].into(),
                exp_month: 12,
                exp_year: 2030,
            });
            a.stripe_customer_id = Some(customer);
        })
        .await;
        payments
    }

    /// Every ledger entry of the account, oldest first.
    pub async fn ledger(&self, id: &str) -> Vec<LedgerEntry> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let (page, more) = self.credits.store.ledger_page(id, 100, before).await.expect("ledger page");
            before = page.last().map(|e| e.seq);
            all.extend(page);
            if !more {
                break;
            }
        }
        all.reverse();
        all
    }

    /// Everything stored for the account (all items under its partition), to prove that a
    /// refused request changed nothing.
    pub async fn snapshot(&self, id: &str) -> Vec<std::collections::HashMap<String, AttributeValue>> {
        let out = self
            .dynamo
            .query()
            .table_name(&self.config.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("ACCOUNT#{id}")))
            .consistent_read(true)
            .send()
            .await
            .expect("query");
        out.items().to_vec()
    }

    /// rules §10.1: the balance is the sum of the ledger; lifetime totals are their sums;
    /// running balances chain; §10.4: never below zero. The checks reconciliation makes
    /// (`topup::reconcile::ledger_differences`), each of which its unit tests show failing.
    pub async fn assert_invariants(&self, id: &str) {
        let account = self.credits.store.load_account(id).await.expect("load").expect("account exists");
        let ledger = self.ledger(id).await;
        let differences = topup::reconcile::ledger_differences(&account, &ledger);
        assert!(differences.is_empty(), "{id}: {differences:#?}");
        // An account with lanes (rules §14): each lane on its own, and the whole.
        if account.lanes_ever() > 0 {
            let mut lanes = Vec::new();
            for lane in self.credits.lanes_of(&account).await.expect("lanes") {
                let l = self.ledger(&lane.id).await;
                let d = topup::reconcile::ledger_differences(&lane, &l);
                assert!(d.is_empty(), "{}: {d:#?}", lane.id);
                lanes.push((lane, l));
            }
            let d = topup::lanes::lane_differences(&account, &ledger, &lanes);
            assert!(d.is_empty(), "{id} with its lanes: {d:#?}");
        }
    }

    /// The account's ledger as its page shows it, oldest first: with lanes, every lane's
    /// entries merged in with the whole balance after each.
    pub async fn account_ledger(&self, id: &str) -> Vec<LedgerEntry> {
        let account = self.credits.store.load_account(id).await.expect("load").expect("account exists");
        self.credits.merged_ledger(&account).await.expect("merged ledger")
    }

    /// Sets auto-recharge through `PUT .../credits/auto-recharge` as the service; must be 200.
    pub async fn set_auto_recharge(&self, id: &str, body: Value) {
        let (s, b) = self.api(put(&format!("/v1/accounts/{id}/credits/auto-recharge"), &service(), body.clone())).await;
        assert_eq!(s, 200, "auto-recharge {body}: {b}");
    }
}

/// `BalanceLow` for `account` as EventBridge hands it to the auto-recharge function.
/// An event as EventBridge hands it to a function, read as the function's typed event; its
/// `source` is topup's when the test's JSON leaves it out.
pub fn bus_event<T: serde::Serialize + serde::de::DeserializeOwned>(
    event: &Value,
) -> aws_lambda_events::eventbridge::EventBridgeEvent<T> {
    let mut e = event.clone();
    if e.get("source").is_none() {
        e["source"] = json!("topup");
    }
    serde_json::from_value(e).unwrap_or_else(|err| panic!("not an EventBridge event ({err}): {event}"))
}

/// What EventBridge hands the `auto-recharge` function.
pub fn trigger(event: &Value) -> auto_recharge::Trigger {
    bus_event(event)
}

/// What invokes `webhooks-out`: an SQS batch (`Records`) or an event from the bus.
pub fn invocation(event: &Value) -> webhooks_out::Invocation {
    match event.get("Records") {
        Some(_) => serde_json::from_value(event.clone()).unwrap_or_else(|err| panic!("not an SQS batch ({err}): {event}")),
        None => webhooks_out::Invocation::Bus(bus_event(event)),
    }
}

pub fn balance_low(account: &str) -> Value {
    json!({"detail-type": "BalanceLow", "source": "topup", "detail": {"account_id": account}})
}

/// Reads events from an observer queue.
pub struct Observer {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl Observer {
    /// Drains the queue until it has been empty for `quiet`; returns the EventBridge envelopes.
    pub async fn drain(&self, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let mut idle_since = std::time::Instant::now();
        loop {
            let r = self
                .sqs
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive");
            let msgs = r.messages();
            if msgs.is_empty() {
                if idle_since.elapsed() >= quiet {
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            idle_since = std::time::Instant::now();
            for m in msgs {
                out.push(serde_json::from_str(m.body().unwrap_or("null")).expect("event json"));
                if let Some(h) = m.receipt_handle() {
                    self.sqs.delete_message().queue_url(&self.url).receipt_handle(h).send().await.expect("delete");
                }
            }
        }
    }
}

/// The events of one type, one per `event_id`: a redelivered duplicate (the outbox may
/// publish an event twice; consumers dedupe by id) counts once.
pub fn of_type<'a>(events: &'a [Value], detail_type: &str) -> Vec<&'a Value> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| e["detail-type"] == detail_type)
        .filter(|e| seen.insert(e["detail"]["event_id"].to_string()))
        .collect()
}

/// Distinct events (by `event_id`).
pub fn distinct(events: &[Value]) -> usize {
    events.iter().map(|e| e["detail"]["event_id"].to_string()).collect::<std::collections::HashSet<_>>().len()
}

// ---- requests -----------------------------------------------------------------------------

pub fn token(claims: Value) -> String {
    sign_hs256(&claims, &Secret::new(JWT_SECRET))
}

/// The service's OAuth client id in every test world, as the local stack's (rules §16).
pub const SERVICE_CLIENT_ID: &str = "topup-local-service";

/// The backend's token: its own client's, with every account in reach.
pub fn service() -> String {
    token(json!({"sub": "backend", "role": "service", "client_id": SERVICE_CLIENT_ID}))
}

/// A staff member's token (`support` or `finance`): no account, every account in view.
pub fn staff(role: &str) -> String {
    token(json!({"sub": format!("{role}-person"), "role": role}))
}

pub fn person(role: &str, account: &str) -> String {
    token(json!({"sub": "user-1", "role": role, "account_id": account}))
}

pub fn request(
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Option<String>,
) -> Request {
    let mut b = lambda_http::http::Request::builder().method(method).uri(format!("https://api.example.com{path}"));
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let req: Request = b.body(body.map_or(Body::Empty, Body::Text)).expect("request");
    // As lambda_http does for API Gateway events: the query also as parsed parameters.
    let query: std::collections::HashMap<String, String> = path
        .split_once('?')
        .map(|(_, q)| {
            q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        })
        .unwrap_or_default();
    req.with_query_string_parameters(query)
}

pub fn post(path: &str, bearer: &str, body: Value) -> Request {
    request("POST", path, Some(bearer), Some("application/json"), Some(body.to_string()))
}

pub fn put(path: &str, bearer: &str, body: Value) -> Request {
    request("PUT", path, Some(bearer), Some("application/json"), Some(body.to_string()))
}

pub fn get(path: &str, bearer: &str) -> Request {
    request("GET", path, Some(bearer), None, None)
}

pub fn read(resp: Response<Body>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).expect("json body"),
        Body::Binary(b) => serde_json::from_slice(b).expect("json body"),
        _ => Value::Null,
    };
    (status, body)
}

/// Everything moto holds (`GET /moto-api/data.json`): sent email under `ses.Message`, SMS
/// under `sns.SMS`. Shared by all tests of a run, so filter by this test's recipients.
pub async fn moto_data() -> Value {
    let (_, body) = raw_http(&endpoint(), "GET /moto-api/data.json HTTP/1.0\r\n\r\n").await;
    serde_json::from_str(&body).expect("data.json")
}

/// One HTTP/1.0 exchange with a local emulator at `base` (`http://127.0.0.1:PORT`): `head`
/// is the request line and headers, with the blank line that ends them; a `Host` header is
/// added. The status and the body as text.
async fn raw_http(base: &str, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://").trim_end_matches('/').to_string();
    let (line, rest) = head.split_once("\r\n").unwrap_or((head, ""));
    let req = format!("{line}\r\nHost: {host}\r\n{rest}");
    let mut stream = tokio::net::TcpStream::connect(&host).await.expect("connect to the emulator");
    stream.write_all(req.as_bytes()).await.expect("request");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("response");
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("null", |(_, b)| b).to_string();
    (status, body)
}

/// The local Stripe, through the real client.
pub fn stripe_payments() -> topup::adapters::stripe::StripePayments {
    let base = std::env::var("TOPUP_TEST_STRIPE_API_BASE")
        .unwrap_or_else(|_| panic!("TOPUP_TEST_STRIPE_API_BASE is not set: run ./scripts/test"));
    topup::adapters::stripe::StripePayments::new(&Secret::new("sk_test_local_stack"), Some(&base))
        .expect("stripe client")
}

/// A test card (12/2030, CVC 123) created in the local Stripe and attached to `customer`; its id.
pub async fn stripe_card(payments: &topup::adapters::stripe::StripePayments, customer: &str, number: &str) -> String {
    use stripe_payment::payment_method::{
        AttachPaymentMethod, CreatePaymentMethod, CreatePaymentMethodCard, CreatePaymentMethodCardDetailsParams,
        CreatePaymentMethodType,
    };
    let card = CreatePaymentMethodCardDetailsParams {
        cvc: Some("123".into()),
        exp_month: 12,
        exp_year: 2030,
        networks: None,
        number: number.into(),
    };
    let pm = CreatePaymentMethod::new()
        .type_(CreatePaymentMethodType::Card)
        .card(CreatePaymentMethodCard::CardDetailsParams(card))
        .send(&payments.client().await.expect("client"))
        .await
        .expect("payment method");
    AttachPaymentMethod::new(pm.id.clone())
        .customer(customer)
        .send(&payments.client().await.expect("client"))
        .await
        .expect("attach");
    pm.id.to_string()
}

pub fn now_s() -> i64 {
    topup::clock::now_ms() / 1000
}

/// A `Stripe-Signature` header for `payload`: `t=<timestamp>,v1=<HMAC-SHA256 of "t.payload">`.
pub fn stripe_signature(payload: &str, secret: &str, timestamp: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// `POST /stripe/webhook` with `payload` signed by `secret` at `timestamp`.
pub fn signed_event(payload: &str, secret: &str, timestamp: i64) -> Request {
    let mut req = request("POST", "/stripe/webhook", None, Some("application/json"), Some(payload.to_string()));
    let sig = stripe_signature(payload, secret, timestamp);
    req.headers_mut().insert("stripe-signature", sig.parse().expect("header value"));
    req
}

/// A Stripe event envelope around `object`, as Stripe renders it.
pub fn stripe_event(event_type: &str, object: Value) -> Value {
    json!({
        "id": unique("evt"),
        "object": "event",
        "api_version": "2025-11-17.clover",
        "created": now_s(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
        "data": {"object": object},
    })
}

/// A request to the local Stripe's API or its test-only `/_config/` routes (form-encoded); the
/// JSON answer.
pub async fn local_stripe(method: &str, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let base = std::env::var("TOPUP_TEST_STRIPE_API_BASE").expect("TOPUP_TEST_STRIPE_API_BASE");
    let body: String = form
        .iter()
        .map(|(k, v)| {
            format!("{}={}", k, v.replace('%', "%25").replace('&', "%26").replace('=', "%3D").replace('+', "%2B"))
        })
        .collect::<Vec<_>>()
        .join("&");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nAuthorization: Bearer sk_test_local_stack\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = raw_http(&base, &head).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

// ---- buying through the local Stripe ----------------------------------------------------

/// The purchases path of an account.
pub fn purchases(account: &str) -> String {
    format!("/v1/accounts/{account}/credits/purchases")
}

/// `POST .../purchases` as an admin of the account, with an optional `Idempotency-Key`.
pub fn buy_request(account: &str, body: Value, key: Option<&str>) -> Request {
    let mut req = post(&purchases(account), &person("admin", account), body);
    if let Some(k) = key {
        req.headers_mut().insert("idempotency-key", k.parse().expect("header"));
    }
    req
}

/// The Checkout Session as the local Stripe holds it (what its events carry).
pub async fn session(id: &str) -> Value {
    let (s, b) = local_stripe("GET", &format!("/v1/checkout/sessions/{id}"), &[]).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Plays the customer on the session's payment page.
pub async fn pay(id: &str, form: &[(&str, &str)]) -> Value {
    let (s, b) = local_stripe("POST", &format!("/_config/checkout/sessions/{id}/pay"), form).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// A page of the local Stripe (a hosted receipt, its PDF): status and body as text.
pub async fn local_page(path: &str) -> (u16, String) {
    let base = std::env::var("TOPUP_TEST_STRIPE_API_BASE").expect("TOPUP_TEST_STRIPE_API_BASE");
    raw_http(&base, &format!("GET {path} HTTP/1.0\r\n\r\n")).await
}

/// An invoice as the local Stripe holds it (what `invoice.paid` carries).
pub async fn invoice(id: &str) -> Value {
    let (s, b) = local_stripe("GET", &format!("/v1/invoices/{id}"), &[]).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Delivers the `invoice.paid` of a paid Checkout Session's invoice (rules §20), as Stripe sends
/// it beside `checkout.session.completed`.
pub async fn deliver_receipt(w: &World, paid: &Value) {
    let id = paid["invoice"].as_str().expect("Checkout made its invoice");
    let (s, r) = w.deliver(&stripe_event("invoice.paid", invoice(id).await)).await;
    assert_eq!(s, 200, "{r}");
}

/// Refunds `cents` of a PaymentIntent in the local Stripe (all of what is left with `None`);
/// the charge afterwards, with Stripe's running `amount_refunded` (what `charge.refunded`
/// carries).
pub async fn refund_at_stripe(pi: &str, cents: Option<i64>) -> Value {
    let amount = cents.map(|c| c.to_string());
    let mut form = vec![("payment_intent", pi)];
    if let Some(a) = &amount {
        form.push(("amount", a));
    }
    let (s, r) = local_stripe("POST", "/v1/refunds", &form).await;
    assert_eq!(s, 200, "{r}");
    let (_, charge) = local_stripe("GET", &format!("/v1/charges/{}", r["charge"].as_str().expect("charge")), &[]).await;
    charge
}

/// A purchase opened through the function; its body.
pub async fn open_purchase(w: &World, account: &str, body: Value) -> Value {
    let (s, b) = w.buy(buy_request(account, body, Some(&unique("buy")))).await;
    assert_eq!(s, 201, "{b}");
    b
}

/// A Stripe client whose API cannot be reached (a closed port on loopback): Stripe is down.
pub fn unreachable_stripe() -> topup::adapters::stripe::StripePayments {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    topup::adapters::stripe::StripePayments::new(
        &Secret::new("sk_test_local_stack"),
        Some(&format!("http://127.0.0.1:{port}")),
    )
    .expect("stripe client")
}

/// A unique phone number in E.164 form.
pub fn unique_phone() -> String {
    let n = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([1; 8])) % 10_000_000;
    format!("+1555{n:07}")
}

/// Micro-credits in one credit.
pub const C: i64 = topup::money::MICROS_PER_CREDIT;

/// Counts DynamoDB HTTP requests by operation (`x-amz-target`), retries included, and the
/// write capacity they cost by DynamoDB's published item-size rules: an SDK interceptor for the
/// benchmarks' per-operation figures. It also sums any `ConsumedCapacity` the server reports
/// (the store asks for it on every commit; moto answers an empty list for TransactWriteItems).
#[derive(Debug, Default, Clone)]
pub struct RequestCounter(std::sync::Arc<std::sync::Mutex<Counts>>);

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub requests: std::collections::BTreeMap<String, u64>,
    /// Write capacity units by DynamoDB's rules, per kind of item (the sort key's prefix).
    pub wcu: std::collections::BTreeMap<String, f64>,
    /// Largest item seen per kind, in bytes by DynamoDB's rules.
    pub largest: std::collections::BTreeMap<String, usize>,
    /// `ConsumedCapacity.CapacityUnits` the server reported, summed.
    pub reported: f64,
}

/// An item's size by DynamoDB's published rules ("Item sizes and formats"): attribute names
/// plus values; strings by UTF-8 length, numbers 1 byte per two significant digits plus 1,
/// booleans and nulls 1, lists and maps 3 plus 1 per element.
pub fn item_size(item: &serde_json::Map<String, Value>) -> usize {
    fn value(v: &Value) -> usize {
        let Some((t, x)) = v.as_object().and_then(|o| o.iter().next()) else { return 0 };
        match t.as_str() {
            "S" => x.as_str().map_or(0, str::len),
            "N" => {
                let digits: String = x.as_str().unwrap_or("0").chars().filter(char::is_ascii_digit).collect();
                let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1);
                significant.div_ceil(2) + 1
            }
            "B" => x.as_str().map_or(0, |b| b.len() * 3 / 4),
            "BOOL" | "NULL" => 1,
            "L" => 3 + x.as_array().map_or(0, |l| l.iter().map(|e| value(e) + 1).sum()),
            "M" => 3 + x.as_object().map_or(0, |m| m.iter().map(|(k, e)| k.len() + value(e) + 1).sum()),
            _ => 0,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "request-counter"
    }
    fn read_before_transmit(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let op =
            ctx.request().headers().get("x-amz-target").unwrap_or("?").rsplit('.').next().unwrap_or("?").to_string();
        let body: Value = ctx.request().body().bytes().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let mut puts: Vec<(&serde_json::Map<String, Value>, f64)> = Vec::new();
        match op.as_str() {
            // Transactional writes cost 2 WCU per KB of each item; standard writes 1.
            "TransactWriteItems" => {
                for t in body["TransactItems"].as_array().into_iter().flatten() {
                    if let Some(item) = t["Put"]["Item"].as_object() {
                        puts.push((item, 2.0));
                    }
                }
            }
            "PutItem" => puts.extend(body["Item"].as_object().map(|i| (i, 1.0))),
            _ => {}
        }
        if let Ok(mut m) = self.0.lock() {
            *m.requests.entry(op).or_default() += 1;
            for (item, per_kb) in puts {
                let size = item_size(item);
                let sk = item.get("sk").and_then(|v| v["S"].as_str()).unwrap_or("?");
                let kind = sk.split('#').next().unwrap_or("?").to_string();
                *m.wcu.entry(kind.clone()).or_default() += per_kb * size.div_ceil(1024) as f64;
                let largest = m.largest.entry(kind).or_default();
                *largest = (*largest).max(size);
            }
        }
        Ok(())
    }
    fn read_before_deserialization(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let body: Value =
            ctx.response().body().bytes().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let units = |c: &Value| c["CapacityUnits"].as_f64().unwrap_or(0.0);
        let reported = match &body["ConsumedCapacity"] {
            Value::Array(list) => list.iter().map(units).sum(),
            c @ Value::Object(_) => units(c),
            _ => 0.0,
        };
        if let Ok(mut m) = self.0.lock() {
            m.reported += reported;
        }
        Ok(())
    }
}

impl RequestCounter {
    /// An SQS client on `aws` whose every request this counter counts.
    pub fn sqs(&self, aws: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(aws_sdk_sqs::config::Builder::from(aws).interceptor(self.clone()).build())
    }

    /// A DynamoDB client on `aws` whose every request this counter counts.
    pub fn dynamo(&self, aws: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(aws).interceptor(self.clone()).build(),
        )
    }

    /// The request counts so far, which start again from zero (capacity figures too).
    pub fn take(&self) -> std::collections::BTreeMap<String, u64> {
        self.take_all().requests
    }

    /// Everything counted so far, which starts again from zero.
    pub fn take_all(&self) -> Counts {
        self.0.lock().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
    }
}

// ---- bulk loading -------------------------------------------------------------------------

/// Writes items 25 to a `BatchWriteItem`, as a bulk load would.
pub async fn write_items(w: &World, items: Vec<std::collections::HashMap<String, AttributeValue>>) {
    for chunk in items.chunks(25) {
        let mut requests: Vec<aws_sdk_dynamodb::types::WriteRequest> = chunk
            .iter()
            .map(|item| {
                let put = aws_sdk_dynamodb::types::PutRequest::builder()
                    .set_item(Some(item.clone()))
                    .build()
                    .expect("put request");
                aws_sdk_dynamodb::types::WriteRequest::builder().put_request(put).build()
            })
            .collect();
        // The emulator may, like DynamoDB, hand some back unprocessed.
        while !requests.is_empty() {
            let out = w
                .dynamo
                .batch_write_item()
                .request_items(&w.config.table, requests.clone())
                .send()
                .await
                .expect("batch write");
            requests = out.unprocessed_items.and_then(|mut u| u.remove(&w.config.table)).unwrap_or_default();
        }
    }
}

/// The stored item of an account, as the store writes it.
pub fn account_item(a: &topup::account::Account) -> std::collections::HashMap<String, AttributeValue> {
    topup::adapters::dynamo::account_item(a).expect("an account's item")
}

// ---- webhooks out ---------------------------------------------------------------------------

/// A receiver: answers each request with the next scripted status (200 when the script is
/// done) and keeps what it was sent (the signature header and the body).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    script: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    pub async fn start(script: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let r = Receiver {
            url: format!("http://127.0.0.1:{port}/hooks/topup"),
            script: std::sync::Arc::new(std::sync::Mutex::new(script.iter().copied().collect())),
            got: std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then Content-Length bytes of body.
                    let (head, body) = loop {
                        let Ok(n) = tokio::io::AsyncReadExt::read(&mut sock, &mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..at]).to_string();
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                                })
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            while buf.len() < at + 4 + len {
                                let Ok(n) = tokio::io::AsyncReadExt::read(&mut sock, &mut chunk).await else { return };
                                if n == 0 {
                                    return;
                                }
                                buf.extend_from_slice(&chunk[..n]);
                            }
                            break (head, String::from_utf8_lossy(&buf[at + 4..at + 4 + len]).to_string());
                        }
                    };
                    let sig = head
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("topup-signature")))
                        .map(|(_, v)| v.trim().to_string())
                        .unwrap_or_default();
                    me.got.lock().unwrap().push((sig, body));
                    let status = me.script.lock().unwrap().pop_front().unwrap_or(200);
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut sock, resp.as_bytes()).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut sock).await;
                });
            }
        });
        r
    }

    pub fn got(&self) -> Vec<(String, Value, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(sig, body)| (sig.clone(), serde_json::from_str(body).expect("json body"), body.clone()))
            .collect()
    }
}

pub fn dispatcher(
    w: &World,
) -> Dispatcher<
    topup::adapters::dynamo::DynamoStore,
    topup::adapters::webhooks_out::HttpSender,
    topup::adapters::webhooks_out::SqsRetryQueue,
    topup::adapters::ses_sns::AwsChannels,
> {
    topup::live_dispatcher(&w.config, &w.aws).expect("live dispatcher")
}

pub async fn register(w: &World, url: &str, events: Value) -> Value {
    let (s, b) = w.api(post("/v1/webhook-endpoints", &service(), json!({"url": url, "events": events}))).await;
    assert_eq!(s, 201, "{b}");
    b
}

/// Hands the follow-ups on the world's queue to the handler, as Lambda's SQS source does,
/// until the queue has been empty for `quiet`. Returns how many messages it handed over.
pub async fn run_follow_ups<W, H, Q, C>(w: &World, d: &Dispatcher<W, H, Q, C>, quiet: Duration) -> usize
where
    W: topup::webhooks::WebhookStore,
    H: topup::webhooks::deliver::Sender,
    Q: topup::webhooks::deliver::RetryQueue,
    C: topup::notify::Channels,
{
    let url = w.config.webhooks.queue_url.clone().expect("queue");
    let mut handed = 0;
    let mut idle = std::time::Instant::now();
    loop {
        let r = w.sqs.receive_message().queue_url(&url).max_number_of_messages(10).send().await.expect("receive");
        let msgs = r.messages();
        if msgs.is_empty() {
            if idle.elapsed() >= quiet {
                return handed;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        idle = std::time::Instant::now();
        let records: Vec<Value> = msgs
            .iter()
            .map(|m| json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body()}))
            .collect();
        let out = webhooks_out::handle(d, &invocation(&json!({"Records": records})), topup::clock::now_ms).await.expect("handled");
        let failed: Vec<&str> = out["batchItemFailures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["itemIdentifier"].as_str())
            .collect();
        for m in msgs {
            if !failed.contains(&m.message_id().unwrap_or_default()) {
                let h = m.receipt_handle().unwrap_or_default();
                w.sqs.delete_message().queue_url(&url).receipt_handle(h).send().await.expect("delete");
            }
        }
        handed += msgs.len();
    }
}
