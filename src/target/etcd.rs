//! etcd access: endpoints, client TLS material, and clients with per-request deadlines.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// CA bundle, client certificate and key, held in memory. The key is never printed.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &self.cert_pem.as_ref().map(|c| c.len()))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Pem { what: &'static str, path: String },
    #[error("{0}")]
    Config(String),
    #[error("etcd {endpoint}: {message}")]
    Request { endpoint: String, message: String },
}

impl TlsMaterial {
    /// Reads the etcdctl-style files (`--etcd-cacert`, `--etcd-cert`, `--etcd-key`).
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, EtcdError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|source| EtcdError::Read { what, path: p.display().to_string(), source })
        };
        let ca_pem = read("CA bundle", ca)?;
        check_pem(&ca_pem, "certificate", ca)?;
        let cert_pem = cert.map(|p| read("client certificate", p)).transpose()?;
        if let (Some(c), Some(p)) = (&cert_pem, cert) {
            check_pem(c, "certificate", p)?;
        }
        let key_pem = key.map(|p| read("client key", p)).transpose()?;
        if let (Some(k), Some(p)) = (&key_pem, key) {
            check_pem(k, "private key", p)?;
        }
        if cert_pem.is_some() != key_pem.is_some() {
            return Err(EtcdError::Config("--etcd-cert and --etcd-key must be given together".into()));
        }
        Ok(Self { ca_pem, cert_pem, key_pem })
    }
}

fn check_pem(bytes: &[u8], what: &'static str, path: &Path) -> Result<(), EtcdError> {
    let text = String::from_utf8_lossy(bytes);
    let ok = match what {
        "certificate" => text.contains("-----BEGIN CERTIFICATE-----"),
        _ => text.contains("PRIVATE KEY-----"),
    };
    if ok {
        Ok(())
    } else {
        Err(EtcdError::Pem { what, path: path.display().to_string() })
    }
}

/// The etcd cluster as hadrill reaches it.
#[derive(Debug, Clone)]
pub struct EtcdTarget {
    /// Client URLs, `https://host:port` (or `http://` without TLS).
    pub endpoints: Vec<String>,
    pub tls: Option<TlsMaterial>,
    /// Deadline of every request (status, get, put…).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl EtcdTarget {
    pub fn new(endpoints: Vec<String>, tls: Option<TlsMaterial>) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoints given".into()));
        }
        let mut norm = Vec::new();
        for e in endpoints {
            let e = e.trim().trim_end_matches('/').to_string();
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"))
                .ok_or_else(|| EtcdError::Config(format!("etcd endpoint `{e}` must start with https:// or http://")))?;
            let (host, port) =
                rest.rsplit_once(':').ok_or_else(|| EtcdError::Config(format!("etcd endpoint `{e}` has no port")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(EtcdError::Config(format!("etcd endpoint `{e}` is not scheme://host:port")));
            }
            if e.starts_with("https://") && tls.is_none() {
                return Err(EtcdError::Config(format!("etcd endpoint `{e}` is https but no --etcd-cacert was given")));
            }
            norm.push(e);
        }
        Ok(Self {
            endpoints: norm,
            tls,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        })
    }

    fn options(&self, require_leader: bool) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
            .with_require_leader(require_leader);
        if let Some(t) = &self.tls {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&t.ca_pem));
            if let (Some(c), Some(k)) = (&t.cert_pem, &t.key_pem) {
                tls = tls.identity(Identity::from_pem(c, k));
            }
            o = o.with_tls(tls);
        }
        o
    }

    /// A client bound to one member's endpoint (status and reads "through" that member).
    pub async fn member_client(&self, endpoint: &str) -> Result<Client, EtcdError> {
        Client::connect([endpoint], Some(self.options(false)))
            .await
            .map_err(|e| EtcdError::Request { endpoint: endpoint.into(), message: describe(&e) })
    }

    /// A client bound to one member's endpoint, with or without require-leader (the write
    /// probe keeps one per member so that a dead member is skipped, not retried forever).
    pub async fn member_client_with(&self, endpoint: &str, require_leader: bool) -> Result<Client, EtcdError> {
        Client::connect([endpoint], Some(self.options(require_leader)))
            .await
            .map_err(|e| EtcdError::Request { endpoint: endpoint.into(), message: describe(&e) })
    }

    /// A client over every endpoint; `require_leader` makes requests fail fast without one.
    pub async fn cluster_client(&self, require_leader: bool) -> Result<Client, EtcdError> {
        Client::connect(&self.endpoints, Some(self.options(require_leader)))
            .await
            .map_err(|e| EtcdError::Request { endpoint: self.endpoints.join(","), message: describe(&e) })
    }

    /// `host:port` of an endpoint URL.
    pub fn authority(endpoint: &str) -> &str {
        endpoint.split_once("://").map(|(_, r)| r).unwrap_or(endpoint)
    }
}

/// One line for an etcd-client error (gRPC status message, not the Debug dump).
pub fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message();
            if msg.is_empty() {
                format!("{:?}", s.code())
            } else {
                format!("{:?}: {}", s.code(), msg)
            }
        }
        other => crate::exit::chain(other),
    }
}

/// Whether an error is the server (or the channel) being unavailable, worth a retry elsewhere.
pub fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}
