import { type Topup } from "./client.js";
import type { BatchResult, DebitRequest } from "./types.js";
/** The most events the API takes in one batch. */
export declare const MAX_BATCH = 500;
export interface BatcherOptions {
    /** Debits per batch, 1 to 500 (default 50). */
    maxBatch?: number;
    /** Longest wait of an account's first debit before its batch is sent (default 5 ms). */
    maxWaitMs?: number;
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
export declare class DebitBatcher {
    private readonly client;
    private readonly maxBatch;
    private readonly maxWaitMs;
    private readonly waiting;
    private readonly inFlight;
    private closed;
    constructor(client: Topup, options?: BatcherOptions);
    /** Debits in the account's next batch; settles with this event's result. */
    debit(accountId: string, request: DebitRequest): Promise<BatchResult>;
    /** Sends every waiting debit now and settles once those batches are answered. */
    flush(): Promise<void>;
    /** Refuses new debits, sends what waits and settles once every batch is answered. */
    close(): Promise<void>;
    private send;
    private deliver;
}
