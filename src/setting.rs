//! What every service's settings are made of, and nothing else: the
//! [`Section`] each service declares beside its fields (its original
//! variable names, its secret slots, its checks), [`Secret`], and
//! [`ConfigError`]. A leaf: it imports no module of this crate, so the
//! services depend on it and `config` (the loader) depends on them, never
//! the other way round.

use std::fmt;
use std::path::PathBuf;

use figment::Metadata;
use serde::{Deserialize, Serialize};

/// One service's `[section]` of the configuration.
pub trait Section {
    /// The section's name in the TOML file and in `CALL_COACH_<KEY>__*`.
    const KEY: &'static str;
    /// The original variables of docs/contract.md that set keys of this
    /// section (keys relative to it). A variable shared by two services is
    /// declared by both.
    const ENV: &'static [Var];

    /// The secrets this section reads from files or systemd credentials,
    /// when not given directly (keys relative to the section).
    fn secrets(&mut self) -> Vec<SecretSlot<'_>> {
        Vec::new()
    }

    /// Paths that a systemd credential of this name fills when unset.
    fn credential_paths(&mut self) -> Vec<PathSlot<'_>> {
        Vec::new()
    }

    /// Checks that need more than a type; each error names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// An original environment variable and the key it sets.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    pub key: &'static str,
    /// Turns the variable's text into the key's value; `Err(why)` ignores
    /// the variable, `why` (when not empty) saying so in the service's log.
    pub read: fn(&str) -> Result<String, String>,
}

impl Var {
    pub const fn new(name: &'static str, key: &'static str) -> Var {
        Var {
            name,
            key,
            read: as_is,
        }
    }

    pub const fn read_with(
        name: &'static str,
        key: &'static str,
        read: fn(&str) -> Result<String, String>,
    ) -> Var {
        Var { name, key, read }
    }
}

fn as_is(v: &str) -> Result<String, String> {
    Ok(v.to_owned())
}

/// A secret value and the `*_file` setting that may hold it. Its systemd
/// credential is named like the key's last part (`ari_pass`).
pub struct SecretSlot<'a> {
    pub key: &'static str,
    pub value: &'a mut Option<Secret>,
    pub file: Option<PathBuf>,
}

impl<'a> SecretSlot<'a> {
    pub fn new(key: &'static str, value: &'a mut Option<Secret>, file: &Option<PathBuf>) -> Self {
        Self {
            key,
            value,
            file: file.clone(),
        }
    }
}

/// A path setting that the systemd credential `credential` fills.
pub struct PathSlot<'a> {
    pub key: &'static str,
    pub credential: &'static str,
    pub value: &'a mut Option<PathBuf>,
}

/// A secret value: never printed, logged or serialized in the clear.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A configuration problem, with the key and the source it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Values that do not fit their keys, one per line (the loader
    /// describes them with the values themselves).
    #[error("{0}")]
    Values(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key}: cannot read secret from {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Where a value came from, in words.
pub fn describe_source(md: &Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(path)) => format!("{} {}", md.name, path.display()),
        // The built-in defaults are the only values serialized from code.
        Some(figment::Source::Code(_)) => "default".into(),
        Some(other) => format!("{} ({other})", md.name),
        None => md.name.to_string(),
    }
}
