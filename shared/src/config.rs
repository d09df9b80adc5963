//! The agent's configuration (PROTOCOL.md §2.6 plus this agent's own keys).
//!
//! Precedence: defaults < config file < environment. Every key is described
//! once in [`KEYS`] (name, environment variables, kind, default, meaning);
//! loading, `config set`, `config show`, writing and the README table all
//! follow that table.
//!
//! The file is JSON with snake_case keys; durations use Go's syntax (`10m0s`).
//! Empty strings in the file are ignored, as in the original agent. Unknown
//! keys are kept when the file is rewritten and reported as warnings, so a
//! file written by another agent version still loads.
//!
//! The node identity lives in the state file ([`crate::identity`]);
//! `node_id`/`agent_token` here are read for compatibility only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::api::RootProfile;
use crate::atomic_file::{self, FileError};
use crate::go_duration;

/// Environment variable naming the config file explicitly.
pub const CONFIG_FILE_ENV: &str = "NODERAX_CONFIG_FILE";
/// Environment variable naming a second file that receives a copy on write.
pub const CONFIG_MIRROR_ENV: &str = "NODERAX_CONFIG_MIRROR_FILE";
/// Where the installed agent keeps its config.
pub const INSTALLED_CONFIG_FILE: &str = "/etc/noderax-agent/config.json";
/// Searched in this order when no file is named (first existing wins).
pub const SEARCH_PATH: [&str; 5] = [
    "./config.local.json",
    "./config.json",
    "./config/config.json",
    "/usr/local/etc/noderax-agent/config.json",
    INSTALLED_CONFIG_FILE,
];
/// Mode of a newly created config file.
pub const FILE_MODE: u32 = 0o600;

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

pub use crate::release_files::{HELPER_PATH, RELEASE_KEY_PATH};

/// The effective configuration.
#[derive(Clone, PartialEq)]
pub struct Config {
    pub api_url: String,
    pub api_tls_ca_file: Option<PathBuf>,
    pub enrollment_token: String,
    pub node_id: String,
    pub agent_token: String,
    pub heartbeat_interval: Duration,
    pub metrics_interval: Duration,
    pub task_poll_interval: Duration,
    pub request_timeout: Duration,
    pub task_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub realtime_enabled: bool,
    pub realtime_ping_interval: Duration,
    pub realtime_queue_size: u32,
    pub realtime_backoff_jitter: f64,
    pub realtime_namespace: String,
    pub realtime_path: String,
    pub location_manual_region: String,
    pub location_manual_zone: String,
    pub location_manual_latitude: Option<f64>,
    pub location_manual_longitude: Option<f64>,
    pub location_public_ip_enabled: bool,
    pub ipinfo_token: String,
    pub state_file: PathBuf,
    pub log_level: LogLevel,
    pub root_access_ceiling: RootProfile,
    pub exec_socket: PathBuf,
    pub max_concurrent_tasks: u32,
    pub kill_grace: Duration,
    pub outbox_max_bytes: u64,
    pub task_output_max_bytes: u64,
    pub task_output_retention: Duration,
    pub update_base_url: String,
    pub update_github_api_url: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, even in debug output.
        let mut m = f.debug_map();
        for key in KEYS {
            m.entry(&key.name, &key.display(self));
        }
        m.finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut c = Self {
            api_url: String::new(),
            api_tls_ca_file: None,
            enrollment_token: String::new(),
            node_id: String::new(),
            agent_token: String::new(),
            heartbeat_interval: Duration::ZERO,
            metrics_interval: Duration::ZERO,
            task_poll_interval: Duration::ZERO,
            request_timeout: Duration::ZERO,
            task_timeout: Duration::ZERO,
            shutdown_timeout: Duration::ZERO,
            realtime_enabled: true,
            realtime_ping_interval: Duration::ZERO,
            realtime_queue_size: 0,
            realtime_backoff_jitter: 0.0,
            realtime_namespace: String::new(),
            realtime_path: String::new(),
            location_manual_region: String::new(),
            location_manual_zone: String::new(),
            location_manual_latitude: None,
            location_manual_longitude: None,
            location_public_ip_enabled: false,
            ipinfo_token: String::new(),
            state_file: PathBuf::new(),
            log_level: LogLevel::Info,
            root_access_ceiling: RootProfile::Operational,
            exec_socket: PathBuf::new(),
            max_concurrent_tasks: 0,
            kill_grace: Duration::ZERO,
            outbox_max_bytes: 0,
            task_output_max_bytes: 0,
            task_output_retention: Duration::ZERO,
            update_base_url: String::new(),
            update_github_api_url: String::new(),
        };
        for key in KEYS {
            if !key.default.is_empty() {
                (key.set)(&mut c, key.default).expect("built-in default is valid");
            }
        }
        c
    }
}

/// What kind of value a key holds; decides the JSON type in the file and
/// how `config show` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    /// A string that is never printed.
    Secret,
    Path,
    Duration,
    Bool,
    Integer,
    Number,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
}

impl Kind {
    fn describe(self) -> String {
        match self {
            Kind::String | Kind::Secret => "string".into(),
            Kind::Path => "path".into(),
            Kind::Duration => "duration".into(),
            Kind::Bool => "bool".into(),
            Kind::Integer => "integer".into(),
            Kind::Number => "number".into(),
            Kind::Choice(words) => words.join(" | "),
        }
    }
}

/// One configuration key.
pub struct Key {
    pub name: &'static str,
    /// Environment variables that override the file; the first non-empty wins.
    pub env: &'static [&'static str],
    pub kind: Kind,
    /// The default in the syntax `config set` takes; empty for none.
    pub default: &'static str,
    /// One line for `--help`, `config show` and the README.
    pub doc: &'static str,
    set: fn(&mut Config, &str) -> Result<(), String>,
    get: fn(&Config) -> Value,
}

impl Key {
    /// The value as it is written to the file.
    pub fn value(&self, c: &Config) -> Value {
        (self.get)(c)
    }

    /// The value for humans: secrets masked, durations in Go syntax.
    pub fn display(&self, c: &Config) -> String {
        match ((self.get)(c), self.kind) {
            (Value::String(s), Kind::Secret) if !s.is_empty() => {
                format!("<set, {} characters>", s.chars().count())
            }
            (Value::String(s), _) if s.is_empty() => "<unset>".into(),
            (Value::Null, _) => "<unset>".into(),
            (Value::String(s), _) => s,
            (other, _) => other.to_string(),
        }
    }

    /// Human description of the allowed values: `duration`, `off | operational | ...`.
    pub fn allowed(&self) -> String {
        self.kind.describe()
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File,
    Env(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File => f.write_str("file"),
            Origin::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// A configuration problem, naming the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config key {key} = {value:?} ({source_desc}) is invalid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        source_desc: String,
        reason: String,
    },
    #[error("unknown config key {0:?}; known keys: {known}", known = key_names())]
    UnknownKey(String),
    #[error("config key {0} is required (set it in the config file or with {1})")]
    Missing(&'static str, String),
    #[error("config file {} is not valid JSON: {reason}", path.display())]
    Syntax { path: PathBuf, reason: String },
    #[error("config file {} must hold a JSON object", path.display())]
    NotAnObject { path: PathBuf },
    #[error(
        "config file {} named by {from} does not exist; create it with `noderax-agent config set api_url URL` or point {from} elsewhere",
        path.display()
    )]
    ExplicitMissing { path: PathBuf, from: &'static str },
    #[error(transparent)]
    File(#[from] FileError),
}

fn key_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// The process environment, or a fixed map in tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// Reads the real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Which config file applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Named by `--config-file` or `NODERAX_CONFIG_FILE`; `from` says which.
    Explicit { path: PathBuf, from: &'static str },
    /// The first existing file of [`SEARCH_PATH`].
    Found(PathBuf),
    /// None of [`SEARCH_PATH`] exists.
    NotFound,
}

impl Location {
    /// Resolves the file: `cli` (from `--config-file`), then
    /// `NODERAX_CONFIG_FILE`, then the first existing file of [`SEARCH_PATH`].
    pub fn resolve(cli: Option<&Path>, env: &dyn Environment) -> Self {
        if let Some(path) = cli {
            return Self::Explicit {
                path: path.to_owned(),
                from: "--config-file",
            };
        }
        if let Some(path) = env.var(CONFIG_FILE_ENV).filter(|p| !p.trim().is_empty()) {
            return Self::Explicit {
                path: PathBuf::from(path.trim()),
                from: CONFIG_FILE_ENV,
            };
        }
        SEARCH_PATH
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .map_or(Self::NotFound, Self::Found)
    }

    /// The file that is read, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Explicit { path, .. } | Self::Found(path) => Some(path),
            Self::NotFound => None,
        }
    }

    /// Where `config set` writes: the located file, or for a fresh machine
    /// the installed path when running as root, else `./config.json`.
    pub fn write_target(&self, is_root: bool) -> PathBuf {
        match self.path() {
            Some(p) => p.to_owned(),
            None if is_root => PathBuf::from(INSTALLED_CONFIG_FILE),
            None => PathBuf::from("./config.json"),
        }
    }
}

/// A loaded configuration with the provenance of every value.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, if any.
    pub path: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
    /// Keys in the file this version does not know, kept on rewrite.
    unknown: serde_json::Map<String, Value>,
    /// Problems worth a log line that do not stop the agent.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Where `key`'s value came from.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Checks what running the agent needs beyond per-key validity.
    pub fn require_runnable(&self) -> Result<(), ConfigError> {
        if self.config.api_url.is_empty() {
            return Err(ConfigError::Missing(
                "api_url",
                "NODERAX_API_URL or API_URL".into(),
            ));
        }
        Ok(())
    }
}

/// Loads defaults, then the file at `location`, then the environment.
pub fn load(location: &Location, env: &dyn Environment) -> Result<Loaded, ConfigError> {
    let mut loaded = load_file_layer(location)?;
    apply_env(&mut loaded, env)?;
    if !loaded.config.realtime_enabled {
        loaded.warnings.push(
            "realtime_enabled=false is ignored: the realtime session carries presence and terminals, so it is always on".into(),
        );
        loaded.config.realtime_enabled = true;
    }
    if loaded.config.realtime_ping_interval > Duration::from_secs(2) {
        loaded.warnings.push(format!(
            "realtime_ping_interval={} is longer than 2s; the control plane may consider the socket idle",
            go_duration::format(loaded.config.realtime_ping_interval)
        ));
    }
    Ok(loaded)
}

/// Loads defaults and the file only (what `config set` edits).
pub fn load_file_layer(location: &Location) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded {
        config: Config::default(),
        path: None,
        origins: BTreeMap::new(),
        unknown: serde_json::Map::new(),
        warnings: Vec::new(),
    };
    let Some(path) = location.path() else {
        return Ok(loaded);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Location::Explicit { from, .. } = location {
                return Err(ConfigError::ExplicitMissing {
                    path: path.to_owned(),
                    from,
                });
            }
            return Ok(loaded);
        }
        Err(e) => return Err(FileError::new("read config file", path, e).into()),
    };
    loaded.path = Some(path.to_owned());
    let json: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let Value::Object(map) = json else {
        return Err(ConfigError::NotAnObject {
            path: path.to_owned(),
        });
    };
    let source_desc = format!("in {}", path.display());
    for (name, value) in map {
        let Some(key) = find_key(&name) else {
            loaded.warnings.push(format!(
                "config file {} has unknown key {name:?}; it is kept but ignored",
                path.display()
            ));
            loaded.unknown.insert(name, value);
            continue;
        };
        let Some(text) = json_to_text(key, &value).map_err(|reason| ConfigError::Invalid {
            key: key.name,
            value: value.to_string(),
            source_desc: source_desc.clone(),
            reason,
        })?
        else {
            continue; // empty string or null: ignored, as in the original agent
        };
        (key.set)(&mut loaded.config, &text).map_err(|reason| ConfigError::Invalid {
            key: key.name,
            value: text.clone(),
            source_desc: source_desc.clone(),
            reason,
        })?;
        loaded.origins.insert(key.name, Origin::File);
    }
    Ok(loaded)
}

fn apply_env(loaded: &mut Loaded, env: &dyn Environment) -> Result<(), ConfigError> {
    for key in KEYS {
        for var in key.env {
            let Some(value) = env.var(var).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            (key.set)(&mut loaded.config, &value).map_err(|reason| ConfigError::Invalid {
                key: key.name,
                value: if key.kind == Kind::Secret {
                    "<secret>".into()
                } else {
                    value.clone()
                },
                source_desc: format!("from environment variable {var}"),
                reason,
            })?;
            loaded.origins.insert(key.name, Origin::Env(var));
            break;
        }
    }
    Ok(())
}

/// The file's JSON value as the text `set` parses; `None` for an empty
/// string or `null` (ignored).
fn json_to_text(key: &Key, value: &Value) -> Result<Option<String>, String> {
    match (value, key.kind) {
        (Value::Null, _) => Ok(None),
        (Value::String(s), _) if s.is_empty() => Ok(None),
        (Value::Bool(b), Kind::Bool) => Ok(Some(b.to_string())),
        (Value::Number(n), Kind::Integer | Kind::Number) => Ok(Some(n.to_string())),
        (Value::String(s), Kind::Bool | Kind::Integer | Kind::Number) => Err(format!(
            "expected a JSON {}, not the string {s:?}",
            key.kind.describe()
        )),
        (Value::String(s), _) => Ok(Some(s.clone())),
        (_, Kind::Bool) => Err("expected true or false".into()),
        (_, Kind::Integer | Kind::Number) => Err("expected a number".into()),
        (_, Kind::Duration) => Err("expected a duration string such as \"30s\"".into()),
        _ => Err("expected a string".into()),
    }
}

fn find_key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Sets `name` to `value` in the file at `path` (created if missing) after
/// validating it, keeping every other key; writes the mirror file too when
/// `NODERAX_CONFIG_MIRROR_FILE` names one. Returns the normalised value.
pub fn set_in_file(
    path: &Path,
    name: &str,
    value: &str,
    env: &dyn Environment,
) -> Result<String, ConfigError> {
    let key = find_key(name).ok_or_else(|| ConfigError::UnknownKey(name.to_owned()))?;
    let location = Location::Explicit {
        path: path.to_owned(),
        from: "config set",
    };
    let mut loaded = match load_file_layer(&location) {
        Err(ConfigError::ExplicitMissing { .. }) => load_file_layer(&Location::NotFound)?,
        other => other?,
    };
    (key.set)(&mut loaded.config, value).map_err(|reason| ConfigError::Invalid {
        key: key.name,
        value: value.to_owned(),
        source_desc: "given to config set".into(),
        reason,
    })?;
    loaded.origins.insert(key.name, Origin::File);
    let text = render(&loaded);
    atomic_file::write(path, text.as_bytes(), FILE_MODE)?;
    if let Some(mirror) = env.var(CONFIG_MIRROR_ENV).filter(|m| !m.trim().is_empty()) {
        let mirror = PathBuf::from(mirror.trim());
        if mirror != path {
            atomic_file::write(&mirror, text.as_bytes(), FILE_MODE)?;
        }
    }
    Ok(key.display(&loaded.config))
}

/// The file text for a file layer: the keys that came from the file, in
/// table order, then any unknown keys that were read. Defaults are not
/// written (unlike the original agent, which wrote every key): a file that
/// pins every default would silently keep old defaults after an upgrade.
pub fn render(file_layer: &Loaded) -> String {
    let mut out = String::from("{\n");
    let entries: Vec<(String, Value)> = KEYS
        .iter()
        .filter(|k| file_layer.origin(k.name) == Origin::File)
        .filter_map(|k| match k.value(&file_layer.config) {
            Value::Null => None,
            v => Some((k.name.to_owned(), v)),
        })
        .chain(
            file_layer
                .unknown
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        )
        .collect();
    for (i, (k, v)) in entries.iter().enumerate() {
        let sep = if i + 1 == entries.len() { "" } else { "," };
        let key = Value::String(k.clone());
        out.push_str(&format!("  {key}: {v}{sep}\n"));
    }
    out.push_str("}\n");
    out
}

// ---- per-kind parsers -------------------------------------------------------

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = go_duration::parse(s.trim()).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false (also 1/0, t/f)".into()),
    }
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String> {
    let n: T = s
        .trim()
        .parse()
        .map_err(|_| "expected a whole number".to_string())?;
    if n <= T::default() {
        return Err("must be greater than zero".into());
    }
    Ok(n)
}

/// Size in bytes: a whole number with an optional `K`, `M`, `G` suffix
/// (powers of 1024, `MiB` spelling accepted).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err("expected a size such as 268435456, 256M or 1G".into()),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size such as 268435456, 256M or 1G".to_string())?;
    let bytes = n.checked_mul(scale).ok_or("too large")?;
    if bytes == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(bytes)
}

/// Normalises `api_url` like the original agent and the installer: trim,
/// default to `https://`, drop trailing `/` and a trailing `/api/v1` or `/v1`.
pub fn normalize_api_url(raw: &str) -> Result<String, String> {
    let mut url = raw.trim().to_owned();
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    if !url.contains("://") {
        url = format!("https://{url}");
    }
    let (scheme, rest) = url.split_once("://").ok_or("missing scheme")?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme must be http or https, not {scheme:?}"));
    }
    let mut rest = rest.to_owned();
    loop {
        let before = rest.len();
        rest = rest.trim_end_matches('/').to_owned();
        for suffix in ["/api/v1", "/v1"] {
            if let Some(stripped) = rest.strip_suffix(suffix) {
                rest = stripped.to_owned();
            }
        }
        if rest.len() == before {
            break;
        }
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host".into());
    }
    let url = format!("{scheme}://{rest}");
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".into());
    }
    Ok(url)
}

/// An http(s) URL that paths are appended to: trimmed, without trailing `/`.
fn release_url(raw: &str) -> Result<String, String> {
    let v = raw.trim().trim_end_matches('/');
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err("has no host".into());
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".into());
    }
    Ok(v.to_owned())
}

/// Leading `/` added if missing.
fn leading_slash(s: &str) -> String {
    let s = s.trim();
    if s.starts_with('/') {
        s.to_owned()
    } else {
        format!("/{s}")
    }
}

fn coordinate(s: &str, limit: f64) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| "expected a number".to_string())?;
    if !(-limit..=limit).contains(&v) {
        return Err(format!("must be between -{limit} and {limit}"));
    }
    Ok(v)
}

fn dur(d: Duration) -> Value {
    Value::String(go_duration::format(d))
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

const PROFILES: &[&str] = &[
    "off",
    "operational",
    "task",
    "terminal",
    "operational_task",
    "operational_terminal",
    "task_terminal",
    "all",
];

/// Every key, in the order the file is written.
pub static KEYS: &[Key] = &[
    Key {
        name: "api_url",
        env: &["NODERAX_API_URL", "API_URL"],
        kind: Kind::String,
        default: "",
        doc: "Control-plane origin without /api/v1, e.g. https://api.example.com (required to run).",
        set: |c, v| {
            c.api_url = normalize_api_url(v)?;
            Ok(())
        },
        get: |c| Value::String(c.api_url.clone()),
    },
    Key {
        name: "api_tls_ca_file",
        env: &["NODERAX_API_TLS_CA_FILE", "API_TLS_CA_FILE"],
        kind: Kind::Path,
        default: "",
        doc: "PEM bundle added to the system roots for every connection to the API (HTTP and WebSocket).",
        set: |c, v| {
            c.api_tls_ca_file = Some(PathBuf::from(v.trim()));
            Ok(())
        },
        get: |c| {
            c.api_tls_ca_file
                .as_deref()
                .map_or(Value::String(String::new()), path_value)
        },
    },
    Key {
        name: "enrollment_token",
        env: &["ENROLLMENT_TOKEN"],
        kind: Kind::Secret,
        default: "",
        doc: "Pending e-mail enrollment token; polled at start-up until approved (10 minutes at most).",
        set: |c, v| {
            c.enrollment_token = v.trim().to_owned();
            Ok(())
        },
        get: |c| Value::String(c.enrollment_token.clone()),
    },
    Key {
        name: "node_id",
        env: &["NODE_ID"],
        kind: Kind::String,
        default: "",
        doc: "Compatibility only: the identity lives in state_file. Disagreement with it is logged.",
        set: |c, v| {
            let v = v.trim();
            crate::validate::uuid(v).map_err(|e| e.to_string())?;
            c.node_id = v.to_owned();
            Ok(())
        },
        get: |c| Value::String(c.node_id.clone()),
    },
    Key {
        name: "agent_token",
        env: &["AGENT_TOKEN"],
        kind: Kind::Secret,
        default: "",
        doc: "Compatibility only: the identity lives in state_file. Disagreement with it is logged.",
        set: |c, v| {
            c.agent_token = v.trim().to_owned();
            Ok(())
        },
        get: |c| Value::String(c.agent_token.clone()),
    },
    Key {
        name: "heartbeat_interval",
        env: &["HEARTBEAT_INTERVAL"],
        kind: Kind::Duration,
        default: "30s",
        doc: "HTTP heartbeat interval while the realtime socket is down.",
        set: |c, v| {
            c.heartbeat_interval = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.heartbeat_interval),
    },
    Key {
        name: "metrics_interval",
        env: &["NODERAX_REALTIME_METRICS_INTERVAL", "METRICS_INTERVAL"],
        kind: Kind::Duration,
        default: "2s",
        doc: "How often a metrics sample is sent on the realtime socket.",
        set: |c, v| {
            c.metrics_interval = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.metrics_interval),
    },
    Key {
        name: "task_poll_interval",
        env: &["TASK_POLL_INTERVAL"],
        kind: Kind::Duration,
        default: "15s",
        doc: "Long-poll wait of a task claim (waitMs, at most 30s).",
        set: |c, v| {
            let d = parse_duration(v)?;
            if d > Duration::from_secs(30) {
                return Err("must be at most 30s (the server clamps waitMs to 30000)".into());
            }
            c.task_poll_interval = d;
            Ok(())
        },
        get: |c| dur(c.task_poll_interval),
    },
    Key {
        name: "request_timeout",
        env: &["REQUEST_TIMEOUT"],
        kind: Kind::Duration,
        default: "10s",
        doc: "Timeout of one HTTP request (a claim waits task_poll_interval longer) and of socket auth.",
        set: |c, v| {
            c.request_timeout = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.request_timeout),
    },
    Key {
        name: "task_timeout",
        env: &["TASK_TIMEOUT"],
        kind: Kind::Duration,
        default: "10m",
        doc: "Default task timeout when the payload sets none.",
        set: |c, v| {
            c.task_timeout = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.task_timeout),
    },
    Key {
        name: "shutdown_timeout",
        env: &["SHUTDOWN_TIMEOUT"],
        kind: Kind::Duration,
        default: "20s",
        doc: "How long a stopping agent waits to flush task events.",
        set: |c, v| {
            c.shutdown_timeout = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.shutdown_timeout),
    },
    Key {
        name: "realtime_enabled",
        env: &["REALTIME_ENABLED"],
        kind: Kind::Bool,
        default: "true",
        doc: "Accepted for compatibility; realtime is always on (false logs a warning).",
        set: |c, v| {
            c.realtime_enabled = parse_bool(v)?;
            Ok(())
        },
        get: |c| Value::Bool(c.realtime_enabled),
    },
    Key {
        name: "realtime_ping_interval",
        env: &["NODERAX_REALTIME_PING_INTERVAL", "REALTIME_PING_INTERVAL"],
        kind: Kind::Duration,
        default: "2s",
        doc: "Interval of agent.ping on the realtime socket (over 2s logs a warning).",
        set: |c, v| {
            c.realtime_ping_interval = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.realtime_ping_interval),
    },
    Key {
        name: "realtime_queue_size",
        env: &["REALTIME_QUEUE_SIZE"],
        kind: Kind::Integer,
        default: "1024",
        doc: "Capacity of the realtime outbound queue (events).",
        set: |c, v| {
            c.realtime_queue_size = parse_positive(v)?;
            Ok(())
        },
        get: |c| Value::from(c.realtime_queue_size),
    },
    Key {
        name: "realtime_backoff_jitter",
        env: &["REALTIME_BACKOFF_JITTER"],
        kind: Kind::Number,
        default: "0.2",
        doc: "Random spread of realtime reconnect delays, 0..1.",
        set: |c, v| {
            let j: f64 = v
                .trim()
                .parse()
                .map_err(|_| "expected a number".to_string())?;
            if !(0.0..=1.0).contains(&j) {
                return Err("must be between 0 and 1".into());
            }
            c.realtime_backoff_jitter = j;
            Ok(())
        },
        get: |c| Value::from(c.realtime_backoff_jitter),
    },
    Key {
        name: "realtime_namespace",
        env: &["NODERAX_REALTIME_NAMESPACE", "REALTIME_NAMESPACE"],
        kind: Kind::String,
        default: "/agent-realtime",
        doc: "Socket.IO namespace (a leading / is added).",
        set: |c, v| {
            c.realtime_namespace = leading_slash(v);
            Ok(())
        },
        get: |c| Value::String(c.realtime_namespace.clone()),
    },
    Key {
        name: "realtime_path",
        env: &["NODERAX_REALTIME_PATH", "REALTIME_PATH"],
        kind: Kind::String,
        default: "/socket.io/",
        doc: "Socket.IO path (leading and trailing / are added).",
        set: |c, v| {
            let p = leading_slash(v);
            c.realtime_path = if p.ends_with('/') { p } else { format!("{p}/") };
            Ok(())
        },
        get: |c| Value::String(c.realtime_path.clone()),
    },
    Key {
        name: "location_manual_region",
        env: &["NODERAX_LOCATION_MANUAL_REGION", "LOCATION_MANUAL_REGION"],
        kind: Kind::String,
        default: "",
        doc: "Accepted for compatibility, not sent: this control plane rejects location (PROTOCOL.md 11.3).",
        set: |c, v| {
            c.location_manual_region = v.trim().to_owned();
            Ok(())
        },
        get: |c| Value::String(c.location_manual_region.clone()),
    },
    Key {
        name: "location_manual_zone",
        env: &["NODERAX_LOCATION_MANUAL_ZONE", "LOCATION_MANUAL_ZONE"],
        kind: Kind::String,
        default: "",
        doc: "Accepted for compatibility, not sent (see location_manual_region).",
        set: |c, v| {
            c.location_manual_zone = v.trim().to_owned();
            Ok(())
        },
        get: |c| Value::String(c.location_manual_zone.clone()),
    },
    Key {
        name: "location_manual_latitude",
        env: &[
            "NODERAX_LOCATION_MANUAL_LATITUDE",
            "LOCATION_MANUAL_LATITUDE",
        ],
        kind: Kind::Number,
        default: "",
        doc: "Accepted for compatibility, not sent; -90..90.",
        set: |c, v| {
            c.location_manual_latitude = Some(coordinate(v, 90.0)?);
            Ok(())
        },
        get: |c| c.location_manual_latitude.map_or(Value::Null, Value::from),
    },
    Key {
        name: "location_manual_longitude",
        env: &[
            "NODERAX_LOCATION_MANUAL_LONGITUDE",
            "LOCATION_MANUAL_LONGITUDE",
        ],
        kind: Kind::Number,
        default: "",
        doc: "Accepted for compatibility, not sent; -180..180.",
        set: |c, v| {
            c.location_manual_longitude = Some(coordinate(v, 180.0)?);
            Ok(())
        },
        get: |c| c.location_manual_longitude.map_or(Value::Null, Value::from),
    },
    Key {
        name: "location_public_ip_enabled",
        env: &[
            "NODERAX_LOCATION_PUBLIC_IP_ENABLED",
            "LOCATION_PUBLIC_IP_ENABLED",
        ],
        kind: Kind::Bool,
        default: "false",
        doc: "Accepted for compatibility, unused: the agent never looks up its public IP.",
        set: |c, v| {
            c.location_public_ip_enabled = parse_bool(v)?;
            Ok(())
        },
        get: |c| Value::Bool(c.location_public_ip_enabled),
    },
    Key {
        name: "ipinfo_token",
        env: &["NODERAX_IPINFO_TOKEN", "IPINFO_TOKEN"],
        kind: Kind::Secret,
        default: "",
        doc: "Accepted for compatibility, unused.",
        set: |c, v| {
            c.ipinfo_token = v.trim().to_owned();
            Ok(())
        },
        get: |c| Value::String(c.ipinfo_token.clone()),
    },
    Key {
        name: "state_file",
        env: &["STATE_FILE"],
        kind: Kind::Path,
        default: "./data/agent_identity.json",
        doc: "Identity file (node id + token), mode 0600, owned by the network user. Installed: /var/lib/noderax-agent/agent_identity.json.",
        set: |c, v| {
            if v.trim().is_empty() {
                return Err("must not be empty".into());
            }
            c.state_file = PathBuf::from(v.trim());
            Ok(())
        },
        get: |c| path_value(&c.state_file),
    },
    Key {
        name: "log_level",
        env: &["LOG_LEVEL"],
        kind: Kind::Choice(&["debug", "info", "warn", "error"]),
        default: "info",
        doc: "Log verbosity.",
        set: |c, v| {
            c.log_level = match v.trim() {
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warn" => LogLevel::Warn,
                "error" => LogLevel::Error,
                _ => return Err("allowed: debug, info, warn, error".into()),
            };
            Ok(())
        },
        get: |c| Value::String(c.log_level.as_str().to_owned()),
    },
    Key {
        name: "root_access_ceiling",
        env: &["NODERAX_ROOT_ACCESS_CEILING"],
        kind: Kind::Choice(PROFILES),
        default: "operational",
        doc: "Most root access the control plane may enable on this host; it can never raise it. Only off and operational are implemented.",
        set: |c, v| {
            c.root_access_ceiling = RootProfile::parse(v.trim())
                .ok_or_else(|| format!("allowed: {}", PROFILES.join(", ")))?;
            Ok(())
        },
        get: |c| Value::String(c.root_access_ceiling.as_str().to_owned()),
    },
    Key {
        name: "exec_socket",
        env: &["NODERAX_EXEC_SOCKET"],
        kind: Kind::Path,
        default: "/run/noderax-agent/exec.sock",
        doc: "Unix socket of the executor under systemd (socket activation). Without systemd the executor is a child process on a socketpair.",
        set: |c, v| {
            let p = PathBuf::from(v.trim());
            if !p.is_absolute() {
                return Err("must be an absolute path".into());
            }
            c.exec_socket = p;
            Ok(())
        },
        get: |c| path_value(&c.exec_socket),
    },
    Key {
        name: "max_concurrent_tasks",
        env: &["NODERAX_MAX_CONCURRENT_TASKS"],
        kind: Kind::Integer,
        default: "4",
        doc: "Tasks run at the same time; the agent claims no more while this many run.",
        set: |c, v| {
            let n: u32 = parse_positive(v)?;
            if n > 256 {
                return Err("must be at most 256".into());
            }
            c.max_concurrent_tasks = n;
            Ok(())
        },
        get: |c| Value::from(c.max_concurrent_tasks),
    },
    Key {
        name: "kill_grace",
        env: &["NODERAX_KILL_GRACE"],
        kind: Kind::Duration,
        default: "10s",
        doc: "Between SIGTERM and SIGKILL when a task times out or is cancelled.",
        set: |c, v| {
            c.kill_grace = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.kill_grace),
    },
    Key {
        name: "outbox_max_bytes",
        env: &["NODERAX_OUTBOX_MAX_BYTES"],
        kind: Kind::Integer,
        default: "256M",
        doc: "Disk budget of task events waiting for the control plane; beyond it the dropped amount is reported in the task's completion.",
        set: |c, v| {
            c.outbox_max_bytes = parse_bytes(v)?;
            Ok(())
        },
        get: |c| Value::from(c.outbox_max_bytes),
    },
    Key {
        name: "task_output_max_bytes",
        env: &["NODERAX_TASK_OUTPUT_MAX_BYTES"],
        kind: Kind::Integer,
        default: "512M",
        doc: "Disk budget of the full task outputs kept on the node (noderax-agent task-output); oldest go first.",
        set: |c, v| {
            c.task_output_max_bytes = parse_bytes(v)?;
            Ok(())
        },
        get: |c| Value::from(c.task_output_max_bytes),
    },
    Key {
        name: "task_output_retention",
        env: &["NODERAX_TASK_OUTPUT_RETENTION"],
        kind: Kind::Duration,
        default: "168h",
        doc: "How long full task outputs are kept on the node.",
        set: |c, v| {
            c.task_output_retention = parse_duration(v)?;
            Ok(())
        },
        get: |c| dur(c.task_output_retention),
    },
    Key {
        name: "update_base_url",
        env: &["NODERAX_UPDATE_BASE_URL"],
        kind: Kind::String,
        default: "https://cdn.noderax.net/noderax-agent/releases",
        doc: "Where self-updates come from: BASE/VERSION/release-manifest.json and its artifacts; GitHub Releases (update_github_api_url) is the fallback.",
        set: |c, v| {
            c.update_base_url = release_url(v)?;
            Ok(())
        },
        get: |c| Value::String(c.update_base_url.clone()),
    },
    Key {
        name: "update_github_api_url",
        env: &["NODERAX_UPDATE_GITHUB_API_URL"],
        kind: Kind::String,
        default: "https://api.github.com/repos/noderax/noderax-agent",
        doc: "GitHub API URL of the release repository, the self-update fallback: URL/releases/tags/agent-vVERSION, asset release-manifest.json.",
        set: |c, v| {
            c.update_github_api_url = release_url(v)?;
            Ok(())
        },
        get: |c| Value::String(c.update_github_api_url.clone()),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write_file(dir: &Path, text: &str) -> Location {
        let path = dir.join("config.json");
        std::fs::write(&path, text).unwrap();
        Location::Explicit {
            path,
            from: CONFIG_FILE_ENV,
        }
    }

    #[test]
    fn defaults_match_protocol() {
        let c = Config::default();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.metrics_interval, Duration::from_secs(2));
        assert_eq!(c.task_poll_interval, Duration::from_secs(15));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.task_timeout, Duration::from_secs(600));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        assert!(c.realtime_enabled);
        assert_eq!(c.realtime_ping_interval, Duration::from_secs(2));
        assert_eq!(c.realtime_queue_size, 1024);
        assert_eq!(c.realtime_backoff_jitter, 0.2);
        assert_eq!(c.realtime_namespace, "/agent-realtime");
        assert_eq!(c.realtime_path, "/socket.io/");
        assert_eq!(c.state_file, PathBuf::from("./data/agent_identity.json"));
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.root_access_ceiling, RootProfile::Operational);
        assert_eq!(c.outbox_max_bytes, 256 << 20);
        assert_eq!(
            c.update_base_url,
            "https://cdn.noderax.net/noderax-agent/releases"
        );
        assert_eq!(
            c.update_github_api_url,
            "https://api.github.com/repos/noderax/noderax-agent"
        );
    }

    #[test]
    fn reads_the_documented_example_file() {
        let dir = tempfile::tempdir().unwrap();
        let loc = write_file(
            dir.path(),
            r#"{
              "api_url": "https://api.example.com",
              "enrollment_token": "",
              "node_id": "b7f88611-b63e-4c95-9f37-4afb5c0cf275",
              "agent_token": "af0fe67d",
              "heartbeat_interval": "30s",
              "metrics_interval": "2s",
              "task_poll_interval": "15s",
              "request_timeout": "10s",
              "task_timeout": "10m0s",
              "shutdown_timeout": "20s",
              "realtime_enabled": true,
              "realtime_ping_interval": "2s",
              "realtime_queue_size": 1024,
              "realtime_backoff_jitter": 0.2,
              "realtime_namespace": "/agent-realtime",
              "realtime_path": "/socket.io/",
              "state_file": "/var/lib/noderax-agent/agent_identity.json",
              "log_level": "info"
            }"#,
        );
        let l = load(&loc, &env(&[])).unwrap();
        assert_eq!(l.config.api_url, "https://api.example.com");
        assert_eq!(l.config.task_timeout, Duration::from_secs(600));
        assert_eq!(l.origin("api_url"), Origin::File);
        assert_eq!(l.origin("enrollment_token"), Origin::Default);
        assert_eq!(l.origin("kill_grace"), Origin::Default);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let e = env(&[]);
        set_in_file(&path, "api_url", "api.example.com/api/v1/", &e).unwrap();
        set_in_file(&path, "task_timeout", "1m30s", &e).unwrap();
        set_in_file(&path, "metrics_interval", "500ms", &e).unwrap();
        set_in_file(&path, "realtime_backoff_jitter", "0.5", &e).unwrap();
        set_in_file(&path, "root_access_ceiling", "off", &e).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""task_timeout": "1m30s""#), "{text}");
        assert!(
            !text.contains("shutdown_timeout"),
            "defaults are not pinned: {text}"
        );
        assert!(text.contains(r#""metrics_interval": "500ms""#), "{text}");
        let loc = Location::Found(path.clone());
        let l = load_file_layer(&loc).unwrap();
        assert_eq!(l.config.api_url, "https://api.example.com");
        assert_eq!(l.config.task_timeout, Duration::from_secs(90));
        assert_eq!(l.config.realtime_backoff_jitter, 0.5);
        assert_eq!(l.config.root_access_ceiling, RootProfile::Off);
        // Rendering the loaded config reproduces the file exactly.
        assert_eq!(render(&l), text);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn environment_beats_file_and_first_variable_wins() {
        let dir = tempfile::tempdir().unwrap();
        let loc = write_file(
            dir.path(),
            r#"{"api_url":"https://file.example","metrics_interval":"5s","log_level":"warn"}"#,
        );
        let e = env(&[
            ("NODERAX_API_URL", "https://env.example"),
            ("API_URL", "https://other.example"),
            ("NODERAX_REALTIME_METRICS_INTERVAL", ""),
            ("METRICS_INTERVAL", "7s"),
        ]);
        let l = load(&loc, &e).unwrap();
        assert_eq!(l.config.api_url, "https://env.example");
        assert_eq!(l.origin("api_url"), Origin::Env("NODERAX_API_URL"));
        // An empty variable does not count: the second one applies.
        assert_eq!(l.config.metrics_interval, Duration::from_secs(7));
        assert_eq!(
            l.origin("metrics_interval"),
            Origin::Env("METRICS_INTERVAL")
        );
        assert_eq!(l.config.log_level, LogLevel::Warn);
        assert_eq!(l.origin("log_level"), Origin::File);
    }

    #[test]
    fn empty_strings_in_the_file_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let loc = write_file(dir.path(), r#"{"state_file":"","task_timeout":""}"#);
        let l = load(&loc, &env(&[])).unwrap();
        assert_eq!(
            l.config.state_file,
            PathBuf::from("./data/agent_identity.json")
        );
        assert_eq!(l.config.task_timeout, Duration::from_secs(600));
    }

    #[test]
    fn rejected_values_name_the_key_and_what_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (r#"{"task_timeout":"10"}"#, "task_timeout", "missing unit"),
            (
                r#"{"task_timeout":"0s"}"#,
                "task_timeout",
                "longer than zero",
            ),
            (
                r#"{"request_timeout":"-1s"}"#,
                "request_timeout",
                "negative",
            ),
            (
                r#"{"realtime_queue_size":0}"#,
                "realtime_queue_size",
                "greater than zero",
            ),
            (
                r#"{"realtime_queue_size":"9"}"#,
                "realtime_queue_size",
                "expected a JSON integer",
            ),
            (
                r#"{"realtime_backoff_jitter":1.5}"#,
                "realtime_backoff_jitter",
                "between 0 and 1",
            ),
            (
                r#"{"log_level":"verbose"}"#,
                "log_level",
                "allowed: debug, info, warn, error",
            ),
            (r#"{"api_url":"ftp://x"}"#, "api_url", "http or https"),
            (r#"{"api_url":"https://"}"#, "api_url", "no host"),
            (
                r#"{"realtime_enabled":"yes"}"#,
                "realtime_enabled",
                "expected a JSON bool",
            ),
            (
                r#"{"root_access_ceiling":"root"}"#,
                "root_access_ceiling",
                "allowed: off, operational",
            ),
            (r#"{"node_id":"not-a-uuid"}"#, "node_id", "UUID"),
            (
                r#"{"task_poll_interval":"45s"}"#,
                "task_poll_interval",
                "at most 30s",
            ),
            (r#"{"exec_socket":"run/x.sock"}"#, "exec_socket", "absolute"),
            (
                r#"{"update_base_url":"cdn.example/releases"}"#,
                "update_base_url",
                "http:// or https://",
            ),
            (
                r#"{"update_github_api_url":"ftp://api.github.com/repos/a/b"}"#,
                "update_github_api_url",
                "http:// or https://",
            ),
            (
                r#"{"update_github_api_url":"https:///repos/a/b"}"#,
                "update_github_api_url",
                "no host",
            ),
            (
                r#"{"outbox_max_bytes":"lots"}"#,
                "outbox_max_bytes",
                "expected a JSON integer",
            ),
        ];
        for (text, key, reason) in cases {
            let loc = write_file(dir.path(), text);
            let err = load(&loc, &env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(err.contains(reason), "{text}: {err}");
        }
        let err = load(&Location::NotFound, &env(&[("TASK_TIMEOUT", "forever")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("task_timeout") && err.contains("TASK_TIMEOUT"),
            "{err}"
        );
        // A secret from the environment never appears in an error.
        let err = load(&Location::NotFound, &env(&[("NODE_ID", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node_id"), "{err}");
    }

    #[test]
    fn malformed_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let loc = write_file(dir.path(), "{\"api_url\": ");
        let err = load(&loc, &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("not valid JSON") && err.contains("config.json"),
            "{err}"
        );
        let loc = write_file(dir.path(), "[1,2]");
        let err = load(&loc, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("JSON object"), "{err}");
        let missing = Location::Explicit {
            path: dir.path().join("nope.json"),
            from: CONFIG_FILE_ENV,
        };
        let err = load(&missing, &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("nope.json") && err.contains(CONFIG_FILE_ENV),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_warn_and_survive_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let loc = write_file(
            dir.path(),
            r#"{"api_url":"https://a.example","future_key":{"x":1}}"#,
        );
        let l = load(&loc, &env(&[])).unwrap();
        assert!(l.warnings.iter().any(|w| w.contains("future_key")));
        let path = loc.path().unwrap().to_owned();
        set_in_file(&path, "log_level", "debug", &env(&[])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""future_key": {"x":1}"#), "{text}");
        let err = set_in_file(&path, "no_such_key", "1", &env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("api_url"),
            "lists known keys: {err}"
        );
    }

    #[test]
    fn mirror_file_gets_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mirror = dir.path().join("mirror.json");
        let e = env(&[(CONFIG_MIRROR_ENV, mirror.to_str().unwrap())]);
        set_in_file(&path, "api_url", "https://a.example", &e).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&mirror).unwrap()
        );
    }

    #[test]
    fn realtime_cannot_be_disabled_and_settings_are_normalised() {
        let e = env(&[
            ("REALTIME_ENABLED", "false"),
            ("REALTIME_NAMESPACE", "agents"),
            ("REALTIME_PATH", "sio"),
            ("REALTIME_PING_INTERVAL", "5s"),
        ]);
        let l = load(&Location::NotFound, &e).unwrap();
        assert!(l.config.realtime_enabled);
        assert_eq!(l.config.realtime_namespace, "/agents");
        assert_eq!(l.config.realtime_path, "/sio/");
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    }

    #[test]
    fn api_url_normalisation() {
        for (raw, want) in [
            ("api.example.com", "https://api.example.com"),
            (" https://api.example.com/ ", "https://api.example.com"),
            ("https://api.example.com/api/v1", "https://api.example.com"),
            ("https://api.example.com/api/v1/", "https://api.example.com"),
            ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
            ("https://example.com/noderax", "https://example.com/noderax"),
        ] {
            assert_eq!(normalize_api_url(raw).as_deref(), Ok(want), "{raw}");
        }
        for raw in ["", "ftp://x", "https://", "https:///path", "https://a b"] {
            assert!(normalize_api_url(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn release_urls_are_trimmed_and_taken_from_the_environment() {
        let e = env(&[
            (
                "NODERAX_UPDATE_BASE_URL",
                " http://mirror.example/releases/ ",
            ),
            (
                "NODERAX_UPDATE_GITHUB_API_URL",
                "https://ghe.example/api/v3/repos/ops/agent/",
            ),
        ]);
        let l = load(&Location::NotFound, &e).unwrap();
        assert_eq!(l.config.update_base_url, "http://mirror.example/releases");
        assert_eq!(
            l.config.update_github_api_url,
            "https://ghe.example/api/v3/repos/ops/agent"
        );
        assert_eq!(
            l.origin("update_github_api_url"),
            Origin::Env("NODERAX_UPDATE_GITHUB_API_URL")
        );
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config {
            agent_token: "af0fe67dfb6d233db5462db4b8f19f65".into(),
            ..Config::default()
        };
        let key = KEYS.iter().find(|k| k.name == "agent_token").unwrap();
        assert_eq!(key.display(&c), "<set, 32 characters>");
        assert!(!format!("{c:?}").contains("af0fe67d"));
        assert!(
            load(&Location::NotFound, &env(&[]))
                .unwrap()
                .require_runnable()
                .is_err()
        );
    }

    #[test]
    fn search_order_and_explicit_file() {
        let e = env(&[(CONFIG_FILE_ENV, "/etc/x.json")]);
        assert_eq!(
            Location::resolve(None, &e),
            Location::Explicit {
                path: "/etc/x.json".into(),
                from: CONFIG_FILE_ENV
            }
        );
        assert_eq!(
            Location::resolve(Some(Path::new("/a.json")), &e).path(),
            Some(Path::new("/a.json"))
        );
        assert_eq!(SEARCH_PATH[0], "./config.local.json");
        assert_eq!(SEARCH_PATH[4], "/etc/noderax-agent/config.json");
        assert_eq!(
            Location::NotFound.write_target(true),
            PathBuf::from(INSTALLED_CONFIG_FILE)
        );
    }

    #[test]
    fn every_key_default_is_valid_and_documented() {
        let mut names = std::collections::BTreeSet::new();
        for key in KEYS {
            assert!(names.insert(key.name), "duplicate key {}", key.name);
            assert!(!key.doc.is_empty(), "{} has no doc", key.name);
            if !key.default.is_empty() {
                let mut c = Config::default();
                (key.set)(&mut c, key.default).unwrap();
            }
        }
    }
}

/// The README's configuration table is generated from [`KEYS`] and checked
/// against it, so documentation and code cannot drift apart.
#[cfg(test)]
mod readme {
    use super::KEYS;

    pub(super) fn table() -> String {
        let mut s = String::from(
            "| Key | Environment (first non-empty wins) | Type | Default | Meaning |\n|---|---|---|---|---|\n",
        );
        for k in KEYS {
            let env = k
                .env
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let default = if k.default.is_empty() {
                "—".to_owned()
            } else {
                format!("`{}`", k.default)
            };
            s.push_str(&format!(
                "| `{}` | {env} | {} | {default} | {} |\n",
                k.name,
                k.allowed().replace('|', "\\|"),
                k.doc
            ));
        }
        s
    }

    #[test]
    fn readme_table_matches_the_keys() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&table()),
            "README.md's configuration table is out of date; regenerate it with\n  cargo test -p shared print_config_table -- --ignored --nocapture"
        );
    }

    #[test]
    #[ignore = "prints the README table"]
    fn print_config_table() {
        print!("{}", table());
    }
}
