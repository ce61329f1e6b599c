//! The ruler's notifier against the real Alertmanager (`prometheus-alertmanager`, Debian's package),
//! started on a free loopback port with gossip off, and killed at the end.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::sync::watch;
use wake_query::prom::naming::Labels;
use wake_query::rules::notifier::{Alert, AlertmanagerConfig, BasicAuth, Notifier, NotifierConfig, TlsConfig};

const BINARY: &str = "prometheus-alertmanager";
const AM_CONFIG: &str = "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n";
/// bcrypt of `wake-secret` (Alertmanager's web config wants a bcrypt hash).
const PASSWORD: &str = "wake-secret";
const PASSWORD_HASH: &str = "$2b$12$KhgCT9s7XFpdRhNCVlhU6OsqPWrMInXojBQz7KbhocsS9RZfc94LO";
const SERVER_NAME: &str = "alertmanager.test";

/// The notifier's log lines in the test output (`RUST_LOG=debug` for all of them).
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

fn have(binary: &str) -> bool {
    Command::new(binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[allow(deprecated)]
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The test's own client (readiness, `GET /api/v2/alerts`): the same hyper-util and
/// hyper-rustls stack as the notifier's, so no reqwest either.
type TestClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// `server_name` is the name the server's certificate is checked for (and sent as SNI) instead
/// of the URL's host.
fn test_client(tls: rustls::ClientConfig, server_name: Option<&'static str>) -> TestClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let resolver: Arc<dyn ResolveServerName + Send + Sync> = match server_name {
        Some(name) => Arc::new(FixedServerNameResolver::new(ServerName::try_from(name).expect("server name"))),
        None => Arc::new(DefaultServerNameResolver::default()),
    };
    Client::builder(TokioExecutor::new()).build(HttpsConnector::new(http, tls, false, resolver))
}

/// For plain HTTP: hyper-rustls' connector wants a TLS configuration all the same.
fn plain_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("tls")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A running Alertmanager; killed on drop.
struct Alertmanager {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (its certificate checked for
    /// alertmanager.test).
    base: String,
    client: TestClient,
    auth: Option<(&'static str, &'static str)>,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    async fn start(tls: Option<&TestTls>) -> Alertmanager {
        // The port was free a moment ago; if Alertmanager lost the race for it, try another.
        for _ in 0..3 {
            if let Some(am) = Self::try_start(tls).await {
                return am;
            }
        }
        panic!("Alertmanager did not start");
    }

    async fn try_start(tls: Option<&TestTls>) -> Option<Alertmanager> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        std::fs::write(dir.path().join("am.yml"), AM_CONFIG).expect("am.yml");
        let mut command = Command::new(BINARY);
        command
            .arg(format!("--config.file={}", dir.path().join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"));
        let (base, client, auth) = match tls {
            Some(tls) => {
                let web = format!(
                    "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  wake: {PASSWORD_HASH}\n",
                    tls.path("server.pem").display(),
                    tls.path("server.key").display(),
                    tls.path("ca.pem").display(),
                );
                std::fs::write(dir.path().join("web.yml"), web).expect("web.yml");
                command.arg(format!("--web.config.file={}", dir.path().join("web.yml").display()));
                let client = test_client(test_tls_config(tls), Some(SERVER_NAME));
                (format!("https://127.0.0.1:{port}"), client, Some(("wake", PASSWORD)))
            }
            None => (format!("http://127.0.0.1:{port}"), test_client(plain_tls_config(), None), None),
        };
        let child = command.spawn().expect("spawn Alertmanager");
        let mut am = Alertmanager { child, dir, port, base, client, auth };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if am.child.try_wait().expect("try_wait").is_some() {
                eprintln!("Alertmanager exited:\n{}", am.log());
                return None;
            }
            if let Ok((status, _)) = am.get("/-/ready").await
                && status.is_success()
            {
                return Some(am);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Alertmanager not ready after 30s:\n{}", am.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `GET path`, with basic auth where the Alertmanager wants it, bounded to 5 s.
    async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::get(format!("{}{path}", self.base)).body(Empty::new()).map_err(|e| e.to_string())?;
        if let Some((user, password)) = self.auth {
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let value = HeaderValue::try_from(format!("Basic {credentials}")).map_err(|e| e.to_string())?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange).await.map_err(|_| format!("GET {path}: timed out"))?
    }

    async fn alerts(&self) -> Vec<Value> {
        let (status, body) = self.get("/api/v2/alerts").await.expect("GET alerts");
        assert!(status.is_success(), "{status}");
        serde_json::from_slice::<Vec<Value>>(&body).expect("json")
    }

    /// Polls `GET /api/v2/alerts` until `done` holds (bounded), and returns the last answer.
    async fn alerts_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let alerts = self.alerts().await;
            if done(&alerts) {
                return alerts;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {alerts:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn find<'a>(alerts: &'a [Value], name: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["labels"]["alertname"] == name)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn alert(name: &str, ends_at: Option<SystemTime>) -> Alert {
    Alert {
        labels: labels(&[("alertname", name), ("severity", "warning"), ("source", "wake-test")]),
        annotations: labels(&[("summary", &format!("{name} is firing")), ("runbook", "https://runbooks.invalid/x")]),
        starts_at: SystemTime::now() - Duration::from_secs(60),
        ends_at,
        generator_url: format!("http://wake.invalid/graph?g0.expr={name}"),
    }
}

fn metric(registry: &Registry, name: &str, alertmanager: Option<&str>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter().map(move |m| (family.get_field_type(), m)))
        .filter(|(_, m)| {
            alertmanager.is_none_or(|url| m.get_label().iter().any(|l| l.name() == "alertmanager" && l.value() == url))
        })
        .map(|(kind, m)| match kind {
            prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
            _ => m.get_gauge().get_value(),
        })
        .next()
        .unwrap_or(f64::NAN)
}

async fn wait_metric(registry: &Registry, name: &str, alertmanager: Option<&str>, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = metric(registry, name, alertmanager);
        if value == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name}{{{alertmanager:?}}} = {value}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn alerts_reach_a_real_alertmanager_despite_an_unreachable_one() {
    logs();
    if !have(BINARY) {
        panic!("{BINARY} is not installed: run scripts/test.sh, which installs Debian's prometheus-alertmanager");
    }
    let am = Alertmanager::start(None).await;
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let mut down = AlertmanagerConfig::new(unreachable.clone());
    down.timeout = Duration::from_secs(2);
    let config = NotifierConfig {
        alertmanagers: vec![down, AlertmanagerConfig::new(format!("http://127.0.0.1:{}/", am.port))],
        ..NotifierConfig::default()
    };
    let registry = Registry::new();
    let notifier = Notifier::new(config, &registry).expect("notifier");
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(Arc::clone(&notifier).run(stop_rx));
    let real_url = format!("http://127.0.0.1:{}/api/v2/alerts", am.port);
    let down_url = format!("{unreachable}/api/v2/alerts");

    // Two firing alerts show up with their labels and annotations.
    let one = alert("WakeTestOne", None);
    let two = alert("WakeTestTwo", Some(SystemTime::now() + Duration::from_secs(3600)));
    notifier.send(vec![one.clone(), two.clone()]);
    let alerts =
        am.alerts_until("both alerts", |a| find(a, "WakeTestOne").is_some() && find(a, "WakeTestTwo").is_some()).await;
    for sent in [&one, &two] {
        let got = find(&alerts, &sent.labels["alertname"]).expect("alert");
        assert_eq!(got["labels"], serde_json::to_value(&sent.labels).expect("json"));
        assert_eq!(got["annotations"], serde_json::to_value(&sent.annotations).expect("json"));
        assert_eq!(got["generatorURL"], sent.generator_url.as_str());
        assert_ne!(got["status"]["state"], "resolved");
    }
    // startsAt kept to the millisecond.
    let sent_start = serde_json::to_value(&one).expect("json")["startsAt"].as_str().expect("startsAt").to_string();
    let got_start = find(&alerts, "WakeTestOne").expect("alert")["startsAt"].as_str().expect("startsAt").to_string();
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("rfc3339").timestamp_millis();
    assert_eq!(parse(&got_start), parse(&sent_start));
    wait_metric(&registry, "wake_server_notifications_sent_total", Some(&real_url), 2.0).await;
    wait_metric(&registry, "wake_server_notifications_errors_total", Some(&down_url), 2.0).await;

    // Resolved: WakeTestOne sent again with endsAt in the past leaves the active alerts, and an
    // alert resolved from the start never shows as active.
    let past = SystemTime::now() - Duration::from_secs(1);
    let resolved_one = Alert { ends_at: Some(past), ..one.clone() };
    let born_resolved = alert("WakeTestBornResolved", Some(past));
    notifier.send(vec![resolved_one, born_resolved]);
    let alerts = am.alerts_until("WakeTestOne resolved", |a| find(a, "WakeTestOne").is_none()).await;
    assert!(find(&alerts, "WakeTestTwo").is_some(), "{alerts:#?}");
    assert!(find(&alerts, "WakeTestBornResolved").is_none(), "{alerts:#?}");
    wait_metric(&registry, "wake_server_notifications_sent_total", Some(&real_url), 4.0).await;

    // The unreachable one failed every batch; none was dropped, since the real one took them.
    wait_metric(&registry, "wake_server_notifications_errors_total", Some(&down_url), 4.0).await;
    assert_eq!(metric(&registry, "wake_server_notifications_errors_total", Some(&real_url)), 0.0);
    assert_eq!(metric(&registry, "wake_server_notifications_sent_total", Some(&down_url)), 0.0);
    assert_eq!(metric(&registry, "wake_server_notifications_dropped_total", None), 0.0);
    assert_eq!(metric(&registry, "wake_server_notifications_alertmanagers_discovered", None), 2.0);
    assert_eq!(metric(&registry, "wake_server_notifications_queue_length", None), 0.0);

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("run returns").expect("run");
}

/// CA, server and client certificates made with the `openssl` command.
struct TestTls {
    dir: tempfile::TempDir,
}

impl TestTls {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn make() -> Option<TestTls> {
        if !have("openssl") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| {
            let output = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("openssl");
            assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=wake-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        for (name, cn, ext) in [
            ("server", SERVER_NAME, format!("subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n")),
            ("client", "wake", "extendedKeyUsage=clientAuth\n".to_string()),
        ] {
            let (key, csr, pem, extfile) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            std::fs::write(dir.path().join(&extfile), format!("basicConstraints=CA:FALSE\n{ext}")).expect("ext");
            run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]].concat());
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ]);
        }
        Some(TestTls { dir })
    }
}

fn test_tls_config(tls: &TestTls) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(tls.path("ca.pem")).expect("ca")).expect("root");
    let chain = vec![CertificateDer::from_pem_file(tls.path("client.pem")).expect("client cert")];
    let key = PrivateKeyDer::from_pem_file(tls.path("client.key")).expect("client key");
    rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("tls")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth")
}

/// Sends one alert through a notifier with only `am` and says (sent, errors) for it.
async fn deliver(am: AlertmanagerConfig, alert: Alert) -> (f64, f64) {
    let url = format!("{}/api/v2/alerts", am.url.trim_end_matches('/'));
    let registry = Registry::new();
    let notifier = Notifier::new(NotifierConfig { alertmanagers: vec![am], ..NotifierConfig::default() }, &registry)
        .expect("notifier");
    notifier.send(vec![alert]);
    // Stopped at once: run sends the queued alert once, then returns.
    let (_stop, stop_rx) = watch::channel(true);
    tokio::time::timeout(Duration::from_secs(20), Arc::clone(&notifier).run(stop_rx)).await.expect("run returns");
    (
        metric(&registry, "wake_server_notifications_sent_total", Some(&url)),
        metric(&registry, "wake_server_notifications_errors_total", Some(&url)),
    )
}

#[tokio::test]
async fn tls_client_certificates_server_name_and_basic_auth_against_a_real_alertmanager() {
    logs();
    if !have(BINARY) {
        panic!("{BINARY} is not installed: run scripts/test.sh, which installs Debian's prometheus-alertmanager");
    }
    let Some(tls) = TestTls::make() else {
        panic!("the openssl command is needed to make the test's certificates");
    };
    let am = Alertmanager::start(Some(&tls)).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    let password_file = secrets.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password");
    let wrong_file = secrets.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-password").expect("password");

    // By IP address, as an Alertmanager often is: the certificate is for alertmanager.test.
    let by_ip = format!("https://127.0.0.1:{}", am.port);
    let good = AlertmanagerConfig {
        timeout: Duration::from_secs(5),
        basic_auth: Some(BasicAuth {
            username: "wake".into(),
            password: None,
            password_file: Some(password_file.clone()),
        }),
        tls: Some(TlsConfig {
            ca_file: Some(tls.path("ca.pem")),
            cert_file: Some(tls.path("client.pem")),
            key_file: Some(tls.path("client.key")),
            insecure_skip_verify: false,
            server_name: Some(SERVER_NAME.into()),
        }),
        ..AlertmanagerConfig::new(by_ip.clone())
    };

    assert_eq!(deliver(good.clone(), alert("WakeTlsGood", None)).await, (1.0, 0.0), "{}", am.log());
    let alerts = am.alerts_until("WakeTlsGood", |a| find(a, "WakeTlsGood").is_some()).await;
    assert_eq!(find(&alerts, "WakeTlsGood").expect("alert")["annotations"]["summary"], "WakeTlsGood is firing");

    // Without server_name the certificate does not match 127.0.0.1.
    let mut no_name = good.clone();
    no_name.tls.as_mut().expect("tls").server_name = None;
    assert_eq!(deliver(no_name, alert("WakeTlsNoName", None)).await, (0.0, 1.0));

    // insecure_skip_verify: no CA, no name, still the client certificate and basic auth.
    let mut insecure = good.clone();
    if let Some(settings) = insecure.tls.as_mut() {
        settings.ca_file = None;
        settings.server_name = None;
        settings.insecure_skip_verify = true;
    }
    assert_eq!(deliver(insecure, alert("WakeTlsInsecure", None)).await, (1.0, 0.0));

    // The wrong password is a 401.
    let mut wrong = good.clone();
    wrong.basic_auth = Some(BasicAuth { username: "wake".into(), password: None, password_file: Some(wrong_file) });
    assert_eq!(deliver(wrong, alert("WakeTlsWrongPassword", None)).await, (0.0, 1.0));

    // No client certificate: Alertmanager requires one.
    let mut anonymous = good.clone();
    if let Some(settings) = anonymous.tls.as_mut() {
        settings.cert_file = None;
        settings.key_file = None;
    }
    assert_eq!(deliver(anonymous, alert("WakeTlsAnonymous", None)).await, (0.0, 1.0));

    let alerts = am.alerts_until("WakeTlsInsecure", |a| find(a, "WakeTlsInsecure").is_some()).await;
    for refused in ["WakeTlsNoName", "WakeTlsWrongPassword", "WakeTlsAnonymous"] {
        assert!(find(&alerts, refused).is_none(), "{refused} got through: {alerts:#?}");
    }
}
