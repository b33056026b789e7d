"""Apply schema.sql, then each migration in sample_app/migrations/ not applied yet, to
DATA_DIR/app.sqlite3 in one transaction; exit 1 on any SQL error.

Every run is recorded in ``migrate_runs`` (release, execution, the migrations this code
carries and the ones it applied), and every applied migration in ``schema_migrations``
(with the release and the time), so the data shows which release's code migrated it.

Usage: python -m sample_app.migrate [SCHEMA_FILE]   (default: sample_app/schema.sql and the migrations)
"""
from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

DEFAULT_SCHEMA = Path(__file__).with_name("schema.sql")
MIGRATIONS = Path(__file__).with_name("migrations")
BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, release_id TEXT NOT NULL, applied_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS migrate_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, release_id TEXT NOT NULL,
    execution TEXT NOT NULL, carried TEXT NOT NULL, applied TEXT NOT NULL, at REAL NOT NULL);
"""


def migrate(data_dir: Path, schema: Path, migrations: list[Path] | None = None) -> list[str]:
    """Apply ``schema`` and the ``migrations`` not applied yet; returns the names applied."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / "app.sqlite3", isolation_level=None)
    release, execution = os.environ.get("RELEASE_ID", ""), os.environ.get("CLOUD_RUN_EXECUTION", "")
    applied: list[str] = []
    try:
        conn.execute("BEGIN")
        try:
            # executescript would commit on its own; run statement by statement inside our transaction.
            for statement in _statements(schema.read_text()):
                conn.execute(statement)
            if migrations is not None:
                for statement in _statements(BOOKKEEPING):
                    conn.execute(statement)
                done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
                for path in migrations:
                    if path.name in done:
                        continue
                    for statement in _statements(path.read_text()):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (path.name, release, time.time()))
                    applied.append(path.name)
                conn.execute("INSERT INTO migrate_runs (release_id, execution, carried, applied, at) VALUES (?, ?, ?, ?, ?)",
                             (release, execution, ",".join(p.name for p in migrations), ",".join(applied), time.time()))
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return applied


def _statements(sql: str) -> list[str]:
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not current.strip().startswith("--"):
        statements.append(current.strip())
    return [s for s in statements if s]


def main(argv: list[str]) -> int:
    data_dir = os.environ.get("DATA_DIR")
    if not data_dir:
        print("migrate: DATA_DIR is not set", file=sys.stderr)
        return 2
    schema = Path(argv[0]) if argv else DEFAULT_SCHEMA
    migrations = None if argv else sorted(MIGRATIONS.glob("*.sql"))
    try:
        applied = migrate(Path(data_dir), schema, migrations)
    except (sqlite3.Error, OSError) as exc:
        print(f"migrate: {schema} failed: {exc}", file=sys.stderr)
        return 1
    print(f"migrate: applied {schema.name} to {Path(data_dir) / 'app.sqlite3'}")
    if migrations is not None:
        print(f"migrate: this code carries {len(migrations)} migration(s) "
              f"[{', '.join(p.name for p in migrations)}]; applied now: [{', '.join(applied)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
