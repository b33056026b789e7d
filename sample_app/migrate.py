"""Apply schema.sql to DATA_DIR/app.sqlite3 in one transaction; exit 1 on any SQL error.

Usage: python -m sample_app.migrate [SCHEMA_FILE]   (default: sample_app/schema.sql)
"""
from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

DEFAULT_SCHEMA = Path(__file__).with_name("schema.sql")


def migrate(data_dir: Path, schema: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / "app.sqlite3", isolation_level=None)
    try:
        conn.execute("BEGIN")
        try:
            # executescript would commit on its own; run statement by statement inside our transaction.
            for statement in _statements(schema.read_text()):
                conn.execute(statement)
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


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
    try:
        migrate(Path(data_dir), schema)
    except (sqlite3.Error, OSError) as exc:
        print(f"migrate: {schema} failed: {exc}", file=sys.stderr)
        return 1
    print(f"migrate: applied {schema.name} to {Path(data_dir) / 'app.sqlite3'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
