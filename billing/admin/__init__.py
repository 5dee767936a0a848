"""The Django admin: thin. Lists, filters and actions call the services.

Where things are:

- `base`: what the admins share: the stylesheet (billing/static/billing/admin.css), a row's
  Stripe state, the sync after each save and its message, the read-only history, and the
  re-report permission and action.
- `catalog`: what finance staff keep and Stripe mirrors: meters, customers, prices (with their
  archived Stripe prices) and subscriptions; the usage charts on meter and customer pages.
- `history`: the report runs (progress, "report this period again") and the report log (capped
  counts, indexed search, CSV export).
- `views`: the re-report page (period, preview, confirmation), reached from customers, meters
  and runs.
- `forms`: the meter form's OpenMeter check and the re-report period form.
- `queue`: django-q2's admins again, read-only for everyone but superusers.

Importing this package registers the admins (Django's autodiscovery imports it).
"""

from billing.admin import catalog, history, queue

__all__ = ["catalog", "history", "queue"]
