-- tokenbroker schema on PostgreSQL, version 4: re-authorization links
-- (daemon/links.c), as sql/0004-links.sql on SQLite: the same columns with
-- the same meaning. Only SHA-256(TOKEN), as hex, is kept. Times are
-- realtime microseconds; used_at and revoked_at 0 while not. Ids come
-- from links_id (each node reserves a few ahead, so two nodes never give
-- one id twice). Every node reads the table when it needs a link it does
-- not hold, and the click claims a link with one conditional UPDATE:
-- of two nodes clicked at once, one gets the row.
CREATE SEQUENCE links_id;
CREATE TABLE links (
        id BIGINT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        connection TEXT NOT NULL,
        provider TEXT NOT NULL,
        scope TEXT,
        creates BIGINT NOT NULL DEFAULT 0,
        created_by BIGINT NOT NULL,
        created_by_name TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT NOT NULL DEFAULT 0,
        revoked_at BIGINT NOT NULL DEFAULT 0
);
-- A callback that lands on a node which has not heard of its pending
-- authorization yet finds it by its state's hash (daemon/callback.c).
CREATE INDEX connections_state_hash_idx ON connections (state_hash) WHERE state_hash IS NOT NULL;
