//! `check-config`: the effective configuration with secrets redacted, or what is wrong.

use std::process::Output;

fn check_config(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = crate::common::binary();
    command.arg("check-config").args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FORWARDER__")) {
        command.env_remove(key);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("run the binary")
}

#[test]
fn prints_the_effective_configuration_without_secrets() {
    let output = check_config(
        &[
            ("FORWARDER__AUTH__USERNAME", "bw"),
            ("FORWARDER__AUTH__PASSWORD", "hunter2-password"),
            (
                "FORWARDER__AMQP__URI",
                "amqp://app:broker-secret@rabbit-1:5672/%2f,amqp://app:broker-secret@rabbit-2:5672/%2f",
            ),
            ("FORWARDER__AMQP__PUBLISH_TIMEOUT_MS", "2500"),
            ("FORWARDER__LOG__FORMAT", "json"),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains("broker-secret"), "{stdout}");
    assert!(
        stdout.contains("amqp://app:***@rabbit-1:5672/%2f,amqp://app:***@rabbit-2:5672/%2f"),
        "{stdout}"
    );
    assert!(stdout.contains("publish_timeout_ms = 2500"), "{stdout}");
    assert!(stdout.contains("format = \"json\""), "{stdout}");
    assert!(stdout.contains("bandwidth.messaging.all"), "{stdout}");
}

#[test]
fn rejects_bad_values_naming_the_key() {
    for (key, value, named) in [
        ("FORWARDER__HTTP__LISTEN", "not-an-address", "http.listen"),
        ("FORWARDER__HTTP__MAX_BODY_BYTES", "lots", "max_body_bytes"),
        (
            "FORWARDER__AMQP__PUBLISH_TIMEOUT_MS",
            "0",
            "amqp.publish_timeout_ms",
        ),
        ("FORWARDER__AMQP__URI", "http://wrong-scheme", "amqp.uri"),
        ("FORWARDER__LOG__FORMAT", "xml", "log.format"),
        (
            "FORWARDER__AUTH__PASSWORD",
            "orphan-password",
            "auth.username",
        ),
    ] {
        let output = check_config(&[(key, value)], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{key}={value} accepted");
        assert!(
            stderr.contains(named),
            "{key}={value}: `{stderr}` does not name `{named}`"
        );
        assert!(!stderr.contains("orphan-password"), "{stderr}");
    }
}

#[test]
fn reads_a_config_file_and_env_overrides_it() {
    let path = std::env::temp_dir().join(format!("forwarder-cli-{:016x}.toml", fastrand::u64(..)));
    std::fs::write(
        &path,
        "[http]\nlisten = \"127.0.0.1:9999\"\npath = \"/bw\"\n",
    )
    .expect("write");
    let output = check_config(
        &[("FORWARDER__HTTP__PATH", "/from-env")],
        &["--config", path.to_str().expect("path")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("listen = \"127.0.0.1:9999\""), "{stdout}");
    assert!(stdout.contains("path = \"/from-env\""), "{stdout}");
    std::fs::write(
        &path,
        "[http]\nlisten = \"127.0.0.1:9999\"\nunknown_key = 1\n",
    )
    .expect("write");
    let output = check_config(&[], &["--config", path.to_str().expect("path")]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown_key"));
    let _ = std::fs::remove_file(path);
    let missing = check_config(&[], &["--config", "/nonexistent/forwarder.toml"]);
    assert!(!missing.status.success());
}

#[test]
fn pretty_logs_into_a_pipe_carry_no_colour_codes() {
    // `replay` of a queue that does not exist logs its error and exits at once.
    let mut command = crate::common::binary();
    let output = command
        .args(["replay", "--queue", "test.no-such-queue.for-colour"])
        .env("FORWARDER__LOG__FORMAT", "pretty")
        .env("FORWARDER__AMQP__URI", crate::common::amqp_uri())
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ERROR"), "a log line was written: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
}

#[tokio::test]
async fn healthcheck_succeeds_only_on_a_200() {
    let app = crate::common::spawn_app(crate::common::test_settings()).await;
    let run = |url: String| {
        crate::common::binary()
            .args(["healthcheck", "--url", &url])
            .output()
            .expect("run the binary")
    };
    let base = format!("http://{}", app.addr);
    let healthy = tokio::task::spawn_blocking({
        let base = base.clone();
        move || run(format!("{base}/healthz"))
    })
    .await
    .expect("task");
    assert!(healthy.status.success(), "{healthy:?}");
    let missing = tokio::task::spawn_blocking(move || run(format!("{base}/nowhere")))
        .await
        .expect("task");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    app.stop().await;
    let port = crate::common::free_port();
    let refused = run(format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(refused.status.code(), Some(1));
}

#[tokio::test]
async fn settings_built_in_code_are_checked_before_anything_starts() {
    // Code that builds `Settings` by hand, skipping `Settings::load`, gets the same checks: an
    // exchange in the broker's reserved `amq.` namespace is an error naming the key before any
    // connection is made. (A name AMQP cannot carry at all is not a `Name`.)
    let mut settings = crate::common::test_settings();
    settings.amqp.exchange = "amq.forwarder".parse().expect("a name");
    let error = bandwidth_forwarder::app::Application::build(settings)
        .await
        .err()
        .expect("an exchange in the amq. namespace is refused");
    assert!(error.to_string().contains("amqp.exchange"), "{error}");
}
