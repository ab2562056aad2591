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
import time

RUNS = 7


def cold_init_ms(binary: pathlib.Path, env: dict) -> float:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    e = dict(env)
    e.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": binary.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_LAMBDA_LOG_GROUP_NAME": "bench",
        "TOPUP_PROFILE": "usd-overage",
    })
    srv.settimeout(10)
    start = time.perf_counter()
    p = subprocess.Popen([str(binary)], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def report(root: pathlib.Path, binaries: list[str], env: dict) -> None:
    print("# release binaries (x86_64, opt-level=z, fat LTO, stripped)")
    print(f"{'function':<14} {'size MB':>8} {'goal':>6} {'cold init ms (median of %d)' % RUNS:>30} {'goal':>6}")
    for name in binaries:
        path = root / "target" / "release" / name
        size = os.path.getsize(path) / 1_000_000
        times = [cold_init_ms(path, env) for _ in range(RUNS)]
        print(f"{name:<14} {size:>8.2f} {'≤ 8':>6} {statistics.median(times):>30.1f} {'≤ 15':>6}"
              f"   (min {min(times):.1f}, max {max(times):.1f})")
