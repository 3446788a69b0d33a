//! Development PKI for Wardwatch, so nobody needs `openssl` to try the system.
//!
//! [`generate_dev_pki`] (what `wardwatch certs` runs) writes a hospital CA, a
//! cloud server certificate and one client certificate per edge into a
//! directory, all as PEM. Re-running it against the same directory reuses the
//! CA, so edges that already hold certificates stay trusted.
//!
//! Edge identity: every edge certificate carries the URI SAN
//! [`edge_identity_uri`] (`urn:wardwatch:edge:<edge_id>`); the cloud reads it
//! back from the verified peer certificate with [`uri_sans`] (or
//! [`edge_id_from_identity_uri`]) to map a connection to a registered edge.
//!
//! [`load_certs`] and [`load_private_key`] turn the PEM files into the types
//! rustls wants. [`issue_edge_cert_with_validity`] and
//! [`generate_foreign_ca_edge`] are test support for the negative cases
//! (expired certificate, untrusted issuer).

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// Common name of the development hospital CA written by [`generate_dev_pki`].
pub const CA_COMMON_NAME: &str = "Wardwatch Development Hospital CA";

/// Common name of the untrusted CA written by [`generate_foreign_ca_edge`].
pub const FOREIGN_CA_COMMON_NAME: &str = "Wardwatch Foreign Test CA (not trusted)";

/// Common name of the cloud server certificate written by [`generate_dev_pki`].
pub const CLOUD_COMMON_NAME: &str = "Wardwatch Development Cloud";

/// Prefix of the URI SAN that identifies an edge; see [`edge_identity_uri`].
pub const EDGE_IDENTITY_URI_PREFIX: &str = "urn:wardwatch:edge:";

const ORGANIZATION: &str = "Wardwatch";
const CA_VALIDITY_DAYS: i64 = 3652; // 10 years
const CLOUD_VALIDITY_DAYS: i64 = 731; // 2 years
const EDGE_VALIDITY_DAYS: i64 = 365; // 1 year
const MAX_EDGE_ID_LEN: usize = 64;

/// Errors from generating, loading or inspecting development PKI material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file (or creating a directory) failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Creating keys or certificates failed, or the request/existing material
    /// cannot be used to issue certificates.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// Input (PEM, DER, edge id) is malformed.
    #[error("parse error: {0}")]
    Parse(String),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e.to_string())
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to issue with [`generate_dev_pki`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevPkiRequest {
    /// Names the cloud server certificate is valid for: DNS names or IP
    /// literals (e.g. `"localhost"`, `"127.0.0.1"`, `"::1"`). At least one.
    pub cloud_hosts: Vec<String>,
    /// Edge ids to issue client certificates for (see [`edge_identity_uri`]
    /// for the allowed syntax). Duplicates are ignored.
    pub edge_ids: Vec<String>,
}

/// Where [`generate_dev_pki`] put everything (all files are PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPkiPaths {
    /// The PKI directory.
    pub dir: PathBuf,
    /// `ca.pem`: the hospital CA certificate (trust anchor for both sides).
    pub ca_cert: PathBuf,
    /// `ca.key`: the hospital CA private key (PKCS#8, mode 0600 on unix).
    pub ca_key: PathBuf,
    /// `cloud.pem`: the cloud server certificate.
    pub cloud_cert: PathBuf,
    /// `cloud.key`: the cloud server private key.
    pub cloud_key: PathBuf,
    /// Per requested edge, in request order: `(edge_id, edge-<id>.pem, edge-<id>.key)`.
    pub edges: Vec<(String, PathBuf, PathBuf)>,
}

/// Writes (or completes) a development PKI in `dir`, creating the directory if
/// it is missing.
///
/// * `ca.pem` / `ca.key`: hospital CA, ECDSA P-256, CN
///   [`CA_COMMON_NAME`], valid from now − 1 day for 10 years, basicConstraints
///   CA (path length 0), keyUsage keyCertSign + cRLSign.
/// * `cloud.pem` / `cloud.key`: server certificate signed by the CA with the
///   requested DNS/IP SANs, EKU serverAuth, valid 2 years.
/// * `edge-<edge_id>.pem` / `edge-<edge_id>.key`: client certificate per edge
///   signed by the CA, CN = edge id, URI SAN = [`edge_identity_uri`], EKU
///   clientAuth, valid 1 year.
///
/// If `ca.pem` and `ca.key` already exist the CA is reused (key and
/// certificate are loaded; they must match and the CA must be currently valid,
/// but it need not be one this function created) and only missing leaf certificates
/// are issued. An existing leaf is kept when both its files are present, its key
/// matches its certificate, it was issued by this CA and it is currently valid;
/// the cloud certificate additionally has to cover every requested host.
/// Anything else is reissued. If only one of `ca.pem`/`ca.key` exists this
/// fails rather than overwrite it. Private keys are written with mode 0600 on
/// unix; every file is written to a temporary name and renamed into place.
pub fn generate_dev_pki(dir: &Path, req: &DevPkiRequest) -> Result<DevPkiPaths, PkiError> {
    // Validate the whole request before touching the filesystem.
    let cloud_sans = parse_cloud_hosts(&req.cloud_hosts)?;
    let mut edge_ids: Vec<&str> = Vec::with_capacity(req.edge_ids.len());
    for id in &req.edge_ids {
        edge_identity_uri(id)?;
        if !edge_ids.contains(&id.as_str()) {
            edge_ids.push(id);
        }
    }

    fs::create_dir_all(dir).map_err(io_err(dir))?;

    let paths = DevPkiPaths {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        cloud_cert: dir.join("cloud.pem"),
        cloud_key: dir.join("cloud.key"),
        edges: edge_ids
            .iter()
            .map(|id| {
                let (cert, key) = edge_file_paths(dir, id);
                (id.to_string(), cert, key)
            })
            .collect(),
    };

    let (ca, ca_is_new) = match (paths.ca_cert.exists(), paths.ca_key.exists()) {
        (true, true) => (LoadedCa::load(&paths.ca_cert, &paths.ca_key)?, false),
        (false, false) => (
            LoadedCa::create(CA_COMMON_NAME, &paths.ca_cert, &paths.ca_key)?,
            true,
        ),
        (cert_exists, _) => {
            let (present, missing) = if cert_exists {
                (&paths.ca_cert, &paths.ca_key)
            } else {
                (&paths.ca_key, &paths.ca_cert)
            };
            return Err(PkiError::Generate(format!(
                "{} exists but {} does not; restore it or remove {} to create a new CA",
                present.display(),
                missing.display(),
                present.display()
            )));
        }
    };

    let reuse_cloud =
        !ca_is_new && leaf_is_reusable(&ca, &paths.cloud_cert, &paths.cloud_key, Some(&cloud_sans));
    if !reuse_cloud {
        let params = cloud_params(cloud_sans)?;
        ca.issue_leaf(&params, &paths.cloud_cert, &paths.cloud_key)?;
    }

    for (id, cert, key) in &paths.edges {
        if ca_is_new || !leaf_is_reusable(&ca, cert, key, None) {
            let (not_before, not_after) = validity_from_now(EDGE_VALIDITY_DAYS);
            let params = edge_params(id, not_before, not_after)?;
            ca.issue_leaf(&params, cert, key)?;
        }
    }

    Ok(paths)
}

/// The identity URI an edge certificate carries as its URI SAN:
/// `urn:wardwatch:edge:<edge_id>`.
///
/// `edge_id` must be 1–64 characters of `[A-Za-z0-9_-]`; anything else is a
/// [`PkiError::Parse`].
pub fn edge_identity_uri(edge_id: &str) -> Result<String, PkiError> {
    validate_edge_id(edge_id)?;
    Ok(format!("{EDGE_IDENTITY_URI_PREFIX}{edge_id}"))
}

/// The inverse of [`edge_identity_uri`]: the edge id in an identity URI, or
/// `None` if `uri` is not a well-formed Wardwatch edge identity.
pub fn edge_id_from_identity_uri(uri: &str) -> Option<&str> {
    let id = uri.strip_prefix(EDGE_IDENTITY_URI_PREFIX)?;
    validate_edge_id(id).ok()?;
    Some(id)
}

fn validate_edge_id(edge_id: &str) -> Result<(), PkiError> {
    let ok_chars = edge_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if edge_id.is_empty() || edge_id.len() > MAX_EDGE_ID_LEN || !ok_chars {
        return Err(PkiError::Parse(format!(
            "invalid edge id {edge_id:?}: must be 1-{MAX_EDGE_ID_LEN} characters of [A-Za-z0-9_-]"
        )));
    }
    Ok(())
}

/// Extracts the URI SANs from a DER certificate, in certificate order (empty
/// if it has no subjectAltName extension).
///
/// The cloud uses this on the verified peer certificate to map a connection to
/// a registered edge.
pub fn uri_sans(cert_der: &[u8]) -> Result<Vec<String>, PkiError> {
    let cert = parse_der(cert_der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(format!("bad subjectAltName extension: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Reads every `CERTIFICATE` block of a PEM file, for rustls. Fails if the
/// file has none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Parse(format!(
            "{}: no CERTIFICATE found in PEM",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first certificate of a PEM file (the leaf, by convention).
fn load_first_cert(path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    load_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Parse(format!("{}: no CERTIFICATE found in PEM", path.display())))
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file, for
/// rustls. Fails if the file has none.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| PkiError::Parse(format!("{}: {e}", path.display())))?
        .ok_or_else(|| PkiError::Parse(format!("{}: no private key found in PEM", path.display())))
}

/// Test support: issues `out_dir/edge-<edge_id>.pem` / `.key` (overwriting
/// them) with the given validity window, signed by the CA in `ca_dir`
/// (`ca.pem` + `ca.key`, e.g. from [`generate_dev_pki`]). Otherwise identical
/// to the edge certificates [`generate_dev_pki`] issues.
///
/// Pass a `not_after` in the past to get an expired certificate, or a
/// `not_before` in the future for a not-yet-valid one. Use an `out_dir` other
/// than the PKI directory unless you mean to replace that edge's certificate.
/// Returns `(cert_path, key_path)`.
pub fn issue_edge_cert_with_validity(
    ca_dir: &Path,
    out_dir: &Path,
    edge_id: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(PathBuf, PathBuf), PkiError> {
    validate_edge_id(edge_id)?;
    if not_before >= not_after {
        return Err(PkiError::Generate(format!(
            "not_before ({not_before}) must be earlier than not_after ({not_after})"
        )));
    }
    let ca = LoadedCa::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"))?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let (cert, key) = edge_file_paths(out_dir, edge_id);
    ca.issue_leaf(&edge_params(edge_id, not_before, not_after)?, &cert, &key)?;
    Ok((cert, key))
}

/// Test support: creates a whole separate CA ([`FOREIGN_CA_COMMON_NAME`],
/// written as `out_dir/foreign-ca.pem` / `foreign-ca.key`, overwriting) and an
/// otherwise valid edge client certificate for `edge_id` signed by it
/// (`out_dir/edge-<edge_id>.pem` / `.key`, overwriting). A cloud that trusts
/// only the hospital CA must reject it as coming from an unknown issuer.
/// Returns the edge's `(cert_path, key_path)`.
pub fn generate_foreign_ca_edge(
    out_dir: &Path,
    edge_id: &str,
) -> Result<(PathBuf, PathBuf), PkiError> {
    validate_edge_id(edge_id)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let ca = LoadedCa::create(
        FOREIGN_CA_COMMON_NAME,
        &out_dir.join("foreign-ca.pem"),
        &out_dir.join("foreign-ca.key"),
    )?;
    let (cert, key) = edge_file_paths(out_dir, edge_id);
    let (not_before, not_after) = validity_from_now(EDGE_VALIDITY_DAYS);
    ca.issue_leaf(&edge_params(edge_id, not_before, not_after)?, &cert, &key)?;
    Ok((cert, key))
}

// ---------------------------------------------------------------------------
// CA handling

/// A CA ready to sign, plus what is needed to recognise leaves it issued.
struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    /// DER of the CA's subject name (a leaf's issuer must equal it).
    subject_der: Vec<u8>,
    /// The CA's subjectKeyIdentifier, if it has one.
    key_id: Option<Vec<u8>>,
}

impl LoadedCa {
    /// Generates a new self-signed CA, writes it, and returns it loaded.
    fn create(common_name: &str, cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let key = new_key()?;
        let (not_before, not_after) = validity_from_now(CA_VALIDITY_DAYS);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        write_file(key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(cert_path, cert.pem().as_bytes(), false)?;
        Self::from_parts(cert.der(), key, &cert_path.display().to_string())
    }

    /// Loads an existing CA from PEM files.
    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert = load_first_cert(cert_path)?;
        let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            PkiError::Parse(format!(
                "{}: not a usable private key: {e}",
                key_path.display()
            ))
        })?;
        Self::from_parts(&cert, key, &cert_path.display().to_string())
    }

    fn from_parts(cert_der: &[u8], key: KeyPair, what: &str) -> Result<Self, PkiError> {
        let cert = parse_der(cert_der)?;
        if !cert.is_ca() {
            return Err(PkiError::Generate(format!(
                "{what} is not a CA certificate"
            )));
        }
        if !cert.validity().is_valid() {
            return Err(PkiError::Generate(format!(
                "CA certificate {what} is not currently valid (not before {}, not after {}); \
                 remove the CA files to create a new one",
                cert.validity().not_before,
                cert.validity().not_after
            )));
        }
        if !key_matches_cert(&key, &cert) {
            return Err(PkiError::Generate(format!(
                "the CA private key does not belong to the CA certificate {what}"
            )));
        }
        let key_id = subject_key_id(&cert);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name_to_rcgen(cert.subject())?;
        params.key_identifier_method = match &key_id {
            Some(id) => KeyIdMethod::PreSpecified(id.clone()),
            None => KeyIdMethod::Sha256,
        };
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Self {
            subject_der: cert.subject().as_raw().to_vec(),
            key_id,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a leaf with a fresh P-256 key and writes key then certificate.
    fn issue_leaf(
        &self,
        params: &CertificateParams,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(), PkiError> {
        let key = new_key()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_file(key_path, key.serialize_pem().as_bytes(), true)?;
        write_file(cert_path, cert.pem().as_bytes(), false)?;
        Ok(())
    }

    /// Whether `cert` names this CA as its issuer (subject DN, and key id when
    /// both sides carry one).
    fn issued(&self, cert: &X509Certificate<'_>) -> bool {
        if cert.issuer().as_raw() != self.subject_der.as_slice() {
            return false;
        }
        match (&self.key_id, authority_key_id(cert)) {
            (Some(ours), Some(theirs)) => *ours == theirs,
            _ => true,
        }
    }
}

/// Whether an existing leaf can be kept: see [`generate_dev_pki`]. Any
/// problem reading it just means "reissue".
fn leaf_is_reusable(
    ca: &LoadedCa,
    cert_path: &Path,
    key_path: &Path,
    required_sans: Option<&[SanType]>,
) -> bool {
    let Ok(cert_der) = load_first_cert(cert_path) else {
        return false;
    };
    let Ok(key_pem) = fs::read_to_string(key_path) else {
        return false;
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return false;
    };
    let Ok(cert) = parse_der(&cert_der) else {
        return false;
    };
    if !cert.validity().is_valid() || !ca.issued(&cert) || !key_matches_cert(&key, &cert) {
        return false;
    }
    match required_sans {
        None => true,
        Some(required) => {
            let Ok(Some(san)) = cert.subject_alternative_name() else {
                return false;
            };
            let names = &san.value.general_names;
            required.iter().all(|want| {
                names.iter().any(|have| match (want, have) {
                    (SanType::DnsName(w), GeneralName::DNSName(h)) => {
                        w.as_str().eq_ignore_ascii_case(h)
                    }
                    (SanType::IpAddress(w), GeneralName::IPAddress(h)) => {
                        ip_from_bytes(h) == Some(*w)
                    }
                    _ => false,
                })
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Certificate parameters

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// `(now - 1 day, now + days)`: the day of backdating absorbs clock skew.
fn validity_from_now(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + Duration::days(days))
}

fn parse_cloud_hosts(hosts: &[String]) -> Result<Vec<SanType>, PkiError> {
    if hosts.is_empty() {
        return Err(PkiError::Generate(
            "at least one cloud host (DNS name or IP address) is required".into(),
        ));
    }
    let mut sans: Vec<SanType> = Vec::with_capacity(hosts.len());
    for raw in hosts {
        let host = raw.trim();
        // Accept "[::1]" as well as "::1".
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let san = if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            let valid_dns = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                });
            if !valid_dns {
                return Err(PkiError::Generate(format!(
                    "invalid cloud host {raw:?}: expected a DNS name or an IP address"
                )));
            }
            SanType::DnsName(Ia5String::try_from(host.to_ascii_lowercase())?)
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn cloud_params(sans: Vec<SanType>) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = validity_from_now(CLOUD_VALIDITY_DAYS);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(CLOUD_COMMON_NAME);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn edge_params(
    edge_id: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let uri = edge_identity_uri(edge_id)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(edge_id);
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri)?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn edge_file_paths(dir: &Path, edge_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("edge-{edge_id}.pem")),
        dir.join(format!("edge-{edge_id}.key")),
    )
}

// ---------------------------------------------------------------------------
// X.509 inspection

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (_rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Parse(format!("not a DER X.509 certificate: {e}")))?;
    Ok(cert)
}

fn key_matches_cert(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Rebuilds an X.509 name as an rcgen name, keeping each attribute's string
/// type so that certificates issued from it name the CA byte-for-byte (which
/// is how webpki chains them).
fn name_to_rcgen(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let unsupported = || PkiError::Parse("CA subject name uses an unsupported encoding".into());
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            // Empty or multi-valued RDNs cannot be represented by rcgen.
            return Err(unsupported());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| unsupported())?;
        let dn_value = match value.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(PrintableString::try_from(text)?),
            Tag::Ia5String => DnValue::Ia5String(Ia5String::try_from(text)?),
            _ => return Err(unsupported()),
        };
        dn.push(DnType::from_oid(&oid), dn_value);
    }
    Ok(dn)
}

// ---------------------------------------------------------------------------
// Files

/// Writes `contents` to a temporary file next to `path` and renames it into
/// place; `secret` files get mode 0600 on unix.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    use std::io::Write;

    let file_name = path
        .file_name()
        .ok_or_else(|| PkiError::Generate(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);

    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    #[cfg(unix)]
    if secret {
        // `mode` only applies when the file is created; a stale temp file
        // could have looser permissions.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}
