//! `lockstep agents`: which agents the coordinator hears from, what each is doing, and which went
//! silent (stale: three missed heartbeats) while holding a job.

use chrono::Utc;

use crate::http::Api;

use lockstep_proto::v1::AgentView;

/// Elapsed time for people: `42s`, `3m05s`, `2h01m`.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Prints the agent table (or JSON). Returns the number of stale agents.
pub async fn run(api: &Api, json: bool) -> anyhow::Result<usize> {
    let agents: Vec<AgentView> = api.get_json("/api/v1/agents").await?;
    let stale = agents.iter().filter(|a| a.stale).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(stale);
    }
    if agents.is_empty() {
        println!("no agents: none has sent a heartbeat since the coordinator started (are lockstep-agent@ units running, and is their key in the policy?)");
        return Ok(0);
    }
    let now = Utc::now();
    println!(
        "{:<16} {:<6} {:<12} {:<15} WORKING ON",
        "AGENT", "STATE", "ARCH", "LAST HEARTBEAT"
    );
    for a in &agents {
        let work = match &a.current {
            Some(j) => format!(
                "{}{} {} for {} (job {})",
                if a.stale { "held: " } else { "" },
                j.source.as_deref().unwrap_or("?"),
                j.phase,
                human((now - j.phase_since).num_seconds()),
                j.job_id
            ),
            None => "idle".into(),
        };
        let work = match &a.paused {
            Some(why) => format!("{work}; not taking jobs: {why}"),
            None => work,
        };
        println!(
            "{:<16} {:<6} {:<12} {:<15} {}",
            a.name,
            if a.stale { "STALE" } else { "live" },
            a.architectures.join(","),
            format!("{} ago", human((now - a.last_heartbeat).num_seconds())),
            work
        );
        println!("    fingerprint {}", a.fingerprint);
    }
    if stale > 0 {
        eprintln!(
            "lockstep: {stale} agent(s) stale (no heartbeat for 3 intervals): check the machine and `systemctl status lockstep-agent@…`; jobs they held are redelivered by RabbitMQ when their connection closes"
        );
    }
    Ok(stale)
}
