//! Typed configuration, loaded in layers: built-in defaults < TOML file < `FORWARDER__…` env.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod sections;
mod values;

pub use sections::{
    AmqpSettings, AuthSettings, Credential, DEFAULT_ARCHIVE_LENGTH, HttpSettings, LogFormat,
    LogSettings, QueueSettings, RuntimeSettings,
};
pub use values::{Name, Network, Secret};

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";

/// Why the configuration could not be loaded; every message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file, an env var or a type did not parse.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration tree.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub amqp: AmqpSettings,
    pub log: LogSettings,
    pub runtime: RuntimeSettings,
}

impl Settings {
    /// Loads defaults, then `path` (or the default file when it exists), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        match path {
            Some(path) => builder = builder.add_source(config::File::from(path).required(true)),
            None => {
                builder =
                    builder.add_source(config::File::with_name(DEFAULT_CONFIG_PATH).required(false))
            }
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("FORWARDER")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects values that parse but cannot work, naming the key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, reason: String| Err(SettingsError::Invalid { key, reason });
        if !self.http.path.starts_with('/') {
            return invalid("http.path", "must start with `/`".into());
        }
        if matches!(self.http.path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            return invalid("http.path", "collides with a built-in endpoint".into());
        }
        if self.http.max_body_bytes == 0 {
            return invalid("http.max_body_bytes", "must be greater than 0".into());
        }
        if self.http.header_read_timeout.is_zero() {
            return invalid(
                "http.header_read_timeout_ms",
                "must be greater than 0".into(),
            );
        }
        if self.auth.username.is_empty() && !self.auth.password.expose().is_empty() {
            return invalid(
                "auth.username",
                "a password is set but the username is empty".into(),
            );
        }
        if self.auth.username.contains(':') {
            return invalid(
                "auth.username",
                "must not contain `:` (Basic auth splits on it)".into(),
            );
        }
        for credential in &self.auth.credentials {
            if credential.username.is_empty() || credential.username.contains(':') {
                return invalid(
                    "auth.credentials",
                    "every username must be non-empty and free of `:`".into(),
                );
            }
        }
        for (key, duration) in [
            ("http.body_read_timeout_ms", self.http.body_read_timeout),
            ("http.write_timeout_ms", self.http.write_timeout),
        ] {
            if duration.is_zero() {
                return invalid(key, "must be greater than 0".into());
            }
        }
        for (key, value) in [
            ("http.max_connections", self.http.max_connections),
            ("http.max_json_depth", self.http.max_json_depth),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if self.http.max_header_bytes < 1024 {
            return invalid("http.max_header_bytes", "must be at least 1024".into());
        }
        let uris = self.amqp.uris();
        if uris.is_empty() {
            return invalid("amqp.uri", "no URI given".into());
        }
        for uri in &uris {
            if let Err(e) = lapin::uri::AMQPUri::from_str(uri) {
                return invalid(
                    "amqp.uri",
                    format!("`{}` does not parse: {e}", redact_uri(uri)),
                );
            }
        }
        if !self.amqp.tls_ca_file.is_empty() {
            match std::fs::read_to_string(&self.amqp.tls_ca_file) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {}
                Ok(_) => {
                    return invalid(
                        "amqp.tls_ca_file",
                        format!("`{}` holds no PEM certificate", self.amqp.tls_ca_file),
                    );
                }
                Err(e) => {
                    return invalid(
                        "amqp.tls_ca_file",
                        format!("`{}` cannot be read: {e}", self.amqp.tls_ca_file),
                    );
                }
            }
        }
        if self.amqp.exchange.starts_with("amq.") {
            return invalid(
                "amqp.exchange",
                "the `amq.` prefix is reserved by the broker".into(),
            );
        }
        if let Err(reason) = self
            .amqp
            .routing_key
            .parse::<crate::routing::RoutingTemplate>()
        {
            return invalid("amqp.routing_key", reason);
        }
        if self.amqp.publish_timeout.is_zero() {
            return invalid("amqp.publish_timeout_ms", "must be greater than 0".into());
        }
        if self.amqp.channels == 0 {
            return invalid("amqp.channels", "must be greater than 0".into());
        }
        if self.amqp.max_batch_events == 0 {
            return invalid("amqp.max_batch_events", "must be greater than 0".into());
        }
        if self.amqp.reconnect_initial.is_zero()
            || self.amqp.reconnect_max < self.amqp.reconnect_initial
        {
            return invalid(
                "amqp.reconnect_initial_ms",
                "must be greater than 0 and at most amqp.reconnect_max_ms".into(),
            );
        }
        for queue in &self.amqp.queues {
            if queue.max_length == Some(0) {
                return invalid(
                    "amqp.queues",
                    format!("max_length of `{}` must be greater than 0", queue.name),
                );
            }
            for binding in &queue.bindings {
                if binding.len() > values::MAX_NAME_BYTES {
                    return invalid(
                        "amqp.queues",
                        format!("binding of `{}` is too long", queue.name),
                    );
                }
            }
        }
        if self.runtime.worker_threads == 0 {
            return invalid("runtime.worker_threads", "must be greater than 0".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid(
                "log.level",
                format!("`{}` is not a filter: {e}", self.log.level),
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let uris: Vec<String> = self.amqp.uris().iter().map(|u| redact_uri(u)).collect();
        // `amqp.uri` serializes as `[redacted]`; the URIs with only their passwords hidden
        // replace it.
        let mut table = toml::Table::try_from(self).unwrap_or_default();
        if let Some(toml::Value::Table(amqp)) = table.get_mut("amqp") {
            amqp.insert("uri".into(), toml::Value::String(uris.join(",")));
        }
        table.to_string()
    }
}

/// Splits a comma-separated URI list, dropping blanks.
pub fn split_uris(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://").map(|i| i + 3) else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return uri.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &uri[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let s = Settings::default();
        s.validate().expect("defaults validate");
        assert_eq!(s.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.http.path, "/callbacks/bandwidth/messaging");
        assert_eq!(s.http.max_body_bytes, 262_144);
        assert_eq!(s.amqp.exchange, "bandwidth.messaging");
        assert_eq!(s.amqp.publish_timeout, Duration::from_secs(5));
        assert_eq!(s.amqp.queues[0].name, "bandwidth.messaging.all");
        assert_eq!(s.amqp.queues[0].bindings, vec!["#".to_string()]);
        assert_eq!(s.log.format, LogFormat::Pretty);
        assert!(!s.auth.enabled());
    }

    #[test]
    fn the_shipped_config_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let text = std::fs::read_to_string(&path).expect("config/default.toml");
        let file: Settings = toml::from_str(&text).expect("parses as Settings");
        assert_eq!(
            file.to_redacted_toml(),
            Settings::default().to_redacted_toml()
        );
        let listed: toml::Table = toml::from_str(&text).expect("TOML");
        let every: toml::Table = toml::Table::try_from(Settings::default()).expect("serialize");
        for (section, keys) in &every {
            let Some(keys) = keys.as_table() else {
                continue;
            };
            for key in keys.keys() {
                assert!(
                    listed.get(section).and_then(|s| s.get(key)).is_some(),
                    "config/default.toml lacks {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn redacts_uri_passwords() {
        assert_eq!(
            redact_uri("amqp://guest:s3cret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact_uri("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redact_uri("amqps://u:p:q@h/v"), "amqps://u:***@h/v");
    }

    #[test]
    fn splits_uri_lists() {
        assert_eq!(
            split_uris(" amqp://a , ,amqp://b"),
            vec!["amqp://a", "amqp://b"]
        );
    }

    #[test]
    fn secrets_never_print() {
        let mut s = Settings::default();
        s.auth.username = "bw".into();
        s.auth.password = Secret::new("hunter2");
        s.amqp.uri = Secret::new("amqp://guest:brokerpass@h/%2f,amqp://x:other@h2/%2f");
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("brokerpass"), "{shown}");
        assert!(!shown.contains("other@"), "{shown}");
        assert!(shown.contains("amqp://guest:***@h/%2f"), "{shown}");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    fn rejects(change: impl FnOnce(&mut Settings), key: &str) {
        let mut s = Settings::default();
        change(&mut s);
        let err = s.validate().expect_err("should be rejected").to_string();
        assert!(err.contains(key), "`{err}` should name `{key}`");
    }

    #[test]
    fn invalid_values_name_their_key() {
        rejects(|s| s.http.path = "callbacks".into(), "http.path");
        rejects(|s| s.http.max_body_bytes = 0, "http.max_body_bytes");
        rejects(
            |s| s.amqp.publish_timeout = Duration::ZERO,
            "amqp.publish_timeout_ms",
        );
        rejects(|s| s.auth.password = Secret::new("p"), "auth.username");
        rejects(|s| s.amqp.uri = Secret::new("http://x"), "amqp.uri");
        rejects(
            |s| s.amqp.exchange = "amq.direct".parse().expect("a name"),
            "amqp.exchange",
        );
        rejects(|s| s.amqp.channels = 0, "amqp.channels");
        rejects(
            |s| s.amqp.tls_ca_file = "/nonexistent/ca.pem".into(),
            "amqp.tls_ca_file",
        );
        rejects(
            |s| s.amqp.tls_ca_file = "Cargo.toml".into(),
            "amqp.tls_ca_file",
        );
        rejects(
            |s| s.amqp.routing_key = "{type}.#".into(),
            "amqp.routing_key",
        );
        rejects(|s| s.log.level = "info,[".into(), "log.level");
        rejects(|s| s.runtime.worker_threads = 0, "runtime.worker_threads");
        rejects(|s| s.http.max_connections = 0, "http.max_connections");
        rejects(|s| s.http.max_json_depth = 0, "http.max_json_depth");
        rejects(
            |s| s.http.write_timeout = Duration::ZERO,
            "http.write_timeout_ms",
        );
        rejects(
            |s| s.auth.credentials = vec![Credential::default()],
            "auth.credentials",
        );
    }

    /// Loads `toml` as the configuration file, as `serve --config` does.
    fn load_toml(toml: &str) -> Result<Settings, SettingsError> {
        let path = std::env::temp_dir().join(format!("settings-{:x}.toml", fastrand::u64(..)));
        std::fs::write(&path, toml).expect("write");
        let loaded = Settings::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn a_value_that_does_not_parse_into_its_type_is_no_settings_at_all() {
        // The allowlist is a list of networks from the start: an entry that is not one cannot
        // become an empty (open) list further on.
        for (toml, key) in [
            (
                "[auth]\nallowed_sources = [\"10.0.0.0/33\"]\n",
                "allowed_sources",
            ),
            ("[auth]\ntrusted_proxies = [\"proxy\"]\n", "trusted_proxies"),
            ("[http]\nlisten = \"nowhere\"\n", "listen"),
            ("[amqp]\nexchange = \"\"\n", "exchange"),
            ("[[amqp.queues]]\nname = \"\"\n", "name"),
        ] {
            let error = load_toml(toml).expect_err(toml).to_string();
            assert!(error.contains(key), "`{error}` should name `{key}`");
        }
        let long = format!("[amqp]\nexchange = \"{}\"\n", "x".repeat(256));
        let error = load_toml(&long).expect_err("256 bytes").to_string();
        assert!(error.contains("exchange"), "{error}");
        let loaded = load_toml("[auth]\nallowed_sources = [\"192.0.2.7\", \"10.0.0.0/8\"]\n")
            .expect("valid networks");
        let shown: Vec<String> = loaded
            .auth
            .allowed_sources
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["192.0.2.7/32", "10.0.0.0/8"]);
    }
}
