//! Host names to addresses, and the clients that use them (HTTP through
//! ureq, websockets through tokio-tungstenite), so that every outgoing
//! connection resolves the same way.
//!
//! `localhost` (and any `*.localhost`, RFC 6761) is the loopback interface
//! without asking the system: the static binary (`scripts/build-static.sh`)
//! carries glibc inside it, and glibc answers host names from `/etc/hosts`
//! and DNS only where those exist, so in an empty root or a minimal
//! container `localhost` would not resolve at all. IP literals need no
//! lookup either; any other name goes to the system resolver
//! (`getaddrinfo`: `/etc/hosts`, then DNS, which a static glibc still does
//! without its shared NSS modules).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// `localhost`, `LOCALHOST.`, `relay.localhost`: names that are loopback.
pub fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// `host` without the brackets of an IPv6 literal (`[::1]` -> `::1`).
fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether [`resolve`] answers `host` without the system: `localhost` or
/// an IP literal.
fn resolved_inside(host: &str) -> bool {
    is_localhost(host) || unbracketed(host).parse::<IpAddr>().is_ok()
}

/// The addresses of `host` (a name, an IP literal, or `[v6]`) at `port`:
/// loopback for `localhost` (IPv4 first), the literal itself, or the
/// system resolver's answer.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let bare = unbracketed(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if is_localhost(bare) {
        return Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]);
    }
    let found: Vec<SocketAddr> = (bare, port).to_socket_addrs()?.collect();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{bare}: no address"),
        ));
    }
    Ok(found)
}

/// The ureq resolver: [`resolve`], within ureq's timeout for other names.
#[derive(Debug, Default)]
struct Resolver {
    system: ureq::unversioned::resolver::DefaultResolver,
}

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        if !resolved_inside(host) {
            return self.system.resolve(uri, config, timeout);
        }
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let mut out = self.empty();
        for a in resolve(host, port).map_err(ureq::Error::Io)? {
            out.push(a);
        }
        Ok(out)
    }
}

/// An HTTP client with `config` that resolves as [`resolve`] does.
pub fn agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        Resolver::default(),
    )
}

/// The websocket stream [`ws_connect`] returns.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a websocket (`ws://` only) as `tokio_tungstenite::connect_async`
/// does, resolving its host as [`resolve`] does and trying each address in
/// turn.
pub async fn ws_connect(
    request: impl IntoClientRequest,
    config: Option<WebSocketConfig>,
) -> Result<(Ws, Response), tungstenite::Error> {
    let request = request.into_client_request()?;
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(tungstenite::Error::Url(
            tungstenite::error::UrlError::UnsupportedUrlScheme,
        ));
    }
    let host = uri
        .host()
        .ok_or(tungstenite::Error::Url(
            tungstenite::error::UrlError::NoHostName,
        ))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let addrs = if resolved_inside(&host) {
        resolve(&host, port)?
    } else {
        tokio::task::spawn_blocking(move || resolve(&host, port))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return tokio_tungstenite::client_async_with_config(
                    request,
                    MaybeTlsStream::Plain(stream),
                    config,
                )
                .await;
            }
            Err(e) => last = e,
        }
    }
    Err(tungstenite::Error::Io(last))
}

/// `url` with a `localhost` host written as `127.0.0.1`, for clients that
/// resolve by themselves (the NATS client).
pub fn loopback_literal(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    if !is_localhost(host) {
        return url.to_owned();
    }
    let mut out = String::new();
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    if let Some(u) = userinfo {
        out.push_str(u);
        out.push('@');
    }
    out.push_str("127.0.0.1");
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_is_loopback_without_the_system() {
        for h in ["localhost", "LocalHost.", "relay.localhost"] {
            assert!(is_localhost(h), "{h}");
            let a = resolve(h, 7070).unwrap();
            assert_eq!(a[0], "127.0.0.1:7070".parse().unwrap());
            assert!(a[1].ip().is_loopback());
        }
        for h in ["localhost.example.com", "mylocalhost", "127.0.0.1"] {
            assert!(!is_localhost(h), "{h}");
        }
        assert_eq!(
            resolve("[::1]", 80).unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert_eq!(
            resolve("10.1.2.3", 80).unwrap(),
            vec!["10.1.2.3:80".parse().unwrap()]
        );
        assert!(resolve("no-such-host.invalid", 80).is_err());
    }

    #[test]
    fn nats_urls_get_the_loopback_literal() {
        for (given, want) in [
            ("nats://localhost:4222", "nats://127.0.0.1:4222"),
            ("nats://u:p@localhost:4222/x", "nats://u:p@127.0.0.1:4222/x"),
            ("localhost:4222", "127.0.0.1:4222"),
            ("localhost", "127.0.0.1"),
            ("nats://nats1.example:4222", "nats://nats1.example:4222"),
            ("nats://[::1]:4222", "nats://[::1]:4222"),
        ] {
            assert_eq!(loopback_literal(given), want, "{given}");
        }
    }

    /// A real server on loopback, reached by the name `localhost` through
    /// both clients.
    #[tokio::test]
    async fn http_and_websocket_clients_reach_localhost() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in listener.incoming().take(1) {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        let agent = agent(ureq::Agent::config_builder().build());
        let body = tokio::task::spawn_blocking(move || {
            agent
                .get(&format!("http://localhost:{port}/"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(body, "ok");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ws = tokio_tungstenite::accept_async(s).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        });
        let (_ws, resp) = ws_connect(format!("ws://localhost:{port}/ws"), None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        assert!(ws_connect("wss://localhost:1/", None).await.is_err());
    }
}
