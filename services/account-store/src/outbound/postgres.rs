use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use paystream_domain::{Currency, LedgerPosting, MerchantId, PaymentId, Side, TransferKind};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::{self, CAPTURE_STEP, CaptureSplit, LedgerError, Policy, Totals};

/// Takes the ledger's one write lock until the transaction ends.
///
/// Each transfer locks its account rows in name order, but the consumer runtime posts a whole
/// batch of records in one transaction, so the rows a batch holds pile up in record order: two
/// instances posting for the same merchants (and every capture credits `platform:fees`) would
/// lock in different orders and deadlock. Every capture and refund touches `platform:fees` and a
/// clearing account anyway, so ledger batches already run one at a time; taking this lock first
/// keeps exactly that throughput and removes the cycle. Transaction-scoped, so a batch takes it
/// once (re-taking it is a no-op) and a crash releases it. The two-key form keeps it apart from
/// the outbox relay's single-key lock.
pub async fn lock_ledger(tx: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('account_store.ledger'), 0)")
        .execute(&mut *tx)
        .await
        .context("taking the ledger lock")?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    Posted,
    /// A transfer for this payment and step exists: the result was seen before.
    AlreadyPosted,
    /// Posting would break a ledger rule; nothing was written (at most an empty account row).
    Refused(LedgerError),
}

/// Stores the transfer, its entries and the new account totals, all on the caller's
/// transaction, or nothing if the (payment, step) transfer already exists or a rule refuses it.
///
/// The rules are checked before anything is written, because a refused refund that was waiting
/// for its capture is refused inside the capture's transaction, which still commits.
///
/// Account rows are created and locked in name order, so two transfers sharing accounts wait for
/// each other instead of deadlocking; across the transfers of a batch, the ledger lock the
/// caller took first (see [`lock_ledger`]) does the same.
pub async fn post_transfer(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    step: &str,
    posting: &LedgerPosting,
    policy: &Policy,
) -> anyhow::Result<PostOutcome> {
    let currency = posting.currency.as_str();
    if transfer_exists(tx, payment_id, step).await? {
        return Ok(PostOutcome::AlreadyPosted);
    }
    let accounts: BTreeSet<&str> = posting.entries.iter().map(|e| e.account.as_str()).collect();
    let accounts: Vec<&str> = accounts.into_iter().collect();
    let current = lock_accounts(tx, &accounts, currency).await?;
    let next = match domain::apply_posting(&current, posting, policy) {
        Ok(next) => next,
        Err(rule) => return Ok(PostOutcome::Refused(rule)),
    };
    // Under the ledger lock nobody else can post this step meanwhile; the constraint still
    // decides if a caller ever posts without it.
    let inserted = sqlx::query(
        "INSERT INTO account_store.transfers (transfer_id, payment_id, kind, step, currency)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(&posting.transfer_id)
    .bind(payment_id.as_uuid())
    .bind(kind_str(posting.kind))
    .bind(step)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .context("inserting the transfer")?
    .rows_affected();
    if inserted == 0 {
        return Ok(PostOutcome::AlreadyPosted);
    }

    let (names, debits, credits): (Vec<String>, Vec<i64>, Vec<i64>) = next
        .into_iter()
        .map(|(account, t)| (account, t.debits, t.credits))
        .collect();
    sqlx::query(
        "UPDATE account_store.accounts AS a SET debits = u.debits, credits = u.credits
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(account, debits, credits)
         WHERE a.account = u.account AND a.currency = $4",
    )
    .bind(&names)
    .bind(&debits)
    .bind(&credits)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .context("updating account totals")?;

    let accounts: Vec<&str> = posting.entries.iter().map(|e| e.account.as_str()).collect();
    let sides: Vec<&str> = posting.entries.iter().map(|e| side_str(e.side)).collect();
    let amounts: Vec<i64> = posting.entries.iter().map(|e| e.amount).collect();
    sqlx::query(
        "INSERT INTO account_store.entries (transfer_id, account, currency, side, amount)
         SELECT $1, e.account, $2, e.side, e.amount
         FROM UNNEST($3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY
              AS e(account, side, amount, n)
         ORDER BY e.n",
    )
    .bind(&posting.transfer_id)
    .bind(currency)
    .bind(&accounts)
    .bind(&sides)
    .bind(&amounts)
    .execute(&mut *tx)
    .await
    .context("inserting ledger entries")?;
    Ok(PostOutcome::Posted)
}

/// Creates the accounts on first use, then takes their row locks, in name order, for the rest
/// of the transaction: two statements whatever the number of accounts.
async fn lock_accounts(
    tx: &mut PgConnection,
    accounts: &[&str],
    currency: &str,
) -> anyhow::Result<BTreeMap<String, Totals>> {
    sqlx::query(
        "INSERT INTO account_store.accounts (account, currency)
         SELECT a, $2 FROM UNNEST($1::text[]) AS a ORDER BY a
         ON CONFLICT (account, currency) DO NOTHING",
    )
    .bind(accounts)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .with_context(|| format!("creating accounts {accounts:?} in {currency}"))?;
    let rows = sqlx::query(
        "SELECT account, debits, credits FROM account_store.accounts
         WHERE currency = $2 AND account = ANY($1::text[])
         ORDER BY account FOR UPDATE",
    )
    .bind(accounts)
    .bind(currency)
    .fetch_all(&mut *tx)
    .await
    .with_context(|| format!("locking accounts {accounts:?} in {currency}"))?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("account").context("reading accounts.account")?,
                Totals {
                    debits: row.try_get("debits").context("reading accounts.debits")?,
                    credits: row.try_get("credits").context("reading accounts.credits")?,
                },
            ))
        })
        .collect()
}

/// The merchant's available balance per currency (credits minus debits of its payable account),
/// for `GET /v1/balance`. Read from the running totals, which every posting keeps equal to the
/// sum of the entries.
pub async fn balances(
    pool: &PgPool,
    merchant_id: &MerchantId,
) -> anyhow::Result<Vec<(Currency, i64)>> {
    let rows = sqlx::query(
        "SELECT currency, credits - debits AS available FROM account_store.accounts
         WHERE account = $1 ORDER BY currency",
    )
    .bind(domain::merchant_payable(merchant_id))
    .fetch_all(pool)
    .await
    .context("reading merchant balances")?;
    rows.iter()
        .map(|row| {
            let code: String = row
                .try_get("currency")
                .context("reading accounts.currency")?;
            let currency = Currency::parse(&code)
                .map_err(|e| anyhow::anyhow!("accounts.currency {code:?}: {e}"))?;
            let available: i64 = row.try_get("available").context("reading the balance")?;
            Ok((currency, available))
        })
        .collect()
}

fn kind_str(kind: TransferKind) -> &'static str {
    match kind {
        TransferKind::Capture => "capture",
        TransferKind::Refund => "refund",
    }
}

fn side_str(side: Side) -> &'static str {
    match side {
        Side::Debit => "debit",
        Side::Credit => "credit",
    }
}

/// How the payment's capture was split, or `None` if no capture is posted yet.
pub async fn capture_split(
    tx: &mut PgConnection,
    payment_id: PaymentId,
) -> anyhow::Result<Option<Result<CaptureSplit, LedgerError>>> {
    let rows = sqlx::query(
        "SELECT t.currency, e.account, e.side, e.amount
         FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
         WHERE t.payment_id = $1 AND t.step = $2 ORDER BY e.id",
    )
    .bind(payment_id.as_uuid())
    .bind(CAPTURE_STEP)
    .fetch_all(&mut *tx)
    .await
    .context("reading the capture transfer")?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let code: String = first
        .try_get("currency")
        .context("reading transfers.currency")?;
    let currency =
        Currency::parse(&code).map_err(|e| anyhow::anyhow!("transfers.currency {code:?}: {e}"))?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let side: String = row.try_get("side").context("reading entries.side")?;
        let side = match side.as_str() {
            "debit" => Side::Debit,
            _ => Side::Credit,
        };
        entries.push((
            row.try_get::<String, _>("account")
                .context("reading entries.account")?,
            side,
            row.try_get::<i64, _>("amount")
                .context("reading entries.amount")?,
        ));
    }
    Ok(Some(CaptureSplit::from_entries(currency, &entries)))
}

/// The refunded total posted so far for the payment (the clearing credits of its refunds).
pub async fn refunded_so_far(tx: &mut PgConnection, payment_id: PaymentId) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(e.amount), 0)::bigint
         FROM account_store.transfers t JOIN account_store.entries e USING (transfer_id)
         WHERE t.payment_id = $1 AND t.kind = 'refund' AND e.side = 'credit'",
    )
    .bind(payment_id.as_uuid())
    .fetch_one(&mut *tx)
    .await
    .context("summing the payment's refunds")
}

/// Whether this refund's transfer exists already.
pub async fn transfer_exists(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    step: &str,
) -> anyhow::Result<bool> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM account_store.transfers WHERE payment_id = $1 AND step = $2",
    )
    .bind(payment_id.as_uuid())
    .bind(step)
    .fetch_optional(&mut *tx)
    .await
    .context("looking up the transfer")?;
    Ok(found.is_some())
}

/// Keeps a refund whose capture is not posted yet.
pub async fn park_refund(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    event_id: Uuid,
    refund_id: &str,
    data: &serde_json::Value,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO account_store.parked_refunds (event_id, payment_id, refund_id, data)
         VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(payment_id.as_uuid())
    .bind(refund_id)
    .bind(data)
    .execute(&mut *tx)
    .await
    .context("parking the refund")?;
    Ok(())
}

pub struct ParkedRefund {
    pub seq: i64,
    pub event_id: Uuid,
    pub data: serde_json::Value,
}

pub async fn parked_refunds(
    tx: &mut PgConnection,
    payment_id: PaymentId,
) -> anyhow::Result<Vec<ParkedRefund>> {
    let rows = sqlx::query(
        "SELECT seq, event_id, data FROM account_store.parked_refunds
         WHERE payment_id = $1 AND resolved_at IS NULL ORDER BY seq",
    )
    .bind(payment_id.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .context("reading parked refunds")?;
    rows.iter()
        .map(|r| {
            Ok(ParkedRefund {
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                data: r.try_get("data")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding parked refunds")
}

/// `resolution`: posted, duplicate or refused (with the rule in `note`).
pub async fn resolve_parked(
    tx: &mut PgConnection,
    seq: i64,
    resolution: &str,
    note: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE account_store.parked_refunds SET resolved_at = now(), resolution = $2, note = $3
         WHERE seq = $1",
    )
    .bind(seq)
    .bind(resolution)
    .bind(note)
    .execute(&mut *tx)
    .await
    .context("resolving a parked refund")?;
    Ok(())
}
