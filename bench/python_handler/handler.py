"""The Python baseline for cold init and package size (BENCHMARKS.md): the smallest honest
Python Lambda function doing our job's setup — boto3's DynamoDB and EventBridge clients and a
Stripe client built at import, as the AWS and Stripe guides recommend — with a minimal Runtime
API loop standing in for awslambdaric (which would only add to its start).

Cold init is process start to the first `GET /2018-06-01/runtime/invocation/next`, as for the
Rust functions (bench/startup.py).
"""

import json
import os
import urllib.request

import boto3
import stripe

DYNAMODB = boto3.client("dynamodb")
EVENTS = boto3.client("events")
STRIPE = stripe.StripeClient(os.environ.get("TOPUP_STRIPE_SECRET_KEY", "sk_test_bench"))
TABLE = os.environ.get("TOPUP_TABLE", "topup")


def handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"table": TABLE})}


def main():
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    while True:
        with urllib.request.urlopen(f"http://{api}/2018-06-01/runtime/invocation/next") as r:
            request_id = r.headers.get("Lambda-Runtime-Aws-Request-Id")
            event = json.loads(r.read() or b"{}")
        body = json.dumps(handler(event, None)).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://{api}/2018-06-01/runtime/invocation/{request_id}/response", data=body, method="POST"))


if __name__ == "__main__":
    main()
