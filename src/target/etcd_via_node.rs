//! etcd through a Kubernetes target: when no `--etcd-*` flags are given, the members found by
//! discovery are reached with the client certificate the apiservers use, read from a
//! control-plane node through node access (`cat` of the files named by the apiserver's
//! `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
//!
//! The material is held in memory only ([`TlsMaterial`], whose `Debug` redacts the key);
//! it is never written to disk or logged. Errors name the node and the file, never content.

use std::time::Duration;

use super::discovery::{Discovery, EtcdClientFiles, EtcdTopologyKind};
use super::{EtcdTarget, Target, TlsMaterial};
use crate::node::NodeAccess;

const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the members may take to answer the first status request.
const REACH_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads one PEM file on the node. `what` names it in errors.
async fn read_pem(
    access: &NodeAccess,
    kube: Option<&kube::Client>,
    path: &str,
    what: &str,
    marker: &str,
) -> Result<Vec<u8>, String> {
    let out = access
        .exec_with(kube, &["cat", path], READ_TIMEOUT)
        .await
        .map_err(|e| format!("cannot read the etcd {what} {path}: {}", crate::exit::chain(&e)))?;
    if !out.stdout.contains(marker) {
        return Err(format!("{path} on the node holds no PEM {what}"));
    }
    Ok(out.stdout.into_bytes())
}

/// The CA bundle, client certificate and key named by `files`, read on their node.
pub async fn read_tls(
    access: &NodeAccess,
    kube: Option<&kube::Client>,
    files: &EtcdClientFiles,
) -> Result<TlsMaterial, String> {
    let ca_pem = read_pem(access, kube, &files.ca, "CA bundle", "-----BEGIN CERTIFICATE-----").await?;
    let (cert_pem, key_pem) = match (&files.cert, &files.key) {
        (Some(c), Some(k)) => (
            Some(read_pem(access, kube, c, "client certificate", "-----BEGIN CERTIFICATE-----").await?),
            Some(read_pem(access, kube, k, "client key", "PRIVATE KEY-----").await?),
        ),
        (None, None) => (None, None),
        _ => return Err("the apiserver names only one of --etcd-certfile and --etcd-keyfile".into()),
    };
    Ok(TlsMaterial { ca_pem, cert_pem, key_pem })
}

/// An etcd target over `endpoints` with `tls`, checked to answer a member list.
pub async fn reachable_target(endpoints: Vec<String>, tls: TlsMaterial) -> Result<EtcdTarget, String> {
    let etcd = EtcdTarget::new(endpoints, Some(tls)).map_err(|e| e.to_string())?;
    match tokio::time::timeout(REACH_TIMEOUT, crate::probe::etcd::cluster_view(&etcd)).await {
        Err(_) => Err(format!("the members {} did not answer within {REACH_TIMEOUT:?}", etcd.endpoints.join(","))),
        Ok(Err(e)) => Err(format!("the members {} did not answer: {e}", etcd.endpoints.join(","))),
        Ok(Ok(_)) => Ok(etcd),
    }
}

/// Where the client material is read and through which access, from a discovery.
pub fn source(
    d: &Discovery,
    cfg: &crate::node::select::NodeAccessConfig,
) -> Result<(EtcdClientFiles, NodeAccess), String> {
    if d.etcd.topology == EtcdTopologyKind::Unknown || d.etcd.endpoints.is_empty() {
        return Err(format!("no etcd endpoints found: {}", d.etcd.reason));
    }
    let files =
        d.etcd.client_tls.clone().ok_or("the apiservers' flags name no etcd client certificate (--etcd-cafile)")?;
    let node = d.nodes.iter().find(|n| n.name == files.node).ok_or_else(|| {
        format!("node {} (whose apiserver names the etcd client files) is not a control-plane node", files.node)
    })?;
    let access = crate::node::select::resolve(cfg, node)?;
    Ok((files, access))
}

/// Sets `t.etcd` from the cluster when it has none: discovery, the client material read on a
/// control-plane node, and a first member list. On success a fact says where the material
/// came from (paths only).
pub async fn attach(t: &mut Target) -> Result<(), String> {
    let Some(k) = &t.kube else { return Ok(()) };
    if t.etcd.is_some() {
        return Ok(());
    }
    let client = kube::Client::try_from(k.config.clone()).map_err(|e| crate::exit::chain(&e))?;
    let d = crate::target::discovery::discover(&client, &k.server).await.map_err(|e| crate::exit::chain(&e))?;
    let cfg = t.node_access.clone().unwrap_or_default();
    let (files, access) = source(&d, &cfg)?;
    let tls = read_tls(&access, Some(&client), &files).await;
    if let NodeAccess::Pod { node, namespace, .. } = &access {
        // the access pod served its purpose, whether the read worked or not; a fault that
        // needs it starts it again
        if let Err(e) = crate::node::pod::delete(&client, node, namespace).await {
            tracing::warn!("{}", crate::exit::chain(&e));
        }
    }
    let tls = tls?;
    let etcd = reachable_target(d.etcd.endpoints.clone(), tls).await?;
    t.fact(
        "etcd_client_tls",
        format!(
            "read on node {} via {}: {} {}",
            files.node,
            access.describe(),
            files.ca,
            files.cert.as_deref().unwrap_or("(no client certificate)")
        ),
    );
    t.etcd = Some(etcd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::discovery::tests::fixture_discovery;

    fn files(dir: &std::path::Path, key: &str) -> EtcdClientFiles {
        let w = |n: &str, body: &str| {
            let p = dir.join(n);
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        };
        EtcdClientFiles {
            node: "cp-1".into(),
            ca: w("ca.crt", "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"),
            cert: Some(w(
                "apiserver-etcd-client.crt",
                "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n",
            )),
            key: Some(w("apiserver-etcd-client.key", key)),
        }
    }

    #[tokio::test]
    async fn the_material_is_read_through_node_access_and_the_key_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZ\n-----END PRIVATE KEY-----\n";
        let f = files(dir.path(), secret);
        let tls = read_tls(&NodeAccess::Local { netns: None }, None, &f).await.unwrap();
        assert_eq!(tls.key_pem.as_deref(), Some(secret.as_bytes()));
        assert!(String::from_utf8_lossy(tls.cert_pem.as_ref().unwrap()).contains("Q0VSVA=="));
        assert!(!format!("{tls:?}").contains("U0VDUkVUS0VZ"), "the key is redacted");
    }

    #[tokio::test]
    async fn a_missing_or_wrong_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "not a key U0VDUkVUS0VZ\n");
        let e = read_tls(&NodeAccess::Local { netns: None }, None, &f).await.unwrap_err();
        assert!(e.ends_with("apiserver-etcd-client.key on the node holds no PEM client key"), "{e}");
        assert!(!e.contains("U0VDUkVUS0VZ"));
        let mut f = files(dir.path(), "x");
        f.ca = dir.path().join("nope.crt").display().to_string();
        let e = read_tls(&NodeAccess::Local { netns: None }, None, &f).await.unwrap_err();
        assert!(e.starts_with("cannot read the etcd CA bundle") && e.contains("nope.crt"), "{e}");
    }

    #[test]
    fn the_files_come_from_the_apiserver_flags_and_the_node_access_of_its_node() {
        let d = fixture_discovery("pods-kube-system-stacked.json", "https://10.0.0.10:6443");
        let cfg: crate::node::select::NodeAccessConfig =
            serde_saphyr::from_str("backend: ssh\nssh:\n  user: root\n").unwrap();
        let (files, access) = source(&d, &cfg).unwrap();
        assert_eq!(files.ca, "/etc/kubernetes/pki/etcd/ca.crt");
        assert_eq!(files.key.as_deref(), Some("/etc/kubernetes/pki/apiserver-etcd-client.key"));
        assert!(matches!(access, NodeAccess::Ssh { ref host, .. } if host == "10.0.0.11"), "{access:?}");
        let e = source(&d, &Default::default()).unwrap_err();
        assert!(e.contains("no node access to cp-1"), "{e}");
        let mut unknown = d.clone();
        unknown.etcd.topology = EtcdTopologyKind::Unknown;
        assert!(source(&unknown, &cfg).unwrap_err().starts_with("no etcd endpoints found"));
    }
}
