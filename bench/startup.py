"""Release binary sizes and cold init times of the functions.

Cold init is measured from process start to the function's first poll of the Lambda Runtime
API (`GET /2018-06-01/runtime/invocation/next`): a socket on 127.0.0.1 plays the Runtime API
and notes when the request arrives. That span covers config, profile validation, the AWS
config load and client construction: everything a cold start adds before the first event.
"""

import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

RUNS = 7


def cold_init_ms(cmd: list[str], env: dict, name: str) -> float:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    e = dict(env)
    e.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_LAMBDA_LOG_GROUP_NAME": "bench",
        "TOPUP_PROFILE": "usd-overage",
        # What the functions that talk to Stripe or send mail require at start: the Stripe
        # functions read their secret from Secrets Manager (moto) at init, in the figure.
        "TOPUP_STRIPE_SECRET_ID": BENCH_SECRET,
        "TOPUP_EMAIL_FROM": "billing@example.com",
        "TOPUP_BILLING_URL": "https://app.example.com/settings/billing",
        "TOPUP_CHECKOUT_UI": "hosted",
        # webhooks-out needs its follow-up queue named at start (init reads no queue).
        "TOPUP_WEBHOOK_QUEUE_URL": "http://127.0.0.1:1/123456789012/bench-webhook-retries",
    })
    srv.settimeout(30)
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = srv.accept()
        data = conn.recv(4096)
        elapsed = (time.perf_counter() - start) * 1000
        if b"/runtime/invocation/next" not in data:
            raise RuntimeError(f"unexpected first request: {data[:80]!r}")
        conn.close()
        return elapsed
    finally:
        p.kill()
        p.wait()
        srv.close()


def tree_size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def python_baseline(root: pathlib.Path) -> tuple[list[str], float, float, dict]:
    """The Python handler's command, its package size with and without boto3 (which Lambda's
    Python runtime bundles), and the PYTHONPATH it runs with. Installs the pinned packages
    into .local/pyhandler once."""
    src = root / "bench" / "python_handler"
    pkg = root / ".local" / "pyhandler"
    stamp = pkg / ".requirements"
    want = (src / "requirements.txt").read_text()
    if not stamp.exists() or stamp.read_text() != want:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--upgrade", "--target", str(pkg), "-r", str(src / "requirements.txt")], check=True)
        stamp.write_text(want)
    handler = src / "handler.py"
    total = tree_size(pkg) + handler.stat().st_size
    aws_sdk = sum(tree_size(pkg / d) for d in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3")
                  if (pkg / d).exists())
    # -B: no bytecode written, as on Lambda's read-only file system (the package would ship
    # its .pyc files; the first of these runs compiles them, the others do not).
    return [sys.executable, "-B", str(handler)], total / 1_000_000, (total - aws_sdk) / 1_000_000, {"PYTHONPATH": str(pkg)}


BENCH_SECRET = "bench-stripe"


def put_bench_secret(env: dict) -> None:
    import boto3
    sm = boto3.client("secretsmanager", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env.get("AWS_REGION", "us-east-1"),
                      aws_access_key_id="test", aws_secret_access_key="test")
    value = '{"secret_key": "sk_test_bench", "webhook_secret": "whsec_bench"}'
    try:
        sm.create_secret(Name=BENCH_SECRET, SecretString=value)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=BENCH_SECRET, SecretString=value)


def report(root: pathlib.Path, binaries: list[str], env: dict) -> None:
    put_bench_secret(env)
    py_cmd, py_size, py_size_no_sdk, py_env = python_baseline(root)
    py_times = [cold_init_ms(py_cmd, dict(env, **py_env), "python") for _ in range(RUNS)]
    py_init = statistics.median(py_times)
    print("# release binaries (x86_64, opt-level=z, fat LTO, stripped) beside a Python function that")
    print("# imports boto3 and stripe (bench/python_handler; python3 %s, boto3 and stripe as pinned there)"
          % ".".join(map(str, sys.version_info[:3])))
    print(f"{'function':<16} {'size MB':>8} {'vs Python':>10} {'cold init ms':>13} {'vs Python':>10}   (min, max of {RUNS})")
    for name in binaries:
        path = root / "target" / "release" / name
        size = os.path.getsize(path) / 1_000_000
        times = [cold_init_ms([str(path)], env, name) for _ in range(RUNS)]
        init = statistics.median(times)
        print(f"{name:<16} {size:>8.2f} {size / py_size:>10.2f} {init:>13.1f} {init / py_init:>10.3f}"
              f"   ({min(times):.1f}, {max(times):.1f})")
    print(f"{'python baseline':<16} {py_size:>8.2f} {1:>10.2f} {py_init:>13.1f} {1:>10.3f}"
          f"   ({min(py_times):.1f}, {max(py_times):.1f})")
    print(f"    the Python package is {py_size_no_sdk:.2f} MB without boto3 and its dependencies, which Lambda's"
          f" Python runtime bundles")
