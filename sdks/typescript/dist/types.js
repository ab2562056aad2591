// The API's request options and answers (infra/openapi.yaml). Answers keep the API's own field
// names; amounts are integer micro-credits (1 credit = 1,000,000), money integer minor units.
export {};
