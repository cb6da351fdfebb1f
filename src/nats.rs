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

/// Servers in the cluster the client sees (its own and those it was told
/// of), for choosing a replica count: 3 with three or more, else that many.
pub fn replicas_for(client: &async_nats::Client) -> usize {
    let info = client.server_info();
    let mut peers: Vec<&String> = info.connect_urls.iter().collect();
    peers.sort();
    peers.dedup();
    peers.len().clamp(1, 3)
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
