"""django-q2's admin, read-only for everyone but superusers.

django-q2 registers admins for its schedules, successful and failed tasks and (with the ORM
broker) its queue, with a "Resubmit" action open to anyone who may view a task, and schedule
forms that name any dotted function for the worker to call. Resubmitting a finished report task
would report a past period again with no requester and no reason, past `billing.rereport_usage`.
So here they are registered again: a staff user who is not a superuser may look (with the view
permissions of the Finance groups) but not add, change, delete or run any action; posting one
anyway is a 403. Superusers keep django-q2's admin as it is (they hold every permission,
`billing.rereport_usage` included).
"""

from typing import Any

import django_q.admin as q_admin  # registers django-q2's admins first, so they can be replaced
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse
from django_q.models import Failure, OrmQ, Schedule, Success

from billing.admin.generic import ModelAdmin


class SuperuserChangesOnly(ModelAdmin):
    """Only a superuser adds, changes, deletes or runs an action; others may only view."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser) and super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        if not request.user.is_superuser:
            return {}
        # Django 6.1 passes where the actions are shown; 5.2 takes no such argument.
        where = {} if action_location is None else {"action_location": action_location}
        return dict(super().get_actions(request, **where))

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # Without actions Django would quietly show the list again: say no instead.
        if request.method == "POST" and "action" in request.POST and not request.user.is_superuser:
            raise PermissionDenied
        return super().changelist_view(request, extra_context)


class ScheduleAdmin(SuperuserChangesOnly, q_admin.ScheduleAdmin):  # type: ignore[misc]
    pass


class SuccessAdmin(SuperuserChangesOnly, q_admin.TaskAdmin):  # type: ignore[misc]
    pass


class FailureAdmin(SuperuserChangesOnly, q_admin.FailAdmin):  # type: ignore[misc]
    pass


class QueueAdmin(SuperuserChangesOnly, q_admin.QueueAdmin):  # type: ignore[misc]
    pass


def _replace(model: type[models.Model], admin_class: type[ModelAdmin]) -> None:
    if admin.site.is_registered(model):
        admin.site.unregister(model)
        admin.site.register(model, admin_class)


_replace(Schedule, ScheduleAdmin)
_replace(Success, SuccessAdmin)
_replace(Failure, FailureAdmin)
_replace(OrmQ, QueueAdmin)  # registered by django-q2 only with the ORM broker
