"""The app's typed door to django-q2 (which ships no type information): queue a task, keep a
scheduled one in place."""

from typing import Any

from django_q.models import Schedule
from django_q.tasks import async_task


def enqueue(func: str, *args: Any, task_name: str, group: str) -> str:
    """Queue `func(*args)` for a worker; returns the task id."""
    return str(async_task(func, *args, task_name=task_name, group=group))


def ensure_schedule(*, name: str, func: str, cron: str, intended_date_kwarg: str) -> None:
    """Exactly one schedule named `name` calling `func` on `cron`, however often this runs.

    Schedule.name is not unique: strays left by older setups are removed, the first is kept."""
    defaults = {
        "func": func,
        "schedule_type": Schedule.CRON,
        "cron": cron,
        "repeats": -1,
        "intended_date_kwarg": intended_date_kwarg,
    }
    keep = Schedule.objects.filter(name=name).order_by("pk").first()
    if keep is not None:
        Schedule.objects.filter(name=name).exclude(pk=keep.pk).delete()
    schedule, _ = Schedule.objects.update_or_create(name=name, defaults=defaults)
    if schedule.next_run is None or schedule.cron != cron:
        schedule.next_run = schedule.calculate_next_run()
        schedule.save(update_fields=["next_run"])
