//! The coordinator's web page: server-rendered HTML with inline CSS, no scripts, no external
//! assets, so it works offline and from a file saved by a browser.
//!
//! - `GET /`: packages with their state and quorum progress (k of n), trusted builders and their
//!   queues, agents with their phase and liveness, the log.
//! - `GET /packages/{source}/{version}/{arch}`: one package — state and reason, artifacts per
//!   builder side by side, evidence (signed `.buildinfo`, statement, build log, log leaf with an
//!   inclusion-proof link), failures with log tails, decision history.
//!
//! Every string that comes from data (package names, versions, reasons, log tails, agent names)
//! passes through [`esc`] before it reaches the page.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use lockstep_proto::v1::{FailureReport, State as QState, Statement, StatusEntry};

use crate::events::AgentView;
use crate::metrics::BrokerDepth;
use crate::service::{kind, Service, ServiceError};

/// Seconds between automatic reloads of the overview page.
const REFRESH_SECS: u32 = 30;

pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/packages/{source}/{version}/{arch}", get(package))
        .with_state(svc)
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one URL path segment (Debian versions may hold `:`, `+`, `~`).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn package_href(source: &str, version: &str, arch: &str) -> String {
    format!("/packages/{}/{}/{}", seg(source), seg(version), seg(arch))
}

const CSS: &str = r#"
:root{--fg:#1b1f24;--muted:#5b6470;--line:#d8dde3;--bg:#f6f8fa;--ship:#1a7f37;--hold:#cf222e;--pending:#9a6700;--failed:#6e7781}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff}
header{background:#24292f;color:#fff;padding:14px 24px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header a{color:#fff;text-decoration:none;font-weight:700;font-size:18px}
header span{color:#c9d1d9;font-size:13px}
main{padding:8px 24px 40px;max-width:1200px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--bg);font-size:13px;color:var(--muted);font-weight:600}
code,.fpr,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.fpr{word-break:break-all}
.state{display:inline-block;padding:1px 9px;border-radius:10px;color:#fff;font-weight:700;font-size:12px;letter-spacing:.04em;text-transform:uppercase}
.state.ship{background:var(--ship)}.state.hold{background:var(--hold)}.state.pending{background:var(--pending)}.state.failed{background:var(--failed)}
.state.live{background:var(--ship)}.state.stale{background:var(--hold)}
.muted{color:var(--muted)}
.quorum{display:inline-block;width:80px;height:8px;background:var(--line);border-radius:4px;vertical-align:middle;margin-left:6px;overflow:hidden}
.quorum i{display:block;height:100%;background:var(--ship)}
.differs td{background:#fff1f0}
td.diff{color:var(--hold);font-weight:700}
pre{background:var(--bg);border:1px solid var(--line);padding:8px;overflow:auto;max-height:320px;white-space:pre-wrap}
.cards{display:flex;gap:16px;flex-wrap:wrap;margin-top:14px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:22px}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px}
"#;

fn page(title: &str, svc: &Service, body: &str, refresh: bool) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{}\
         <title>{} — Lockstep</title><style>{CSS}</style></head><body>\
         <header><a href=\"/\">Lockstep</a><span>coordinator {} · key <span class=\"fpr\">{}</span></span></header>\
         <main>{body}</main></body></html>\n",
        if refresh {
            format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">")
        } else {
            String::new()
        },
        esc(title),
        esc(env!("CARGO_PKG_VERSION")),
        esc(&svc.key.fingerprint()),
    );
    s
}

fn state_badge(state: QState) -> String {
    format!("<span class=\"state {0}\">{0}</span>", esc(state.as_str()))
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn secs(s: i64) -> String {
    let s = s.max(0);
    if s < 120 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// Policy name of a fingerprint, if trusted.
fn builder_name(svc: &Service, fpr: &str) -> Option<String> {
    svc.policy()
        .builders
        .iter()
        .find(|b| b.fingerprint.eq_ignore_ascii_case(fpr))
        .map(|b| b.name.clone())
}

fn error_page(svc: &Service, e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "rendering a web page failed");
    }
    let body = format!(
        "<h2>{}</h2><p>{}</p><p><a href=\"/\">Back to all packages</a></p>",
        esc(status.canonical_reason().unwrap_or("Error")),
        esc(&e.to_string())
    );
    html(status, page("Error", svc, &body, false))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------- overview

/// Package rows one overview page lists; the cards count every package.
const PAGE_ROWS: usize = 500;

struct Overview {
    /// The rows of this page: packages `from + 1 ..= from + rows.len()` of `total`.
    rows: Vec<StatusEntry>,
    from: usize,
    total: usize,
    /// Packages per state, all pages.
    states: BTreeMap<&'static str, usize>,
    unconfirmed: u64,
    log_size: u64,
}

#[derive(serde::Deserialize)]
struct OverviewQuery {
    /// Packages skipped before this page's first row.
    from: Option<usize>,
}

async fn overview(State(svc): State<Arc<Service>>, Query(q): Query<OverviewQuery>) -> Response {
    let s = svc.clone();
    let from = q.from.unwrap_or(0);
    let data = tokio::task::spawn_blocking(move || -> Result<Overview, ServiceError> {
        // Row by row: at distribution scale the page holds one page of rows, not every package.
        let (mut rows, mut total, mut states) = (Vec::new(), 0, BTreeMap::new());
        s.status_each(None, |r| {
            *states.entry(r.state.as_str()).or_insert(0) += 1;
            if (from..from + PAGE_ROWS).contains(&total) {
                rows.push(r);
            }
            total += 1;
            Ok(())
        })?;
        Ok(Overview {
            rows,
            from,
            total,
            states,
            unconfirmed: s.jobs.count_unconfirmed()?,
            log_size: s.archive.log_size()?,
        })
    })
    .await
    .map_err(|e| ServiceError::Internal(anyhow::anyhow!("page task failed: {e}")));
    let data = match data.and_then(|d| d) {
        Ok(d) => d,
        Err(e) => return error_page(&svc, e),
    };
    let depth = svc.ops.broker_depth(&svc).await;
    let agents = svc.ops.agents.snapshot();
    html(
        StatusCode::OK,
        page(
            "Packages",
            &svc,
            &overview_body(&svc, &data, &depth, &agents),
            true,
        ),
    )
}

fn overview_body(svc: &Service, d: &Overview, depth: &BrokerDepth, agents: &[AgentView]) -> String {
    let now = Utc::now();
    let policy = svc.policy();
    let n_trusted = policy.builders.len();
    let mut b = String::new();
    let count = |st: QState| d.states.get(st.as_str()).copied().unwrap_or(0);
    let queued: u64 = depth.queues.iter().map(|(_, n)| u64::from(*n)).sum();
    let _ = write!(
        b,
        "<div class=\"cards\">\
         <div class=\"card\"><b>{}</b>packages</div>\
         <div class=\"card\"><b>{}</b>ship</div>\
         <div class=\"card\"><b>{}</b>hold</div>\
         <div class=\"card\"><b>{}</b>pending</div>\
         <div class=\"card\"><b>{}</b>failed</div>\
         <div class=\"card\"><b>{}</b>jobs not yet dispatched</div>\
         <div class=\"card\"><b>{}</b>jobs queued at the broker</div>\
         <div class=\"card\"><b>{}</b>log leaves</div></div>",
        d.total,
        count(QState::Ship),
        count(QState::Hold),
        count(QState::Pending),
        count(QState::Failed),
        d.unconfirmed,
        queued,
        d.log_size,
    );
    if let Some(e) = &depth.error {
        let _ = write!(
            b,
            "<p class=\"warn\">Queue depth unknown: {}. Is RabbitMQ running?</p>",
            esc(e)
        );
    }

    b.push_str("<h2>Packages</h2>");
    if !d.rows.is_empty() && (d.total > PAGE_ROWS || d.from > 0) {
        let _ = write!(
            b,
            "<p class=\"muted\">Packages {}–{} of {}",
            (d.from + 1).min(d.total),
            d.from + d.rows.len(),
            d.total
        );
        if d.from > 0 {
            let _ = write!(
                b,
                " · <a href=\"/?from={}\">previous {PAGE_ROWS}</a>",
                d.from.saturating_sub(PAGE_ROWS)
            );
        }
        if d.from + d.rows.len() < d.total {
            let _ = write!(
                b,
                " · <a href=\"/?from={}\">next {PAGE_ROWS}</a>",
                d.from + PAGE_ROWS
            );
        }
        b.push_str(" · all of them as JSON: <a href=\"/api/v1/status\">/api/v1/status</a></p>");
    }
    if d.total == 0 {
        b.push_str(
            "<p class=\"muted\">No packages yet. Enqueue one with <code>lockstep enqueue hello</code>.</p>",
        );
    } else if d.rows.is_empty() {
        let _ = write!(
            b,
            "<p class=\"muted\">No packages from number {} on: there are {}. \
             <a href=\"/\">First page</a></p>",
            d.from + 1,
            d.total
        );
    } else {
        b.push_str(
            "<table><tr><th>Package</th><th>Version</th><th>Arch</th><th>State</th>\
             <th>Quorum</th><th>Builders that attested</th><th>Decided</th></tr>",
        );
        for r in &d.rows {
            let k = r.builders.len();
            let pct = (k.min(r.threshold) * 100)
                .checked_div(r.threshold)
                .unwrap_or(100);
            let builders: Vec<String> = r
                .builders
                .iter()
                .map(|f| {
                    format!(
                        "{} <span class=\"fpr muted\">{}</span>",
                        esc(&builder_name(svc, f).unwrap_or_else(|| "untrusted".into())),
                        esc(f)
                    )
                })
                .collect();
            let failures = if r.failures.is_empty() {
                String::new()
            } else {
                format!(
                    "<br><span class=\"muted\">{} failure report(s)</span>",
                    r.failures.len()
                )
            };
            let _ = write!(
                b,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{k} of {} needed<span class=\"quorum\"><i style=\"width:{pct}%\"></i></span>\
                 <br><span class=\"muted\">{n_trusted} trusted builder(s)</span></td>\
                 <td>{}{failures}</td><td>{}</td></tr>",
                esc(&package_href(&r.source, &r.version, &r.arch)),
                esc(&r.source),
                esc(&r.version),
                esc(&r.arch),
                state_badge(r.state),
                r.threshold,
                if builders.is_empty() {
                    "<span class=\"muted\">none yet</span>".to_string()
                } else {
                    builders.join("<br>")
                },
                r.decided_at
                    .map(|t| esc(&t.format("%Y-%m-%d %H:%M:%S UTC").to_string()))
                    .unwrap_or_else(|| "<span class=\"muted\">—</span>".into()),
            );
        }
        b.push_str("</table>");
    }

    b.push_str("<h2>Agents</h2>");
    if agents.is_empty() {
        b.push_str(
            "<p class=\"muted\">No agent has sent a heartbeat since the coordinator started.</p>",
        );
    } else {
        b.push_str(
            "<table><tr><th>Agent</th><th>Fingerprint</th><th>Arch</th><th>Liveness</th>\
             <th>Last heartbeat</th><th>Working on</th></tr>",
        );
        for a in agents {
            let work = match &a.current {
                Some(j) => format!(
                    "{}{} <b>{}</b> for {} <span class=\"muted\">job {}</span>",
                    if a.stale { "held: " } else { "" },
                    esc(j.source.as_deref().unwrap_or("?")),
                    esc(j.phase.as_str()),
                    secs((now - j.phase_since).num_seconds()),
                    esc(&j.job_id)
                ),
                None => "<span class=\"muted\">idle</span>".into(),
            };
            let work = match &a.paused {
                Some(why) => format!("{work} · <b>not taking jobs</b>: {}", esc(why)),
                None => work,
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"fpr\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.name),
                esc(&a.fingerprint),
                esc(&a.architectures.join(" ")),
                if a.stale {
                    format!(
                        "<span class=\"state stale\">stale</span> <span class=\"muted\">no heartbeat for {}</span>",
                        secs((now - a.last_heartbeat).num_seconds())
                    )
                } else {
                    "<span class=\"state live\">live</span>".into()
                },
                esc(&ago(a.last_heartbeat, now)),
                work
            );
        }
        b.push_str("</table>");
    }

    b.push_str("<h2>Trusted builders</h2>");
    if policy.builders.is_empty() {
        b.push_str("<p class=\"warn\">The policy trusts no builder: nothing can ship. Add agents' public keys to the policy and run <code>lockstep reload-policy</code>.</p>");
    } else {
        let _ = write!(
            b,
            "<p class=\"muted\">Default threshold: {} signatures on the same bytes.</p>\
             <table><tr><th>Builder</th><th>Fingerprint</th><th>Queue</th><th>Jobs waiting</th></tr>",
            policy.default_threshold
        );
        for bl in &policy.builders {
            let q = lockstep_proto::v1::builder_queue(&bl.fingerprint);
            let n = depth
                .queues
                .iter()
                .find(|(name, _)| name == &q)
                .map_or("?".to_string(), |(_, n)| n.to_string());
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"fpr\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&bl.name),
                esc(&bl.fingerprint),
                esc(&q),
                esc(&n)
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(
        b,
        "<h2>Transparency log</h2><p>{} leaves. <a href=\"/log/checkpoint\">Latest checkpoint</a> · \
         <a href=\"/api/v1/log\">verifier key and origin</a> · <a href=\"/metrics\">metrics</a></p>",
        d.log_size
    );
    b
}

// ---------------------------------------------------------------------------------- one package

struct Attested {
    fingerprint: String,
    leaf_index: u64,
    recorded: DateTime<Utc>,
    statement: Option<Statement>,
    statement_text: String,
    buildinfo: Option<String>,
    log: Option<String>,
}

struct Detail {
    status: StatusEntry,
    attestations: Vec<Attested>,
    failures: Vec<(u64, FailureReport)>,
    decisions: Vec<(u64, lockstep_proto::v1::Decision)>,
    log_size: u64,
}

fn detail(svc: &Service, source: &str, version: &str, arch: &str) -> Result<Detail, ServiceError> {
    let status = svc
        .status(Some(source))?
        .into_iter()
        .find(|r| r.version == version && r.arch == arch)
        .ok_or_else(|| {
            ServiceError::NotFound(format!(
                "no package {source} {version} {arch}: enqueue it with `lockstep enqueue {source}={version}`, or pick one from the list"
            ))
        })?;
    let records = svc.archive.records_for(source, version, arch, None)?;
    let mut attestations = Vec::new();
    let mut failures = Vec::new();
    let mut decision_leaves = Vec::new();
    for r in &records {
        match r.kind.as_str() {
            kind::ATTESTATION => {
                let blob = |role: &str| {
                    r.blobs
                        .iter()
                        .find(|b| b.role == role)
                        .map(|b| b.sha256.to_hex())
                };
                attestations.push(Attested {
                    fingerprint: r.signer.clone().unwrap_or_default(),
                    leaf_index: r.leaf_index,
                    recorded: r.created_at,
                    statement: serde_json::from_slice(&r.body).ok(),
                    statement_text: String::from_utf8_lossy(&r.body).into_owned(),
                    buildinfo: blob("buildinfo"),
                    log: blob("log"),
                });
            }
            kind::FAILURE => {
                if let Ok(f) = serde_json::from_slice::<FailureReport>(&r.body) {
                    failures.push((r.leaf_index, f));
                }
            }
            kind::DECISION => decision_leaves.push(r.leaf_index),
            _ => {}
        }
    }
    let decisions = decision_leaves
        .into_iter()
        .zip(
            svc.decisions(source, version, arch)?
                .into_iter()
                .map(|(d, _)| d),
        )
        .collect();
    Ok(Detail {
        status,
        attestations,
        failures,
        decisions,
        log_size: svc.archive.log_size()?,
    })
}

async fn package(
    State(svc): State<Arc<Service>>,
    Path((source, version, arch)): Path<(String, String, String)>,
) -> Response {
    let s = svc.clone();
    let (src, ver, ar) = (source.clone(), version.clone(), arch.clone());
    let d = tokio::task::spawn_blocking(move || detail(&s, &src, &ver, &ar))
        .await
        .map_err(|e| ServiceError::Internal(anyhow::anyhow!("page task failed: {e}")))
        .and_then(|r| r);
    match d {
        Ok(d) => html(
            StatusCode::OK,
            page(
                &format!("{source} {version} {arch}"),
                &svc,
                &package_body(&svc, &d),
                false,
            ),
        ),
        Err(e) => error_page(&svc, e),
    }
}

fn inclusion_href(index: u64, size: u64) -> String {
    format!("/api/v1/proof/inclusion?index={index}&amp;size={size}")
}

fn package_body(svc: &Service, d: &Detail) -> String {
    let r = &d.status;
    let mut b = String::new();
    let _ = write!(
        b,
        "<h2 style=\"border:0;font-size:22px\">{} {} {} {}</h2>\
         <p>{}</p><p>Quorum: <b>{} of {}</b> trusted signatures on the same bytes \
         ({} trusted builder(s) in the policy).</p>",
        esc(&r.source),
        esc(&r.version),
        esc(&r.arch),
        state_badge(r.state),
        esc(&r.reason),
        r.builders.len(),
        r.threshold,
        svc.policy().builders.len(),
    );

    // Artifacts per builder, side by side.
    b.push_str("<h2>Artifacts by builder</h2>");
    let stmts: Vec<&Attested> = d
        .attestations
        .iter()
        .filter(|a| a.statement.is_some())
        .collect();
    if stmts.is_empty() {
        b.push_str("<p class=\"muted\">No attestation yet.</p>");
    } else {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for a in &stmts {
            if let Some(st) = &a.statement {
                names.extend(st.artifacts.iter().map(|x| x.name.clone()));
            }
        }
        b.push_str("<table><tr><th>Artifact</th>");
        for a in &stmts {
            let _ = write!(
                b,
                "<th>{}<br><span class=\"fpr\">{}</span></th>",
                esc(&builder_name(svc, &a.fingerprint).unwrap_or_else(|| "untrusted".into())),
                esc(&a.fingerprint)
            );
        }
        b.push_str("</tr>");
        let mut any_differs = false;
        for name in &names {
            let cells: Vec<Option<String>> = stmts
                .iter()
                .map(|a| {
                    a.statement.as_ref().and_then(|st| {
                        st.artifacts
                            .iter()
                            .find(|x| &x.name == name)
                            .map(|x| x.sha256.to_hex())
                    })
                })
                .collect();
            let distinct: BTreeSet<&Option<String>> = cells.iter().collect();
            let differs = distinct.len() > 1;
            any_differs |= differs;
            let _ = write!(
                b,
                "<tr{}><td><code>{}</code>{}</td>",
                if differs { " class=\"differs\"" } else { "" },
                esc(name),
                if differs { "<br><b>differs</b>" } else { "" }
            );
            for c in &cells {
                match c {
                    Some(h) => {
                        let _ = write!(
                            b,
                            "<td class=\"fpr{}\"><a href=\"/api/v1/blobs/{}\" title=\"{}\">{}…</a></td>",
                            if differs { " diff" } else { "" },
                            esc(h),
                            esc(h),
                            esc(&h[..16.min(h.len())])
                        );
                    }
                    None => b.push_str("<td class=\"diff\">missing</td>"),
                }
            }
            b.push_str("</tr>");
        }
        b.push_str("</table>");
        if any_differs {
            let _ = write!(
                b,
                "<p class=\"warn\">Builders produced different bytes. \
                 <a href=\"/api/v1/diff/{}/{}/{}\">What differs inside the .debs</a> \
                 (or <code>lockstep diff {} {} {}</code>).</p>",
                seg(&r.source),
                seg(&r.version),
                seg(&r.arch),
                esc(&r.source),
                esc(&r.version),
                esc(&r.arch)
            );
        } else {
            b.push_str(
                "<p class=\"muted\">Every builder that attested produced identical artifacts.</p>",
            );
        }
    }

    // Evidence.
    b.push_str("<h2>Evidence</h2>");
    if d.attestations.is_empty() {
        b.push_str("<p class=\"muted\">No signed evidence yet.</p>");
    } else {
        b.push_str(
            "<table><tr><th>Builder</th><th>Recorded</th><th>Signed .buildinfo</th>\
             <th>Build log</th><th>Log leaf</th></tr>",
        );
        for a in &d.attestations {
            let link = |d: &Option<String>, label: &str| match d {
                Some(h) => format!("<a href=\"/api/v1/blobs/{}\">{label}</a>", esc(h)),
                None => "<span class=\"muted\">—</span>".into(),
            };
            let _ = write!(
                b,
                "<tr><td>{}<br><span class=\"fpr muted\">{}</span></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>#{} · <a href=\"{}\">inclusion proof</a></td></tr>\
                 <tr><td colspan=\"5\"><details><summary>Signed statement</summary><pre>{}</pre></details></td></tr>",
                esc(&builder_name(svc, &a.fingerprint).unwrap_or_else(|| "untrusted".into())),
                esc(&a.fingerprint),
                esc(&a.recorded.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                link(&a.buildinfo, "clearsigned .buildinfo"),
                link(&a.log, "build log"),
                a.leaf_index,
                inclusion_href(a.leaf_index, d.log_size),
                esc(&pretty(&a.statement_text)),
            );
        }
        b.push_str("</table>");
    }

    // Failures.
    if !d.failures.is_empty() {
        b.push_str("<h2>Failures</h2>");
        for (leaf, f) in &d.failures {
            let _ = write!(
                b,
                "<p><b>{}</b> <span class=\"fpr muted\">{}</span>: {} — {} \
                 <span class=\"muted\">({}, log leaf #{})</span>{}</p><pre>{}</pre>",
                esc(&f.builder.name),
                esc(&f.builder.fingerprint),
                esc(&f.kind),
                esc(&f.reason),
                esc(&f.at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                leaf,
                f.build_log
                    .map(|l| format!(
                        " · <a href=\"/api/v1/blobs/{}\">full build log</a>",
                        esc(&l.to_hex())
                    ))
                    .unwrap_or_default(),
                esc(&f.log_tail),
            );
        }
    }

    // Decision history.
    b.push_str("<h2>Decision history</h2>");
    if d.decisions.is_empty() {
        b.push_str("<p class=\"muted\">No decision yet: the package is pending until enough builders attest or one of them disagrees.</p>");
    } else {
        b.push_str(
            "<table><tr><th>Decided</th><th>State</th><th>Reason</th><th>Counted</th><th>Log leaf</th></tr>",
        );
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        for (leaf, dec) in d.decisions.iter().rev() {
            let counted: Vec<String> = dec
                .counted
                .iter()
                .map(|f| {
                    let n = names
                        .entry(f.clone())
                        .or_insert_with(|| builder_name(svc, f).unwrap_or_else(|| "?".into()));
                    format!("{} <span class=\"fpr muted\">{}</span>", esc(n), esc(f))
                })
                .collect();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>#{} · <a href=\"{}\">inclusion proof</a></td></tr>",
                esc(&dec.decided_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                state_badge(dec.state),
                esc(&dec.reason),
                if dec.dissenters.is_empty() {
                    String::new()
                } else {
                    format!("<br>dissenters: <span class=\"fpr\">{}</span>", esc(&dec.dissenters.join(", ")))
                },
                if counted.is_empty() { "—".into() } else { counted.join("<br>") },
                leaf,
                inclusion_href(*leaf, d.log_size),
            );
        }
        b.push_str("</table>");
        let _ = write!(
            b,
            "<p class=\"muted\">Check the coordinator's signatures with <code>lockstep decision {} {} {}</code>.</p>",
            esc(&r.source),
            esc(&r.version),
            esc(&r.arch)
        );
    }
    b.push_str("<p><a href=\"/\">← All packages</a></p>");
    b
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_data_is_escaped_and_path_segments_are_encoded() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(
            package_href("g++", "1:2.0~rc1", "amd64"),
            "/packages/g%2B%2B/1%3A2.0~rc1/amd64"
        );
    }
}
