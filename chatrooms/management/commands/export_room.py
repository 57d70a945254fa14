"""manage.py export_room: one room as Markdown (a reading copy) or JSON (what import reads)."""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from chatrooms.exports import export_json_text, export_markdown
from chatrooms.selectors import RoomNotFound, room_export_for_operator


class Command(BaseCommand):
    help = ("Export one room, whoever owns it: every finished message with its parts and attachments. "
            "--format json writes the file that a user can import as a new room; md a reading copy. "
            "Writes to standard output, or to --output FILE (then it prints how many messages it wrote).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room_id", type=int, metavar="ROOM_ID", help="the room's id (as in /rooms/ROOM_ID/)")
        parser.add_argument("--format", choices=["md", "json"], default="json", dest="output_format",
                            help="md: Markdown to read; json: the export document (default)")
        parser.add_argument("--output", "-o", default=None, metavar="FILE",
                            help="write to FILE instead of standard output (replaced if it exists)")

    def handle(self, *args: object, room_id: int, output_format: str, output: str | None, **options: object) -> None:
        try:
            document = room_export_for_operator(room_id=room_id)
        except RoomNotFound:
            raise CommandError(f"No room has the id {room_id}.") from None
        text = export_markdown(document) if output_format == "md" else export_json_text(document)
        if not text.endswith("\n"):
            text += "\n"
        count = len(document["messages"])
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as error:
            raise CommandError(f"Cannot write {output}: {error.strerror or error}.") from None
        self.stdout.write(f"Room {room_id} ({count} message(s)) written to {output} as {output_format}")
