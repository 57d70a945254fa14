"""App config for rooms, messages and the assistant."""
from django.apps import AppConfig


class ChatroomsConfig(AppConfig):
    name = "chatrooms"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import session_guard  # noqa: F401  (connects the logout signal that closes sockets)
