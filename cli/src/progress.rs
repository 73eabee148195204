//! The progress display of `lockstep enqueue --wait`: per package its state and quorum, and
//! under it each agent's phase for that package's job with elapsed times.
//!
//! On a terminal the block is redrawn in place (ANSI cursor-up and clear); otherwise (a pipe, a
//! log file, CI) a plain line is printed only when something changed, prefixed with the seconds
//! since the wait began, so logs stay short and greppable.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use chrono::Utc;
use lockstep_proto::v1::StatusEntry;
use serde::Deserialize;

use crate::agents::human;
use crate::http::Api;

/// One (agent, job) phase from `GET /api/v1/progress?source=..`.
#[derive(Clone, Debug, Deserialize)]
pub struct ProgressRow {
    pub agent: String,
    pub stale: bool,
    pub job_id: String,
    pub phase: String,
    pub phase_secs: i64,
    pub elapsed_secs: i64,
}

pub struct Display {
    tty: bool,
    started: Instant,
    /// Lines drawn last time (terminal mode).
    drawn: usize,
    /// Last printed text per line key, without times (plain mode).
    printed: BTreeMap<String, String>,
}

impl Display {
    pub fn new(tty: bool) -> Display {
        Display {
            tty,
            started: Instant::now(),
            drawn: 0,
            printed: BTreeMap::new(),
        }
    }

    /// Fetches agent phases for `rows` and shows them. Progress is a nicety: if the coordinator
    /// cannot say, the package lines are still shown.
    pub async fn update(&mut self, api: &Api, rows: &[StatusEntry]) {
        let mut sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
        sources.sort();
        sources.dedup();
        let mut phases: Vec<ProgressRow> = Vec::new();
        for s in sources {
            let path = format!("/api/v1/progress?source={}", s.replace('+', "%2B"));
            if let Ok(p) = api.get_json::<Vec<ProgressRow>>(&path).await {
                phases.extend(p);
            }
        }
        let lines = lines(rows, &phases);
        self.show(&lines);
    }

    fn show(&mut self, lines: &[(String, String, String)]) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let t = human(self.started.elapsed().as_secs() as i64);
            if self.drawn > 0 {
                let _ = write!(err, "\x1b[{}A\x1b[J", self.drawn);
            }
            let _ = writeln!(err, "waiting {t}  (Ctrl-C stops waiting; the jobs go on)");
            for (_, text, times) in lines {
                let _ = writeln!(err, "{text}{times}");
            }
            self.drawn = lines.len() + 1;
        } else {
            let t = self.started.elapsed().as_secs();
            for (key, text, times) in lines {
                if self.printed.get(key) != Some(text) {
                    let _ = writeln!(err, "{t}s {}{times}", text.trim_start());
                    self.printed.insert(key.clone(), text.clone());
                }
            }
        }
        let _ = err.flush();
    }
}

/// (key, text without times, times) per line: a package line, then one line per agent phase.
fn lines(rows: &[StatusEntry], phases: &[ProgressRow]) -> Vec<(String, String, String)> {
    let now = Utc::now();
    let mut out = Vec::new();
    for r in rows {
        let key = format!("{} {} {}", r.source, r.version, r.arch);
        let failures = if r.failures.is_empty() {
            String::new()
        } else {
            format!(", {} failure(s)", r.failures.len())
        };
        let decided = r
            .decided_at
            .map(|d| format!(" (decided {} ago)", human((now - d).num_seconds())))
            .unwrap_or_default();
        out.push((
            key.clone(),
            format!(
                "{key}: {} — {} of {} builders{failures}",
                r.state,
                r.builders.len(),
                r.threshold
            ),
            if r.state.as_str() == "pending" {
                String::new()
            } else {
                decided
            },
        ));
        for p in phases.iter().filter(|p| r.job_ids.contains(&p.job_id)) {
            let terminal = p.phase == "done" || p.phase == "failed";
            out.push((
                format!("{key} {}", p.agent),
                format!(
                    "    {:<16} {:<10}{}",
                    p.agent,
                    p.phase,
                    if p.stale { " STALE (no heartbeat)" } else { "" }
                ),
                if terminal {
                    format!(" after {}", human(p.elapsed_secs))
                } else {
                    format!(
                        " {} in phase, {} total",
                        human(p.phase_secs),
                        human(p.elapsed_secs)
                    )
                },
            ));
        }
    }
    out
}
