"""Admin forms: validation that gives finance staff a message they can act on."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing import aggregations
from billing.admin.generic import ModelForm
from billing.formatting import utc_minute
from billing.integrations.openmeter import OpenMeterClient, OpenMeterError, OpenMeterNotFound
from billing.models import Meter
from billing.reporting import ReportInputError, validate_period
from billing.reporting.periods import reportable_range
from billing.reporting.presets import CUSTOM, Preset


class WarningModelForm(ModelForm):
    """A model form whose checks can let a save through with a warning for the person saving.

    `warnings` is filled by `clean`; the admin shows each one after the save."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warnings: list[str] = []


class MeterForm(WarningModelForm):
    class Meta:
        model = Meter
        fields = ["name", "openmeter_slug", "event_name", "window", "active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        slug = cleaned.get("openmeter_slug")
        if slug and "openmeter_slug" not in self.errors:
            self._check_in_openmeter(slug)
        return cleaned

    def _check_in_openmeter(self, slug: str) -> None:
        """The slug must name a billable OpenMeter meter; OpenMeter being down only warns."""
        try:
            with OpenMeterClient.from_settings() as client:
                info = client.get_meter(slug)
        except OpenMeterNotFound:
            raise ValidationError(
                {"openmeter_slug": f"OpenMeter has no meter with the slug '{slug}'."}
            ) from None
        except OpenMeterError as exc:
            # OpenMeter being down must not stop finance from keeping their meters.
            self.warnings.append(f"Could not check the slug in OpenMeter: {exc}")
            return
        problem = Meter.aggregation_problem(info.aggregation)
        if problem:
            raise ValidationError({"openmeter_slug": problem})
        if self.instance.stripe_meter_id:
            billed = aggregations.stripe_formula(self.instance.openmeter_aggregation)
            if aggregations.stripe_formula(info.aggregation) != billed:
                raise ValidationError(
                    {
                        "openmeter_slug": f"OpenMeter aggregates '{slug}' with "
                        f"{info.aggregation.upper()}, but this meter's Stripe meter bills with "
                        f"formula '{billed}', which Stripe cannot change. Create a new meter "
                        "for it."
                    }
                )
        self.instance.openmeter_aggregation = info.aggregation.upper()


class UTCDateTimeField(forms.DateTimeField):
    """A date-time typed without an offset is UTC, whatever the site's time zone."""

    widget = forms.DateTimeInput(
        attrs={"type": "datetime-local", "step": 3600}, format="%Y-%m-%dT%H:%M"
    )

    def to_python(self, value: Any) -> datetime | None:
        with timezone.override(UTC):
            result = super().to_python(value)
        try:
            return result.astimezone(UTC) if result is not None else None
        except OverflowError:  # an offset pushing it off the calendar (year 1 or 9999)
            raise ValidationError(
                f"This date-time is outside the range Meterbridge reports ({reportable_range()}).",
                code="out_of_range",
            ) from None

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            try:
                return value.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:
                return value.replace(tzinfo=None)
        return value


class PresetSelect(forms.RadioSelect):
    """Radio buttons where a preset that cannot be reported is shown, disabled, with its reason."""

    def __init__(self, *args: Any, disabled: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disabled = set(disabled)

    def create_option(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        option = super().create_option(*args, **kwargs)
        if option["value"] in self.disabled:
            option["attrs"]["disabled"] = True
        return option


def preset_label(preset: Preset) -> str:
    if preset.start is None or preset.end is None:
        return f"{preset.label} — {preset.problem}"
    text = f"{preset.label}: {utc_minute(preset.start)} → {utc_minute(preset.end)} UTC"
    return f"{text} — {preset.problem}" if preset.problem else text


class RereportForm(forms.Form):
    """The period of a re-report (a preset or a custom [from, to) in UTC on window boundaries)
    and why it is reported again: the reason is required and kept on the run."""

    preset = forms.ChoiceField(label="Period")
    start = UTCDateTimeField(label="From (UTC)", required=False)
    end = UTCDateTimeField(label="To (UTC, not included)", required=False)
    reason = forms.CharField(
        label="Reason",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
        help_text="Why this period is reported again (a correction in OpenMeter, a ticket…). "
        "Kept on the run, in the report log and its CSV export.",
        error_messages={
            "required": "Give the reason for this re-report: it is kept on the run, in the "
            "report log and its CSV export."
        },
    )

    def __init__(
        self,
        *args: Any,
        presets: list[Preset],
        meters: list[Meter],
        now: datetime,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.presets = {p.key: p for p in presets}
        self.meters, self.now = meters, now
        field = cast(forms.ChoiceField, self.fields["preset"])
        choices = [(p.key, preset_label(p)) for p in presets] + [(CUSTOM, "Custom period, below")]
        field.choices = choices
        field.widget = PresetSelect(choices=choices, disabled=[p.key for p in presets if p.problem])
        usable = [p.key for p in presets if not p.problem]
        field.initial = usable[0] if usable else CUSTOM

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        key = cleaned.get("preset")
        if key is None:
            return cleaned
        if key == CUSTOM:
            start, end = cleaned.get("start"), cleaned.get("end")
            if start is None or end is None:
                raise ValidationError("Give both the start and the end of the custom period.")
        else:
            preset = self.presets[key]
            if preset.problem or preset.start is None or preset.end is None:
                raise ValidationError(f"{preset.label} cannot be reported: {preset.problem}.")
            start, end = preset.start, preset.end
        try:
            validate_period(start=start, end=end, meters=self.meters, now=self.now)
        except ReportInputError as exc:
            raise ValidationError(str(exc)) from None
        cleaned["period"] = (start, end)
        return cleaned
