-- tokenbroker schema, version 6: the refresh token's end.
-- rt_end: when the refresh token stops working, realtime microseconds
-- (refresh_token_expires_in_pointer, refresh_token_lifetime); 0 unknown.
-- rt_warned: the rt_end the refresh-token-expiring warning was given for
-- (once per end, so once per authorization); 0 none.
ALTER TABLE connections ADD COLUMN rt_end INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN rt_warned INTEGER NOT NULL DEFAULT 0;
