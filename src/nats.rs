//! Connecting to NATS, for the services that use it when call-coach runs
//! on several hosts: the relay's JetStream log (`relay.nats`) and the
//! orchestrators' leases (`orchestrator.group`). One place for server
//! lists, credentials and the errors that name the setting at fault.

use std::path::Path;
use std::time::Duration;

use crate::setting::Secret;

/// Where to connect and as whom, with the names of the settings the values
/// came from (for errors).
pub struct Target<'a> {
    /// Comma-separated server URLs.
    pub url: &'a str,
    /// The key and variable that set `url` (`relay.nats.url (RELAY_NATS_URL)`).
    pub url_setting: &'a str,
    pub credentials_file: Option<&'a Path>,
    pub credentials_setting: &'a str,
    pub token: Option<&'a Secret>,
    /// The client's name in the server's monitoring.
    pub name: &'a str,
}

/// Connects once (a server that is down at start is an error here, with
/// the setting named); afterwards the client reconnects by itself, forever.
pub async fn connect(t: &Target<'_>) -> Result<async_nats::Client, String> {
    // The client resolves names itself: `localhost` as the loopback
    // literal, as every other client here (`net`).
    let servers: Vec<String> = t
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(crate::net::loopback_literal)
        .collect();
    let bad = |why: String| format!("{} {:?}: {why}", t.url_setting, t.url);
    if servers.is_empty() {
        return Err(bad("no server given".into()));
    }
    let mut options = async_nats::ConnectOptions::new()
        .name(t.name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if let Some(path) = t.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("{} {}: {e}", t.credentials_setting, path.display()))?;
    }
    if let Some(token) = t.token {
        options = options.token(token.expose().to_owned());
    }
    options
        .connect(servers.as_slice())
        .await
        .map_err(|e| bad(format!("cannot connect: {e}")))
}

/// How long JetStream may refuse a replica count for want of servers
/// before an automatic count steps down by one: a cluster just forming
/// (or with a node restarting) has fewer peers for a moment than it will.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(10);

/// The replica count of a stream (or bucket) to be made. Automatic (the
/// setting 0): 3 on a clustered server, 1 on one that is not; one fewer
/// each time JetStream has refused the count for want of servers for
/// [`STEP_DOWN_AFTER`]. (It was the servers the client had heard of when
/// it connected: a relay that connected before the cluster's gossip was
/// complete made a 2-replica stream on 3 nodes, which no node's loss
/// leaves writable.) A count set by hand is asked for as it is.
pub struct Replicas {
    count: usize,
    auto: bool,
    /// The setting, named in the warning when the count steps down.
    key: &'static str,
    refused_since: Option<std::time::Instant>,
    patience: Duration,
}

impl Replicas {
    pub fn new(setting: usize, key: &'static str, client: &async_nats::Client) -> Self {
        let clustered = client.server_info().cluster.is_some_and(|c| !c.is_empty());
        Self {
            count: match setting {
                0 if clustered => 3,
                0 => 1,
                n => n,
            },
            auto: setting == 0,
            key,
            refused_since: None,
            patience: STEP_DOWN_AFTER,
        }
    }

    /// The count to ask for now.
    pub fn count(&self) -> usize {
        self.count
    }

    /// JetStream refused [`Replicas::count`] replicas for want of servers
    /// (`lacking`), or otherwise: `true` when an automatic count stepped
    /// down by one (after [`STEP_DOWN_AFTER`] of such refusals), which it
    /// warns of, naming the setting.
    pub fn refused(&mut self, lacking: bool) -> bool {
        if !lacking || !self.auto || self.count <= 1 {
            self.refused_since = None;
            return false;
        }
        let since = *self
            .refused_since
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() < self.patience {
            return false;
        }
        self.count -= 1;
        self.refused_since = None;
        tracing::warn!(
            replicas = self.count,
            "JetStream has too few servers for more replicas; making it with fewer (set {} to insist)",
            self.key
        );
        true
    }
}

/// Whether JetStream refused a stream for want of servers to place its
/// replicas on (fewer in the cluster than asked, or some down).
pub fn lacks_servers(e: &async_nats::jetstream::context::CreateStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    match e.kind() {
        Kind::JetStream(e) => matches!(
            e.error_code(),
            ErrorCode::INSUFFICIENT_RESOURCES | ErrorCode::CLUSTER_NO_PEERS
        ),
        _ => false,
    }
}

/// The same for a key-value bucket: its stream's refusal, found beneath.
pub fn bucket_lacks_servers(e: &async_nats::jetstream::context::CreateKeyValueError) -> bool {
    use async_nats::jetstream::context::CreateStreamError;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<CreateStreamError>())
        .is_some_and(lacks_servers)
}

/// Why JetStream will not make a stream (or a key-value bucket, which is
/// one) however long one asks: said at once, with the setting to change,
/// instead of a minute of "not answering yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another stream takes its subjects.
    SubjectsTaken,
    /// A stream of its name exists with another configuration.
    NameTaken,
    /// Replicas asked of a server that is not clustered.
    NotClustered,
    /// An invalid name or configuration.
    Invalid,
}

/// The lasting reason a stream was not made, if it is one.
pub fn refused_for_good(e: &async_nats::jetstream::context::CreateStreamError) -> Option<Refused> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    let code = match e.kind() {
        Kind::EmptyStreamName | Kind::InvalidStreamName => return Some(Refused::Invalid),
        Kind::JetStream(e) => e.error_code(),
        _ => return None,
    };
    match code {
        ErrorCode::STREAM_SUBJECT_OVERLAP => Some(Refused::SubjectsTaken),
        ErrorCode::STREAM_NAME_EXIST => Some(Refused::NameTaken),
        ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED => Some(Refused::NotClustered),
        ErrorCode::STREAM_INVALID_CONFIG => Some(Refused::Invalid),
        _ => None,
    }
}

/// The same for a key-value bucket: its stream's reason, found beneath.
pub fn bucket_refused_for_good(
    e: &async_nats::jetstream::context::CreateKeyValueError,
) -> Option<Refused> {
    use async_nats::jetstream::context::{CreateKeyValueErrorKind as Kind, CreateStreamError};
    match e.kind() {
        Kind::InvalidStoreName => Some(Refused::Invalid),
        Kind::BucketCreate => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<CreateStreamError>())
            .and_then(refused_for_good),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_automatic_replica_count_steps_down_only_after_refusals_for_want_of_servers() {
        let auto = |patience| Replicas {
            count: 3,
            auto: true,
            key: "relay.nats.replicas",
            refused_since: None,
            patience,
        };
        // Refused for want of servers, but not for long yet: still 3.
        let mut r = auto(Duration::from_secs(3600));
        assert!(!r.refused(true));
        assert_eq!(r.count(), 3);
        // Long enough: 3 -> 2 -> 1, never 0.
        let mut r = auto(Duration::ZERO);
        assert!(r.refused(true) && r.count() == 2);
        assert!(r.refused(true) && r.count() == 1);
        assert!(!r.refused(true) && r.count() == 1);
        // Another error (not answering yet) never steps down.
        let mut r = auto(Duration::ZERO);
        assert!(!r.refused(false) && r.count() == 3);
        // A count set by hand is asked for as it is.
        let mut r = Replicas {
            auto: false,
            ..auto(Duration::ZERO)
        };
        assert!(!r.refused(true) && r.count() == 3);
    }
}
