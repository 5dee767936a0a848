"""The customer form: a customer's identity is fixed once billed, and linking an existing Stripe
customer never overwrites it blindly.

- Once usage was reported for a customer (`Customer.reported_under`), its Stripe customer id and
  OpenMeter subject cannot change: the form refuses it, saying what to do instead. (The admin
  also makes both read-only; a page opened before the first report still posts them.)
- A Stripe customer id typed in (a new row, or a changed id) is first read from Stripe. It must
  exist, belong to no other Customer and name no other OpenMeter subject in its metadata. If
  saving would overwrite its name or email (or add the subject to its metadata), the form lists
  what would change and asks for "Overwrite these in Stripe" to be ticked on the next save.
"""

from typing import Any

import stripe
from django import forms
from django.core.exceptions import ValidationError

from billing.admin.generic import ModelForm
from billing.integrations.openmeter import CustomerInfo, OpenMeterClient, OpenMeterError
from billing.integrations.stripe_client import StripeNotConfigured, get_client
from billing.integrations.stripe_errors import describe
from billing.integrations.stripe_sync import link_refusal
from billing.models import Customer, LogStatus, ReportLog

CONFIRM = "confirm_overwrite"


def _shown(value: object) -> str:
    return f"'{value}'" if value else "(none)"


class CustomerForm(ModelForm):
    confirm_overwrite = forms.BooleanField(
        label="Overwrite these in Stripe",
        required=False,
        # Shown only when saving would overwrite the linked Stripe customer (see `clean`).
        widget=forms.HiddenInput,
    )

    class Meta:
        model = Customer
        fields = [
            "name",
            "email",
            "openmeter_subject",
            "stripe_customer_id",
            "openmeter_customer_id",
            "active",
        ]

    openmeter_customer: CustomerInfo | None = None  # read when the link is new or changed

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        saved = self._saved()
        if self._check_identity_lock(cleaned, saved):
            return cleaned
        self._check_openmeter_customer(cleaned)
        stripe_id = cleaned.get("stripe_customer_id")
        if (
            "stripe_customer_id" in self.fields
            and stripe_id
            and stripe_id != saved.get("stripe_customer_id")
        ):
            self._check_link(cleaned, stripe_id, saved)
        return cleaned

    def _check_openmeter_customer(self, cleaned: dict[str, Any]) -> None:
        """A new OpenMeter link is read from OpenMeter (by id or key) and kept by its id."""
        wanted = (cleaned.get("openmeter_customer_id") or "").strip()
        if not wanted or wanted == self.instance.openmeter_customer_id:
            return
        try:
            with OpenMeterClient.from_settings() as client:
                info = client.get_customer(wanted)
        except OpenMeterError as exc:
            self.add_error("openmeter_customer_id", str(exc))
            return
        other = Customer.objects.filter(openmeter_customer_id=info.id).exclude(pk=self.instance.pk)
        if other.exists():
            self.add_error(
                "openmeter_customer_id", f"Customer {other[0].name} is linked to it already."
            )
            return
        cleaned["openmeter_customer_id"] = info.id
        self.openmeter_customer = info

    def _saved(self) -> dict[str, Any]:
        """The identity as stored (empty for a new customer)."""
        if self.instance.pk is None:
            return {}
        row = Customer.objects.filter(pk=self.instance.pk).values(*Customer.IDENTITY_FIELDS)
        return row.first() or {}

    _NOT_POSTED = object()

    def _posted(self, cleaned: dict[str, Any], name: str) -> Any:
        """The value posted for an identity field. A read-only field is not on the form, but a
        page opened before it became read-only still posts it."""
        if name in self.fields:
            return cleaned.get(name, self._NOT_POSTED)
        if name in self.data:
            return str(self.data[name]).strip()
        return self._NOT_POSTED

    def _check_identity_lock(self, cleaned: dict[str, Any], saved: dict[str, Any]) -> bool:
        """Refuse a change of a locked identity; True if refused."""
        if not saved:
            return False
        changed = [
            name
            for name in Customer.IDENTITY_FIELDS
            if (value := self._posted(cleaned, name)) is not self._NOT_POSTED
            and value != saved[name]
        ]
        if not changed:
            return False
        under = self.instance.reported_under()
        if under is None:
            return False
        message = Customer.identity_lock_message(under)
        for name in changed:
            self.add_error(name if name in self.fields else None, message)
        return True

    def _check_link(self, cleaned: dict[str, Any], stripe_id: str, saved: dict[str, Any]) -> None:
        """A Stripe customer typed in by hand: check it in Stripe before anything is written."""
        subject = cleaned.get("openmeter_subject") or saved.get("openmeter_subject")
        try:  # the model's validators run after `clean`: ask Stripe only about a well-formed id
            Customer._meta.get_field("stripe_customer_id").run_validators(stripe_id)
        except ValidationError:
            return  # the form is invalid anyway; the next save checks the link
        if not subject or "openmeter_subject" in self.errors:
            return
        others = Customer.objects.filter(stripe_customer_id=stripe_id).exclude(pk=self.instance.pk)
        other = others.first()
        if other is not None:
            raise ValidationError(
                {
                    "stripe_customer_id": f"{stripe_id} is already linked to the customer "
                    f"{other}: one Stripe customer bills one customer."
                }
            )
        billed = (
            ReportLog.objects.filter(stripe_customer_id=stripe_id, status=LogStatus.SENT)
            .exclude(customer_id=self.instance.pk)
            .select_related("customer")
            .order_by()
            .first()
        )
        if billed is not None:
            raise ValidationError(
                {
                    "stripe_customer_id": f"Usage of the customer {billed.customer} was "
                    f"reported to Stripe under {stripe_id}: it cannot bill another customer. "
                    "Link another Stripe customer, or leave it blank to create one."
                }
            )
        remote = self._retrieve(stripe_id)
        problem = link_refusal(remote, subject)
        if problem:
            raise ValidationError({"stripe_customer_id": problem})
        overwrites = self._overwrites(remote, cleaned, subject)
        if overwrites and not cleaned.get(CONFIRM):
            self.fields[CONFIRM].widget = forms.CheckboxInput()
            self.add_error(
                CONFIRM,
                f"Stripe's customer {stripe_id} will be overwritten: {', '.join(overwrites)}. "
                "Tick “Overwrite these in Stripe” and save again to go ahead, or link another "
                "Stripe customer.",
            )

    @staticmethod
    def _retrieve(stripe_id: str) -> dict[str, Any]:
        try:
            found = get_client(max_network_retries=0).v1.customers.retrieve(stripe_id)
        except (StripeNotConfigured, stripe.StripeError) as exc:
            if isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404:
                message = f"Stripe has no customer {stripe_id}."
            else:  # never link, and so overwrite, a Stripe customer nobody could look at
                message = (
                    f"Could not check {stripe_id} in Stripe, so nothing was saved "
                    f"({describe(exc)}). Try again when Stripe answers, or leave the id blank "
                    "to create a new Stripe customer."
                )
            raise ValidationError({"stripe_customer_id": message}) from None
        remote: dict[str, Any] = found.to_dict()
        return remote

    @staticmethod
    def _overwrites(remote: dict[str, Any], cleaned: dict[str, Any], subject: str) -> list[str]:
        """What syncing this row would change in the Stripe customer (see sync_customer)."""
        changes = []
        name = cleaned.get("name") or ""
        if (remote.get("name") or "") != name:
            changes.append(f"name {_shown(remote.get('name'))} → {_shown(name)}")
        email = cleaned.get("email") or ""
        if email and (remote.get("email") or "") != email:  # a blank email is not sent
            changes.append(f"email {_shown(remote.get('email'))} → {_shown(email)}")
        if (remote.get("metadata") or {}).get("openmeter_subject") != subject:
            changes.append(f"metadata openmeter_subject (none) → {_shown(subject)}")
        return changes
