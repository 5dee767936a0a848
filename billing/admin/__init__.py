"""The Django admin: thin. Lists, filters and actions call the services.

Where things are:

- `base`: what the admins share: the stylesheet (billing/static/billing/admin.css), a row's
  Stripe state, the sync after each save and its message, the read-only history, and the
  re-report permission and action.
- `catalog`: what finance staff keep and Stripe mirrors: meters, customers, prices (with their
  archived Stripe prices) and subscriptions; the usage charts on meter and customer pages.
- `history`: the report runs (progress, value in money, "report this period again").
- `report_log`: the report log (capped counts, indexed search, "rejected by Stripe", CSV export).
- `views`: the re-report page (period, preview, confirmation), reached from customers, meters
  and runs.
- `forms`: the meter form's OpenMeter check and the re-report period form.
- `readback`: what Stripe bills, read back: reconciliations, meter events Stripe rejected, and
  the webhook events received.
- `closing`: billing periods, and corrections with their approval (billing.approve_correction).
- `dashboard`: the admin's home page and its action (customers for unmapped subjects).
- `queue`: django-q2's admins again, read-only for everyone but superusers.

Importing this package registers the admins (Django's autodiscovery imports it).
"""

from billing.admin import catalog, closing, history, queue, readback, report_log

__all__ = ["catalog", "closing", "history", "queue", "readback", "report_log"]
