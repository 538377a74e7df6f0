//! The ceiling for creates/s: raw batched inserts into the same schema, on
//! the same disk, with the same `synchronous` setting and journal mode as
//! the core — one connection, one multi-row INSERT per transaction, no
//! gRPC, no counters, no streams. Whatever the core does beyond this is
//! its overhead.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};

/// Inserts/s at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingRow {
    /// Rows per transaction.
    pub batch: usize,
    /// Rows inserted per second.
    pub rows_per_second: f64,
    /// Transactions (fsyncs under FULL) per second.
    pub transactions_per_second: f64,
}

/// Runs each batch size for `seconds` on a fresh database file in `dir`.
pub async fn run(
    dir: &Path,
    synchronous: &str,
    batches: &[usize],
    seconds: f64,
) -> anyhow::Result<Vec<CeilingRow>> {
    let synchronous = SqliteSynchronous::from_str(synchronous)
        .map_err(|e| anyhow::anyhow!("synchronous {synchronous:?}: {e}"))?;
    let mut rows = Vec::new();
    for &batch in batches {
        let path = dir.join(format!("ceiling-{batch}.db"));
        let mut db = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .connect()
            .await
            .context("open the ceiling database")?;
        sqlx::migrate!("../store/migrations/sqlite")
            .run(&mut db)
            .await
            .context("create the schema")?;
        let content = r#"{"message":"Product has been uploaded successfully","data":{"id":42,"price":"22"},"sentAt":1}"#;
        let (mut inserted, mut transactions) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            let mut tx = db.begin().await?;
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO notifications (id, recipient_role, recipient_id, seq, type, channel, \
                 content, status, priority, created_at, updated_at) ",
            );
            insert.push_values(0..batch, |mut row, i| {
                let n = inserted + i as u64;
                row.push_bind(format!("{n:024x}"))
                    .push_bind(1)
                    .push_bind((n % 10_000) as i64 + 1)
                    .push_bind((n / 10_000) as i64 + 1)
                    .push_bind("bench:load")
                    .push_bind(1)
                    .push_bind(content)
                    .push_bind(2)
                    .push_bind(0)
                    .push_bind(0i64)
                    .push_bind(0i64);
            });
            insert.build().execute(&mut *tx).await?;
            tx.commit().await?;
            inserted += batch as u64;
            transactions += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        db.close().await?;
        let row = CeilingRow {
            batch,
            rows_per_second: inserted as f64 / elapsed,
            transactions_per_second: transactions as f64 / elapsed,
        };
        eprintln!(
            "ceiling: {batch} rows per transaction: {:.0} rows/s, {:.0} transactions/s",
            row.rows_per_second, row.transactions_per_second
        );
        rows.push(row);
    }
    Ok(rows)
}
