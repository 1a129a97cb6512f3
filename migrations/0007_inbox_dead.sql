-- Inbox rows of dead-lettered records get their own status, so that a replay of the dead letter
-- to the group's retry topic runs the handler again while ordinary redeliveries stay skipped.

CREATE OR REPLACE FUNCTION public.paystream_messaging_tables(s text) RETURNS void AS $$
BEGIN
  EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', s);
  EXECUTE format($f$
    CREATE TABLE IF NOT EXISTS %I.inbox (
      event_id     uuid PRIMARY KEY,
      topic        text NOT NULL,
      partition    int NOT NULL,
      "offset"     bigint NOT NULL,
      status       text NOT NULL CHECK (status IN ('done', 'retrying', 'dead')),
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
  EXECUTE format('ALTER TABLE %I.inbox DROP CONSTRAINT IF EXISTS inbox_status_check', s);
  EXECUTE format($f$ALTER TABLE %I.inbox ADD CONSTRAINT inbox_status_check
                   CHECK (status IN ('done', 'retrying', 'dead'))$f$, s);
END
$$ LANGUAGE plpgsql;

SELECT public.paystream_messaging_tables(table_schema)
FROM information_schema.tables
WHERE table_name = 'inbox' AND table_type = 'BASE TABLE'
  AND table_schema NOT IN ('pg_catalog', 'information_schema');
