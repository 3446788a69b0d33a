//! Which rest-hook endpoints the cloud will call, and the HTTP client that calls them.
//!
//! Server-side request forgery is the risk: a client that may create subscriptions could point the cloud at
//! internal services. So:
//!
//! - the endpoint must be `https://` (plain `http://` only to loopback, and only with the development setting
//!   `allow_loopback_http`); no user info, no fragment;
//! - loopback (unless that setting is on), link-local (169.254.0.0/16 with cloud metadata services, fe80::/10),
//!   unspecified, broadcast and multicast addresses are refused, both when written as IP literals in the URL and
//!   when a host name *resolves* to them at delivery time (the client's resolver filters every lookup, so DNS
//!   rebinding does not get around the check);
//! - with `allowed_hosts` set, only those hosts are accepted;
//! - redirects are not followed and proxies from the environment are not used;
//! - only the hospital CA and the configured extra CAs are trusted for TLS.
//!
//! Private addresses (10/8, 172.16/12, 192.168/16) are allowed: hospital EHRs live there. Restrict with
//! `allowed_hosts`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

use super::SubscriptionsConfig;

/// Whether the cloud must never connect to `ip`.
pub fn forbidden_ip(ip: IpAddr, allow_loopback: bool) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return !allow_loopback;
    }
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => a.eq_ignore_ascii_case(host),
        })
}

/// Checks a rest-hook endpoint against the rules above; returns the parsed URL or why it is refused.
pub fn validate_endpoint(raw: &str, cfg: &SubscriptionsConfig) -> Result<Url, String> {
    if raw.len() > 2048 {
        return Err("channel.endpoint is longer than 2048 characters".into());
    }
    let url = Url::parse(raw).map_err(|e| format!("channel.endpoint {raw:?} is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "channel.endpoint must not carry user info; use channel.header for credentials".into(),
        );
    }
    if url.fragment().is_some() {
        return Err("channel.endpoint must not have a fragment".into());
    }
    let host = url
        .host_str()
        .ok_or_else(|| "channel.endpoint has no host".to_string())?
        .to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<IpAddr> = bare.parse().ok();
    let loopback =
        host == "localhost" || host.ends_with(".localhost") || ip.is_some_and(|i| i.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback && cfg.allow_loopback_http => {}
        "http" => {
            return Err(
                "channel.endpoint must be https:// (plain http is allowed only to loopback, in development)"
                    .into(),
            );
        }
        other => return Err(format!("channel.endpoint scheme {other:?} is not https")),
    }
    if loopback && !cfg.allow_loopback_http {
        return Err("channel.endpoint must not be a loopback address".into());
    }
    if let Some(ip) = ip
        && forbidden_ip(ip, cfg.allow_loopback_http)
    {
        return Err(format!(
            "channel.endpoint address {ip} is not allowed (link-local, unspecified, broadcast or multicast)"
        ));
    }
    if !host_allowed(&host, &cfg.allowed_hosts) {
        return Err(format!(
            "channel.endpoint host {host} is not among the allowed hosts of this server"
        ));
    }
    Ok(url)
}

/// A resolver that drops every address the cloud must not connect to, and fails if none is left.
#[derive(Debug)]
struct CheckingResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !forbidden_ip(a.ip(), allow_loopback))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address the cloud may call").into());
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// The delivery client: TLS with `roots` only (ring), HTTP/1.1, no redirects, no proxies, checking resolver.
pub fn client(
    roots: rustls::RootCertStore,
    allow_loopback: bool,
) -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckingResolver { allow_loopback }))
        .user_agent("wardwatch-subscriptions")
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTPS server on loopback with `pki`'s server certificate, answering 200 to one request per connection.
    async fn https_server(pki: &crate::pki::DevPkiPaths) -> SocketAddr {
        let cfg = crate::tls::api_server_config(&pki.cloud_cert, &pki.cloud_key).expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut chain = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        chain
    }

    #[tokio::test]
    async fn the_delivery_client_trusts_only_the_configured_cas() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let req = crate::pki::DevPkiRequest {
            cloud_hosts: vec!["localhost".into()],
            edge_ids: Vec::new(),
        };
        let ours = crate::pki::generate_dev_pki(&dir.path().join("ours"), &req).expect("pki");
        let foreign = crate::pki::generate_dev_pki(&dir.path().join("foreign"), &req).expect("pki");
        let addr = https_server(&ours).await;
        let url = format!("https://localhost:{}/hook", addr.port());
        let roots = |p: &crate::pki::DevPkiPaths| {
            let mut r = rustls::RootCertStore::empty();
            for c in crate::pki::load_certs(&p.ca_cert).expect("ca") {
                r.add(c).expect("root");
            }
            r
        };
        let trusting = client(roots(&ours), true).expect("client");
        let resp = trusting
            .post(&url)
            .body("{}")
            .send()
            .await
            .expect("delivered");
        assert!(resp.status().is_success());
        let stranger = client(roots(&foreign), true).expect("client");
        let err = stranger
            .post(&url)
            .body("{}")
            .send()
            .await
            .expect_err("a server certificate of another CA is refused");
        let chain = error_chain(&err);
        assert!(chain.contains("invalid peer certificate"), "{chain}");
        let no_loopback = client(roots(&ours), false).expect("client");
        let err = no_loopback
            .post(&url)
            .body("{}")
            .send()
            .await
            .expect_err("localhost resolves to loopback only");
        let chain = error_chain(&err);
        assert!(chain.contains("no address the cloud may call"), "{chain}");
    }

    #[test]
    fn endpoints_are_checked_for_ssrf() {
        let prod = SubscriptionsConfig::default();
        let dev = SubscriptionsConfig {
            allow_loopback_http: true,
            ..SubscriptionsConfig::default()
        };
        assert!(validate_endpoint("https://ehr.hospital.example/hook", &prod).is_ok());
        assert!(validate_endpoint("https://10.1.2.3:8443/hook", &prod).is_ok());
        for bad in [
            "http://ehr.hospital.example/hook",
            "http://127.0.0.1:9000/hook",
            "https://127.0.0.1/hook",
            "https://localhost/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[fe80::1]/x",
            "https://0.0.0.0/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://user:pw@ehr.example/x",
            "https://ehr.example/x#frag",
            "ftp://ehr.example/x",
            "not a url",
        ] {
            assert!(validate_endpoint(bad, &prod).is_err(), "{bad}");
        }
        assert!(validate_endpoint("http://127.0.0.1:9000/hook", &dev).is_ok());
        assert!(validate_endpoint("http://localhost:9000/hook", &dev).is_ok());
        assert!(validate_endpoint("http://10.0.0.1/hook", &dev).is_err());
        assert!(validate_endpoint("https://169.254.169.254/", &dev).is_err());
        let listed = SubscriptionsConfig {
            allowed_hosts: vec!["ehr.example".into(), "*.hospital.example".into()],
            ..SubscriptionsConfig::default()
        };
        assert!(validate_endpoint("https://ehr.example/x", &listed).is_ok());
        assert!(validate_endpoint("https://a.hospital.example/x", &listed).is_ok());
        assert!(validate_endpoint("https://hospital.example/x", &listed).is_err());
        assert!(validate_endpoint("https://evilhospital.example/x", &listed).is_err());
        assert!(validate_endpoint("https://other.example/x", &listed).is_err());
    }
}
