//! Relay tokens. With a token file configured, every request but
//! `GET /healthz` needs a valid token (`Authorization: Bearer T`, or
//! `?token=T` for browsers' websockets), and the token's roles decide what
//! it may do.
//!
//! The file has one token per line: `TOKEN ROLES [SCOPE...]`, `#` starts a
//! comment. ROLES is a comma-separated list of `publish`, `subscribe` and
//! `supervisor`; `subscribe` needs at least one scope, `call:ID` or
//! `agent:AGENT` (the `agent` of the call's `call.started`).
//!
//! ```text
//! # stt, orchestrator and ari-coach
//! 7c1e0a6f5b2d4e8a9f3c publish
//! # the agent at extension 200
//! 0b9d7e2c4a6f8e1d3c5b subscribe agent:PJSIP/200
//! 5e3a1c9b7d2f4e6a8c0d supervisor
//! ```

use std::path::{Path, PathBuf};

/// Shortest token accepted: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("relay tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("relay tokens file {path}, line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("relay tokens file {0} holds no token")]
    Empty(PathBuf),
}

/// What one token allows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Grant {
    pub publish: bool,
    /// Subscribe to any call, or all (`callId=*`), and list all calls.
    pub supervisor: bool,
    /// Call ids this token may subscribe to.
    pub calls: Vec<String>,
    /// Agents whose calls this token may subscribe to.
    pub agents: Vec<String>,
}

#[derive(Debug)]
pub struct Tokens {
    entries: Vec<(String, Grant)>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
            .map_err(|(line, message)| TokensError::Line {
                path: path.to_owned(),
                line,
                message,
            })?
            .ok_or_else(|| TokensError::Empty(path.to_owned()))
    }

    /// Parses the file's text; `Ok(None)` when it holds no token.
    fn parse(text: &str) -> Result<Option<Self>, (usize, String)> {
        let mut entries: Vec<(String, Grant)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let mut words = line.split_whitespace();
            let token = words.next().unwrap_or_default();
            if token.len() < MIN_TOKEN_LEN {
                return Err((
                    n,
                    format!("token is shorter than {MIN_TOKEN_LEN} characters"),
                ));
            }
            if entries.iter().any(|(t, _)| t == token) {
                return Err((n, "the same token appears twice".into()));
            }
            let roles = words.next().ok_or((
                n,
                "missing roles (publish, subscribe, supervisor)".to_owned(),
            ))?;
            let mut grant = Grant::default();
            let mut subscribe = false;
            for role in roles.split(',') {
                match role {
                    "publish" => grant.publish = true,
                    "subscribe" => subscribe = true,
                    "supervisor" => grant.supervisor = true,
                    other => {
                        return Err((
                            n,
                            format!("unknown role {other:?} (publish, subscribe, supervisor)"),
                        ));
                    }
                }
            }
            for scope in words {
                match scope.split_once(':') {
                    Some(("call", id)) if crate::event::is_valid_call_id(id) => {
                        grant.calls.push(id.to_owned())
                    }
                    Some(("agent", agent)) if !agent.is_empty() => {
                        grant.agents.push(agent.to_owned())
                    }
                    _ => {
                        return Err((n, format!("bad scope {scope:?} (call:ID or agent:AGENT)")));
                    }
                }
            }
            let scoped = !grant.calls.is_empty() || !grant.agents.is_empty();
            if subscribe && !scoped {
                return Err((n, "subscribe needs a scope: call:ID or agent:AGENT".into()));
            }
            if scoped && !subscribe {
                return Err((n, "scopes only apply to the subscribe role".into()));
            }
            entries.push((token.to_owned(), grant));
        }
        Ok((!entries.is_empty()).then_some(Self { entries }))
    }

    /// The grant of a presented token. Compares every token in constant
    /// time, so timing tells nothing about how close a guess was.
    pub fn grant(&self, presented: &str) -> Option<&Grant> {
        let mut found = None;
        for (token, grant) in &self.entries {
            if constant_time_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(grant);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request may do.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// No tokens configured: everything is allowed.
    Open,
    Token(&'a Grant),
}

impl Access<'_> {
    pub fn can_publish(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(g) => g.publish,
        }
    }

    pub fn can_subscribe_all(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(g) => g.supervisor,
        }
    }

    /// May this request follow `call_id`, whose agent is `agent` if known?
    pub fn can_subscribe(&self, call_id: &str, agent: Option<&str>) -> bool {
        match self {
            Access::Open => true,
            Access::Token(g) => {
                g.supervisor
                    || g.calls.iter().any(|c| c == call_id)
                    || agent.is_some_and(|a| g.agents.iter().any(|x| x == a))
            }
        }
    }

    /// Which past calls this request may find, export and score: a
    /// supervisor (or an open relay) every call, a subscribe token those of
    /// its scopes, a publish-only token none (`None`).
    pub fn history_scope(&self) -> Option<super::history::query::Scope> {
        use super::history::query::Scope;
        match self {
            Access::Open => Some(Scope::All),
            Access::Token(g) if g.supervisor => Some(Scope::All),
            Access::Token(g) if !g.agents.is_empty() || !g.calls.is_empty() => Some(Scope::Some {
                agents: g.agents.clone(),
                calls: g.calls.clone(),
            }),
            Access::Token(_) => None,
        }
    }

    /// Any valid token may read metrics and the calls it can see.
    pub fn can_read(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(g) => {
                g.publish || g.supervisor || !g.calls.is_empty() || !g.agents.is_empty()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbb";

    #[test]
    fn parses_roles_and_scopes() {
        let t = Tokens::parse(&format!(
            "# comment\n\n{A} publish\n{B} subscribe,publish agent:PJSIP/200 call:live # trailing\n"
        ))
        .unwrap()
        .unwrap();
        assert!(t.grant(A).unwrap().publish);
        let b = t.grant(B).unwrap();
        assert!(b.publish && !b.supervisor);
        assert_eq!(b.agents, ["PJSIP/200"]);
        assert_eq!(b.calls, ["live"]);
        assert!(t.grant("cccccccccccccccc").is_none());
        assert!(t.grant("").is_none());
        let access = Access::Token(b);
        assert!(access.can_subscribe("live", None));
        assert!(access.can_subscribe("x1", Some("PJSIP/200")));
        assert!(!access.can_subscribe("x1", Some("PJSIP/201")));
        assert!(!access.can_subscribe_all());
    }

    #[test]
    fn rejects_bad_lines_with_line_numbers() {
        let cases = [
            ("short publish", 1, "shorter"),
            (&format!("{A} publish\n{A} supervisor") as &str, 2, "twice"),
            (A, 1, "missing roles"),
            (&format!("{A} admin"), 1, "unknown role"),
            (&format!("{A} subscribe"), 1, "needs a scope"),
            (&format!("{A} subscribe team:x"), 1, "bad scope"),
            (&format!("{A} publish call:x"), 1, "only apply"),
        ];
        for (text, line, needle) in cases {
            let (n, msg) = Tokens::parse(text).unwrap_err();
            assert_eq!(n, line, "{text}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
        assert!(Tokens::parse("# nothing\n").unwrap().is_none());
    }
}
