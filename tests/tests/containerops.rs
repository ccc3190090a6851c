//! The ContainerOps example runs as its README says, on the real Docker engine and registry
//! of `scripts/containers.sh`: the built image is awaited, the component image checks the
//! release from `CO_DATA`, and the promote to `stable` keeps every digest.

use std::process::{Command, Stdio};
use std::time::Duration;

use baton_tests::{Sandbox, container_service, repo_root, wait_with_deadline};
use serde_json::Value;

/// The exact bytes of a manifest, as skopeo reads them.
fn raw_manifest(reference: &str) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[test]
fn the_containerops_example_checks_a_release_in_a_container_and_promotes_it() {
    let registry_url = container_service("BATON_REGISTRY_URL");
    let docker_host = container_service("BATON_DOCKER_HOST");
    let registry = registry_url.trim_start_matches("http://").to_owned();
    let example = repo_root().join("examples/containerops");

    let build = Command::new(example.join("build.sh"))
        .env("DOCKER_HOST", &docker_host)
        .env("REGISTRY", &registry)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("build.sh starts");
    let built = wait_with_deadline(build, Duration::from_secs(120));
    assert_eq!(
        built.code,
        Some(0),
        "build.sh: {}{}",
        built.stdout,
        built.stderr
    );

    let sb = Sandbox::new();
    for file in ["baton.toml", "workflow.yaml", "event.json"] {
        sb.write(file, &std::fs::read_to_string(example.join(file)).unwrap());
    }
    let valid = sb.run(&["validate", "-c", "baton.toml"]);
    assert_eq!(valid.code, Some(0), "{}{}", valid.stdout, valid.stderr);
    let child = sb
        .baton(&[
            "run",
            "-c",
            "baton.toml",
            "containerops-release",
            "--event",
            "event.json",
            "--json",
        ])
        .env("BATON_ADAPTERS__REG__URL", &registry_url)
        .env("DOCKER_HOST", &docker_host)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("baton starts");
    let run = wait_with_deadline(child, Duration::from_secs(120));
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);

    let source = raw_manifest(&format!("{registry}/containerops/app:1.4.0"));
    let arrived = run.stage("arrived");
    assert_eq!(arrived["outputs"]["digest"], sha256(&source), "{arrived:#}");

    let check = run.stage("check");
    assert_eq!(
        check["outputs"]["image"], "containerops/app:1.4.0",
        "{check:#}"
    );
    assert_eq!(check["outputs"]["semver"], Value::Bool(true), "{check:#}");
    assert_eq!(check["outputs"]["exit_code"], 0, "{check:#}");

    let promote = run.stage("promote");
    assert_eq!(promote["outputs"]["digest"], sha256(&source), "{promote:#}");
    assert_eq!(
        promote["outputs"]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64", "linux/s390x"]),
        "{promote:#}"
    );
    // The stable tag is the same index, byte for byte, and so is each child it lists.
    let stable = raw_manifest(&format!("{registry}/containerops/app:stable"));
    assert_eq!(stable, source);
    let index: Value = serde_json::from_slice(&stable).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        let digest = child["digest"].as_str().unwrap();
        let bytes = raw_manifest(&format!("{registry}/containerops/app@{digest}"));
        assert_eq!(sha256(&bytes), digest);
    }
}
