use super::*;
use serde_json::json;
use std::sync::Mutex;

type Step = Result<(u16, Value), TransportError>;

/// Answers scripted replies first, then 200 with one result per event, in reverse order (so a
/// client matching by position alone hands callers the wrong results). Records every request.
#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<Step>>,
    sent: Mutex<Vec<(String, Value)>>,
    gate: Option<Arc<Semaphore>>, // each answer takes a permit when set
    delay: Duration,
}

impl Transport for Arc<Fake> {
    async fn send(&self, account_id: &str, body: Value) -> Result<Reply, TransportError> {
        sleep(self.delay).await;
        self.sent.lock().unwrap().push((account_id.to_string(), body.clone()));
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let (status, body) = match self.script.lock().unwrap().pop_front() {
            Some(step) => step?,
            None => (200, answer(&body)),
        };
        Ok(Reply { status, retry_after: None, body })
    }
}

fn answer(body: &Value) -> Value {
    let events = body["events"].as_array().unwrap().iter().rev();
    let results: Vec<Value> = events
        .map(|e| {
            let key = e["idempotency_key"].as_str().unwrap();
            json!({"idempotency_key": key, "status": 200, "replayed": false, "transaction_id": format!("txn_{key}"),
                   "from_allowance": 0, "from_credits": e["quantity"].as_i64().unwrap() * 1000, "balance": 7})
        })
        .collect();
    json!({ "results": results })
}

fn fake(script: Vec<Step>) -> Arc<Fake> {
    Arc::new(Fake { script: Mutex::new(script.into()), ..Fake::default() })
}

fn sent(f: &Fake) -> Vec<(String, Vec<String>)> {
    let keys = |b: &Value| b["events"].as_array().unwrap().iter().map(|e| e["idempotency_key"].to_string()).collect();
    f.sent.lock().unwrap().iter().map(|(a, b)| (a.clone(), keys(b))).collect()
}

fn cfg(max_wait_ms: u64) -> Config {
    let (base_backoff, max_backoff) = (Duration::from_millis(1), Duration::from_millis(4));
    Config { max_wait: Duration::from_millis(max_wait_ms), base_backoff, max_backoff, ..Config::default() }
}

/// Runs a test on one thread; one that hangs fails after 20 s instead.
fn block(test: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), test).await.expect("test hung") });
}

async fn two(b: &Batcher) -> [Result<EventResult, ClientError>; 2] {
    let (x, y) = tokio::join!(b.debit("a", "api_calls", 1, "k1"), b.debit("a", "api_calls", 2, "k2"));
    [x, y]
}

#[test]
fn callers_share_few_batches_and_each_gets_its_own_result() {
    block(async {
        let f = fake(vec![]);
        let batcher = Batcher::new(f.clone(), cfg(1000)); // only a full batch is sent, however slow the machine
        let mut tasks = JoinSet::new();
        for t in 0..20u64 {
            let batcher = batcher.clone();
            tasks.spawn(async move {
                let mut debits = JoinSet::new();
                for n in t * 10 + 1..=t * 10 + 10 {
                    let b = batcher.clone();
                    debits.spawn(async move { (n, b.debit("hot", "api_calls", n, format!("k{n}")).await) });
                }
                debits.join_all().await
            });
        }
        for (n, result) in tasks.join_all().await.into_iter().flatten() {
            let r = result.unwrap();
            assert_eq!((r.idempotency_key, r.from_credits), (format!("k{n}"), Some(n as i64 * 1000)));
            assert_eq!(r.transaction_id, Some(format!("txn_k{n}")));
        }
        let sent = sent(&f);
        assert!(sent.len() <= 200usize.div_ceil(50) + 2 && sent.iter().all(|(_, k)| k.len() <= 50), "{sent:?}");
        assert_eq!(sent.iter().map(|(_, k)| k.len()).sum::<usize>(), 200);
    });
}

#[test]
fn max_wait_sends_a_lone_debit() {
    block(async {
        let (f, start) = (fake(vec![]), Instant::now());
        assert!(Batcher::new(f.clone(), cfg(50)).debit("a", "api_calls", 1, "only").await.unwrap().is_applied());
        assert!(start.elapsed() >= Duration::from_millis(50), "sent before max_wait");
        assert_eq!(sent(&f), [("a".to_string(), vec!["\"only\"".to_string()])]);
    });
}

#[test]
fn unavailable_is_retried_with_the_same_events_a_bounded_number_of_times() {
    block(async {
        let f = fake(vec![Ok((503, json!({"error": {"code": "account_busy"}}))), Err(TransportError("reset".into()))]);
        let [a, b] = two(&Batcher::new(f.clone(), cfg(5))).await;
        assert_eq!((a.unwrap().idempotency_key, b.unwrap().idempotency_key), ("k1".into(), "k2".into()));
        assert_eq!(sent(&f), vec![("a".to_string(), vec!["\"k1\"".to_string(), "\"k2\"".to_string()]); 3]);

        let f = fake((0..10).map(|_| Ok((502, Value::Null))).collect());
        let err = Batcher::new(f.clone(), Config { max_retries: 2, ..cfg(5) }).debit("a", "c", 1, "k").await;
        assert!(matches!(err, Err(ClientError::Exhausted { attempts: 3, .. })), "{err:?}");
        assert_eq!(sent(&f).len(), 3);
    });
}

#[test]
fn a_bad_request_or_a_reply_not_matching_the_batch_fails_each_caller() {
    block(async {
        let result = |key: &str| json!({"idempotency_key": key, "status": 200});
        let wrong_key = json!({"results": [result("k1"), result("x")]});
        let one_more = json!({"results": [result("k1"), result("k2"), result("k3")]});
        let invalid = json!({"error": {"code": "invalid_request"}});
        let replies = [invalid, json!({"results": []}), wrong_key, one_more, json!("?")];
        let f = fake(replies.into_iter().enumerate().map(|(i, r)| Ok((if i == 0 { 400 } else { 200 }, r))).collect());
        let batcher = Batcher::new(f.clone(), cfg(5));
        assert!(two(&batcher).await.iter().all(|r| matches!(r, Err(ClientError::Rejected { status: 400, .. }))));
        for _ in 0..4 {
            assert!(two(&batcher).await.iter().all(|r| matches!(r, Err(ClientError::BadReply(_)))));
        }
        assert_eq!(sent(&f).len(), 5); // neither is retried
    });
}

#[test]
fn accounts_never_share_a_batch() {
    block(async {
        let f = fake(vec![]);
        let batcher = Batcher::new(f.clone(), Config { max_batch: 4, ..cfg(5) });
        let mut debits = JoinSet::new();
        for i in 0..20 {
            let (b, account) = (batcher.clone(), ["a", "b"][i % 2]);
            debits.spawn(async move { b.debit(account, "api_calls", 1, format!("{account}-{i}")).await });
        }
        assert!(debits.join_all().await.iter().all(Result::is_ok));
        let sent = sent(&f);
        assert!(sent.len() >= 6 && sent.iter().all(|(a, keys)| keys.iter().all(|k| k.starts_with(&format!("\"{a}-")))));
    });
}

#[test]
fn flush_and_shutdown_send_what_is_waiting() {
    block(async {
        let f = Arc::new(Fake { delay: Duration::from_millis(10), ..Fake::default() }); // flush waits for answers
        let batcher = Batcher::new(f.clone(), cfg(3_600_000));
        let mut debits = JoinSet::new();
        for i in 0..4 {
            let b = batcher.clone();
            debits.spawn(async move { b.debit(format!("acct{}", i % 2), "c", 1, format!("k{i}")).await });
            if i == 2 {
                sleep(Duration::from_millis(20)).await; // three queued, nothing due for an hour
                assert!(sent(&f).is_empty());
                batcher.flush().await;
                assert_eq!(sent(&f).len(), 2);
            }
        }
        sleep(Duration::from_millis(20)).await;
        batcher.shutdown().await;
        assert_eq!(sent(&f).len(), 3);
        assert!(debits.join_all().await.iter().all(Result::is_ok));
        assert_eq!(batcher.debit("acct0", "c", 1, "after").await, Err(ClientError::Closed));
    });
}

#[test]
fn debit_waits_while_too_many_are_pending() {
    block(async {
        let gate = Arc::new(Semaphore::new(0));
        let f = Arc::new(Fake { gate: Some(gate.clone()), ..Fake::default() });
        let batcher = Batcher::new(f.clone(), Config { max_batch: 1, max_pending: 2, ..cfg(5) });
        let mut debits = JoinSet::new();
        for i in 0..3 {
            let b = batcher.clone();
            debits.spawn(async move { b.debit("a", "api_calls", 1, format!("k{i}")).await });
        }
        sleep(Duration::from_millis(20)).await;
        assert_eq!(sent(&f).len(), 2, "the third debit must wait for a place");
        gate.add_permits(3);
        assert!(debits.join_all().await.iter().all(Result::is_ok));
        assert_eq!(sent(&f).len(), 3);
    });
}

#[test]
fn backoff_grows_is_capped_and_honours_retry_after() {
    let (cfg, ms) = (Config::default(), Duration::from_millis);
    for _ in 0..50 {
        assert!((ms(25)..=ms(50)).contains(&backoff(&cfg, 1, None)));
        assert!((ms(1000)..=ms(2000)).contains(&backoff(&cfg, 30, None)));
        assert!((ms(3000)..=ms(3025)).contains(&backoff(&cfg, 1, Some(3))));
        assert!(backoff(&cfg, 1, Some(u64::MAX)) <= ms(61_000));
    }
}
