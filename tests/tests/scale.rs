//! Every account, every event (rules §13), against the emulators with over a thousand accounts:
//! one sweep visits every account with auto-recharge on, page after page, recovers claims stuck
//! on accounts past the first page, and goes on past an account it cannot read; reconciliation
//! over the same table finishes, reports that account as unreadable, checkpoints, and resumes;
//! a sweep and a reconciliation stopped part way by their deadline are finished by the next
//! run from where they stopped, each account once; one sweep delivers an outbox of five hundred
//! events.

use topup::store::{Accounts, Listings};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use topup::account::RechargeClaim;
use topup::adapters::dynamo::DynamoStore;
use topup::adapters::eventbridge::EventBridgeBus;
use topup::engine::Credits;
use topup::events::{pending_events, DomainEvent, Event};
use topup::ids::RechargeId;
use topup::money::{Micros, MICROS_PER_CREDIT as C};
use topup::payments::{PaymentHistory, PaymentRecord, PaymentsUnavailable};
use topup::recharge::LEASE_MS;
use topup::store::{Commit};
use topup_tests::*;

/// Accounts written straight to the table beside the few driven through the API.
/// Sweep pages are 500 accounts: this many make three, the last a partial one.
const BULK: usize = 1_100;
/// Accounts whose recharge claim was left in flight by a function that died.
const STUCK: usize = 6;

/// The account whose stored item cannot be read (its balance is not a number).
const BROKEN: &str = "bulk-00700x";

/// An account `template` with auto-recharge on, `n` copies of it `bulk-00000`… written straight
/// to the table (low, but not reached through usage: not due, so the sweep writes nothing for
/// them), each with the Stripe customer `customer` gives its id, and `BROKEN`. Every id.
async fn listed(w: &World, n: usize, customer: impl Fn(&str) -> Option<String>) -> BTreeSet<String> {
    w.account("template", "free").await;
    w.save_card("template").await;
    w.set_auto_recharge("template", json!({"enabled": true})).await;
    w.edit_account("template", |a| a.auto_recharge.low_without_usage = true).await;
    let template = w.credits.store.load_account("template").await.expect("load").expect("exists");
    assert!(template.swept(), "auto-recharge on lists the account for the sweep");
    let mut ids = BTreeSet::from(["template".to_string(), BROKEN.to_string()]);
    let mut items = Vec::new();
    for i in 0..n {
        let mut a = template.clone();
        a.id = format!("bulk-{i:05}");
        a.auto_recharge.low_without_usage = true;
        a.stripe_customer_id = customer(&a.id);
        ids.insert(a.id.clone());
        items.push(account_item(&a));
    }
    let mut broken = account_item(&template);
    broken.insert("pk".into(), AttributeValue::S(format!("ACCOUNT#{BROKEN}")));
    broken.insert("balance".into(), AttributeValue::S("not a number".into()));
    items.push(broken);
    write_items(w, items).await;
    ids
}

/// `BULK` accounts with auto-recharge on (none of them due, and no Stripe customer, so
/// reconciliation reads only our books for them), `STUCK` accounts with a real card whose claim
/// has been in flight for an hour (named to sort after the bulk, so past the first page of the
/// index), and one account whose stored item cannot be read.
async fn crowd(w: &World) -> Vec<String> {
    listed(w, BULK, |_| None).await;

    let mut stuck = Vec::new();
    for i in 0..STUCK {
        let id = format!("stuck-{i:02}");
        w.account(&id, "free").await;
        w.save_stripe_card(&id, "4242424242424242").await;
        w.set_auto_recharge(&id, json!({"enabled": true})).await;
        w.edit_account(&id, |a| {
            a.auto_recharge.in_flight = Some(RechargeClaim {
                recharge_id: RechargeId::new(format!("rch_stuck{i}")),
                claimed_at: topup::clock::now_ms() - 3_600_000,
                credits: Micros::new(10 * C),
                charge_cents: 1_000,
            });
            a.auto_recharge.episode_charged = true;
            a.auto_recharge.used_this_month = 1;
        })
        .await;
        stuck.push(id);
    }
    stuck
}

#[tokio::test]
async fn one_sweep_visits_every_account_recovers_stuck_claims_and_goes_past_a_broken_one() {
    let w = World::new("usd-overage").await;
    let stuck = crowd(&w).await;
    let payments = stripe_payments();

    let report = w.credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
    let everyone = BULK + 1 + 1 + STUCK; // the bulk, the unreadable one, the template, the stuck
    assert_eq!(
        (report.visited, report.recovered, report.recharged, report.failed, report.complete),
        (everyone, STUCK, 0, 1, true),
        "{:?} {:?}",
        report.failures,
        report.recharges
    );
    assert_eq!(report.failures[0].account_id, BROKEN);
    for id in &stuck {
        let v = w.view(id).await;
        assert_eq!(v["balance"], 10 * C, "{id} credited once: {v}");
        let a = w.credits.store.load_account(id).await.expect("load").expect("exists");
        assert!(a.auto_recharge.in_flight.is_none(), "{id}: the claim is released");
        w.assert_invariants(id).await;
    }
    // Nothing left to recover: the next sweep charges nobody and fails on the same account only.
    let again = w.credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
    assert_eq!((again.visited, again.recovered, again.recharged, again.failed), (everyone, 0, 0, 1));

    // Reconciliation over the same table, in segments with checkpoints: a run that reaches its
    // deadline at once leaves every segment to the next invocation, which finishes it.
    let run = unique("run");
    let early = w.credits.reconcile_run(&payments, &run, 4, Some(std::time::Instant::now())).await.expect("run");
    assert_eq!((early.complete, early.accounts), (false, 0));
    let done = w.credits.reconcile_run(&payments, &run, 4, None).await.expect("run");
    assert!(done.complete && done.worked);
    assert_eq!(done.accounts, everyone - 1, "every readable account");
    assert_eq!(done.unreadable.iter().map(|u| u.account_id.as_str()).collect::<Vec<_>>(), [BROKEN]);
    assert_eq!(done.differences, vec![], "the books agree");
    assert_eq!(done.stripe_payments, STUCK, "each recovered recharge is one payment at Stripe");
    // The finished run answers from its checkpoints and reads no account again.
    let later = w.credits.reconcile_run(&payments, &run, 4, None).await.expect("run");
    assert!(later.complete && !later.worked);
    assert_eq!((later.accounts, later.unreadable.len()), (done.accounts, 1));
}

#[tokio::test]
async fn one_sweep_delivers_an_outbox_of_hundreds_of_events() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    // Five hundred events left behind twenty minutes ago (every one of the 16 shards holds some),
    // committed with changes of the account (99 to a transaction, the most one takes beside the
    // account).
    let old = topup::clock::now_ms() - 20 * 60_000;
    let detail = topup::events::sample_detail("BalanceLow", json!({}));
    let mut left = 500;
    while left > 0 {
        let a = w.credits.store.load_account("acme").await.expect("load").expect("exists");
        let n = left.min(99);
        let outbox: Vec<DomainEvent> = (0..n)
            .map(|_| {
                let event = Event::read("BalanceLow", &detail).expect("ours").expect("reads");
                DomainEvent::new("acme", old, event)
            })
            .collect();
        let commit = Commit { outbox, ..Commit::account_only(a.next(topup::clock::now_ms()), a.version) };
        w.credits.store.commit(commit).await.map_err(|e| format!("{e:?}")).expect("commit");
        left -= n;
    }
    assert_eq!(pending_events(&w.credits.store, 1_000).await.expect("outbox").len(), 500);

    let report = w.credits.sweep(&stripe_payments(), 500, LEASE_MS).await.expect("sweep");
    assert_eq!((report.outbox.delivered, report.outbox.left), (500, 0));
    assert!(report.outbox.oldest_age_ms >= 20 * 60_000, "the age the alarm watches: {:?}", report.outbox);
    assert!(pending_events(&w.credits.store, 10).await.expect("outbox").is_empty());
    let seen = observer.drain(std::time::Duration::from_secs(2)).await;
    assert_eq!(distinct(&seen), 500, "each event on the bus, by its id");
}

/// Records the accounts the sweep reads (the keys of each `BatchGetItem`, as sent) and, until
/// `hold_until`, answers none: a `BatchGetItem` sent before that instant is held until it, as a
/// slow page would be. (An SDK interceptor is called synchronously, so the hold blocks its thread,
/// which is all the sweep is doing at that point.)
#[derive(Debug, Default, Clone)]
struct AccountReads {
    read: Arc<Mutex<BTreeSet<String>>>,
    hold_until: Arc<Mutex<Option<Instant>>>,
}

impl AccountReads {
    fn credits(&self, w: &World) -> LiveCredits {
        let client = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&w.aws).interceptor(self.clone()).build(),
        );
        let store = DynamoStore::new(client, w.config.table.clone());
        Credits::new(w.config.profile.clone(), store, EventBridgeBus::new(w.events.clone(), w.config.event_bus.clone()))
    }

    fn hold_until(&self, t: Instant) {
        *self.hold_until.lock().expect("lock") = Some(t);
    }

    /// The accounts read since the last take.
    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.read.lock().expect("lock"))
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for AccountReads {
    fn name(&self) -> &'static str {
        "account-reads"
    }
    fn read_before_transmit(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if ctx.request().headers().get("x-amz-target") != Some("DynamoDB_20120810.BatchGetItem") {
            return Ok(());
        }
        let body: Value = ctx.request().body().bytes().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let keys = body["RequestItems"].as_object().into_iter().flat_map(|t| t.values()).flat_map(|t| {
            t["Keys"].as_array().into_iter().flatten().filter_map(|k| k["pk"]["S"].as_str()?.strip_prefix("ACCOUNT#"))
        });
        self.read.lock().expect("lock").extend(keys.map(str::to_string));
        let hold = *self.hold_until.lock().expect("lock");
        if let Some(wait) = hold.and_then(|t| t.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_sweep_stopped_at_its_deadline_resumes_from_its_cursor_and_visits_each_account_once() {
    let w = World::new("usd-overage").await;
    let everyone = listed(&w, 1_200, |_| None).await;
    let reads = AccountReads::default();
    let credits = reads.credits(&w);
    let payments = stripe_payments();

    // The first page (500 accounts of the index) is read before the deadline and answered after
    // it: the run finishes that page, then stops and keeps its cursor.
    let deadline = Instant::now() + Duration::from_millis(1_500);
    reads.hold_until(deadline);
    let first = credits.sweep_until(&payments, 500, LEASE_MS, Some(deadline)).await.expect("sweep");
    assert_eq!((first.visited, first.complete), (500, false), "{first:?}");
    let first_read = reads.take();
    assert_eq!(first_read.len(), 500);
    let cursor = credits.store.load_checkpoint("SWEEP#cursor").await.expect("checkpoint");
    let Some(Value::String(cursor)) = cursor else { panic!("no cursor kept: {cursor:?}") };
    assert!(first_read.contains(&cursor), "the cursor is the last account of the page: {cursor}");

    // The next run starts at the cursor, not at the top, and goes to the end.
    let second = credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
    assert!(second.complete);
    assert_eq!(second.visited, everyone.len() - 500);
    let second_read = reads.take();
    assert!(first_read.is_disjoint(&second_read), "no account visited twice");
    assert_eq!(first_read.union(&second_read).cloned().collect::<BTreeSet<_>>(), everyone, "none skipped");
    let failed: Vec<&str> = first.failures.iter().chain(&second.failures).map(|f| f.account_id.as_str()).collect();
    assert_eq!((first.failed + second.failed, failed), (1, vec![BROKEN]));

    // Finished, the cursor is cleared: the run after starts from the top again.
    let cursor = credits.store.load_checkpoint("SWEEP#cursor").await.expect("checkpoint");
    assert!(!matches!(cursor, Some(Value::String(_))), "{cursor:?}");
    let third = credits.sweep(&payments, 500, LEASE_MS).await.expect("sweep");
    assert_eq!((third.visited, third.complete), (everyone.len(), true));
    assert_eq!(reads.take(), everyone);
}

/// Stripe's payments of each customer, none, and which customers were asked for: the first
/// ask before `hold_until` is answered at that instant, as a slow Stripe would.
#[derive(Default)]
struct Customers {
    asked: Mutex<BTreeMap<String, usize>>,
    hold_until: Mutex<Option<Instant>>,
}

impl Customers {
    /// How often each customer was asked for since the last take.
    fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut *self.asked.lock().expect("lock"))
    }
}

impl PaymentHistory for Customers {
    async fn customer_payments(&self, customer_id: &str) -> Result<Vec<PaymentRecord>, PaymentsUnavailable> {
        *self.asked.lock().expect("lock").entry(customer_id.to_string()).or_default() += 1;
        let hold = *self.hold_until.lock().expect("lock");
        if let Some(t) = hold {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
        }
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn a_reconciliation_stopped_at_its_deadline_resumes_from_its_checkpoints_and_checks_each_account_once() {
    let w = World::new("usd-overage").await;
    let everyone = listed(&w, 800, |id| Some(format!("cus_{id}"))).await;
    let template = w.credits.store.load_account("template").await.expect("load").expect("exists");
    let customers: BTreeSet<String> = everyone
        .iter()
        .filter(|id| *id != BROKEN)
        .map(|id| {
            if id == "template" {
                template.stripe_customer_id.clone().expect("card saved")
            } else {
                format!("cus_{id}")
            }
        })
        .collect();
    let stripe = Customers::default();
    let run = unique("run");

    // Every segment starts its first page before the deadline and gets Stripe's answers only
    // at it: each finishes that page (a checkpoint) and stops, with accounts left.
    let deadline = Instant::now() + Duration::from_millis(1_500);
    *stripe.hold_until.lock().expect("lock") = Some(deadline);
    let early = w.credits.reconcile_run(&stripe, &run, 4, Some(deadline)).await.expect("run");
    assert!(!early.complete && early.worked, "{early:?}");
    assert!(early.accounts >= 4 * 99 && early.accounts < customers.len(), "part of the run: {}", early.accounts);
    let first = stripe.take();
    assert_eq!(first.len(), early.accounts, "each account reconciled asks Stripe once");
    assert!(first.values().all(|n| *n == 1), "{first:?}");

    // The next invocation goes on from the checkpoints and finishes the run.
    *stripe.hold_until.lock().expect("lock") = None;
    let done = w.credits.reconcile_run(&stripe, &run, 4, None).await.expect("run");
    assert!(done.complete && done.worked);
    let second = stripe.take();
    assert!(second.values().all(|n| *n == 1), "{second:?}");
    assert!(first.keys().all(|c| !second.contains_key(c)), "an account checked in both invocations");
    assert_eq!(first.keys().chain(second.keys()).cloned().collect::<BTreeSet<_>>(), customers, "none skipped");
    // The report is the whole run's, counted from both invocations.
    assert_eq!(done.accounts, customers.len());
    assert_eq!(done.unreadable.iter().map(|u| u.account_id.as_str()).collect::<Vec<_>>(), [BROKEN]);
    assert_eq!(done.differences, vec![], "the books agree");
    // Finished, it answers from its checkpoints and asks nothing.
    let later = w.credits.reconcile_run(&stripe, &run, 4, None).await.expect("run");
    assert!(later.complete && !later.worked);
    assert_eq!((later.accounts, later.unreadable.len()), (done.accounts, 1));
    assert!(stripe.take().is_empty());
}
