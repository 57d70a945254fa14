"""The upgrade policy of docs/deploy.md: migrations only add (tables, indexes, columns that old code can
ignore), so workers still running the previous release keep working while the new one migrates."""
from __future__ import annotations

from django.db import migrations
from django.db.migrations.loader import MigrationLoader
from django.db.models import NOT_PROVIDED

APPS = ("chatrooms", "streaming")
# Before the policy: 0003 added Room.named_automatically NOT NULL without a database default, so workers of
# the release before it could not create rooms until restarted (docs/deploy.md, "Upgrades").
BEFORE_THE_POLICY = {("chatrooms", "0003_sharing_feedback_attachments_tokens", "named_automatically")}
ADDITIVE = (migrations.CreateModel, migrations.AddIndex, migrations.AddConstraint)


def test_every_migration_is_one_old_workers_tolerate():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    refused = []
    for (app, name), migration in sorted(loader.disk_migrations.items()):
        if app not in APPS or migration.initial:  # a first install has no old workers
            continue
        for operation in migration.operations:
            if isinstance(operation, ADDITIVE):
                continue
            if isinstance(operation, migrations.AddField):
                field = operation.field
                # An old worker's INSERT leaves the column out: it must accept NULL or have a database default.
                if field.null or field.many_to_many or field.db_default is not NOT_PROVIDED:
                    continue
                if (app, name, operation.name) in BEFORE_THE_POLICY:
                    continue
            refused.append(f"{app}.{name}: {operation.describe()}")
    assert not refused, (
        "Old workers cannot run against these (docs/deploy.md, Upgrades): add nullable columns or ones with "
        "db_default; rename or remove over two releases, or document a stop-the-workers upgrade.\n" + "\n".join(refused))
