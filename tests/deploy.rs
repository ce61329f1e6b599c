//! The deployment files are checked with real parsers and against the real binary:
//!
//! - every manifest in deploy/kubernetes/ passes `kubernetes-validate --strict` (the Kubernetes
//!   OpenAPI schemas, bundled with it, so offline), and kustomization.yaml lists them all;
//! - the settings the manifests give are environment variables the binary reads, and the binary
//!   started with exactly those settings (only paths and listen addresses moved to the test's)
//!   answers the manifests' probes on the ports the manifests name;
//! - the security settings the comments promise are there (non-root server, read-only root
//!   file systems, the agent's single capability, read-only host mounts);
//! - the Containerfile, parsed by `dockerfile-parse`, is a multi-stage build whose final stage
//!   runs `wake` as the non-root user the server's manifest expects.
//!
//! `WAKE_TEST_PYTHON` names a Python with kubernetes-validate and dockerfile-parse installed
//! (scripts/test.sh creates it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Kubernetes versions whose schemas the manifests must pass: the oldest release still in
/// common use that has every field used (StatefulSet PVC retention is beta and on by default
/// from 1.27, GA in 1.32), and a recent one.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", "1.34"];
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("WAKE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "WAKE_TEST_PYTHON is not set: it names a Python with kubernetes-validate and \
             dockerfile-parse installed. Run the suite with scripts/test.sh, which creates that \
             virtualenv and sets the variable."
        )
    })
}

fn kubernetes_dir() -> PathBuf {
    Path::new(ROOT).join("deploy/kubernetes")
}

/// The manifests: every YAML file of deploy/kubernetes/ but kustomization.yaml.
fn manifest_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .expect("reading deploy/kubernetes")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|path| path.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 2, "expected the server's and the agent's manifests, found {paths:?}");
    paths
}

/// Every document of every manifest.
fn documents() -> Vec<Value> {
    let mut documents = Vec::new();
    for path in manifest_paths() {
        let text = std::fs::read_to_string(&path).expect("reading a manifest");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !value.is_null() {
                documents.push(value);
            }
        }
    }
    documents
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn seq_of<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
}

fn output(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Schema validation

fn kubernetes_validate(path: &Path, version: &str) -> (bool, String) {
    let output = output(
        Command::new(python())
            .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", version])
            .arg(path),
    );
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // A kind without a schema is only a warning to kubernetes-validate; here it is a failure
    // too, as is anything else that is not a `passed` line.
    let clean = output.status.success()
        && text.lines().any(|line| line.contains(" passed "))
        && text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|line| line.starts_with("INFO ") && line.contains(" passed "));
    (clean, text)
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let mut failures = Vec::new();
    for path in manifest_paths() {
        for version in KUBERNETES_VERSIONS {
            let (clean, text) = kubernetes_validate(&path, version);
            if !clean {
                failures.push(format!("{} against {version}:\n{text}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "kubernetes-validate --strict failed:\n{}", failures.join("\n"));
}

/// The validator catches what it should: a field no schema has, a wrong type, an unknown kind.
/// Without this, a validator that silently passed everything would pass the test above.
#[test]
fn the_validator_refuses_broken_manifests() {
    let agent = std::fs::read_to_string(kubernetes_dir().join("wake-agent.yaml")).expect("wake-agent.yaml");
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = [
        (
            "unknown-field.yaml",
            agent.replacen(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystem: true\n            runAsRoot: true",
                1,
            ),
        ),
        ("wrong-type.yaml", agent.replacen("containerPort: 4390", "containerPort: \"http\"", 1)),
        ("unknown-kind.yaml", "apiVersion: v1\nkind: Daemonset\nmetadata: {name: x}\n".to_string()),
    ];
    for (name, text) in broken {
        assert_ne!(text, agent, "{name}: the replacement did not apply; update this test");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("writing a broken manifest");
        let (clean, output) = kubernetes_validate(&path, KUBERNETES_VERSIONS[0]);
        assert!(!clean, "{name} passed validation:\n{output}");
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(kubernetes_dir().join("kustomization.yaml")).expect("kustomization.yaml");
    let kustomization: Value = serde_yaml::from_str(&text).expect("kustomization.yaml is YAML");
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    assert_eq!(kustomization["namespace"].as_str(), Some("wake"));
    let listed: BTreeSet<&str> =
        seq_of(&kustomization["resources"], "resources").iter().map(|r| str_of(r, "a resource")).collect();
    let present: BTreeSet<String> =
        manifest_paths().iter().map(|p| p.file_name().expect("a file name").to_string_lossy().into_owned()).collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(listed, present, "kustomization.yaml's resources and the files of deploy/kubernetes differ");
    for document in documents() {
        let kind = str_of(&document["kind"], "kind");
        if kind != "Namespace" {
            assert_eq!(document["metadata"]["namespace"].as_str(), Some("wake"), "{kind} {:?}", document["metadata"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and probes against the binary

/// The `WAKE_…` variables of the clap struct `name` in src/config.rs, plus the global ones of
/// src/main.rs.
fn env_vars_of(args_struct: &str) -> BTreeSet<String> {
    let config = std::fs::read_to_string(Path::new(ROOT).join("src/config.rs")).expect("src/config.rs");
    let start = config.find(&format!("pub struct {args_struct}")).unwrap_or_else(|| panic!("no {args_struct}"));
    let body = &config[start..start + config[start..].find("\n}").expect("the struct's end")];
    let main = std::fs::read_to_string(Path::new(ROOT).join("src/main.rs")).expect("src/main.rs");
    let mut names = BTreeSet::new();
    for text in [body, main.as_str()] {
        for piece in text.split("env = \"").skip(1) {
            names.insert(piece[..piece.find('"').expect("closing quote")].to_string());
        }
    }
    assert!(names.len() > 3, "found no env = \"WAKE_…\" in {args_struct}: {names:?}");
    names
}

/// The workload's only container.
fn container(workload: &Value) -> &Value {
    let containers = seq_of(&workload["spec"]["template"]["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// The environment the container gets: its ConfigMaps' data, then its `env` (downward API
/// values replaced by `downward`).
fn container_env(documents: &[Value], container: &Value, downward: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = str_of(&source["configMapRef"]["name"], "configMapRef.name");
        let map = find(documents, "ConfigMap", name);
        for (key, value) in map["data"].as_mapping().expect("ConfigMap data") {
            env.insert(str_of(key, "a key").to_string(), str_of(value, "ConfigMap values are strings").to_string());
        }
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = str_of(&var["name"], "env name");
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(value), _) => value.clone(),
            (_, Value::String(field)) => {
                downward.get(field.as_str()).unwrap_or_else(|| panic!("unexpected fieldRef {field}")).to_string()
            }
            other => panic!("env {name}: unexpected source {other:?}"),
        };
        env.insert(name.to_string(), value);
    }
    env
}

#[test]
fn manifests_set_only_variables_the_binary_reads() {
    let documents = documents();
    let mut unknown = Vec::new();
    for (kind, name, args_struct) in
        [("StatefulSet", "wake-server", "ServerArgs"), ("DaemonSet", "wake-agent", "AgentArgs")]
    {
        let known = env_vars_of(args_struct);
        let downward = BTreeMap::from([("spec.nodeName", "node-1")]);
        let env = container_env(&documents, container(find(&documents, kind, name)), &downward);
        for variable in env.keys() {
            // NODE_NAME: the agent's node name when WAKE_NODE_NAME is unset (src/config.rs).
            let read = known.contains(variable) || (args_struct == "AgentArgs" && variable == "NODE_NAME");
            if !read {
                unknown.push(format!("{kind} {name}: {variable} (the binary reads {known:?})"));
            }
        }
    }
    assert!(unknown.is_empty(), "variables nothing reads:\n{}", unknown.join("\n"));
}

/// A `wake` process started with a given environment; killed on drop.
struct Wake {
    child: Child,
    listening: Json,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Wake {
    fn start(args: &[&str], env: &BTreeMap<String, String>) -> Wake {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wake"));
        command.args(args).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WAKE_") {
                command.env_remove(name);
            }
        }
        command.envs(env);
        let mut child = command.spawn().expect("spawning wake");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (found, listening) = mpsc::channel();
        let reader_log = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                reader_log.lock().expect("log lock").push_str(&format!("{line}\n"));
                // The manifests set WAKE_LOG_FORMAT=json, so the line is JSON.
                if let Ok(json) = serde_json::from_str::<Json>(&line)
                    && json["fields"]["message"] == "listening"
                {
                    let _ = found.send(json["fields"].clone());
                }
            }
        });
        match listening.recv_timeout(START_TIMEOUT) {
            Ok(listening) => Wake { child, listening, log },
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(200));
                panic!("wake {args:?} did not log a JSON `listening` line ({error}):\n{}", log.lock().expect("log"));
            }
        }
    }

    fn addr(&self, field: &str) -> SocketAddr {
        self.listening[field]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {}", self.listening))
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[default: …]` port of `flag` in `wake <subcommand> --help`.
fn default_port(subcommand: &str, flag: &str) -> u16 {
    let help = output(Command::new(env!("CARGO_BIN_EXE_wake")).args([subcommand, "--help"]));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let start = help.find(&format!("{flag} <")).unwrap_or_else(|| panic!("no {flag} in `wake {subcommand} --help`"));
    let rest = &help[start..];
    let default = &rest[rest.find("[default: ").unwrap_or_else(|| panic!("no default for {flag}")) + 10..];
    let default = &default[..default.find(']').expect("closing bracket")];
    default.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{flag} default {default:?}: {e}")).port()
}

/// The container port the probe names, by name or number.
fn probe_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(number) => number.as_u64().expect("a port number") as u16,
        Value::String(name) => seq_of(&container["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")) as u16,
        other => panic!("unexpected probe port {other:?}"),
    }
}

/// Every HTTP probe of `container` answers 200 on the real process; `addresses` maps container
/// ports to where the test's process listens.
fn assert_probes_answer(what: &str, container: &Value, addresses: &BTreeMap<u16, SocketAddr>, wake: &Wake) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let mut probed = 0;
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let probe = &container[kind];
        if probe.is_null() {
            continue;
        }
        let get = &probe["httpGet"];
        assert!(get.is_mapping(), "{what} {kind}: an httpGet probe on the binary's own endpoint");
        let port = probe_port(container, &get["port"]);
        let addr =
            addresses.get(&port).unwrap_or_else(|| panic!("{what} {kind}: port {port} is none of {addresses:?}"));
        let path = str_of(&get["path"], "probe path");
        let status = client.get(format!("http://{addr}{path}")).send().map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(200)),
            "{what} {kind} GET {path} on port {port} answered {status:?}\n{}",
            wake.log.lock().expect("log")
        );
        probed += 1;
    }
    assert!(probed >= 2, "{what}: liveness and readiness probes");
}

#[test]
fn the_binary_configured_as_the_manifests_say_answers_their_probes() {
    let documents = documents();
    let dir = tempfile::tempdir().expect("temp dir");

    // The server: its ConfigMap's environment, with the data dir and listen addresses moved
    // to the test's (flags override the environment).
    let server_set = find(&documents, "StatefulSet", "wake-server");
    let server_container = container(server_set);
    let mut server_env = container_env(&documents, server_container, &BTreeMap::new());
    let data_dir = dir.path().join("data");
    // The Secrets kustomization.yaml makes from secrets/, at the test's paths: a token for the
    // agent, and its hash in the server's tokens.
    let (tokens_file, token_file) = (dir.path().join("tokens.yaml"), dir.path().join("agent-token"));
    std::fs::write(&token_file, "agent-secret-0123456789abcdef\n").expect("agent token");
    let hash = {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wake"))
            .args(["token", "hash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("wake token hash");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"agent-secret-0123456789abcdef")
            .expect("token on stdin");
        String::from_utf8(child.wait_with_output().expect("hash").stdout).expect("utf-8").trim().to_string()
    };
    std::fs::write(&tokens_file, format!("tokens:\n  - {{name: agents, sha256: {hash}, scopes: [write]}}\n"))
        .expect("tokens file");
    assert_eq!(server_env.get("WAKE_TOKENS_FILE").map(String::as_str), Some("/etc/wake/auth/tokens.yaml"));
    server_env.insert("WAKE_TOKENS_FILE".into(), tokens_file.display().to_string());
    let mut args: Vec<String> =
        seq_of(&server_container["args"], "args").iter().map(|a| str_of(a, "arg").to_string()).collect();
    assert_eq!(args, ["server"]);
    args.extend(["--data-dir".into(), data_dir.display().to_string()]);
    for flag in ["--otlp-grpc-addr", "--otlp-http-addr", "--http-addr"] {
        args.extend([flag.to_string(), "127.0.0.1:0".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Wake::start(&args, &server_env);
    let server_ports = BTreeMap::from([
        (default_port("server", "--otlp-grpc-addr"), server.addr("otlp_grpc_addr")),
        (default_port("server", "--otlp-http-addr"), server.addr("otlp_http_addr")),
        (default_port("server", "--http-addr"), server.addr("http_addr")),
    ]);
    let declared: BTreeSet<u16> = seq_of(&server_container["ports"], "ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().expect("containerPort") as u16)
        .collect();
    assert_eq!(declared, server_ports.keys().copied().collect(), "the server's container ports are its listeners");
    assert_probes_answer("wake-server", server_container, &server_ports, &server);

    // The Service exposes every listener, and the agent's endpoint names it.
    let service = find(&documents, "Service", "wake-server");
    let service_ports: BTreeSet<u16> =
        seq_of(&service["spec"]["ports"], "ports").iter().map(|p| p["port"].as_u64().expect("port") as u16).collect();
    assert_eq!(service_ports, declared, "the Service exposes 4317, 4318 and 4380");

    // The agent: its ConfigMap's environment and NODE_NAME, with the host paths, the
    // endpoint and its listen address moved to the test's.
    let agent_set = find(&documents, "DaemonSet", "wake-agent");
    let agent_container = container(agent_set);
    let mut agent_env = container_env(&documents, agent_container, &BTreeMap::from([("spec.nodeName", "node-1")]));
    assert_eq!(agent_env.get("WAKE_TOKEN_FILE").map(String::as_str), Some("/etc/wake/token/agent-token"));
    agent_env.insert("WAKE_TOKEN_FILE".into(), token_file.display().to_string());
    let endpoint = &agent_env["WAKE_ENDPOINT"];
    assert_eq!(endpoint, "http://wake-server.wake.svc:4317", "the agent sends to the server's Service over gRPC");
    let mut args: Vec<String> =
        seq_of(&agent_container["args"], "args").iter().map(|a| str_of(a, "arg").to_string()).collect();
    assert_eq!(args, ["agent"]);
    for (flag, sub) in [
        ("--log-root", "var/log/pods"),
        ("--docker-root", "docker"),
        ("--cgroup-root", "cgroup"),
        ("--containers-storage-root", "storage"),
        ("--state-dir", "state"),
    ] {
        let path = dir.path().join(sub);
        std::fs::create_dir_all(&path).expect("creating a node directory");
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(["--endpoint".into(), format!("http://{}", server.addr("otlp_grpc_addr"))]);
    args.extend(["--http-addr".into(), "127.0.0.1:0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Wake::start(&args, &agent_env);
    assert_eq!(agent.listening["node_name"], "node-1", "NODE_NAME from the downward API names the node");
    let agent_ports = BTreeMap::from([(default_port("agent", "--http-addr"), agent.addr("http_addr"))]);
    let declared: BTreeSet<u16> = seq_of(&agent_container["ports"], "ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().expect("containerPort") as u16)
        .collect();
    assert_eq!(declared, agent_ports.keys().copied().collect(), "the agent's container port is its HTTP listener");
    assert_probes_answer("wake-agent", agent_container, &agent_ports, &agent);
}

// ---------------------------------------------------------------------------------------------
// Security settings

fn mounts(container: &Value) -> BTreeMap<String, (String, bool)> {
    seq_of(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| {
            let name = str_of(&m["name"], "mount name").to_string();
            (name, (str_of(&m["mountPath"], "mountPath").to_string(), m["readOnly"].as_bool().unwrap_or(false)))
        })
        .collect()
}

#[test]
fn workloads_run_with_the_least_privilege_they_need() {
    let documents = documents();

    let server = find(&documents, "StatefulSet", "wake-server");
    let pod = &server["spec"]["template"]["spec"];
    let server_container = container(server);
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(65532));
    let security = &server_container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["capabilities"]["drop"], serde_yaml::from_str::<Value>("[ALL]").expect("yaml"));
    assert!(security["capabilities"]["add"].is_null(), "the server needs no capability");
    // The data dir is the volumeClaimTemplate's mount.
    let claims = seq_of(&server["spec"]["volumeClaimTemplates"], "volumeClaimTemplates");
    let claim = str_of(&claims[0]["metadata"]["name"], "claim name");
    let env = container_env(&documents, server_container, &BTreeMap::new());
    assert_eq!(Some(&env["WAKE_DATA_DIR"]), mounts(server_container).get(claim).map(|m| &m.0), "data dir on the PVC");

    let agent = find(&documents, "DaemonSet", "wake-agent");
    let pod = &agent["spec"]["template"]["spec"];
    let agent_container = container(agent);
    let tolerations = seq_of(&pod["tolerations"], "tolerations");
    assert!(
        tolerations.iter().any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_null()),
        "a toleration of every taint, so that the agent runs on every node"
    );
    let security = &agent_container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(security["privileged"].as_bool(), Some(true));
    assert_eq!(security["capabilities"]["drop"], serde_yaml::from_str::<Value>("[ALL]").expect("yaml"));
    assert_eq!(security["capabilities"]["add"], serde_yaml::from_str::<Value>("[DAC_READ_SEARCH]").expect("yaml"));
    // Host paths are read-only, but for the state dir, which is the agent's setting.
    let env = container_env(&documents, agent_container, &BTreeMap::from([("spec.nodeName", "node-1")]));
    let host_paths: BTreeMap<String, String> = seq_of(&pod["volumes"], "volumes")
        .iter()
        .filter(|v| v["hostPath"].is_mapping())
        .map(|v| (str_of(&v["name"], "volume name").to_string(), str_of(&v["hostPath"]["path"], "path").to_string()))
        .collect();
    let mounts = mounts(agent_container);
    for required in ["/var/log/pods", "/var/lib/docker/containers", "/sys/fs/cgroup", "/var/lib/wake-agent"] {
        assert!(host_paths.values().any(|p| p == required), "no hostPath {required}");
    }
    for (volume, host_path) in &host_paths {
        let (mount_path, read_only) = mounts.get(volume).unwrap_or_else(|| panic!("volume {volume} is not mounted"));
        assert_eq!(mount_path, host_path, "{volume} is mounted where it is on the node (symlinks must resolve)");
        let writable = *mount_path == env["WAKE_STATE_DIR"];
        assert_eq!(*read_only, !writable, "{volume}: only the state dir is writable");
    }
}

// ---------------------------------------------------------------------------------------------
// The Containerfile

/// The instructions of a Dockerfile, as `dockerfile-parse` reads them.
#[derive(Debug, Deserialize)]
struct Instruction {
    instruction: String,
    value: String,
    startline: u64,
}

const KNOWN_INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

fn parse_containerfile() -> Vec<Instruction> {
    const SCRIPT: &str = "import json, sys\n\
                          from dockerfile_parse import DockerfileParser\n\
                          with open(sys.argv[1], 'rb') as f:\n\
                          \x20   print(json.dumps(DockerfileParser(fileobj=f).structure))\n";
    let path = Path::new(ROOT).join("Containerfile");
    let output = output(Command::new(python()).args(["-c", SCRIPT]).arg(&path));
    assert!(output.status.success(), "dockerfile-parse failed: {}", String::from_utf8_lossy(&output.stderr));
    let all: Vec<Instruction> = serde_json::from_slice(&output.stdout).expect("dockerfile-parse's JSON");
    all.into_iter().filter(|i| i.instruction != "COMMENT").collect()
}

#[test]
fn containerfile_builds_wake_in_stages_and_runs_it_unprivileged() {
    let instructions = parse_containerfile();
    let unknown: Vec<&Instruction> =
        instructions.iter().filter(|i| !KNOWN_INSTRUCTIONS.contains(&i.instruction.as_str())).collect();
    assert!(unknown.is_empty(), "not Dockerfile instructions: {unknown:?}");

    // Stages, split at FROM; named ones by their `AS` name.
    let mut stages: Vec<Vec<&Instruction>> = Vec::new();
    for instruction in &instructions {
        if instruction.instruction == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().unwrap_or_else(|| panic!("{instruction:?} before the first FROM")).push(instruction);
    }
    assert!(stages.len() >= 2, "a builder stage and a runtime stage");
    let names: Vec<Option<String>> = stages
        .iter()
        .map(|stage| {
            let words: Vec<&str> = stage[0].value.split_whitespace().collect();
            match words.as_slice() {
                [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            }
        })
        .collect();

    let builder = &stages[0];
    assert!(builder[0].value.starts_with("docker.io/library/rust:1-bookworm"), "{:?}", builder[0]);
    assert!(
        builder.iter().any(|i| i.instruction == "RUN" && i.value.contains("cargo build --release --locked --bin wake")),
        "the builder runs `cargo build --release --locked --bin wake`"
    );

    let last = stages.last().expect("stages");
    let base = last[0].value.as_str();
    assert!(
        base.starts_with("gcr.io/distroless/cc-debian12") || base.starts_with("debian:bookworm-slim"),
        "runtime base {base}"
    );
    let of = |name: &str| -> Vec<&Instruction> { last.iter().copied().filter(|i| i.instruction == name).collect() };
    for copy in of("COPY") {
        let from = copy.value.split_whitespace().find_map(|w| w.strip_prefix("--from="));
        let from = from.unwrap_or_else(|| panic!("the runtime stage copies only from the builder: {copy:?}"));
        assert!(names[..names.len() - 1].iter().any(|n| n.as_deref() == Some(from)), "no stage named {from}");
    }
    if base.starts_with("gcr.io/distroless") {
        assert!(of("RUN").is_empty(), "distroless has no shell for RUN: {:?}", of("RUN"));
    }
    let user = of("USER");
    let user = user.last().unwrap_or_else(|| panic!("the runtime stage sets USER"));
    let uid = user.value.split(':').next().expect("a user");
    assert!(uid != "0" && uid != "root", "the runtime stage runs as root: {user:?}");
    // The server's manifest runs as this user too.
    let server =
        find(&documents(), "StatefulSet", "wake-server")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
            .as_u64();
    assert_eq!(Some(uid), server.map(|u| u.to_string()).as_deref(), "USER and the server's runAsUser agree");

    let entrypoint = of("ENTRYPOINT");
    let entrypoint = entrypoint.last().unwrap_or_else(|| panic!("the runtime stage has an ENTRYPOINT"));
    let exec: Vec<String> = serde_json::from_str(&entrypoint.value)
        .unwrap_or_else(|e| panic!("ENTRYPOINT is not in exec (JSON) form, which needs no shell: {e}"));
    assert_eq!(exec, ["/usr/local/bin/wake"]);
    for cmd in of("CMD") {
        serde_json::from_str::<Vec<String>>(&cmd.value).unwrap_or_else(|e| panic!("CMD not in exec form: {e}"));
    }
    let exposed: BTreeSet<&str> = of("EXPOSE").iter().flat_map(|i| i.value.split_whitespace()).collect();
    for port in ["4317", "4318", "4380"] {
        assert!(exposed.contains(port), "EXPOSE {port}: {exposed:?}");
    }
    assert!(instructions.windows(2).all(|w| w[0].startline < w[1].startline), "instructions in file order");
}

#[test]
fn dockerignore_keeps_build_output_and_history_out_of_the_context() {
    let text = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect(".dockerignore");
    let patterns: BTreeSet<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for excluded in ["target/", ".git/"] {
        assert!(patterns.contains(excluded), ".dockerignore lacks {excluded}");
    }
    // What `cargo build --locked --bin wake` reads must stay in the context (benches/: the
    // manifest declares [[bench]] targets, which cargo resolves even for --bin).
    for needed in ["Cargo.toml", "Cargo.lock", "src", "storage", "query", "collector", "benches"] {
        let hit = patterns.iter().find(|p| {
            let p = p.trim_start_matches('/').trim_end_matches('/');
            p == needed || p == format!("{needed}/**") || p == "*" || p == "**"
        });
        assert!(hit.is_none(), ".dockerignore excludes {needed}, which the build needs: {hit:?}");
    }
}
