/** The body of an API error: `{"error": {"code", "message", …}, …}`. */
export interface ErrorBody {
  error?: { code?: string; message?: string; consumable?: string; [k: string]: unknown };
  /** With a 402: the balance, in micro-credits. */
  balance?: number;
  /** With `entity_budget_exceeded`: the entity and what its limit still allows this month. */
  entity?: string;
  remaining_this_month?: number;
  [k: string]: unknown;
}

/**
 * Any failed call: the API's answer (`status`, and the `code` and `message` of its error body),
 * or none at all (`status` 0, `code` `connection_error`, after the retries). `body` is the whole
 * JSON body when there was one; `retryAfterSec` the server's `Retry-After`, when it sent one.
 */
export class TopupError extends Error {
  readonly status: number;
  readonly code: string;
  readonly body: ErrorBody;
  readonly retryAfterSec?: number;

  constructor(status: number, code: string, message: string, body: ErrorBody = {}, retryAfterSec?: number) {
    super(`${status || "no answer"} ${code}${message ? `: ${message}` : ""}`);
    this.name = "TopupError";
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryAfterSec = retryAfterSec;
  }

  /** The balance a 402 reports, in micro-credits. */
  get balance(): number | undefined {
    return typeof this.body.balance === "number" ? this.body.balance : undefined;
  }

  /** The API's message (without the status and code). */
  get detail(): string {
    return this.body.error?.message ?? "";
  }
}

/**
 * A webhook delivery that does not verify: `code` is `malformed_header`,
 * `timestamp_out_of_tolerance`, `no_matching_signature` or `malformed_payload`.
 */
export class SignatureError extends TopupError {
  constructor(code: string, message: string) {
    super(0, code, message, { error: { code, message } });
    this.name = "SignatureError";
  }
}
