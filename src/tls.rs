//! Direct TLS handshakes (rustls) that name why a peer refused us or we refused it.
//!
//! etcd-client (gRPC) reports a refused client certificate only as "operation was canceled"
//! or "transport error". A handshake of our own, followed by one request and one read, gets
//! the server's TLS alert: with TLS 1.3 the server checks our certificate only after the
//! client's side of the handshake is done, so its refusal arrives on the first read.
//! [`mint`] makes the client certificates the `certs` suite presents.

pub mod mint;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::target::EtcdTarget;

/// Why a handshake could not even be attempted (bad input), or a chain could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("endpoint `{0}` is not https://host:port")]
    Endpoint(String),
    #[error("{what}: no usable PEM found")]
    Pem { what: &'static str },
    #[error("build a TLS client: {0}")]
    Config(#[source] rustls::Error),
    #[error("{endpoint}: {outcome}")]
    Handshake { endpoint: String, outcome: Box<HandshakeOutcome> },
    #[error("{endpoint}: the server presented no certificate")]
    NoCertificate { endpoint: String },
}

/// Why we refused the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCertProblem {
    /// It does not chain to the CA we were given.
    UnknownIssuer,
    Expired {
        not_after: Option<i64>,
    },
    NotValidYet {
        not_before: Option<i64>,
    },
    /// Its SANs do not cover the host we connected to.
    NotValidForName {
        expected: String,
        presented: Vec<String>,
    },
    Other(String),
}

impl fmt::Display for ServerCertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str("not signed by the given CA (wrong --etcd-cacert?)"),
            Self::Expired { not_after } => {
                write!(f, "it has expired")?;
                if let Some(t) = not_after {
                    write!(f, " (notAfter {})", unix_to_text(*t))?;
                }
                Ok(())
            }
            Self::NotValidYet { not_before } => {
                write!(f, "it is not valid yet")?;
                if let Some(t) = not_before {
                    write!(f, " (notBefore {}; is this machine's clock right?)", unix_to_text(*t))?;
                }
                Ok(())
            }
            Self::NotValidForName { expected, presented } => {
                write!(f, "it is not valid for {expected}")?;
                if !presented.is_empty() {
                    write!(f, " (its names: {})", presented.join(", "))?;
                }
                Ok(())
            }
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Whether the server asked for a client certificate, and whether we sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// The server did not ask for one (etcd without `--client-cert-auth`).
    NotRequested,
    /// It asked; we had none to send.
    RequestedNoneSent,
    /// It asked and we sent ours.
    Sent,
}

/// What happened when we tried to talk TLS to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The handshake completed and the server did not refuse us: `answer` is the first line
    /// of its reply to our request, or None when it sent nothing (and no alert) in time.
    Accepted { answer: Option<String>, client_cert: ClientCert },
    /// The server sent a fatal TLS alert, named as rustls names it (`BadCertificate`,
    /// `CertificateExpired`, `UnknownCA`, `CertificateRequired`…).
    RefusedByServer { alert: String, client_cert: ClientCert },
    /// We refused the server's certificate.
    RefusedServerCert(ServerCertProblem),
    /// The TCP connection failed (refused, no route …).
    Connect(String),
    /// Nothing came back within the deadline.
    Timeout { phase: &'static str, after: Duration },
    /// Any other failure (the server closed without an alert, a protocol error …).
    Failed(String),
}

impl HandshakeOutcome {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

impl fmt::Display for HandshakeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted { answer: Some(a), .. } => write!(f, "handshake accepted; the server answered `{a}`"),
            Self::Accepted { answer: None, .. } => {
                f.write_str("handshake accepted; no refusal within the read deadline")
            }
            Self::RefusedByServer { alert, client_cert } => {
                write!(f, "the server refused the handshake with TLS alert {alert}")?;
                match client_cert {
                    ClientCert::RequestedNoneSent => f.write_str(" (it requires a client certificate and we had none)"),
                    ClientCert::Sent if is_certificate_alert(alert) => {
                        f.write_str(" (it rejected our client certificate)")
                    }
                    _ => Ok(()),
                }
            }
            Self::RefusedServerCert(p) => write!(f, "we refused the server's certificate: {p}"),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Timeout { phase, after } => {
                write!(f, "no answer within {} ({phase})", humantime::format_duration(*after))
            }
            Self::Failed(e) => f.write_str(e),
        }
    }
}

fn is_certificate_alert(alert: &str) -> bool {
    matches!(
        alert,
        "BadCertificate"
            | "UnknownCA"
            | "CertificateExpired"
            | "CertificateUnknown"
            | "UnsupportedCertificate"
            | "CertificateRevoked"
            | "CertificateRequired"
            | "AccessDenied"
            | "DecryptError"
    )
}

/// A client identity: certificate chain and key, PEM.
#[derive(Clone)]
pub struct Identity<'a> {
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

/// Connects to `endpoint`, verifies its certificate against `ca_pem`, presents `identity`
/// when the server asks for a client certificate, sends one HTTP/1.1 request and reads the
/// first bytes of the answer. Each phase (connect, handshake, first read) has `deadline`.
pub async fn handshake(
    endpoint: &str,
    ca_pem: &[u8],
    identity: Option<Identity<'_>>,
    deadline: Duration,
) -> Result<HandshakeOutcome, TlsError> {
    exchange(endpoint, ca_pem, identity, deadline, "/version", false).await.map(|(o, _)| o)
}

/// What one HTTPS request over a direct TLS connection gave: how the handshake went, and
/// when the server answered, its status code and (the first 64 KiB of) its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub handshake: HandshakeOutcome,
    /// The HTTP status code, when an answer came.
    pub status: Option<u16>,
    pub body: String,
}

/// Like [`handshake`], but sends `GET path` and reads the whole answer (the server closes
/// the connection after it: `Connection: close`), at most 64 KiB, within `deadline`.
pub async fn https_get(
    endpoint: &str,
    ca_pem: &[u8],
    identity: Option<Identity<'_>>,
    deadline: Duration,
    path: &str,
) -> Result<HttpAnswer, TlsError> {
    let (handshake, raw) = exchange(endpoint, ca_pem, identity, deadline, path, true).await?;
    let text = String::from_utf8_lossy(&raw);
    let (status, body) = split_http(&text);
    Ok(HttpAnswer { handshake, status, body })
}

/// The status code and the body of a raw HTTP/1.1 answer (chunked bodies are joined).
pub fn split_http(raw: &str) -> (Option<u16>, String) {
    let status = raw.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok());
    let Some((head, body)) = raw.split_once("\r\n\r\n") else { return (status, String::new()) };
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else { break };
        if n == 0 || after.len() < n {
            out.push_str(&after[..after.len().min(n)]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    (status, out)
}

async fn exchange(
    endpoint: &str,
    ca_pem: &[u8],
    identity: Option<Identity<'_>>,
    deadline: Duration,
    path: &str,
    read_all: bool,
) -> Result<(HandshakeOutcome, Vec<u8>), TlsError> {
    let (host, authority) = split_endpoint(endpoint)?;
    let provider = provider();
    let verifier = webpki_verifier(&provider, ca_pem)?;
    let resolver = Arc::new(RecordingResolver::new(identity.map(|i| certified_key(&provider, i)).transpose()?));
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver.clone());
    let name = ServerName::try_from(host.clone()).map_err(|_| TlsError::Endpoint(endpoint.into()))?;

    let tcp = match tokio::time::timeout(deadline, TcpStream::connect(&authority)).await {
        Err(_) => return Ok((HandshakeOutcome::Timeout { phase: "TCP connect", after: deadline }, vec![])),
        Ok(Err(e)) => return Ok((HandshakeOutcome::Connect(e.to_string()), vec![])),
        Ok(Ok(s)) => s,
    };
    let connector = TlsConnector::from(Arc::new(config));
    let mut tls = match tokio::time::timeout(deadline, connector.connect(name, tcp)).await {
        Err(_) => return Ok((HandshakeOutcome::Timeout { phase: "TLS handshake", after: deadline }, vec![])),
        Ok(Err(e)) => return Ok((classify(&e, resolver.client_cert()), vec![])),
        Ok(Ok(s)) => s,
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: hadrill\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let mut buf = vec![0u8; 256];
    let first = async {
        tls.write_all(request.as_bytes()).await?;
        tls.flush().await?;
        tls.read(&mut buf).await
    };
    let mut raw = Vec::new();
    let outcome = match tokio::time::timeout(deadline, first).await {
        // a server that neither answers nor refuses within the deadline did accept the
        // handshake: a refusal is sent as soon as it has checked our certificate
        Err(_) => HandshakeOutcome::Accepted { answer: None, client_cert: resolver.client_cert() },
        Ok(Err(e)) => classify(&e, resolver.client_cert()),
        Ok(Ok(0)) => HandshakeOutcome::Failed("the server closed the connection without an answer or an alert".into()),
        Ok(Ok(n)) => {
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&buf[..n]);
            let first = text.lines().next().unwrap_or("").trim().chars().take(80).collect::<String>();
            HandshakeOutcome::Accepted { answer: Some(first), client_cert: resolver.client_cert() }
        }
    };
    if read_all && !raw.is_empty() {
        const CAP: usize = 64 * 1024;
        let rest = async {
            let mut chunk = vec![0u8; 8192];
            while raw.len() < CAP {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(deadline, rest).await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), tls.shutdown()).await;
    Ok((outcome, raw))
}

/// PEM text of DER certificates (a kubeconfig's CA, as kube's config holds it).
pub fn der_to_pem(ders: &[Vec<u8>]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for der in ders {
        let mut b64 = String::new();
        for c in der.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    b64.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or(""));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Connects to `endpoint` with the target's TLS material and completes a handshake (plus one
/// read, which is when a server's refusal of our certificate arrives). Plain http endpoints
/// only get a TCP connect. The error is one line naming what went wrong.
pub async fn preflight(target: &EtcdTarget, endpoint: &str) -> Result<(), String> {
    let deadline = target.connect_timeout.max(Duration::from_secs(1));
    if let Some(rest) = endpoint.strip_prefix("http://") {
        return match tokio::time::timeout(deadline, TcpStream::connect(rest)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err(format!("no answer within {} (TCP connect)", humantime::format_duration(deadline))),
        };
    }
    let Some(tls) = &target.tls else {
        return Err("https endpoint but no --etcd-cacert was given".into());
    };
    let identity = match (&tls.cert_pem, &tls.key_pem) {
        (Some(c), Some(k)) => Some(Identity { cert_pem: c, key_pem: k }),
        _ => None,
    };
    let outcome = handshake(endpoint, &tls.ca_pem, identity, deadline).await.map_err(|e| e.to_string())?;
    match outcome {
        HandshakeOutcome::Accepted { .. } => Ok(()),
        HandshakeOutcome::RefusedByServer { client_cert: ClientCert::RequestedNoneSent, .. } => {
            Err(format!("{outcome}: give --etcd-cert and --etcd-key"))
        }
        HandshakeOutcome::RefusedByServer { client_cert: ClientCert::Sent, .. } => {
            Err(format!("{outcome}: wrong --etcd-cert/--etcd-key, expired, or not signed by the CA etcd trusts?"))
        }
        other => Err(other.to_string()),
    }
}

/// The certificates a server presents, read without client authentication, and whether
/// they verify against `ca_pem` (when given). An expired or untrusted certificate is still
/// returned: this is for reading validity windows, nothing is sent over the connection.
#[derive(Debug, Clone)]
pub struct PeerChain {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The verdict of verifying the chain against the given CA; None when no CA was given.
    pub verified: Option<Result<(), ServerCertProblem>>,
}

/// Reads the certificate chain that `endpoint` presents (see [`PeerChain`]).
pub async fn peer_chain(endpoint: &str, ca_pem: Option<&[u8]>, deadline: Duration) -> Result<PeerChain, TlsError> {
    let (host, authority) = split_endpoint(endpoint)?;
    let provider = provider();
    let inner = ca_pem.map(|ca| webpki_verifier(&provider, ca)).transpose()?;
    let recorder = Arc::new(ChainRecorder { inner, provider: provider.clone(), seen: Mutex::new(None) });
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host).map_err(|_| TlsError::Endpoint(endpoint.into()))?;
    let fail =
        |outcome: HandshakeOutcome| TlsError::Handshake { endpoint: endpoint.into(), outcome: Box::new(outcome) };
    let tcp = match tokio::time::timeout(deadline, TcpStream::connect(&authority)).await {
        Err(_) => return Err(fail(HandshakeOutcome::Timeout { phase: "TCP connect", after: deadline })),
        Ok(Err(e)) => return Err(fail(HandshakeOutcome::Connect(e.to_string()))),
        Ok(Ok(s)) => s,
    };
    let connector = TlsConnector::from(Arc::new(config));
    // the server may refuse us for want of a client certificate (TLS 1.2 does so inside the
    // handshake): by then its certificate has been seen, which is all this needs
    let result = tokio::time::timeout(deadline, connector.connect(name, tcp)).await;
    let seen = recorder.seen.lock().map(|mut s| s.take()).unwrap_or(None);
    match (seen, result) {
        (Some((certs, verified)), _) if !certs.is_empty() => Ok(PeerChain { certs, verified }),
        (Some(_), _) => Err(TlsError::NoCertificate { endpoint: endpoint.into() }),
        (None, Err(_)) => Err(fail(HandshakeOutcome::Timeout { phase: "TLS handshake", after: deadline })),
        (None, Ok(Err(e))) => Err(fail(classify(&e, ClientCert::NotRequested))),
        (None, Ok(Ok(_))) => Err(TlsError::NoCertificate { endpoint: endpoint.into() }),
    }
}

/// `(host, host:port)` of an https URL; the host without IPv6 brackets.
fn split_endpoint(endpoint: &str) -> Result<(String, String), TlsError> {
    let bad = || TlsError::Endpoint(endpoint.to_string());
    let rest = endpoint.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), authority.to_string()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn webpki_verifier(provider: &Arc<CryptoProvider>, ca_pem: &[u8]) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let c = c.map_err(|_| TlsError::Pem { what: "CA bundle" })?;
        roots.add(c).map_err(TlsError::Config)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem { what: "CA bundle" });
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
}

fn certified_key(provider: &Arc<CryptoProvider>, id: Identity<'_>) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &id.cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { what: "client certificate" })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what: "client certificate" });
    }
    let key =
        rustls_pemfile::private_key(&mut &id.key_pem[..]).ok().flatten().ok_or(TlsError::Pem { what: "client key" })?;
    let signer = provider.key_provider.load_private_key(key).map_err(TlsError::Config)?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// Turns a handshake or read error into an outcome, finding the rustls error inside.
fn classify(e: &std::io::Error, client_cert: ClientCert) -> HandshakeOutcome {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(a)) => {
            HandshakeOutcome::RefusedByServer { alert: format!("{a:?}"), client_cert }
        }
        Some(rustls::Error::InvalidCertificate(c)) => HandshakeOutcome::RefusedServerCert(problem(c)),
        Some(other) => HandshakeOutcome::Failed(format!("TLS error: {other}")),
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                HandshakeOutcome::Failed("the server closed the connection without an alert".into())
            }
            std::io::ErrorKind::ConnectionReset => HandshakeOutcome::Failed("the server reset the connection".into()),
            _ => HandshakeOutcome::Failed(e.to_string()),
        },
    }
}

fn problem(c: &CertificateError) -> ServerCertProblem {
    match c {
        CertificateError::UnknownIssuer => ServerCertProblem::UnknownIssuer,
        CertificateError::Expired => ServerCertProblem::Expired { not_after: None },
        CertificateError::ExpiredContext { not_after, .. } => {
            ServerCertProblem::Expired { not_after: Some(not_after.as_secs() as i64) }
        }
        CertificateError::NotValidYet => ServerCertProblem::NotValidYet { not_before: None },
        CertificateError::NotValidYetContext { not_before, .. } => {
            ServerCertProblem::NotValidYet { not_before: Some(not_before.as_secs() as i64) }
        }
        CertificateError::NotValidForName => {
            ServerCertProblem::NotValidForName { expected: "the host connected to".into(), presented: vec![] }
        }
        CertificateError::NotValidForNameContext { expected, presented } => ServerCertProblem::NotValidForName {
            expected: expected.to_str().into_owned(),
            presented: presented.clone(),
        },
        other => ServerCertProblem::Other(format!("{other:?}")),
    }
}

fn unix_to_text(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// Presents our certificate whenever the server asks (whatever CA names it hints), and
/// remembers that it asked.
#[derive(Debug)]
struct RecordingResolver {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl RecordingResolver {
    fn new(key: Option<Arc<CertifiedKey>>) -> Self {
        Self { key, asked: AtomicBool::new(false) }
    }
    fn client_cert(&self) -> ClientCert {
        match (self.asked.load(Ordering::SeqCst), self.key.is_some()) {
            (false, _) => ClientCert::NotRequested,
            (true, false) => ClientCert::RequestedNoneSent,
            (true, true) => ClientCert::Sent,
        }
    }
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.key.clone()
    }
    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

type Seen = (Vec<CertificateDer<'static>>, Option<Result<(), ServerCertProblem>>);

/// Records the server's chain and the verdict of the real verifier, and lets the handshake
/// go on so that an expired or untrusted certificate can still be read.
#[derive(Debug)]
struct ChainRecorder {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Seen>>,
}

impl ServerCertVerifier for ChainRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.as_ref().map(|v| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map(|_| ()).map_err(|e| match e {
                rustls::Error::InvalidCertificate(c) => problem(&c),
                other => ServerCertProblem::Other(other.to_string()),
            })
        });
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut s) = self.seen.lock() {
            *s = Some((chain, verdict));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split() {
        assert_eq!(split_endpoint("https://10.0.0.1:2379").unwrap(), ("10.0.0.1".into(), "10.0.0.1:2379".into()));
        assert_eq!(split_endpoint("https://[::1]:2379").unwrap(), ("::1".into(), "[::1]:2379".into()));
        assert!(split_endpoint("http://10.0.0.1:2379").is_err());
        assert!(split_endpoint("https://10.0.0.1").is_err());
        assert!(split_endpoint("https://:2379").is_err());
    }

    #[test]
    fn der_round_trips_through_pem() {
        let ca = mint::Ca::generate("pem-test").unwrap();
        let der: Vec<u8> = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()).next().unwrap().unwrap().to_vec();
        let pem = der_to_pem(std::slice::from_ref(&der));
        let back: Vec<u8> = rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap().to_vec();
        assert_eq!(back, der);
        for n in 1..5 {
            let pem = der_to_pem(&[der[..der.len() - n].to_vec()]);
            assert!(pem.contains("-----END CERTIFICATE-----"));
        }
    }

    #[test]
    fn http_answers_split_into_status_and_body() {
        let raw = "HTTP/1.1 401 Unauthorized\r\nAudit-Id: 1\r\nContent-Type: application/json\r\nContent-Length: 129\r\n\r\n{\"kind\":\"Status\",\"code\":401}";
        assert_eq!(split_http(raw), (Some(401), "{\"kind\":\"Status\",\"code\":401}".to_string()));
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(split_http(chunked), (Some(200), "hello world".to_string()));
        assert_eq!(split_http("garbage"), (None, String::new()));
    }

    #[test]
    fn outcomes_read_as_one_line() {
        let o = HandshakeOutcome::RefusedServerCert(ServerCertProblem::UnknownIssuer);
        assert_eq!(
            o.to_string(),
            "we refused the server's certificate: not signed by the given CA (wrong --etcd-cacert?)"
        );
        let o = HandshakeOutcome::RefusedByServer { alert: "BadCertificate".into(), client_cert: ClientCert::Sent };
        assert_eq!(
            o.to_string(),
            "the server refused the handshake with TLS alert BadCertificate (it rejected our client certificate)"
        );
        let o = HandshakeOutcome::RefusedServerCert(ServerCertProblem::Expired { not_after: Some(0) });
        assert_eq!(
            o.to_string(),
            "we refused the server's certificate: it has expired (notAfter 1970-01-01 00:00:00Z)"
        );
    }
}
