"""HTTP controls of the Stripe emulator, outside the API contract, for demos and test harnesses.

- ``POST /_emulator/subscriptions/{id}/advance``: :meth:`FakeStripe.advance_subscription`
  ("close the period now"); answers the draft invoice of the period that ended.
- ``POST /_emulator/subscriptions/advance``: :meth:`FakeStripe.advance_all_subscriptions`;
  answers ``{"object": "list", "data": [<draft invoice>, ...]}``.
- ``POST /_emulator/invoices/finalize_due``: :meth:`FakeStripe.finalize_due_invoices`; answers
  the invoices finalized, as a list.

No authentication (like the read-only page), not counted in ``FakeStripe.requests``. Errors are
Stripe-shaped: 404 for an unknown subscription, 400 for a canceled one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .common import ApiError, Json, _dumps

if TYPE_CHECKING:
    from .fake import FakeStripe

_ADVANCE = re.compile(r"^/_emulator/subscriptions/([^/]+)/advance/?$")


def _listed(items: list[Json]) -> Json:
    return {"object": "list", "data": items, "has_more": False}


def respond(fake: FakeStripe, raw_path: str) -> tuple[int, bytes] | None:
    """(status, JSON body) for a control's path; None for any other path."""
    path = raw_path.partition("?")[0].rstrip("/")
    try:
        if path == "/_emulator/subscriptions/advance":
            return 200, _dumps(_listed(fake.advance_all_subscriptions()))
        if path == "/_emulator/invoices/finalize_due":
            return 200, _dumps(_listed(fake.finalize_due_invoices()))
        found = _ADVANCE.match(path)
        if found:
            return 200, _dumps(fake.advance_subscription(unquote(found[1])))
    except ApiError as exc:
        return exc.status, _dumps(exc.body("v1"))
    return None
