"""Django's admin app, with project.auth.MeterbridgeAdminSite as its default site (admin.site)."""

from django.contrib.admin.apps import AdminConfig


class MeterbridgeAdminConfig(AdminConfig):
    default_site = "project.auth.MeterbridgeAdminSite"
