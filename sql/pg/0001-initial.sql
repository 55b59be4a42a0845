-- tokenbroker schema on PostgreSQL, version 1 (issue 10: several nodes on
-- one database). The columns of the SQLite schema (sql/0001..), with the
-- same meanings: times are microseconds since the epoch (UTC), 0 "none";
-- access_token, refresh_token and code_verifier hold AES-256-GCM sealed
-- values bound to the row's id and the column's name (daemon/crypt.h).
-- Beside them, what several nodes need:
--   version      bumped (from connections_version) by every write of the
--                row: a node that missed a notification catches up with
--                "WHERE version > the highest it has seen".
--   lease_node   the node that may refresh this connection, until
--   lease_until  (the database's clock, microseconds); lease_epoch counts
--   lease_epoch  takeovers, so a node whose lease was taken over cannot
--                commit what it fetched under the old one (fencing).
CREATE SEQUENCE connections_id;
CREATE SEQUENCE connections_version;

CREATE TABLE connections (
        id              BIGINT PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        provider        TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'active', 'needs_reauth')),
        requested_scope TEXT,
        scope           TEXT,
        identity        TEXT,
        token_type      TEXT,
        access_token    BYTEA,
        refresh_token   BYTEA,
        expires_at      BIGINT NOT NULL DEFAULT 0,
        obtained_at     BIGINT NOT NULL DEFAULT 0,
        state_hash      TEXT UNIQUE,
        code_verifier   BYTEA,
        pending_until   BIGINT NOT NULL DEFAULT 0,
        allow_users     TEXT NOT NULL DEFAULT '',
        allow_groups    TEXT NOT NULL DEFAULT '',
        last_error      TEXT,
        refreshes       BIGINT NOT NULL DEFAULT 0,
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        last_refresh_at BIGINT NOT NULL DEFAULT 0,
        username        TEXT,
        device_interval BIGINT NOT NULL DEFAULT 0,
        version         BIGINT NOT NULL DEFAULT nextval('connections_version'),
        lease_node      TEXT,
        lease_until     BIGINT NOT NULL DEFAULT 0,
        lease_epoch     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX connections_version_idx ON connections (version);

CREATE TABLE events (
        id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at              BIGINT NOT NULL,
        connection      TEXT,
        kind            TEXT NOT NULL,
        message         TEXT NOT NULL
);
CREATE INDEX events_connection ON events (connection, id);

CREATE TABLE key_check (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        value           BYTEA NOT NULL
);

-- One row a node: tokenctl status lists them; a node whose heartbeat is
-- older than the lease time is dead, and its leases go to the others.
CREATE TABLE nodes (
        name            TEXT PRIMARY KEY,
        version         TEXT NOT NULL,
        started_at      BIGINT NOT NULL,
        heartbeat_at    BIGINT NOT NULL
);
