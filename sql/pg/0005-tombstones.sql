-- tokenbroker schema on PostgreSQL, version 5 (issue 10): deletes that
-- reach a node which missed their notification. A delete of a connection
-- writes its tombstone in the same statement, with the next
-- connections_version: a node catching up "WHERE version > the highest it
-- has seen" reads the tombstones above it too and forgets those
-- connections. Tombstones older than a day are pruned (deleted_at, the
-- database's clock, microseconds); deleted_connections_pruned holds the
-- highest version pruned so far: a node that has seen less than that
-- compares its names with the table instead.
-- (Connection ids come from connections_id in blocks, reserved under an
-- advisory lock by daemon/store-pg.c: nothing to change in the schema.)
CREATE TABLE deleted_connections (
        id              BIGINT PRIMARY KEY,
        name            TEXT NOT NULL,
        version         BIGINT NOT NULL,
        deleted_at      BIGINT NOT NULL
);
CREATE INDEX deleted_connections_version_idx ON deleted_connections (version);

CREATE TABLE deleted_connections_pruned (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        version         BIGINT NOT NULL
);
INSERT INTO deleted_connections_pruned (id, version) VALUES (1, 0);
