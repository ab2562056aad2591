"""localstripe on 127.0.0.1 only, from scratch.

localstripe's own `start()` binds every interface ('::') and reloads state from a pickle in
the system temp folder unless told otherwise. This launcher serves the same aiohttp app on
loopback with an empty store. Issue 3 (purchases) extends this file with what async-stripe
1.0.0-rc.10 needs and localstripe lacks (LOCAL_STACK.md): extra response fields and Checkout
Sessions.

Usage: python localstripe_local.py PORT
"""

import sys

from aiohttp import web
from localstripe.server import app


def main() -> None:
    port = int(sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
