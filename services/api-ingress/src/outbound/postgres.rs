//! The ingress's Postgres: its own schema `ingress` (idempotency keys, accepted payments,
//! commands, refunds, outbox) and read-only reads of `order_store.orders` and
//! `account_store.accounts`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use paystream_domain::{
    CancelRequested, CaptureRequested, Currency, MerchantId, PaymentId, PaymentRequested,
    PaymentStatus, RefundRequested,
};
use paystream_messaging::OutboxRecord;
use paystream_messaging::outbox;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::DB_SCHEMA;
use crate::domain::commands::{
    self, CancelRequest, CaptureRequest, CommandKind, OrderSnapshot, RefundRequest, RefundTotals,
    RefundView,
};
use crate::domain::error::ApiError;
use crate::domain::listing::{Balance, BalanceAmount, ListQuery};
use crate::domain::payment::PaymentView;
use crate::domain::ports::{Answer, FoundPayment, Idempotent, PaymentStore, StoreError};

/// Payments the order store has not seen are listed from `ingress.payments` only if accepted
/// within this window: normally they reach the order store within a second, and bounding the
/// scan keeps listing a merchant with millions of payments cheap. Older ones (the pipeline
/// stalled for a day) are still found by id.
const ACCEPTED_LISTING_WINDOW: Duration = Duration::from_secs(24 * 3600);

pub struct PgPaymentStore {
    pool: PgPool,
    key_ttl: Duration,
    lock_wait: Duration,
}

impl PgPaymentStore {
    pub fn new(pool: PgPool, key_ttl: Duration, lock_wait: Duration) -> Self {
        Self {
            pool,
            key_ttl,
            lock_wait: lock_wait.max(Duration::from_millis(1)),
        }
    }

    /// Opens the request's transaction and claims its idempotency key. Returns the saved answer
    /// instead when the key was used before for the same request. A concurrent request with the
    /// same key blocks on the key's primary key until the first commits (and then replays its
    /// answer) or until `lock_wait` passes (409).
    ///
    /// With `known`, the answer is already decided (a create: its response does not depend on
    /// anything read here) and is saved with the claim, so committing is all that is left.
    async fn begin(
        &self,
        idem: &Idempotent<'_>,
        known: Option<(u16, &serde_json::Value)>,
    ) -> Result<(Transaction<'static, Postgres>, Option<Answer>), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning the request transaction")?;
        // One statement: `lock_timeout` is set (for this transaction) before the insert can wait
        // on a concurrent claim of the key, which is when the setting is read. An expired key is
        // taken over here rather than by the purge only, so that its reuse after its lifetime
        // behaves as a new key even if the purge has not run yet.
        let claimed = sqlx::query(
            "WITH settings AS (SELECT set_config('lock_timeout', $6, true) AS lock_timeout)
             INSERT INTO ingress.idempotency_keys
                 (merchant_id, key, operation, request_hash, state, response_status,
                  response_body, expires_at)
             SELECT $1, $2, $3, $4, CASE WHEN $7::int IS NULL THEN 'in_flight' ELSE 'completed' END,
                    $7, $8, now() + make_interval(secs => $5)
             FROM settings
             ON CONFLICT (merchant_id, key) DO UPDATE
                 SET operation = EXCLUDED.operation, request_hash = EXCLUDED.request_hash,
                     state = EXCLUDED.state, response_status = EXCLUDED.response_status,
                     response_body = EXCLUDED.response_body,
                     created_at = now(), expires_at = EXCLUDED.expires_at
                 WHERE ingress.idempotency_keys.expires_at < now()",
        )
        .bind(idem.merchant.as_str())
        .bind(idem.key.as_str())
        .bind(&idem.operation)
        .bind(&idem.request_hash)
        .bind(self.key_ttl.as_secs_f64())
        .bind(format!("{}ms", self.lock_wait.as_millis()))
        .bind(known.map(|(status, _)| i32::from(status)))
        .bind(known.map(|(_, body)| body))
        .execute(&mut *tx)
        .await
        .map_err(|e| lock_error(e, StoreError::KeyInFlight, "claiming the idempotency key"))?
        .rows_affected()
            == 1;
        if claimed {
            return Ok((tx, None));
        }
        let row = sqlx::query(
            "SELECT operation, request_hash, state, response_status, response_body
             FROM ingress.idempotency_keys WHERE merchant_id = $1 AND key = $2",
        )
        .bind(idem.merchant.as_str())
        .bind(idem.key.as_str())
        .fetch_one(&mut *tx)
        .await
        .context("reading the idempotency key")?;
        let operation: String = row.try_get("operation").context("operation")?;
        let hash: String = row.try_get("request_hash").context("request_hash")?;
        let state: String = row.try_get("state").context("state")?;
        if operation != idem.operation || hash != idem.request_hash {
            return Err(StoreError::KeyReused);
        }
        if state != "completed" {
            return Err(StoreError::KeyInFlight);
        }
        let status: Option<i32> = row.try_get("response_status").context("response_status")?;
        let body: Option<serde_json::Value> =
            row.try_get("response_body").context("response_body")?;
        let (Some(status), Some(body)) = (status, body) else {
            return Err(
                anyhow::anyhow!("a completed idempotency key has no saved response").into(),
            );
        };
        Ok((
            tx,
            Some(Answer {
                status: u16::try_from(status).unwrap_or(500),
                body,
                replayed: true,
            }),
        ))
    }

    /// Saves the answer with the key and commits: from here on the request is durable.
    async fn finish(
        &self,
        mut tx: Transaction<'static, Postgres>,
        idem: &Idempotent<'_>,
        status: u16,
        body: serde_json::Value,
    ) -> Result<Answer, StoreError> {
        sqlx::query(
            "UPDATE ingress.idempotency_keys
             SET state = 'completed', response_status = $3, response_body = $4
             WHERE merchant_id = $1 AND key = $2",
        )
        .bind(idem.merchant.as_str())
        .bind(idem.key.as_str())
        .bind(i32::from(status))
        .bind(&body)
        .execute(&mut *tx)
        .await
        .context("saving the idempotent response")?;
        tx.commit().await.context("committing the request")?;
        Ok(Answer {
            status,
            body,
            replayed: false,
        })
    }

    async fn refuse(
        &self,
        tx: Transaction<'static, Postgres>,
        idem: &Idempotent<'_>,
        error: ApiError,
    ) -> Result<Answer, StoreError> {
        let body = error.body();
        self.finish(tx, idem, error.status, body).await
    }
}

/// `lock_timeout` expiring is SQLSTATE 55P03.
fn lock_error(e: sqlx::Error, on_timeout: StoreError, what: &'static str) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("55P03")
    {
        return on_timeout;
    }
    StoreError::Unavailable(anyhow::Error::new(e).context(what))
}

fn public_id(prefix: &str, id: Uuid) -> String {
    format!("{prefix}_{}", id.hyphenated())
}

/// The merchant's payment, locked for the rest of the transaction: every command on one payment
/// runs one after the other. `None` when it does not exist or is another merchant's.
async fn lock_payment(
    tx: &mut PgConnection,
    merchant: &MerchantId,
    id: PaymentId,
) -> Result<bool, StoreError> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT merchant_id FROM ingress.payments WHERE id = $1 FOR UPDATE")
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| lock_error(e, StoreError::LockTimeout, "locking the payment"))?;
    Ok(owner.as_deref() == Some(merchant.as_str()))
}

async fn order_snapshot(
    tx: &mut PgConnection,
    id: PaymentId,
) -> Result<Option<OrderSnapshot>, StoreError> {
    let row = sqlx::query(
        "SELECT status, amount, amount_captured, amount_refunded, currency
         FROM order_store.orders WHERE payment_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await
    .context("reading the order")?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get("status").context("orders.status")?;
    let currency: String = row.try_get("currency").context("orders.currency")?;
    Ok(Some(OrderSnapshot {
        status: PaymentStatus::parse(&status).context("orders.status is not a status")?,
        amount: row.try_get("amount").context("orders.amount")?,
        amount_captured: row
            .try_get("amount_captured")
            .context("orders.amount_captured")?,
        amount_refunded: row
            .try_get("amount_refunded")
            .context("orders.amount_refunded")?,
        currency: Currency::parse(&currency)
            .map_err(|e| anyhow::anyhow!("orders.currency: {e}"))?,
    }))
}

async fn pending_command(
    tx: &mut PgConnection,
    id: PaymentId,
) -> Result<Option<CommandKind>, StoreError> {
    let kind: Option<String> = sqlx::query_scalar(
        "SELECT kind FROM ingress.commands WHERE payment_id = $1 AND status = 'pending' LIMIT 1",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut *tx)
    .await
    .context("reading pending commands")?;
    Ok(kind.map(|k| {
        if k == "cancel" {
            CommandKind::Cancel
        } else {
            CommandKind::Capture
        }
    }))
}

async fn refund_totals(tx: &mut PgConnection, id: PaymentId) -> Result<RefundTotals, StoreError> {
    let (pending, succeeded): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount) FILTER (WHERE status = 'pending'), 0)::bigint,
                COALESCE(SUM(amount) FILTER (WHERE status = 'succeeded'), 0)::bigint
         FROM ingress.refunds WHERE payment_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .context("reading the payment's refunds")?;
    Ok(RefundTotals { pending, succeeded })
}

/// `created` is the time in the payment's UUIDv7 id (its first 48 bits are Unix milliseconds),
/// taken when the ingress accepted it: the same in every answer, whichever store answers.
const VIEW_COLUMNS_ORDERS: &str = "o.payment_id AS id, o.merchant_id, o.amount, o.currency, \
    o.status, o.capture, o.customer_id, o.description, o.metadata, o.amount_captured, \
    o.amount_refunded, o.decline_code, o.failure_reason, o.risk_score, o.psp, \
    (('x' || substr(replace(o.payment_id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000) AS created, \
    o.version, true AS from_order_store";

const VIEW_COLUMNS_ACCEPTED: &str = "p.id, p.merchant_id, p.amount, p.currency, \
    'processing'::text AS status, p.capture, p.customer_id, p.description, p.metadata, \
    0::bigint AS amount_captured, 0::bigint AS amount_refunded, NULL::text AS decline_code, \
    NULL::text AS failure_reason, NULL::int AS risk_score, NULL::text AS psp, \
    (('x' || substr(replace(p.id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000) AS created, \
    0 AS version, false AS from_order_store";

/// The payment as the order store has it, or as accepted while the order store has not seen it.
async fn read_payment(
    conn: &mut PgConnection,
    id: PaymentId,
) -> Result<Option<FoundPayment>, StoreError> {
    let sql = format!(
        "SELECT {VIEW_COLUMNS_ORDERS} FROM order_store.orders o WHERE o.payment_id = $1
         UNION ALL
         SELECT {VIEW_COLUMNS_ACCEPTED} FROM ingress.payments p
         WHERE p.id = $1 AND NOT EXISTS (SELECT 1 FROM order_store.orders x WHERE x.payment_id = $1)"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .context("reading the payment")?;
    row.map(|r| {
        Ok(FoundPayment {
            view: payment_view(&r)?,
            from_order_store: r.try_get("from_order_store").context("from_order_store")?,
        })
    })
    .transpose()
}

fn payment_view(row: &PgRow) -> Result<PaymentView, StoreError> {
    let id: Uuid = row.try_get("id").context("id")?;
    let status: String = row.try_get("status").context("status")?;
    let merchant: String = row.try_get("merchant_id").context("merchant_id")?;
    let metadata: serde_json::Value = row.try_get("metadata").context("metadata")?;
    Ok(PaymentView {
        id: PaymentId::from_uuid(id),
        object: "payment".to_owned(),
        merchant_id: MerchantId::parse(&merchant)
            .map_err(|e| anyhow::anyhow!("stored merchant id: {e}"))?,
        amount: row.try_get("amount").context("amount")?,
        currency: row.try_get("currency").context("currency")?,
        status: PaymentStatus::parse(&status).context("stored status")?,
        capture: row
            .try_get::<Option<String>, _>("capture")
            .context("capture")?
            .unwrap_or_else(|| "automatic".to_owned()),
        customer_id: row.try_get("customer_id").context("customer_id")?,
        description: row.try_get("description").context("description")?,
        metadata: serde_json::from_value(metadata).unwrap_or_default(),
        amount_captured: row.try_get("amount_captured").context("amount_captured")?,
        amount_refunded: row.try_get("amount_refunded").context("amount_refunded")?,
        decline_code: row.try_get("decline_code").context("decline_code")?,
        failure_reason: row.try_get("failure_reason").context("failure_reason")?,
        risk_score: row.try_get("risk_score").context("risk_score")?,
        psp: row.try_get("psp").context("psp")?,
        created: row.try_get("created").context("created")?,
        version: row.try_get("version").context("version")?,
    })
}

fn refund_view(row: &PgRow) -> Result<RefundView, StoreError> {
    let id: Uuid = row.try_get("id").context("refunds.id")?;
    let payment: Uuid = row.try_get("payment_id").context("refunds.payment_id")?;
    Ok(RefundView {
        id: public_id("re", id),
        object: "refund".to_owned(),
        payment: PaymentId::from_uuid(payment).to_string(),
        amount: row.try_get("amount").context("refunds.amount")?,
        currency: row.try_get("currency").context("refunds.currency")?,
        status: row.try_get("status").context("refunds.status")?,
        failure_code: row
            .try_get("failure_code")
            .context("refunds.failure_code")?,
        created: row.try_get("created").context("refunds.created")?,
    })
}

/// The smallest UUIDv7 of the given instant: ids above it were made after it.
fn uuid_v7_floor(t: SystemTime) -> Uuid {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let ms = u64::try_from(ms).unwrap_or(u64::MAX).to_be_bytes();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms[2..8]);
    Uuid::from_bytes(bytes)
}

fn encode(value: &impl serde::Serialize) -> Result<serde_json::Value, StoreError> {
    Ok(serde_json::to_value(value).context("encoding the response")?)
}

#[async_trait]
impl PaymentStore for PgPaymentStore {
    async fn create_payment(
        &self,
        idem: &Idempotent<'_>,
        payment_id: PaymentId,
        request: &PaymentRequested,
        traceparent: &str,
    ) -> Result<Answer, StoreError> {
        let view = PaymentView::accepted(payment_id, request, created_of(payment_id));
        let body = encode(&view)?;
        let (mut tx, replay) = self.begin(idem, Some((202, &body))).await?;
        if let Some(answer) = replay {
            return Ok(answer);
        }
        sqlx::query(
            "INSERT INTO ingress.payments
               (id, merchant_id, amount, currency, customer_id, payment_method, capture, description, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(payment_id.as_uuid())
        .bind(request.merchant_id.as_str())
        .bind(request.amount.minor())
        .bind(request.currency.as_str())
        .bind(request.customer_id.as_str())
        .bind(request.payment_method.as_str())
        .bind(match request.capture {
            paystream_domain::CaptureMode::Automatic => "automatic",
            paystream_domain::CaptureMode::Manual => "manual",
        })
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
        // The key was claimed with this very answer; the commit makes all of it durable at once.
        tx.commit().await.context("committing the request")?;
        Ok(Answer {
            status: 202,
            body,
            replayed: false,
        })
    }

    async fn capture(
        &self,
        idem: &Idempotent<'_>,
        request: &CaptureRequest,
        traceparent: &str,
    ) -> Result<Answer, StoreError> {
        let (mut tx, replay) = self.begin(idem, None).await?;
        if let Some(answer) = replay {
            return Ok(answer);
        }
        let id = request.payment_id;
        if !lock_payment(&mut tx, idem.merchant, id).await? {
            return self.refuse(tx, idem, ApiError::not_found()).await;
        }
        let order = order_snapshot(&mut tx, id).await?;
        let pending = pending_command(&mut tx, id).await?;
        let amount = match commands::decide_capture(order.as_ref(), pending, request.amount) {
            Ok(amount) => amount,
            Err(refusal) => return self.refuse(tx, idem, refusal).await,
        };
        let command_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO ingress.commands (id, payment_id, merchant_id, kind, amount)
             VALUES ($1, $2, $3, 'capture', $4)",
        )
        .bind(command_id)
        .bind(id.as_uuid())
        .bind(idem.merchant.as_str())
        .bind(amount.map(|a| a.minor()))
        .execute(&mut *tx)
        .await
        .context("recording the capture")?;
        let event = CaptureRequested {
            merchant_id: idem.merchant.clone(),
            command_id: public_id("cmd", command_id),
            amount,
        };
        let record = OutboxRecord::event(id, event, traceparent, &id.to_string())?;
        outbox::enqueue(&mut tx, DB_SCHEMA, &[record]).await?;
        let found = read_payment(&mut tx, id)
            .await?
            .context("the locked payment vanished")?;
        self.finish(tx, idem, 202, encode(&found.view)?).await
    }

    async fn cancel(
        &self,
        idem: &Idempotent<'_>,
        request: &CancelRequest,
        traceparent: &str,
    ) -> Result<Answer, StoreError> {
        let (mut tx, replay) = self.begin(idem, None).await?;
        if let Some(answer) = replay {
            return Ok(answer);
        }
        let id = request.payment_id;
        if !lock_payment(&mut tx, idem.merchant, id).await? {
            return self.refuse(tx, idem, ApiError::not_found()).await;
        }
        let order = order_snapshot(&mut tx, id).await?;
        let pending = pending_command(&mut tx, id).await?;
        if let Err(refusal) = commands::decide_cancel(order.as_ref(), pending) {
            return self.refuse(tx, idem, refusal).await;
        }
        let command_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO ingress.commands (id, payment_id, merchant_id, kind)
             VALUES ($1, $2, $3, 'cancel')",
        )
        .bind(command_id)
        .bind(id.as_uuid())
        .bind(idem.merchant.as_str())
        .execute(&mut *tx)
        .await
        .context("recording the cancel")?;
        let event = CancelRequested {
            merchant_id: idem.merchant.clone(),
            command_id: public_id("cmd", command_id),
        };
        let record = OutboxRecord::event(id, event, traceparent, &id.to_string())?;
        outbox::enqueue(&mut tx, DB_SCHEMA, &[record]).await?;
        let found = read_payment(&mut tx, id)
            .await?
            .context("the locked payment vanished")?;
        self.finish(tx, idem, 202, encode(&found.view)?).await
    }

    async fn refund(
        &self,
        idem: &Idempotent<'_>,
        request: &RefundRequest,
        traceparent: &str,
    ) -> Result<Answer, StoreError> {
        let (mut tx, replay) = self.begin(idem, None).await?;
        if let Some(answer) = replay {
            return Ok(answer);
        }
        let id = request.payment_id;
        if !lock_payment(&mut tx, idem.merchant, id).await? {
            return self.refuse(tx, idem, ApiError::not_found()).await;
        }
        // Under the lock: no other refund of this payment can commit between this read and the
        // reservation below.
        let order = order_snapshot(&mut tx, id).await?;
        let totals = refund_totals(&mut tx, id).await?;
        let amount = match commands::decide_refund(order.as_ref(), totals, request.amount) {
            Ok(amount) => amount,
            Err(refusal) => return self.refuse(tx, idem, refusal).await,
        };
        let Some(order) = order else {
            return Err(anyhow::anyhow!("a refund was allowed without an order").into());
        };
        let refund_id = Uuid::now_v7();
        let row = sqlx::query(
            "INSERT INTO ingress.refunds (id, payment_id, merchant_id, amount, currency)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, payment_id, amount, currency, status, failure_code,
                       extract(epoch from created_at)::bigint AS created",
        )
        .bind(refund_id)
        .bind(id.as_uuid())
        .bind(idem.merchant.as_str())
        .bind(amount.minor())
        .bind(order.currency.as_str())
        .fetch_one(&mut *tx)
        .await
        .context("reserving the refund")?;
        let view = refund_view(&row)?;
        let event = RefundRequested {
            merchant_id: idem.merchant.clone(),
            refund_id: view.id.clone(),
            amount,
            currency: order.currency,
        };
        let record = OutboxRecord::event(id, event, traceparent, &id.to_string())?;
        outbox::enqueue(&mut tx, DB_SCHEMA, &[record]).await?;
        self.finish(tx, idem, 202, encode(&view)?).await
    }

    async fn find_payment(
        &self,
        scope: Option<&MerchantId>,
        id: PaymentId,
    ) -> Result<Option<FoundPayment>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("acquiring a connection")?;
        let found = read_payment(&mut conn, id).await?;
        Ok(found.filter(|f| scope.is_none_or(|m| &f.view.merchant_id == m)))
    }

    async fn list_payments(
        &self,
        query: &ListQuery,
    ) -> Result<(Vec<PaymentView>, bool), StoreError> {
        // Built from fixed fragments so that each variant gets a plan that uses its index.
        // $1 is the page size (plus one, to learn whether more follow); the others are numbered
        // in the order they are bound below.
        let include_accepted = query.status.is_none_or(|s| s == PaymentStatus::Processing);
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        let window_param = include_accepted.then(&mut next);
        let merchant_param = query.merchant.as_ref().map(|_| next());
        let cursor_param = query.starting_after.map(|_| next());
        let status_param = query.status.map(|_| next());
        let mut order_filters = Vec::new();
        let mut accepted_filters = Vec::new();
        if let Some(p) = window_param {
            accepted_filters.push(format!("p.id > ${p}"));
        }
        if let Some(p) = merchant_param {
            order_filters.push(format!("o.merchant_id = ${p}"));
            accepted_filters.push(format!("p.merchant_id = ${p}"));
        }
        if let Some(p) = cursor_param {
            order_filters.push(format!("o.payment_id < ${p}"));
            accepted_filters.push(format!("p.id < ${p}"));
        }
        if let Some(p) = status_param {
            order_filters.push(format!("o.status = ${p}"));
        }
        let where_orders = if order_filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", order_filters.join(" AND "))
        };
        let accepted = if include_accepted {
            format!(
                "UNION ALL
                 (SELECT {VIEW_COLUMNS_ACCEPTED} FROM ingress.payments p
                  WHERE {} AND NOT EXISTS
                      (SELECT 1 FROM order_store.orders x WHERE x.payment_id = p.id)
                  ORDER BY p.id DESC LIMIT $1)",
                accepted_filters.join(" AND ")
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT * FROM (
                (SELECT {VIEW_COLUMNS_ORDERS} FROM order_store.orders o {where_orders}
                 ORDER BY o.payment_id DESC LIMIT $1)
                {accepted}
             ) u ORDER BY id DESC LIMIT $1"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64::from(query.limit) + 1);
        if include_accepted {
            let window_start = SystemTime::now()
                .checked_sub(ACCEPTED_LISTING_WINDOW)
                .unwrap_or(UNIX_EPOCH);
            q = q.bind(uuid_v7_floor(window_start));
        }
        if let Some(m) = &query.merchant {
            q = q.bind(m.as_str());
        }
        if let Some(c) = query.starting_after {
            q = q.bind(c.as_uuid());
        }
        if let Some(s) = query.status {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.pool).await.context("listing payments")?;
        let mut views = rows
            .iter()
            .map(payment_view)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = views.len() > query.limit as usize;
        views.truncate(query.limit as usize);
        Ok((views, has_more))
    }

    async fn list_refunds(
        &self,
        scope: Option<&MerchantId>,
        id: PaymentId,
    ) -> Result<Option<Vec<RefundView>>, StoreError> {
        if self.find_payment(scope, id).await?.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT id, payment_id, amount, currency, status, failure_code,
                    extract(epoch from created_at)::bigint AS created
             FROM ingress.refunds WHERE payment_id = $1 ORDER BY id DESC",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .context("listing refunds")?;
        Ok(Some(
            rows.iter()
                .map(refund_view)
                .collect::<Result<Vec<_>, _>>()?,
        ))
    }

    async fn balance(&self, merchant: &MerchantId) -> Result<Balance, StoreError> {
        let available: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, (credits - debits)::bigint FROM account_store.accounts
             WHERE account = $1 ORDER BY currency",
        )
        .bind(format!("merchant:{merchant}:payable"))
        .fetch_all(&self.pool)
        .await
        .context("reading the merchant's payable accounts")?;
        let pending: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, SUM(amount - amount_captured)::bigint FROM order_store.orders
             WHERE merchant_id = $1 AND status = 'requires_capture'
             GROUP BY currency ORDER BY currency",
        )
        .bind(merchant.as_str())
        .fetch_all(&self.pool)
        .await
        .context("reading authorised payments")?;
        let amounts = |rows: Vec<(String, i64)>| {
            rows.into_iter()
                .map(|(currency, amount)| BalanceAmount { currency, amount })
                .collect()
        };
        Ok(Balance {
            object: "balance".to_owned(),
            available: amounts(available),
            pending: amounts(pending),
        })
    }

    async fn purge_expired_keys(&self, batch: i64) -> Result<u64, StoreError> {
        // SKIP LOCKED: a key being taken over by a request right now is left to it.
        let purged = sqlx::query(
            "DELETE FROM ingress.idempotency_keys WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM ingress.idempotency_keys WHERE expires_at < now()
                 LIMIT $1 FOR UPDATE SKIP LOCKED))",
        )
        .bind(batch)
        .execute(&self.pool)
        .await
        .context("purging expired idempotency keys")?
        .rows_affected();
        Ok(purged)
    }
}

/// What `payments.psp-results` tells the ingress about its commands and refunds. Each function
/// runs on the consumer runtime's transaction and only moves a row forward; an id this database
/// does not know (another fleet's, a command sent by someone else) changes nothing.
pub mod results {
    use anyhow::Context;
    use sqlx::PgConnection;
    use uuid::Uuid;

    /// A refund went through: it keeps counting against the capture, for good. A refund that was
    /// reported failed and later succeeded at the PSP after all counts again.
    pub async fn refund_succeeded(
        tx: &mut PgConnection,
        refund_id: Uuid,
        psp_refund_id: &str,
    ) -> anyhow::Result<bool> {
        let updated = sqlx::query(
            "UPDATE ingress.refunds
             SET status = 'succeeded', psp_refund_id = $2, failure_code = NULL,
                 failure_message = NULL, updated_at = now()
             WHERE id = $1 AND status <> 'succeeded'",
        )
        .bind(refund_id)
        .bind(psp_refund_id)
        .execute(&mut *tx)
        .await
        .context("marking the refund succeeded")?
        .rows_affected();
        Ok(updated == 1)
    }

    /// A refund was refused for good: its reservation is released.
    pub async fn refund_failed(
        tx: &mut PgConnection,
        refund_id: Uuid,
        code: &str,
        message: &str,
    ) -> anyhow::Result<bool> {
        let updated = sqlx::query(
            "UPDATE ingress.refunds
             SET status = 'failed', failure_code = $2, failure_message = $3, updated_at = now()
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(refund_id)
        .bind(code)
        .bind(message)
        .execute(&mut *tx)
        .await
        .context("marking the refund failed")?
        .rows_affected();
        Ok(updated == 1)
    }

    /// A capture or cancel ended: the payment takes commands again.
    pub async fn command_finished(
        tx: &mut PgConnection,
        command_id: Uuid,
        failure_code: Option<&str>,
    ) -> anyhow::Result<bool> {
        let updated = sqlx::query(
            "UPDATE ingress.commands
             SET status = CASE WHEN $2::text IS NULL THEN 'succeeded' ELSE 'failed' END,
                 failure_code = $2, updated_at = now()
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(command_id)
        .bind(failure_code)
        .execute(&mut *tx)
        .await
        .context("recording the command's outcome")?
        .rows_affected();
        Ok(updated == 1)
    }
}

/// Unix seconds of a payment id's UUIDv7 timestamp (see `VIEW_COLUMNS_ORDERS`).
fn created_of(id: PaymentId) -> i64 {
    id.as_uuid()
        .get_timestamp()
        .map(|t| t.to_unix().0 as i64)
        .unwrap_or_else(|| chrono::Utc::now().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v7_floor_sorts_below_ids_made_after_it() {
        let before = uuid_v7_floor(SystemTime::now() - Duration::from_secs(1));
        let id = Uuid::now_v7();
        assert!(before < id);
        let after = uuid_v7_floor(SystemTime::now() + Duration::from_secs(1));
        assert!(id < after);
    }
}
