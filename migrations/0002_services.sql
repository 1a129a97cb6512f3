-- Tables of each service, in the schema it owns. Services never write another's schema.

-- api-ingress ---------------------------------------------------------------------------------
CREATE TABLE ingress.idempotency_keys (
    merchant_id     text        NOT NULL,
    key             text        NOT NULL,
    -- method and path the key was first used for: a key belongs to one operation
    operation       text        NOT NULL,
    request_hash    text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('in_flight', 'completed')),
    response_status int,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_expires_at ON ingress.idempotency_keys (expires_at);

-- Accepted payment requests: what the merchant sent, so the payment can be read back before the
-- order store has seen it.
CREATE TABLE ingress.payments (
    id             uuid        PRIMARY KEY,
    merchant_id    text        NOT NULL,
    amount         bigint      NOT NULL CHECK (amount > 0),
    currency       text        NOT NULL,
    customer_id    text        NOT NULL,
    payment_method text        NOT NULL,
    capture        text        NOT NULL,
    description    text,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_merchant ON ingress.payments (merchant_id, id DESC);

-- risk-engine ---------------------------------------------------------------------------------
CREATE TABLE risk.decisions (
    payment_id  uuid        PRIMARY KEY,
    merchant_id text        NOT NULL,
    decision    text        NOT NULL CHECK (decision IN ('approved', 'declined')),
    score       int         NOT NULL,
    reasons     jsonb       NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now()
);

-- psp-gateway ---------------------------------------------------------------------------------
-- Request storage: written and committed before each PSP call, so that after a crash the
-- gateway knows which PSP and which PSP idempotency key a payment may already be charged under.
CREATE TABLE psp_gateway.attempts (
    id          bigserial   PRIMARY KEY,
    payment_id  uuid        NOT NULL,
    psp         text        NOT NULL,
    psp_key     text        NOT NULL UNIQUE,
    attempt     int         NOT NULL,
    operation   text        NOT NULL DEFAULT 'charge',
    state       text        NOT NULL CHECK (state IN ('pending', 'succeeded', 'requires_capture', 'declined', 'failed', 'unknown')),
    charge_id   text,
    decline_code text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payment_id, operation, attempt)
);

-- order-store ---------------------------------------------------------------------------------
CREATE TABLE order_store.orders (
    payment_id      uuid        PRIMARY KEY,
    merchant_id     text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    currency        text        NOT NULL,
    customer_id     text,
    capture         text,
    description     text,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL CHECK (status IN ('processing', 'requires_capture', 'succeeded', 'declined', 'failed', 'canceled')),
    amount_captured bigint      NOT NULL DEFAULT 0,
    amount_refunded bigint      NOT NULL DEFAULT 0,
    psp             text,
    charge_id       text,
    decline_code    text,
    failure_reason  text,
    risk_score      int,
    risk_reasons    jsonb,
    version         int         NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_merchant ON order_store.orders (merchant_id, payment_id DESC);

-- Append-only: every event the store saw for a payment, applied or refused.
CREATE TABLE order_store.order_events (
    id          bigserial   PRIMARY KEY,
    payment_id  uuid        NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    event_type  text        NOT NULL,
    from_status text,
    to_status   text,
    applied     boolean     NOT NULL,
    note        text,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_payment ON order_store.order_events (payment_id, id);

-- account-store -------------------------------------------------------------------------------
CREATE TABLE account_store.accounts (
    account    text        NOT NULL,
    currency   text        NOT NULL,
    debits     bigint      NOT NULL DEFAULT 0 CHECK (debits >= 0),
    credits    bigint      NOT NULL DEFAULT 0 CHECK (credits >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, currency)
);

CREATE TABLE account_store.transfers (
    transfer_id text        PRIMARY KEY,
    payment_id  uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('capture', 'refund')),
    -- the step makes a transfer idempotent per (payment, step): 'capture', 'refund:<id>', ...
    step        text        NOT NULL,
    currency    text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payment_id, step)
);

CREATE TABLE account_store.entries (
    id          bigserial   PRIMARY KEY,
    transfer_id text        NOT NULL REFERENCES account_store.transfers (transfer_id),
    account     text        NOT NULL,
    currency    text        NOT NULL,
    side        text        NOT NULL CHECK (side IN ('debit', 'credit')),
    amount      bigint      NOT NULL CHECK (amount >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account, currency) REFERENCES account_store.accounts (account, currency)
);
CREATE INDEX entries_transfer ON account_store.entries (transfer_id);
CREATE INDEX entries_account ON account_store.entries (account, currency);

-- Ledger history is immutable: corrections are new transfers, never edits.
CREATE FUNCTION account_store.refuse_change() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'ledger % are immutable', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON account_store.entries
  FOR EACH ROW EXECUTE FUNCTION account_store.refuse_change();
CREATE TRIGGER transfers_immutable BEFORE UPDATE OR DELETE ON account_store.transfers
  FOR EACH ROW EXECUTE FUNCTION account_store.refuse_change();

-- validator -----------------------------------------------------------------------------------
-- What the validator learnt from the events of each payment, and when to check it.
CREATE TABLE validator.payments (
    payment_id      uuid        PRIMARY KEY,
    merchant_id     text        NOT NULL,
    amount          bigint,
    currency        text,
    expected_status text        NOT NULL DEFAULT 'processing',
    psp             text,
    charge_id       text,
    amount_captured bigint      NOT NULL DEFAULT 0,
    posted_capture  bigint      NOT NULL DEFAULT 0,
    settled_at      timestamptz,
    check_after     timestamptz,
    checked_at      timestamptz,
    result          text CHECK (result IN ('ok', 'discrepancy')),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX validator_due ON validator.payments (check_after) WHERE checked_at IS NULL;

CREATE TABLE validator.discrepancies (
    id          bigserial   PRIMARY KEY,
    payment_id  uuid,
    kind        text        NOT NULL,
    message     text        NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX discrepancies_payment ON validator.discrepancies (payment_id);
