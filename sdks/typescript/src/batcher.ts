import { newIdempotencyKey, type Topup } from "./client.js";
import { TopupError } from "./errors.js";
import type { BatchResult, DebitRequest } from "./types.js";

/** The most events the API takes in one batch. */
export const MAX_BATCH = 500;

export interface BatcherOptions {
  /** Debits per batch, 1 to 500 (default 50). */
  maxBatch?: number;
  /** Longest wait of an account's first debit before its batch is sent (default 5 ms). */
  maxWaitMs?: number;
}

interface Pending {
  event: DebitRequest & { idempotencyKey: string };
  resolve: (r: BatchResult) => void;
  reject: (e: unknown) => void;
}

/**
 * Single debits from anywhere in the process, sent per account as batches
 * (`POST /v1/accounts/{id}/usage/batch`), like the Rust client's `Batcher`: a batch goes when
 * `maxBatch` debits wait or `maxWaitMs` has passed since its first one. Each caller's promise
 * settles with its own event's result (matched by idempotency key): a 200 result resolves, a
 * refused event (402, 409, 422) rejects with a {@link TopupError} of that status and code. A
 * batch is retried whole by the client; every event keeps its key, so applied events answer
 * `replayed: true` and are never charged twice.
 */
export class DebitBatcher {
  private readonly maxBatch: number;
  private readonly maxWaitMs: number;
  private readonly waiting = new Map<string, { batch: Pending[]; timer: ReturnType<typeof setTimeout> }>();
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly client: Topup, options: BatcherOptions = {}) {
    this.maxBatch = Math.max(1, Math.min(MAX_BATCH, options.maxBatch ?? 50));
    this.maxWaitMs = Math.max(0, options.maxWaitMs ?? 5);
  }

  /** Debits in the account's next batch; settles with this event's result. */
  async debit(accountId: string, request: DebitRequest): Promise<BatchResult> {
    if (!accountId || !request.consumable) throw new TypeError("accountId and consumable must not be empty");
    if (this.closed) throw new TopupError(0, "batcher_closed", "The batcher is closed.");
    const idempotencyKey = request.idempotencyKey ?? await newIdempotencyKey();
    if (this.closed) throw new TopupError(0, "batcher_closed", "The batcher is closed.");
    return new Promise<BatchResult>((resolve, reject) => {
      let entry = this.waiting.get(accountId);
      if (!entry) {
        entry = { batch: [], timer: setTimeout(() => this.send(accountId), this.maxWaitMs) };
        this.waiting.set(accountId, entry);
      }
      entry.batch.push({ event: { ...request, idempotencyKey }, resolve, reject });
      if (entry.batch.length >= this.maxBatch) this.send(accountId);
    });
  }

  /** Sends every waiting debit now and settles once those batches are answered. */
  async flush(): Promise<void> {
    for (const account of [...this.waiting.keys()]) this.send(account);
    await Promise.all([...this.inFlight]);
  }

  /** Refuses new debits, sends what waits and settles once every batch is answered. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }

  private send(accountId: string): void {
    const entry = this.waiting.get(accountId);
    if (!entry) return;
    this.waiting.delete(accountId);
    clearTimeout(entry.timer);
    const done = this.deliver(accountId, entry.batch).finally(() => this.inFlight.delete(done));
    this.inFlight.add(done);
  }

  private async deliver(accountId: string, batch: Pending[]): Promise<void> {
    let results: BatchResult[];
    try {
      const reply = await this.client.debitBatch(accountId, batch.map((p) => p.event));
      results = match(reply, batch.map((p) => p.event.idempotencyKey));
    } catch (e) {
      const error = e instanceof TopupError ? e : new TopupError(0, "batch_failed", String(e));
      for (const p of batch) p.reject(error);
      return;
    }
    batch.forEach((p, i) => {
      const r = results[i];
      if (r.status === 200) p.resolve(r);
      else p.reject(new TopupError(r.status, r.error?.code ?? "refused", r.error?.message ?? "", { ...r, error: r.error }));
    });
  }
}

/** The results in the batch's order, matched by key (the n-th event with a key takes the n-th result with it). */
function match(reply: { results?: BatchResult[] }, keys: string[]): BatchResult[] {
  const results = reply?.results;
  if (!Array.isArray(results) || results.length !== keys.length) {
    throw new TopupError(0, "bad_reply", `${Array.isArray(results) ? results.length : "no"} results for ${keys.length} events`);
  }
  const byKey = new Map<string, BatchResult[]>();
  for (const r of results) {
    const list = byKey.get(r.idempotency_key) ?? [];
    list.push(r);
    byKey.set(r.idempotency_key, list);
  }
  return keys.map((k) => {
    const r = byKey.get(k)?.shift();
    if (!r) throw new TopupError(0, "bad_reply", `no result for idempotency key ${JSON.stringify(k)}`);
    return r;
  });
}
