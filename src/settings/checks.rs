//! What a value's type cannot express, checked once when the settings are loaded (and again
//! by `Application::build`, for settings built in code), each error naming its key.

use std::str::FromStr;

use super::{Settings, SettingsError, redact_uri, values};

impl Settings {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Credential, Secret};
    use super::*;

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
}
