-- tokenbroker schema on PostgreSQL, version 3: the refresh token's end
-- (as sql/0006-rt-end.sql on SQLite). rt_end: when the refresh token
-- stops working, realtime microseconds; 0 unknown. rt_warned: the rt_end
-- the refresh-token-expiring warning was given for; 0 none.
ALTER TABLE connections ADD COLUMN rt_end BIGINT NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN rt_warned BIGINT NOT NULL DEFAULT 0;
