//! TLS on every listener, with certificates the test makes (rcgen): the OpenTelemetry Python
//! SDK exports over gRPC and HTTP with TLS and a token, curl queries the query port checking
//! the certificate, plaintext to a TLS port gets nowhere, a renewed certificate is served
//! without a restart, and with client certificates required an agent with one delivers its
//! lines while a client without one is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Node, WakeServer, wait_until};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/send_otlp.py");

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a PEM file");
    path
}

fn leaf(common_name: &str, sans: Vec<String>, ca: &rcgen::Certificate, ca_key: &KeyPair) -> (String, String) {
    let mut params = CertificateParams::new(sans).expect("params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca, ca_key).expect("signing");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "wake test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.clone().self_signed(&ca_key).expect("CA");
        let (server_cert, server_key) = leaf("wake", vec!["127.0.0.1".into(), "localhost".into()], &ca, &ca_key);
        let (client_cert, client_key) = leaf("agent", vec!["agent".into()], &ca, &ca_key);
        Pki {
            ca: write(dir, "ca.pem", &ca.pem()),
            server_cert: write(dir, "server.pem", &server_cert),
            server_key: write(dir, "server-key.pem", &server_key),
            client_cert: write(dir, "client.pem", &client_cert),
            client_key: write(dir, "client-key.pem", &client_key),
            ca_params,
            ca_key,
        }
    }

    /// A new server certificate in place of the old, as a renewal writes it.
    fn renew(&self, common_name: &str) {
        let ca = self.ca_params.clone().self_signed(&self.ca_key).expect("CA");
        let (cert, key) = leaf(common_name, vec!["127.0.0.1".into(), "localhost".into()], &ca, &self.ca_key);
        std::fs::write(&self.server_key, key).expect("key");
        std::fs::write(&self.server_cert, cert).expect("cert");
    }
}

fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl").args(["-sS", "-g", "--max-time", "10"]).args(args).output().expect("curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
    )
}

fn https(server: &WakeServer, path: &str) -> String {
    server.api_url(path).replacen("http://", "https://", 1)
}

fn python() -> String {
    std::env::var("WAKE_TEST_PYTHON").expect("WAKE_TEST_PYTHON is not set: run the suite with scripts/test.sh")
}

#[test]
fn python_sdk_curl_and_plaintext_against_tls_listeners() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let server = WakeServer::start(
        &dir.path().join("data"),
        &["--tls-cert-file", pki.server_cert.to_str().unwrap(), "--tls-key-file", pki.server_key.to_str().unwrap()],
    );
    let ca = pki.ca.to_str().unwrap();
    for (protocol, endpoint) in [
        ("grpc", server.grpc_endpoint().replacen("http://", "https://", 1)),
        ("http", server.otlp_url("").replacen("http://", "https://", 1)),
    ] {
        let output = Command::new(python())
            .args([SCRIPT, "--protocol", protocol, "--endpoint", &endpoint, "--run-id", protocol, "--ca-file", ca])
            // requests lets these override the exporter's own CA file (psf/requests#3829).
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .output()
            .expect("send_otlp.py");
        assert!(
            output.status.success(),
            "{protocol} over TLS: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // curl checks the certificate against the CA and reads both runs' logs back.
    let sql = "SELECT count(DISTINCT resource_attributes['run.id']) FROM logs";
    let query = format!("{}?sql={}", https(&server, "/api/v1/sql"), sql.replace(' ', "%20").replace('\'', "%27"));
    wait_until(Duration::from_secs(20), "both runs' logs", || {
        let (ok, out) = curl(&["--cacert", ca, &query]);
        ok && serde_json::from_str::<Value>(&out).is_ok_and(|v| v["rows"][0][0] == 2)
    });
    // Without the CA, curl refuses the certificate; plaintext gets no answer from a TLS port.
    assert!(!curl(&[&https(&server, "/healthz")]).0, "an unknown CA is refused");
    let (ok, out) = curl(&[&server.api_url("/healthz")]);
    assert!(!ok || !out.contains("ok"), "plaintext to a TLS port: {out}");
    let plain = server.client().get(server.api_url("/healthz")).send();
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A renewed certificate is served without a restart.
    pki.renew("wake-renewed");
    wait_until(Duration::from_secs(20), "the renewed certificate", || {
        let (_, out) = curl(&["--cacert", ca, "-v", &https(&server, "/healthz")]);
        out.contains("CN=wake-renewed")
    });
}

#[test]
fn with_client_certificates_required_an_agent_with_one_delivers_and_others_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(dir.path());
    let server = WakeServer::start(
        &dir.path().join("data"),
        &[
            "--tls-cert-file",
            pki.server_cert.to_str().unwrap(),
            "--tls-key-file",
            pki.server_key.to_str().unwrap(),
            "--tls-client-ca-file",
            pki.ca.to_str().unwrap(),
        ],
    );
    let ca = pki.ca.to_str().unwrap();
    // Without a client certificate the handshake fails.
    assert!(!curl(&["--cacert", ca, &https(&server, "/healthz")]).0);
    let with_cert = |path: &str| {
        curl(&[
            "--cacert",
            ca,
            "--cert",
            pki.client_cert.to_str().unwrap(),
            "--key",
            pki.client_key.to_str().unwrap(),
            &https(&server, path),
        ])
    };
    assert!(with_cert("/healthz").0);

    let lines: String = (0..10).map(|i| format!("2026-12-07T10:00:{i:02}.000000000Z stdout F line {i}\n")).collect();
    // A node whose pod `pod` wrote `lines`, its agent sending to `endpoint` with `extra` flags.
    let agent_for = |pod: &str, endpoint: &str, extra: &[&str]| {
        let node = Node::new();
        let dir = node.path(&format!("var/log/pods/shop_{pod}_0000-1111/app"));
        std::fs::create_dir_all(&dir).expect("pod dir");
        std::fs::write(dir.join("0.log"), &lines).expect("log");
        let mut args = vec!["--ca-file", ca, "--batch-timeout", "200ms"];
        args.extend_from_slice(extra);
        let agent = node.agent(endpoint, &args);
        (node, agent)
    };
    let identity = [
        "--client-cert-file",
        pki.client_cert.to_str().unwrap(),
        "--client-key-file",
        pki.client_key.to_str().unwrap(),
    ];
    let grpc_endpoint = server.grpc_endpoint().replacen("http://", "https://", 1);
    let _grpc_agent = agent_for("web-0", &grpc_endpoint, &identity);
    // The same over OTLP/HTTP.
    let http_endpoint = server.otlp_url("").replacen("http://", "https://", 1);
    let _http_agent = agent_for("web-1", &http_endpoint, &[&["--protocol", "http"][..], &identity].concat());
    for pod in ["web-0", "web-1"] {
        let sql = format!("SELECT%20count(*)%20FROM%20logs%20WHERE%20k8s_pod_name%20=%20%27{pod}%27");
        wait_until(Duration::from_secs(30), &format!("{pod}'s lines over mutual TLS"), || {
            let (ok, out) = with_cert(&format!("/api/v1/sql?sql={sql}"));
            ok && serde_json::from_str::<Value>(&out).is_ok_and(|v| v["rows"][0][0] == 10)
        });
    }
    // An agent without a client certificate is refused at the handshake and delivers nothing.
    let (_refused_node, refused) = agent_for("web-2", &http_endpoint, &["--protocol", "http"]);
    wait_until(Duration::from_secs(30), "the refused agent's failed attempts", || {
        refused.metric("wake_agent_export_retries_total") > 0.0
    });
    let sql = "SELECT%20count(*)%20FROM%20logs%20WHERE%20k8s_pod_name%20=%20%27web-2%27";
    let (ok, out) = with_cert(&format!("/api/v1/sql?sql={sql}"));
    assert!(ok && serde_json::from_str::<Value>(&out).is_ok_and(|v| v["rows"][0][0] == 0), "{out}");
}
