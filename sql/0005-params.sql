-- tokenbroker schema, version 5: connection parameters and response metadata.
-- params: the values the connection supplies for its provider's
-- `param = NAME` lines, a JSON object of strings ({"tenant":"contoso"}).
-- metadata: what the provider returned besides the token (`metadata NAME =`
-- lines: a token response pointer or a callback query parameter), a JSON
-- object of strings. Neither is ever a secret. NULL: none.
ALTER TABLE connections ADD COLUMN params TEXT;
ALTER TABLE connections ADD COLUMN metadata TEXT;
