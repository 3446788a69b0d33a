//! Nurse station sign-in over real HTTP(S), with the real edge and cloud: patient data only with a session,
//! wrong passwords refused and locked out, viewers cannot act, CSRF-less or foreign-origin posts refused, a
//! `user` field in a body refused, the acknowledgement and the SpO2-scale decision reach the cloud naming the
//! signed-in user, sign-out and idle/lifetime expiry end the session, TLS with a `Secure` cookie, and configs
//! that would serve plain HTTP off loopback refused before anything is bound.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use wardwatch::{
    CloudHandle, EdgeHandle, StationSession, cloud_config, dev_setup, edge_config, station_user,
    wait_until,
};
use wardwatch_cloud::storage::EventQuery;
use wardwatch_edge::node::Incoming;
use wardwatch_edge::station::{Role, StationConfig, StationTlsConfig};
use wardwatch_proto::v1::{AlarmState, BedLocation, VitalSign, edge_event::Payload};

const NURSE: (&str, &str) = ("n.adams", "nurse-password-1");
const VIEWER: (&str, &str) = ("v.berg", "viewer-password-1");
const LOCKED: (&str, &str) = ("n.locked", "locked-password-1");
const PATIENT: &str = "MRN-ST-1";

fn users() -> Result<Vec<wardwatch_edge::station::StationUser>> {
    Ok(vec![
        station_user(NURSE.0, "Nora Adams, RN", Role::Nurse, NURSE.1)?,
        station_user(VIEWER.0, "Vic Berg", Role::Viewer, VIEWER.1)?,
        station_user(LOCKED.0, "Lee Locked, RN", Role::Nurse, LOCKED.1)?,
    ])
}

fn plain_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn sign_in_status(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> Result<StatusCode> {
    Ok(c.post(format!("{base}api/sign-in"))
        .json(&serde_json::json!({"user": user, "password": password}))
        .send()
        .await?
        .status())
}

/// A desaturation at bed 1: an immediate high-priority alarm.
fn desaturation(now: i64) -> Incoming {
    Incoming {
        idempotency_key: format!("test-desaturation-{now}"),
        payload: Payload::Vital(VitalSign {
            patient_id: PATIENT.into(),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: "1".into(),
            }),
            device_id: "mon-7A-1".into(),
            metric_mdc: wardwatch_proto::metrics::MDC_PULS_OXIM_SAT_O2,
            value: 80.0,
            unit_ucum: "%".into(),
            measured_at_unix_ms: now,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_sign_in_roles_csrf_and_synced_actions() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &["edge-7a"])?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        any,
        any,
        &[("edge-7a", &["7A"])],
    )?)
    .await?;
    let mut cfg = edge_config(
        &setup,
        &dir.path().join("edge"),
        "edge-7a",
        &["7A"],
        cloud.sync_addr,
    )?;
    let mut station = StationConfig::new(any, users()?);
    station.max_failed_logins = 3;
    station.lockout_secs = 60;
    cfg.station = Some(station);
    let edge = EdgeHandle::start(cfg).await?;
    let base = format!(
        "http://{}/",
        edge.node.station_addr().context("station address")?
    );
    let c = plain_client()?;
    let stats = edge.node.station_stats().context("station stats")?.clone();

    edge.node
        .accept(vec![desaturation(wardwatch_proto::now_unix_ms())])
        .await?;

    // Public: the page (no data in it) and health (no patient data).
    assert_eq!(c.get(&base).send().await?.status(), StatusCode::OK);
    let health = c.get(format!("{base}api/health")).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    let health = health.text().await?;
    assert!(health.contains("outbox_pending"), "{health}");
    assert!(
        !health.contains(PATIENT) && !health.contains("beds"),
        "{health}"
    );

    // Patient data needs a session: no cookie, a forged cookie, the stream.
    for path in ["api/ward", "api/stream", "api/session"] {
        let r = c.get(format!("{base}{path}")).send().await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body = r.text().await?;
        assert!(!body.contains(PATIENT), "{path}: {body}");
    }
    let forged = c
        .get(format!("{base}api/ward"))
        .header("cookie", format!("wardwatch_session={}", "ab".repeat(32)))
        .send()
        .await?;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert!(stats.unauthenticated.load(Ordering::Relaxed) >= 4);

    // Wrong passwords: 401, the same answer for an unknown user id; the third failure locks the user id, and then
    // even the right password is refused (429, Retry-After) without being checked.
    for _ in 0..3 {
        assert_eq!(
            sign_in_status(&c, &base, LOCKED.0, "not-the-password").await?,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        sign_in_status(&c, &base, "no.such.user", "whatever-password").await?,
        StatusCode::UNAUTHORIZED
    );
    let r = c
        .post(format!("{base}api/sign-in"))
        .json(&serde_json::json!({"user": LOCKED.0, "password": LOCKED.1}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(stats.sign_in_failures.load(Ordering::Relaxed), 4);
    assert_eq!(stats.lockouts.load(Ordering::Relaxed), 1);
    assert_eq!(stats.locked_refusals.load(Ordering::Relaxed), 1);
    // The lockout is per user id: others still sign in from the same address.
    let viewer = StationSession::sign_in(&c, &base, VIEWER.0, VIEWER.1).await?;
    let nurse = StationSession::sign_in(&c, &base, NURSE.0, NURSE.1).await?;
    assert_eq!(nurse.view["role"], "nurse");
    assert_eq!(nurse.view["name"], "Nora Adams, RN");
    assert_eq!(viewer.view["may_act"], false);
    assert_ne!(nurse.csrf, viewer.csrf);

    // The session cookie: HttpOnly, SameSite=Strict, no Secure over loopback HTTP.
    let r = c
        .post(format!("{base}api/sign-in"))
        .json(&serde_json::json!({"user": NURSE.0, "password": NURSE.1}))
        .send()
        .await?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .context("set-cookie")?
        .to_str()?
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    // Signing in again from a browser that has a session gives a new one and ends the old one.
    let again = StationSession::sign_in(&c, &base, NURSE.0, NURSE.1).await?;
    let r = c
        .post(format!("{base}api/sign-in"))
        .header("cookie", &again.cookie)
        .json(&serde_json::json!({"user": NURSE.0, "password": NURSE.1}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.contains(again.cookie.as_str()))
    );
    assert_eq!(
        again.get("api/ward").send().await?.status(),
        StatusCode::UNAUTHORIZED
    );

    // Signed in: the ward, with the alarm of bed 1.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let alarm_id = loop {
        let w: serde_json::Value = viewer.get("api/ward").send().await?.json().await?;
        let id = w["beds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["patient_id"] == PATIENT)
            .flat_map(|b| b["alarms"].as_array().cloned().unwrap_or_default())
            .find(|a| a["priority"] == "high" && a["phase"] != "acknowledged")
            .and_then(|a| a["alarm_id"].as_str().map(String::from));
        if let Some(id) = id {
            break id;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no desaturation alarm on the ward: {w}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ack = format!("api/alarms/{alarm_id}/acknowledge");

    // A viewer may look but not act.
    let r = viewer
        .post(&ack)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = viewer
        .post(&format!("api/patients/{PATIENT}/spo2-scale"))
        .json(&serde_json::json!({"scale": 2}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(stats.forbidden.load(Ordering::Relaxed), 2);

    // CSRF: no token, a wrong token, a foreign origin, a cross-site fetch: all refused, nothing acknowledged.
    let csrf_before = stats.csrf_refused.load(Ordering::Relaxed);
    let no_token = c
        .post(format!("{base}{ack}"))
        .header("cookie", &nurse.cookie)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let wrong_token = c
        .post(format!("{base}{ack}"))
        .header("cookie", &nurse.cookie)
        .header("x-csrf-token", &viewer.csrf)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(wrong_token.status(), StatusCode::FORBIDDEN);
    let foreign = nurse
        .post(&ack)
        .header("origin", "http://evil.example")
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let cross_site = nurse
        .post(&ack)
        .header("sec-fetch-site", "cross-site")
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    assert_eq!(stats.csrf_refused.load(Ordering::Relaxed), csrf_before + 4);
    // A self-declared user is refused, not recorded.
    let r = nurse
        .post(&ack)
        .json(&serde_json::json!({"user": "mallory"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await?.contains("signed-in user"));

    // The nurse acknowledges (same origin, token): the alarm event that reaches the cloud names her.
    let r = nurse
        .post(&ack)
        .header("origin", base.trim_end_matches('/'))
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await?);
    edge.wait_drained(Duration::from_secs(30)).await?;
    let history = cloud.store.alarm_history(&alarm_id).await?;
    let acks: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Alarm(a) if a.state() == AlarmState::Acknowledged => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1, "{history:?}");
    assert_eq!(acks[0].changed_by, NURSE.0);

    // The SpO2-scale decision: refused for an unknown patient and a bad scale; recorded, synced and applied.
    let r = nurse
        .post("api/patients/MRN-NOT-HERE/spo2-scale")
        .json(&serde_json::json!({"scale": 2}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = nurse
        .post(&format!("api/patients/{PATIENT}/spo2-scale"))
        .json(&serde_json::json!({"scale": 3}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = nurse
        .post(&format!("api/patients/{PATIENT}/spo2-scale"))
        .json(&serde_json::json!({"scale": 2, "reason": "COPD, target 88-92 %"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await?);
    edge.wait_drained(Duration::from_secs(30)).await?;
    let rows = cloud
        .store
        .search_events(&EventQuery {
            kind: "spo2_scale",
            patient: Some(PATIENT.into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let Payload::Spo2Scale(s) = &rows[0].payload else {
        panic!("not an SpO2-scale event: {rows:?}");
    };
    assert_eq!((s.scale, s.previous_scale), (2, 1));
    assert_eq!(s.changed_by, NURSE.0);
    assert_eq!(s.changed_by_name, "Nora Adams, RN");
    assert_eq!(s.changed_by_role, "nurse");
    assert_eq!(s.reason, "COPD, target 88-92 %");
    assert_eq!(
        s.location
            .as_ref()
            .map(|l| (l.ward.as_str(), l.bed.as_str())),
        Some(("7A", "1"))
    );
    let by_code = cloud
        .store
        .count_events(&EventQuery {
            kind: "spo2_scale",
            codes: vec!["spo2-scale-2".into()],
            ..Default::default()
        })
        .await?;
    assert_eq!(by_code, 1);
    // Applied to the engine: the patient now scores on scale 2.
    let scale_2 = edge
        .node
        .engine()
        .lock()
        .ok()
        .and_then(|e| e.patient_location_and_scale(PATIENT))
        .map(|(_, s2)| s2);
    assert_eq!(scale_2, Some(true));

    // Sign-out needs the CSRF token too; afterwards the cookie is worthless.
    let r = c
        .post(format!("{base}api/sign-out"))
        .header("cookie", &nurse.cookie)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = nurse.post("api/sign-out").send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("Max-Age=0"))
    );
    assert_eq!(
        nurse.get("api/ward").send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(stats.sign_outs.load(Ordering::Relaxed), 1);
    assert_eq!(
        viewer.get("api/ward").send().await?.status(),
        StatusCode::OK,
        "another session is unaffected"
    );
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// An edge with a station but no reachable cloud (sessions do not need one).
async fn lone_edge(dir: &std::path::Path, station: StationConfig) -> Result<EdgeHandle> {
    let setup = dev_setup(dir, &["edge-7a"])?;
    let mut cfg = edge_config(
        &setup,
        &dir.join("edge"),
        "edge-7a",
        &["7A"],
        wardwatch::free_port()?,
    )?;
    cfg.station = Some(station);
    EdgeHandle::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_sessions_expire_when_idle_and_at_their_lifetime() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let mut station = StationConfig::new("127.0.0.1:0".parse()?, users()?);
    station.session_idle_secs = 2;
    station.session_max_secs = 6;
    let edge = lone_edge(dir.path(), station).await?;
    let base = format!(
        "http://{}/",
        edge.node.station_addr().context("station address")?
    );
    let c = plain_client()?;
    let stats = edge.node.station_stats().context("station stats")?.clone();

    // Idle: a request within the idle timeout keeps the session, 2 s without one ends it.
    let s = StationSession::sign_in(&c, &base, NURSE.0, NURSE.1).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.get("api/ward").send().await?.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.get("api/session").send().await?.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = s.get("api/ward").send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await?.contains("inactivity"));
    // Ended for good, even though it is used again at once.
    assert_eq!(
        s.get("api/ward").send().await?.status(),
        StatusCode::UNAUTHORIZED
    );

    // Lifetime: activity every 0.7 s does not keep a session past 6 s.
    let s = StationSession::sign_in(&c, &base, NURSE.0, NURSE.1).await?;
    let started = std::time::Instant::now();
    let mut ended = None;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let r = s.get("api/ward").send().await?;
        if r.status() == StatusCode::UNAUTHORIZED {
            assert!(r.text().await?.contains("maximum lifetime"));
            ended = Some(started.elapsed());
            break;
        }
    }
    let ended = ended.context("the session outlived its lifetime")?;
    assert!(ended >= Duration::from_secs(5), "{ended:?}");
    assert_eq!(stats.expired.load(Ordering::Relaxed), 2);

    // The live stream ends with `signed-out` when its session expires, and is not activity itself.
    let s = StationSession::sign_in(&c, &base, NURSE.0, NURSE.1).await?;
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        s.get("api/stream").send().await?.text(),
    )
    .await
    .context("the stream did not end when its session expired")??;
    assert!(body.contains("event: ward"), "{body}");
    assert!(body.contains("event: signed-out"), "{body}");
    assert!(body.contains("inactivity"), "{body}");
    edge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_over_tls_and_plain_http_off_loopback_refused() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &["edge-7a"])?;
    // The development PKI's server certificate (for localhost) serves the station too.
    let mut station = StationConfig::new("127.0.0.1:0".parse()?, users()?);
    station.tls = Some(StationTlsConfig {
        cert: setup.pki.cloud_cert.clone(),
        key: setup.pki.cloud_key.clone(),
    });
    let edge = lone_edge(dir.path(), station.clone()).await?;
    let port = edge.node.station_addr().context("station address")?.port();
    let base = format!("https://localhost:{port}/");
    let c = wardwatch::https_client(&setup.pki.ca_cert)?;
    let r = c
        .post(format!("{base}api/sign-in"))
        .json(&serde_json::json!({"user": NURSE.0, "password": NURSE.1}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r
        .headers()
        .get("set-cookie")
        .context("set-cookie")?
        .to_str()?
        .to_string();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(
        r.headers().get("strict-transport-security").is_some(),
        "HSTS over TLS"
    );
    let s = StationSession::sign_in(&c, &base, NURSE.0, NURSE.1).await?;
    assert_eq!(s.get("api/ward").send().await?.status(), StatusCode::OK);
    // No plaintext on the TLS port; a client that does not trust the hospital CA gets no session either.
    let plain = plain_client()?;
    assert!(
        plain
            .get(format!("http://127.0.0.1:{port}/api/health"))
            .send()
            .await
            .is_err()
    );
    let stats = edge.node.station_stats().context("station stats")?.clone();
    wait_until(
        Duration::from_secs(5),
        "the failed handshake counted",
        || {
            let stats = stats.clone();
            async move { Ok(stats.tls_handshake_failures.load(Ordering::Relaxed) >= 1) }
        },
    )
    .await?;
    edge.stop().await;

    // Plain HTTP on the ward network is refused before anything is bound.
    let dir2 = tempfile::tempdir()?;
    let mut open = StationConfig::new("0.0.0.0:0".parse()?, users()?);
    let e = lone_edge(dir2.path(), open.clone())
        .await
        .err()
        .context("plain HTTP on 0.0.0.0 was accepted")?;
    assert!(format!("{e:#}").contains("plain HTTP"), "{e:#}");
    // Missing TLS files stop the edge at start too.
    open.tls = Some(StationTlsConfig {
        cert: dir2.path().join("missing.pem"),
        key: dir2.path().join("missing.key"),
    });
    let e = lone_edge(dir2.path(), open)
        .await
        .err()
        .context("missing TLS files were accepted")?;
    assert!(format!("{e:#}").contains("nurse station TLS"), "{e:#}");
    Ok(())
}

/// Stores two SpO2-scale decisions (and a resend of one) and reads them back by kind, patient and code.
async fn spo2_scale_storage(store: wardwatch_cloud::storage::Store) -> Result<()> {
    use wardwatch_cloud::storage::IngestItem;
    use wardwatch_proto::v1::Spo2ScaleChange;
    let change = |scale: u32, previous: u32, at: i64| Spo2ScaleChange {
        patient_id: PATIENT.into(),
        location: Some(BedLocation {
            ward: "7A".into(),
            bed: "4".into(),
        }),
        scale,
        previous_scale: previous,
        changed_by: NURSE.0.into(),
        changed_by_name: "Nora Adams, RN".into(),
        changed_by_role: "nurse".into(),
        changed_at_unix_ms: at,
        reason: "respiratory team review".into(),
    };
    let item = |seq: u64, s: Spo2ScaleChange| IngestItem {
        sequence: seq,
        idempotency_key: format!("spo2-scale:{seq}"),
        outcome: Ok(Payload::Spo2Scale(s)),
    };
    let t0 = 1_700_000_000_000;
    let out = store
        .ingest(
            "edge-7a",
            &[
                item(1, change(2, 1, t0)),
                item(2, change(1, 2, t0 + 60_000)),
            ],
        )
        .await?;
    assert_eq!(out.stored, 2);
    let again = store
        .ingest("edge-7a", &[item(2, change(1, 2, t0 + 60_000))])
        .await?;
    assert_eq!((again.stored, again.replayed.as_slice()), (0, &[2u64][..]));
    let rows = store
        .search_events(&EventQuery {
            kind: "spo2_scale",
            patient: Some(PATIENT.into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    // Newest first; the payload round-trips.
    assert_eq!(rows[0].event_ms, t0 + 60_000);
    assert_eq!(
        rows[0].payload,
        Payload::Spo2Scale(change(1, 2, t0 + 60_000))
    );
    assert_eq!(rows[1].payload, Payload::Spo2Scale(change(2, 1, t0)));
    for (code, n) in [("spo2-scale-2", 1), ("spo2-scale-1", 1)] {
        let c = store
            .count_events(&EventQuery {
                kind: "spo2_scale",
                codes: vec![code.into()],
                ..Default::default()
            })
            .await?;
        assert_eq!(c, n, "{code}");
    }
    // Not mistaken for another kind.
    let alarms = store
        .count_events(&EventQuery {
            kind: "alarm",
            ..Default::default()
        })
        .await?;
    assert_eq!(alarms, 0);
    Ok(())
}

#[tokio::test]
async fn spo2_scale_events_are_stored_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = wardwatch_cloud::storage::Store::connect(&format!(
        "sqlite://{}/t.sqlite",
        dir.path().display()
    ))
    .await?;
    spo2_scale_storage(store.clone()).await?;
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn spo2_scale_events_are_stored_on_postgres() -> Result<()> {
    let Some(db) = wardwatch::TestDatabase::create("station_spo2_scale").await? else {
        return Ok(()); // TestDatabase printed a SKIPPED line (and fails instead on CI).
    };
    let store = wardwatch_cloud::storage::Store::connect(&db.url).await?;
    assert_eq!(store.backend(), "postgres");
    spo2_scale_storage(store.clone()).await?;
    store.close().await;
    db.drop_now().await?;
    Ok(())
}
