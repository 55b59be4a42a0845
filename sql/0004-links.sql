-- tokenbroker schema, version 4: re-authorization links (daemon/links.c).
-- A link is PUBLIC_URL/oauth/start/TOKEN; only SHA-256(TOKEN), as hex, is
-- kept. connection, provider and scope: what the click authorizes
-- (creates: the connection did not exist when the link was made, the
-- click may create it). created_by: the uid that asked (-1: the broker,
-- on needs_reauth), created_by_name its login name as tokenctl said it.
-- Times are microseconds since the epoch; used_at and revoked_at 0 while
-- not. Rows are deleted a day after they expire.
CREATE TABLE links (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        connection TEXT NOT NULL,
        provider TEXT NOT NULL,
        scope TEXT,
        creates INTEGER NOT NULL DEFAULT 0,
        created_by INTEGER NOT NULL,
        created_by_name TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER NOT NULL DEFAULT 0,
        revoked_at INTEGER NOT NULL DEFAULT 0
);
