use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::metrics::MessagingMetrics;
use crate::outbox::{decode_headers, notify_channel};

/// Publishes `<schema>.outbox` rows to Kafka in id order, then deletes them.
///
/// One relay per schema is active at a time (a transaction-scoped advisory lock), so that records
/// leave in the order they were written even with several service instances. A crash after the
/// send and before the delete publishes the batch again; consumers drop the copies by event id.
pub struct OutboxRelay {
    pool: PgPool,
    schema: String,
    producer: FutureProducer,
    metrics: MessagingMetrics,
    batch_size: i64,
    poll_interval: Duration,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        schema: &str,
        producer: FutureProducer,
        metrics: MessagingMetrics,
    ) -> Self {
        Self {
            pool,
            schema: schema.to_owned(),
            producer,
            metrics,
            batch_size: 500,
            poll_interval: Duration::from_millis(250),
        }
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut listener = self.listen().await;
        let mut failures = 0u32;
        loop {
            match self.drain().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tracing::warn!(schema = %self.schema, error = format!("{e:#}"), retry_in_ms = pause.as_millis() as u64, "outbox relay failed; will retry");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.poll_interval) => {}
                r = notified => {
                    if r.is_err() {
                        listener = self.listen().await;
                    }
                }
            }
        }
        // A last drain so that a graceful stop leaves nothing behind in the outbox.
        if let Err(e) = self.drain().await {
            tracing::warn!(schema = %self.schema, error = format!("{e:#}"), "final outbox drain failed; the next relay publishes the rest");
        }
        self.producer
            .flush(Timeout::After(Duration::from_secs(10)))
            .context("flushing the producer")?;
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(&notify_channel(&self.schema)).await.ok()?;
        Some(listener)
    }

    /// Publishes until the outbox is empty or another relay holds the lock.
    pub async fn drain(&self) -> anyhow::Result<()> {
        loop {
            let published = self.publish_batch().await?;
            if published < self.batch_size as usize {
                return Ok(());
            }
        }
    }

    async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning relay transaction")?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(format!("{}.outbox", self.schema))
            .fetch_one(&mut *tx)
            .await
            .context("taking the relay lock")?;
        if !locked {
            return Ok(0);
        }
        let sql = format!(
            "SELECT id, topic, key, value, headers FROM {}.outbox ORDER BY id LIMIT $1",
            self.schema
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(self.batch_size)
            .fetch_all(&mut *tx)
            .await
            .context("reading the outbox")?;
        if rows.is_empty() {
            self.metrics
                .outbox_pending
                .with_label_values(&[self.schema.as_str()])
                .set(0);
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut sends = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            let topic: String = row.try_get("topic")?;
            let key: Option<Vec<u8>> = row.try_get("key")?;
            let value: Vec<u8> = row.try_get("value")?;
            let headers = decode_headers(&row.try_get::<serde_json::Value, _>("headers")?)?;
            ids.push(id);
            sends.push(self.send(topic, key, value, headers));
        }
        for result in join_all(sends).await {
            result?;
        }
        let sql = format!("DELETE FROM {}.outbox WHERE id = ANY($1)", self.schema);
        sqlx::query(AssertSqlSafe(sql))
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .context("deleting published outbox rows")?;
        tx.commit().await.context("committing relay transaction")?;
        Ok(rows.len())
    }

    async fn send(
        &self,
        topic: String,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, v) in &headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(v.as_slice()),
            });
        }
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&topic)
            .payload(&value)
            .headers(owned);
        if let Some(k) = key.as_ref() {
            record = record.key(k);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("publishing to {topic}: {e}"))?;
        self.metrics
            .produced
            .with_label_values(&[topic.as_str()])
            .inc();
        Ok(())
    }
}
