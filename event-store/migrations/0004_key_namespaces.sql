-- Clients' idempotency keys move into a namespace of their own (`client:`),
-- apart from the keys the platform derives for its own commands (the saga's
-- `saga:<order>:<step>`). The platform's keys are recorded with the key itself
-- as fingerprint; a client's with the SHA-256 of its request. Rows of clients
-- therefore move, including any that named a key of the platform's.
--
-- In two steps, since the key is checked row by row: a client's `k` must not
-- meet a client's `client:k` (which becomes `client:client:k`) on the way.
-- Keys are visible ASCII, so no key starts with the control character used
-- in between.
UPDATE idempotency_keys
   SET key = chr(1) || key
 WHERE request_fingerprint <> key;
UPDATE idempotency_keys
   SET key = 'client:' || substr(key, 2)
 WHERE starts_with(key, chr(1));
