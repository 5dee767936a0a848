"""A stateful loopback emulator of the Stripe API (see :mod:`emulators.stripe.fake`).

``from emulators.stripe import FakeStripe``; ``python -m emulators.stripe --port 12111`` serves it.
"""

from .fake import FakeStripe

__all__ = ["FakeStripe"]
