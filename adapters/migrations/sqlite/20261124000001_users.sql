-- The users table (SQLite). The uuid is stored as 16 bytes; ids are never
-- reused (AUTOINCREMENT), so a cached id mapping can only ever point at its
-- own user or at nothing.
CREATE TABLE users (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid       BLOB    NOT NULL UNIQUE,
    first_name TEXT    NOT NULL,
    last_name  TEXT    NOT NULL,
    email      TEXT    NOT NULL UNIQUE,
    version    INTEGER NOT NULL DEFAULT 1,
    created_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);
