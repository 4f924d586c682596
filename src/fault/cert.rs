//! The apiserver serving-certificate swap (a lab fault): on one control-plane node,
//! `apiserver.crt` is backed up into a hadrill directory on that node and replaced by an
//! expired copy (same names, same public key, signed by the cluster CA); revert puts the
//! backup back byte for byte and removes the directory.
//!
//! Everything happens through the node's access (`local` on the rig, `docker`, `ssh`, `pod`)
//! with `sh` on the node. Only the certificate changes: the private key `apiserver.key` is
//! neither read nor written (the expired copy carries the same public key), so no key
//! material moves. The new file is written beside the old one and renamed over it, so the
//! apiserver's file watcher never sees a half-written certificate.

use std::path::Path;
use std::time::Duration;

use crate::node::NodeAccess;

const DEADLINE: Duration = Duration::from_secs(30);

/// `sh -c` script of the swap. `$1` pki dir, `$2` backup dir, `$3` the expired certificate.
/// A backup that already exists (a swap not reverted) is kept: it holds the original.
const APPLY: &str = r#"set -e
crt="$1/apiserver.crt"
[ -f "$crt" ] || { echo "no $crt" >&2; exit 1; }
mkdir -p "$2"
chmod 700 "$2"
[ -e "$2/apiserver.crt" ] || cp -p "$crt" "$2/apiserver.crt"
printf '%s' "$3" > "$crt.hadrill-new"
chmod --reference="$2/apiserver.crt" "$crt.hadrill-new" 2>/dev/null || chmod 644 "$crt.hadrill-new"
mv -f "$crt.hadrill-new" "$crt"
"#;

/// `sh -c` script of the revert: puts the backup back (byte for byte, mode kept) and removes
/// the backup directory. Nothing to do when there is no backup (never applied, or reverted).
const REVERT: &str = r#"set -e
crt="$1/apiserver.crt"
if [ -f "$2/apiserver.crt" ]; then
  cp -p "$2/apiserver.crt" "$crt.hadrill-restore"
  mv -f "$crt.hadrill-restore" "$crt"
  rm -rf "$2"
fi
"#;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Backs up `pki_dir/apiserver.crt` into `backup_dir` and writes `expired_pem` in its place.
pub async fn apply(access: &NodeAccess, pki_dir: &Path, backup_dir: &Path, expired_pem: &str) -> Result<(), String> {
    access
        .exec(&["sh", "-c", APPLY, "sh", &s(pki_dir), &s(backup_dir), expired_pem], DEADLINE)
        .await
        .map(|_| ())
        .map_err(|e| crate::exit::chain(&e))
}

/// Restores the backup and removes the backup directory (idempotent).
pub async fn revert(access: &NodeAccess, pki_dir: &Path, backup_dir: &Path) -> Result<(), String> {
    access
        .exec(&["sh", "-c", REVERT, "sh", &s(pki_dir), &s(backup_dir)], DEADLINE)
        .await
        .map(|_| ())
        .map_err(|e| crate::exit::chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Fault;
    use std::os::unix::fs::PermissionsExt;

    /// The fault's file operations, for real, through the `local` backend in a temp dir laid
    /// out like /etc/kubernetes/pki.
    #[tokio::test]
    async fn swap_and_restore_byte_for_byte_through_local_access() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).unwrap();
        let original = "-----BEGIN CERTIFICATE-----\nMIIBoriginal\n-----END CERTIFICATE-----\n";
        std::fs::write(pki.join("apiserver.crt"), original).unwrap();
        std::fs::set_permissions(pki.join("apiserver.crt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(pki.join("apiserver.key"), "KEY").unwrap();
        let backup = dir.path().join("backup-1");
        let f = Fault::ApiserverCertSwap {
            node: "cp-2".into(),
            access: NodeAccess::Local { netns: None },
            pki_dir: pki.clone(),
            backup_dir: backup.clone(),
            expired_cert_pem: "-----BEGIN CERTIFICATE-----\nMIIBexpired\n-----END CERTIFICATE-----\n".into(),
            not_after: 0,
        };
        f.apply().await.unwrap();
        assert!(std::fs::read_to_string(pki.join("apiserver.crt")).unwrap().contains("MIIBexpired"));
        assert_eq!(std::fs::read_to_string(backup.join("apiserver.crt")).unwrap(), original);
        assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(pki.join("apiserver.crt")).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(pki.join("apiserver.key")).unwrap(), "KEY", "the key is not touched");
        // applied twice (a run killed before its revert): the backup keeps the original
        f.apply().await.unwrap();
        assert_eq!(std::fs::read_to_string(backup.join("apiserver.crt")).unwrap(), original);
        // the revert needs nothing but the stored form (as `hadrill recover` has it)
        let stored: Fault = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        stored.revert().await.unwrap();
        assert_eq!(std::fs::read_to_string(pki.join("apiserver.crt")).unwrap(), original);
        assert!(!backup.exists(), "the backup directory is removed");
        stored.revert().await.expect("reverting again is a no-op");
        assert_eq!(std::fs::read_to_string(pki.join("apiserver.crt")).unwrap(), original);
    }

    #[tokio::test]
    async fn a_node_without_the_certificate_is_an_apply_error_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let e = apply(&NodeAccess::Local { netns: None }, dir.path(), &dir.path().join("b"), "x").await.unwrap_err();
        assert!(e.contains("apiserver.crt"), "{e}");
        assert!(!dir.path().join("b").exists());
    }
}
