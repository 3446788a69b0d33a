//! The README's demo command: starts on an empty data directory, writes its `--info` file once serving, serves
//! FHIR with the token it names, and stops cleanly with exit code 0 after `--duration`. By default it runs an
//! embedded MQTT broker whose address is `mqtt` in the info file: a vital sign published there reaches FHIR.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Starts the demo binary with `args` (after `demo`; every listener on an ephemeral loopback port), `data` as its
/// data directory and `info` as its info file, and waits until that file is written. Returns the child (its
/// stdout piped) and the info document.
async fn start_demo(
    args: &[&str],
    data: &std::path::Path,
    info: &std::path::Path,
) -> Result<(tokio::process::Child, serde_json::Value)> {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wardwatch"))
        .arg("demo")
        .args(args)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--sync-listen",
            "127.0.0.1:0",
            "--station-listen",
            "127.0.0.1:0",
            "--hl7-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--info")
        .arg(info)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    wardwatch::wait_until(Duration::from_secs(30), "the info file", || {
        let exists = info.exists();
        async move { Ok(exists) }
    })
    .await?;
    let doc = serde_json::from_slice(&std::fs::read(info)?)?;
    Ok((child, doc))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_for_a_duration_on_an_empty_data_dir() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("empty-data");
    std::fs::create_dir_all(&data)?;
    let info = dir.path().join("info.json");
    let (mut child, doc) = start_demo(
        &["--duration", "12", "--beds", "40", "--mqtt-broker", "off"],
        &data,
        &info,
    )
    .await?;
    let base = doc["fhir_base"].as_str().context("fhir_base")?.to_string();
    let token = doc["token"].as_str().context("token")?.to_string();
    let ca = doc["ca_cert"].as_str().context("ca_cert")?.to_string();
    assert!(
        base.starts_with("https://localhost:") && base.ends_with("/fhir"),
        "{base}"
    );
    let client = wardwatch::https_client(std::path::Path::new(&ca))?;
    // The simulated ward's samples arrive through the edge and the sync within seconds.
    let url = format!("{base}/Observation?code=http://loinc.org|8867-4&_count=5");
    wardwatch::wait_until(Duration::from_secs(20), "heart-rate Observations", || {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let b: serde_json::Value = client
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            Ok(b["entry"].as_array().is_some_and(|e| e.len() == 5))
        }
    })
    .await?;
    // The nurse station (served by the edge) shows the simulated ward.
    let station = doc["nurse_station"]
        .as_str()
        .context("nurse_station")?
        .to_string();
    let plain = client.clone();
    // Patient data only after sign-in, with the development nurse the info file names.
    let unauthenticated = plain.get(format!("{station}api/ward")).send().await?;
    assert_eq!(unauthenticated.status(), reqwest::StatusCode::UNAUTHORIZED);
    let login = &doc["nurse_station_login"];
    let session = wardwatch::StationSession::sign_in(
        &plain,
        &station,
        login["user"].as_str().context("nurse_station_login.user")?,
        login["password"]
            .as_str()
            .context("nurse_station_login.password")?,
    )
    .await?;
    wardwatch::wait_until(
        Duration::from_secs(20),
        "the nurse station to show 40 beds",
        || {
            let session = session.clone();
            async move {
                let w: serde_json::Value = session.get("api/ward").send().await?.json().await?;
                Ok(w["beds"].as_array().is_some_and(|b| b.len() == 40))
            }
        },
    )
    .await?;
    assert!(
        doc["hl7_mllp"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{doc}"
    );
    assert!(doc["mqtt"].is_null(), "{doc}");
    // The models the edge runs are published in the cloud's registry and assigned to the demo ward; the
    // development client gets a registry-scoped token through the SMART flow with its key under the data dir.
    let registry = doc["model_registry"]
        .as_str()
        .context("model_registry")?
        .to_string();
    let setup = wardwatch::dev_setup(&data, &["edge-7a"])?;
    let admin = wardwatch::smart_token(
        &client,
        doc["token_endpoint"].as_str().context("token_endpoint")?,
        &setup.smart_client,
        "system/WardwatchModel.r",
    )
    .await?;
    let listing: serde_json::Value = client
        .get(&registry)
        .bearer_auth(&admin.access_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut assigned: Vec<(String, String)> = listing["assignments"]
        .as_array()
        .context("assignments")?
        .iter()
        .map(|a| {
            (
                a["ward"].as_str().unwrap_or_default().to_string(),
                a["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assigned.sort();
    assert_eq!(
        assigned,
        vec![
            ("7A".to_string(), "wardwatch-artifact".to_string()),
            ("7A".to_string(), "wardwatch-deterioration".to_string())
        ],
        "{listing}"
    );
    // The printed token is an EHR's: it does not reach the registry.
    let r = client.get(&registry).bearer_auth(&token).send().await?;
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    let page = plain.get(&station).send().await?.text().await?;
    assert!(page.contains("Wardwatch · nurse station"));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "demo exited with {status}");
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        s.read_to_string(&mut out).await?;
    }
    assert!(out.contains("FHIR base: https://localhost:"), "{out}");
    assert!(out.contains("curl --cacert"), "{out}");
    assert!(out.contains("Wardwatch demo stopped."), "{out}");
    Ok(())
}

/// The demo's default MQTT setup: the embedded broker, here on a free port that is not 1883 (Mosquitto listens
/// there on this machine and in CI, so the published message can only have gone through the embedded broker).
/// A device publishes a heart rate with QoS 1 on the documented topic for the demo's ward; it comes out of the
/// FHIR API as an Observation of a patient the simulator does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_embedded_mqtt_broker_carries_a_device_message_to_fhir() -> Result<()> {
    wardwatch::install_crypto();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let info = dir.path().join("info.json");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    assert_ne!(port, 1883);
    let listen = format!("127.0.0.1:{port}");
    let (mut child, doc) = start_demo(
        &["--duration", "25", "--beds", "4", "--mqtt-listen", &listen],
        &data,
        &info,
    )
    .await?;
    // The port picked above may be taken by another process's outgoing connection before the demo binds it;
    // the broker then falls back to an ephemeral loopback port, still not Mosquitto's 1883.
    let mqtt = doc["mqtt"].as_str().context("mqtt")?;
    assert!(
        mqtt.starts_with("127.0.0.1:") && !mqtt.ends_with(":1883"),
        "{doc}"
    );
    if mqtt != listen {
        eprintln!("port {listen} was taken meanwhile; the embedded broker fell back to {mqtt}");
    }
    let (host, mqtt_port) = doc["mqtt"]
        .as_str()
        .and_then(|m| m.rsplit_once(':'))
        .context("mqtt host:port")?;

    // A device on the ward publishes, as docs/mqtt.md says, with QoS 1.
    let mrn = format!("MQTT-DEMO-{}", std::process::id());
    let measured_at = wardwatch_proto::now_unix_ms();
    let payload = serde_json::json!({
        "patient_id": mrn,
        "measured_at": measured_at,
        "samples": [{ "mdc": 147842, "value": 77, "unit": "/min" }],
    });
    let mut opts = MqttOptions::new("demo-test-device", host, mqtt_port.parse()?);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 10);
    client
        .publish(
            "wardwatch/v1/7A/MQTT-1/monitor-demo-test/vitals",
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&payload)?,
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => bail!("MQTT publish to the demo's broker: {e}"),
            }
        }
    })
    .await
    .context("no PUBACK from the demo's MQTT broker")??;
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(e) = events.poll().await {
            if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;

    // Through the edge and the sync to the cloud's FHIR API.
    let base = doc["fhir_base"].as_str().context("fhir_base")?.to_string();
    let token = doc["token"].as_str().context("token")?.to_string();
    let ca = doc["ca_cert"].as_str().context("ca_cert")?.to_string();
    let http = wardwatch::https_client(std::path::Path::new(&ca))?;
    let url = format!("{base}/Observation?patient={mrn}&code=http://loinc.org|8867-4");
    wardwatch::wait_until(
        Duration::from_secs(20),
        "the MQTT heart rate as an Observation",
        || {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            async move {
                let b: serde_json::Value = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok(b["entry"].as_array().is_some_and(|e| {
                    e.len() == 1
                        && e[0]["resource"]["valueQuantity"]["value"].as_f64() == Some(77.0)
                }))
            }
        },
    )
    .await?;

    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await??;
    assert!(status.success(), "demo exited with {status}");
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        s.read_to_string(&mut out).await?;
    }
    assert!(
        out.contains(&format!("MQTT: embedded broker at {listen}")),
        "{out}"
    );
    assert!(out.contains("Wardwatch demo stopped."), "{out}");
    Ok(())
}
