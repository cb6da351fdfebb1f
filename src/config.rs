//! Configuration: built-in defaults < TOML file < original environment
//! variables (CONTRACT.md) < namespaced `CALL_COACH_*` variables.
//!
//! Every setting has a config-file key (`relay.listen`), a namespaced
//! variable (`CALL_COACH_RELAY__LISTEN`) and, where CONTRACT.md names one, its
//! original variable (`RELAY_LISTEN`). Secrets also come from a file
//! (`*_file` key or `*_FILE` variable) or a systemd credential
//! (`$CREDENTIALS_DIRECTORY/<key>`). Settings are read and checked before any
//! socket is bound; unknown keys are errors that name the key and the source.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// Names the TOML file to read instead of [`SYSTEM_CONFIG`].
pub const ENV_CONFIG: &str = "CALL_COACH_CONFIG";
/// Read when it exists and no other file was named.
pub const SYSTEM_CONFIG: &str = "/etc/call-coach/call-coach.toml";
/// Prefix of the namespaced variables; `__` separates the key path.
pub const ENV_PREFIX: &str = "CALL_COACH_";
/// systemd's state directory for the unit (`StateDirectory=`).
pub const ENV_SYSTEMD_STATE: &str = "STATE_DIRECTORY";
/// systemd's credentials directory (`LoadCredential=`).
pub const ENV_CREDENTIALS: &str = "CREDENTIALS_DIRECTORY";

/// The original variable names of CONTRACT.md and the keys each one sets.
/// A variable used by two services sets both.
const CONTRACT_ENV: &[(&str, &[&str])] = &[
    ("STATE_DIR", &["state_dir"]),
    ("MODEL_DIR", &["model_dir"]),
    ("RELAY_LISTEN", &["relay.listen"]),
    ("RELAY_TOKENS_FILE", &["relay.tokens_file"]),
    ("STT_LISTEN", &["stt.listen"]),
    ("LANG", &["stt.language"]),
    ("MODEL_SIZE", &["stt.model_size"]),
    ("DEVICE", &["stt.device"]),
    ("COMPUTE_TYPE", &["stt.compute_type"]),
    ("RELAY_URL", &["stt.relay_url"]),
    (
        "RELAY_TOKEN",
        &[
            "stt.relay_token",
            "orchestrator.relay_token",
            "ari_coach.relay_token",
        ],
    ),
    (
        "RELAY_TOKEN_FILE",
        &[
            "stt.relay_token_file",
            "orchestrator.relay_token_file",
            "ari_coach.relay_token_file",
        ],
    ),
    ("CALL_ID", &["rtp2ws.call_id"]),
    ("BASE_PORT", &["rtp2ws.base_port", "ari_coach.base_port"]),
    (
        "RTP2WS_CONTROL",
        &["rtp2ws.control", "ari_coach.rtp2ws_control"],
    ),
    ("STT_URL", &["rtp2ws.stt_url"]),
    ("OPENROUTER_API_KEY", &["orchestrator.openrouter_api_key"]),
    (
        "OPENROUTER_API_KEY_FILE",
        &["orchestrator.openrouter_api_key_file"],
    ),
    ("OPENROUTER_MODEL", &["orchestrator.openrouter_model"]),
    ("LLM_BASE_URL", &["orchestrator.llm_base_url"]),
    ("RELAY_WS", &["orchestrator.relay_ws"]),
    (
        "RELAY_EVENT",
        &["orchestrator.relay_event", "ari_coach.relay_event"],
    ),
    ("ARI_URL", &["ari_coach.ari_url"]),
    ("ARI_USER", &["ari_coach.ari_user"]),
    ("ARI_PASS", &["ari_coach.ari_pass"]),
    ("ARI_PASS_FILE", &["ari_coach.ari_pass_file"]),
    ("ARI_APP", &["ari_coach.ari_app"]),
    ("AGENT_DIAL", &["ari_coach.agent_dial"]),
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
    let system = Path::new("/var/lib/call-coach");
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
    #[error("{}", describe_figment(.0))]
    Figment(#[from] Box<figment::Error>),
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

/// Settings as loaded, with what is needed to say where each came from.
pub struct Loaded {
    pub settings: Settings,
    figment: Figment,
    /// Sources of values that did not come through figment (secret files).
    extra_sources: BTreeMap<String, String>,
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
    for (var, keys) in CONTRACT_ENV {
        let Some((_, value)) = env.iter().find(|(k, _)| k == var) else {
            continue;
        };
        let value = if *var == "LANG" {
            match language_from_locale(value) {
                Some(lang) => lang,
                None => continue,
            }
        } else {
            value.clone()
        };
        if value.is_empty() {
            continue;
        }
        figment = figment.merge(EnvVar::new(var, keys, value));
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
        figment = figment.merge(EnvVar::new(var, &[key.as_str()], value.clone()));
    }

    let settings: Settings = figment.extract_lossy().map_err(Box::new)?;
    let mut loaded = Loaded {
        settings,
        figment,
        extra_sources: BTreeMap::new(),
    };
    loaded.resolve_secrets(env)?;
    loaded.validate()?;
    Ok(loaded)
}

/// `es_ES.UTF-8` -> `es`; `C`, `POSIX` and `C.UTF-8` mean "the default".
pub fn language_from_locale(locale: &str) -> Option<String> {
    let lang = locale
        .split(['_', '.', '@', '-'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match lang.as_str() {
        "" | "c" | "posix" => None,
        _ => Some(lang),
    }
}

impl Loaded {
    /// Fills secrets from `*_file` settings or systemd credentials.
    fn resolve_secrets(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        let credentials = env
            .iter()
            .find(|(k, _)| k == ENV_CREDENTIALS)
            .map(|(_, v)| PathBuf::from(v));
        let s = &mut self.settings;
        let slots: [(&str, &mut Option<Secret>, &Option<PathBuf>); 5] = [
            (
                "orchestrator.relay_token",
                &mut s.orchestrator.relay_token,
                &s.orchestrator.relay_token_file,
            ),
            (
                "stt.relay_token",
                &mut s.stt.relay_token,
                &s.stt.relay_token_file,
            ),
            (
                "orchestrator.openrouter_api_key",
                &mut s.orchestrator.openrouter_api_key,
                &s.orchestrator.openrouter_api_key_file,
            ),
            (
                "ari_coach.relay_token",
                &mut s.ari_coach.relay_token,
                &s.ari_coach.relay_token_file,
            ),
            (
                "ari_coach.ari_pass",
                &mut s.ari_coach.ari_pass,
                &s.ari_coach.ari_pass_file,
            ),
        ];
        for (key, value, file) in slots {
            if value.is_some() {
                continue;
            }
            let name = key.rsplit('.').next().unwrap_or(key);
            let (path, source) = match (file, &credentials) {
                (Some(path), _) => (path.clone(), format!("file {}", path.display())),
                (None, Some(dir)) if dir.join(name).is_file() => {
                    let path = dir.join(name);
                    let source = format!("systemd credential {name}");
                    (path, source)
                }
                _ => continue,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::SecretFile {
                key: key.to_owned(),
                path: path.clone(),
                source: e,
            })?;
            *value = Some(Secret::new(text.trim_end_matches(['\n', '\r'])));
            self.extra_sources.insert(key.to_owned(), source);
        }
        if s.relay.tokens_file.is_none()
            && let Some(dir) = credentials
        {
            let path = dir.join(crate::relay::TOKENS_CREDENTIAL);
            if path.is_file() {
                s.relay.tokens_file = Some(path);
                self.extra_sources.insert(
                    "relay.tokens_file".into(),
                    format!("systemd credential {}", crate::relay::TOKENS_CREDENTIAL),
                );
            }
        }
        Ok(())
    }

    /// Checks that need more than a type: each names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        self.settings.relay.validate()?;
        self.settings.stt.validate()?;
        self.settings.rtp2ws.validate()?;
        self.settings.ari_coach.validate()?;
        if self.settings.shutdown_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                "shutdown_timeout_secs",
                "must be at least 1",
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
            Some(md) => describe(md),
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
                (key, value, source)
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

/// Every error figment found, one per line, as `key: problem (source)`.
fn describe_figment(err: &figment::Error) -> String {
    err.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(describe);
            match (key.is_empty(), source) {
                (true, Some(src)) => format!("{} (from {src})", e.kind),
                (true, None) => e.kind.to_string(),
                (false, Some(src)) => format!("{key}: {} (from {src})", e.kind),
                (false, None) => format!("{key}: {}", e.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe(md: &Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(path)) => format!("{} {}", md.name, path.display()),
        // The built-in defaults are the only values serialized from code.
        Some(figment::Source::Code(_)) => "default".into(),
        Some(other) => format!("{} ({other})", md.name),
        None => md.name.to_string(),
    }
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
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// One environment variable as a figment provider, so that every value
/// knows the variable it came from. Values stay strings; `extract_lossy`
/// turns them into numbers and booleans where a field wants one.
struct EnvVar {
    name: String,
    keys: Vec<String>,
    value: String,
}

impl EnvVar {
    fn new(name: &str, keys: &[&str], value: String) -> Self {
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
            insert_path(&mut root, key, Value::from(self.value.clone()));
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

    #[test]
    fn shared_variables_set_both_services() {
        let l = load_from(None, &env(&[("BASE_PORT", "15000")])).unwrap();
        assert_eq!(l.settings.rtp2ws.base_port, 15000);
        assert_eq!(l.settings.ari_coach.base_port, 15000);
    }

    #[test]
    fn lang_takes_the_language_part() {
        assert_eq!(language_from_locale("es_ES.UTF-8").as_deref(), Some("es"));
        assert_eq!(language_from_locale("pt-BR").as_deref(), Some("pt"));
        assert_eq!(language_from_locale("C.UTF-8"), None);
        assert_eq!(language_from_locale("POSIX"), None);
        let l = load_from(None, &env(&[("LANG", "C")])).unwrap();
        assert_eq!(l.settings.stt.language, "es");
        let l = load_from(None, &env(&[("LANG", "en_US.UTF-8")])).unwrap();
        assert_eq!(l.settings.stt.language, "en");
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
