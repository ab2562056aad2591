// The API's request options and answers (infra/openapi.yaml). Answers keep the API's own field
// names; amounts are integer micro-credits (1 credit = 1,000,000), money integer minor units.

export interface BillingContact { email: string; phone?: string; sms_opt_in?: boolean }

export interface Account {
  account_id: string;
  plan: string;
  billing_contacts: BillingContact[];
  created_at: string;
}

export interface LedgerEntry {
  id: string;
  kind: "purchase" | "auto_recharge" | "consumption" | "refund" | "adjustment" | "dispute" | "expiry" | "void";
  amount: number;
  balance_after: number;
  created_at: string;
  description: string;
  entity?: string;
}

export interface Allowance { consumable: string; included: number; used: number }

export interface AutoRecharge {
  enabled: boolean;
  threshold: number;
  amount: number | null;
  monthly_max: number;
  used_this_month: number;
  monthly_spend_max?: number | null;
  spent_this_month?: number;
  level: "ok" | "warning" | "critical";
  paused: { reason: string; message: string } | null;
  available_on_plan?: boolean;
  limits: {
    threshold_min: number; threshold_max: number | null; amount_min: number; amount_max: number;
    monthly_max_default: number; monthly_max_limit: number;
  };
}

export interface Alerts { thresholds: number[] }

/** The credits view (`GET …/credits`). */
export interface CreditsView {
  balance: number;
  low_balance: boolean;
  low_balance_threshold: number;
  lifetime_added: number;
  lifetime_spent: number;
  recent_transactions: LedgerEntry[];
  allowances: Allowance[];
  auto_recharge: AutoRecharge;
  payment_method: { brand: string; last4: string; exp_month: number; exp_year: number } | null;
  last_recharge_error: { code: string; decline_code?: string | null; do_not_retry?: boolean; message: string; time: string } | null;
  plan: string;
  /** How to show amounts: `code` (`usd`, `credit`, `minute`, …) and `micros_per_unit`. */
  unit: { code: string; micros_per_unit: number; [k: string]: unknown };
  purchase_options: { kind: "amount" | "packages" | "blocks"; [k: string]: unknown };
  next_expiry: { amount: number; expires_at: string } | null;
  alerts: Alerts;
}

export interface TransactionsPage { transactions: LedgerEntry[]; next_cursor: string | null }

export interface Grant {
  id: string;
  source: "purchase" | "auto_recharge" | "adjustment";
  category: "paid" | "promotional";
  granted: number;
  remaining: number;
  expires_at: string | null;
  priority: number;
  created_at: string;
  status: "active" | "used" | "expired" | "voided";
}

export interface CheckAnswer {
  allowed: boolean;
  reason: "ok" | "insufficient_credits" | "not_in_plan" | "unknown_consumable" | "entity_budget_exceeded";
  cost: number;
  available: number;
}

export interface Lanes { lanes: number; min: number; max: number; automatic: boolean; floor: number }

export interface Entity {
  entity: string;
  name: string | null;
  monthly_limit: number | null;
  spent_this_month: number;
  remaining_this_month: number | null;
}

export interface Notification {
  event_id: string;
  type: string;
  time: string;
  channels: { channel: "email" | "sms"; to: string; status: string; detail?: string | null }[];
}

/** The answer of a debit (`POST …/usage`). */
export interface Debit { from_allowance: number; from_credits: number; balance: number; transaction_id: string | null }

export interface DebitRequest {
  consumable: string;
  quantity: number;
  /** Made for you when absent, and reused across retries. */
  idempotencyKey?: string;
  /** The member, project or key whose usage it is (its monthly budget applies). */
  entity?: string | null;
}

/** One event's answer in a batch: `status` is what a single debit would have answered. */
export interface BatchResult {
  idempotency_key: string;
  status: 200 | 402 | 409 | 422;
  replayed: boolean;
  transaction_id?: string;
  from_allowance?: number;
  from_credits?: number;
  balance?: number;
  error?: { code: string; message: string; consumable?: string; balance?: number };
}

export interface Hold {
  hold_id: string;
  consumable?: string;
  reserved: number;
  reserved_units: number;
  reserved_allowance_units?: number;
  expires_at: string;
}

export interface Settlement {
  hold_id: string;
  from_hold: number;
  from_allowance?: number;
  from_credits: number;
  unbilled: number;
  balance: number;
  transaction_id?: string | null;
}

export interface Purchase {
  purchase_id: string;
  status: "pending" | "processing" | "succeeded" | "failed" | "expired";
  message: string | null;
  charge: { amount: number; currency: string };
  credits: number;
  checkout_session_id: string | null;
  transaction_id?: string | null;
  created_at?: string;
  client_secret?: string | null;
  url?: string | null;
  balance?: number;
  /** Once paid (rules §20): the price before tax, the tax, and what was charged. */
  subtotal?: number | null;
  tax?: number | null;
  total?: number | null;
  receipt_url?: string | null;
  invoice_pdf?: string | null;
}

/** One row of `GET …/credits/purchases`: a purchase or an auto-recharge, with its receipt. */
export interface PurchaseListItem {
  purchase_id: string;
  kind: "purchase" | "auto_recharge";
  status: string;
  charge: { amount: number; currency: string };
  credits: number;
  created_at: string;
  subtotal?: number | null;
  tax?: number | null;
  total?: number | null;
  receipt_url: string | null;
  invoice_pdf?: string | null;
}

export interface Valued { credits: number; amount: number }
export interface RevenueLine {
  account_id: string;
  granted: Valued; consumed: Valued; expired_or_voided: Valued; taken_back: Valued; restored: Valued; deferred: Valued;
}
export interface RevenueReport { month: string; currency: string; accounts: RevenueLine[]; total: RevenueLine }

export interface WebhookEndpoint {
  id: string;
  url: string;
  events: string[];
  status: "enabled" | "disabled";
  description: string | null;
  contact_email: string | null;
  created_at: string;
  disabled_at: string | null;
  failing_since: string | null;
}
export interface WebhookEndpointWithSecret extends WebhookEndpoint { secret: string }

export interface WebhookDelivery {
  id: string;
  endpoint_id: string;
  event_id: string;
  type: string;
  status: "pending" | "succeeded" | "failed";
  attempts: number;
  last_response_code: number | null;
  last_error: string | null;
  last_attempt_at: string | null;
  next_attempt_at: string | null;
  created_at: string;
}

/** What a webhook endpoint receives. */
export interface WebhookEvent {
  id: string;
  type: string;
  created: number;
  account_id: string;
  data: Record<string, unknown>;
}

/** One record of the audit log (rules §19). */
export interface AuditRecord {
  id: string;
  at: string;
  actor: { sub: string; role: string };
  action: string;
  account_id: string | null;
  target: string;
  request_id: string;
  reason: string | null;
  before: unknown;
  after: unknown;
  seq: number;
  prev_hash: string;
  hash: string;
}
