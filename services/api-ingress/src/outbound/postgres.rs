use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::{IdempotencyKey, MerchantId, PaymentId, PaymentRequested, PaymentStatus};
use paystream_messaging::OutboxRecord;
use paystream_messaging::outbox;
use sqlx::{PgPool, Row};

use crate::DB_SCHEMA;
use crate::domain::payment::PaymentView;
use crate::domain::ports::{Accepted, PaymentStore, StoreError};

const CREATE_OPERATION: &str = "POST /v1/payments";

pub struct PgPaymentStore {
    pool: PgPool,
}

impl PgPaymentStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl PaymentStore for PgPaymentStore {
    async fn create_payment(
        &self,
        key: &IdempotencyKey,
        request_hash: &str,
        payment_id: PaymentId,
        request: &PaymentRequested,
        traceparent: &str,
    ) -> Result<Accepted, StoreError> {
        let merchant = request.merchant_id.as_str();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning the request transaction")?;
        // An expired key is forgotten here rather than by a purge job only, so its reuse after
        // 24 h behaves as a new key even if the purge has not run yet.
        sqlx::query(
            "DELETE FROM ingress.idempotency_keys
             WHERE merchant_id = $1 AND key = $2 AND expires_at < now()",
        )
        .bind(merchant)
        .bind(key.as_str())
        .execute(&mut *tx)
        .await
        .context("expiring an old idempotency key")?;
        // A concurrent request with the same key blocks here until the first one commits, then
        // sees its row: that is what makes twelve simultaneous retries create one payment.
        let inserted = sqlx::query(
            "INSERT INTO ingress.idempotency_keys (merchant_id, key, operation, request_hash, state)
             VALUES ($1, $2, $3, $4, 'in_flight') ON CONFLICT DO NOTHING",
        )
        .bind(merchant)
        .bind(key.as_str())
        .bind(CREATE_OPERATION)
        .bind(request_hash)
        .execute(&mut *tx)
        .await
        .context("claiming the idempotency key")?
        .rows_affected()
            == 1;
        if !inserted {
            let row = sqlx::query(
                "SELECT operation, request_hash, state, response_status, response_body
                 FROM ingress.idempotency_keys WHERE merchant_id = $1 AND key = $2",
            )
            .bind(merchant)
            .bind(key.as_str())
            .fetch_one(&mut *tx)
            .await
            .context("reading the idempotency key")?;
            let operation: String = row.try_get("operation").context("operation")?;
            let hash: String = row.try_get("request_hash").context("request_hash")?;
            let state: String = row.try_get("state").context("state")?;
            if operation != CREATE_OPERATION || hash != request_hash {
                return Err(StoreError::KeyReused);
            }
            if state != "completed" {
                return Err(StoreError::KeyInFlight);
            }
            let status: i32 = row.try_get("response_status").context("response_status")?;
            let body: serde_json::Value = row.try_get("response_body").context("response_body")?;
            return Ok(Accepted::Replayed {
                status: u16::try_from(status).unwrap_or(500),
                body,
            });
        }
        let created = chrono::Utc::now().timestamp();
        sqlx::query(
            "INSERT INTO ingress.payments
               (id, merchant_id, amount, currency, customer_id, payment_method, capture, description, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(payment_id.as_uuid())
        .bind(merchant)
        .bind(request.amount.minor())
        .bind(request.currency.as_str())
        .bind(request.customer_id.as_str())
        .bind(request.payment_method.as_str())
        .bind(serde_json::to_value(request.capture).context("capture")?.as_str().unwrap_or("automatic"))
        .bind(request.description.as_deref())
        .bind(serde_json::to_value(&request.metadata).context("metadata")?)
        .execute(&mut *tx)
        .await
        .context("storing the accepted payment")?;
        let record = OutboxRecord::event(
            payment_id,
            request.clone(),
            traceparent,
            &payment_id.to_string(),
        )?;
        outbox::enqueue(&mut tx, DB_SCHEMA, &[record]).await?;
        let view = PaymentView::accepted(payment_id, request, created);
        sqlx::query(
            "UPDATE ingress.idempotency_keys
             SET state = 'completed', response_status = 202, response_body = $3
             WHERE merchant_id = $1 AND key = $2",
        )
        .bind(merchant)
        .bind(key.as_str())
        .bind(serde_json::to_value(&view).context("encoding the response")?)
        .execute(&mut *tx)
        .await
        .context("saving the idempotent response")?;
        tx.commit().await.context("committing the request")?;
        Ok(Accepted::Created(Box::new(view)))
    }

    async fn find_payment(
        &self,
        merchant: Option<&MerchantId>,
        id: PaymentId,
    ) -> Result<Option<(PaymentView, bool)>, anyhow::Error> {
        let row = sqlx::query(
            "SELECT merchant_id, amount, currency, status, capture, customer_id, description, metadata,
                    amount_captured, amount_refunded, decline_code, failure_reason, risk_score, psp,
                    extract(epoch from created_at)::bigint AS created, version
             FROM order_store.orders WHERE payment_id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .context("reading the order")?;
        let found = match row {
            Some(row) => Some((order_view(id, &row)?, true)),
            None => {
                let row = sqlx::query(
                    "SELECT merchant_id, amount, currency, 'processing' AS status, capture, customer_id,
                            description, metadata, 0::bigint AS amount_captured, 0::bigint AS amount_refunded,
                            NULL::text AS decline_code, NULL::text AS failure_reason, NULL::int AS risk_score,
                            NULL::text AS psp, extract(epoch from created_at)::bigint AS created, 0 AS version
                     FROM ingress.payments WHERE id = $1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .context("reading the accepted payment")?;
                match row {
                    Some(row) => Some((order_view(id, &row)?, false)),
                    None => None,
                }
            }
        };
        Ok(found.filter(|(v, _)| merchant.is_none_or(|m| &v.merchant_id == m)))
    }
}

fn order_view(id: PaymentId, row: &sqlx::postgres::PgRow) -> anyhow::Result<PaymentView> {
    let status: String = row.try_get("status")?;
    let merchant: String = row.try_get("merchant_id")?;
    let metadata: serde_json::Value = row.try_get("metadata")?;
    Ok(PaymentView {
        id,
        object: "payment".to_owned(),
        merchant_id: MerchantId::parse(&merchant)
            .map_err(|e| anyhow::anyhow!("stored merchant id: {e}"))?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        status: PaymentStatus::parse(&status).context("stored status")?,
        capture: row
            .try_get::<Option<String>, _>("capture")?
            .unwrap_or_else(|| "automatic".to_owned()),
        customer_id: row.try_get("customer_id")?,
        description: row.try_get("description")?,
        metadata: serde_json::from_value(metadata).unwrap_or_default(),
        amount_captured: row.try_get("amount_captured")?,
        amount_refunded: row.try_get("amount_refunded")?,
        decline_code: row.try_get("decline_code")?,
        failure_reason: row.try_get("failure_reason")?,
        risk_score: row.try_get("risk_score")?,
        psp: row.try_get("psp")?,
        created: row.try_get("created")?,
        version: row.try_get("version")?,
    })
}
