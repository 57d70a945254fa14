"""The app's pages."""
from django.urls import path

from . import views

app_name = "chatrooms"
urlpatterns = [
    path("", views.home, name="home"),
]
