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
