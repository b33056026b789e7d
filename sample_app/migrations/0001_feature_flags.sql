-- Feature flags the web app reads. Added after v0.9: a release built from an older commit
-- does not carry this file, so whether a migrate job applied it shows which image ran.
CREATE TABLE IF NOT EXISTS feature_flags (
    name TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO feature_flags (name, enabled) VALUES ('release_notes_link', 1);
