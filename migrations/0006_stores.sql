-- Stores and validator, second step: outcomes of merchant commands (capture, cancel, refund),
-- events parked until the state they need exists, reconciliation bookkeeping, and the analysts'
-- `reporting` schema with its read-only `analyst` role.

-- order-store ---------------------------------------------------------------------------------
-- One row per refund applied to an order: what makes a refund idempotent per refund_id even when
-- it arrives again under another event id.
CREATE TABLE order_store.refunds (
    refund_id     text        PRIMARY KEY,
    payment_id    uuid        NOT NULL,
    amount        bigint      NOT NULL CHECK (amount > 0),
    currency      text        NOT NULL,
    psp           text        NOT NULL,
    psp_refund_id text        NOT NULL,
    event_id      uuid        NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON order_store.refunds (payment_id);

-- Events that arrived before the state they act on (a refund before its capture, a capture
-- before the authorisation). They are applied, in arrival order, after the next change of the
-- order; the history row is written when they are finally applied or refused.
CREATE TABLE order_store.parked_events (
    seq         bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    payment_id  uuid        NOT NULL,
    event_type  text        NOT NULL,
    data        jsonb       NOT NULL,
    occurred_at timestamptz NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text CHECK (resolution IN ('applied', 'refused'))
);
CREATE INDEX parked_events_waiting ON order_store.parked_events (payment_id, seq)
    WHERE resolved_at IS NULL;

-- Daily volume (reporting) and the validator's settlement window read orders by creation time.
CREATE INDEX orders_created_at ON order_store.orders (created_at);

-- account-store -------------------------------------------------------------------------------
-- Refunds whose capture transfer is not posted yet: posted right after that capture.
CREATE TABLE account_store.parked_refunds (
    seq         bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    payment_id  uuid        NOT NULL,
    refund_id   text        NOT NULL,
    data        jsonb       NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution  text CHECK (resolution IN ('posted', 'duplicate', 'refused')),
    note        text
);
CREATE INDEX parked_refunds_waiting ON account_store.parked_refunds (payment_id, seq)
    WHERE resolved_at IS NULL;

-- validator -----------------------------------------------------------------------------------
ALTER TABLE validator.payments
    ADD COLUMN amount_refunded bigint NOT NULL DEFAULT 0,
    ADD COLUMN refund_count    int    NOT NULL DEFAULT 0;

-- Refunds the events announced, once per refund_id.
CREATE TABLE validator.refunds (
    refund_id   text        PRIMARY KEY,
    payment_id  uuid        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    psp         text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX validator_refunds_payment ON validator.refunds (payment_id);

-- Where a discrepancy comes from ('payment_check' or 'reconciliation'), and for reconciliation
-- findings a stable fingerprint so that a problem that persists is reported once, not at every
-- run.
ALTER TABLE validator.discrepancies
    ADD COLUMN source      text NOT NULL DEFAULT 'payment_check',
    ADD COLUMN fingerprint text;
CREATE UNIQUE INDEX discrepancies_fingerprint ON validator.discrepancies (fingerprint)
    WHERE fingerprint IS NOT NULL;
CREATE INDEX discrepancies_detected_at ON validator.discrepancies (detected_at);

-- Reconciliation differences that may only be lag (a settlement line whose order the stores have
-- not caught up with yet): reported once they have lasted the grace period.
CREATE TABLE validator.reconcile_suspects (
    fingerprint text        PRIMARY KEY,
    kind        text        NOT NULL,
    payment_id  uuid,
    message     text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- One row per reconciliation run, for operators (and tests) to see that it runs and what it saw.
CREATE TABLE validator.reconciliations (
    id               bigserial   PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT now(),
    accounts         int         NOT NULL,
    settlement_lines int         NOT NULL,
    suspects         int         NOT NULL,
    reported         int         NOT NULL
);

-- reporting (analysts) ------------------------------------------------------------------------
-- Views only, owned by the migrating role (the owner of the service tables), so that they read
-- the base tables with the owner's rights while the analyst holds rights on the views alone.
-- Personal data the merchant sent (customer_id, description, metadata) is left out on purpose.
CREATE SCHEMA reporting;

CREATE VIEW reporting.orders AS
SELECT 'pay_' || o.payment_id::text AS payment_id,
       o.merchant_id,
       o.status,
       o.amount,
       o.currency,
       o.amount_captured,
       o.amount_refunded,
       o.capture,
       o.psp,
       o.decline_code,
       o.failure_reason,
       o.risk_score,
       o.version,
       o.created_at,
       o.updated_at
FROM order_store.orders o;

-- Balances read from the running totals, signed by each account's normal side: what the platform
-- owes (merchant payable, fees) is credit-normal, what a PSP owes the platform is debit-normal.
CREATE VIEW reporting.balances AS
SELECT a.account,
       CASE
           WHEN a.account LIKE 'merchant:%:payable' THEN 'merchant_payable'
           WHEN a.account LIKE 'psp:%:clearing' THEN 'psp_clearing'
           WHEN a.account = 'platform:fees' THEN 'platform_fees'
           ELSE 'other'
       END AS account_type,
       CASE
           WHEN a.account LIKE 'merchant:%' OR a.account LIKE 'psp:%'
               THEN split_part(a.account, ':', 2)
       END AS owner,
       a.currency,
       a.debits,
       a.credits,
       CASE
           WHEN a.account LIKE 'psp:%:clearing' THEN a.debits - a.credits
           ELSE a.credits - a.debits
       END AS balance,
       a.created_at
FROM account_store.accounts a;

-- Volume per UTC day (of the payment's creation), merchant and currency.
CREATE VIEW reporting.daily_volume AS
SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day,
       o.merchant_id,
       o.currency,
       count(*) AS payments,
       count(*) FILTER (WHERE o.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE o.status = 'declined') AS declined,
       count(*) FILTER (WHERE o.status = 'failed') AS failed,
       count(*) FILTER (WHERE o.status = 'canceled') AS canceled,
       count(*) FILTER (WHERE o.status IN ('processing', 'requires_capture')) AS open,
       COALESCE(sum(o.amount_captured), 0)::bigint AS captured_amount,
       COALESCE(sum(o.amount_refunded), 0)::bigint AS refunded_amount,
       COALESCE(sum(o.amount_captured - o.amount_refunded), 0)::bigint AS net_amount
FROM order_store.orders o
GROUP BY 1, 2, 3;

-- Roles are cluster-wide while this migration runs once per database (tests create many
-- databases, some at the same time): create the role only if missing, and treat losing the race
-- to a concurrent migration as success. The dev password is for local use; production sets its
-- own (ALTER ROLE analyst PASSWORD ...) or makes the role NOLOGIN and grants it to real users.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'analyst') THEN
        BEGIN
            CREATE ROLE analyst LOGIN PASSWORD 'analyst' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA reporting FROM PUBLIC;
GRANT USAGE ON SCHEMA reporting TO analyst;
GRANT SELECT ON reporting.orders, reporting.balances, reporting.daily_volume TO analyst;
-- Views added to the schema later by the same owner are readable without another grant.
ALTER DEFAULT PRIVILEGES IN SCHEMA reporting GRANT SELECT ON TABLES TO analyst;

-- What PUBLIC (so also the analyst) gets by default and must not: creating objects in public
-- (already off since Postgres 15), temporary tables, and running the migration helper.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION public.paystream_messaging_tables(text) FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO analyst', current_database());
END
$$;
