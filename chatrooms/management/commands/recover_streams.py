"""manage.py recover_streams: finish room streams whose worker stopped beating as `interrupted`."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatrooms.models import ROOM_STREAM_KEY_PREFIX
from chatrooms.recovery import streams_recover_stale
from streaming.lifecycle import streams_stale


class Command(BaseCommand):
    help = ("Finish live room streams with no heartbeat for STREAM_STALE_SECONDS: their stored chunks "
            "become the message, with status interrupted, and viewers get stream.done. Every worker "
            "does this by itself now and then; the command is for when none is running. Prints how many.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                            help=f"seconds without a heartbeat that make a stream stale, 0 or more "
                                 f"(default STREAM_STALE_SECONDS, now {settings.STREAM_STALE_SECONDS})")
        parser.add_argument("--dry-run", action="store_true", help="count the stale streams, change nothing")

    def handle(self, *args: object, stale_after: float | None, dry_run: bool, **options: object) -> None:
        if stale_after is not None and stale_after < 0:
            raise CommandError("--stale-after must be 0 or more.")
        if dry_run:
            count = len(streams_stale(stale_seconds=stale_after, key_prefix=ROOM_STREAM_KEY_PREFIX))
            self.stdout.write(f"{count} stale stream(s) would be finished as interrupted")
            return
        count = streams_recover_stale(stale_seconds=stale_after)
        self.stdout.write(f"{count} stale stream(s) finished as interrupted")
