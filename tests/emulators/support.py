"""Shared by the emulator tests: a clock the tests set (FakeStripe.clock)."""


class Clock:
    """A settable time source for FakeStripe.clock."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
