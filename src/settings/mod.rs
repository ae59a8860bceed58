//! Typed configuration, loaded in layers: built-in defaults < TOML file < `FORWARDER__…` env.

use std::path::Path;

use serde::{Deserialize, Serialize};

mod checks;
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
