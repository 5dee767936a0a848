"""``python -m emulators.stripe [--host 127.0.0.1] [--port 12111] [--no-validate] [--state PATH]
[--webhook URL[,thin|snapshot] ...] [--webhook-secret whsec_... ...] [--error-report-seconds 60]
[--summary-delay 0] [--invoice-grace 3600] [--billing-seconds 5]``.

Serves the Stripe emulator in the foreground until Ctrl-C (or SIGTERM). Its read-only page is at
``/`` (JSON: ``/_emulator/state.json``); ``POST /_emulator/subscriptions/{id}/advance`` closes a
subscription's period now (``controls.py``).

``--state PATH`` keeps the state (customers, products, prices, meters, subscriptions, meter
events, identifiers, idempotency keys, emitted events) across restarts: it is loaded from PATH at
start if the file exists, saved at most every 5 seconds while it changes and once more on stop
(written to a temporary file in the same directory and renamed, mode 0600). A file that cannot be
read is reported, renamed to PATH.bad, and the emulator starts empty. The file is a pickle: use
only files this emulator wrote.

``--webhook URL[,MODE]`` (repeatable) delivers the emitted events to URL: snapshot events by
default, thin event notifications with ``,thin``. ``--webhook-secret`` is the signing secret:
given once, it signs for every ``--webhook``; given as often as ``--webhook``, the n-th signs for
the n-th. Without it a random ``whsec_`` secret is made and printed.

``--error-report-seconds N`` emits the asynchronous meter event error reports every N seconds
(default 60; 0 = never). ``--summary-delay S``: meter event summaries leave out events received
less than S seconds ago (default 0).

``--invoice-grace SECONDS``: a draft invoice is finalized that long after it was created (default
3600, Stripe's hour). ``--billing-seconds N``: every N seconds, end the subscription periods that
have ended and finalize the drafts whose grace has passed (default 5; 0 = never).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading

from ..persist import AutoSaver, restore
from .fake import FakeStripe, _unrouted
from .webhooks import MODES


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _webhooks(
    parser: argparse.ArgumentParser, urls: list[str], secrets_given: list[str]
) -> list[tuple[str, str, str]]:
    """(url, mode, secret) for each ``--webhook``; exits with a usage error if they do not fit."""
    if secrets_given and len(secrets_given) not in (1, len(urls)):
        parser.error("give --webhook-secret once, or once per --webhook")
    if not urls and secrets_given:
        parser.error("--webhook-secret without --webhook")
    out = []
    generated = "whsec_" + secrets.token_hex(24)
    for i, given in enumerate(urls):
        url, mode = given, "snapshot"
        head, _, tail = given.rpartition(",")
        if head and tail in MODES:
            url, mode = head, tail
        if not url.startswith(("http://", "https://")):
            parser.error(f"--webhook {given!r}: expected http(s)://...[,thin|snapshot]")
        secret = secrets_given[i if len(secrets_given) > 1 else 0] if secrets_given else generated
        out.append((url, mode, secret))
    return out


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
    parser.add_argument(
        "--webhook",
        metavar="URL[,thin|snapshot]",
        action="append",
        default=[],
        help="deliver emitted events to URL: snapshot events (default) or thin ones (repeatable)",
    )
    parser.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        action="append",
        default=[],
        help="signing secret: once for all --webhook, or once per --webhook in the same order "
        "(default: a random whsec_..., printed)",
    )
    parser.add_argument(
        "--error-report-seconds",
        type=float,
        default=60.0,
        metavar="N",
        help="emit the meter event error reports every N seconds (default 60; 0 = never)",
    )
    parser.add_argument(
        "--summary-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="event summaries leave out events received less than S seconds ago (default 0)",
    )
    parser.add_argument(
        "--invoice-grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="finalize a draft invoice that long after its creation (default 3600)",
    )
    parser.add_argument(
        "--billing-seconds",
        type=float,
        default=5.0,
        metavar="N",
        help="every N seconds, end the periods that have ended and finalize the drafts that are "
        "due (default 5; 0 = never)",
    )
    args = parser.parse_args(argv)
    if args.invoice_grace < 0:
        parser.error("--invoice-grace must be 0 or more")
    hooks = _webhooks(parser, args.webhook, args.webhook_secret)
    fake = FakeStripe(validate=not args.no_validate)
    fake.summary_delay_seconds = args.summary_delay
    fake.invoice_grace_seconds = args.invoice_grace
    for url, mode, secret in hooks:
        fake.add_webhook_destination(url, secret=secret, mode=mode)
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
    fake.flush_error_reports_every(args.error_report_seconds)
    fake.run_billing_every(args.billing_seconds)
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    print(f"fake Stripe listening on {fake.url}", flush=True)
    for url, mode, secret in hooks:
        shown = secret if not args.webhook_secret else "the given secret"
        print(f"webhooks: {mode} events to {url}, signed with {shown}", flush=True)
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
