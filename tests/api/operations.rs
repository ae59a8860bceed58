//! What an operator deploys: the Kubernetes manifests and the alert rules, checked against
//! the binary itself (`check-config`, the CLI) and against promtool.

use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn manifest(name: &str) -> Yaml {
    let path = Path::new(DEPLOY).join("kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .pop()
        .expect("one document")
}

fn text(yaml: &Yaml) -> &str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("not a string: {yaml:?}"))
}

fn strings(yaml: &Yaml) -> Vec<&str> {
    yaml.as_vec().expect("a list").iter().map(text).collect()
}

/// The value after `flag` in a container's args.
fn arg<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("no {flag}"));
    args[at + 1]
}

/// `check-config` with the ConfigMap's settings file and the Deployment's environment (the
/// Secret's values filled in): its stdout, after asserting it accepted them.
fn check_config_as_deployed(container: &Yaml) -> String {
    let config = manifest("configmap.yaml");
    let secret = manifest("secret.yaml");
    let file = std::env::temp_dir().join(format!("{}.toml", crate::common::unique("k8s")));
    std::fs::write(&file, text(&config["data"]["config.toml"])).expect("write the ConfigMap");
    let mut command = crate::common::binary();
    command.args(["check-config", "--config"]).arg(&file);
    for variable in container["env"].as_vec().expect("env") {
        let reference = &variable["valueFrom"]["secretKeyRef"];
        assert_eq!(text(&reference["name"]), text(&secret["metadata"]["name"]));
        let value = text(&secret["stringData"][text(&reference["key"])]);
        command.env(text(&variable["name"]), value);
    }
    let output = command.output().expect("run check-config");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the deployed settings are refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `128Mi` in MiB.
fn mebibytes(quantity: &Yaml) -> u64 {
    text(quantity)
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a Mi quantity: {quantity:?}"))
}

#[test]
fn the_forwarder_deployment_runs_settings_the_binary_accepts_with_fitting_probes_and_grace() {
    let deployment = manifest("deployment.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(2));
    let pod = &spec["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let container = &pod["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[0], "serve");
    assert_eq!(
        arg(&args, "--config"),
        "/etc/bandwidth-forwarder/config.toml"
    );
    assert_eq!(
        text(&container["volumeMounts"][0]["mountPath"]),
        "/etc/bandwidth-forwarder"
    );

    let effective = check_config_as_deployed(container);
    assert!(
        effective.contains("username = \"bandwidth\""),
        "{effective}"
    );
    assert!(
        effective.contains("amqps://forwarder:***@rabbitmq-0"),
        "{effective}"
    );
    let settings: toml::Table = toml::from_str(&effective).expect("check-config prints TOML");
    let listen = settings["http"]["listen"].as_str().expect("listen");
    let port = &container["ports"][0];
    assert_eq!(text(&port["name"]), "http");
    assert_eq!(
        listen.rsplit(':').next(),
        Some(
            port["containerPort"]
                .as_i64()
                .expect("port")
                .to_string()
                .as_str()
        )
    );
    assert_eq!(
        text(&container["livenessProbe"]["httpGet"]["path"]),
        "/healthz"
    );
    assert_eq!(text(&container["livenessProbe"]["httpGet"]["port"]), "http");
    assert_eq!(
        text(&container["readinessProbe"]["httpGet"]["path"]),
        "/readyz"
    );
    assert_eq!(
        text(&container["readinessProbe"]["httpGet"]["port"]),
        "http"
    );

    // Kubernetes kills the pod at the grace period: the preStop pause, the drain, closing the
    // connections (2 s) and the broker connection (3 s) must all fit.
    let drain_ms = settings["http"]["drain_timeout_ms"]
        .as_integer()
        .expect("drain");
    let pre_stop = strings(&container["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(pre_stop[0], "sleep");
    let pause: i64 = pre_stop[1].parse().expect("seconds");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace");
    assert!(
        pause * 1000 + drain_ms + 2_000 + 3_000 <= grace * 1000,
        "{pause} s + {drain_ms} ms + 5 s exceed the grace period of {grace} s"
    );

    let resources = &container["resources"];
    assert!(
        mebibytes(&resources["requests"]["memory"]) >= 64,
        "above the 59 MB peak"
    );
    assert!(
        mebibytes(&resources["limits"]["memory"]) >= mebibytes(&resources["requests"]["memory"])
    );
    let security = &pod["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    let uid = security["runAsUser"].as_i64().expect("uid").to_string();
    assert!(
        dockerfile.contains(&format!("USER {uid}")),
        "the image's user is {uid}"
    );
}

#[test]
fn the_service_budget_and_autoscaler_select_the_forwarder() {
    let deployment = manifest("deployment.yaml");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = manifest("service.yaml");
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(text(&service["spec"]["ports"][0]["targetPort"]), "http");
    let budget = manifest("pdb.yaml");
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(budget["spec"]["minAvailable"].as_i64(), Some(1));
    let autoscaler = manifest("hpa.yaml");
    assert_eq!(
        &autoscaler["spec"]["scaleTargetRef"]["name"],
        &deployment["metadata"]["name"]
    );
    assert!(autoscaler["spec"]["minReplicas"].as_i64() >= Some(2));
}

#[test]
fn the_consumer_deployment_runs_a_command_the_binary_accepts_and_outlasts_its_handlers() {
    let deployment = manifest("consumer-deployment.yaml");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let args = strings(&container["args"]);
    crate::common::assert_cli_accepts(&args);
    check_config_as_deployed(container);
    let listen = arg(&args, "--listen");
    let port = container["ports"][0]["containerPort"]
        .as_i64()
        .expect("port");
    assert_eq!(listen.rsplit(':').next(), Some(port.to_string().as_str()));
    assert_eq!(
        text(&container["readinessProbe"]["httpGet"]["path"]),
        "/readyz"
    );
    let timeout_ms: i64 = arg(&args, "--handler-timeout-ms").parse().expect("ms");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace");
    assert!(
        timeout_ms + 5_000 <= grace * 1000,
        "handlers finish before the kill"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let prometheus = Path::new(DEPLOY).join("prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&prometheus)
            .output()
            .expect("promtool (apt-get install prometheus; scripts/test installs it)");
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
