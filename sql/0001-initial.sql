-- tokenbroker schema, version 1.
-- Times are microseconds since the epoch (UTC); 0 means "none".
CREATE TABLE connections (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        provider        TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'active', 'needs_reauth')),
        requested_scope TEXT,
        scope           TEXT,
        identity        TEXT,
        token_type      TEXT,
        access_token    BLOB,
        refresh_token   BLOB,
        expires_at      INTEGER NOT NULL DEFAULT 0,
        obtained_at     INTEGER NOT NULL DEFAULT 0,
        -- A pending authorization: SHA-256 of its state, its PKCE verifier.
        state_hash      TEXT UNIQUE,
        code_verifier   BLOB,
        pending_until   INTEGER NOT NULL DEFAULT 0,
        allow_users     TEXT NOT NULL DEFAULT '',
        allow_groups    TEXT NOT NULL DEFAULT '',
        last_error      TEXT,
        refreshes       INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        last_refresh_at INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE events (
        id              INTEGER PRIMARY KEY,
        at              INTEGER NOT NULL,
        connection      TEXT,
        kind            TEXT NOT NULL,
        message         TEXT NOT NULL
);
CREATE INDEX events_connection ON events (connection, id);
