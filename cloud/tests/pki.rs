//! Integration tests for the development PKI (`wardwatch_cloud::pki`),
//! including real mutual-TLS handshakes run in memory with rustls.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
};
use time::{Duration, OffsetDateTime};
use wardwatch_cloud::pki::{
    DevPkiPaths, DevPkiRequest, PkiError, edge_id_from_identity_uri, edge_identity_uri,
    generate_dev_pki, generate_foreign_ca_edge, issue_edge_cert_with_validity, load_certs,
    load_private_key, uri_sans,
};

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn request(edges: &[&str]) -> DevPkiRequest {
    DevPkiRequest {
        cloud_hosts: vec!["localhost".into(), "127.0.0.1".into()],
        edge_ids: edges.iter().map(|s| s.to_string()).collect(),
    }
}

fn edge<'a>(paths: &'a DevPkiPaths, id: &str) -> (&'a Path, &'a Path) {
    let (_, cert, key) = paths
        .edges
        .iter()
        .find(|(e, _, _)| e == id)
        .unwrap_or_else(|| panic!("edge {id} missing from {paths:?}"));
    (cert, key)
}

/// Which side of the handshake reported the error (the errors are read
/// through `Debug` in assertion messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Failure {
    Server(rustls::Error),
    Client(rustls::Error),
}

/// Moves all pending TLS bytes from one side to the other. Returns whether
/// anything was moved.
fn pump(
    from: &mut impl FnMut(&mut Vec<u8>) -> bool,
    to: &mut impl FnMut(&[u8]) -> Result<(), rustls::Error>,
) -> Result<bool, rustls::Error> {
    let mut buf = Vec::new();
    if !from(&mut buf) {
        return Ok(false);
    }
    to(&buf)?;
    Ok(true)
}

/// Runs a mutual-TLS handshake in memory: the cloud side (ServerConfig with a
/// WebPkiClientVerifier over ca.pem, serving cloud.pem) against a client that
/// trusts ca.pem and authenticates with `client_cert`/`client_key`. On success
/// sends one message client -> server and returns the server's view of the
/// client certificate chain's leaf (DER).
fn mtls_handshake(
    pki: &DevPkiPaths,
    server_name: &str,
    client_cert: &Path,
    client_key: &Path,
) -> Result<Vec<u8>, Failure> {
    install_provider();
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&pki.ca_cert).expect("ca.pem") {
        roots.add(cert).expect("add CA root");
    }
    let roots = Arc::new(roots);

    let verifier = WebPkiClientVerifier::builder(roots.clone())
        .build()
        .expect("client verifier");
    let server_config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&pki.cloud_cert).expect("cloud.pem"),
            load_private_key(&pki.cloud_key).expect("cloud.key"),
        )
        .expect("server config");
    let client_config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            load_certs(client_cert).expect("client cert"),
            load_private_key(client_key).expect("client key"),
        )
        .expect("client config");

    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let mut client = ClientConnection::new(Arc::new(client_config), name).expect("client");
    let mut server = ServerConnection::new(Arc::new(server_config)).expect("server");

    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100, "handshake did not converge");

        let c2s = pump(
            &mut |buf| {
                let mut moved = false;
                while client.wants_write() {
                    moved |= client.write_tls(buf).expect("client write_tls") > 0;
                }
                moved
            },
            &mut |bytes| {
                let mut rd = bytes;
                while !rd.is_empty() {
                    server.read_tls(&mut rd).expect("server read_tls");
                    server.process_new_packets()?;
                }
                Ok(())
            },
        );
        if let Err(e) = c2s {
            return Err(Failure::Server(e));
        }
        let c2s = c2s.unwrap_or(false);

        let s2c = pump(
            &mut |buf| {
                let mut moved = false;
                while server.wants_write() {
                    moved |= server.write_tls(buf).expect("server write_tls") > 0;
                }
                moved
            },
            &mut |bytes| {
                let mut rd = bytes;
                while !rd.is_empty() {
                    client.read_tls(&mut rd).expect("client read_tls");
                    client.process_new_packets()?;
                }
                Ok(())
            },
        );
        let s2c = s2c.map_err(Failure::Client)?;

        if !client.is_handshaking() && !server.is_handshaking() && !c2s && !s2c {
            break;
        }
    }

    // Application data flows, i.e. the server really accepted the client.
    client.writer().write_all(b"hello cloud").expect("write");
    let mut buf = Vec::new();
    client.write_tls(&mut buf).expect("client write_tls");
    let mut rd = buf.as_slice();
    while !rd.is_empty() {
        server.read_tls(&mut rd).expect("server read_tls");
        server.process_new_packets().map_err(Failure::Server)?;
    }
    let mut got = [0u8; 11];
    server.reader().read_exact(&mut got).expect("server read");
    assert_eq!(&got, b"hello cloud");

    let peer = server
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server saw a client certificate");
    Ok(peer.to_vec())
}

#[test]
fn generates_all_files_with_expected_identities() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki"); // does not exist yet
    let paths = generate_dev_pki(&pki_dir, &request(&["ward-3a", "icu_1"])).unwrap();

    assert_eq!(paths.dir, pki_dir);
    assert_eq!(paths.ca_cert, pki_dir.join("ca.pem"));
    assert_eq!(paths.ca_key, pki_dir.join("ca.key"));
    assert_eq!(paths.cloud_cert, pki_dir.join("cloud.pem"));
    assert_eq!(paths.cloud_key, pki_dir.join("cloud.key"));
    assert_eq!(
        paths.edges,
        vec![
            (
                "ward-3a".to_string(),
                pki_dir.join("edge-ward-3a.pem"),
                pki_dir.join("edge-ward-3a.key")
            ),
            (
                "icu_1".to_string(),
                pki_dir.join("edge-icu_1.pem"),
                pki_dir.join("edge-icu_1.key")
            ),
        ]
    );
    for p in [
        &paths.ca_cert,
        &paths.ca_key,
        &paths.cloud_cert,
        &paths.cloud_key,
    ]
    .into_iter()
    .chain(paths.edges.iter().flat_map(|(_, c, k)| [c, k]))
    {
        assert!(p.is_file(), "{} missing", p.display());
    }
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&pki_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (cert, key) = edge(&paths, "ward-3a");
    let der = load_certs(cert).unwrap();
    assert_eq!(der.len(), 1);
    assert_eq!(
        uri_sans(&der[0]).unwrap(),
        vec!["urn:wardwatch:edge:ward-3a".to_string()]
    );
    assert_eq!(
        edge_id_from_identity_uri(&uri_sans(&der[0]).unwrap()[0]),
        Some("ward-3a")
    );
    load_private_key(key).unwrap();

    // CA and cloud certs carry no URI SAN.
    assert!(
        uri_sans(&load_certs(&paths.cloud_cert).unwrap()[0])
            .unwrap()
            .is_empty()
    );
    assert!(
        uri_sans(&load_certs(&paths.ca_cert).unwrap()[0])
            .unwrap()
            .is_empty()
    );

    // Certificate details.
    let ca_der = &load_certs(&paths.ca_cert).unwrap()[0];
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(
        ca.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "Wardwatch Development Hospital CA"
    );
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign());
    let ca_days =
        (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400;
    assert!((3650..=3654).contains(&ca_days), "{ca_days}");

    let (_, edge_cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
    assert_eq!(
        edge_cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "ward-3a"
    );
    assert_eq!(edge_cert.issuer().as_raw(), ca.subject().as_raw());
    let eku = edge_cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    let cloud_der = &load_certs(&paths.cloud_cert).unwrap()[0];
    let (_, cloud) = x509_parser::parse_x509_certificate(cloud_der).unwrap();
    let eku = cloud.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let san = cloud.subject_alternative_name().unwrap().unwrap().value;
    use x509_parser::extensions::GeneralName;
    assert!(
        san.general_names
            .iter()
            .any(|n| matches!(n, GeneralName::DNSName("localhost"))),
        "{san:?}"
    );
    assert!(
        san.general_names
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress([127, 0, 0, 1]))),
        "{san:?}"
    );
}

#[cfg(unix)]
#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_pki(dir.path(), &request(&["e1"])).unwrap();
    for key in [&paths.ca_key, &paths.cloud_key, &paths.edges[0].2] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let mode = std::fs::metadata(&paths.ca_cert)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn rerun_reuses_ca_and_existing_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_dev_pki(dir.path(), &request(&["e1"])).unwrap();
    let ca_before = std::fs::read(&first.ca_cert).unwrap();
    let ca_key_before = std::fs::read(&first.ca_key).unwrap();
    let cloud_before = std::fs::read(&first.cloud_cert).unwrap();
    let e1_before = std::fs::read(&first.edges[0].1).unwrap();

    let second = generate_dev_pki(dir.path(), &request(&["e1", "e2", "e1"])).unwrap();
    assert_eq!(std::fs::read(&second.ca_cert).unwrap(), ca_before);
    assert_eq!(std::fs::read(&second.ca_key).unwrap(), ca_key_before);
    assert_eq!(std::fs::read(&second.cloud_cert).unwrap(), cloud_before);
    assert_eq!(second.edges.len(), 2, "duplicates are ignored");
    let (e1_cert, _) = edge(&second, "e1");
    assert_eq!(
        std::fs::read(e1_cert).unwrap(),
        e1_before,
        "existing edge kept"
    );
    let (e2_cert, e2_key) = edge(&second, "e2");
    assert!(e2_cert.is_file() && e2_key.is_file());

    // Both the old and the new edge are trusted by the (unchanged) cloud.
    for id in ["e1", "e2"] {
        let (cert, key) = edge(&second, id);
        let peer = mtls_handshake(&second, "localhost", cert, key)
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        assert_eq!(
            uri_sans(&peer).unwrap(),
            vec![edge_identity_uri(id).unwrap()]
        );
    }

    // Asking for an extra host reissues only the cloud certificate.
    let mut req = request(&["e1", "e2"]);
    req.cloud_hosts.push("cloud.hospital.test".into());
    let third = generate_dev_pki(dir.path(), &req).unwrap();
    assert_eq!(std::fs::read(&third.ca_cert).unwrap(), ca_before);
    assert_ne!(std::fs::read(&third.cloud_cert).unwrap(), cloud_before);
    assert_eq!(std::fs::read(edge(&third, "e1").0).unwrap(), e1_before);
    let (cert, key) = edge(&third, "e1");
    mtls_handshake(&third, "cloud.hospital.test", cert, key).unwrap();
}

#[test]
fn refuses_half_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_pki(dir.path(), &request(&[])).unwrap();
    std::fs::remove_file(&paths.ca_key).unwrap();
    let ca_before = std::fs::read(&paths.ca_cert).unwrap();
    let err = generate_dev_pki(dir.path(), &request(&["e1"])).unwrap_err();
    assert!(matches!(err, PkiError::Generate(_)), "{err:?}");
    assert_eq!(std::fs::read(&paths.ca_cert).unwrap(), ca_before);
}

#[test]
fn invalid_input_is_rejected() {
    for bad in [
        "",
        "has space",
        "slash/edge",
        "dot.edge",
        "ümlaut",
        &"x".repeat(65),
    ] {
        assert!(
            matches!(edge_identity_uri(bad), Err(PkiError::Parse(_))),
            "{bad:?} accepted"
        );
    }
    assert_eq!(
        edge_identity_uri(&"x".repeat(64)).unwrap(),
        format!("urn:wardwatch:edge:{}", "x".repeat(64))
    );
    assert_eq!(
        edge_identity_uri("Ward_7-b").unwrap(),
        "urn:wardwatch:edge:Ward_7-b"
    );
    assert_eq!(edge_id_from_identity_uri("urn:wardwatch:edge:a/b"), None);
    assert_eq!(edge_id_from_identity_uri("urn:other:edge:a"), None);

    // A bad edge id fails the whole request before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let err = generate_dev_pki(&pki_dir, &request(&["ok", "not ok"])).unwrap_err();
    assert!(matches!(err, PkiError::Parse(_)), "{err:?}");
    assert!(!pki_dir.exists());

    let no_hosts = DevPkiRequest {
        cloud_hosts: vec![],
        edge_ids: vec!["e1".into()],
    };
    assert!(generate_dev_pki(&pki_dir, &no_hosts).is_err());
    let bad_host = DevPkiRequest {
        cloud_hosts: vec!["bad host".into()],
        edge_ids: vec![],
    };
    assert!(generate_dev_pki(&pki_dir, &bad_host).is_err());

    assert!(matches!(
        uri_sans(b"not a certificate"),
        Err(PkiError::Parse(_))
    ));
}

#[test]
fn load_helpers_report_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    assert!(matches!(load_certs(&missing), Err(PkiError::Io { .. })));
    assert!(matches!(
        load_private_key(&missing),
        Err(PkiError::Io { .. })
    ));

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    assert!(matches!(load_certs(&junk), Err(PkiError::Parse(_))));
    assert!(matches!(load_private_key(&junk), Err(PkiError::Parse(_))));
}

#[test]
fn mtls_handshake_accepts_issued_edge() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_pki(dir.path(), &request(&["ward-3a"])).unwrap();
    let (cert, key) = edge(&paths, "ward-3a");

    let peer = mtls_handshake(&paths, "localhost", cert, key).unwrap();
    assert_eq!(
        uri_sans(&peer).unwrap(),
        vec!["urn:wardwatch:edge:ward-3a".to_string()]
    );
    // The IP SAN works too.
    mtls_handshake(&paths, "127.0.0.1", cert, key).unwrap();
}

#[test]
fn mtls_handshake_rejects_expired_edge() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_pki(&dir.path().join("pki"), &request(&[])).unwrap();
    let now = OffsetDateTime::now_utc();
    let (cert, key) = issue_edge_cert_with_validity(
        &paths.dir,
        &dir.path().join("expired"),
        "old-edge",
        now - Duration::days(30),
        now - Duration::days(1),
    )
    .unwrap();
    // Same CA and identity, only the dates differ.
    let der = load_certs(&cert).unwrap();
    assert_eq!(
        uri_sans(&der[0]).unwrap(),
        vec!["urn:wardwatch:edge:old-edge".to_string()]
    );

    match mtls_handshake(&paths, "localhost", &cert, &key) {
        Err(Failure::Server(e)) => {
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::Expired | CertificateError::ExpiredContext { .. }
                    )
                ),
                "{e:?}"
            );
            assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
        }
        other => panic!("expected the server to reject the expired cert, got {other:?}"),
    }

    // Sanity: the same CA with a current validity window is accepted.
    let (cert, key) = issue_edge_cert_with_validity(
        &paths.dir,
        &dir.path().join("current"),
        "old-edge",
        now - Duration::days(1),
        now + Duration::days(1),
    )
    .unwrap();
    mtls_handshake(&paths, "localhost", &cert, &key).unwrap();

    // Inverted windows are refused.
    assert!(
        issue_edge_cert_with_validity(
            &paths.dir,
            &dir.path().join("bad"),
            "x",
            now,
            now - Duration::days(1),
        )
        .is_err()
    );
}

#[test]
fn mtls_handshake_rejects_foreign_ca() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_pki(&dir.path().join("pki"), &request(&[])).unwrap();
    let (cert, key) = generate_foreign_ca_edge(&dir.path().join("foreign"), "intruder").unwrap();
    assert!(dir.path().join("foreign/foreign-ca.pem").is_file());
    assert_eq!(
        uri_sans(&load_certs(&cert).unwrap()[0]).unwrap(),
        vec!["urn:wardwatch:edge:intruder".to_string()]
    );

    match mtls_handshake(&paths, "localhost", &cert, &key) {
        Err(Failure::Server(e)) => {
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                ),
                "{e:?}"
            );
            let msg = e.to_string().to_lowercase().replace([' ', '_'], "");
            assert!(msg.contains("unknownissuer"), "{e}");
        }
        other => panic!("expected the server to reject the foreign cert, got {other:?}"),
    }
}

#[test]
fn rerun_replaces_unusable_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_pki(dir.path(), &request(&["e1"])).unwrap();
    let (cert, key) = (paths.edges[0].1.clone(), paths.edges[0].2.clone());

    // An expired edge certificate in the PKI directory is reissued on re-run.
    let now = OffsetDateTime::now_utc();
    issue_edge_cert_with_validity(
        &paths.dir,
        &paths.dir,
        "e1",
        now - Duration::days(10),
        now - Duration::days(2),
    )
    .unwrap();
    assert!(mtls_handshake(&paths, "localhost", &cert, &key).is_err());
    generate_dev_pki(dir.path(), &request(&["e1"])).unwrap();
    mtls_handshake(&paths, "localhost", &cert, &key).unwrap();

    // A certificate whose key was replaced is reissued too.
    let other = generate_dev_pki(&dir.path().join("other"), &request(&["e1"])).unwrap();
    std::fs::copy(&other.edges[0].2, &key).unwrap();
    generate_dev_pki(dir.path(), &request(&["e1"])).unwrap();
    mtls_handshake(&paths, "localhost", &cert, &key).unwrap();

    // A new CA (old one deleted) reissues every leaf, so everything chains to it.
    let ca_before = std::fs::read(&paths.ca_cert).unwrap();
    std::fs::remove_file(&paths.ca_cert).unwrap();
    std::fs::remove_file(&paths.ca_key).unwrap();
    generate_dev_pki(dir.path(), &request(&["e1"])).unwrap();
    assert_ne!(std::fs::read(&paths.ca_cert).unwrap(), ca_before);
    mtls_handshake(&paths, "localhost", &cert, &key).unwrap();
}
