-- Risk rules, velocity and blocklists (risk-engine); request storage for commands, PSP webhooks
-- (psp-gateway). Earlier migrations are never edited: this one only adds.

-- risk-engine ---------------------------------------------------------------------------------
-- Which rule set decided: an analyst reading an old decision must be able to find the rules
-- that produced it.
ALTER TABLE risk.decisions ADD COLUMN rules_version text;

-- Rules as data, for deployments that prefer a table to a file (PAYSTREAM_RISK_RULES_FILE
-- unset). The newest row is in force; every instance polls and swaps it in without a restart.
-- Rows are never updated, so the history of rule changes stays readable.
CREATE TABLE risk.rule_sets (
    version    bigserial   PRIMARY KEY,
    rules      jsonb       NOT NULL,
    note       text,
    created_by text        NOT NULL DEFAULT current_user,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Blocked customers and payment methods. `merchant_id = '*'` blocks for every merchant (a '*' is
-- not a valid merchant id, so it cannot collide). The risk engine caches lookups in Redis.
CREATE TABLE risk.blocklist (
    kind        text        NOT NULL CHECK (kind IN ('customer', 'payment_method')),
    value       text        NOT NULL,
    merchant_id text        NOT NULL DEFAULT '*',
    reason      text        NOT NULL DEFAULT '',
    created_by  text        NOT NULL DEFAULT current_user,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value, merchant_id)
);

-- psp-gateway ---------------------------------------------------------------------------------
-- Attempts now cover captures, cancels and refunds too. A command's attempt is found by the
-- command's own id (capture/cancel command_id, refund_id), which also derives its PSP key. The
-- request itself is stored so that a webhook can turn an in-doubt attempt into an event without
-- the Kafka record at hand.
ALTER TABLE psp_gateway.attempts
    ADD COLUMN command_id    text,
    ADD COLUMN merchant_id   text,
    ADD COLUMN amount        bigint,
    ADD COLUMN currency      text,
    ADD COLUMN capture       boolean,
    ADD COLUMN psp_object_id text,
    ADD COLUMN error_code    text,
    ADD COLUMN error_message text,
    ADD CONSTRAINT attempts_operation CHECK (operation IN ('charge', 'capture', 'cancel', 'refund'));
CREATE UNIQUE INDEX attempts_command ON psp_gateway.attempts (operation, command_id)
    WHERE command_id IS NOT NULL;
CREATE INDEX attempts_charge ON psp_gateway.attempts (charge_id) WHERE charge_id IS NOT NULL;
CREATE INDEX attempts_in_doubt ON psp_gateway.attempts (updated_at)
    WHERE state IN ('pending', 'unknown');

-- Verified webhooks, by the PSP's event id: a replayed id is acknowledged and ignored.
CREATE TABLE psp_gateway.webhook_events (
    psp         text        NOT NULL,
    event_id    text        NOT NULL,
    event_type  text        NOT NULL,
    reference   text,
    charge_id   text,
    -- what the gateway did with it: resolved_charge, resolved_capture, declined_attempt, noted
    outcome     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (psp, event_id)
);
