/**
 * Every operation of infra/openapi.yaml that a client calls: its `operationId`, method, path and
 * the `Topup` method that calls it. The client builds each request from this table, and the test
 * suite holds the table to the document (test/routes.test.mjs), so a route added to the API
 * without a method here fails the tests.
 */
export interface Operation {
    readonly method: "GET" | "PUT" | "POST" | "DELETE";
    readonly path: string;
    /** The `Topup` method that calls it. */
    readonly clientMethod: string;
    /**
     * Whether a request that may have reached the server can be sent again: true for reads, PUTs,
     * deletes and every POST with an idempotency key or documented as safe to repeat. The others
     * are retried only after an answer that says nothing was done (429, 503).
     */
    readonly repeatable: boolean;
}
export declare const OPERATIONS: {
    readonly putAccount: Operation;
    readonly getCredits: Operation;
    readonly getTransactions: Operation;
    readonly getTransactionsCsv: Operation;
    readonly getGrants: Operation;
    readonly voidGrant: Operation;
    readonly postAdjustment: Operation;
    readonly putAutoRecharge: Operation;
    readonly checkCredits: Operation;
    readonly putAlerts: Operation;
    readonly putLanes: Operation;
    readonly listEntities: Operation;
    readonly getEntity: Operation;
    readonly putEntity: Operation;
    readonly getNotifications: Operation;
    readonly postUsage: Operation;
    readonly postUsageBatch: Operation;
    readonly postHold: Operation;
    readonly settleHold: Operation;
    readonly postPurchase: Operation;
    readonly getPurchase: Operation;
    readonly setupCard: Operation;
    readonly removeCard: Operation;
    readonly getRevenueReport: Operation;
    readonly createWebhookEndpoint: Operation;
    readonly listWebhookEndpoints: Operation;
    readonly getWebhookEndpoint: Operation;
    readonly deleteWebhookEndpoint: Operation;
    readonly rotateWebhookSecret: Operation;
    readonly enableWebhookEndpoint: Operation;
    readonly listWebhookDeliveries: Operation;
    readonly redeliverWebhook: Operation;
};
export type OperationId = keyof typeof OPERATIONS;
/** Operations of the document a client does not call, and why (the route test fails if one leaves the document). */
export declare const NOT_FOR_CLIENTS: Readonly<Record<string, string>>;
