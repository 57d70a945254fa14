"""Rooms, who may see them, and the messages in them."""
from django.conf import settings
from django.db import models
from django.db.models import Q

ROOM_NAME_MAX_LENGTH = 100
SYSTEM_PROMPT_MAX_LENGTH = 8000
MESSAGE_TEXT_MAX_LENGTH = 32000
ROOM_STREAM_KEY_PREFIX = "room:"


class Room(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="owned_rooms")
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="shared_rooms", blank=True
    )
    name = models.CharField(max_length=ROOM_NAME_MAX_LENGTH)
    model = models.CharField(max_length=200, blank=True, help_text="Blank: the default model.")
    system_prompt = models.TextField(blank=True, max_length=SYSTEM_PROMPT_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.name

    @property
    def stream_key(self) -> str:
        """The key of this room's streams in the streaming app, which knows nothing of rooms."""
        return f"{ROOM_STREAM_KEY_PREFIX}{self.pk}"


class Membership(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="chatrooms_membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.room}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        ABORTED = "aborted"
        ERROR = "error"
        INTERRUPTED = "interrupted"
        # Internal: the assistant message whose stream is live. Clients see it through the
        # stream, never in `messages`, until it ends with one of the statuses above.
        STREAMING = "streaming"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    content = models.TextField(blank=True)
    parts = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    stream = models.ForeignKey(
        "streaming.Stream", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["room", "id"], name="chatrooms_message_room_id")]
        constraints = [
            models.UniqueConstraint(
                fields=["room"], condition=Q(status="streaming"), name="chatrooms_one_streaming_message_per_room"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} in {self.room_id}: {self.content[:40]}"


class PendingToolCall(models.Model):
    """A tool call that waits for a person: an approval, or a client-side tool's result. Any worker
    can take the answer; the one running the stream hears of it on the channel layer."""

    class Kind(models.TextChoices):
        APPROVAL = "approval"
        CLIENT = "client"

    class State(models.TextChoices):
        WAITING = "waiting"
        ANSWERED = "answered"
        EXPIRED = "expired"  # TOOL_WAIT_SECONDS passed first

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    # Answerable only while its stream is live; the stream's deletion takes it along.
    stream = models.ForeignKey("streaming.Stream", on_delete=models.CASCADE, related_name="+")
    tool_call_id = models.CharField(max_length=200)
    tool_name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.WAITING)
    answer = models.JSONField(null=True, blank=True)
    answered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tool_call_id", "state"], name="chatrooms_pending_call_lookup")]
        constraints = [
            models.UniqueConstraint(fields=["stream", "tool_call_id"], name="chatrooms_pending_call_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.tool_name} ({self.state})"
