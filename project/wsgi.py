import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()

from billing.checks import ensure_production_settings  # noqa: E402 (needs the apps loaded)

ensure_production_settings()
