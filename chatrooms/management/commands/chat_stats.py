"""manage.py chat_stats: rooms, messages, streams, token usage and active users, for people or scripts."""
import json
from dataclasses import asdict

from django.core.management.base import BaseCommand, CommandParser

from chatrooms.selectors import ChatStats, chat_stats


class Command(BaseCommand):
    help = ("Print counts: rooms; messages by role and status; streams by status; the tokens that answers "
            "reported (their data-usage parts), in all and by model; active users (who wrote a message "
            "in the last 24 hours and in the last 7 days). --json prints one JSON object instead.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object (for scripts)")

    def handle(self, *args: object, as_json: bool, **options: object) -> None:
        stats = chat_stats()
        if as_json:
            self.stdout.write(_json_text(stats))
            return
        for line in _lines(stats):
            self.stdout.write(line)


def _json_text(stats: ChatStats) -> str:
    as_dict = asdict(stats)
    as_dict["active_users"] = {"day": as_dict.pop("active_users_day"), "week": as_dict.pop("active_users_week")}
    return json.dumps(as_dict, indent=2, sort_keys=True)


def _lines(stats: ChatStats) -> list[str]:
    total_messages = sum(sum(by_status.values()) for by_status in stats.messages.values())
    lines = [f"Rooms: {stats.rooms}", f"Messages: {total_messages}"]
    for role, by_status in sorted(stats.messages.items()):
        detail = ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
        lines.append(f"  {role}: {sum(by_status.values())} ({detail})")
    lines.append(f"Streams: {sum(stats.streams.values())}")
    lines.extend(f"  {status}: {count}" for status, count in sorted(stats.streams.items()))
    usage = stats.usage
    lines.append(f"Tokens: {usage.total_tokens} ({usage.input_tokens} in, {usage.output_tokens} out) "
                 f"over {usage.answers} answer(s)")
    for model, by_model in stats.usage_by_model.items():
        lines.append(f"  {model}: {by_model.total_tokens} ({by_model.input_tokens} in, "
                     f"{by_model.output_tokens} out) over {by_model.answers} answer(s)")
    lines.append(f"Active users: {stats.active_users_day} in the last 24 hours, "
                 f"{stats.active_users_week} in the last 7 days")
    return lines
