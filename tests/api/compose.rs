//! `docker-compose.yml`: RabbitMQ with management plus the forwarder, configured as it accepts.

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
fn runs_rabbitmq_with_management_and_the_forwarder_built_from_the_repo() {
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
    assert_eq!(
        forwarder["depends_on"]["rabbitmq"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(forwarder["stop_signal"].as_str(), Some("SIGTERM"));
    let ports = strings(&forwarder["ports"]);
    assert_eq!(ports, ["8080:8080"]);
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    // Cargo refuses a manifest whose declared targets are missing, so the build copies them all.
    for copied in [
        "COPY Cargo.toml Cargo.lock",
        "COPY src ./src",
        "COPY benches ./benches",
    ] {
        assert!(dockerfile.contains(copied), "Dockerfile lacks `{copied}`");
    }
}

#[test]
fn the_forwarders_environment_is_a_valid_configuration() {
    let compose = compose();
    let environment = compose["services"]["forwarder"]["environment"]
        .as_hash()
        .expect("environment map");
    let mut command = Command::new(env!("CARGO_BIN_EXE_bandwidth-forwarder"));
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
