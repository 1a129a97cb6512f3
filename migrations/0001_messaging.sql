-- One schema per owning service; each has its own inbox (consumed event ids) and outbox
-- (records waiting for the relay). See shared/messaging.

CREATE OR REPLACE FUNCTION public.paystream_messaging_tables(s text) RETURNS void AS $$
BEGIN
  EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', s);
  EXECUTE format($f$
    CREATE TABLE IF NOT EXISTS %I.inbox (
      event_id     uuid PRIMARY KEY,
      topic        text NOT NULL,
      partition    int NOT NULL,
      "offset"     bigint NOT NULL,
      status       text NOT NULL CHECK (status IN ('done', 'retrying')),
      processed_at timestamptz NOT NULL DEFAULT now()
    )$f$, s);
  EXECUTE format('CREATE INDEX IF NOT EXISTS inbox_processed_at ON %I.inbox (processed_at)', s);
  EXECUTE format($f$
    CREATE TABLE IF NOT EXISTS %I.outbox (
      id         bigserial PRIMARY KEY,
      topic      text NOT NULL,
      key        bytea,
      value      bytea NOT NULL,
      headers    jsonb NOT NULL DEFAULT '[]',
      created_at timestamptz NOT NULL DEFAULT now()
    )$f$, s);
END
$$ LANGUAGE plpgsql;

SELECT public.paystream_messaging_tables(s)
FROM unnest(ARRAY['ingress', 'risk', 'psp_gateway', 'order_store', 'account_store', 'validator']) AS s;
