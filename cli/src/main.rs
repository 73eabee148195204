//! `lockstep`: the command line for operators (enqueue, status, decisions), developers and
//! auditors. It talks to the coordinator over HTTP; the coordinator is found from
//! `--coordinator URL` or `LOCKSTEP_COORDINATOR` (default `http://127.0.0.1:8440`).
//!
//! Exit codes: 0 success; 1 error (message on stderr); 2 usage error; 3 with `--wait`, at least
//! one package ended `hold` or `failed` (`diff`: artifacts differ; `agents`: an agent is stale);
//! 4 a signature or verification check failed.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lockstep_proto::digest::hash_file;
use lockstep_proto::signing::Keyring;
use lockstep_proto::v1::{Decision, EnqueueRequest, EnqueueResponse, State, StatusEntry};

mod agents;
mod aptsource;
mod diff;
mod http;
mod lookup;
mod progress;
mod proof;
mod suite;
mod upload;
mod verify;
mod witness;
use http::Api;

/// How often `--wait` polls the coordinator.
const WAIT_POLL: Duration = Duration::from_secs(2);

const EXIT_HELD: u8 = 3;
const EXIT_VERIFY: u8 = 4;

/// `--help` description, man-page style.
const LONG_ABOUT: &str = "Lockstep: rebuild every binary independently, ship only what a quorum of signed builders agree on.

The command line for operators (enqueue, status, agents, decisions, diffs), developers (upload a
signed .changes) and auditors (verify the archive and log, fetch proofs). It talks to the
coordinator over HTTP, found from --coordinator URL or LOCKSTEP_COORDINATOR. Read commands take
--json for machine-readable output.";

/// Shown after the options by `--help`.
const AFTER_HELP: &str = "EXAMPLES:
  lockstep enqueue --wait hello              rebuild hello and watch each agent's phases
  lockstep enqueue --from-file list.txt      enqueue many packages, one per line
  lockstep status hello --json               state, builders and artifacts, as JSON
  lockstep agents                            connected agents, their phase and last heartbeat
  lockstep decision hello 2.10-3 amd64       the signed decisions, signatures checked
  lockstep diff hello 2.10-3 amd64           what differs between builders
  lockstep verify                            check every blob and the log

EXIT STATUS:
  0 success; 1 error (stderr says what and what to do); 2 usage error;
  3 `enqueue --wait`: a package ended hold or failed; `diff`: artifacts differ;
    `agents`: an agent is stale;
  4 a signature or verification check failed.

SEE ALSO: lockstep-coordinator(1), lockstep-agent(1), docs/operations.md";

/// Lockstep: rebuild every binary independently, ship only what a quorum of signed builders agree on.
#[derive(Parser)]
#[command(version, about, long_about = LONG_ABOUT, after_long_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    /// Coordinator base URL.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_COORDINATOR",
        default_value = "http://127.0.0.1:8440"
    )]
    coordinator: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enqueue rebuilds of source packages from the configured apt sources, or of a local .dsc.
    ///
    /// PACKAGE is `name` (the newest version apt knows) or `name=version`. Packages can also be
    /// read one per line from a file (`--from-file FILE`, `-` for standard input).
    Enqueue {
        packages: Vec<String>,
        /// A local source package: the .dsc and the files it lists, next to it.
        #[arg(long, value_name = "PATH")]
        dsc: Option<PathBuf>,
        /// Read package names from FILE, one per line (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Enqueue every source package of SUITE from the configured apt sources (e.g. bookworm).
        #[arg(long, value_name = "SUITE", conflicts_with_all = ["dsc", "wait"])]
        suite: Option<String>,
        /// With --suite: only sources of this section (e.g. `misc`, `utils`).
        #[arg(long, requires = "suite")]
        section: Option<String>,
        /// With --suite: at most this many sources.
        #[arg(long, requires = "suite")]
        limit: Option<usize>,
        /// With --suite: only sources uploaded on or after DATE (YYYY-MM-DD), by the date of their
        /// newest debian/changelog entry.
        #[arg(long, requires = "suite", value_name = "DATE")]
        since: Option<String>,
        /// Build again even if a job for the same version exists.
        #[arg(long)]
        rebuild: bool,
        /// Wait until every package has a decision; show progress while waiting.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Print the enqueue result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// How much of what was checked reproduces the distribution's own binaries, by suite and
    /// architecture.
    Summary {
        #[arg(long)]
        json: bool,
    },
    /// Show the state of packages: pending, ship, hold or failed.
    Status {
        source: Option<String>,
        /// JSON array, one object per (source, version, arch).
        #[arg(long)]
        json: bool,
    },
    /// Show the decisions for one package and verify the coordinator's signature on each.
    Decision {
        source: String,
        /// Version; every version the coordinator tracks for SOURCE when omitted.
        // Not `version`: that id is the --version flag every subcommand gets.
        #[arg(id = "package_version", value_name = "VERSION")]
        version: Option<String>,
        /// Architecture; every architecture of that version when omitted.
        arch: Option<String>,
        /// Verify with this coordinator certificate instead of fetching it from the coordinator.
        #[arg(long, value_name = "FILE")]
        keyring: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the transparency log's base URL and checkpoint verifier key.
    LogInfo {
        #[arg(long)]
        json: bool,
    },
    /// Ask the coordinator to reload its policy file.
    ReloadPolicy,
    /// Audit the archive and the transparency log: exit 0 only if all is well, 4 if not.
    ///
    /// Checks the latest checkpoint's signature, recomputes the tree from the served leaves,
    /// checks consistency with a saved checkpoint (--since) and asks the coordinator to re-hash
    /// every blob; or, with --data-dir, audits an archive on local disk read-only.
    Verify(verify::Args),
    /// Fetch and verify inclusion and consistency proofs against the signed checkpoint.
    #[command(subcommand)]
    Proof(proof::Cmd),
    /// Run a log witness: check each new checkpoint and cosign it, or refuse and keep evidence.
    Witness(witness::Args),
    /// Upload a developer-signed .changes with the files it lists, as evidence.
    Upload {
        /// The clearsigned .changes; the files it lists are read from the same directory.
        changes: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Which records (packages, builders, developer uploads) reference some bytes, or a key.
    Lookup {
        /// SHA-256 of a blob (e.g. a .deb).
        sha256: Option<String>,
        /// Records signed by this key fingerprint instead.
        #[arg(long, value_name = "FPR", conflicts_with = "sha256")]
        builder: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Key history: which builder, developer and witness keys the policy trusted when.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Show which builders produced which bytes for one package, and what differs inside .debs.
    ///
    /// Exits 0 when every builder agreed, 3 when some artifact differs.
    Diff {
        source: String,
        // Not `version`: that id is the --version flag every subcommand gets.
        #[arg(id = "package_version", value_name = "VERSION")]
        version: String,
        arch: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the repository key to FILE and print the apt sources line for shipped packages.
    AptSource {
        /// Where to write the coordinator's public key (binary, for apt's signed-by).
        #[arg(long, value_name = "FILE")]
        keyring: PathBuf,
    },
    /// List agents: name, fingerprint, architectures, last heartbeat, current job and phase.
    ///
    /// An agent is STALE after three missed heartbeats (45 s by default); the job it held is
    /// shown so it can be checked. Exits 0 when every agent is live, 3 when any is stale.
    Agents {
        /// JSON array, one object per agent (as `GET /api/v1/agents`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Every trusted set the policy had, from the `policy` records in the log.
    History {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockstep: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockstep: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let api = Api::new(&cli.coordinator)?;
    match cli.command {
        Cmd::Enqueue {
            packages,
            dsc,
            from_file,
            suite,
            section,
            limit,
            since,
            rebuild,
            wait,
            timeout,
            json,
        } => {
            if let Some(suite) = suite {
                if !packages.is_empty() || from_file.is_some() {
                    bail!("give either --suite or package names, not both");
                }
                return suite::enqueue_suite(
                    &api,
                    &suite,
                    section.as_deref(),
                    limit,
                    since.as_deref(),
                    rebuild,
                    json,
                )
                .await;
            }
            let mut packages = packages;
            if let Some(f) = from_file {
                packages.extend(read_package_list(&f)?);
            }
            let resp = match dsc {
                Some(path) => {
                    if !packages.is_empty() {
                        bail!("give either --dsc or package names, not both");
                    }
                    enqueue_dsc(&api, &path, rebuild).await?
                }
                None => {
                    if packages.is_empty() {
                        bail!("nothing to enqueue: name at least one package (e.g. `lockstep enqueue hello`)");
                    }
                    api.post_json_lenient("/api/v1/jobs", &EnqueueRequest { packages, rebuild })
                        .await?
                }
            };
            if json && !wait {
                println!("{}", serde_json::to_string_pretty(&resp)?);
            } else {
                for j in &resp.jobs {
                    println!(
                        "{} {} {} {}  job {}",
                        if j.created { "enqueued" } else { "exists  " },
                        j.source,
                        j.version,
                        j.arch,
                        j.job_id
                    );
                }
            }
            for e in &resp.errors {
                eprintln!("lockstep: {}: {}", e.package, e.error);
            }
            if resp.jobs.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
            if wait {
                let keys: Vec<(String, String, String)> = resp
                    .jobs
                    .iter()
                    .map(|j| (j.source.clone(), j.version.clone(), j.arch.clone()))
                    .collect();
                let rows = wait_for(&api, &keys, Duration::from_secs(timeout)).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print_status(&rows);
                }
                if rows.iter().any(|r| r.state != State::Ship) {
                    return Ok(ExitCode::from(EXIT_HELD));
                }
            }
            if !resp.errors.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Summary { json } => suite::summary(&api, json).await,
        Cmd::Status { source, json } => {
            let path = match &source {
                Some(s) => format!("/api/v1/status?source={}", s.replace('+', "%2B")),
                None => "/api/v1/status".into(),
            };
            let rows: Vec<StatusEntry> = api.get_json(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!(
                    "no packages{}",
                    source.map(|s| format!(" named {s}")).unwrap_or_default()
                );
            } else {
                print_status(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Decision {
            source,
            version,
            arch,
            keyring,
            json,
        } => {
            let cert = match keyring {
                Some(f) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
                None => api.get_bytes("/api/v1/keys/coordinator").await?,
            };
            let mut ring = Keyring::new();
            for c in Keyring::parse_certs(&cert).context("reading the coordinator certificate")? {
                ring.add(c);
            }
            let keys: Vec<(String, String)> = match (version, arch) {
                (Some(v), Some(a)) => vec![(v, a)],
                (v, a) => {
                    let rows: Vec<StatusEntry> = api
                        .get_json(&format!(
                            "/api/v1/status?source={}",
                            source.replace('+', "%2B")
                        ))
                        .await?;
                    rows.into_iter()
                        .filter(|r| v.as_ref().is_none_or(|v| v == &r.version))
                        .filter(|r| a.as_ref().is_none_or(|a| a == &r.arch))
                        .map(|r| (r.version, r.arch))
                        .collect()
                }
            };
            let mut list: Vec<serde_json::Value> = Vec::new();
            for (version, arch) in &keys {
                list.extend(
                    api.get_json::<Vec<serde_json::Value>>(&format!(
                        "/api/v1/decisions/{source}/{version}/{arch}"
                    ))
                    .await?,
                );
            }
            if list.is_empty() {
                bail!("no decision recorded for {source} (yet); `lockstep status` lists what is tracked");
            }
            let mut all_ok = true;
            let mut out = Vec::new();
            for item in &list {
                let canonical = item["canonical"].as_str().unwrap_or_default();
                let sig = item["signature"].as_str().unwrap_or_default();
                let verified = ring.verify_detached(canonical.as_bytes(), sig.as_bytes());
                let d: Decision = serde_json::from_str(canonical).context("decoding a decision")?;
                all_ok &= verified.is_ok();
                out.push((d, verified));
            }
            if json {
                let v: Vec<_> = out
                    .iter()
                    .map(|(d, v)| serde_json::json!({"decision": d, "signature_valid": v.is_ok(), "signed_by": v.as_ref().ok().map(|v| v.fingerprint.clone())}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (d, v) in &out {
                    println!(
                        "{} {} {}: {}",
                        d.source,
                        d.version,
                        d.arch,
                        d.state.as_str().to_uppercase()
                    );
                    println!("  decided   {}", d.decided_at.to_rfc3339());
                    println!("  reason    {}", d.reason);
                    println!("  threshold {}", d.threshold);
                    for f in &d.counted {
                        println!("  counted   {f}");
                    }
                    for f in &d.dissenters {
                        println!("  dissenter {f}");
                    }
                    for a in &d.artifacts {
                        println!("  artifact  {}  {}", a.sha256, a.name);
                    }
                    match v {
                        Ok(v) => println!("  signature good (coordinator {})", v.fingerprint),
                        Err(e) => println!("  signature BAD: {e}"),
                    }
                }
            }
            if !all_ok {
                return Ok(ExitCode::from(EXIT_VERIFY));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LogInfo { json } => {
            let info: serde_json::Value = api.get_json("/api/v1/log").await?;
            let base = format!("{}/log/", api.base());
            if json {
                let mut v = info.clone();
                v["base_url"] = serde_json::Value::String(base);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("base URL      {base}");
                println!(
                    "verifier key  {}",
                    info["verifier_key"].as_str().unwrap_or("")
                );
                println!("origin        {}", info["origin"].as_str().unwrap_or(""));
                println!("size          {}", info["size"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Diff {
            source,
            version,
            arch,
            json,
        } => {
            if diff::run(&api, &source, &version, &arch, json).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(EXIT_HELD))
            }
        }
        Cmd::AptSource { keyring } => {
            aptsource::run(&api, &keyring).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agents { json } => {
            if agents::run(&api, json).await? > 0 {
                Ok(ExitCode::from(EXIT_HELD))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Cmd::Verify(args) => verify::run(&api, args).await,
        Cmd::Proof(cmd) => proof::run(&api, cmd).await,
        Cmd::Witness(args) => witness::run(&api, args).await,
        Cmd::Upload { changes, json } => upload::run(&api, &changes, json).await,
        Cmd::Lookup {
            sha256,
            builder,
            json,
        } => lookup::run(&api, sha256, builder, json).await,
        Cmd::Keys(KeysCmd::History { json }) => lookup::history(&api, json).await,
        Cmd::ReloadPolicy => {
            let v: serde_json::Value = api
                .post_json("/api/v1/policy/reload", &serde_json::json!({}))
                .await?;
            println!(
                "policy reloaded: {} trusted builder(s), default threshold {}",
                v["builders"].as_array().map_or(0, |a| a.len()),
                v["default_threshold"]
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_package_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
    } else {
        text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Uploads a local source package (the .dsc and its files) and enqueues it.
async fn enqueue_dsc(api: &Api, path: &Path, rebuild: bool) -> anyhow::Result<EnqueueResponse> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = lockstep_proto::dsc::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a source package: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    // Check everything locally before uploading anything.
    for f in &parsed.files {
        let fp = dir.join(&f.name);
        let (d, n) = hash_file(&fp).with_context(|| {
            format!(
                "{} lists {}, which is missing next to it",
                path.display(),
                f.name
            )
        })?;
        if d != f.sha256 || n != f.size {
            bail!(
                "{}: SHA-256 {d} ({n} bytes) does not match the .dsc's {} ({} bytes); the source package is corrupt",
                f.name,
                f.sha256,
                f.size
            );
        }
    }
    // The source files and the .dsc itself, in one batch: stored all together or not at all.
    let dsc_digest = lockstep_proto::Sha256Digest::of(&bytes);
    let mut blobs: Vec<(lockstep_proto::Sha256Digest, http::Upload)> = parsed
        .files
        .iter()
        .map(|f| (f.sha256, http::Upload::File(dir.join(&f.name))))
        .collect();
    blobs.push((dsc_digest, http::Upload::Bytes(bytes)));
    api.put_blobs(blobs).await?;
    api.post_json(
        "/api/v1/jobs/dsc",
        &serde_json::json!({ "dsc_sha256": dsc_digest, "rebuild": rebuild }),
    )
    .await
}

/// Polls until every key has a terminal state; prints progress lines as states change.
async fn wait_for(
    api: &Api,
    keys: &[(String, String, String)],
    timeout: Duration,
) -> anyhow::Result<Vec<StatusEntry>> {
    let started = Instant::now();
    let mut display = progress::Display::new(std::io::stderr().is_terminal());
    loop {
        let mut rows = Vec::new();
        for (s, _, _) in keys {
            let all: Vec<StatusEntry> = api
                .get_json(&format!("/api/v1/status?source={}", s.replace('+', "%2B")))
                .await?;
            rows.extend(all.into_iter().filter(|r| {
                keys.iter()
                    .any(|(ks, kv, ka)| ks == &r.source && kv == &r.version && ka == &r.arch)
            }));
        }
        rows.sort_by(|a, b| {
            (&a.source, &a.version, &a.arch).cmp(&(&b.source, &b.version, &b.arch))
        });
        rows.dedup_by(|a, b| a.source == b.source && a.version == b.version && a.arch == b.arch);
        display.update(api, &rows).await;
        if rows.len() >= keys.len() && rows.iter().all(|r| r.state != State::Pending) {
            return Ok(rows);
        }
        if started.elapsed() > timeout {
            bail!(
                "gave up waiting after {}s; the jobs continue (see `lockstep status`)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn print_status(rows: &[StatusEntry]) {
    for r in rows {
        println!(
            "{:<20} {:<16} {:<6} {:<8} {} of {} — {}",
            r.source,
            r.version,
            r.arch,
            r.state,
            r.builders.len(),
            r.threshold,
            r.reason
        );
        for b in &r.builders {
            println!("    builder  {b}");
        }
        for a in &r.artifacts {
            println!("    artifact {}  {}", a.sha256, a.name);
        }
        if let Some(o) = &r.official {
            println!("    official {}", o.verdict.as_str());
            for a in &o.artifacts {
                let short = |d: &Option<lockstep_proto::Sha256Digest>| {
                    d.map_or("-".to_string(), |d| d.to_hex()[..16].to_string())
                };
                println!(
                    "             {:<13} {}  rebuilt {}  official {}",
                    a.result,
                    a.name,
                    short(&a.rebuilt),
                    short(&a.official)
                );
            }
        }
        for f in &r.failures {
            println!("    failure  {} {}: {}", f.builder, f.kind, f.reason);
            for line in f
                .log_tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("             | {line}");
            }
        }
    }
}
