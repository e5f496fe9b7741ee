-- An operator may also abandon a saga (`orders saga abandon`).
ALTER TABLE saga_actions DROP CONSTRAINT saga_actions_action_check;
ALTER TABLE saga_actions
    ADD CONSTRAINT saga_actions_action_check CHECK (action IN ('retried', 'abandoned'));
