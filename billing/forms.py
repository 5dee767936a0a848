"""Admin forms: validation that gives finance staff a message they can act on."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing import reporting, windows
from billing.models import Meter, Window
from billing.openmeter import OpenMeterClient, OpenMeterError, OpenMeterNotFound
from billing.reporting import ADDITIVE_AGGREGATIONS
from billing.rereport import CUSTOM, Preset, coarsest_window


class MeterForm(forms.ModelForm):
    class Meta:
        model = Meter
        fields = ["name", "openmeter_slug", "event_name", "window", "active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        slug = cleaned.get("openmeter_slug")
        if slug and "openmeter_slug" not in self.errors:
            self.openmeter_warning = ""
            try:
                with OpenMeterClient.from_settings() as client:
                    info = client.get_meter(slug)
            except OpenMeterNotFound:
                raise ValidationError(
                    {"openmeter_slug": f"OpenMeter has no meter with the slug '{slug}'."}
                ) from None
            except OpenMeterError as exc:
                # OpenMeter being down must not stop finance from keeping their meters.
                self.openmeter_warning = f"Could not check the slug in OpenMeter: {exc}"
            else:
                if info.aggregation.upper() not in ADDITIVE_AGGREGATIONS:
                    raise ValidationError(
                        {
                            "openmeter_slug": (
                                f"OpenMeter meter '{slug}' aggregates with {info.aggregation}. "
                                "Only SUM and COUNT meters can be billed per window: summing "
                                "per-window values of other aggregations over a month would "
                                "bill the wrong amount."
                            )
                        }
                    )
                self.instance.openmeter_aggregation = info.aggregation.upper()
        return cleaned


class UTCDateTimeField(forms.DateTimeField):
    """A date-time typed without an offset is UTC, whatever the site's time zone."""

    widget = forms.DateTimeInput(
        attrs={"type": "datetime-local", "step": 3600}, format="%Y-%m-%dT%H:%M"
    )

    def to_python(self, value: Any) -> datetime | None:
        with timezone.override(UTC):
            result = super().to_python(value)
        return result.astimezone(UTC) if result is not None else None

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None)
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


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def preset_label(preset: Preset) -> str:
    if preset.start is None or preset.end is None:
        return f"{preset.label} — {preset.problem}"
    text = f"{preset.label}: {_utc(preset.start)} → {_utc(preset.end)} UTC"
    return f"{text} — {preset.problem}" if preset.problem else text


class RereportForm(forms.Form):
    """The period of a re-report: a preset or a custom [from, to) in UTC on window boundaries."""

    preset = forms.ChoiceField(label="Period")
    start = UTCDateTimeField(label="From (UTC)", required=False)
    end = UTCDateTimeField(label="To (UTC, not included)", required=False)

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
        window = coarsest_window(self.meters)
        closed = windows.floor(self.now, window)  # the still-open window starts here
        if end > closed + windows.WINDOW_LENGTH[Window(window)]:
            raise ValidationError(
                f"The period ends in the future ({_utc(end)} UTC): only closed windows can be "
                f"reported, so end at {_utc(closed)} UTC or earlier."
            )
        try:
            reporting.validate_period(start=start, end=end, meters=self.meters, now=self.now)
        except reporting.ReportInputError as exc:
            raise ValidationError(str(exc)) from None
        cleaned["period"] = (start, end)
        return cleaned
