"""A loopback emulator of OpenMeter's v1 REST API (see :mod:`emulators.openmeter.fake`).

``from emulators.openmeter import FakeOpenMeter``; ``python -m emulators.openmeter --port 8888``
serves it.
"""

from .fake import FakeOpenMeter

__all__ = ["FakeOpenMeter"]
