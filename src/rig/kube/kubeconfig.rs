//! The kubeconfigs of kube mode, as kubeadm writes them: one cluster `kubernetes` whose
//! server is the load balancer, its CA and the client certificate and key embedded; user
//! and context named as kubeadm names them. Written 0600 (they hold a private key).

use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::rig::pki::{write_file, Minted, PkiError};

/// The cluster name kubeadm uses.
pub const CLUSTER: &str = "kubernetes";

/// The kubeconfig text for `user` with `identity`, against `server`, trusting `ca_pem`.
pub fn render(server: &str, ca_pem: &str, user: &str, identity: &Minted) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let context = format!("{user}@{CLUSTER}");
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {CLUSTER}\n\
         contexts:\n\
         - context:\n    cluster: {CLUSTER}\n    user: {user}\n  name: {context}\n\
         current-context: {context}\n\
         preferences: {{}}\n\
         users:\n\
         - name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b(ca_pem),
        cert = b(&identity.cert_pem),
        key = b(&identity.key_pem),
    )
}

/// Writes a kubeconfig (0600).
pub fn write(path: &Path, server: &str, ca_pem: &str, user: &str, identity: &Minted) -> Result<(), PkiError> {
    write_file(path, render(server, ca_pem, user, identity).as_bytes(), 0o600)
}

/// What [`read`] gets back from a kubeconfig kube mode wrote.
pub struct Embedded {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Deserialize)]
struct Doc {
    clusters: Vec<ClusterBody>,
    users: Vec<UserBody>,
}
#[derive(Deserialize)]
struct ClusterBody {
    cluster: ClusterFields,
}
#[derive(Deserialize)]
struct ClusterFields {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca: String,
}
#[derive(Deserialize)]
struct UserBody {
    user: UserFields,
}
#[derive(Deserialize)]
struct UserFields {
    #[serde(rename = "client-certificate-data")]
    cert: String,
    #[serde(rename = "client-key-data")]
    key: String,
}

/// Reads back the server, CA and client identity of a kubeconfig written by [`write`]
/// (the rig's own health checks use the admin identity).
pub fn read(path: &Path) -> Result<Embedded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let doc: Doc = serde_saphyr::from_str(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    let d = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("{}: bad base64: {e}", path.display()))
    };
    let c = doc.clusters.first().ok_or_else(|| format!("{}: no cluster", path.display()))?;
    let u = doc.users.first().ok_or_else(|| format!("{}: no user", path.display()))?;
    Ok(Embedded {
        server: c.cluster.server.clone(),
        ca_pem: d(&c.cluster.ca)?,
        cert_pem: d(&u.user.cert)?,
        key_pem: d(&u.user.key)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn minted() -> Minted {
        Minted {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "KEY".into(),
        }
    }

    #[test]
    fn kubeconfig_points_at_the_server_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("admin.conf");
        write(&p, "https://10.213.7.100:6443", "CA PEM", "kubernetes-admin", &minted()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("    server: https://10.213.7.100:6443\n"), "{text}");
        assert!(text.contains("current-context: kubernetes-admin@kubernetes\n"), "{text}");
        assert!(!text.contains("KEY\n"), "the key must be embedded base64, not plain");
        let e = read(&p).unwrap();
        assert_eq!(e.server, "https://10.213.7.100:6443");
        assert_eq!(e.ca_pem, b"CA PEM");
        assert_eq!(e.key_pem, b"KEY");
        assert!(e.cert_pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    }

    #[tokio::test]
    async fn kube_reads_it_as_a_kubeconfig() {
        // the target code path: kube's own loader must accept the file
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("admin.conf");
        write(&p, "https://10.213.7.100:6443", "CA PEM", "kubernetes-admin", &minted()).unwrap();
        let k = kube::config::Kubeconfig::read_from(&p).unwrap();
        assert_eq!(k.current_context.as_deref(), Some("kubernetes-admin@kubernetes"));
        let c = &k.clusters[0];
        assert_eq!(c.name, "kubernetes");
        assert_eq!(c.cluster.as_ref().unwrap().server.as_deref(), Some("https://10.213.7.100:6443"));
        assert_eq!(k.auth_infos[0].name, "kubernetes-admin");
        assert!(k.auth_infos[0].auth_info.as_ref().unwrap().client_certificate_data.is_some());
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.conf");
        std::fs::write(&p, "clusters: []\nusers: []\n").unwrap();
        let e = read(&p).err().expect("an empty kubeconfig reads as an error");
        assert!(e.contains("x.conf") && e.contains("no cluster"), "{e}");
    }
}
