//! `notify-bench`: drives a real core and bridge — ours, or the Node.js peer
//! in `peer/` beside it — the way production does, on loopback, and reports
//! create→receive latency, throughput, memory and CPU. Each scenario is
//! one command; `sweep` runs the growth curves and draws the charts.
//!
//! Every run raises its own open-file limit, ramps connections at a
//! bounded rate, stops by itself, and writes `NAME.md` and `NAME.json`
//! (and charts) into `--out`. It exits non-zero if a notification that the
//! core acknowledged never reached its socket.

mod audience;
mod backends;
mod ceiling;
mod lifecycle;
mod list;
mod load;
mod report;
mod scaleout;
mod scenario;
mod sio;
mod stack;
mod stats;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use load::{Offer, Ramp};
use report::{Output, Series, Table, line_chart};
use scenario::{FanoutRow, IdleRow};
use stack::{Programs, Target};

#[derive(Parser)]
#[command(
    name = "notify-bench",
    version,
    about = "Load tool for notify and the Node peer bridge"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    programs: Programs,
    #[command(flatten)]
    ramp: Ramp,
    /// Directory for the Markdown, JSON and SVG results.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-results"))]
    out: PathBuf,
}

/// Which bridges a scenario runs against, one after the other.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Targets {
    Ours,
    Peer,
    Both,
}

impl Targets {
    fn list(self) -> Vec<Target> {
        match self {
            Targets::Ours => vec![Target::Ours],
            Targets::Peer => vec![Target::Peer],
            Targets::Both => vec![Target::Ours, Target::Peer],
        }
    }
}

/// How the gRPC side offers load in `fanout` and `sweep`.
#[derive(Debug, Clone, Copy, clap::Args)]
struct OfferArgs {
    /// gRPC clients, each on its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Recipients per create call (1 = CreateNotification).
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Seconds of load per measured phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Subcommand)]
enum Scenario {
    /// Idle sockets, each its own user: bridge memory per socket.
    Idle {
        #[arg(long, value_enum, default_value = "both")]
        target: Targets,
        /// Socket counts, reached one after the other on the same bridge.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        sockets: Vec<usize>,
    },
    /// A steady rate over connected sockets: latency, throughput, CPU.
    Fanout {
        #[arg(long, value_enum, default_value = "both")]
        target: Targets,
        #[arg(long, default_value_t = 1000)]
        sockets: usize,
        /// Notifications per second (0 = flat out); several run in turn.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        rate: Vec<u64>,
        #[command(flatten)]
        offer: OfferArgs,
    },
    /// CreateNotifications covering every connected socket at once: time
    /// until the last socket has it.
    Broadcast {
        #[arg(long, value_enum, default_value = "both")]
        target: Targets,
        #[arg(long, default_value_t = 10_000)]
        recipients: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// gRPC only: creates/s over a concurrency sweep, and the raw SQLite
    /// ceiling on the same disk.
    Creates {
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
        concurrency: Vec<usize>,
        /// Seconds per step.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Recipients per call: 1 = CreateNotification, more =
        /// CreateNotifications (creates/s then counts notifications).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// gRPC only: creates/s by backend (SQLite FULL and NORMAL, PostgreSQL
    /// with one and two cores), round by round, medians. Starts its own
    /// PostgreSQL server (`scripts/postgres`) when a setup needs one.
    Backends {
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "sqlite-full,sqlite-normal,postgres1,postgres2"
        )]
        setups: Vec<backends::Setup>,
        /// Concurrent clients, each on its own connection.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds per round of each setup.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// gRPC only: several cores on one PostgreSQL database over each bus
    /// (LISTEN/NOTIFY, NATS): creates/s flat out, create→receive at a
    /// steady rate, and the share of the changes each core receives when
    /// each holds the streams of a disjoint part of the users. Starts its
    /// own PostgreSQL and nats-server.
    Scaleout {
        #[arg(long, value_enum, value_delimiter = ',', default_value = "listen,nats")]
        buses: Vec<scaleout::Bus>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        cores: Vec<usize>,
        /// Users with a stream open, dealt round the cores.
        #[arg(long, default_value_t = 1_000)]
        users: u64,
        /// Clients in the flat-out phase.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Notifications per second in the steady phase.
        #[arg(long, default_value_t = 500)]
        rate: u64,
    },
    /// gRPC only: a topic's fan-out to N subscribers (its time, a connected
    /// subset's wait, ordinary creates beside it at a steady rate against
    /// the same rate alone), then many scheduled notifications due in the
    /// same second (how late they go out), on each store.
    Audience {
        #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite")]
        stores: Vec<audience::Store>,
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        subscribers: Vec<u64>,
        /// Subscribers with a stream open.
        #[arg(long, default_value_t = 1_000)]
        streams: u64,
        /// Ordinary creates per second beside the fan-out.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Scheduled notifications due in the same second.
        #[arg(long, default_value_t = 1_000)]
        due: u64,
    },
    /// gRPC only: ListOffline on random users and pages of a large store
    /// (users × per-user notifications), from 1 reader, then 16.
    List {
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        #[arg(long, default_value_t = 100)]
        per_user: u64,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// gRPC only, the inbox lifecycle at size: ListNotifications per view
    /// beside ListOffline over `users × per_user` rows, MarkAllNotifications
    /// on one big inbox, the expiry sweep, and the retention sweep over
    /// every row.
    Lifecycle {
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        #[arg(long, default_value_t = 100)]
        per_user: u64,
        /// Unread notifications of the one user marked all READ.
        #[arg(long, default_value_t = 100_000)]
        big_inbox: u64,
        /// Notifications due at one moment, over 1,000 users.
        #[arg(long, default_value_t = 10_000)]
        expiring: u64,
        /// Seconds per read measured.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Draws the sweep's charts again from a saved `sweep.json`.
    Chart {
        /// The JSON a sweep wrote.
        #[arg(long)]
        from: PathBuf,
    },
    /// For each bridge and socket count: memory when idle, then rising
    /// rates until p99 passes the limit. Draws the charts.
    Sweep {
        #[arg(long, value_enum, default_value = "both")]
        target: Targets,
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,20000")]
        sockets: Vec<usize>,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,2500,5000,10000,20000,30000,40000"
        )]
        rates: Vec<u64>,
        /// The p99 (ms) past which a bridge counts as saturated.
        #[arg(long, default_value_t = 50.0)]
        stop_p99_ms: f64,
        #[command(flatten)]
        offer: OfferArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every socket is a descriptor here and one in the bridge (which
    // inherits this limit).
    let limit = raise_open_file_limit(200_000)?;
    eprintln!("open-file limit {limit}");
    let output = Output::new(&cli.out)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli, output))
}

/// Raises the soft and, where allowed (root), the hard open-file limit to
/// `want`; otherwise the soft limit to the hard one.
fn raise_open_file_limit(want: u64) -> anyhow::Result<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    Ok(rlimit::increase_nofile_limit(want)?)
}

async fn run(cli: Cli, output: Output) -> anyhow::Result<()> {
    let (programs, ramp) = (&cli.programs, cli.ramp);
    match cli.scenario {
        Scenario::Idle { target, sockets } => {
            let mut rows = Vec::new();
            for target in target.list() {
                rows.extend(scenario::idle(programs, target, &sockets, ramp).await?);
            }
            output.write(
                "idle",
                &[(
                    "idle sockets, each its own user".into(),
                    scenario::idle_table(&rows),
                )],
                &json!({ "idle": rows }),
            )?;
            Ok(())
        }
        Scenario::Fanout {
            target,
            sockets,
            rate,
            offer,
        } => {
            let mut rows = Vec::new();
            for target in target.list() {
                let offer = offer_of(offer, sockets);
                let (_, phases) =
                    scenario::fanout(programs, target, sockets, &rate, offer, ramp, f64::INFINITY)
                        .await?;
                rows.extend(phases);
            }
            output.write(
                "fanout",
                &[(
                    format!("fanout over {sockets} sockets ({} per call)", offer.batch),
                    scenario::fanout_table(&rows),
                )],
                &json!({ "fanout": rows }),
            )?;
            check_all(&rows)
        }
        Scenario::Broadcast {
            target,
            recipients,
            rounds,
        } => {
            let mut rows = Vec::new();
            for target in target.list() {
                rows.extend(scenario::broadcast(programs, target, recipients, rounds, ramp).await?);
            }
            output.write(
                "broadcast",
                &[(
                    format!("broadcast to {recipients} connected recipients"),
                    scenario::broadcast_table(&rows),
                )],
                &json!({ "broadcast": rows }),
            )?;
            Ok(())
        }
        Scenario::Creates {
            concurrency,
            seconds,
            batch,
        } => {
            let report = scenario::creates(programs, &concurrency, seconds, batch).await?;
            let (sweep, ceiling) = scenario::creates_tables(&report);
            output.write(
                "creates",
                &[
                    (
                        format!(
                            "core creates/s, synchronous={}, {} recipient(s) per call",
                            report.synchronous, batch
                        ),
                        sweep,
                    ),
                    (
                        format!(
                            "raw SQLite ceiling, same disk, synchronous={} (core best = {:.2} of it)",
                            report.synchronous, report.fraction_of_ceiling
                        ),
                        ceiling,
                    ),
                ],
                &json!({ "creates": report }),
            )?;
            Ok(())
        }
        Scenario::Backends {
            setups,
            clients,
            seconds,
            rounds,
        } => {
            let rows = backends::run(programs, &setups, clients, seconds, rounds).await?;
            output.write(
                "backends",
                &[(
                    format!("creates by backend, {clients} clients ({rounds} rounds of {seconds} s, medians)"),
                    backends::table(&rows),
                )],
                &json!({ "backends": rows }),
            )?;
            Ok(())
        }
        Scenario::Scaleout {
            buses,
            cores,
            users,
            clients,
            seconds,
            rate,
        } => {
            let plan = scaleout::Plan {
                users,
                clients,
                seconds,
                rate,
            };
            let rows = scaleout::run(programs, &buses, &cores, plan).await?;
            output.write(
                "scaleout",
                &[(
                    format!("cores on one PostgreSQL, by bus: {clients} clients flat out, then {rate}/s steady, {users} streams ({seconds} s each)"),
                    scaleout::table(&rows),
                )],
                &json!({ "scaleout": rows }),
            )?;
            Ok(())
        }
        Scenario::Audience {
            stores,
            subscribers,
            streams,
            rate,
            due,
        } => {
            let plan = audience::Plan {
                stores,
                subscribers,
                streams,
                rate,
                due,
            };
            let (fanouts, dues) = audience::run(programs, &plan).await?;
            output.write(
                "audience",
                &[
                    (
                        format!("a topic's fan-out, {streams} subscribers streaming, {rate} ordinary creates/s beside it"),
                        audience::fanout_table(&fanouts),
                    ),
                    (
                        format!("{due} scheduled notifications due in the same second"),
                        audience::due_table(&dues),
                    ),
                ],
                &json!({ "fanouts": fanouts, "due": dues }),
            )?;
            Ok(())
        }
        Scenario::List {
            users,
            per_user,
            seconds,
        } => {
            let report = list::run(programs, users, per_user, seconds).await?;
            output.write(
                "list",
                &[(
                    format!(
                        "ListOffline, {} stored over {users} users, {seconds} s per phase",
                        report.stored
                    ),
                    list::table(&report),
                )],
                &json!({ "list": report }),
            )?;
            Ok(())
        }
        Scenario::Lifecycle {
            users,
            per_user,
            big_inbox,
            expiring,
            seconds,
        } => {
            let report =
                lifecycle::run(programs, users, per_user, big_inbox, expiring, seconds).await?;
            output.write(
                "lifecycle",
                &[
                    (
                        format!(
                            "reads, {} stored over {users} users, one reader, {seconds} s each",
                            report.stored
                        ),
                        lifecycle::reads_table(&report),
                    ),
                    (
                        "bulk operations and sweeps".to_owned(),
                        lifecycle::bulk_table(&report),
                    ),
                ],
                &json!({ "lifecycle": report }),
            )?;
            Ok(())
        }
        Scenario::Chart { from } => {
            #[derive(serde::Deserialize)]
            struct Saved {
                idle: Vec<IdleRow>,
                fanout: Vec<FanoutRow>,
            }
            let text = std::fs::read_to_string(&from)
                .with_context(|| format!("read {}", from.display()))?;
            let saved: Saved = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a sweep's JSON", from.display()))?;
            draw_charts(&output, &saved.idle, &saved.fanout)?;
            eprintln!("charts in {}", output.path("").display());
            Ok(())
        }
        Scenario::Sweep {
            target,
            sockets,
            rates,
            stop_p99_ms,
            offer,
        } => {
            let (mut idle, mut fanout, mut failed) = (Vec::new(), Vec::new(), Vec::new());
            for target in target.list() {
                for &count in &sockets {
                    // One step that cannot run (too few descriptors, a
                    // bridge that gives up) is reported, not fatal: the
                    // others still make the curves.
                    match scenario::fanout(
                        programs,
                        target,
                        count,
                        &rates,
                        offer_of(offer, count),
                        ramp,
                        stop_p99_ms,
                    )
                    .await
                    {
                        Ok((idle_row, phases)) => {
                            idle.extend(idle_row);
                            fanout.extend(phases);
                        }
                        Err(error) => {
                            eprintln!(
                                "sweep {} at {count} sockets failed: {error:#}",
                                target.name()
                            );
                            failed.push(format!("{} at {count} sockets: {error:#}", target.name()));
                        }
                    }
                }
            }
            let summary = summary_table(&idle, &fanout, stop_p99_ms);
            output.write(
                "sweep",
                &[
                    ("memory by sockets".into(), scenario::idle_table(&idle)),
                    (
                        format!("rising rate ({} recipients per call)", offer.batch),
                        scenario::fanout_table(&fanout),
                    ),
                    (
                        format!("ours against the peer (sustained = p99 ≤ {stop_p99_ms} ms)"),
                        summary,
                    ),
                ],
                &json!({ "idle": idle, "fanout": fanout }),
            )?;
            draw_charts(&output, &idle, &fanout)?;
            if !failed.is_empty() {
                bail!("sweep steps failed: {}", failed.join("; "));
            }
            check_all(&fanout)
        }
    }
}

fn offer_of(args: OfferArgs, users: usize) -> Offer {
    Offer {
        clients: args.clients,
        rate: 0,
        batch: args.batch.min(users),
        users: users as u64,
        seconds: args.seconds,
    }
}

/// Fails the run (after its results are written) if anything was lost.
fn check_all(rows: &[FanoutRow]) -> anyhow::Result<()> {
    let lost: Vec<String> = rows
        .iter()
        .filter_map(|row| scenario::check_delivery(row).err())
        .map(|e| e.to_string())
        .collect();
    if !lost.is_empty() {
        bail!("notifications lost: {}", lost.join("; "));
    }
    Ok(())
}

/// The best sustained throughput of one bridge at one socket count: the
/// highest delivered/s of a phase whose p99 stayed within the limit.
fn best_sustained(
    rows: &[FanoutRow],
    target: Target,
    sockets: usize,
    limit: f64,
) -> Option<&FanoutRow> {
    rows.iter()
        .filter(|r| r.target == target && r.sockets == sockets && r.latency.p99_ms <= limit)
        .max_by(|a, b| a.delivered_per_second.total_cmp(&b.delivered_per_second))
}

/// Ratios of ours to the peer at each socket count.
fn summary_table(idle: &[IdleRow], fanout: &[FanoutRow], limit: f64) -> Table {
    let mut table = Table::new(&[
        "sockets",
        "sustained delivered/s ours / peer",
        "ratio",
        "KiB per idle socket ours / peer",
        "ratio",
        "all-in KiB per user ours / peer",
        "ratio",
        "bridge CPU µs/notification ours / peer (same rate)",
        "ratio",
    ]);
    let mut counts: Vec<usize> = idle.iter().map(|r| r.sockets).collect();
    counts.sort_unstable();
    counts.dedup();
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        }
    };
    for sockets in counts {
        let memory = |target, all_in: bool| {
            idle.iter()
                .find(|r| r.target == target && r.sockets == sockets)
                .map(|r| {
                    let bytes = if all_in {
                        r.all_in_bytes_per_user
                    } else {
                        r.bytes_per_socket
                    };
                    bytes / 1024.0
                })
                .unwrap_or(0.0)
        };
        let best = |target| {
            best_sustained(fanout, target, sockets, limit)
                .map(|r| r.delivered_per_second)
                .unwrap_or(0.0)
        };
        // CPU per notification compared at the highest rate both sustained,
        // or, when the peer sustained none, at the lowest both ran.
        let pairs: Vec<(&FanoutRow, &FanoutRow)> = fanout
            .iter()
            .filter(|r| r.target == Target::Peer && r.sockets == sockets)
            .filter_map(|peer| {
                fanout
                    .iter()
                    .find(|r| {
                        r.target == Target::Ours
                            && r.sockets == sockets
                            && r.offered_rate == peer.offered_rate
                    })
                    .map(|ours| (ours, peer))
            })
            .collect();
        let both_at = pairs
            .iter()
            .filter(|(_, peer)| peer.latency.p99_ms <= limit)
            .max_by_key(|(_, peer)| peer.offered_rate)
            .or_else(|| pairs.iter().min_by_key(|(_, peer)| peer.offered_rate))
            .copied();
        let (cpu_ours, cpu_peer) = both_at
            .map(|(o, p)| (o.bridge_cpu_us_per_delivered, p.bridge_cpu_us_per_delivered))
            .unwrap_or((0.0, 0.0));
        let (mem_ours, mem_peer) = (memory(Target::Ours, false), memory(Target::Peer, false));
        let (all_ours, all_peer) = (memory(Target::Ours, true), memory(Target::Peer, true));
        let (best_ours, best_peer) = (best(Target::Ours), best(Target::Peer));
        table.row(vec![
            sockets.to_string(),
            format!("{best_ours:.0} / {best_peer:.0}"),
            ratio(best_ours, best_peer),
            format!("{mem_ours:.1} / {mem_peer:.1}"),
            ratio(mem_ours, mem_peer),
            format!("{all_ours:.1} / {all_peer:.1}"),
            ratio(all_ours, all_peer),
            format!("{cpu_ours:.1} / {cpu_peer:.1}"),
            ratio(cpu_ours, cpu_peer),
        ]);
    }
    table
}

fn draw_charts(output: &Output, idle: &[IdleRow], fanout: &[FanoutRow]) -> anyhow::Result<()> {
    let mut latency = Vec::new();
    let mut groups: Vec<(Target, usize)> = fanout.iter().map(|r| (r.target, r.sockets)).collect();
    groups.dedup();
    for (target, sockets) in groups {
        latency.push(Series {
            name: format!("{} · {sockets} sockets", target.name()),
            points: fanout
                .iter()
                .filter(|r| r.target == target && r.sockets == sockets)
                .map(|r| (r.delivered_per_second, r.latency.p99_ms))
                .collect(),
        });
    }
    line_chart(
        &output.path("sweep-latency.svg"),
        "p99 create→receive against delivered notifications/s, by bridge and sockets",
        "delivered notifications/s",
        "p99 ms (log scale)",
        &latency,
        true,
    )?;
    let memory: Vec<Series> = [Target::Ours, Target::Peer]
        .into_iter()
        .flat_map(|target| [(target, false), (target, true)])
        .map(|(target, all_in)| Series {
            name: if all_in {
                format!("{} bridge + core", target.name())
            } else {
                format!("{} bridge", target.name())
            },
            points: idle
                .iter()
                .filter(|r| r.target == target && (!all_in || r.core_baseline_bytes > 0))
                .map(|r| {
                    let core = if all_in { r.core_rss_bytes } else { 0 };
                    (
                        r.sockets as f64,
                        (r.bridge_rss_bytes + core) as f64 / 1_048_576.0,
                    )
                })
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    line_chart(
        &output.path("sweep-memory.svg"),
        "resident memory against idle sockets: the bridge, and bridge + core",
        "connected sockets",
        "RSS MiB",
        &memory,
        false,
    )?;
    Ok(())
}
