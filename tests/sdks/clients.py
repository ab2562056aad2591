"""The sdks phase of `./scripts/test`: the clients of sdks/ installed as their users install them,
their own tests, and a scenario against a served stack.

- Python: the wheel built with `pip wheel` into a fresh virtualenv (with its `test` extra),
  sdks/python/tests run by that virtualenv's python against the installed package.
- TypeScript: `npm pack` (its prepack builds dist/ with the typescript of sdks/typescript's own
  node_modules, installed once by `npm ci` and again only when package-lock.json changes), the
  tarball installed into a fresh folder with `npm install`, and sdks/typescript/test run there.
- A usd-overage stack served on its own table and bus, with TOPUP_ALLOWED_ORIGINS set to a host
  page's origin: tests/sdks/scenario.py and scenario.mjs (each with its own account, at once)
  through the installed packages; CORS as the router answers it; and the `<topup-credits>` card in
  headless Chromium (tests/browser/card_test.py).

scripts/stack.py calls `run(moto, stripe, secret, checks, stack_api)` as one phase.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent


def _out(p: subprocess.CompletedProcess) -> str:
    return (p.stdout or "")[-1500:] + (p.stderr or "")[-1500:]


def python_client(root: pathlib.Path, tmp: pathlib.Path, checks) -> pathlib.Path | None:
    """Builds the wheel, installs it into a fresh virtualenv and runs the package's tests there;
    answers that virtualenv's python (None if it could not be made)."""
    venv = tmp / "py"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = subprocess.run(pip + ["wheel", "--no-deps", "-w", str(tmp / "dist"), str(root / "sdks/python")],
                           capture_output=True, text=True)
    # pip builds in the source tree; leave it as it was.
    shutil.rmtree(root / "sdks/python/build", ignore_errors=True)
    for egg in (root / "sdks/python/src").glob("*.egg-info"):
        shutil.rmtree(egg, ignore_errors=True)
    wheels = sorted((tmp / "dist").glob("topup_client-*.whl"))
    checks.check("sdks/python builds a wheel with a version (pip wheel)",
                 made.returncode == 0 and wheel.returncode == 0 and [w.name for w in wheels] == ["topup_client-0.1.0-py3-none-any.whl"],
                 _out(wheel))
    if not wheels:
        return None
    inst = subprocess.run(pip + ["install", f"{wheels[0]}[test]"], capture_output=True, text=True)
    checks.check("the wheel installs into a fresh virtualenv", inst.returncode == 0, _out(inst))
    tests = subprocess.run([str(py), "-m", "unittest", "discover", "-s", "."], cwd=root / "sdks/python/tests",
                           capture_output=True, text=True, timeout=300)
    ran = re.search(r"Ran (\d+) tests?", tests.stderr)
    where = subprocess.run([str(py), "-c", "import topup; print(topup.__file__)"], capture_output=True, text=True)
    checks.check(f"sdks/python's tests pass against the installed package ({ran.group(1) if ran else 0} tests)",
                 tests.returncode == 0 and bool(ran) and str(venv) in where.stdout, _out(tests) + where.stdout)
    return py


def typescript_client(root: pathlib.Path, tmp: pathlib.Path, checks) -> pathlib.Path | None:
    """Packs the package, installs the tarball into a fresh folder and runs the package's tests
    there; answers that folder (None if the package could not be installed)."""
    src = root / "sdks/typescript"
    stamp = src / "node_modules" / ".topup-lock"
    lock = (src / "package-lock.json").read_text()
    if not stamp.exists() or stamp.read_text() != lock:
        ci = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=src, capture_output=True, text=True)
        if ci.returncode != 0:
            checks.check("npm ci in sdks/typescript (typescript, the one dev dependency)", False, _out(ci))
            return None
        stamp.write_text(lock)
    pack = subprocess.run(["npm", "pack", "--pack-destination", str(tmp)], cwd=src, capture_output=True, text=True)
    tarball = tmp / "topup-client-0.1.0.tgz"
    checks.check("sdks/typescript packs to a tarball with a version (npm pack, built by its prepack)",
                 pack.returncode == 0 and tarball.exists(), _out(pack))
    if not tarball.exists():
        return None
    app = tmp / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "sdk-check", "private": True, "type": "module"}))
    inst = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefer-offline", str(tarball)], cwd=app,
                          capture_output=True, text=True)
    installed = app / "node_modules/@topup/client/dist/index.js"
    checks.check("the tarball installs into a fresh folder (npm install)", inst.returncode == 0 and installed.exists(), _out(inst))
    if not installed.exists():
        return None
    shutil.copytree(src / "test", app / "test")
    tests = subprocess.run(["node", "--test", *sorted(str(p.relative_to(app)) for p in (app / "test").glob("*.test.mjs"))],
                           cwd=app, env=dict(os.environ, TOPUP_REPO_ROOT=str(root)), capture_output=True, text=True, timeout=300)
    passed = re.search(r"^# pass (\d+)", tests.stdout, re.M)
    checks.check(f"sdks/typescript's tests pass against the installed package ({passed.group(1) if passed else 0} tests)",
                 tests.returncode == 0 and bool(passed) and int(passed.group(1)) > 0, _out(tests))
    return app


def scenario(name: str, cmd: list[str], cwd: pathlib.Path, checks, out: dict) -> None:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    out[name] = p


def report(name: str, p: subprocess.CompletedProcess | None, checks) -> None:
    if p is None:
        checks.check(f"{name} scenario ran", False, "not run")
        return
    lines = [l for l in p.stdout.splitlines() if l.startswith(("ok  ", "FAIL  "))]
    for l in lines:
        label, _, rest = l.partition("  ")
        checks.check(rest if label == "ok" else rest, label == "ok")
    checks.check(f"{name} scenario ran to the end", p.returncode == 0 and bool(lines), (p.stdout + p.stderr)[-1500:])


def cors(api: str, allowed: str, other: str, checks) -> None:
    """CORS as the router answers it, from the template's settings: the preflight and the answer
    carry Access-Control-Allow-Origin for the configured origin only."""
    def ask(method, path, origin, extra=None):
        req = urllib.request.Request(f"{api}{path}", method=method, headers={"origin": origin, **(extra or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers)

    pre = {"access-control-request-method": "GET", "access-control-request-headers": "authorization"}
    s, h = ask("OPTIONS", "/v1/accounts/x/credits", allowed, pre)
    h = {k.lower(): v for k, v in h.items()}
    checks.check("CORS preflight from the configured origin → 204 allowing it, GET and the authorization header",
                 s == 204 and h.get("access-control-allow-origin") == allowed and "GET" in h.get("access-control-allow-methods", "")
                 and "authorization" in h.get("access-control-allow-headers", ""), f"{s} {h}")
    s, h = ask("OPTIONS", "/v1/accounts/x/credits", other, pre)
    checks.check("CORS preflight from another origin → no Access-Control-Allow-Origin",
                 "access-control-allow-origin" not in {k.lower() for k in h}, f"{s} {h}")
    s, h = ask("GET", "/billing/topup-credits.js", allowed)
    h = {k.lower(): v for k, v in h.items()}
    checks.check("GET /billing/topup-credits.js from the configured origin → 200 JavaScript with its CORS header",
                 s == 200 and h.get("access-control-allow-origin") == allowed and "javascript" in h.get("content-type", ""),
                 f"{s} {h}")
    s, h = ask("GET", "/billing/topup-credits.js", other)
    checks.check("… and from another origin without one", s == 200 and "access-control-allow-origin" not in {k.lower() for k in h},
                 f"{s} {h}")


def run(moto: str, stripe: str, secret: str, checks, stack_api) -> None:
    root = stack_api.ROOT
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="topup-sdks-"))
    stack = stack_api.Stack()
    try:
        started = time.time()
        # The two packages build and install side by side.
        results: dict = {}
        t = threading.Thread(target=lambda: results.setdefault("ts", typescript_client(root, tmp, checks)))
        t.start()
        py = python_client(root, tmp, checks)
        t.join()
        app = results.get("ts")
        print(f"  (clients built, installed and tested in {time.time() - started:.0f}s)", flush=True)

        stack_api.create_resources(moto, "topup-sdks", "topup-sdks", "example.com")
        env = stack_api.function_env(moto, "usd-overage", "topup-sdks", "topup-sdks", secret, stripe)
        host, other = stack_api.free_port(), stack_api.free_port()
        allowed = f"http://127.0.0.1:{host}"
        env["TOPUP_ALLOWED_ORIGINS"] = f"https://app.example.com,{allowed}"
        watch_port, api_port = stack_api.free_port(), stack_api.free_port()
        r = stack_api.start_functions(stack, env, watch_port, api_port, reload=False)
        api = f"http://127.0.0.1:{api_port}"
        svc = stack_api.token_for("service", None, secret)

        runs: dict = {}
        threads = []
        if py:
            threads.append(threading.Thread(target=scenario, args=(
                "python", [str(py), str(HERE / "scenario.py"), api, svc, "sdk-py"], HERE, checks, runs)))
        if app:
            shutil.copy(HERE / "scenario.mjs", app / "scenario.mjs")
            threads.append(threading.Thread(target=scenario, args=(
                "typescript", ["node", "scenario.mjs", api, svc, "sdk-ts"], app, checks, runs)))
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        report("the Python client's", runs.get("python"), checks)
        report("the TypeScript client's", runs.get("typescript"), checks)

        cors(api, allowed, f"http://127.0.0.1:{other}", checks)
        sys.path.insert(0, str(root / "tests" / "browser"))
        import card_test

        card_js = (root / "functions/credits-api/src/topup-credits.js").read_bytes()
        try:
            # The TypeScript scenario's account: $4.60 left, 1,000 of its 1,000 calls used.
            card_test.run(api, stack_api.token_for("owner", "sdk-ts", secret), host, other, card_js,
                          {"balance": "$4.60", "allowance": "1,000 of 1,000 used"}, checks, root / ".local" / "screenshots")
        except Exception as e:  # a scenario that could not even run is a failure, with its reason
            checks.check("card: the Chromium test ran to the end", False, repr(e))
        r.shutdown()
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
