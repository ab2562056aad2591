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
const STYLE = `
  :host { display: block; --fg: #1a1a1a; --muted: #555; --line: #d0d0d0; --bg: #fff; --ok: #1e7b34;
          --warn-bar: #e0a800; --bad: #b3261e; --radius: 8px;
          font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); }
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  .card { background: var(--bg); border: 1px solid var(--line); border-radius: var(--radius); padding: 16px; }
  h2 { font-size: 1.1rem; margin: 0 0 8px; }
  h3 { font-size: 1rem; margin: 14px 0 4px; }
  .row { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: baseline; }
  .balance { font-size: 2rem; font-weight: 600; }
  .badge { display: inline-block; padding: 2px 8px; border-radius: 999px; font-size: .8rem; font-weight: 600;
           background: #fdecea; color: var(--bad); border: 1px solid var(--bad); }
  .muted { color: var(--muted); }
  .allowance { margin-top: 8px; }
  .allowance .row { justify-content: space-between; }
  .bar { height: 10px; background: #e6e6e6; border-radius: 5px; overflow: hidden; margin-top: 4px; }
  .bar > span { display: block; height: 100%; }
  .bar.ok > span { background: var(--ok); }
  .bar.warning > span { background: var(--warn-bar); }
  .bar.critical > span { background: var(--bad); }
  .notice { padding: 10px 12px; border-radius: 6px; border: 1px solid var(--bad); background: #fdecea; color: #5f1410; margin: 8px 0 0; }
  @media (max-width: 480px) { .balance { font-size: 1.6rem; } }
`;
const TEMPLATE = `
  <section class="card" part="card" aria-labelledby="title" aria-busy="true">
    <h2 id="title">Credits</h2>
    <div class="row" id="summary" hidden>
      <div><div class="muted">Current balance</div><div class="balance" id="balance"></div></div>
      <span id="low-badge" class="badge" hidden>Low Balance</span>
    </div>
    <div id="allowances" hidden>
      <h3>This month's allowance</h3>
      <div id="allowance-list"></div>
    </div>
    <div class="row muted" id="plan-row" hidden><div>Plan: <span id="plan"></span></div></div>
    <p id="loading" class="muted">Loading your credits…</p>
    <p id="error" class="notice" role="alert" hidden></p>
  </section>
`;
/** The element's base class: `HTMLElement` in a browser, a stand-in where there is none (Node), so importing this module never fails. */
const Base = typeof HTMLElement === "undefined"
    ? class {
    }
    : HTMLElement;
/** Amounts as the billing page shows them: dollars for `usd`, otherwise the unit's name. */
export function formatUnits(micros, unit) {
    const n = micros / unit.micros_per_unit;
    if (unit.code === "usd") {
        return (n < 0 ? "-$" : "$") + Math.abs(n).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    }
    const name = unit.code === "minute" ? "minute" : "credit";
    return n.toLocaleString("en-US", { maximumFractionDigits: 2 }) + " " + name + (Math.abs(n) === 1 ? "" : "s");
}
const ACRONYMS = new Set(["api", "llm", "mcp", "sms"]);
/** `api_calls` → `API calls`, `voice_minutes` → `Voice minutes`. */
export function consumableLabel(consumable) {
    const s = consumable.split("_").map((w) => (ACRONYMS.has(w) ? w.toUpperCase() : w)).join(" ");
    return s.charAt(0).toUpperCase() + s.slice(1);
}
/** The `account_id` claim of a JWT, if it has one (read, not verified: the API verifies it). */
function accountOf(token) {
    try {
        const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
        return typeof claims.account_id === "string" ? claims.account_id : undefined;
    }
    catch {
        return undefined;
    }
}
/** Where this script was served from, when the API served it (`…/billing/topup-credits.js`). */
function servedFrom() {
    try {
        const url = new URL(import.meta.url);
        return url.pathname.endsWith("/billing/topup-credits.js") ? url.origin : undefined;
    }
    catch {
        return undefined;
    }
}
export class TopupCreditsElement extends Base {
    constructor() {
        super(...arguments);
        this.seq = 0;
    }
    static get observedAttributes() {
        return ["account-id", "api-base", "token-callback"];
    }
    get accountId() { return this.getAttribute("account-id"); }
    set accountId(v) { if (v === null)
        this.removeAttribute("account-id");
    else
        this.setAttribute("account-id", v); }
    get apiBase() { return this.getAttribute("api-base"); }
    set apiBase(v) { if (v === null)
        this.removeAttribute("api-base");
    else
        this.setAttribute("api-base", v); }
    get tokenCallback() { return this.getAttribute("token-callback"); }
    set tokenCallback(v) { if (v === null)
        this.removeAttribute("token-callback");
    else
        this.setAttribute("token-callback", v); }
    connectedCallback() {
        if (!this.root) {
            this.root = this.attachShadow({ mode: "open" });
            this.root.innerHTML = `<style>${STYLE}</style>${TEMPLATE}`;
        }
        void this.refresh();
    }
    attributeChangedCallback(_name, old, value) {
        if (this.root && this.isConnected && old !== value)
            void this.refresh();
    }
    /** Loads the credits view again and shows it. */
    async refresh() {
        const seq = ++this.seq;
        this.dataset.state = "loading";
        try {
            const token = await this.token();
            const account = this.accountId || accountOf(token);
            if (!account)
                throw { status: 0, code: "no_account", message: "No account: set account-id, or use a token with an account_id." };
            const base = (this.apiBase || servedFrom() || "").replace(/\/+$/, "");
            if (!base)
                throw { status: 0, code: "no_api_base", message: "No API address: set api-base." };
            let response;
            try {
                response = await fetch(`${base}/v1/accounts/${encodeURIComponent(account)}/credits`, {
                    headers: { authorization: `Bearer ${token}`, accept: "application/json" },
                    credentials: "omit",
                });
            }
            catch {
                // A CORS refusal looks like this too: the browser hides why.
                throw { status: 0, code: "connection_error", message: "Could not reach the billing service." };
            }
            const body = await response.json().catch(() => null);
            if (!response.ok) {
                throw { status: response.status, code: body?.error?.code ?? `http_${response.status}`,
                    message: body?.error?.message ?? "Could not load your credits." };
            }
            if (seq !== this.seq)
                return;
            this.view = body;
            this.render(this.view);
            this.dataset.state = "ready";
            this.dispatchEvent(new CustomEvent("topup-credits-load", { detail: this.view }));
        }
        catch (e) {
            if (seq !== this.seq)
                return;
            const err = (e && typeof e === "object" && "code" in e) ? e
                : { status: 0, code: "error", message: String(e) };
            this.fail(err);
        }
    }
    async token() {
        const fromProperty = this.getToken;
        const name = this.tokenCallback;
        const fromAttribute = name ? globalThis[name] : undefined;
        const fn = fromProperty ?? (typeof fromAttribute === "function" ? fromAttribute : undefined);
        if (!fn)
            throw { status: 0, code: "no_token", message: "No token: set token-callback or getToken." };
        const token = await fn();
        if (typeof token !== "string" || !token)
            throw { status: 0, code: "no_token", message: "The token callback answered no token." };
        return token;
    }
    $(id) {
        return this.root.getElementById(id);
    }
    render(view) {
        this.$("loading").hidden = true;
        this.$("error").hidden = true;
        this.$("summary").hidden = false;
        this.$("balance").textContent = formatUnits(view.balance, view.unit);
        this.$("low-badge").hidden = !view.low_balance;
        this.$("plan-row").hidden = false;
        this.$("plan").textContent = view.plan;
        const list = this.$("allowance-list");
        list.textContent = "";
        const allowances = (view.allowances ?? []).filter((a) => a.included > 0);
        for (const a of allowances) {
            const pct = Math.min(100, Math.round((a.used / a.included) * 100));
            const level = pct > 80 ? "critical" : pct > 50 ? "warning" : "ok";
            const item = document.createElement("div");
            item.className = "allowance";
            item.dataset.consumable = a.consumable;
            const row = document.createElement("div");
            row.className = "row";
            const name = document.createElement("span");
            name.textContent = consumableLabel(a.consumable);
            const used = document.createElement("span");
            used.className = "muted";
            used.textContent = `${a.used.toLocaleString("en-US")} of ${a.included.toLocaleString("en-US")} used`;
            row.append(name, used);
            const bar = document.createElement("div");
            bar.className = `bar ${level}`;
            bar.setAttribute("role", "progressbar");
            bar.setAttribute("aria-label", `${consumableLabel(a.consumable)}: ${pct}% of this month's allowance used`);
            bar.setAttribute("aria-valuemin", "0");
            bar.setAttribute("aria-valuemax", "100");
            bar.setAttribute("aria-valuenow", String(pct));
            const fill = document.createElement("span");
            fill.style.width = `${pct}%`;
            bar.appendChild(fill);
            item.append(row, bar);
            list.appendChild(item);
        }
        this.$("allowances").hidden = allowances.length === 0;
        this.root.querySelector("section").setAttribute("aria-busy", "false");
    }
    fail(err) {
        this.$("loading").hidden = true;
        const box = this.$("error");
        box.hidden = false;
        box.textContent = err.message || "Could not load your credits.";
        this.root.querySelector("section").setAttribute("aria-busy", "false");
        this.dataset.state = "error";
        this.dataset.errorCode = err.code;
        this.dispatchEvent(new CustomEvent("topup-credits-error", { detail: err }));
    }
}
/** Registers `<topup-credits>` (once); done on import in a browser. */
export function defineTopupCredits(name = "topup-credits") {
    if (typeof customElements !== "undefined" && !customElements.get(name)) {
        customElements.define(name, TopupCreditsElement);
    }
}
defineTopupCredits();
