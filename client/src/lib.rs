//! Client-side batching of usage debits for `POST /v1/accounts/{id}/usage/batch`.
//!
//! A [`Batcher`] takes single debits from any number of tasks, groups them per account and
//! sends a batch when `max_batch` debits wait or `max_wait` has passed since the first one.
//! Each caller's future resolves with its own event's [`EventResult`] (matched by idempotency
//! key). A refusal of one event (402, 409, 422) is an `Ok` result with that `status` and `error`;
//! `Err` is for the batch as a whole: a 400 or other final status, retries exhausted on
//! 429/5xx/transport errors, a reply that does not match the batch, or a shut-down batcher.
//! Retrying a whole batch is safe: every event carries its own idempotency key, so the events
//! already applied come back `replayed: true` and are never charged twice.
//!
//! The crate has no HTTP client; plug one in with [`Transport`]. With reqwest, for example:
//!
//! ```ignore
//! use topup_client::{Batcher, Config, Reply, Transport, TransportError};
//!
//! struct Http { client: reqwest::Client, base_url: String, service_token: String }
//!
//! impl Transport for Http {
//!     async fn send(&self, account_id: &str, body: serde_json::Value) -> Result<Reply, TransportError> {
//!         // account_id is percent-encoded by the caller's URL builder if it can hold '/' or '?'.
//!         let url = format!("{}/v1/accounts/{account_id}/usage/batch", self.base_url);
//!         let err = |e: reqwest::Error| TransportError(e.to_string());
//!         let resp = self.client.post(url).bearer_auth(&self.service_token) // Authorization: Bearer …
//!             .timeout(std::time::Duration::from_secs(10)).json(&body).send().await.map_err(err)?;
//!         let status = resp.status().as_u16();
//!         let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER)
//!             .and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
//!         let bytes = resp.bytes().await.map_err(err)?;
//!         let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
//!         Ok(Reply { status, retry_after, body })
//!     }
//! }
//! // let batcher = Batcher::new(Http { .. }, Config::default());   // inside a tokio runtime
//! // let r = batcher.debit("acct_1", "api_calls", 3, "evt-123").await?;
//! ```

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

/// The most events the API takes in one batch.
pub const MAX_BATCH: usize = 500;
/// A `Retry-After` longer than this is shortened to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Statuses after which the whole batch is sent again.
const RETRYABLE: [u16; 5] = [429, 500, 502, 503, 504];

/// What the server answered: status, `Retry-After` in seconds if any, JSON body (`Null` if none).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Value,
}

/// The request did not get an answer (connection, timeout, TLS, …); it is retried.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("transport error: {0}")]
pub struct TransportError(pub String);

/// Sends `body` as `POST /v1/accounts/{account_id}/usage/batch` with the service token.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, account_id: &str, body: Value) -> impl Future<Output = Result<Reply, TransportError>> + Send;
}

/// `{"code","message",…}` of a refused event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ApiError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One event's answer: `status` is what a single `POST …/usage` would have answered.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventResult {
    pub idempotency_key: String,
    pub status: u16,
    #[serde(default)]
    pub replayed: bool,
    pub transaction_id: Option<String>,
    pub from_allowance: Option<i64>,
    pub from_credits: Option<i64>,
    pub balance: Option<i64>,
    pub error: Option<ApiError>,
}

impl EventResult {
    /// Applied now or earlier (a replay); otherwise `error` says why not.
    pub fn is_applied(&self) -> bool {
        self.status == 200
    }
}

/// Why a debit has no [`EventResult`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("invalid debit: {0}")]
    Invalid(&'static str),
    /// A final answer for the whole batch (400 `invalid_request`, 401, 404, …).
    #[error("batch refused with status {status}: {body}")]
    Rejected { status: u16, body: Value },
    #[error("batch not delivered after {attempts} attempts; last: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("reply does not match the batch: {0}")]
    BadReply(String),
    #[error("the batcher is shut down")]
    Closed,
}

/// Batching and retry settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Debits per batch, 1 to [`MAX_BATCH`] (default 50).
    pub max_batch: usize,
    /// Longest wait of an account's first waiting debit before its batch is sent (default 5 ms).
    pub max_wait: Duration,
    /// Debits accepted and not yet answered, over all accounts; `debit` waits past it (default 10,000).
    pub max_pending: usize,
    /// Retries of a batch after the first attempt (default 5).
    pub max_retries: u32,
    /// First backoff, doubled each retry up to `max_backoff`, with jitter (defaults 50 ms, 2 s).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch: 50,
            max_wait: Duration::from_millis(5),
            max_pending: 10_000,
            max_retries: 5,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

struct Pending {
    key: String,
    event: Value,
    reply: oneshot::Sender<Result<EventResult, ClientError>>,
    _permit: OwnedSemaphorePermit,
}

enum Msg {
    Debit(String, Pending),
    Flush(mpsc::Sender<()>),
    Shutdown,
}

/// Groups debits per account into batches. Cheap to clone; all clones share one queue.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Msg>,
    permits: Arc<Semaphore>,
    stopped: watch::Receiver<()>,
}

impl Batcher {
    /// Starts the batching task; call inside a tokio runtime.
    pub fn new<T: Transport>(transport: T, mut config: Config) -> Self {
        config.max_batch = config.max_batch.clamp(1, MAX_BATCH);
        let permits = Arc::new(Semaphore::new(config.max_pending.max(1)));
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stopped) = watch::channel(());
        tokio::spawn(run(Arc::new(transport), Arc::new(config), rx, stop_tx));
        Batcher { tx, permits, stopped }
    }

    /// Debits `quantity` of `consumable` from the account, in the next batch of that account.
    pub async fn debit(
        &self,
        account_id: impl Into<String>,
        consumable: impl Into<String>,
        quantity: u64,
        idempotency_key: impl Into<String>,
    ) -> Result<EventResult, ClientError> {
        let (account, consumable, key) = (account_id.into(), consumable.into(), idempotency_key.into());
        if account.is_empty() || consumable.is_empty() || key.is_empty() {
            return Err(ClientError::Invalid("account_id, consumable and idempotency_key must not be empty"));
        }
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| ClientError::Closed)?;
        let event = Value::Object(Map::from_iter([
            ("consumable".to_string(), Value::from(consumable)),
            ("quantity".to_string(), Value::from(quantity)),
            ("idempotency_key".to_string(), Value::from(key.as_str())),
        ]));
        let (reply, answer) = oneshot::channel();
        let pending = Pending { key, event, reply, _permit: permit };
        self.tx.send(Msg::Debit(account, pending)).map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends every waiting debit now and returns once those batches are answered.
    pub async fn flush(&self) {
        let (guard, mut done) = mpsc::channel(1);
        if self.tx.send(Msg::Flush(guard)).is_ok() {
            let _ = done.recv().await; // None once every batch of this flush dropped its guard
        }
    }

    /// Refuses new debits, sends what is waiting and returns once every batch is answered.
    pub async fn shutdown(&self) {
        self.permits.close();
        let _ = self.tx.send(Msg::Shutdown);
        let mut stopped = self.stopped.clone();
        while stopped.changed().await.is_ok() {} // Err once the batching task has ended
    }
}

async fn run<T: Transport>(
    transport: Arc<T>,
    cfg: Arc<Config>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    _stopped: watch::Sender<()>,
) {
    let mut waiting: HashMap<String, (Instant, Vec<Pending>)> = HashMap::new();
    let mut in_flight = JoinSet::new();
    let spawn = |set: &mut JoinSet<()>, account, batch, guard| {
        set.spawn(send_batch(transport.clone(), cfg.clone(), account, batch, guard));
    };
    loop {
        let next = waiting.values().map(|(due, _)| *due).min();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Debit(account, pending)) => {
                    let (_, batch) = waiting
                        .entry(account.clone())
                        .or_insert_with(|| (Instant::now() + cfg.max_wait, Vec::new()));
                    batch.push(pending);
                    if batch.len() >= cfg.max_batch {
                        if let Some((_, batch)) = waiting.remove(&account) {
                            spawn(&mut in_flight, account, batch, None);
                        }
                    }
                }
                Some(Msg::Flush(guard)) => {
                    for (account, (_, batch)) in waiting.drain() {
                        spawn(&mut in_flight, account, batch, Some(guard.clone()));
                    }
                }
                Some(Msg::Shutdown) => rx.close(), // what is already queued still arrives
                None => break,
            },
            () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                for (account, (_, batch)) in waiting.extract_if(|_, (due, _)| *due <= now) {
                    spawn(&mut in_flight, account, batch, None);
                }
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    for (account, (_, batch)) in waiting.drain() {
        spawn(&mut in_flight, account, batch, None);
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send_batch<T: Transport>(
    transport: Arc<T>,
    cfg: Arc<Config>,
    account: String,
    batch: Vec<Pending>,
    _flush_guard: Option<mpsc::Sender<()>>,
) {
    let events = batch.iter().map(|p| p.event.clone()).collect();
    let body = Value::Object(Map::from_iter([("events".to_string(), Value::Array(events))]));
    match deliver(&*transport, &cfg, &account, body).await.and_then(|body| match_results(body, &batch)) {
        Ok(results) => {
            for (pending, result) in batch.into_iter().zip(results) {
                let _ = pending.reply.send(Ok(result));
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Sends the batch until a 200 (its body) or a final answer, retrying 429/5xx and transport errors.
async fn deliver<T: Transport>(transport: &T, cfg: &Config, account: &str, body: Value) -> Result<Value, ClientError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (last, retry_after) = match transport.send(account, body.clone()).await {
            Ok(reply) if reply.status == 200 => return Ok(reply.body),
            Ok(reply) if RETRYABLE.contains(&reply.status) => {
                (format!("status {}: {}", reply.status, reply.body), reply.retry_after)
            }
            Ok(reply) => return Err(ClientError::Rejected { status: reply.status, body: reply.body }),
            Err(e) => (e.to_string(), None),
        };
        if attempts > cfg.max_retries {
            return Err(ClientError::Exhausted { attempts, last });
        }
        sleep(backoff(cfg, attempts, retry_after)).await;
    }
}

/// Wait before retry `attempt` (1-based): half the capped exponential step plus a random part of
/// the other half, or `Retry-After` (capped at a minute) plus that random part.
fn backoff(cfg: &Config, attempt: u32, retry_after: Option<u64>) -> Duration {
    let step = cfg.base_backoff.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(cfg.max_backoff);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let jitter = (step / 2).mul_f64(hasher.finish() as f64 / u64::MAX as f64);
    retry_after.map_or(step / 2, |s| Duration::from_secs(s).min(MAX_RETRY_AFTER)).saturating_add(jitter)
}

/// The results for the batch's events, in the batch's order, matched by idempotency key (the
/// n-th event with a key takes the n-th result with it); any mismatch fails the whole reply.
fn match_results(body: Value, batch: &[Pending]) -> Result<Vec<EventResult>, ClientError> {
    #[derive(Deserialize)]
    struct BatchReply {
        results: Vec<EventResult>,
    }
    let reply: BatchReply = serde_json::from_value(body).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if reply.results.len() != batch.len() {
        let msg = format!("{} results for {} events", reply.results.len(), batch.len());
        return Err(ClientError::BadReply(msg));
    }
    let mut by_key: HashMap<String, VecDeque<EventResult>> = HashMap::new();
    for result in reply.results {
        by_key.entry(result.idempotency_key.clone()).or_default().push_back(result);
    }
    batch
        .iter()
        .map(|p| {
            by_key
                .get_mut(&p.key)
                .and_then(VecDeque::pop_front)
                .ok_or_else(|| ClientError::BadReply(format!("no result for idempotency key {:?}", p.key)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
