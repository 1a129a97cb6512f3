use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use paystream_domain::{Currency, LedgerPosting, MerchantId, PaymentId, Side, TransferKind};
use sqlx::{PgConnection, PgPool, Row};

use crate::domain::{self, LedgerError, Totals};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    Posted,
    /// A transfer for this payment and step exists: the result was seen before.
    AlreadyPosted,
    /// Posting would break a ledger rule; nothing was written that the caller should keep.
    Refused(LedgerError),
}

/// Stores the transfer, its entries and the new account totals, all on the caller's
/// transaction, or nothing if the (payment, step) transfer already exists.
///
/// Account rows are created and locked one by one in name order: every transfer locks in the
/// same order, so two transfers sharing accounts wait for each other instead of deadlocking.
pub async fn post_transfer(
    tx: &mut PgConnection,
    payment_id: PaymentId,
    step: &str,
    posting: &LedgerPosting,
) -> anyhow::Result<PostOutcome> {
    let currency = posting.currency.as_str();
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

    let accounts: BTreeSet<&str> = posting.entries.iter().map(|e| e.account.as_str()).collect();
    let mut current = BTreeMap::new();
    for account in accounts {
        current.insert(
            account.to_owned(),
            lock_account(tx, account, currency).await?,
        );
    }
    let next = match domain::apply_posting(&current, posting) {
        Ok(next) => next,
        Err(rule) => return Ok(PostOutcome::Refused(rule)),
    };

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

/// Creates the account on first use, then takes its row lock for the rest of the transaction.
async fn lock_account(
    tx: &mut PgConnection,
    account: &str,
    currency: &str,
) -> anyhow::Result<Totals> {
    sqlx::query(
        "INSERT INTO account_store.accounts (account, currency) VALUES ($1, $2)
         ON CONFLICT (account, currency) DO NOTHING",
    )
    .bind(account)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .with_context(|| format!("creating account {account} {currency}"))?;
    let row = sqlx::query(
        "SELECT debits, credits FROM account_store.accounts
         WHERE account = $1 AND currency = $2 FOR UPDATE",
    )
    .bind(account)
    .bind(currency)
    .fetch_one(&mut *tx)
    .await
    .with_context(|| format!("locking account {account} {currency}"))?;
    Ok(Totals {
        debits: row.try_get("debits").context("reading accounts.debits")?,
        credits: row.try_get("credits").context("reading accounts.credits")?,
    })
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
