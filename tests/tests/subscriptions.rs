//! Topic-based subscriptions (FHIR R4 Subscriptions Backport) against the real cloud: events synced into the
//! cloud's ingest transaction (as an edge's batch would be), notifications received by an HTTP endpoint in this
//! test, outages of that endpoint and of the cloud, `$status`/`$events`, bad requests and scopes, and a
//! third-party Python EHR client (fhirpy, requests, fhir.resources).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wardwatch::{
    CloudHandle, DevSetup, TestDatabase, cloud_config, dev_setup, https_client, wait_until,
};
use wardwatch_cloud::CloudConfig;
use wardwatch_cloud::config::ApiClient;
use wardwatch_cloud::storage::IngestItem;
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::risk_score::Score;
use wardwatch_proto::v1::{
    Alarm, AlarmKind, AlarmPriority, AlarmState, BedLocation, News2, News2Response, RiskScore,
};

const EDGE: &str = "edge-sub";
const WARD: &str = "7A";
const PATIENT: &str = "SIM000001";
const OTHER: &str = "SIM000002";
/// Scopes of the subscribing EHR.
const SUB_SCOPES: &str = "system/Subscription.crd system/DetectedIssue.r system/Observation.rs";
/// The header the receiver expects on every notification (set through channel.header).
const HOOK_SECRET: &str = "Bearer hook-secret-7";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the receiver got: the Authorization header and the body of each POST.
type Inbox = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// An HTTP endpoint receiving notifications: answers 200 to every POST and keeps the bodies (with the
/// Authorization header). It can be taken down (the port refuses connections) and brought back on the same port.
struct Receiver {
    addr: SocketAddr,
    got: Inbox,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let task = Some(tokio::spawn(Self::serve(listener, got.clone())));
        Ok(Self { addr, got, task })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.addr.port())
    }

    async fn serve(listener: TcpListener, got: Inbox) {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((sock, _)) = listener.accept().await {
            let got = got.clone();
            conns.spawn(async move {
                let _ = Self::connection(sock, got).await;
            });
        }
    }

    async fn connection(sock: tokio::net::TcpStream, got: Inbox) -> Result<()> {
        let mut r = BufReader::new(sock);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let (mut len, mut auth) = (0usize, None);
            loop {
                let mut h = String::new();
                r.read_line(&mut h).await?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((n, v)) = h.split_once(':') {
                    match n.trim().to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse()?,
                        "authorization" => auth = Some(v.trim().to_string()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await?;
            if line.starts_with("POST ") {
                let v: Value = serde_json::from_slice(&body)?;
                got.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((auth, v));
            }
            r.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await?;
        }
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn up(&mut self) -> Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.task = Some(tokio::spawn(Self::serve(listener, self.got.clone())));
        Ok(())
    }

    fn bundles(&self) -> Vec<(Option<String>, Value)> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The event numbers of every event-notification received, in arrival order.
    fn event_numbers(&self) -> Vec<u64> {
        self.bundles()
            .iter()
            .filter(|(_, b)| status_param(b, "type") == Some("event-notification".into()))
            .flat_map(|(_, b)| event_numbers(b))
            .collect()
    }
}

/// A parameter of the SubscriptionStatus (first entry) of a notification Bundle, as text.
fn status_param(bundle: &Value, name: &str) -> Option<String> {
    let params = bundle["entry"][0]["resource"]["parameter"].as_array()?;
    let p = params.iter().find(|p| p["name"] == name)?;
    ["valueCode", "valueString", "valueCanonical"]
        .iter()
        .find_map(|k| p[*k].as_str().map(ToString::to_string))
}

/// The event numbers reported by a notification Bundle's status.
fn event_numbers(bundle: &Value) -> Vec<u64> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["name"] == "notification-event")
                .filter_map(|p| {
                    p["part"]
                        .as_array()?
                        .iter()
                        .find(|x| x["name"] == "event-number")?["valueString"]
                        .as_str()?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Fixture {
    dir: tempfile::TempDir,
    setup: DevSetup,
    config: CloudConfig,
    cloud: Option<CloudHandle>,
    http: reqwest::Client,
    /// Static development token of the subscribing client `ehr-sub`.
    token: String,
    next_seq: u64,
}

impl Fixture {
    async fn start(database_url: Option<String>) -> Result<Self> {
        wardwatch::install_crypto();
        let dir = tempfile::tempdir()?;
        let setup = dev_setup(dir.path(), &[EDGE])?;
        let mut config = cloud_config(
            &setup,
            &dir.path().join("cloud"),
            database_url,
            "127.0.0.1:0".parse()?,
            wardwatch::free_port()?,
            &[(EDGE, &[WARD])],
        )?;
        let token = format!(
            "sub-token-{}",
            sha256_hex(&dir.path().display().to_string())
        );
        config.api_clients.push(ApiClient {
            client_id: "ehr-sub".into(),
            scopes: SUB_SCOPES.split(' ').map(ToString::to_string).collect(),
            jwks: None,
            jwks_path: None,
            token_sha256: Some(sha256_hex(&token)),
        });
        config.subscriptions.allow_loopback_http = true;
        config.subscriptions.poll_interval_ms = 50;
        config.subscriptions.retry_initial_ms = 100;
        config.subscriptions.retry_max_ms = 800;
        config.subscriptions.min_heartbeat_secs = 1;
        let cloud = CloudHandle::start(config.clone()).await?;
        let http = https_client(&setup.pki.ca_cert)?;
        Ok(Self {
            dir,
            setup,
            config,
            cloud: Some(cloud),
            http,
            token,
            next_seq: 1,
        })
    }

    fn cloud(&self) -> Result<&CloudHandle> {
        self.cloud.as_ref().context("cloud is stopped")
    }

    fn base(&self) -> Result<String> {
        Ok(self.cloud()?.fhir_base.clone())
    }

    async fn restart(&mut self) -> Result<()> {
        if let Some(c) = self.cloud.take() {
            c.stop().await;
        }
        self.cloud = Some(CloudHandle::start(self.config.clone()).await?);
        Ok(())
    }

    /// Stores `payloads` as the next sequences of the edge, through the cloud's ingest transaction.
    async fn sync(&mut self, payloads: Vec<Payload>) -> Result<()> {
        let items: Vec<IngestItem> = payloads
            .into_iter()
            .map(|p| {
                let seq = self.next_seq;
                self.next_seq += 1;
                IngestItem {
                    sequence: seq,
                    idempotency_key: format!("k-{seq}"),
                    outcome: Ok(p),
                }
            })
            .collect();
        let out = self.cloud()?.store.ingest(EDGE, &items).await?;
        assert_eq!(out.stored as usize, items.len());
        Ok(())
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut r = self.http.request(method, format!("{}{path}", self.base()?));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let resp = r.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("{path}: {text}"))?
        };
        Ok((status, v))
    }

    async fn create(&self, body: &Value) -> Result<String> {
        let (status, v) = self
            .request(
                reqwest::Method::POST,
                "/Subscription",
                Some(&self.token),
                Some(body),
            )
            .await?;
        if status != StatusCode::CREATED {
            bail!("creating a subscription: {status} {v}");
        }
        assert_eq!(v["status"], "requested");
        v["id"].as_str().map(ToString::to_string).context("no id")
    }

    async fn subscription(&self, id: &str) -> Result<Value> {
        let (status, v) = self
            .request(
                reqwest::Method::GET,
                &format!("/Subscription/{id}"),
                Some(&self.token),
                None,
            )
            .await?;
        assert_eq!(status, StatusCode::OK, "{v}");
        Ok(v)
    }

    async fn wait_status(&self, id: &str, want: &str) -> Result<()> {
        wait_until(
            Duration::from_secs(20),
            &format!("subscription {want}"),
            || async { Ok(self.subscription(id).await?["status"] == want) },
        )
        .await
    }
}

/// A backport Subscription on `topic` (an id) posting to `endpoint`.
fn subscription_body(
    base: &str,
    topic: &str,
    endpoint: &str,
    filters: &[&str],
    content: &str,
) -> Value {
    let mut v = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Wardwatch subscription test",
        "criteria": format!("{base}/SubscriptionTopic/{topic}"),
        "channel": {
            "extension": [
                {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout", "valueUnsignedInt": 5},
                {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count", "valuePositiveInt": 10}
            ],
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content", "valueCode": content}]},
            "header": [format!("Authorization: {HOOK_SECRET}")]
        }
    });
    if !filters.is_empty() {
        v["_criteria"] = json!({"extension": filters.iter().map(|f| json!({
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
            "valueString": f
        })).collect::<Vec<_>>()});
    }
    v
}

fn alarm(
    n: u32,
    patient: &str,
    kind: AlarmKind,
    priority: AlarmPriority,
    state: AlarmState,
) -> Payload {
    Payload::Alarm(Alarm {
        alarm_id: format!("7A-alarm-{n}"),
        kind: kind as i32,
        priority: priority as i32,
        state: state as i32,
        patient_id: patient.into(),
        location: Some(BedLocation {
            ward: WARD.into(),
            bed: "1".into(),
        }),
        device_id: "mon-7A-1".into(),
        message: format!("test alarm {n}"),
        changed_at_unix_ms: wardwatch_proto::now_unix_ms(),
        changed_by: "system".into(),
    })
}

fn high_alarm(n: u32, patient: &str) -> Payload {
    alarm(
        n,
        patient,
        AlarmKind::VitalThreshold,
        AlarmPriority::High,
        AlarmState::Raised,
    )
}

fn news2(patient: &str, total: u32, response: News2Response) -> Payload {
    Payload::Risk(RiskScore {
        patient_id: patient.into(),
        location: Some(BedLocation {
            ward: WARD.into(),
            bed: "2".into(),
        }),
        computed_at_unix_ms: wardwatch_proto::now_unix_ms(),
        score: Some(Score::News2(News2 {
            total,
            response: response as i32,
            ..Default::default()
        })),
        derived_from: Vec::new(),
    })
}

async fn wait_events(rx: &Receiver, want: &[u64]) -> Result<()> {
    wait_until(
        Duration::from_secs(20),
        &format!("events {want:?} delivered"),
        || async {
            let mut got = rx.event_numbers();
            got.dedup();
            Ok(want.iter().all(|n| got.contains(n)))
        },
    )
    .await
}

async fn delivery_survives_endpoint_and_cloud_outages(database_url: Option<String>) -> Result<()> {
    let mut f = Fixture::start(database_url).await?;
    let mut rx = Receiver::start().await?;
    let base = f.base()?;
    let id = f
        .create(&subscription_body(
            &base,
            "high-priority-alarm",
            &rx.url(),
            &[&format!("DetectedIssue?patient={PATIENT}")],
            "full-resource",
        ))
        .await?;

    // Handshake, then active.
    wait_until(Duration::from_secs(20), "handshake", || async {
        Ok(rx
            .bundles()
            .iter()
            .any(|(_, b)| status_param(b, "type").as_deref() == Some("handshake")))
    })
    .await?;
    f.wait_status(&id, "active").await?;
    let (auth, hs) = rx.bundles().remove(0);
    assert_eq!(auth.as_deref(), Some(HOOK_SECRET), "channel.header is sent");
    assert_eq!(hs["type"], "history");
    assert_eq!(hs["entry"][0]["resource"]["resourceType"], "Parameters");
    assert_eq!(
        status_param(&hs, "events-since-subscription-start").as_deref(),
        Some("0")
    );
    assert_eq!(
        status_param(&hs, "topic"),
        Some(format!("{base}/SubscriptionTopic/high-priority-alarm"))
    );

    // A high alarm of the patient: event 1. Another patient's high alarm and a medium alarm: nothing.
    f.sync(vec![
        high_alarm(1, PATIENT),
        high_alarm(2, OTHER),
        alarm(
            3,
            PATIENT,
            AlarmKind::VitalThreshold,
            AlarmPriority::Medium,
            AlarmState::Raised,
        ),
    ])
    .await?;
    wait_events(&rx, &[1]).await?;
    let (auth, n1) = rx
        .bundles()
        .into_iter()
        .find(|(_, b)| event_numbers(b) == vec![1])
        .context("notification 1")?;
    assert_eq!(auth.as_deref(), Some(HOOK_SECRET));
    assert_eq!(
        status_param(&n1, "events-since-subscription-start").as_deref(),
        Some("1")
    );
    assert_eq!(
        n1["entry"][1]["fullUrl"],
        format!("{base}/DetectedIssue/7A-alarm-1")
    );
    assert_eq!(n1["entry"][1]["request"]["url"], "DetectedIssue/7A-alarm-1");
    let focus = &n1["entry"][1]["resource"];
    assert_eq!(
        focus["resourceType"], "DetectedIssue",
        "full-resource: {n1}"
    );
    assert_eq!(focus["id"], "7A-alarm-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rx.event_numbers(),
        vec![1],
        "the other patient's and the medium alarm are not sent"
    );

    // The endpoint goes down: two more alarms are retried (status error), then delivered once it is back.
    rx.down().await;
    f.sync(vec![high_alarm(4, PATIENT), high_alarm(5, PATIENT)])
        .await?;
    f.wait_status(&id, "error").await?;
    let sub = f.subscription(&id).await?;
    assert!(
        sub["error"]
            .as_str()
            .is_some_and(|e| e.contains("no response")),
        "{sub}"
    );
    let (st, status) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}/$status"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK, "{status}");
    let params = &status["entry"][0]["resource"];
    let status_bundle = json!({"entry": [{"resource": params}]});
    assert_eq!(
        status_param(&status_bundle, "status").as_deref(),
        Some("error")
    );
    assert_eq!(
        status_param(&status_bundle, "type").as_deref(),
        Some("query-status")
    );
    assert_eq!(
        status_param(&status_bundle, "events-since-subscription-start").as_deref(),
        Some("3")
    );
    // Keep it down across several retries (backoff 100 ms doubling to 800 ms).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(rx.event_numbers(), vec![1]);
    rx.up().await?;
    wait_events(&rx, &[2, 3]).await?;
    f.wait_status(&id, "active").await?;

    // Down again, one more alarm, and the cloud restarts: nothing is lost.
    rx.down().await;
    f.sync(vec![high_alarm(6, PATIENT)]).await?;
    f.restart().await?;
    rx.up().await?;
    wait_events(&rx, &[4]).await?;
    let numbers = rx.event_numbers();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(numbers, sorted, "events arrive in order: {numbers:?}");
    sorted.dedup();
    assert_eq!(
        sorted,
        vec![1, 2, 3, 4],
        "every event, none invented: {numbers:?}"
    );

    // $events returns exactly the asked range, with the focus resources.
    let (st, ev) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}/$events?eventsSinceNumber=2&eventsUntilNumber=3"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK, "{ev}");
    assert_eq!(ev["type"], "history");
    assert_eq!(event_numbers(&ev), vec![2, 3]);
    assert_eq!(status_param(&ev, "type").as_deref(), Some("query-event"));
    let urls: Vec<&str> = ev["entry"].as_array().map_or(Vec::new(), |e| {
        e.iter()
            .skip(1)
            .filter_map(|x| x["fullUrl"].as_str())
            .collect()
    });
    assert_eq!(
        urls,
        vec![
            format!("{base}/DetectedIssue/7A-alarm-4"),
            format!("{base}/DetectedIssue/7A-alarm-5")
        ]
    );
    let (st, oo) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}/$events?eventsSinceNumber=3&eventsUntilNumber=2"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(oo["resourceType"], "OperationOutcome");

    // Delivered events past retention are pruned; the numbering goes on.
    let store = f.cloud()?.store.clone();
    wait_until(
        Duration::from_secs(20),
        "delivery of 4 recorded",
        || async {
            Ok(store
                .subscription(&id)
                .await?
                .is_some_and(|s| s.delivered_through == 4))
        },
    )
    .await?;
    let pruned = f
        .cloud()?
        .store
        .prune_subscription_events(wardwatch_proto::now_unix_ms() + 1)
        .await?;
    assert_eq!(pruned, 4, "the four delivered events");
    let (st, ev) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}/$events"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK);
    assert!(event_numbers(&ev).is_empty(), "{ev}");
    assert_eq!(
        status_param(&ev, "events-since-subscription-start").as_deref(),
        Some("4")
    );
    // Delete: gone, no more deliveries.
    let (st, _) = f
        .request(
            reqwest::Method::DELETE,
            &format!("/Subscription/{id}"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::NOT_FOUND);
    f.sync(vec![high_alarm(7, PATIENT)]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rx.event_numbers().contains(&5));
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    drop(f.dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_endpoint_and_cloud_outages_sqlite() -> Result<()> {
    delivery_survives_endpoint_and_cloud_outages(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_endpoint_and_cloud_outages_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("subscriptions").await? else {
        return Ok(());
    };
    let r = delivery_survives_endpoint_and_cloud_outages(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}

async fn news2_and_infusion_topics_fire_on_their_events_only(
    database_url: Option<String>,
) -> Result<()> {
    let mut f = Fixture::start(database_url).await?;
    let rx = Receiver::start().await?;
    let base = f.base()?;
    let any_rise = f
        .create(&subscription_body(
            &base,
            "news2-response",
            &rx.url(),
            &[],
            "id-only",
        ))
        .await?;
    let high_only = f
        .create(&subscription_body(
            &base,
            "news2-response",
            &rx.url(),
            &[&format!("Observation?patient={PATIENT}&level=high")],
            "id-only",
        ))
        .await?;
    let infusion = f
        .create(&subscription_body(
            &base,
            "infusion-event",
            &rx.url(),
            &["DetectedIssue?event=near-completion"],
            "empty",
        ))
        .await?;
    // seq 1: low (no event); 2: medium (any_rise 1); 3: medium again (none); 4: high (any_rise 2, high_only 1);
    // 5: low (none, but resets); 6: medium (any_rise 3).
    f.sync(vec![
        news2(PATIENT, 2, News2Response::Low),
        news2(PATIENT, 5, News2Response::Medium),
        news2(PATIENT, 6, News2Response::Medium),
        news2(PATIENT, 8, News2Response::High),
        news2(PATIENT, 1, News2Response::Low),
        news2(PATIENT, 3, News2Response::LowMedium),
        alarm(
            1,
            PATIENT,
            AlarmKind::InfusionNearCompletion,
            AlarmPriority::Low,
            AlarmState::Raised,
        ),
        alarm(
            2,
            PATIENT,
            AlarmKind::InfusionStopped,
            AlarmPriority::High,
            AlarmState::Raised,
        ),
        alarm(
            1,
            PATIENT,
            AlarmKind::InfusionNearCompletion,
            AlarmPriority::Low,
            AlarmState::Cleared,
        ),
    ])
    .await?;
    let events = |id: String| {
        let f = &f;
        async move {
            let (st, ev) = f
                .request(
                    reqwest::Method::GET,
                    &format!("/Subscription/{id}/$events"),
                    Some(&f.token),
                    None,
                )
                .await?;
            assert_eq!(st, StatusCode::OK, "{ev}");
            Ok::<_, anyhow::Error>(ev)
        }
    };
    let ev = events(any_rise.clone()).await?;
    assert_eq!(event_numbers(&ev), vec![1, 2, 3]);
    let focus: Vec<&str> = ev["entry"].as_array().map_or(Vec::new(), |e| {
        e.iter()
            .skip(1)
            .filter_map(|x| x["fullUrl"].as_str())
            .collect()
    });
    assert_eq!(
        focus,
        vec![
            format!("{base}/Observation/{EDGE}.2"),
            format!("{base}/Observation/{EDGE}.4"),
            format!("{base}/Observation/{EDGE}.6")
        ]
    );
    // The same events with the NEWS2 Observations themselves.
    let (st, full) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{any_rise}/$events?eventsSinceNumber=2&eventsUntilNumber=2&content=full-resource"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK, "{full}");
    assert_eq!(event_numbers(&full), vec![2]);
    assert_eq!(
        full["entry"][1]["resource"]["resourceType"], "Observation",
        "{full}"
    );
    assert_eq!(full["entry"][1]["resource"]["id"], format!("{EDGE}.4"));
    assert_eq!(
        full["entry"][1]["resource"]["valueInteger"], 8,
        "the NEWS2 total"
    );
    let ev = events(high_only).await?;
    assert_eq!(event_numbers(&ev), vec![1]);
    assert_eq!(
        ev["entry"][1]["fullUrl"],
        format!("{base}/Observation/{EDGE}.4")
    );
    let ev = events(infusion).await?;
    assert_eq!(
        event_numbers(&ev),
        vec![1],
        "only the near-completion alarm, once"
    );
    assert_eq!(
        ev["entry"].as_array().map(Vec::len),
        Some(1),
        "empty content: no focus entries"
    );
    // Two batches stored concurrently (as the sync pipeline does), each with a high score of another patient:
    // that patient's rise fires once.
    let batch = |seq: u64| IngestItem {
        sequence: seq,
        idempotency_key: format!("k-{seq}"),
        outcome: Ok(news2(OTHER, 9, News2Response::High)),
    };
    let (a, b) = (vec![batch(100)], vec![batch(101)]);
    let store = f.cloud()?.store.clone();
    let (ra, rb) = tokio::join!(store.ingest(EDGE, &a), store.ingest(EDGE, &b));
    assert_eq!(ra?.stored + rb?.stored, 2);
    let ev = events(any_rise.clone()).await?;
    assert_eq!(
        event_numbers(&ev),
        vec![1, 2, 3, 4],
        "one event for the concurrent rise"
    );
    // Notifications reach the endpoint too.
    wait_until(Duration::from_secs(20), "NEWS2 notifications", || async {
        Ok(rx.event_numbers().contains(&4))
    })
    .await?;
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_and_scopes_are_refused() -> Result<()> {
    let mut f = Fixture::start(None).await?;
    let base = f.base()?;
    let good = subscription_body(
        &base,
        "high-priority-alarm",
        "http://127.0.0.1:9/hook",
        &[],
        "id-only",
    );
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let with = |path: &[&str], v: Value| {
        let mut b = good.clone();
        let mut cur = &mut b;
        for (i, p) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cur[*p] = v.clone();
            } else {
                cur = &mut cur[*p];
            }
        }
        b
    };
    cases.push((
        "unknown topic",
        with(
            &["criteria"],
            json!(format!("{base}/SubscriptionTopic/nope")),
        ),
    ));
    cases.push(("status active", with(&["status"], json!("active"))));
    cases.push((
        "not https",
        with(&["channel", "endpoint"], json!("http://ehr.example/hook")),
    ));
    cases.push((
        "metadata address",
        with(&["channel", "endpoint"], json!("https://169.254.169.254/x")),
    ));
    cases.push(("websocket", with(&["channel", "type"], json!("websocket"))));
    cases.push(("bad content", with(&["channel", "_payload"], json!({"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content", "valueCode": "everything"}]}))));
    cases.push(("max-count 0", with(&["channel", "extension"], json!([{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count", "valueUnsignedInt": 0}]))));
    cases.push((
        "host header",
        with(&["channel", "header"], json!(["Host: evil.example"])),
    ));
    cases.push(("no reason", {
        let mut b = good.clone();
        b.as_object_mut().map(|o| o.remove("reason"));
        b
    }));
    cases.push(("unknown filter", with(&["_criteria"], json!({"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria", "valueString": "DetectedIssue?colour=red"}]}))));
    cases.push(("bad patient", with(&["_criteria"], json!({"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria", "valueString": "DetectedIssue?patient=a%20b"}]}))));
    cases.push(("past end", with(&["end"], json!("2001-01-01T00:00:00Z"))));
    cases.push(("not a Subscription", json!({"resourceType": "Patient"})));
    for (what, body) in &cases {
        let (st, v) = f
            .request(
                reqwest::Method::POST,
                "/Subscription",
                Some(&f.token),
                Some(body),
            )
            .await?;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["resourceType"], "OperationOutcome", "{what}");
        assert!(
            v["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}"
        );
    }
    let resp = f
        .http
        .post(format!("{base}/Subscription"))
        .bearer_auth(&f.token)
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Scopes: the development client may read Observations but not create subscriptions.
    let (st, v) = f
        .request(
            reqwest::Method::POST,
            "/Subscription",
            Some(&f.setup.token),
            Some(&good),
        )
        .await?;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["issue"][0]["code"], "forbidden");
    let (st, _) = f
        .request(reqwest::Method::POST, "/Subscription", None, Some(&good))
        .await?;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Another client cannot see or delete this client's subscription.
    let id = f.create(&good).await?;
    for m in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (st, _) = f
            .request(
                m.clone(),
                &format!("/Subscription/{id}"),
                Some(&f.setup.token),
                None,
            )
            .await?;
        assert_eq!(st, StatusCode::FORBIDDEN, "{m}: no Subscription scope");
    }
    let (st, v) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["channel"]["header"][0], "Authorization: ***",
        "header values are not shown back"
    );
    // Topics are discoverable.
    let (st, topics) = f
        .request(
            reqwest::Method::GET,
            "/SubscriptionTopic",
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK);
    let urls: Vec<&str> = topics["entry"].as_array().map_or(Vec::new(), |e| {
        e.iter()
            .filter_map(|x| x["resource"]["url"].as_str())
            .collect()
    });
    assert_eq!(urls.len(), 3, "{topics}");
    assert!(urls.contains(&format!("{base}/SubscriptionTopic/news2-response").as_str()));
    // Refusals and creations are audited.
    assert!(f.cloud()?.store.audit_count("ehr-sub").await? >= i64::try_from(cases.len())?);
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    Ok(())
}

/// A third-party EHR (fhirpy + requests + PyJWT, fhir.resources validating every resource it receives) gets a
/// SMART token, subscribes, acknowledges notifications on its own HTTPS server (a certificate of the hospital CA,
/// so this also checks the cloud's TLS client), goes down, and catches up with `$events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ehr_client_receives_and_catches_up() -> Result<()> {
    if !wardwatch::python_modules_available(
        &[
            "fhirpy",
            "jwt",
            "requests",
            "fhir.resources.R4B.subscriptiontopic",
        ],
        "subscription client test (fhirpy + PyJWT + fhir.resources)",
    )? {
        return Ok(());
    }
    let mut f = Fixture::start(None).await?;
    // Restart with a SMART client registered by its public key (the Python EHR signs with the private key).
    let key = f.dir.path().join("pki/ehr-py.key");
    let signer = wardwatch_cloud::auth::client::dev_client_key("ehr-py", "py-1", &key)?;
    f.config.api_clients.push(ApiClient {
        client_id: "ehr-py".into(),
        scopes: vec![
            "system/Subscription.crd".into(),
            "system/DetectedIssue.r".into(),
        ],
        jwks: Some(serde_json::to_string(&signer.public_jwks())?),
        jwks_path: None,
        token_sha256: None,
    });
    f.restart().await?;
    let cfg = json!({
        "fhir_base": f.base()?,
        "ca_cert": f.setup.pki.ca_cert,
        "client": {"client_id": "ehr-py", "private_key": key, "alg": "ES384", "kid": "py-1"},
        "patient": PATIENT,
        "endpoint_cert": f.setup.pki.cloud_cert,
        "endpoint_key": f.setup.pki.cloud_key,
    });
    let cfg_path = f.dir.path().join("subscription-client.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    let mut child = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/subscription_client.py"
        ))
        .arg(&cfg_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running tests/python/subscription_client.py")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next_line = async |want: &str| -> Result<String> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .with_context(|| format!("waiting for {want:?} from the Python client"))??
            .with_context(|| format!("the Python client ended before {want:?}"))?;
        eprintln!("python: {line}");
        if !line.starts_with(want) {
            bail!("expected {want:?} from the Python client, got {line:?}");
        }
        Ok(line)
    };
    let ready = next_line("READY").await?;
    let sid = ready.trim_start_matches("READY ").to_string();
    f.sync(vec![high_alarm(1, PATIENT), high_alarm(2, OTHER)])
        .await?;
    stdin.write_all(b"SENT 1\n").await?;
    next_line("GOT 1 DOWN").await?;
    f.sync(vec![high_alarm(3, PATIENT), high_alarm(4, PATIENT)])
        .await?;
    // Wait until the cloud has tried and failed at least once: the EHR was really down.
    let store = f.cloud()?.store.clone();
    wait_until(Duration::from_secs(20), "a failed delivery", || async {
        Ok(store
            .subscription(&sid)
            .await?
            .is_some_and(|s| s.status == "error" && s.failures > 0))
    })
    .await?;
    stdin.write_all(b"SENT 3\n").await?;
    next_line("OK").await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "the Python client failed");
    assert!(
        store.subscription(&sid).await?.is_none(),
        "the client deleted its subscription"
    );
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news2_and_infusion_topics_fire_on_their_events_only_sqlite() -> Result<()> {
    news2_and_infusion_topics_fire_on_their_events_only(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news2_and_infusion_topics_fire_on_their_events_only_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("subscriptions_news2").await? else {
        return Ok(());
    };
    let r = news2_and_infusion_topics_fire_on_their_events_only(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}

/// A quiet subscription with a heartbeat period gets heartbeats, and they stop once it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_while_nothing_happens() -> Result<()> {
    let mut f = Fixture::start(None).await?;
    let rx = Receiver::start().await?;
    let base = f.base()?;
    let mut body = subscription_body(&base, "infusion-event", &rx.url(), &[], "empty");
    if let Some(ext) = body["channel"]["extension"].as_array_mut() {
        ext.push(json!({"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period", "valueUnsignedInt": 1}));
    }
    let id = f.create(&body).await?;
    let heartbeats = || {
        rx.bundles()
            .into_iter()
            .filter(|(_, b)| status_param(b, "type").as_deref() == Some("heartbeat"))
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(20), "two heartbeats", || async {
        Ok(heartbeats().len() >= 2)
    })
    .await?;
    for (auth, b) in heartbeats() {
        assert_eq!(auth.as_deref(), Some(HOOK_SECRET));
        assert_eq!(
            status_param(&b, "events-since-subscription-start").as_deref(),
            Some("0")
        );
        assert_eq!(
            b["entry"].as_array().map(Vec::len),
            Some(1),
            "a heartbeat carries no events"
        );
    }
    let sub = f.subscription(&id).await?;
    assert_eq!(sub["status"], "active");
    let (st, _) = f
        .request(
            reqwest::Method::DELETE,
            &format!("/Subscription/{id}"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = rx.bundles().len();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(rx.bundles().len(), n, "nothing is sent after the delete");
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    Ok(())
}

/// The whole path: an alarm accepted by a real edge node, synced over mutual-TLS gRPC, validated and stored by
/// the cloud, reaches the subscriber with the DetectedIssue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_from_a_real_edge_reaches_the_subscriber() -> Result<()> {
    let mut f = Fixture::start(None).await?;
    let rx = Receiver::start().await?;
    let base = f.base()?;
    f.create(&subscription_body(
        &base,
        "high-priority-alarm",
        &rx.url(),
        &[&format!("DetectedIssue?patient={PATIENT}&ward={WARD}")],
        "full-resource",
    ))
    .await?;
    let edge = wardwatch::EdgeHandle::start(wardwatch::edge_config(
        &f.setup,
        &f.dir.path().join("edge"),
        EDGE,
        &[WARD],
        f.cloud()?.sync_addr,
    )?)
    .await?;
    let report = edge
        .node
        .accept(vec![wardwatch_edge::node::Incoming {
            idempotency_key: "edge-alarm-1".into(),
            payload: high_alarm(11, PATIENT),
        }])
        .await?;
    assert_eq!(report.accepted, 1, "{report:?}");
    edge.wait_drained(Duration::from_secs(20)).await?;
    wait_events(&rx, &[1]).await?;
    let (_, n) = rx
        .bundles()
        .into_iter()
        .find(|(_, b)| event_numbers(b) == vec![1])
        .context("notification")?;
    assert_eq!(n["entry"][1]["resource"]["resourceType"], "DetectedIssue");
    assert_eq!(n["entry"][1]["resource"]["id"], "7A-alarm-11");
    edge.stop().await;
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    Ok(())
}

/// A subscription whose `end` passes is turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_at_its_end_time() -> Result<()> {
    let mut f = Fixture::start(None).await?;
    let rx = Receiver::start().await?;
    let base = f.base()?;
    let mut body = subscription_body(&base, "high-priority-alarm", &rx.url(), &[], "id-only");
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    body["end"] = json!(end.format(&time::format_description::well_known::Rfc3339)?);
    let id = f.create(&body).await?;
    f.wait_status(&id, "active").await?;
    f.wait_status(&id, "off").await?;
    let sub = f.subscription(&id).await?;
    assert!(
        sub["error"].as_str().is_some_and(|e| e.contains("end")),
        "{sub}"
    );
    // Nothing is recorded or sent for it any more.
    f.sync(vec![high_alarm(1, PATIENT)]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.event_numbers().is_empty());
    let (st, status) = f
        .request(
            reqwest::Method::GET,
            &format!("/Subscription/{id}/$status"),
            Some(&f.token),
            None,
        )
        .await?;
    assert_eq!(st, StatusCode::OK);
    let s = json!({"entry": [{"resource": status["entry"][0]["resource"]}]});
    assert_eq!(status_param(&s, "status").as_deref(), Some("off"));
    assert_eq!(
        status_param(&s, "events-since-subscription-start").as_deref(),
        Some("0")
    );
    if let Some(c) = f.cloud.take() {
        c.stop().await;
    }
    Ok(())
}

/// The `wardwatch cloud` process is SIGKILLed while three events wait for an endpoint that is down; after a
/// restart on the same database every event is delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_killed_with_undelivered_events_loses_none() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let (sync, api) = (wardwatch::free_port()?, wardwatch::free_port()?);
    let mut cfg = cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        sync,
        api,
        &[(EDGE, &[WARD])],
    )?;
    let token = "kill-test-token";
    cfg.api_clients.push(ApiClient {
        client_id: "ehr-sub".into(),
        scopes: SUB_SCOPES.split(' ').map(ToString::to_string).collect(),
        jwks: None,
        jwks_path: None,
        token_sha256: Some(sha256_hex(token)),
    });
    cfg.subscriptions.allow_loopback_http = true;
    cfg.subscriptions.poll_interval_ms = 50;
    cfg.subscriptions.retry_initial_ms = 100;
    cfg.subscriptions.retry_max_ms = 500;
    let cfg_path = dir.path().join("cloud.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wardwatch"))
            .args(["cloud", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning wardwatch cloud")
    };
    let listening = || async {
        wait_until(Duration::from_secs(30), "cloud to listen", || async {
            Ok(tokio::net::TcpStream::connect(api).await.is_ok())
        })
        .await
    };
    let mut cloud = spawn()?;
    listening().await?;
    let base = format!("https://localhost:{}/fhir", api.port());
    let http = https_client(&setup.pki.ca_cert)?;
    let mut rx = Receiver::start().await?;
    let resp = http
        .post(format!("{base}/Subscription"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(
            subscription_body(&base, "high-priority-alarm", &rx.url(), &[], "id-only").to_string(),
        )
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await?["id"]
        .as_str()
        .context("id")?
        .to_string();
    let store = wardwatch_cloud::storage::Store::connect(&cfg.database_url()).await?;
    wait_until(Duration::from_secs(20), "handshake", || async {
        Ok(store
            .subscription(&id)
            .await?
            .is_some_and(|s| s.handshake_done))
    })
    .await?;

    rx.down().await;
    let edge = wardwatch::EdgeHandle::start(wardwatch::edge_config(
        &setup,
        &dir.path().join("edge"),
        EDGE,
        &[WARD],
        sync,
    )?)
    .await?;
    let alarms = (1..=3)
        .map(|n| wardwatch_edge::node::Incoming {
            idempotency_key: format!("kill-{n}"),
            payload: high_alarm(n, PATIENT),
        })
        .collect();
    edge.node.accept(alarms).await?;
    wait_until(Duration::from_secs(20), "three events recorded", || async {
        Ok(store
            .subscription(&id)
            .await?
            .is_some_and(|s| s.events_since_start == 3 && s.failures > 0))
    })
    .await?;
    cloud.kill().await?; // SIGKILL
    rx.up().await?;
    let mut cloud = spawn()?;
    listening().await?;
    wait_events(&rx, &[1, 2, 3]).await?;
    let numbers = rx.event_numbers();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(numbers, sorted, "in order: {numbers:?}");
    sorted.dedup();
    assert_eq!(sorted, vec![1, 2, 3]);
    edge.stop().await;
    cloud.kill().await?;
    store.close().await;
    Ok(())
}
