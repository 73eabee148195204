//! `lockstep-bench`: the measurements behind `scripts/bench` (issue 7).
//!
//! Every subcommand measures one figure *and its baseline in the same run* (the machine is shared
//! and noisy: ratios hold, absolute times do not) and prints its rows as JSON lines on stdout;
//! progress goes to stderr. `report` turns the collected lines into the table or a JSON array.
//!
//! Layout:
//! - [`row`]: the table row and the report.
//! - [`util`]: timing, percentiles, scratch directories, process memory.
//! - [`fixture`]: an in-process coordinator [`Service`](lockstep_coordinator::service::Service)
//!   with trusted builders, synthetic source packages and signed attestations.
//! - [`p1`] archive ingest, [`p2`] full rebuild vs a bare `docker run`, [`p3`] attestation
//!   throughput, [`p3b`] job dispatch, [`p4`] log proofs and storage, [`p5`] decision latency,
//!   [`p6`] stored bytes of identical rebuilds, [`p7`] coordinator memory.

#![forbid(unsafe_code)]

mod fixture;
mod p1;
mod p2;
mod p3;
mod p3b;
mod p4;
mod p5;
mod p6;
mod p7;
mod row;
mod util;

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Lockstep benchmarks, each beside its baseline (driven by scripts/bench)")]
struct Args {
    /// Smaller sizes for a smoke run.
    #[arg(long, global = true)]
    quick: bool,
    /// Scratch directory (on the filesystem the archive would use).
    #[arg(long, global = true, default_value = "target/bench-tmp")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P1: archive ingest vs sha256sum + cp + sync.
    P1,
    /// P2: full `hello` rebuild (enqueue -> attestation stored) vs a bare `docker run`.
    P2,
    /// P3: attestations verified + archived + logged + evaluated per second.
    P3,
    /// P3b: job dispatch over quorum queues at two queue depths.
    P3b,
    /// P4: inclusion and consistency proofs, log storage per entry.
    P4 {
        /// Also measure at 10^7 leaves (several minutes of setup).
        #[arg(long)]
        huge: bool,
    },
    /// P5: last attestation → decision received on the decisions exchange.
    P5,
    /// P6: stored bytes for N identical rebuilds.
    P6,
    /// P7: coordinator resident memory with many (source, version, arch) tracked.
    P7,
    /// Prints the rows collected in FILE (JSON lines) as a table, or as a JSON array.
    Report {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("lockstep-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // The measured components log through `tracing`; silent unless asked for, e.g.
    // LOCKSTEP_BENCH_LOG=lockstep_agent=info shows the agent's step timings in P2.
    if let Ok(filter) = std::env::var("LOCKSTEP_BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().context("scratch dir")?;
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")
    };
    match args.command {
        Command::P1 => p1::run(&dir, args.quick),
        Command::P2 => rt()?.block_on(p2::run(&dir, args.quick)),
        Command::P3 => p3::run(&dir, args.quick),
        Command::P3b => rt()?.block_on(p3b::run(&dir, args.quick)),
        Command::P4 { huge } => p4::run(&dir, args.quick, huge),
        Command::P5 => rt()?.block_on(p5::run(&dir, args.quick)),
        Command::P6 => p6::run(&dir, args.quick),
        Command::P7 => rt()?.block_on(p7::run(&dir, args.quick)),
        Command::Report { file, json } => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let mut rows = Vec::new();
            for line in std::io::BufReader::new(f).lines() {
                let line = line.context("reading rows")?;
                if line.trim_start().starts_with('{') {
                    rows.push(serde_json::from_str(&line).context("parsing a row")?);
                }
            }
            row::report(&rows, json);
            Ok(())
        }
    }
}
