-- tokenbroker schema on PostgreSQL, version 2: connection parameters and
-- response metadata (as sql/0005-params.sql on SQLite): JSON objects of
-- strings, never secrets; NULL: none.
ALTER TABLE connections ADD COLUMN params TEXT;
ALTER TABLE connections ADD COLUMN metadata TEXT;
