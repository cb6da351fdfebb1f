//! A NATS JetStream cluster of real `nats-server` processes on loopback,
//! for the tests and `bench-relay --nats`: each node on its own ports with
//! its own store directory, as `../notes` and docs/scaling-out.md describe
//! for production (there, one node per host).
//!
//! The server binary is `NATS_SERVER` if set, else `nats-server` on `PATH`,
//! else the copy `scripts/test.sh` installs under
//! `~/.cache/call-coach/nats-server/bin/`. Use 2.10 or later: 2.9 does not
//! check the expected last subject sequence atomically on replicated
//! streams, which per-call numbering across relays relies on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One node: its process and ports.
pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub monitor_port: u16,
    pub cluster_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster; its nodes are killed when dropped.
pub struct Cluster {
    pub nodes: Vec<Node>,
    program: PathBuf,
}

/// Where the `nats-server` binary is.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let cached = dirs_home().join(".cache/call-coach/nats-server/bin/nats-server");
    if cached.is_file() {
        return Ok(cached);
    }
    bail!(
        "no nats-server found: set NATS_SERVER, put nats-server on PATH, or run scripts/test.sh \
         once (it installs one under ~/.cache/call-coach/nats-server)"
    )
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// How many times [`Cluster::start`] tries fresh ports when a node could
/// not bind its own (another process took one between choosing and use).
const START_TRIES: usize = 3;

impl Cluster {
    /// Starts `size` nodes under `dir` and waits until JetStream has a
    /// leader that sees them all (at most `timeout`).
    pub fn start(dir: &Path, size: usize, timeout: Duration) -> anyhow::Result<Cluster> {
        let program = server_binary()?;
        let mut tries = 0;
        loop {
            tries += 1;
            match Cluster::start_once(&program, dir, size, timeout) {
                Err(e)
                    if tries < START_TRIES
                        && format!("{e:#}").contains("address already in use") =>
                {
                    tracing::warn!("a NATS node's port was taken, starting again on others: {e:#}");
                    for i in 1..=size {
                        let _ = std::fs::remove_dir_all(dir.join(format!("n{i}")));
                        let _ = std::fs::remove_file(dir.join(format!("nats-n{i}.log")));
                    }
                }
                other => return other,
            }
        }
    }

    fn start_once(
        program: &Path,
        dir: &Path,
        size: usize,
        timeout: Duration,
    ) -> anyhow::Result<Cluster> {
        let ports = super::procs::free_ports(3 * size).context("choosing free ports")?;
        let mut nodes: Vec<Node> = (1..=size)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: ports[3 * (i - 1)],
                monitor_port: ports[3 * (i - 1) + 1],
                cluster_port: ports[3 * (i - 1) + 2],
                config: dir.join(format!("n{i}.conf")),
                log: dir.join(format!("nats-n{i}.log")),
                child: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect();
        for n in &nodes {
            let store = dir.join(&n.name);
            std::fs::create_dir_all(&store)?;
            let cluster = if size > 1 {
                format!(
                    "cluster {{\n  name: callcoach\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    n.cluster_port,
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = format!(
                "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: \"{}\" }}\n{cluster}",
                n.name,
                n.client_port,
                n.monitor_port,
                store.display()
            );
            std::fs::write(&n.config, config)?;
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            program: program.to_owned(),
        };
        for n in &mut nodes {
            n.child = Some(spawn(&cluster.program, n)?);
        }
        cluster.nodes = nodes;
        cluster.wait_ready(size, timeout)?;
        Ok(cluster)
    }

    /// `nats://127.0.0.1:PORT,...` of every node.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id()))
            .collect()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node `i`'s log (its stdout and stderr), for a failure's message.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Starts node `i` again on its store and waits until all `size` nodes
    /// are current again.
    pub fn restart(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        self.kill(i);
        let child = spawn(&self.program, &self.nodes[i])?;
        self.nodes[i].child = Some(child);
        self.wait_ready(self.nodes.len(), timeout)
    }

    /// Until a node's `/jsz` names a meta leader and `size` peers with
    /// the others current.
    pub fn wait_ready(&mut self, size: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            for n in &mut self.nodes {
                if let Some(c) = n.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    bail!(
                        "nats-server {} exited ({status}):\n{}",
                        n.name,
                        std::fs::read_to_string(&n.log).unwrap_or_default()
                    );
                }
            }
            // Every live node names the same leader, and the leader sees
            // all the others current (a follower's view of the other
            // followers is not kept up to date).
            let live: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let mut leaders = Vec::new();
            let mut leader_ok = false;
            let mut failed = 0;
            for n in &live {
                match jsz(n.monitor_port) {
                    Ok(v) => {
                        let meta = &v["meta_cluster"];
                        let leader = meta["leader"].as_str().unwrap_or_default().to_owned();
                        if size > 1 && leader == n.name {
                            leader_ok = meta["cluster_size"].as_u64() == Some(size as u64)
                                && meta["replicas"].as_array().is_some_and(|r| {
                                    r.len() + 1 == size
                                        && r.iter().all(|p| p["current"].as_bool() == Some(true))
                                });
                        }
                        last = format!("{}: {meta}", n.name);
                        leaders.push(leader);
                    }
                    Err(e) => {
                        last = format!("{}: {e}", n.name);
                        leaders.push(String::new());
                        failed += 1;
                    }
                }
            }
            let answered = leaders.len() - failed;
            let ready = if size == 1 {
                !live.is_empty() && answered == live.len()
            } else {
                leader_ok
                    && live.len() == size
                    && leaders.iter().all(|l| !l.is_empty() && *l == leaders[0])
            };
            if ready && !live.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the NATS cluster was not ready within {} s ({last})",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn spawn(program: &Path, n: &Node) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.log)?;
    Command::new(program)
        .arg("-c")
        .arg(&n.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn jsz(monitor_port: u16) -> anyhow::Result<serde_json::Value> {
    let agent = crate::net::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build(),
    );
    crate::http::get_json(&agent, &format!("http://127.0.0.1:{monitor_port}/jsz"))
        .context("no answer from /jsz")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
