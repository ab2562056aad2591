/**
 * `<topup-credits>`: the Credits card of topup's billing page (`GET /billing`), as a custom
 * element for an app's own page: the balance in the plan's unit, the Low Balance badge and this
 * month's allowances, from `GET /v1/accounts/{id}/credits`.
 *
 * ```html
 * <script type="module" src="https://billing.example.com/billing/topup-credits.js"></script>
 * <topup-credits token-callback="getTopupToken"></topup-credits>
 * <script>window.getTopupToken = async () => (await fetch("/api/topup-token")).text();</script>
 * ```
 *
 * Attributes (each also a property): `token-callback`, the name of a global function answering
 * the bearer token (or set the `getToken` property to a function); `account-id` (default: the
 * token's `account_id` claim); `api-base`, the API's address (default: where this script was
 * served from, when it is `/billing/topup-credits.js`). The page's origin must be one of the
 * deployment's `AllowedOrigins` (CORS). The element sets `data-state` to `loading`, `ready` or
 * `error`, and fires `topup-credits-load` (detail: the credits view) or `topup-credits-error`
 * (detail: `{status, code, message}`). `refresh()` loads it again.
 *
 * This module has no imports: the API serves the compiled file as it is.
 */
type TokenCallback = () => string | Promise<string>;
interface View {
    balance: number;
    low_balance: boolean;
    plan: string;
    allowances?: {
        consumable: string;
        included: number;
        used: number;
    }[];
    unit: {
        code: string;
        micros_per_unit: number;
    };
}
/** The element's base class: `HTMLElement` in a browser, a stand-in where there is none (Node), so importing this module never fails. */
declare const Base: typeof HTMLElement;
/** Amounts as the billing page shows them: dollars for `usd`, otherwise the unit's name. */
export declare function formatUnits(micros: number, unit: {
    code: string;
    micros_per_unit: number;
}): string;
export declare class TopupCreditsElement extends Base {
    static get observedAttributes(): string[];
    /** A function answering the bearer token; takes precedence over `token-callback`. */
    getToken?: TokenCallback;
    /** The credits view last shown. */
    view?: View;
    private root?;
    private seq;
    get accountId(): string | null;
    set accountId(v: string | null);
    get apiBase(): string | null;
    set apiBase(v: string | null);
    get tokenCallback(): string | null;
    set tokenCallback(v: string | null);
    connectedCallback(): void;
    attributeChangedCallback(_name: string, old: string | null, value: string | null): void;
    /** Loads the credits view again and shows it. */
    refresh(): Promise<void>;
    private token;
    private $;
    private render;
    private fail;
}
/** Registers `<topup-credits>` (once); done on import in a browser. */
export declare function defineTopupCredits(name?: string): void;
declare global {
    interface HTMLElementTagNameMap {
        "topup-credits": TopupCreditsElement;
    }
}
export {};
