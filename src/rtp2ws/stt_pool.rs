//! Several stt hosts behind rtp2ws (`STT_URL` with comma-separated URLs):
//! which one a leg's stream goes to. Each connection asks every stt that
//! is not cooling off for its `/capacity` (docs/contract.md "Capacity") and
//! picks the one with the most headroom that is accepting; one that
//! refused (503) cools off for its `Retry-After`, one that could not be
//! reached for a second, and the next is tried at once. With one URL this
//! is the plain retry of before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a `/capacity` question may take.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// An stt that could not be reached is left alone this long.
const UNREACHABLE_COOLDOWN: Duration = Duration::from_secs(1);

/// The configured stt URLs (websocket, without query) of the service.
pub struct SttPool {
    urls: Vec<String>,
    cooling: Mutex<HashMap<String, Instant>>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for SttPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttPool").field("urls", &self.urls).finish()
    }
}

/// `STT_URL`: one websocket URL, or several separated by commas.
pub fn parse_urls(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

impl SttPool {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            cooling: Mutex::default(),
            agent: crate::net::agent(
                ureq::Agent::config_builder()
                    .timeout_global(Some(ASK_TIMEOUT))
                    .http_status_as_error(false)
                    .build(),
            ),
        }
    }

    fn cooling(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.cooling.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stt for the next connection: the most headroom among those not
    /// cooling off; without answers, the first not cooling off. `Err`: all
    /// are cooling off, for this long at least.
    pub async fn choose(&self) -> Result<String, Duration> {
        let now = Instant::now();
        let open: Vec<String> = {
            let mut cooling = self.cooling();
            cooling.retain(|_, until| *until > now);
            self.urls
                .iter()
                .filter(|u| !cooling.contains_key(*u))
                .cloned()
                .collect()
        };
        if open.is_empty() {
            let wait = self
                .cooling()
                .values()
                .map(|until| until.saturating_duration_since(now))
                .min()
                .unwrap_or(UNREACHABLE_COOLDOWN);
            return Err(wait.max(Duration::from_millis(50)));
        }
        if open.len() == 1 {
            return Ok(open[0].clone());
        }
        let asks = open.iter().map(|url| {
            let (agent, capacity) = (self.agent.clone(), capacity_url(url));
            tokio::task::spawn_blocking(move || headroom(&agent, &capacity))
        });
        let answers = futures_util::future::join_all(asks).await;
        let best = open
            .iter()
            .zip(answers)
            .filter_map(|(url, a)| Some((url, a.ok()??)))
            .max_by_key(|(_, headroom)| *headroom);
        Ok(best.map_or_else(|| open[0].clone(), |(url, _)| url.clone()))
    }

    /// `url` refused the stream or could not be reached: leave it alone
    /// for `for_` (its `Retry-After`), or a second.
    pub fn cool(&self, url: &str, for_: Option<Duration>) {
        let until = Instant::now() + for_.unwrap_or(UNREACHABLE_COOLDOWN);
        self.cooling().insert(url.to_owned(), until);
    }
}

/// `ws://HOST:PORT/ws` -> `http://HOST:PORT/capacity`.
fn capacity_url(ws: &str) -> String {
    let rest = ws.strip_prefix("ws://").unwrap_or(ws);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("http://{host}/capacity")
}

/// The headroom an stt reports, if it answers and is accepting.
fn headroom(agent: &ureq::Agent, url: &str) -> Option<i64> {
    let v = crate::http::get_json(agent, url)?;
    if v.get("accepting")?.as_bool()? {
        v.get("headroom")?.as_i64()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_capacity_urls() {
        assert_eq!(
            parse_urls("ws://a:8080/ws, ws://b:8080/ws,"),
            ["ws://a:8080/ws", "ws://b:8080/ws"]
        );
        assert_eq!(
            capacity_url("ws://10.0.0.2:8080/ws"),
            "http://10.0.0.2:8080/capacity"
        );
    }

    #[tokio::test]
    async fn cooling_off_moves_to_the_next_then_waits() {
        // Nothing listens on these: no answers, so the first open one.
        let pool = SttPool::new(parse_urls("ws://127.0.0.1:9/ws,ws://127.0.0.1:7/ws"));
        pool.cool("ws://127.0.0.1:9/ws", Some(Duration::from_secs(5)));
        assert_eq!(pool.choose().await.unwrap(), "ws://127.0.0.1:7/ws");
        pool.cool("ws://127.0.0.1:7/ws", Some(Duration::from_secs(2)));
        let wait = pool.choose().await.unwrap_err();
        assert!(
            wait <= Duration::from_secs(2) && wait > Duration::from_secs(1),
            "{wait:?}"
        );
    }
}
