-- tokenbroker schema, version 3: password and device grants.
-- username: the account of a password grant connection (its password is
-- sealed in code_verifier, which a password grant has no other use for).
-- device_interval: while a device authorization (RFC 8628) is pending, the
-- polling interval in microseconds; its device_code is sealed in
-- code_verifier and pending_until is its expiry. 0 otherwise.
ALTER TABLE connections ADD COLUMN username TEXT;
ALTER TABLE connections ADD COLUMN device_interval INTEGER NOT NULL DEFAULT 0;
