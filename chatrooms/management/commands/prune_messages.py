"""manage.py prune_messages: delete old messages, by age and/or by how many each room keeps."""
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from chatrooms.selectors import RoomNotFound
from chatrooms.services import PRUNE_BATCH_SIZE, messages_prune


class Command(BaseCommand):
    help = ("Delete finished messages older than --older-than DAYS and/or beyond the newest --keep N of "
            "each room (with both, only messages that are old AND beyond the newest N go: --keep protects "
            "them). A live answer's placeholder is never deleted nor counted. People viewing a room see "
            "the messages go (message.removed). Prints how many messages in how many rooms.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                            help="delete messages created more than DAYS days ago (0 or more)")
        parser.add_argument("--keep", type=int, default=None, metavar="N",
                            help="keep the newest N finished messages of every room (0 or more)")
        parser.add_argument("--room", type=int, default=None, metavar="ROOM_ID",
                            help="prune only this room (default: every room)")
        parser.add_argument("--batch-size", type=int, default=PRUNE_BATCH_SIZE, metavar="N",
                            help=f"messages deleted per statement (default {PRUNE_BATCH_SIZE})")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args: object, older_than: float | None, keep: int | None, room: int | None,
               batch_size: int, dry_run: bool, **options: object) -> None:
        if older_than is None and keep is None:
            raise CommandError("Give --older-than DAYS, --keep N or both.")
        if older_than is not None and older_than < 0:
            raise CommandError("--older-than must be 0 or more days.")
        if keep is not None and keep < 0:
            raise CommandError("--keep must be 0 or more.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = timezone.now() - timedelta(days=older_than) if older_than is not None else None
        try:
            result = messages_prune(older_than=cutoff, keep=keep, room_id=room, dry_run=dry_run,
                                    batch_size=batch_size)
        except RoomNotFound:
            raise CommandError(f"No room has the id {room}.") from None
        rules = []
        if cutoff is not None:
            rules.append(f"created before {cutoff:%Y-%m-%d %H:%M} UTC")
        if keep is not None:
            rules.append(f"beyond the newest {keep} of their room")
        verb = "would be deleted (dry run: nothing was)" if dry_run else "deleted"
        self.stdout.write(f"{result.messages} message(s) in {result.rooms} room(s) {verb}: "
                          f"{' and '.join(rules)}")
