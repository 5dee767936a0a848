"""``python -m emulators.openmeter [--host 127.0.0.1] [--port 8888] [--token T] [--meter SPEC]``.

Serves the OpenMeter emulator in the foreground until Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterable, Iterator

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
    args = parser.parse_args(argv)
    fake = FakeOpenMeter(token=args.token, host=args.host, port=args.port)
    try:
        for slug, agg, etype, prop in _meter_specs(args.meter):
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
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"fake OpenMeter listening on {fake.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
