//! The audit log over the in-memory store: the chain, its verification, and what the engine
//! records (and does not) with each change.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::adapters::memory::MemoryStore;
use crate::adapters::memory::memory_credits;
use crate::ids::key;
use crate::money::MICROS_PER_CREDIT as C;
use crate::store::Accounts;

fn change(n: i64) -> AuditChange {
    AuditChange::new("webhook_endpoint.update", format!("webhook_endpoint:we_{n}"), Some(json!({"n": n})), Some(json!({"n": n + 1})))
}

fn staff(sub: &str, role: &str) -> Context {
    Context { actor: Actor { sub: sub.into(), role: role.into() }, request_id: format!("req-{sub}"), reason: Some("asked".into()) }
}

async fn all_of(store: &MemoryStore, chain: &str) -> Vec<AuditRecord> {
    store.audit_chain(chain, 0, 1000).await.unwrap()
}

#[test]
fn canonical_json_sorts_keys_and_has_no_whitespace() {
    let v = json!({"b": 1, "a": {"d": [1, {"z": null, "y": "é\"x"}], "c": true}});
    assert_eq!(canonical_json(&v), r#"{"a":{"c":true,"d":[1,{"y":"é\"x","z":null}]},"b":1}"#);
}

#[test]
fn a_records_hash_is_of_its_content_and_the_hash_before_it() {
    let first = seal(change(1), None, None, 1_700_000_000_000);
    assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS));
    assert_eq!(first.hash.len(), 64);
    assert_eq!(first.hash, first.computed_hash());
    // By hand: SHA-256 of the canonical JSON without `hash`, then the previous hash.
    let mut v = serde_json::to_value(&first).unwrap();
    v.as_object_mut().unwrap().remove("hash");
    let mut h = Sha256::new();
    h.update(canonical_json(&v).as_bytes());
    h.update(GENESIS.as_bytes());
    assert_eq!(first.hash, hex(&h.finalize()));
    let second = seal(change(2), None, Some(&first.head()), 1_700_000_000_001);
    assert_eq!((second.seq, second.prev_hash.clone()), (2, first.hash.clone()));
    assert_eq!(verify_chain(NO_ACCOUNT_CHAIN, &[first.clone(), second.clone()], Some(&second.head())), Ok(2));
    // The record's shape (rules §19).
    let keys: Vec<String> = serde_json::to_value(&second).unwrap().as_object().unwrap().keys().cloned().collect();
    for k in ["id", "at", "actor", "action", "account_id", "target", "request_id", "before", "after", "hash"] {
        assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
    }
}

#[tokio::test]
async fn appends_chain_and_an_edited_or_removed_record_is_named() {
    let store = MemoryStore::default();
    for i in 0..5 {
        scoped(staff("ann", "support"), append_unbound(&store, change(i), 1_700_000_000_000 + i)).await.unwrap();
    }
    let records = all_of(&store, NO_ACCOUNT_CHAIN).await;
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(records.iter().all(|r| r.actor.sub == "ann" && r.request_id == "req-ann" && r.reason.as_deref() == Some("asked")));
    let head = store.audit_head(NO_ACCOUNT_CHAIN).await.unwrap();
    assert_eq!(head, Some(records[4].head()));
    assert_eq!(verify_chain(NO_ACCOUNT_CHAIN, &records, head.as_ref()), Ok(5));

    // Edited: the third record's `after` says something else.
    assert!(store.tamper_audit(NO_ACCOUNT_CHAIN, 3, |r| r.after = Some(json!({"n": 99}))));
    let edited = all_of(&store, NO_ACCOUNT_CHAIN).await;
    let broken = verify_chain(NO_ACCOUNT_CHAIN, &edited, head.as_ref()).unwrap_err();
    assert_eq!((broken.record_id.as_deref(), broken.seq), (Some(records[2].id.as_str()), 3), "{broken}");
    assert!(broken.to_string().contains("edited"), "{broken}");
    // Edited with its hash made again: the next record no longer follows it.
    assert!(store.tamper_audit(NO_ACCOUNT_CHAIN, 3, |r| r.hash = r.computed_hash()));
    let rehashed = all_of(&store, NO_ACCOUNT_CHAIN).await;
    let broken = verify_chain(NO_ACCOUNT_CHAIN, &rehashed, head.as_ref()).unwrap_err();
    assert_eq!(broken.record_id.as_deref(), Some(records[3].id.as_str()), "{broken}");
    assert!(store.tamper_audit(NO_ACCOUNT_CHAIN, 3, |r| *r = records[2].clone()));
    assert_eq!(verify_chain(NO_ACCOUNT_CHAIN, &all_of(&store, NO_ACCOUNT_CHAIN).await, head.as_ref()), Ok(5));

    // Removed from the middle: the record after the gap is named.
    assert!(store.remove_audit(NO_ACCOUNT_CHAIN, 2));
    let gap = verify_chain(NO_ACCOUNT_CHAIN, &all_of(&store, NO_ACCOUNT_CHAIN).await, head.as_ref()).unwrap_err();
    assert_eq!((gap.record_id.as_deref(), gap.seq), (Some(records[2].id.as_str()), 3), "{gap}");
    assert!(gap.why.contains("missing"), "{gap}");
}

#[tokio::test]
async fn removing_the_newest_record_shows_against_the_head() {
    let store = MemoryStore::default();
    for i in 0..3 {
        append_unbound(&store, change(i), 1_700_000_000_000 + i).await.unwrap();
    }
    let head = store.audit_head(NO_ACCOUNT_CHAIN).await.unwrap();
    assert!(store.remove_audit(NO_ACCOUNT_CHAIN, 3));
    let broken = verify_chain(NO_ACCOUNT_CHAIN, &all_of(&store, NO_ACCOUNT_CHAIN).await, head.as_ref()).unwrap_err();
    assert_eq!((broken.record_id.clone(), broken.seq), (None, 2));
    assert!(broken.why.contains("removed"), "{broken}");
}

#[tokio::test]
async fn an_append_after_a_head_that_moved_writes_nothing() {
    let store = MemoryStore::default();
    let first = seal(change(1), None, None, 1);
    assert!(store.append_audit(&first, None).await.unwrap());
    // A second writer that read no head (or an old one) cannot append at the same place.
    let rival = seal(change(2), None, None, 2);
    assert!(!store.append_audit(&rival, None).await.unwrap());
    assert_eq!(all_of(&store, NO_ACCOUNT_CHAIN).await, vec![first.clone()]);
    // Concurrent appenders all land, each once, in one unbroken chain.
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { append_unbound(&*s, change(10 + i), 10 + i).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let records = all_of(&store, NO_ACCOUNT_CHAIN).await;
    let head = store.audit_head(NO_ACCOUNT_CHAIN).await.unwrap();
    assert_eq!(verify_chain(NO_ACCOUNT_CHAIN, &records, head.as_ref()), Ok(9));
}

#[tokio::test]
async fn an_adjustment_records_itself_with_the_account_once() {
    let c = memory_credits("usd-overage");
    c.upsert_account("a", "free", vec![]).await.unwrap();
    let ctx = staff("sam", "support");
    scoped(ctx.clone(), c.adjust("a", 5 * C, "goodwill", &key("k1"))).await.unwrap();
    let a = c.store.load_account("a").await.unwrap().unwrap();
    let records = c.store.audit_chain("a", 0, 100).await.unwrap();
    assert_eq!(records.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), ["account.create", "credits.adjust"]);
    let r = &records[1];
    assert_eq!((r.actor.sub.as_str(), r.actor.role.as_str(), r.account_id.as_deref()), ("sam", "support", Some("a")));
    assert_eq!((r.target.as_str(), r.reason.as_deref()), ("account:a", Some("goodwill")));
    assert_eq!(r.before.as_ref().unwrap()["balance"], json!(0));
    assert_eq!(r.after.as_ref().unwrap()["balance"], json!(5 * C));
    // The account's head is the record's: both were written by one commit.
    assert_eq!(a.audit, Some(r.head()));
    // A replay of the key answers the first result and records nothing new.
    scoped(ctx.clone(), c.adjust("a", 5 * C, "goodwill", &key("k1"))).await.unwrap();
    assert_eq!(c.store.audit_chain("a", 0, 100).await.unwrap().len(), 2);
    // A refused adjustment records nothing either.
    assert!(scoped(ctx, c.adjust("a", -50 * C, "too much", &key("k2"))).await.is_err());
    assert_eq!(c.store.audit_chain("a", 0, 100).await.unwrap().len(), 2);
    let report = verify::verify_log(&c.store, &[]).await.unwrap();
    assert_eq!((report.records, report.broken.len()), (2, 0), "{report:?}");
}

#[tokio::test]
async fn a_commit_whose_record_cannot_be_written_writes_nothing() {
    let c = memory_credits("usd-overage");
    c.upsert_account("a", "free", vec![]).await.unwrap();
    c.adjust("a", C, "one", &key("k1")).await.unwrap();
    // Someone wrote a record where the next one goes: the adjustment's transaction fails whole.
    let squatter = seal(change(1), Some("a"), c.store.load_account("a").await.unwrap().unwrap().audit.as_ref(), 5);
    assert!(c.store.append_audit(&squatter, None).await.unwrap());
    let before = c.store.load_account("a").await.unwrap().unwrap();
    assert!(c.adjust("a", C, "two", &key("k2")).await.is_err());
    assert_eq!(c.store.load_account("a").await.unwrap().unwrap(), before, "the balance did not move without its record");
}

#[tokio::test]
async fn pages_are_newest_first_filtered_and_resume_from_their_cursor() {
    let store = MemoryStore::default();
    for i in 0..7 {
        let who = if i % 2 == 0 { staff("ann", "support") } else { staff("bob", "finance") };
        scoped(who, append_unbound(&store, change(i), 1_700_000_000_000 + i)).await.unwrap();
    }
    let all = AuditQuery::default();
    let p1 = store.audit_page(&all, 3, None).await.unwrap();
    assert_eq!(p1.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 6, 5]);
    let after = Position::from_cursor(p1.next_cursor.as_deref().unwrap()).unwrap();
    let p2 = store.audit_page(&all, 3, Some(&after)).await.unwrap();
    assert_eq!(p2.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 3, 2]);
    let after = Position::from_cursor(p2.next_cursor.as_deref().unwrap()).unwrap();
    let p3 = store.audit_page(&all, 3, Some(&after)).await.unwrap();
    assert_eq!((p3.records.len(), p3.next_cursor), (1, None));
    let bob = AuditQuery { actor: Some("bob".into()), ..AuditQuery::default() };
    let only = store.audit_page(&bob, 10, None).await.unwrap();
    assert_eq!(only.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 4, 2]);
    let support = AuditQuery { actor: Some("support".into()), ..AuditQuery::default() };
    let by_role = store.audit_page(&support, 10, None).await.unwrap();
    assert_eq!(by_role.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 5, 3, 1], "a role names its actors");
    let none = AuditQuery { action: Some("grant.void".into()), ..AuditQuery::default() };
    assert!(store.audit_page(&none, 10, None).await.unwrap().records.is_empty());
    assert_eq!(Position::from_cursor("not-a-cursor"), None);
}

#[tokio::test]
async fn every_change_through_the_engine_records_itself_and_a_change_to_nothing_does_not() {
    let c = memory_credits("usd-overage");
    let svc = Context { actor: Actor { sub: "backend".into(), role: "service".into() }, request_id: "r1".into(), reason: None };
    scoped(svc.clone(), async {
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.upsert_account("a", "pro", vec![]).await.unwrap();
        let grant = c.adjust("a", 3 * C, "welcome", &key("k")).await.unwrap();
        let grants = c.grants("a").await.unwrap();
        let g = serde_json::to_value(&grants).unwrap()["grants"][0]["id"].as_str().unwrap().to_string();
        c.void_grant("a", &g).await.unwrap();
        c.void_grant("a", &g).await.unwrap(); // voided already: nothing
        c.set_alerts("a", &[2 * C]).await.unwrap();
        c.set_alerts("a", &[2 * C]).await.unwrap(); // as it was: nothing
        let settings = crate::entities::EntitySettings { monthly_limit: Some(Some(C)), name: None };
        c.set_entity("a", "bob", &settings).await.unwrap();
        c.record_change("a", AuditChange::new("payment.refund", "payment:pi_1", None, Some(json!({"amount": 100})))).await.unwrap();
        drop(grant);
    })
    .await;
    let records = c.store.audit_chain("a", 0, 100).await.unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["account.create", "account.update", "credits.adjust", "grant.void", "alerts.update", "entity.update", "payment.refund"]
    );
    assert!(records.iter().all(|r| r.actor.sub == "backend" && r.request_id == "r1"));
    let void = &records[3];
    assert_eq!((void.before.as_ref().unwrap()["remaining"].clone(), void.after.as_ref().unwrap()["ended"].clone()), (json!(3 * C), json!("voided")));
    let head = c.store.load_account("a").await.unwrap().unwrap().audit;
    assert_eq!(verify_chain("a", &records, head.as_ref()), Ok(7));
}
