"""Django's admin, form and paginator base classes, as the admin subclasses them.

django-stubs declares them generic (`ModelAdmin[Meter]`); at run time Django's classes cannot be
subscripted (django_stubs_ext.monkeypatch would allow it, but it is not a run-time dependency).
So the type checker sees the generic classes, and Python the plain ones.
"""

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.core import paginator
from django.forms import models as form_models

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
    BaseInlineFormSet = form_models.BaseInlineFormSet[Any, Any, Any]
    TabularInline = admin.TabularInline[Any, Any]
    ModelForm = forms.ModelForm[Any]
    Paginator = paginator.Paginator[Any]
else:
    ModelAdmin = admin.ModelAdmin
    BaseInlineFormSet = form_models.BaseInlineFormSet
    TabularInline = admin.TabularInline
    ModelForm = forms.ModelForm
    Paginator = paginator.Paginator

__all__ = ["BaseInlineFormSet", "ModelAdmin", "ModelForm", "Paginator", "TabularInline"]
