"""The two ready groups finance staff are put in: what each may see and do in the admin.

- Finance viewer: view every billing model and django-q2's task lists (so the report history and
  its CSV export too); changes nothing.
- Finance operator: the viewer's permissions, plus add and change on meters, customers, prices
  and subscriptions ("Sync to Stripe", "Cancel in Stripe", "Move to the current prices" need
  change) and re-reporting (`billing.rereport_usage`, which also starts reconciliations: they
  mark drifting windows to be sent again), and moving subjects between customers
  (`billing.move_subjects`, which re-reports the windows a move changes). No delete.

`ensure_roles` sets each group to exactly these permissions, however often it runs: after every
`migrate` (billing.signals) and from `manage.py ensure_roles`. Other combinations belong in
groups of their own: these two are reset to their definition.
"""

from dataclasses import dataclass, field

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.db import DEFAULT_DB_ALIAS, transaction

VIEWER = "Finance viewer"
OPERATOR = "Finance operator"

VIEWED_APPS = ("billing", "django_q")
EDITED_MODELS = ("meter", "customer", "customersubject", "pricemapping", "subscription")
REREPORT = ("billing", "rereport_usage")
MOVE_SUBJECTS = ("billing", "move_subjects")


@dataclass
class RoleChange:
    """What `ensure_roles` did to one group."""

    name: str
    created: bool = False
    added: list[str] = field(default_factory=list)  # "app_label.codename"
    removed: list[str] = field(default_factory=list)
    total: int = 0

    def __str__(self) -> str:
        if self.created:
            return f"{self.name}: created with {self.total} permission(s)."
        if not self.added and not self.removed:
            return f"{self.name}: up to date ({self.total} permission(s))."
        parts = []
        if self.added:
            parts.append(f"added {', '.join(self.added)}")
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        return f"{self.name}: {'; '.join(parts)} ({self.total} permission(s))."


def role_permissions() -> dict[str, set[tuple[str, str]]]:
    """Each group's permissions as (app_label, codename)."""
    viewer = {
        (model._meta.app_label, f"view_{model._meta.model_name}")
        for app_label in VIEWED_APPS
        for model in global_apps.get_app_config(app_label).get_models()
    }
    operator = viewer | {REREPORT, MOVE_SUBJECTS}
    operator |= {
        ("billing", f"{action}_{model}") for model in EDITED_MODELS for action in ("add", "change")
    }
    return {VIEWER: viewer, OPERATOR: operator}


def ensure_roles(*, using: str = DEFAULT_DB_ALIAS) -> list[RoleChange]:
    """Create or update the two groups so each has exactly its permissions; says what changed."""
    for app_label in VIEWED_APPS:
        # post_migrate may reach billing before auth created every app's permissions.
        create_permissions(global_apps.get_app_config(app_label), verbosity=0, using=using)
    changes = []
    with transaction.atomic(using=using):
        for name, wanted in role_permissions().items():
            changes.append(_ensure_group(name, wanted, using=using))
    return changes


def _ensure_group(name: str, wanted: set[tuple[str, str]], *, using: str) -> RoleChange:
    perms = {
        (p.content_type.app_label, p.codename): p
        for p in Permission.objects.using(using)
        .filter(content_type__app_label__in=VIEWED_APPS)
        .select_related("content_type")
    }
    missing = wanted - perms.keys()
    if missing:  # a model without its permissions: nothing to grant it with
        raise LookupError(f"Permissions missing for {name}: {sorted(missing)}")
    group, created = Group.objects.using(using).get_or_create(name=name)
    current = {
        (p.content_type.app_label, p.codename)
        for p in group.permissions.select_related("content_type")
    }
    group.permissions.set([perms[key] for key in sorted(wanted)])
    return RoleChange(
        name=name,
        created=created,
        added=[] if created else sorted(f"{a}.{c}" for a, c in wanted - current),
        removed=sorted(f"{a}.{c}" for a, c in current - wanted),
        total=len(wanted),
    )
