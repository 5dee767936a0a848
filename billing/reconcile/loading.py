"""When each meter's values (OpenMeter, the ledger) are loaded during a reconciliation.

Loading a meter costs seconds of CPU, and the reading threads need the same interpreter: loading
a meter in one go slowed the reading to 60 % of the rate for as long. So the first meter is
loaded while its first summaries wait, taking at most WAITING_SHARE of the time; each next one a
step at a time while the current one is judged, taking at most LOAD_SHARE, and is ready (or
finished the same way) when its first summaries arrive. At most two meters' values are held at
a time."""

import time
from collections.abc import Callable, Iterator

from billing.integrations.openmeter import OpenMeterClient, OpenMeterError
from billing.models import Meter
from billing.reconcile.compare import MeterComparison
from billing.redaction import redact

LOAD_SHARE = 0.3  # of the wall-clock time, for loading the next meter in the background
# ... and for loading a meter whose summaries are waiting: its results cannot be judged before,
# but the reading threads still need their share to keep reading ahead.
WAITING_SHARE = 0.5
PAUSE = 0.005  # seconds


class MeterLoads:
    def __init__(
        self,
        *,
        meters: list[Meter],
        make: Callable[[Meter], MeterComparison],
        openmeter: OpenMeterClient,
        errors: list[str],
    ) -> None:
        self._meters = meters
        self._make = make
        self._openmeter = openmeter
        self._errors = errors
        self._ready: dict[int, MeterComparison | None] = {}  # None: OpenMeter failed for it
        self._next: tuple[Meter, MeterComparison, Iterator[None]] | None = None
        self._spent = 0.0  # seconds spent loading the next meter
        self._since = 0.0  # when its loading began

    def get(self, meter: Meter) -> MeterComparison | None:
        """The meter's comparison, loaded (what is left of its loading is done now), or None
        when OpenMeter could not be read for it (the error is kept)."""
        if meter.pk not in self._ready:
            if self._next is not None and self._next[0].pk == meter.pk:
                _, comparison, steps = self._next
                self._next = None
            else:
                comparison = self._make(meter)
                steps = comparison.loading(self._openmeter)
            began, spent = time.monotonic(), 0.0
            while True:
                started = time.monotonic()
                if spent > WAITING_SHARE * (started - began):
                    time.sleep(PAUSE)  # the readers read ahead meanwhile
                    continue
                more = self._step(meter, comparison, steps)
                spent += time.monotonic() - started
                if not more:
                    break
            self._start_next(after=meter)
        return self._ready[meter.pk]

    def advance(self) -> None:
        """One step of the next meter's loading, unless loading has had its share of the time
        since it began."""
        if self._next is None:
            return
        started = time.monotonic()
        if self._spent > LOAD_SHARE * (started - self._since):
            return
        meter, comparison, steps = self._next
        if not self._step(meter, comparison, steps):
            self._next = None
        self._spent += time.monotonic() - started

    def _step(self, meter: Meter, comparison: MeterComparison, steps: Iterator[None]) -> bool:
        """Load one step; False once the meter is ready (or failed)."""
        try:
            next(steps)
            return True
        except StopIteration:
            self._ready[meter.pk] = comparison
        except OpenMeterError as exc:
            self._errors.append(redact(str(exc)))
            self._ready[meter.pk] = None
        return False

    def _start_next(self, *, after: Meter) -> None:
        later = self._meters[self._meters.index(after) + 1 :]
        if later and later[0].pk not in self._ready:
            comparison = self._make(later[0])
            self._next = (later[0], comparison, comparison.loading(self._openmeter))
            self._spent, self._since = 0.0, time.monotonic()
