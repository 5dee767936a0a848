"""``python -m emulators.stripe [--host 127.0.0.1] [--port 12111] [--no-validate]``.

Serves the Stripe emulator in the foreground until Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .fake import FakeStripe, _unrouted


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.stripe", description="Serve the Stripe emulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=12111, help="port (0 = any free port)")
    parser.add_argument(
        "--no-validate", action="store_true", help="skip contract checks (types still parsed)"
    )
    args = parser.parse_args(argv)
    try:
        fake = FakeStripe(validate=not args.no_validate).start(port=args.port, host=args.host)
    except OSError as exc:
        print(f"emulators.stripe: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"fake Stripe listening on {fake.url}", flush=True)
    if _unrouted:
        print(f"not served: {', '.join(_unrouted)}", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
