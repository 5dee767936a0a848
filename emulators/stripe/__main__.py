"""``python -m emulators.stripe [--host 127.0.0.1] [--port 12111] [--no-validate] [--state PATH]``.

Serves the Stripe emulator in the foreground until Ctrl-C (or SIGTERM). Its read-only page is at
``/`` (JSON: ``/_emulator/state.json``).

``--state PATH`` keeps the state (customers, products, prices, meters, subscriptions, meter
events, identifiers, idempotency keys) across restarts: it is loaded from PATH at start if the
file exists, saved at most every 5 seconds while it changes and once more on stop (written to a
temporary file in the same directory and renamed, mode 0600). A file that cannot be read is
reported, renamed to PATH.bad, and the emulator starts empty. The file is a pickle: use only
files this emulator wrote.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..persist import AutoSaver, restore
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
    parser.add_argument(
        "--state",
        metavar="PATH",
        default=None,
        help="load the state from PATH if it exists; save it there every 5 s while it changes "
        "and on stop (an unreadable file is renamed to PATH.bad)",
    )
    args = parser.parse_args(argv)
    fake = FakeStripe(validate=not args.no_validate)
    saver: AutoSaver | None = None
    if args.state:
        restore(fake, args.state, name="emulators.stripe")
        saver = AutoSaver(fake, args.state, name="emulators.stripe")
    try:
        fake.start(port=args.port, host=args.host)
    except OSError as exc:
        print(f"emulators.stripe: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if saver is not None:
        saver.start()
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    print(f"fake Stripe listening on {fake.url}", flush=True)
    if _unrouted:
        print(f"not served: {', '.join(_unrouted)}", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C or SIGTERM must not cut the final save short
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fake.stop()
        if saver is not None:
            saver.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return 0


if __name__ == "__main__":
    sys.exit(main())
