"""POST /stripe/webhook/: signed snapshot and thin events are stored once and processed; Stripe's
asynchronous meter event rejections are matched to the ReportLog row that sent them and trigger
a reconciliation; a bad signature is a bare 400 and changes nothing; a replay changes nothing."""

import json
import time
from typing import Any

import pytest
import stripe

from billing import reporting
from billing.models import (
    LogStatus,
    MeterEventError,
    Reconciliation,
    ReportLog,
    Trigger,
    WebhookEvent,
)
from emulators.stripe.webhooks import sign
from tests.helpers import STRIPE_KEY, Usage, hours_ago, synced_customers, synced_meter

pytestmark = pytest.mark.django_db
SECRET = "whsec_meterbridge_tests_first"
OTHER_SECRET = "whsec_meterbridge_tests_second"
URL = "/stripe/webhook/"


@pytest.fixture
def secrets(settings):
    settings.STRIPE_WEBHOOK_SECRET = f"{SECRET}, {OTHER_SECRET}"


def post(client: Any, payload: bytes, signature: str | None) -> Any:
    headers = {} if signature is None else {"HTTP_STRIPE_SIGNATURE": signature}
    return client.post(URL, data=payload, content_type="application/json", **headers)


def snapshot_event(event_type: str = "customer.updated") -> bytes:
    return json.dumps(
        {
            "id": "evt_1SnapshotTest",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "data": {"object": {"id": "cus_x", "object": "customer"}},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
    ).encode()


def thin_payload(event: dict[str, Any]) -> bytes:
    """The notification Stripe posts for a thin event: the event without its data."""
    note = {k: v for k, v in event.items() if k != "data"}
    if note.get("related_object") is None:
        note.pop("related_object", None)
    return json.dumps(note).encode()


def test_a_signed_snapshot_event_is_stored_once_and_processed(
    client, fake_stripe, secrets, django_capture_on_commit_callbacks
):
    payload = snapshot_event()
    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, payload, fake_stripe.sign(payload, SECRET))
    assert first.status_code == 200 and first.json() == {"received": True, "duplicate": False}
    stored = WebhookEvent.objects.get()
    assert (stored.type, stored.api_mode) == ("customer.updated", "snapshot")
    assert stored.processed_at is not None and stored.error == ""  # not handled: stored, ignored
    with django_capture_on_commit_callbacks(execute=True):
        again = post(client, payload, fake_stripe.sign(payload, OTHER_SECRET))  # a replay
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert WebhookEvent.objects.count() == 1


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        "t=1,v1=deadbeef",
        "wrong-secret",
        "too-old",
    ],
)
def test_a_bad_signature_is_400_and_changes_nothing(client, fake_stripe, secrets, signature):
    payload = snapshot_event()
    if signature == "wrong-secret":
        signature = fake_stripe.sign(payload, "whsec_not_ours")
    elif signature == "too-old":
        signature = fake_stripe.sign(payload, SECRET, timestamp=int(time.time()) - 301)
    response = post(client, payload, signature)
    assert response.status_code == 400 and response.content == b""
    assert not WebhookEvent.objects.exists()


def test_without_configured_secrets_nothing_is_accepted(client, fake_stripe, settings):
    settings.STRIPE_WEBHOOK_SECRET = None
    payload = snapshot_event()
    assert post(client, payload, fake_stripe.sign(payload, SECRET)).status_code == 400
    assert not WebhookEvent.objects.exists()


def test_only_post_is_answered(client):
    assert client.get(URL).status_code == 405


@pytest.fixture
def rejected(fake_stripe, fake_openmeter, frozen, settings):
    """A report in which Stripe accepts, then rejects, the events of a customer deleted in Stripe
    behind Meterbridge's back; its error report, emitted by the fake Stripe."""
    settings.RECONCILE_SETTLE_MINUTES = 0
    meter = synced_meter(fake_openmeter)
    _, gone = synced_customers(["acme", "gone"])
    usage = Usage(fake_openmeter)
    for h in (2, 3):
        usage.add(meter, "acme", hours_ago(frozen, h), 5)
        usage.add(meter, "gone", hours_ago(frozen, h), 7)
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.url})
    client.v1.customers.delete(gone.stripe_customer_id)
    run = reporting.report_usage(trigger=Trigger.SCHEDULE, now=frozen)
    assert run.events_sent == 4  # Stripe took them all; it validates later
    (report,) = fake_stripe.flush_error_reports()
    assert report["type"] == "v1.billing.meter.error_report_triggered"
    return meter, gone, report


def test_a_thin_error_report_marks_the_sample_row_rejected(
    client, rejected, secrets, django_capture_on_commit_callbacks
):
    meter, gone, report = rejected
    payload = thin_payload(report)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, payload, sign(payload, SECRET))
    assert response.status_code == 200
    stored = WebhookEvent.objects.get()
    assert stored.api_mode == "thin" and stored.processed_at is not None, stored.error
    assert stored.payload["event"]["data"]["reason"]["error_count"] == 2  # fetched from Stripe
    errors = list(MeterEventError.objects.all())
    assert errors and {e.code for e in errors} == {"meter_event_customer_not_found"}
    sample = errors[0]
    assert sample.count == 2 and sample.meter == meter and sample.report_log is not None
    log = sample.report_log
    assert log.customer == gone and log.status == LogStatus.SENT
    assert log.identifier == sample.identifier
    # the log itself is unchanged; the rejection points to it
    assert ReportLog.objects.filter(status=LogStatus.SENT).count() == 4
    # Stripe sent samples only: the meter is reconciled over the windows sent then
    check = Reconciliation.objects.get()
    assert check.trigger == Trigger.WEBHOOK and check.meter_slugs == [meter.openmeter_slug]
    assert check.finished_at is not None


def test_replaying_the_error_report_changes_nothing(
    client, rejected, secrets, django_capture_on_commit_callbacks
):
    _, _, report = rejected
    payload = thin_payload(report)
    counts = []
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            assert post(client, payload, sign(payload, SECRET)).status_code == 200
        counts.append(
            (
                WebhookEvent.objects.count(),
                MeterEventError.objects.count(),
                Reconciliation.objects.count(),
            )
        )
    assert counts[0] == counts[1] == (1, 2, 1)  # two samples, one per rejected window


def test_a_wrongly_signed_error_report_changes_nothing(client, rejected, secrets, fake_stripe):
    _, _, report = rejected
    payload = thin_payload(report)
    response = post(client, payload, fake_stripe.sign(payload, "whsec_someone_else"))
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists() and not MeterEventError.objects.exists()


def test_the_pages_show_what_stripe_rejected(
    client, admin_client, rejected, secrets, django_capture_on_commit_callbacks
):
    _, gone, report = rejected
    payload = thin_payload(report)
    with django_capture_on_commit_callbacks(execute=True):
        post(client, payload, sign(payload, SECRET))
    log = MeterEventError.objects.first().report_log
    listing = admin_client.get("/admin/billing/reportlog/").content.decode()
    assert listing.count("Rejected by Stripe") == 2  # the two windows of the deleted customer
    assert "meter_event_customer_not_found" in listing
    for url in (
        f"/admin/billing/reportrun/{log.run_id}/change/",
        f"/admin/billing/customer/{gone.pk}/change/",
    ):
        page = admin_client.get(url).content.decode()
        assert 'id="rejections"' in page and "meter_event_customer_not_found" in page, url
    home = admin_client.get("/admin/").content.decode()
    assert '<strong data-field="rejected">2</strong>' in home


@pytest.mark.django_db(transaction=True)
def test_the_fake_stripe_delivers_a_signed_thin_event_to_the_real_endpoint(
    live_server, fake_stripe, fake_openmeter, settings, now
):
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.RECONCILE_SETTLE_MINUTES = 0
    fake_stripe.add_webhook_destination(f"{live_server.url}{URL}", secret=SECRET, mode="thin")
    meter = synced_meter(fake_openmeter)
    (gone,) = synced_customers(["gone"])
    Usage(fake_openmeter).add(meter, "gone", hours_ago(now, 2), 3)
    stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake_stripe.url}).v1.customers.delete(
        gone.stripe_customer_id
    )
    reporting.report_usage(trigger=Trigger.SCHEDULE, now=now)
    fake_stripe.flush_error_reports()
    assert fake_stripe.deliver_pending(timeout=30)
    assert [d["status"] for d in fake_stripe.webhook_deliveries] == [200]
    error = MeterEventError.objects.get()
    assert error.code == "meter_event_customer_not_found" and error.report_log.customer == gone
    assert WebhookEvent.objects.get().processed_at is not None
