"""Rooms, who may see them, and the messages in them."""
from django.conf import settings
from django.db import models
from django.db.models import Q

ROOM_NAME_MAX_LENGTH = 100
SYSTEM_PROMPT_MAX_LENGTH = 8000
MESSAGE_TEXT_MAX_LENGTH = 32000
FEEDBACK_COMMENT_MAX_LENGTH = 2000
# A room created with this name is given a title from its first exchange.
DEFAULT_ROOM_NAME = "New chat"
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
    # True while the room still has the name it was given by default: its first exchange then
    # gives it a title. Any rename by a person ends it.
    named_automatically = models.BooleanField(default=False)
    # Set by staff: a locked room is read-only; chat frames to it are refused with `forbidden`.
    locked_at = models.DateTimeField(null=True, blank=True)

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
    # Set by staff: a hidden message leaves every viewer's history and the model's context.
    hidden_at = models.DateTimeField(null=True, blank=True)
    hidden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

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
        EXPIRED = "expired"  # TOOL_WAIT_SECONDS passed first, or its stream ended

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


class RoomPreference(models.Model):
    """One user's own view of a room: pinned to the top of their sidebar, or archived out of it."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="preferences")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="room_preferences")
    pinned_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="chatrooms_room_preference_unique")]

    def __str__(self) -> str:
        return f"{self.user} on {self.room}"


class MessageFeedback(models.Model):
    """A user's thumbs up or down on an assistant message, with an optional comment; one each, changeable."""

    class Rating(models.IntegerChoices):
        UP = 1
        DOWN = -1

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="message_feedback")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=FEEDBACK_COMMENT_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="chatrooms_feedback_unique")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} by {self.user} on {self.message_id}"


class Attachment(models.Model):
    """A text file a user attached to a message: its text goes to the model with the message."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="attachments")
    # Null from upload until the message that carries it is sent.
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.CASCADE, related_name="attachments")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    filename = models.CharField(max_length=255)
    media_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.filename


class ApiToken(models.Model):
    """A personal token for the read-only JSON API; only a hash of it is kept."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AuditLogEntry(models.Model):
    """One moderation action: who did what to which object, and when. Written by services, never edited."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_username = models.CharField(max_length=150, help_text="Kept when the account is deleted.")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit log entries"

    def __str__(self) -> str:
        return f"{self.actor_username} {self.action} {self.object_type} {self.object_id}"
