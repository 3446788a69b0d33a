//! The HL7 v2 / IHE PCD-01 MLLP source end to end: a real edge node (no reachable cloud: the outbox just
//! buffers) and the listener on 127.0.0.1:0; messages go over TCP with MLLP framing and the ACK fields are
//! asserted exactly (MSA-1, MSA-2, ERR-2, ERR-3), then the outbox is read to see what was made durable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wardwatch_edge::EdgeNode;
use wardwatch_edge::config::{CloudLinkConfig, ConfigError, EdgeConfig, OutboxConfig, SyncConfig};
use wardwatch_edge::node::{AcceptError, Incoming};
use wardwatch_edge::outbox::OutboxError;
use wardwatch_edge::sources::hl7::mllp::{MllpDecoder, MllpEvent};
use wardwatch_edge::sources::hl7::{self, Hl7MllpConfig, Hl7Stats, mllp};
use wardwatch_proto::ids::{EdgeId, WardId};
use wardwatch_proto::metrics::*;
use wardwatch_proto::v1::{BedLocation, VitalSign, edge_event::Payload};

const WARDS: [&str; 2] = ["7A", "SURGERY"];

fn config(dir: &std::path::Path, outbox_bytes: u64) -> EdgeConfig {
    EdgeConfig {
        edge_id: EdgeId::new("edge-hl7").unwrap_or_else(|e| panic!("{e}")),
        wards: WARDS
            .iter()
            .map(|w| WardId::new(*w).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        data_dir: dir.to_path_buf(),
        outbox: OutboxConfig {
            max_bytes: outbox_bytes,
            near_full_ratio: 0.8,
            ..OutboxConfig::default()
        },
        cloud: CloudLinkConfig {
            endpoint: "https://localhost:1".into(),
            server_name: None,
            ca_cert: dir.join("absent-ca.pem"),
            client_cert: dir.join("absent.pem"),
            client_key: dir.join("absent.key"),
        },
        sync: SyncConfig::default(),
        engine: Default::default(),
        station: None,
        hl7_mllp: None,
        mqtt: None,
    }
}

struct Edge {
    node: Arc<EdgeNode>,
    addr: SocketAddr,
    stats: Arc<Hl7Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ConfigError>>,
    _dir: tempfile::TempDir,
}

impl Edge {
    async fn start(outbox_bytes: u64, max_message_bytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let node = EdgeNode::start(config(dir.path(), outbox_bytes))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stats = Arc::new(Hl7Stats::default());
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = Hl7MllpConfig {
            listen: addr,
            max_message_bytes,
            read_timeout_ms: 2_000,
            ..Hl7MllpConfig::default()
        };
        let task = tokio::spawn(hl7::run(
            cfg,
            node.clone(),
            listener,
            stats.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            node,
            addr,
            stats,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    async fn vitals(&self) -> Vec<(String, VitalSign)> {
        self.node
            .outbox()
            .read_after(0, 100_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::Vital(v)) => Some((e.idempotency_key, v)),
                _ => None,
            })
            .collect()
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let done = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("the listener did not stop"));
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    }
}

struct Client {
    stream: TcpStream,
    decoder: MllpDecoder,
}

/// An ACK read field by field (split by hand, independent of the parser under test).
#[derive(Debug)]
struct Ack {
    raw: String,
    msh: Vec<String>,
    msa: Vec<String>,
    errs: Vec<Vec<String>>,
}

impl Ack {
    fn parse(raw: String) -> Self {
        let segs: Vec<Vec<String>> = raw
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| s.split('|').map(str::to_string).collect())
            .collect();
        let find = |id: &str| {
            segs.iter()
                .find(|s| s.first().map(String::as_str) == Some(id))
                .cloned()
                .unwrap_or_default()
        };
        let msh = find("MSH");
        let msa = find("MSA");
        let errs = segs
            .iter()
            .filter(|s| s.first().map(String::as_str) == Some("ERR"))
            .cloned()
            .collect();
        Self {
            raw,
            msh,
            msa,
            errs,
        }
    }
    /// MSH-n (MSH-1 is the separator, so MSH-n is element n-1).
    fn msh(&self, n: usize) -> &str {
        self.msh.get(n - 1).map(String::as_str).unwrap_or("")
    }
    fn msa1(&self) -> &str {
        self.msa.get(1).map(String::as_str).unwrap_or("")
    }
    fn msa2(&self) -> &str {
        self.msa.get(2).map(String::as_str).unwrap_or("")
    }
    /// (ERR-2, ERR-3.1, ERR-4) of each ERR.
    fn errs(&self) -> Vec<(String, String, String)> {
        self.errs
            .iter()
            .map(|e| {
                let f = |n: usize| e.get(n).cloned().unwrap_or_default();
                let code = f(3).split('^').next().unwrap_or("").to_string();
                (f(2), code, f(4))
            })
            .collect()
    }
    fn err_texts(&self) -> Vec<String> {
        self.errs
            .iter()
            .map(|e| e.get(8).cloned().unwrap_or_default())
            .collect()
    }
}

fn err(loc: &str, code: &str) -> (String, String, String) {
    (loc.to_string(), code.to_string(), "E".to_string())
}

/// Turns a readable message (one segment per line) into wire form (segments separated by `\r`).
fn wire(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\r")
        + "\r"
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            stream,
            decoder: MllpDecoder::new(16 << 20),
        }
    }
    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    async fn send(&mut self, msg: &str) {
        let framed = mllp::encode(wire(msg).as_bytes());
        self.send_bytes(&framed).await;
    }
    /// The next ACK frame, within 10 s.
    async fn ack(&mut self) -> Ack {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Some(ev) = self.decoder.next_event() {
                match ev {
                    MllpEvent::Frame(f) => {
                        return Ack::parse(String::from_utf8(f).unwrap_or_else(|e| panic!("{e}")));
                    }
                    other => panic!("bad framing from the edge: {other:?}"),
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no ACK within 10 s"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "connection closed before an ACK arrived");
            self.decoder.push(&buf[..n]);
        }
    }
    async fn exchange(&mut self, msg: &str) -> Ack {
        self.send(msg).await;
        self.ack().await
    }
    /// Whether the server closes the connection (EOF or reset) within `secs`, without sending anything.
    async fn closed_within(&mut self, secs: u64) -> bool {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(secs), self.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => false,
        }
    }
}

const VALID: &str = "
MSH|^~\\&|WardMon^0123456789ABCDEF^EUI-64|Ward7A|WARDWATCH|HOSP|20240301101500+0000||ORU^R01^ORU_R01|VALID-1|P|2.6|||NE|AL|||||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO
PID|||MRN1001^^^Hosp^MR||Doe^Jane
PV1||I|7A^701^3
OBR|1|||182777000^monitoring of patient^SCT|||20240301101400+0000
OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||MON-7A-3^EUI-64
OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F
OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|96|262688^MDC_DIM_PERCENT^MDC|||||F
OBX|4|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|71|/min^/min^UCUM|||||F
OBX|5|NM|151562^MDC_RESP_RATE^MDC|1.3.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F
OBX|6|NM|150364^MDC_TEMP_BODY^MDC|1.4.1.1|100.4|[degF]^[degF]^UCUM|||||F|||20240301101300+0000
OBX|7||150020^MDC_PRESS_BLD_NONINV^MDC|1.5.1|||||||X
OBX|8|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.5.1.1|128|266016^MDC_DIM_MMHG^MDC|||||F
OBX|9|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.5.1.2|82|266016^MDC_DIM_MMHG^MDC|||||F
OBX|10|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.5.1.3|97|266016^MDC_DIM_MMHG^MDC|||||F
OBX|11|NM|150344^MDC_TEMP^MDC|1.4.1.2||268192^MDC_DIM_DEGC^MDC|||||X
";

/// 2024-03-01T10:14:00Z (OBR-7 of VALID).
const T_1014: i64 = 1_709_288_040_000;

fn one(vitals: &[(String, VitalSign)], mdc: u32) -> &VitalSign {
    let found: Vec<&VitalSign> = vitals
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.metric_mdc == mdc)
        .collect();
    assert_eq!(found.len(), 1, "metric {mdc}: {found:?}");
    found[0]
}

#[tokio::test]
async fn valid_pcd01_is_acknowledged_aa_after_its_vitals_are_durable() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    let ack = c.exchange(VALID).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AA", "VALID-1"), "{}", ack.raw);
    assert!(ack.errs.is_empty(), "{}", ack.raw);
    // MSH: sender and receiver swapped, ACK^R01^ACK, a new control id, the version echoed.
    assert_eq!(ack.msh(2), "^~\\&");
    assert_eq!(ack.msh(3), "WARDWATCH");
    assert_eq!(ack.msh(4), "HOSP");
    assert_eq!(ack.msh(5), "WardMon^0123456789ABCDEF^EUI-64");
    assert_eq!(ack.msh(6), "Ward7A");
    assert_eq!(ack.msh(9), "ACK^R01^ACK");
    assert!(!ack.msh(10).is_empty() && ack.msh(10) != "VALID-1");
    assert_eq!((ack.msh(11), ack.msh(12)), ("P", "2.6"));

    // The ACK came after accept returned: the vitals are in the outbox now.
    let vitals = edge.vitals().await;
    assert_eq!(vitals.len(), 6, "{vitals:#?}");
    for (key, v) in &vitals {
        assert!(
            key.starts_with("hl7:WardMon^0123456789ABCDEF^EUI-64:VALID-1:"),
            "{key}"
        );
        assert_eq!(v.patient_id, "MRN1001");
        assert_eq!(
            v.location,
            Some(BedLocation {
                ward: "7A".into(),
                bed: "3".into()
            })
        );
        assert_eq!(v.device_id, "MON-7A-3", "inherited from the MDS row");
    }
    let hr = one(&vitals, MDC_ECG_HEART_RATE);
    assert_eq!(
        (hr.value, hr.unit_ucum.as_str(), hr.measured_at_unix_ms),
        (72.0, "/min", T_1014)
    );
    let spo2 = one(&vitals, MDC_PULS_OXIM_SAT_O2);
    assert_eq!((spo2.value, spo2.unit_ucum.as_str()), (96.0, "%"));
    let pr = one(&vitals, MDC_PULS_OXIM_PULS_RATE);
    assert_eq!((pr.value, pr.unit_ucum.as_str()), (71.0, "/min"));
    let rr = one(&vitals, MDC_RESP_RATE);
    assert_eq!((rr.value, rr.unit_ucum.as_str()), (18.0, "/min"));
    let t = one(&vitals, MDC_TEMP_BODY);
    assert_eq!((t.value, t.unit_ucum.as_str()), (38.0, "Cel"), "100.4 °F");
    assert_eq!(
        t.measured_at_unix_ms,
        T_1014 - 60_000,
        "OBX-14 wins over OBR-7"
    );
    let bp = one(&vitals, MDC_PRESS_BLD_NONINV);
    assert_eq!((bp.value, bp.unit_ucum.as_str()), (97.0, "mm[Hg]"));
    let comps: Vec<(u32, f64)> = bp
        .components
        .iter()
        .map(|c| (c.metric_mdc, c.value))
        .collect();
    assert_eq!(
        comps,
        vec![
            (MDC_PRESS_BLD_NONINV_SYS, 128.0),
            (MDC_PRESS_BLD_NONINV_DIA, 82.0),
            (MDC_PRESS_BLD_NONINV_MEAN, 97.0)
        ]
    );
    let s = edge.stats.snapshot();
    assert_eq!(
        (s.messages, s.acked_aa, s.vitals_accepted, s.obx_skipped),
        (1, 1, 6, 1)
    );
    edge.stop().await;
}

fn sample(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hl7")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn published_examples_get_their_documented_outcome() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;

    // IHE PCD TF-2 blood pressure example (HAPI copy): no PV1, so no bed: AE, nothing stored.
    let ack = c.exchange(&sample("ihe_pcd_tf2_bp_example.hl7")).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "MSGID1234"), "{}", ack.raw);
    assert_eq!(ack.errs(), vec![err("PV1^1", "100")]);
    assert_eq!(
        ack.msh(3),
        "Wardwatch",
        "the example names no receiving application"
    );
    // The IPF copy of the same example: the same outcome.
    let ack = c.exchange(&sample("ipf_pcd01_request.hl7")).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "MSGID1234"), "{}", ack.raw);
    assert_eq!(ack.errs(), vec![err("PV1^1", "100")]);
    // The AwareGateway report: "3 WEST ICU" is not a ward id.
    let ack = c
        .exchange(&sample("ipf_pcd01_request2_aware_gateway.hl7"))
        .await;
    assert_eq!(
        (ack.msa1(), ack.msa2()),
        ("AE", "12d15a9:11df9e61347:-7fee:30456965"),
        "{}",
        ack.raw
    );
    assert_eq!(ack.errs(), vec![err("PV1^1^3^1^1", "102")]);
    assert!(edge.vitals().await.is_empty());

    // The IHE example with a PV1: one compound NBP, device and time inherited through the containment tree.
    let ack = c
        .exchange(&sample("ihe_pcd_tf2_bp_example_with_pv1.hl7"))
        .await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AA", "MSGID1234"), "{}", ack.raw);
    let vitals = edge.vitals().await;
    assert_eq!(vitals.len(), 1, "{vitals:#?}");
    let bp = one(&vitals, MDC_PRESS_BLD_NONINV);
    let comps: Vec<(u32, f64)> = bp
        .components
        .iter()
        .map(|c| (c.metric_mdc, c.value))
        .collect();
    assert_eq!(
        comps,
        vec![(150021, 120.0), (150022, 80.0), (150023, 100.0)]
    );
    assert_eq!((bp.value, bp.unit_ucum.as_str()), (100.0, "mm[Hg]"));
    assert_eq!(
        (bp.patient_id.as_str(), bp.device_id.as_str()),
        ("1", "0123456789ABCDEF")
    );
    assert_eq!(
        bp.measured_at_unix_ms, 1_250_157_435_000,
        "2009-08-13T09:57:15Z from the 1.0.1 row"
    );
    assert_eq!(bp.location.as_ref().map(|l| l.bed.as_str()), Some("12"));

    // GE B40 reference manual, example 1 (excerpt): five vitals, AA.
    let ack = c.exchange(&sample("ge_b40_example1_excerpt.hl7")).await;
    assert_eq!(
        (ack.msa1(), ack.msa2()),
        ("AA", "004097134535"),
        "{}",
        ack.raw
    );
    assert_eq!(ack.msh(5), "VSP^080019FFFE134535^EUI-64");
    assert_eq!(ack.msh(6), "GE Healthcare");
    let ge: Vec<VitalSign> = edge
        .vitals()
        .await
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.patient_id == "HED12")
        .collect();
    let mut got: Vec<(u32, f64, String)> = ge
        .iter()
        .map(|v| (v.metric_mdc, v.value, v.unit_ucum.clone()))
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    assert_eq!(
        got,
        vec![
            (MDC_TEMP, 36.5, "Cel".into()),
            (MDC_TEMP, 37.1, "Cel".into()),
            (MDC_PULS_OXIM_SAT_O2, 100.0, "%".into()),
            (MDC_RESP_RATE, 18.0, "/min".into()),
            (MDC_RESP_RATE, 30.0, "/min".into()),
        ]
    );
    for v in &ge {
        assert_eq!(
            v.location,
            Some(BedLocation {
                ward: "SURGERY".into(),
                bed: "V2".into()
            })
        );
        assert_eq!(v.device_id, "080019FFFE0B4020");
        assert_eq!(
            v.measured_at_unix_ms, 1_358_862_060_000,
            "OBR-7 20130122134100 read as UTC"
        );
    }
    edge.stop().await;
}

const PARTIAL: &str = "
MSH|^~\\&|WardMon^0123456789ABCDEF^EUI-64|Ward7A|WARDWATCH|HOSP|20240301102500+0000||ORU^R01^ORU_R01|PARTIAL-1|P|2.6
PID|||MRN1001^^^Hosp^MR
PV1||I|7A^701^3
OBR|1|||182777000^monitoring of patient^SCT|||20240301102400+0000
OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|74|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||||||MON-7A-3
OBX|2|NM|188736^MDC_MASS_BODY_ACTUAL^MDC|1.6.1.1|70|263875^MDC_DIM_KILO_G^MDC|||||F|||||||MON-7A-3
OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|NaN|262688^MDC_DIM_PERCENT^MDC|||||F|||||||MON-7A-3
OBX|4|NM|151562^MDC_RESP_RATE^MDC|1.3.1.1|twelve|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F|||||||MON-7A-3
OBX|5|NM|150364^MDC_TEMP_BODY^MDC|1.4.1.1|37.9|268192^MDC_DIM_DEGC^MDC|||||F|||||||MON-7A-3
OBX|6|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.2|900|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||||||MON-7A-3
";

#[tokio::test]
async fn partially_bad_message_is_ae_with_one_err_per_rejected_obx_and_the_good_ones_stored() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    let ack = c.exchange(PARTIAL).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "PARTIAL-1"), "{}", ack.raw);
    assert_eq!(
        ack.errs(),
        vec![
            err("OBX^2^3", "103"),
            err("OBX^3^5", "102"),
            err("OBX^4^5", "102"),
            err("OBX^6^5", "102"),
        ],
        "{}",
        ack.raw
    );
    let texts = ack.err_texts();
    assert!(texts[1].contains("\"NaN\" is not a number"), "{texts:?}");
    assert!(texts[2].contains("\"twelve\""), "{texts:?}");
    assert!(texts[3].contains("900"), "{texts:?}");
    for t in &texts {
        assert!(
            t.contains("the other 2 observation(s) of this message were stored durably"),
            "{t}"
        );
    }
    // The good ones ARE stored.
    let vitals = edge.vitals().await;
    let mut got: Vec<(u32, f64)> = vitals
        .iter()
        .map(|(_, v)| (v.metric_mdc, v.value))
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    assert_eq!(got, vec![(MDC_ECG_HEART_RATE, 74.0), (MDC_TEMP_BODY, 37.9)]);
    let s = edge.stats.snapshot();
    assert_eq!((s.acked_ae, s.obx_rejected, s.vitals_accepted), (1, 4, 2));

    // Every measurement rejected: still AE, and ERR-8 says nothing was stored.
    let all_bad = PARTIAL
        .replace("|74|", "|x|")
        .replace("|37.9|", "|y|")
        .replace("PARTIAL-1", "PARTIAL-2");
    let ack = c.exchange(&all_bad).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "PARTIAL-2"));
    assert_eq!(ack.errs.len(), 6);
    assert!(
        ack.err_texts()
            .iter()
            .all(|t| t.contains("no observation of this message was stored"))
    );
    assert_eq!(edge.vitals().await.len(), 2);
    edge.stop().await;
}

#[tokio::test]
async fn unsupported_type_missing_pid_and_foreign_ward() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    let ack = c
        .exchange(
            "MSH|^~\\&|ADT1|MCM|WARDWATCH|HOSP|202403011000||ADT^A01^ADT_A01|ADT-1|P|2.5\n\
             EVN|A01|202403011000\nPID|||MRN1001^^^Hosp^MR||Doe^Jane\nPV1||I|7A^701^3",
        )
        .await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AR", "ADT-1"), "{}", ack.raw);
    assert_eq!(ack.errs(), vec![err("MSH^1^9", "200")]);
    assert_eq!(ack.msh(9), "ACK^A01^ACK");
    assert_eq!(ack.msh(12), "2.5");

    let no_pid = VALID
        .lines()
        .filter(|l| !l.starts_with("PID"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("VALID-1", "NOPID-1");
    let ack = c.exchange(&no_pid).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "NOPID-1"), "{}", ack.raw);
    assert!(ack.errs().contains(&err("PID^1", "100")), "{}", ack.raw);

    let no_pv1 = VALID
        .lines()
        .filter(|l| !l.starts_with("PV1"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("VALID-1", "NOPV1-1");
    let ack = c.exchange(&no_pv1).await;
    assert_eq!(
        (ack.msa1(), ack.errs()),
        ("AE", vec![err("PV1^1", "100")]),
        "{}",
        ack.raw
    );

    let foreign = VALID
        .replace("PV1||I|7A^701^3", "PV1||I|9Z^1^1")
        .replace("VALID-1", "FOREIGN-1");
    let ack = c.exchange(&foreign).await;
    assert_eq!(
        (ack.msa1(), ack.errs()),
        ("AE", vec![err("PV1^1^3^1^1", "103")]),
        "{}",
        ack.raw
    );
    assert!(ack.err_texts()[0].contains("not served by this edge"));

    let training = VALID.replace("|VALID-1|P|", "|TRAIN-1|T|");
    let ack = c.exchange(&training).await;
    assert_eq!(
        (ack.msa1(), ack.errs()),
        ("AR", vec![err("MSH^1^11", "202")]),
        "{}",
        ack.raw
    );
    assert!(edge.vitals().await.is_empty());
    edge.stop().await;
}

#[tokio::test]
async fn framing_faults_are_reported_and_the_connection_keeps_working() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    // Garbage before the start block, then a valid frame: answered.
    c.send_bytes(b"\x00\xff\xfeGARBAGE\r\n").await;
    let ack = c.exchange(VALID).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AA", "VALID-1"), "{}", ack.raw);
    // A frame that lost its end block is dropped when the next start block arrives; the next one is answered.
    c.send_bytes(b"\x0bMSH|^~\\&|LOST|||||||ORU^R01|LOST-1|P|2.6\r")
        .await;
    let ack = c.exchange(&VALID.replace("VALID-1", "AFTER-LOST")).await;
    assert_eq!(
        (ack.msa1(), ack.msa2()),
        ("AA", "AFTER-LOST"),
        "{}",
        ack.raw
    );
    // An empty frame is a keep-alive: no answer; the next message is answered normally.
    c.send_bytes(&mllp::encode(b"")).await;
    let ack = c.exchange(&VALID.replace("VALID-1", "AFTER-EMPTY")).await;
    assert_eq!(ack.msa2(), "AFTER-EMPTY");
    // Binary garbage inside a frame: AR (not parseable), connection still usable.
    c.send_bytes(&mllp::encode(b"\x01\x02\x03\xff\xfe binary"))
        .await;
    let ack = c.ack().await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AR", ""), "{}", ack.raw);
    assert_eq!(ack.errs().len(), 1);
    assert_eq!(ack.errs()[0].1, "100");
    // Raw control bytes after a good MSH: AR addressed to its control id, ERR-3 102.
    c.send_bytes(&mllp::encode(
        b"MSH|^~\\&|M||||||ORU^R01|CTL-1|P|2.6\rPID|||\x07\r",
    ))
    .await;
    let ack = c.ack().await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AR", "CTL-1"), "{}", ack.raw);
    assert_eq!(ack.errs()[0].1, "102");
    let ack = c.exchange(&VALID.replace("VALID-1", "STILL-OK")).await;
    assert_eq!(ack.msa1(), "AA");
    // A stream that is not MLLP at all is closed.
    // (the edge may close while we are still writing: a write error is fine here)
    let _ = c.stream.write_all(&vec![b'z'; (1 << 20) + 10]).await;
    assert!(
        c.closed_within(5).await,
        "the non-MLLP stream was not closed"
    );
    assert!(
        edge.stats.snapshot().framing_errors >= 3,
        "{:?}",
        edge.stats.snapshot()
    );
    // The listener is unaffected.
    let mut c2 = edge.client().await;
    assert_eq!(
        c2.exchange(&VALID.replace("VALID-1", "NEW-CONN"))
            .await
            .msa1(),
        "AA"
    );
    edge.stop().await;
}

#[tokio::test]
async fn truncated_messages_are_answered_or_dropped_without_harm() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    // Cut inside MSH: no message type, AR.
    let ack = c.exchange("MSH|^~\\&|WardMon|Ward7A|||2024").await;
    assert_eq!(ack.msa1(), "AR", "{}", ack.raw);
    assert_eq!(ack.errs(), vec![err("MSH^1^9", "101")]);
    // Cut inside the first OBX (after its value): the unit is missing, AE on that OBX.
    let cut = VALID.find("|264864^").unwrap_or_else(|| panic!("no unit"));
    let ack = c.exchange(&VALID[..cut]).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "VALID-1"), "{}", ack.raw);
    assert_eq!(ack.errs(), vec![err("OBX^2^6", "101")]);
    // Cut inside PID: no PV1 and no OBX.
    let cut = VALID.find("PID|||MRN").unwrap_or_else(|| panic!("no PID")) + 9;
    let ack = c.exchange(&VALID[..cut]).await;
    assert_eq!(ack.msa1(), "AE", "{}", ack.raw);
    assert_eq!(ack.errs(), vec![err("OBX^1", "100"), err("PV1^1", "100")]);
    // A frame cut by the connection closing: nothing to answer, nothing stored, no crash.
    let mut c2 = edge.client().await;
    let framed = mllp::encode(wire(&VALID.replace("VALID-1", "CUT-FRAME")).as_bytes());
    c2.send_bytes(&framed[..framed.len() / 2]).await;
    drop(c2);
    // A frame that stalls is closed after read_timeout_ms (2 s here).
    let mut c3 = edge.client().await;
    c3.send_bytes(&framed[..40]).await;
    assert!(
        c3.closed_within(6).await,
        "a stalled frame was not timed out"
    );
    let mut c4 = edge.client().await;
    assert_eq!(
        c4.exchange(&VALID.replace("VALID-1", "AFTER-CUT"))
            .await
            .msa1(),
        "AA"
    );
    assert!(
        edge.vitals()
            .await
            .iter()
            .all(|(k, _)| !k.contains("CUT-FRAME")),
        "a truncated frame was stored"
    );
    edge.stop().await;
}

#[tokio::test]
async fn oversized_message_is_rejected_and_the_connection_goes_on() {
    let edge = Edge::start(64 << 20, 4096).await;
    let mut c = edge.client().await;
    let mut big = VALID.replace("VALID-1", "BIG-1");
    for i in 0..200 {
        big.push_str(&format!(
            "OBX|{}|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.{i}|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F\n",
            12 + i
        ));
    }
    assert!(big.len() > 4096);
    let ack = c.exchange(&big).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AR", "BIG-1"), "{}", ack.raw);
    assert_eq!(ack.errs(), vec![(String::new(), "207".into(), "E".into())]);
    assert!(ack.err_texts()[0].contains("4096-byte limit"));
    assert!(edge.vitals().await.is_empty());
    let ack = c.exchange(VALID).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AA", "VALID-1"));
    assert_eq!(edge.stats.snapshot().framing_errors, 1);
    edge.stop().await;
}

#[tokio::test]
async fn resent_message_is_aa_again_without_duplicate_rows() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    assert_eq!(c.exchange(VALID).await.msa1(), "AA");
    let first = edge.vitals().await;
    // The same message again (a device that did not see the ACK), on a new connection.
    let mut c2 = edge.client().await;
    let ack = c2.exchange(VALID).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AA", "VALID-1"));
    let again = edge.vitals().await;
    assert_eq!(again.len(), first.len());
    assert_eq!(
        edge.node
            .outbox()
            .pending()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        first.len() as u64
    );
    let s = edge.stats.snapshot();
    assert_eq!((s.vitals_accepted, s.vitals_duplicate), (6, 6));
    // The partial case resent: the good ones are duplicates, the bad ones rejected again.
    assert_eq!(c.exchange(PARTIAL).await.msa1(), "AE");
    let n = edge.vitals().await.len();
    assert_eq!(c.exchange(PARTIAL).await.msa1(), "AE");
    assert_eq!(edge.vitals().await.len(), n);
    // A reused control id with different content is not mistaken for a resend.
    let reused = VALID.replace("|72|", "|73|");
    assert_eq!(c.exchange(&reused).await.msa1(), "AA");
    assert_eq!(edge.vitals().await.len(), n + 1);
    edge.stop().await;
}

#[tokio::test]
async fn outbox_full_is_ar_207_and_nothing_is_stored() {
    let edge = Edge::start(1 << 20, 1 << 20).await;
    let filler = |from: usize| -> Vec<Incoming> {
        (from..from + 500)
            .map(|i| Incoming {
                idempotency_key: format!("fill:{i}"),
                payload: Payload::Vital(VitalSign {
                    patient_id: "MRN9".into(),
                    location: Some(BedLocation {
                        ward: "7A".into(),
                        bed: "1".into(),
                    }),
                    device_id: "fill".into(),
                    metric_mdc: MDC_ECG_HEART_RATE,
                    value: 70.0,
                    unit_ucum: "/min".into(),
                    measured_at_unix_ms: 1_700_000_000_000 + i as i64,
                    ..Default::default()
                }),
            })
            .collect()
    };
    let mut n = 0;
    loop {
        match edge.node.accept(filler(n)).await {
            Ok(_) => n += 500,
            Err(AcceptError::Outbox(OutboxError::Full { .. })) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(n < 1_000_000, "the budget never took effect");
    }
    let before = edge.vitals().await.len();
    let mut c = edge.client().await;
    let ack = c.exchange(VALID).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AR", "VALID-1"), "{}", ack.raw);
    assert_eq!(ack.errs(), vec![(String::new(), "207".into(), "E".into())]);
    assert!(
        ack.err_texts()[0].contains("outbox full, resend later"),
        "{}",
        ack.raw
    );
    assert_eq!(edge.vitals().await.len(), before);
    edge.stop().await;
}

#[tokio::test]
async fn custom_delimiters_and_escapes_over_the_wire() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    let msg = VALID
        .replace('|', "#")
        .replace('^', "$")
        .replace("MSH#$~\\&#WardMon", "MSH#$~\\&#Ward\\S\\Mon");
    assert!(msg.starts_with("\nMSH#$~\\&#Ward\\S\\Mon$"), "{msg}");
    let ack = c.exchange(&msg).await;
    assert!(ack.raw.starts_with("MSH#$~\\&#"), "{}", ack.raw);
    let msa: Vec<&str> = ack
        .raw
        .split('\r')
        .nth(1)
        .unwrap_or("")
        .split('#')
        .collect();
    assert_eq!(msa, vec!["MSA", "AA", "VALID-1"], "{}", ack.raw);
    let vitals = edge.vitals().await;
    assert_eq!(vitals.len(), 6);
    assert!(
        vitals[0]
            .0
            .starts_with("hl7:Ward\\S\\Mon$0123456789ABCDEF$EUI-64:VALID-1:"),
        "{}",
        vitals[0].0
    );
    edge.stop().await;
}

#[tokio::test]
async fn shutdown_closes_open_connections() {
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    assert_eq!(c.exchange(VALID).await.msa1(), "AA");
    let addr = edge.addr;
    edge.stop().await;
    assert!(
        c.closed_within(5).await,
        "connection still open after shutdown"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

/// The Python interop script (hl7apy builds the messages, `hl7`/hl7apy read the ACKs) against this listener.
#[tokio::test]
async fn third_party_hl7apy_client_interoperates() {
    let has_hl7apy = std::process::Command::new("python3")
        .args(["-c", "import hl7apy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_hl7apy {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot import hl7apy: pip install -r tests/python/requirements.txt"
        );
        eprintln!(
            "\n!!!!!!!! SKIPPED third_party_hl7apy_client_interoperates: python3 cannot import hl7apy \
             (pip install -r tests/python/requirements.txt) !!!!!!!!\n"
        );
        return;
    }
    let edge = Edge::start(64 << 20, 1 << 20).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/hl7_interop.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("python3")
            .arg(&script)
            .arg(edge.addr.ip().to_string())
            .arg(edge.addr.port().to_string())
            .arg("7A")
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the interop script did not finish in 120 s"))
    .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "hl7_interop.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    // What the third-party client sent is in the outbox, normalized.
    let vitals = edge.vitals().await;
    let t = one(&vitals, MDC_TEMP_BODY);
    assert_eq!((t.value, t.unit_ucum.as_str()), (37.0, "Cel"), "98.6 °F");
    let bp = one(&vitals, MDC_PRESS_BLD_NONINV);
    assert_eq!(bp.components.len(), 3);
    assert_eq!(
        vitals
            .iter()
            .filter(|(_, v)| v.metric_mdc == MDC_ECG_HEART_RATE)
            .count(),
        2
    );
    edge.stop().await;
}

#[tokio::test]
async fn full_size_messages_are_processed_promptly_with_a_bounded_ack() {
    let edge = Edge::start(256 << 20, 1 << 20).await;
    let mut c = edge.client().await;
    let build = |id: &str, code: &str| {
        let mut msg = format!(
            "MSH|^~\\&|Bulk||||20240301101500+0000||ORU^R01|{id}|P|2.6\nPID|||MRN5\nPV1||I|7A^^9\n\
             OBR|1||||||20240301101400+0000\nOBX|1||69965^^MDC|1|||||||X|||||||BULK-1\n"
        );
        let mut i = 2;
        while msg.len() < (1 << 20) - 200 {
            msg.push_str(&format!(
                "OBX|{i}|NM|{code}^^MDC|1.1.{i}.1|{}|/min|||||F\n",
                60 + i % 50
            ));
            i += 1;
        }
        (msg, i - 2)
    };
    let started = std::time::Instant::now();
    let (bad, n_bad) = build("BULK-BAD", "999999");
    let ack = c.exchange(&bad).await;
    assert_eq!((ack.msa1(), ack.msa2()), ("AE", "BULK-BAD"));
    assert_eq!(ack.errs.len(), hl7::MAX_ERR_SEGMENTS);
    let last = ack.err_texts().pop().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "{} more observations were rejected",
            n_bad - (hl7::MAX_ERR_SEGMENTS - 1)
        )),
        "{last}"
    );
    let (good, n_good) = build("BULK-GOOD", "147842");
    let ack = c.exchange(&good).await;
    assert_eq!(
        (ack.msa1(), ack.msa2()),
        ("AA", "BULK-GOOD"),
        "{}",
        &ack.raw[..ack.raw.len().min(500)]
    );
    assert_eq!(edge.vitals().await.len(), n_good);
    assert!(n_good > 15_000, "{n_good}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "two full-size messages took {took:?}"
    );
    edge.stop().await;
}
