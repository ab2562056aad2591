/**
 * Any failed call: the API's answer (`status`, and the `code` and `message` of its error body),
 * or none at all (`status` 0, `code` `connection_error`, after the retries). `body` is the whole
 * JSON body when there was one; `retryAfterSec` the server's `Retry-After`, when it sent one.
 */
export class TopupError extends Error {
    constructor(status, code, message, body = {}, retryAfterSec) {
        super(`${status || "no answer"} ${code}${message ? `: ${message}` : ""}`);
        this.name = "TopupError";
        this.status = status;
        this.code = code;
        this.body = body;
        this.retryAfterSec = retryAfterSec;
    }
    /** The balance a 402 reports, in micro-credits. */
    get balance() {
        return typeof this.body.balance === "number" ? this.body.balance : undefined;
    }
    /** The API's message (without the status and code). */
    get detail() {
        return this.body.error?.message ?? "";
    }
}
/**
 * A webhook delivery that does not verify: `code` is `malformed_header`,
 * `timestamp_out_of_tolerance`, `no_matching_signature` or `malformed_payload`.
 */
export class SignatureError extends TopupError {
    constructor(code, message) {
        super(0, code, message, { error: { code, message } });
        this.name = "SignatureError";
    }
}
