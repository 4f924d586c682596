//! Requests through the load balancer during a window: one `GET /version` over a new TLS
//! connection at a steady rate (so the balancer picks a backend per request), each with its
//! own deadline, every outcome recorded with its time.

use std::time::{Duration, Instant};

/// One request through the load balancer, `at` seconds into the window.
#[derive(Debug, Clone, PartialEq)]
pub struct LbSample {
    pub at: f64,
    pub ok: bool,
    /// `HTTP 200`, or why it failed (the handshake outcome names an expired certificate).
    pub what: String,
}

/// Requests to `lb` for `total`, about ten a second, verifying the server against `ca_pem`;
/// `on_fail` sees each failure as it happens.
pub async fn sample(lb: &str, ca_pem: &[u8], total: Duration, mut on_fail: impl FnMut(&LbSample)) -> Vec<LbSample> {
    const DEADLINE: Duration = Duration::from_secs(3);
    let t0 = Instant::now();
    let mut out = Vec::new();
    while t0.elapsed() < total {
        let at = t0.elapsed().as_secs_f64();
        let s = match crate::tls::https_get(lb, ca_pem, None, DEADLINE, "/version").await {
            Ok(a) if a.status.is_some_and(|c| (200..300).contains(&c)) => {
                LbSample { at, ok: true, what: format!("HTTP {}", a.status.unwrap_or(0)) }
            }
            Ok(a) => LbSample {
                at,
                ok: false,
                what: match a.status {
                    Some(c) => format!("HTTP {c}: {}", a.body.chars().take(120).collect::<String>()),
                    None => a.handshake.to_string(),
                },
            },
            Err(e) => LbSample { at, ok: false, what: e.to_string() },
        };
        if !s.ok {
            on_fail(&s);
        }
        out.push(s);
        // the sampling rate, not a wait for a state
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}
