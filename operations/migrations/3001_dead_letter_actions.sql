-- Every action an operator took on a dead letter: who, when, what and why.
-- A dead letter is named by where it sits: its dead-letter topic, partition
-- and offset.
CREATE TABLE dead_letter_actions (
    id          bigserial PRIMARY KEY,
    dlq_topic   text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    action      text        NOT NULL CHECK (action IN ('replayed', 'discarded')),
    reason      text,
    actor       text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letter_actions_letter ON dead_letter_actions (dlq_topic, partition, "offset");
