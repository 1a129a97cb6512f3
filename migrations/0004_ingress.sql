-- api-ingress: merchant commands (capture, cancel) and refunds, with what the PSP made of them.
-- Written under a row lock of the payment's ingress.payments row, so that concurrent requests on
-- one payment see each other's reservations.

-- Captures and cancels sent on payments.commands. At most one is pending per payment: a second
-- one waits for the outcome of the first (409 payment_command_in_progress).
CREATE TABLE ingress.commands (
    id           uuid        PRIMARY KEY,          -- cmd_<uuid>, the command_id of the event
    payment_id   uuid        NOT NULL,
    merchant_id  text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('capture', 'cancel')),
    amount       bigint      CHECK (amount > 0),   -- capture only; NULL = all that was authorised
    status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX commands_pending ON ingress.commands (payment_id) WHERE status = 'pending';

-- Refunds: each one reserves its amount from the moment it is accepted. Pending and succeeded
-- refunds count against what was captured; a failed one (payment.command_failed) releases it.
CREATE TABLE ingress.refunds (
    id             uuid        PRIMARY KEY,        -- re_<uuid>, the refund_id of the event
    payment_id     uuid        NOT NULL,
    merchant_id    text        NOT NULL,
    amount         bigint      NOT NULL CHECK (amount > 0),
    currency       text        NOT NULL,
    status         text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    psp_refund_id  text,
    failure_code   text,
    failure_message text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON ingress.refunds (payment_id, id);
