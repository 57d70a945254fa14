"""manage.py cleanup_streams: delete the stored chunks of streams that finished long ago."""
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from streaming.lifecycle import chunks_cleanup


class Command(BaseCommand):
    help = ("Delete the stored chunks of streams that finished more than STREAM_RETENTION_HOURS ago, in "
            "batches. The messages themselves are kept, and live streams are never touched, so it is safe "
            "to run at any time (for example daily from cron). Prints how many chunks went.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than-hours", type=float, default=None, metavar="HOURS",
                            help=f"delete the chunks of streams finished more than HOURS ago (0 or more; "
                                 f"default STREAM_RETENTION_HOURS, now {settings.STREAM_RETENTION_HOURS})")
        parser.add_argument("--batch-size", type=int, default=5000, metavar="N",
                            help="chunks deleted per statement and transaction (default 5000)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args: object, older_than_hours: float | None, batch_size: int, dry_run: bool,
               **options: object) -> None:
        hours = settings.STREAM_RETENTION_HOURS if older_than_hours is None else older_than_hours
        if hours < 0:
            raise CommandError("--older-than-hours must be 0 or more.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = timezone.now() - timedelta(hours=hours)
        count = chunks_cleanup(older_than=cutoff, batch_size=batch_size, dry_run=dry_run)
        verb = "would be deleted (dry run: nothing was)" if dry_run else "deleted"
        self.stdout.write(f"{count} chunk(s) of streams finished before {cutoff:%Y-%m-%d %H:%M} UTC {verb}")
