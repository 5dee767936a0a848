"""``python -m emulators.openmeter [--host 127.0.0.1] [--port 8888] [--token T] [--meter SPEC]
[--state PATH]``.

Serves the OpenMeter emulator in the foreground until Ctrl-C (or SIGTERM).

``--state PATH`` keeps the meters, their events and the customers across restarts: the state is
loaded from PATH at start if the file exists, saved at most every 5 seconds while it changes and
once more on stop (written to a temporary file in the same directory and renamed, mode 0600). A
``--meter`` whose slug is already in the loaded state keeps its saved definition; new ones are
added. A file that cannot be read is reported, renamed to PATH.bad, and the emulator starts empty
(plus its ``--meter`` meters). The file is a pickle: use only files this emulator wrote.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterable, Iterator

from ..persist import AutoSaver, restore
from .fake import FakeOpenMeter


def _meter_specs(specs: Iterable[str]) -> Iterator[tuple[str, str, str | None, str | None]]:
    for spec in specs:
        slug, _, rest = spec.partition(":")
        agg, _, rest = rest.partition(":")
        etype, _, prop = rest.partition(":")
        yield slug, (agg or "SUM"), (etype or None), (prop or None)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.openmeter", description="Serve the OpenMeter emulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8888, help="port (0 = any free port)")
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="SLUG[:AGG[:EVENT_TYPE[:VALUE_PROPERTY]]]",
        help="create a meter (repeatable), e.g. api_calls:SUM:api_call:$.value",
    )
    parser.add_argument(
        "--state",
        metavar="PATH",
        default=None,
        help="load meters, events and customers from PATH if it exists (its meters win over "
        "--meter); save them there every 5 s while they change and on stop (an unreadable file "
        "is renamed to PATH.bad)",
    )
    args = parser.parse_args(argv)
    fake = FakeOpenMeter(token=args.token, host=args.host, port=args.port)
    saver: AutoSaver | None = None
    if args.state:
        restore(fake, args.state, name="emulators.openmeter")
        saver = AutoSaver(fake, args.state, name="emulators.openmeter")  # saves new --meter ones
    try:
        for slug, agg, etype, prop in _meter_specs(args.meter):
            if slug in fake.meter_slugs():
                continue  # kept as loaded from the state file
            default = None if agg.upper() == "COUNT" else "$.value"
            fake.add_meter(slug, aggregation=agg, event_type=etype, value_property=prop or default)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        fake.start()
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        print(f"emulators.openmeter: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    if saver is not None:
        saver.start()
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    print(f"fake OpenMeter listening on {fake.url}", flush=True)
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
