//! Creates by backend: SQLite at `synchronous=FULL` and `NORMAL`, and
//! PostgreSQL with one core and with two cores sharing the database (a
//! server of the run's own, through `scripts/postgres`). Setups alternate
//! round by round in one run, so the machine's noise falls on all alike;
//! the table gives medians over rounds and each setup's ratio to the first.

use anyhow::bail;
use notify_testkit::postgres::OwnPostgres;
use serde::Serialize;

use crate::load::{self, Created, Offer};
use crate::report::Table;
use crate::stack::{Core, Programs};
use crate::stats::median;

/// One way of running the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// One core on SQLite, `synchronous=FULL` (the default).
    SqliteFull,
    /// One core on SQLite, `synchronous=NORMAL`.
    SqliteNormal,
    /// One core on PostgreSQL.
    Postgres1,
    /// Two cores on one PostgreSQL database, the clients split between them.
    Postgres2,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::SqliteFull => "sqlite FULL, 1 core",
            Setup::SqliteNormal => "sqlite NORMAL, 1 core",
            Setup::Postgres1 => "postgres, 1 core",
            Setup::Postgres2 => "postgres, 2 cores",
        }
    }

    fn on_postgres(self) -> bool {
        matches!(self, Setup::Postgres1 | Setup::Postgres2)
    }
}

/// One setup's rounds and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct BackendRow {
    /// Which setup.
    pub setup: Setup,
    /// Each round as measured.
    pub rounds: Vec<Created>,
    /// Median creates/s over rounds.
    pub creates_per_second: f64,
    /// Median of the rounds' call p50 (ms).
    pub p50_ms: f64,
    /// Median of the rounds' call p99 (ms).
    pub p99_ms: f64,
}

/// `clients` creating flat out for `seconds`, each setup once per round.
pub async fn run(
    programs: &Programs,
    setups: &[Setup],
    clients: usize,
    seconds: f64,
    rounds: usize,
) -> anyhow::Result<Vec<BackendRow>> {
    let server = if setups.iter().any(|s| s.on_postgres()) {
        Some(OwnPostgres::start()?)
    } else {
        None
    };
    let mut collected: Vec<Vec<Created>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for (index, &setup) in setups.iter().enumerate() {
            let url = match &server {
                Some(server) if setup.on_postgres() => Some(server.database().await?),
                _ => None,
            };
            let cores = match setup {
                Setup::SqliteFull => vec![Core::start_with(programs, None, "full")?],
                Setup::SqliteNormal => vec![Core::start_with(programs, None, "normal")?],
                Setup::Postgres1 => vec![Core::start_with(programs, url.as_deref(), "full")?],
                Setup::Postgres2 => vec![
                    Core::start_with(programs, url.as_deref(), "full")?,
                    Core::start_with(programs, url.as_deref(), "full")?,
                ],
            };
            let offer = Offer {
                clients,
                rate: 0,
                batch: 1,
                users: 10_000,
                seconds,
            };
            let created = load::create(&cores.iter().collect::<Vec<_>>(), offer).await?;
            eprintln!(
                "backends round {round} {}: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
                setup.name(),
                created.per_second,
                created.call_latency.p50_ms,
                created.call_latency.p99_ms
            );
            if created.errors > 0 {
                bail!("{}: {} create calls failed", setup.name(), created.errors);
            }
            collected[index].push(created);
        }
    }
    Ok(setups
        .iter()
        .zip(collected)
        .map(|(&setup, rounds)| {
            let of = |f: fn(&Created) -> f64| median(rounds.iter().map(f).collect()).unwrap_or(0.0);
            BackendRow {
                setup,
                creates_per_second: of(|c| c.per_second),
                p50_ms: of(|c| c.call_latency.p50_ms),
                p99_ms: of(|c| c.call_latency.p99_ms),
                rounds,
            }
        })
        .collect())
}

/// The medians, each with its ratio to the first setup.
pub fn table(rows: &[BackendRow]) -> Table {
    let mut table = Table::new(&["setup", "creates/s", "p50 ms", "p99 ms", "÷ first"]);
    let first = rows.first().map(|r| r.creates_per_second).unwrap_or(0.0);
    for row in rows {
        table.row(vec![
            row.setup.name().into(),
            format!("{:.0}", row.creates_per_second),
            format!("{:.2}", row.p50_ms),
            format!("{:.2}", row.p99_ms),
            format!("{:.2}", row.creates_per_second / first.max(1.0)),
        ]);
    }
    table
}
