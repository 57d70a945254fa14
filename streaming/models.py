"""A stream of chunks that outlives its socket: the Stream row and its stored, gapless chunks."""
import uuid

from django.db import models
from django.db.models import Q


class Stream(models.Model):
    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        ABORTED = "aborted"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key = models.CharField(max_length=200, help_text="What the stream belongs to, e.g. room:42.")
    request_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STREAMING)
    created_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by a cancel from any worker; the running worker sees it at its next flush even when
    # the cancel message on the channel layer is lost.
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key"], condition=Q(status="streaming"), name="streaming_one_live_stream_per_key"
            ),
        ]
        indexes = [
            models.Index(fields=["key", "request_id"], name="streaming_key_request"),
            models.Index(fields=["status", "heartbeat_at"], name="streaming_status_heartbeat"),
            models.Index(fields=["status", "finished_at"], name="streaming_status_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.request_id} ({self.status})"


class StreamChunk(models.Model):
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    body = models.TextField(help_text="The chunk as JSON text, exactly as it was sent.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream", "index"], name="streaming_chunk_unique_index"),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}#{self.index}"
