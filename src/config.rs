//! Configuration: built-in defaults < TOML file < original environment
//! variables (docs/contract.md) < namespaced `CALL_COACH_*` variables.
//!
//! Every setting has a config-file key (`relay.listen`), a namespaced
//! variable (`CALL_COACH_RELAY__LISTEN`) and, where docs/contract.md names one, its
//! original variable (`RELAY_LISTEN`). Secrets also come from a file
//! (`*_file` key or `*_FILE` variable) or a systemd credential
//! (`$CREDENTIALS_DIRECTORY/<key>`). Settings are read and checked before any
//! socket is bound; unknown keys are errors that name the key and the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::setting::{ConfigError, Secret, Section, Var, describe_source};

/// Names the TOML file to read instead of [`SYSTEM_CONFIG`].
pub const ENV_CONFIG: &str = "CALL_COACH_CONFIG";
/// Read when it exists and no other file was named.
pub const SYSTEM_CONFIG: &str = "/etc/call-coach/call-coach.toml";
/// The state directory of a system install (the units' StateDirectory).
const SYSTEM_STATE_DIR: &str = "/var/lib/call-coach";
/// Prefix of the namespaced variables; `__` separates the key path.
pub const ENV_PREFIX: &str = "CALL_COACH_";
/// systemd's state directory for the unit (`StateDirectory=`).
pub const ENV_SYSTEMD_STATE: &str = "STATE_DIRECTORY";
/// systemd's credentials directory (`LoadCredential=`).
pub const ENV_CREDENTIALS: &str = "CREDENTIALS_DIRECTORY";

/// The original variables of docs/contract.md that set common keys; each
/// service declares its own in its [`Section`].
const COMMON_ENV: &[Var] = &[
    Var::new("STATE_DIR", "state_dir"),
    Var::new("MODEL_DIR", "model_dir"),
];

/// The whole configuration of every service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where durable state lives (relay store, models). `STATE_DIR`;
    /// defaults to systemd's `$STATE_DIRECTORY`, else `/var/lib/call-coach`
    /// when usable, else a per-user data directory.
    pub state_dir: PathBuf,
    /// Where Whisper models live. `MODEL_DIR`; defaults to `$STATE_DIR/models`.
    pub model_dir: Option<PathBuf>,
    /// How long a service may take to stop after SIGTERM/SIGINT before it
    /// exits anyway, in seconds.
    pub shutdown_timeout_secs: u64,
    pub relay: crate::relay::Settings,
    pub stt: crate::stt::Settings,
    pub rtp2ws: crate::rtp2ws::Settings,
    pub orchestrator: crate::orchestrator::Settings,
    pub ari_coach: crate::ari_coach::Settings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            model_dir: None,
            shutdown_timeout_secs: 10,
            relay: Default::default(),
            stt: Default::default(),
            rtp2ws: Default::default(),
            orchestrator: Default::default(),
            ari_coach: Default::default(),
        }
    }
}

impl Settings {
    /// `MODEL_DIR`, or `$STATE_DIR/models`.
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("models"))
    }

    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// `$STATE_DIRECTORY` (first entry), else `/var/lib/call-coach` when it
/// exists and is writable, else `$XDG_DATA_HOME/call-coach`.
fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_SYSTEMD_STATE)
        && let Some(first) = dir.to_string_lossy().split(':').find(|s| !s.is_empty())
    {
        return PathBuf::from(first);
    }
    let system = Path::new(SYSTEM_STATE_DIR);
    if is_writable_dir(system) {
        return system.to_owned();
    }
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    data_home.join("call-coach")
}

/// Whether `dir` exists and this process may create files in it. Asks
/// the kernel rather than writing, so looking changes nothing.
fn is_writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0
}

/// Settings as loaded, with what is needed to say where each came from.
pub struct Loaded {
    pub settings: Settings,
    figment: Figment,
    /// Sources of values that did not come through figment (secret files).
    extra_sources: BTreeMap<String, String>,
    /// Variables that were set but ignored, and why: for the service's log.
    pub notices: Vec<String>,
}

/// Where the configuration file comes from.
pub fn config_path(cli: Option<&Path>) -> Option<(PathBuf, bool)> {
    if let Some(p) = cli {
        return Some((p.to_owned(), true));
    }
    if let Some(p) = std::env::var_os(ENV_CONFIG).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let system = PathBuf::from(SYSTEM_CONFIG);
    system.exists().then_some((system, false))
}

/// Loads and checks the configuration. `cli_config` is `--config PATH`.
pub fn load(cli_config: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    load_from(cli_config, &env)
}

/// [`load`] with the environment passed in, for tests.
pub fn load_from(
    cli_config: Option<&Path>,
    env: &[(String, String)],
) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some((path, required)) = config_path(cli_config) {
        // Read it ourselves so a missing or unreadable file is a clear error.
        match std::fs::read_to_string(&path) {
            Ok(_) => figment = figment.merge(Toml::file_exact(&path)),
            Err(e) if required || e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ConfigError::File { path, source: e });
            }
            Err(_) => {}
        }
    }
    let mut notices = Vec::new();
    for (var, keys) in contract_env() {
        let Some((_, value)) = env.iter().find(|(k, _)| *k == var.name) else {
            continue;
        };
        let value = match (var.read)(value) {
            Ok(v) if !v.is_empty() => v,
            Ok(_) => continue,
            Err(why) => {
                if !why.is_empty() {
                    notices.push(why);
                }
                continue;
            }
        };
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        figment = figment.merge(EnvVar::new(var.name, &keys, Value::from(value)));
    }
    let mut namespaced: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG)
        .collect();
    namespaced.sort();
    for (var, value) in namespaced {
        let key = var[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        let is_list = matches!(figment.find_value(&key), Ok(Value::Array(..)));
        let value = if is_list {
            env_list(value)
        } else {
            Value::from(value.clone())
        };
        figment = figment.merge(EnvVar::new(var, &[key.as_str()], value));
    }

    let settings: Settings = figment
        .extract_lossy()
        .map_err(|e| ConfigError::Values(describe_errors(&e, &figment)))?;
    let mut loaded = Loaded {
        settings,
        figment,
        extra_sources: BTreeMap::new(),
        notices,
    };
    loaded.resolve_secrets(env)?;
    loaded.validate()?;
    Ok(loaded)
}

/// Fills one section's secrets from their `*_file` settings or systemd
/// credentials (named like the key), and its credential paths.
fn resolve_section<S: Section>(
    section: &mut S,
    credentials: Option<&Path>,
    sources: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for slot in section.secrets() {
        if slot.value.is_some() {
            continue;
        }
        let key = format!("{}.{}", S::KEY, slot.key);
        let name = slot.key;
        let (path, source) = match (&slot.file, credentials) {
            (Some(path), _) => (path.clone(), format!("file {}", path.display())),
            (None, Some(dir)) if dir.join(name).is_file() => {
                (dir.join(name), format!("systemd credential {name}"))
            }
            _ => continue,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::SecretFile {
            key: key.clone(),
            path: path.clone(),
            source: e,
        })?;
        *slot.value = Some(Secret::new(text.trim_end_matches(['\n', '\r'])));
        sources.insert(key, source);
    }
    for slot in section.credential_paths() {
        let Some(dir) = credentials else { break };
        let path = dir.join(slot.credential);
        if slot.value.is_none() && path.is_file() {
            *slot.value = Some(path);
            sources.insert(
                format!("{}.{}", S::KEY, slot.key),
                format!("systemd credential {}", slot.credential),
            );
        }
    }
    Ok(())
}

/// Every original variable with the full keys it sets: the common ones
/// and each service's, a variable two services declare setting both.
fn contract_env() -> Vec<(Var, Vec<String>)> {
    let mut out: Vec<(Var, Vec<String>)> = COMMON_ENV
        .iter()
        .map(|v| (*v, vec![v.key.to_owned()]))
        .collect();
    let sections: [(&str, &[Var]); 5] = [
        (crate::relay::Settings::KEY, crate::relay::Settings::ENV),
        (crate::stt::Settings::KEY, crate::stt::Settings::ENV),
        (crate::rtp2ws::Settings::KEY, crate::rtp2ws::Settings::ENV),
        (
            crate::orchestrator::Settings::KEY,
            crate::orchestrator::Settings::ENV,
        ),
        (
            crate::ari_coach::Settings::KEY,
            crate::ari_coach::Settings::ENV,
        ),
    ];
    for (section, vars) in sections {
        for v in vars {
            let key = format!("{section}.{}", v.key);
            match out.iter_mut().find(|(o, _)| o.name == v.name) {
                Some((_, keys)) => keys.push(key),
                None => out.push((*v, vec![key])),
            }
        }
    }
    out
}

impl Loaded {
    /// Fills secrets from `*_file` settings or systemd credentials.
    fn resolve_secrets(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        let credentials = env
            .iter()
            .find(|(k, _)| k == ENV_CREDENTIALS)
            .map(|(_, v)| PathBuf::from(v));
        let dir = credentials.as_deref();
        let s = &mut self.settings;
        let sources = &mut self.extra_sources;
        resolve_section(&mut s.relay, dir, sources)?;
        resolve_section(&mut s.stt, dir, sources)?;
        resolve_section(&mut s.rtp2ws, dir, sources)?;
        resolve_section(&mut s.orchestrator, dir, sources)?;
        resolve_section(&mut s.ari_coach, dir, sources)?;
        Ok(())
    }

    /// Checks that need more than a type: each names its key and where
    /// the bad value came from.
    fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let source = self.source_of(&key);
                ConfigError::Invalid {
                    message: format!("{message} (from {source})"),
                    key,
                }
            }
            other => other,
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        s.relay.validate()?;
        s.stt.validate()?;
        s.rtp2ws.validate()?;
        s.orchestrator.validate()?;
        s.ari_coach.validate()?;
        if s.shutdown_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "shutdown_timeout_secs",
                "must be at least 1",
            ));
        }
        // A model size is a known one or the name of a model installed in
        // model_dir (`model import --name`).
        let size = &s.stt.model_size;
        if s.stt.model_file.is_none()
            && !crate::stt::model::is_known_size(size)
            && !crate::stt::model::list(&s.model_dir())
                .unwrap_or_default()
                .iter()
                .any(|m| m.name() == *size)
        {
            return Err(ConfigError::invalid(
                "stt.model_size",
                format!(
                    "{size:?} is not a Whisper model size ({}) nor a model installed in {}",
                    crate::stt::model::KNOWN_SIZES.join(", "),
                    s.model_dir().display()
                ),
            ));
        }
        Ok(())
    }

    /// Where the value at `key` came from, in words.
    pub fn source_of(&self, key: &str) -> String {
        if let Some(s) = self.extra_sources.get(key) {
            return s.clone();
        }
        match self.figment.find_metadata(key) {
            Some(md) => describe_source(md),
            None => "default".into(),
        }
    }

    /// The effective settings as `key = value  # source` lines, secrets
    /// redacted. `service` limits the output to the common keys and that
    /// service's section.
    pub fn render(&self, service: Option<&str>) -> String {
        let mut leaves = Vec::new();
        let value = serde_json::to_value(&self.settings).unwrap_or_default();
        flatten("", &value, &mut leaves);
        let section = service.map(|s| s.replace('-', "_"));
        let mut out = String::new();
        let lines: Vec<(String, String, String)> = leaves
            .into_iter()
            .filter(|(key, _)| match (&section, key.split_once('.')) {
                (None, _) | (_, None) => true,
                (Some(sec), Some((head, _))) => head == sec,
            })
            .map(|(key, value)| {
                let source = self.source_of(&key);
                self.effective(key, value, source)
            })
            .collect();
        let width = lines
            .iter()
            .map(|(k, v, _)| k.len() + v.len() + 3)
            .max()
            .unwrap_or(0);
        for (key, value, source) in lines {
            let assign = format!("{key} = {value}");
            out.push_str(&format!("{assign:<width$}  # {source}\n"));
        }
        out
    }
}

/// Every error figment found, one per line, as `key = value: problem (from
/// source)`, an unknown key with the keys its section has.
fn describe_errors(err: &figment::Error, figment: &Figment) -> String {
    use figment::error::Kind;
    err.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|md| format!(" (from {})", describe_source(md)))
                .unwrap_or_default();
            let value = figment.find_value(&key).ok().and_then(|v| match v {
                Value::String(_, s) => Some(format!("{s:?}")),
                Value::Num(_, n) => n.to_f64().map(|n| n.to_string()),
                Value::Bool(_, b) => Some(b.to_string()),
                _ => None,
            });
            match (&e.kind, key.is_empty(), value) {
                (Kind::UnknownField(field, expected), _, _) => format!(
                    "{key}: unknown key {field:?}; the keys here are: {}{source}",
                    expected.join(", ")
                ),
                (kind, true, _) => format!("{kind}{source}"),
                (kind, false, Some(v)) => format!("{key} = {v}: {kind}{source}"),
                (kind, false, None) => format!("{key}: {kind}{source}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Loaded {
    /// What a key really does where its written value says less: an unset
    /// `model_dir` is `$STATE_DIR/models`, an unset `stt.min_audio_ctx`
    /// follows `stt.device`; `relay_ws` is followed as `callId=*` unless
    /// `single_call`.
    fn effective(&self, key: String, value: String, source: String) -> (String, String, String) {
        let s = &self.settings;
        if let Some((value, rule)) = derived_default(&key, s) {
            return (key, value, format!("{source}: {rule}"));
        }
        match key.as_str() {
            "model_dir" if s.model_dir.is_none() => {
                let path = format!("{:?}", s.model_dir().display().to_string());
                (key, path, format!("{source}: $STATE_DIR/models"))
            }
            "orchestrator.relay_ws" if !s.orchestrator.single_call => (
                key,
                value,
                format!("{source}; followed as callId=* (orchestrator.single_call = false)"),
            ),
            _ => (key, value, source),
        }
    }
}

/// What an unset key stands for where its default follows another key:
/// the value now, and the rule (`stt.min_audio_ctx` follows
/// `stt.device`). `check-config` and the example show both.
fn derived_default(key: &str, s: &Settings) -> Option<(String, String)> {
    match key {
        "stt.min_audio_ctx" if s.stt.min_audio_ctx.is_none() => Some((
            s.stt.audio_ctx_floor().to_string(),
            crate::stt::Settings::audio_ctx_floor_rule(),
        )),
        _ => None,
    }
}

/// A configuration file with every key at its built-in default, commented
/// out, one TOML table per section (`check-config --example`; the release
/// tarball's `call-coach.toml.example`). Uncommenting a key changes
/// nothing until its value is edited. Unset keys show an empty string,
/// but for a number whose default follows another key: its value for the
/// other key's default, and the rule.
pub fn example_toml() -> String {
    let settings = Settings {
        // The path the units give (systemd's StateDirectory), not this user's.
        state_dir: PathBuf::from(SYSTEM_STATE_DIR),
        ..Settings::default()
    };
    let mut leaves = Vec::new();
    flatten(
        "",
        &serde_json::to_value(&settings).unwrap_or_default(),
        &mut leaves,
    );
    // One table each: a section's keys together, its subsections after it.
    let split = |key: &str| -> (String, String) {
        match key.rsplit_once('.') {
            Some((section, name)) => (section.to_owned(), name.to_owned()),
            None => (String::new(), key.to_owned()),
        }
    };
    let mut leaves: Vec<(String, String, String)> = leaves
        .into_iter()
        .map(|(key, value)| {
            let (section, name) = split(&key);
            (section, name, value)
        })
        .collect();
    leaves.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from(
        "# call-coach configuration: /etc/call-coach/call-coach.toml (or --config,\n\
         # or CALL_COACH_CONFIG). Every key is here at its built-in default,\n\
         # commented out: uncomment and edit what you change; a key shown as\n\
         # \"\" has no default. Environment variables override this file\n\
         # (README \"Configuration\"); `call-coach check-config` prints the\n\
         # result and where each value came from. Secrets go in files or\n\
         # systemd credentials, never here.\n",
    );
    let mut table = String::new();
    for (section, name, value) in leaves {
        if section != table {
            out.push_str(&format!("\n[{section}]\n"));
            table = section;
        }
        let value = match derived_default(&format!("{table}.{name}"), &settings) {
            Some((value, rule)) => format!("{value}  # unset: {rule}"),
            None if value == "<unset>" => "\"\"  # unset".to_owned(),
            None => value,
        };
        out.push_str(&format!("# {name} = {value}\n"));
    }
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Null => out.push((prefix.to_owned(), "<unset>".into())),
        // An f32 setting widened to f64 (0.6 -> 0.6000000238418579) is
        // shown as written.
        serde_json::Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() != 0.0 && f64::from(f as f32) == f) =>
        {
            let f = n.as_f64().unwrap_or_default() as f32;
            out.push((prefix.to_owned(), f.to_string()));
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// One environment variable as a figment provider, so that every value
/// knows the variable it came from. Values stay strings; `extract_lossy`
/// turns them into numbers and booleans where a field wants one.
/// A list setting's value from the environment: TOML's `["a", "b"]`
/// (or `[a, b]`), else words split at commas (`a, b`; empty: none).
fn env_list(value: &str) -> Value {
    match value.parse::<Value>() {
        Ok(v @ Value::Array(..)) => v,
        _ => Value::from(
            value
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(|w| Value::from(w.to_owned()))
                .collect::<Vec<Value>>(),
        ),
    }
}

struct EnvVar {
    name: String,
    keys: Vec<String>,
    value: Value,
}

impl EnvVar {
    fn new(name: &str, keys: &[&str], value: Value) -> Self {
        Self {
            name: name.to_owned(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            value,
        }
    }
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for key in &self.keys {
            insert_path(&mut root, key, self.value.clone());
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert_path(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("cc.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_list_setting_is_read_from_the_environment() {
        for (value, words) in [
            (
                r#"["Movistar", "fibra óptica"]"#,
                &["Movistar", "fibra óptica"][..],
            ),
            ("[Movistar, Vodafone]", &["Movistar", "Vodafone"]),
            ("Movistar, fibra óptica", &["Movistar", "fibra óptica"]),
            ("Movistar", &["Movistar"]),
            ("", &[]),
        ] {
            let l = load_from(None, &env(&[("CALL_COACH_STT__HOTWORDS", value)])).unwrap();
            assert_eq!(l.settings.stt.hotwords, words, "{value}");
        }
        // A string setting keeps its brackets and commas.
        let l = load_from(None, &env(&[("CALL_COACH_STT__PROMPT", "[a, b]")])).unwrap();
        assert_eq!(l.settings.stt.prompt.as_deref(), Some("[a, b]"));
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[relay]\nlisten = \"127.0.0.1:1000\"\nretention_days = 3\n",
        );
        let l = load_from(Some(&file), &env(&[])).unwrap();
        assert_eq!(l.settings.relay.listen.port(), 1000);
        assert!(l.source_of("relay.listen").contains("cc.toml"));

        let l = load_from(Some(&file), &env(&[("RELAY_LISTEN", "127.0.0.1:2000")])).unwrap();
        assert_eq!(l.settings.relay.listen.port(), 2000);
        assert_eq!(
            l.source_of("relay.listen"),
            "environment variable RELAY_LISTEN"
        );
        assert_eq!(l.settings.relay.retention_days, 3);

        let l = load_from(
            Some(&file),
            &env(&[
                ("RELAY_LISTEN", "127.0.0.1:2000"),
                ("CALL_COACH_RELAY__LISTEN", "127.0.0.1:3000"),
            ]),
        )
        .unwrap();
        assert_eq!(l.settings.relay.listen.port(), 3000);
        assert!(l.source_of("relay.retention_days").contains("cc.toml"));
        assert_eq!(l.source_of("relay.subscriber_queue"), "default");
    }

    /// Every key of `check-config --example` that has a value loads when
    /// uncommented, as it stands, and changes nothing on the default
    /// device.
    #[test]
    fn the_example_loads_with_every_valued_key_uncommented() {
        let example = example_toml();
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv)
                    if kv.split_once(" = ").is_some_and(|(k, v)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                            && !v.starts_with("\"\"")
                    }) =>
                {
                    kv.to_owned()
                }
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(uncommented.contains("\nmin_audio_ctx = 256"), "{example}");
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &uncommented);
        let l = load_from(Some(&file), &env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.settings.stt.min_audio_ctx, Some(256));
        assert_eq!(l.settings.stt.decode_options().min_audio_ctx, 256);
        // Unset, check-config says what it follows.
        let l = load_from(None, &env(&[])).unwrap();
        let shown = l.render(Some("stt"));
        assert!(
            shown.contains("stt.min_audio_ctx = 256") && shown.contains("1500 on \"cuda\""),
            "{shown}"
        );
    }

    #[test]
    fn shared_variables_set_both_services() {
        let l = load_from(None, &env(&[("BASE_PORT", "15000")])).unwrap();
        assert_eq!(l.settings.rtp2ws.base_port, 15000);
        assert_eq!(l.settings.ari_coach.base_port, 15000);
    }

    #[test]
    fn lang_sets_the_call_language_only_as_a_bare_code() {
        use crate::stt::language_from_lang as lang;
        assert_eq!(lang("es"), Ok("es".into()));
        assert_eq!(lang("PT"), Ok("pt".into()));
        assert_eq!(lang("C.UTF-8"), Err(String::new()));
        assert_eq!(lang("POSIX"), Err(String::new()));
        assert!(lang("en_US.UTF-8").unwrap_err().contains("stt.language"));
        // The original units' LANG=es.
        let l = load_from(None, &env(&[("LANG", "en")])).unwrap();
        assert_eq!(l.settings.stt.language, "en");
        assert!(l.notices.is_empty());
        // A shell's locale leaves the default, and says so.
        let l = load_from(None, &env(&[("LANG", "en_US.UTF-8")])).unwrap();
        assert_eq!(l.settings.stt.language, "es");
        assert_eq!(l.notices.len(), 1, "{:?}", l.notices);
        assert!(l.notices[0].contains("LANG=en_US.UTF-8"), "{:?}", l.notices);
        let l = load_from(None, &env(&[("LANG", "C")])).unwrap();
        assert_eq!(l.settings.stt.language, "es");
        assert!(l.notices.is_empty());
        // The namespaced key wins over LANG.
        let l = load_from(
            None,
            &env(&[("LANG", "en"), ("CALL_COACH_STT__LANGUAGE", "pt")]),
        )
        .unwrap();
        assert_eq!(l.settings.stt.language, "pt");
    }

    #[test]
    fn a_language_or_model_size_whisper_does_not_know_is_refused() {
        let err = load_from(None, &env(&[("LANG", "xx")]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("stt.language") && err.contains("\"xx\""),
            "{err}"
        );
        assert!(err.contains("LANG"), "the source is named: {err}");
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().display().to_string();
        let err = load_from(
            None,
            &env(&[("MODEL_SIZE", "huge"), ("MODEL_DIR", models.as_str())]),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("stt.model_size") && err.contains("huge"),
            "{err}"
        );
        assert!(err.contains("MODEL_SIZE"), "the source is named: {err}");
        // A model imported under a name of its own is fine.
        // Just a header: `model list` reads no more.
        let mut head = crate::stt::model::ggml::MAGIC.to_le_bytes().to_vec();
        for word in [51865, 1500, 512, 8, 6, 448, 512, 8, 6, 80, 7] {
            head.extend_from_slice(&i32::to_le_bytes(word));
        }
        std::fs::write(dir.path().join("ggml-acme-q8_0.bin"), head).unwrap();
        let l = load_from(
            None,
            &env(&[("MODEL_SIZE", "acme"), ("MODEL_DIR", models.as_str())]),
        )
        .unwrap();
        assert_eq!(l.settings.stt.model_size, "acme");
    }

    #[test]
    fn unknown_keys_name_key_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[relay]\nlisten_on = \"x\"\n");
        let err = load_from(Some(&file), &env(&[])).err().unwrap().to_string();
        assert!(err.contains("listen_on"), "{err}");
        assert!(err.contains("cc.toml"), "{err}");

        let err = load_from(None, &env(&[("CALL_COACH_RELAY__BOGUS", "1")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("CALL_COACH_RELAY__BOGUS"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let err = load_from(None, &env(&[("RELAY_LISTEN", "not-an-address")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("relay.listen"), "{err}");
        assert!(err.contains("RELAY_LISTEN"), "{err}");
        let err = load_from(None, &env(&[("BASE_PORT", "99999")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("base_port"), "{err}");
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let err = load_from(Some(Path::new("/nonexistent/x.toml")), &env(&[]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
    }

    #[test]
    fn secrets_from_env_file_and_credentials_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "sk-from-file\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("ari_pass"), "from-cred").unwrap();
        let l = load_from(
            None,
            &env(&[
                ("OPENROUTER_API_KEY_FILE", key_file.to_str().unwrap()),
                ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
            ]),
        )
        .unwrap();
        let s = &l.settings;
        assert_eq!(
            s.orchestrator.openrouter_api_key.as_ref().unwrap().expose(),
            "sk-from-file"
        );
        assert_eq!(s.ari_coach.ari_pass.as_ref().unwrap().expose(), "from-cred");
        let text = l.render(None);
        assert!(!text.contains("sk-from-file") && !text.contains("from-cred"));
        assert!(text.contains("systemd credential ari_pass"), "{text}");
        assert!(!format!("{s:?}").contains("from-cred"));

        // A number-looking secret in the environment stays a string.
        let l = load_from(None, &env(&[("ARI_PASS", "123456")])).unwrap();
        assert_eq!(
            l.settings.ari_coach.ari_pass.as_ref().unwrap().expose(),
            "123456"
        );
    }

    #[test]
    fn render_limits_to_a_service() {
        let l = load_from(None, &env(&[])).unwrap();
        let text = l.render(Some("relay"));
        assert!(text.contains("relay.listen = \"127.0.0.1:7070\""), "{text}");
        assert!(text.contains("state_dir"));
        assert!(!text.contains("stt."));
    }
}
