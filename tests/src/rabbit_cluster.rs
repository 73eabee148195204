//! A RabbitMQ cluster of several nodes on this machine (`scripts/rabbitmq-cluster`), for the
//! broker-node-loss test (T04): start it (or reuse a running one), stop and start single members,
//! ask which node leads a quorum queue and where clients are connected.

use std::process::Command;

use anyhow::{bail, Context};

use crate::{repo_root, Vhost};

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct Node {
    /// Erlang node name, e.g. `lockstep-c1@localhost`.
    pub name: String,
    /// AMQP port on 127.0.0.1.
    pub port: u16,
}

/// The cluster of `scripts/rabbitmq-cluster`. Stops it on drop only if it started it.
pub struct BrokerCluster {
    pub nodes: Vec<Node>,
    started_here: bool,
}

fn script(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(repo_root().join("scripts/rabbitmq-cluster"))
        .args(args)
        .output()
        .context("running scripts/rabbitmq-cluster")?;
    if !out.status.success() {
        bail!(
            "scripts/rabbitmq-cluster {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether Debian's `rabbitmq-server` is installed (the only reason to skip T04).
pub fn rabbitmq_installed() -> bool {
    Command::new("sh")
        .args(["-c", "command -v rabbitmq-server"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `rabbitmqctl -n <node> <args>`, bounded by `timeout`; returns standard output.
pub fn ctl(node: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("timeout")
        .arg("60")
        .arg("rabbitmqctl")
        .args(["-n", node])
        .args(args)
        .output()
        .context("running rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl -n {node} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl BrokerCluster {
    /// Reuses the running cluster of `n` nodes, or starts one (and then stops it on drop).
    /// `Ok(None)` only when `rabbitmq-server` is not installed.
    pub fn ensure(n: usize) -> anyhow::Result<Option<BrokerCluster>> {
        if !rabbitmq_installed() {
            return Ok(None);
        }
        let running = Self::read_nodes()
            .map(|v| v.len() == n && v.iter().all(|(_, up)| *up))
            .unwrap_or(false);
        let mut started_here = false;
        if !running {
            script(&["start", &n.to_string()])?;
            started_here = true;
        }
        let nodes: Vec<Node> = Self::read_nodes()?.into_iter().map(|(n, _)| n).collect();
        anyhow::ensure!(
            nodes.len() == n,
            "scripts/rabbitmq-cluster nodes lists {} nodes, expected {n}",
            nodes.len()
        );
        Ok(Some(BrokerCluster {
            nodes,
            started_here,
        }))
    }

    fn read_nodes() -> anyhow::Result<Vec<(Node, bool)>> {
        let text = script(&["nodes"])?;
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [name, port, state] => Ok((
                        Node {
                            name: name.to_string(),
                            port: port.parse().context("port")?,
                        },
                        *state == "up",
                    )),
                    _ => bail!("unexpected line from scripts/rabbitmq-cluster nodes: {l:?}"),
                }
            })
            .collect()
    }

    /// Whether node `i` (0-based) answers.
    pub fn is_up(&self, i: usize) -> bool {
        ctl(&self.nodes[i].name, &["status"]).is_ok()
    }

    /// Stops node `i` (0-based) and waits until its process is gone.
    pub fn stop_node(&self, i: usize) -> anyhow::Result<()> {
        script(&["stop-node", &(i + 1).to_string()]).map(|_| ())
    }

    /// Starts node `i` (0-based) again; it rejoins the cluster.
    pub fn start_node(&self, i: usize) -> anyhow::Result<()> {
        script(&["start-node", &(i + 1).to_string()]).map(|_| ())
    }

    /// A vhost on this cluster (created through the first running node).
    pub fn vhost(&self, prefix: &str) -> anyhow::Result<Vhost> {
        let nodes: Vec<(String, u16)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.port))
            .collect();
        Vhost::create_on(&nodes, prefix)
    }

    /// The first node (0-based index) that answers.
    fn any_up(&self) -> anyhow::Result<usize> {
        (0..self.nodes.len())
            .find(|&i| self.is_up(i))
            .context("no node of the cluster answers")
    }

    /// Index of the node that leads quorum queue `queue` of `vhost`, if it has a leader.
    pub fn leader(&self, vhost: &str, queue: &str) -> anyhow::Result<Option<usize>> {
        let i = self.any_up()?;
        let text = ctl(
            &self.nodes[i].name,
            &[
                "list_queues",
                "-p",
                vhost,
                "--quiet",
                "--no-table-headers",
                "name",
                "leader",
            ],
        )?;
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, leader] if *name == queue => {
                    self.nodes.iter().position(|n| n.name == *leader)
                }
                _ => None,
            }
        }))
    }

    /// How many client connections of `vhost` each node holds (by node index).
    pub fn connections(&self, vhost: &str) -> anyhow::Result<Vec<usize>> {
        let i = self.any_up()?;
        let text = ctl(
            &self.nodes[i].name,
            &[
                "list_connections",
                "--quiet",
                "--no-table-headers",
                "vhost",
                "port",
            ],
        )?;
        let mut counts = vec![0; self.nodes.len()];
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let [v, port] = f.as_slice() {
                if *v == vhost {
                    if let Some(k) = self.nodes.iter().position(|n| n.port.to_string() == *port) {
                        counts[k] += 1;
                    }
                }
            }
        }
        Ok(counts)
    }
}

impl Drop for BrokerCluster {
    fn drop(&mut self) {
        if self.started_here {
            if let Err(e) = script(&["clean"]) {
                eprintln!("stopping the RabbitMQ cluster this test started: {e:#}");
            }
        }
    }
}
