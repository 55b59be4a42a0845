-- tokenbroker schema, version 2: encryption at rest.
-- From this version on, connections.access_token, refresh_token and
-- code_verifier hold AES-256-GCM sealed values (daemon/crypt.h), bound to
-- the row's id and the column's name.
-- The one row of key_check is a known constant sealed under the key: a
-- broker started with another key fails to open it and refuses to start
-- before reading any token. The row is written by the store in the same
-- transaction that seals the plain values a version 1 file holds, so "no
-- row" means "nothing is sealed yet". A version 1 binary refuses this file
-- (newer schema) instead of handing out sealed bytes as tokens.
CREATE TABLE key_check (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        value           BLOB NOT NULL
);
