from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from billing.webhooks import stripe_webhook

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("stripe/webhook/", stripe_webhook, name="stripe_webhook"),
]
