-- Clients' idempotency keys move into a namespace of their own (`client:`),
-- apart from the keys the platform derives for its own commands (the saga's
-- `saga:<order>:<step>`). The platform's keys are recorded with the key itself
-- as fingerprint; a client's with the SHA-256 of its request. Rows of clients
-- therefore move, including any that named a key of the platform's.
UPDATE idempotency_keys
   SET key = 'client:' || key
 WHERE request_fingerprint <> key;
