//! Several orchestrators as a group (`orchestrator.group.nats_url`): every
//! instance follows every call, but each call is coached (its metrics,
//! tips, checklist, summary and LLM requests published) by the one
//! instance that holds its lease, a key in a NATS JetStream key-value
//! bucket.
//!
//! - A call seen for the first time is claimed with a create (only one
//!   instance's create of a key succeeds); the others keep it as a
//!   candidate and keep its state in step, in shadow, without publishing.
//! - The holder renews its leases every third of `lease_secs`; the bucket
//!   forgets a key `lease_secs` after its last write. When an instance dies,
//!   its keys expire and the first candidate whose create succeeds takes
//!   the call over: within `lease_secs` plus one poll (1 s).
//! - A taker has the call's state already (shadow), and the tips the dead
//!   holder published arrived as events, so no rule tip is published twice.
//! - A finished call's lease is not deleted: it lapses. Every instance
//!   sees the call's `summary` and drops the call, so none takes it over.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::setting::Secret;

/// How often candidates are tried.
const POLL: Duration = Duration::from_secs(1);

/// `[orchestrator.group]`: without `nats_url`, one orchestrator coaches
/// every call it sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSettings {
    /// NATS servers, comma-separated. `ORCHESTRATOR_NATS_URL`.
    pub nats_url: Option<String>,
    /// A NATS credentials file; also the systemd credential
    /// `orchestrator_nats_creds`.
    pub credentials_file: Option<PathBuf>,
    /// A token for token auth (or `token_file`, or the credential
    /// `group.token`).
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// The key-value bucket of leases.
    pub bucket: String,
    /// A lease not renewed for this long lapses, and another instance
    /// takes the call over.
    pub lease_secs: u64,
    /// Copies of the bucket; 0: 3 on a clustered server (one fewer after
    /// JetStream has refused a count for want of servers for 10 s), 1 on a
    /// lone one.
    pub replicas: usize,
    /// This instance's name in the leases; empty: host name and process id.
    pub instance: String,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            nats_url: None,
            credentials_file: None,
            token: None,
            token_file: None,
            bucket: "callcoach_orchestrators".into(),
            lease_secs: 5,
            replicas: 0,
            instance: String::new(),
        }
    }
}

/// Name of the systemd credential holding the NATS credentials file.
pub const CREDS_CREDENTIAL: &str = "orchestrator_nats_creds";

/// A call's key in the bucket: key-value keys take no `:` and may not end
/// in `.`; call ids hold neither `=` nor `/`, so this is one-to-one.
pub fn lease_key(call_id: &str) -> String {
    call_id.replace(':', "=").replace('.', "/")
}

/// What the main loop tells the group.
#[derive(Debug)]
pub enum Ask {
    /// A call seen for the first time: claim it, or watch it.
    Claim(String),
    /// A call this instance finished or dropped: stop renewing or watching.
    Forget(String),
}

/// What the group tells the main loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// This instance now coaches the call.
    Owned(String),
    /// Another instance holds the call now: stop publishing for it.
    Lost(String),
}

/// The main loop's end of the group.
pub struct Group {
    pub asks: mpsc::UnboundedSender<Ask>,
    pub changes: mpsc::UnboundedReceiver<Change>,
    pub instance: String,
}

/// Connects, makes sure the bucket exists, and starts the lease task.
pub async fn join(s: &GroupSettings, shutdown: CancellationToken) -> Result<Group, String> {
    let client = crate::nats::connect(&crate::nats::Target {
        url: s.nats_url.as_deref().unwrap_or_default(),
        url_setting: "orchestrator.group.nats_url (ORCHESTRATOR_NATS_URL)",
        credentials_file: s.credentials_file.as_deref(),
        credentials_setting: "orchestrator.group.credentials_file",
        token: s.token.as_ref(),
        name: "call-coach orchestrator",
    })
    .await?;
    let mut replicas =
        crate::nats::Replicas::new(s.replicas, "orchestrator.group.replicas", &client);
    let js = jetstream::new(client);
    let lease = Duration::from_secs(s.lease_secs.max(1));
    // A cluster that is just forming (or busy) may not answer yet: keep
    // asking for a while before giving up.
    let started = std::time::Instant::now();
    let store = loop {
        let num_replicas = replicas.count();
        let attempt = async {
            match js.get_key_value(&s.bucket).await {
                Ok(store) => Ok(store),
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: s.bucket.clone(),
                        history: 1,
                        max_age: lease,
                        num_replicas,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        let lasting = crate::nats::bucket_refused_for_good(&e);
                        let lacking = crate::nats::bucket_lacks_servers(&e);
                        (
                            lasting,
                            format!("orchestrator.group.bucket {}: {e}", s.bucket),
                            lacking,
                        )
                    }),
            }
        };
        match attempt.await {
            Ok(store) => break store,
            Err((Some(why), e, _)) => {
                use crate::nats::Refused;
                return Err(format!(
                    "{e}; {}",
                    match why {
                        Refused::NotClustered =>
                            "this NATS server is not clustered: set \
                             orchestrator.group.replicas = 1, or 0 (as many as the cluster has, \
                             up to 3)",
                        Refused::SubjectsTaken | Refused::NameTaken =>
                            "another stream takes its name or subjects: set orchestrator.group.bucket",
                        Refused::Invalid =>
                            "check orchestrator.group.bucket and orchestrator.group.replicas",
                    }
                ));
            }
            Err((None, e, lacking))
                if started.elapsed() < Duration::from_secs(60) && !shutdown.is_cancelled() =>
            {
                if !replicas.refused(lacking) {
                    tracing::warn!(error = %e, "JetStream not answering yet; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err((None, e, _)) => return Err(e),
        }
    };
    let instance = if s.instance.is_empty() {
        format!("{}-{}", hostname(), std::process::id())
    } else {
        s.instance.clone()
    };
    let (asks, asks_rx) = mpsc::unbounded_channel();
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let leases = Leases {
        store,
        instance: instance.clone(),
        lease,
        owned: HashMap::new(),
        candidates: HashSet::new(),
        changes: changes_tx,
    };
    tokio::spawn(leases.run(asks_rx, shutdown));
    tracing::info!(%instance, bucket = %s.bucket, lease_secs = lease.as_secs(), "orchestrator group joined");
    Ok(Group {
        asks,
        changes,
        instance,
    })
}

struct Leases {
    store: kv::Store,
    instance: String,
    lease: Duration,
    /// Call -> the revision of our lease key.
    owned: HashMap<String, u64>,
    /// Calls held by others, taken over if their lease lapses.
    candidates: HashSet<String>,
    changes: mpsc::UnboundedSender<Change>,
}

impl Leases {
    async fn run(mut self, mut asks: mpsc::UnboundedReceiver<Ask>, shutdown: CancellationToken) {
        let mut renew = tokio::time::interval((self.lease / 3).max(Duration::from_millis(300)));
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ask = asks.recv() => match ask {
                    None => break,
                    Some(Ask::Claim(call)) => {
                        if !self.owned.contains_key(&call) && !self.claim(&call, true).await {
                            self.candidates.insert(call);
                        }
                    }
                    Some(Ask::Forget(call)) => {
                        self.owned.remove(&call);
                        self.candidates.remove(&call);
                    }
                },
                _ = renew.tick() => self.renew().await,
                _ = poll.tick() => {
                    let calls: Vec<String> = self.candidates.iter().cloned().collect();
                    for call in calls {
                        if self.claim(&call, true).await {
                            self.candidates.remove(&call);
                        }
                    }
                }
            }
        }
        // Leases of a stopping instance are released at once, so another
        // takes its calls over without waiting for them to lapse.
        for call in self.owned.keys() {
            let _ = self.store.delete(lease_key(call)).await;
        }
    }

    /// Creates the call's key: true if it was free and is ours now.
    /// `announce`: tell the main loop (not for a call it believes ours).
    async fn claim(&mut self, call: &str, announce: bool) -> bool {
        let value = Bytes::from(self.instance.clone());
        match self.store.create(lease_key(call), value).await {
            Ok(revision) => {
                self.owned.insert(call.to_owned(), revision);
                if announce {
                    let _ = self.changes.send(Change::Owned(call.to_owned()));
                }
                true
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
            Err(e) => {
                tracing::warn!(call, error = %e, "claiming a call's lease");
                false
            }
        }
    }

    async fn renew(&mut self) {
        let calls: Vec<(String, u64)> = self.owned.iter().map(|(c, r)| (c.clone(), *r)).collect();
        for (call, revision) in calls {
            let value = Bytes::from(self.instance.clone());
            match self.store.update(lease_key(&call), value, revision).await {
                Ok(next) => {
                    self.owned.insert(call, next);
                }
                Err(e) => {
                    // Whose is it now? (Servers word a lost race in more
                    // than one way, so ask rather than parse.)
                    match self.store.entry(lease_key(&call)).await {
                        Ok(Some(entry))
                            if entry.operation == kv::Operation::Put
                                && entry.value.as_ref() != self.instance.as_bytes() =>
                        {
                            tracing::warn!(%call, holder = %String::from_utf8_lossy(&entry.value), "lost the call's lease to another orchestrator");
                            self.owned.remove(&call);
                            self.candidates.insert(call.clone());
                            let _ = self.changes.send(Change::Lost(call));
                        }
                        Ok(Some(_)) => tracing::warn!(%call, error = %e, "renewing a call's lease"),
                        // Lapsed and free: take it again at once.
                        Ok(None) => {
                            self.owned.remove(&call);
                            if !self.claim(&call, false).await {
                                self.candidates.insert(call.clone());
                                let _ = self.changes.send(Change::Lost(call));
                            }
                        }
                        Err(e) => tracing::warn!(%call, error = %e, "renewing a call's lease"),
                    }
                }
            }
        }
    }
}

/// This host's name, from the kernel (`gethostname`, not `/proc/sys`,
/// which a unit with `ProcSubset=pid` hides): with the process id it names
/// the instance, so two hosts never share a name, even when their
/// orchestrators got the same pid (hosts booted from one image).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_are_valid_and_one_to_one() {
        assert_eq!(lease_key("a:b.c_1"), "a=b/c_1");
        assert_eq!(lease_key("x."), "x/");
        assert_ne!(lease_key("a.b"), lease_key("a_b"));
        assert!(!crate::event::is_valid_call_id("a=b"));
        assert!(!crate::event::is_valid_call_id("a/b"));
    }

    #[test]
    fn the_instance_is_named_by_the_kernels_hostname() {
        let name = hostname();
        assert!(!name.is_empty());
        if let Ok(proc) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(name, proc.trim());
        }
    }
}
