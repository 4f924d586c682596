//! The disaster-recovery drill's verdict as pure functions: what `snapshot status` says of
//! the snapshot, and whether the member restored from it holds the marker written before the
//! snapshot and not the one written after.

use serde::Deserialize;

use super::CheckOutcome;
use crate::report::Measurement;

const NAME: &str = "etcd_snapshot_restores";

/// `etcdctl snapshot status -w json` (etcd 3.4) / `etcdutl snapshot status -w json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub hash: u64,
    pub revision: i64,
    pub total_key: i64,
    pub total_size: i64,
}

pub fn parse_status(json: &str) -> Result<SnapshotStatus, String> {
    serde_json::from_str(json.trim())
        .map_err(|e| format!("cannot read `snapshot status` output ({e}): {}", json.trim()))
}

/// What the drill saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Drill {
    pub status: SnapshotStatus,
    /// The cluster revision at which the marker before the snapshot was written.
    pub before_revision: i64,
    /// The marker's key and the value written before the snapshot.
    pub before_key: String,
    pub before_value: String,
    /// What the restored member holds under that key.
    pub restored_before: Option<String>,
    pub after_key: String,
    /// What the restored member holds under the key written after the snapshot.
    pub restored_after: Option<String>,
    pub snapshot_bytes: u64,
    pub snapshot_seconds: f64,
    pub restore_seconds: f64,
}

/// The verdict: the snapshot holds keys and reaches the marker's revision, and the restored
/// member holds exactly the state of the moment of the snapshot.
pub fn judge(d: &Drill) -> CheckOutcome {
    let ms = [
        Measurement::new("snapshot_bytes", d.snapshot_bytes as f64, "bytes"),
        Measurement::new("snapshot_seconds", r3(d.snapshot_seconds), "s"),
        Measurement::new("restore_seconds", r3(d.restore_seconds), "s"),
        Measurement::new("snapshot_keys", d.status.total_key as f64, "keys").with_min(1.0),
    ];
    let evidence = format!(
        "snapshot status: revision {}, {} keys, {} bytes, hash {:#x}\nmarker before: {} = {:?} (revision {}), restored: {:?}\nmarker after: {}, restored: {:?}",
        d.status.revision,
        d.status.total_key,
        d.status.total_size,
        d.status.hash,
        d.before_key,
        d.before_value,
        d.before_revision,
        d.restored_before,
        d.after_key,
        d.restored_after
    );
    let fail = |m: String| {
        let mut o = CheckOutcome::fail(NAME, m).with_evidence(evidence.clone());
        o.measurements.extend(ms.iter().cloned());
        o
    };
    if d.status.total_key < 1 {
        return fail("`snapshot status` reports 0 keys: the snapshot is empty".into());
    }
    if d.status.revision < d.before_revision {
        return fail(format!(
            "the snapshot is at revision {}, before the marker written at revision {}: it is not a current snapshot",
            d.status.revision, d.before_revision
        ));
    }
    match &d.restored_before {
        None => {
            return fail(format!(
                "the member restored from the snapshot lacks {} (written before the snapshot)",
                d.before_key
            ))
        }
        Some(v) if v != &d.before_value => {
            return fail(format!(
                "the member restored from the snapshot holds {:?} under {}, expected {:?}",
                v, d.before_key, d.before_value
            ))
        }
        Some(_) => {}
    }
    if let Some(v) = &d.restored_after {
        return fail(format!(
            "the member restored from the snapshot holds {} = {v:?}, written after the snapshot: the restore is not the snapshot's point in time",
            d.after_key
        ));
    }
    let mut o = CheckOutcome::pass(
        NAME,
        format!(
            "restored a {}-key snapshot at revision {} into a scratch member: the marker from before is there, the one from after is not",
            d.status.total_key, d.status.revision
        ),
    )
    .with_evidence(evidence);
    o.measurements.extend(ms);
    o
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill() -> Drill {
        Drill {
            status: SnapshotStatus { hash: 0xabc, revision: 120, total_key: 57, total_size: 106_496 },
            before_revision: 118,
            before_key: "/hadrill/r/dr/before".into(),
            before_value: "t-1".into(),
            restored_before: Some("t-1".into()),
            after_key: "/hadrill/r/dr/after".into(),
            restored_after: None,
            snapshot_bytes: 106_528,
            snapshot_seconds: 0.04,
            restore_seconds: 1.2,
        }
    }

    #[test]
    fn parses_etcd_3_4_snapshot_status_json() {
        let s = parse_status(r#"{"hash":3924367312,"revision":1021,"totalKey":1014,"totalSize":2162688}"#).unwrap();
        assert_eq!(s, SnapshotStatus { hash: 3924367312, revision: 1021, total_key: 1014, total_size: 2162688 });
        assert!(parse_status("Error: snapshot file has wrong size").unwrap_err().contains("wrong size"));
    }

    #[test]
    fn a_point_in_time_restore_passes() {
        let c = judge(&drill());
        assert!(c.passed, "{}", c.message);
        assert!(c.measurements.iter().any(|m| m.name == "restore_seconds"));
    }

    #[test]
    fn an_empty_snapshot_fails() {
        let mut d = drill();
        d.status.total_key = 0;
        let c = judge(&d);
        assert!(!c.passed && c.message.contains("0 keys"), "{}", c.message);
    }

    #[test]
    fn a_stale_snapshot_fails() {
        let mut d = drill();
        d.status.revision = 100;
        let c = judge(&d);
        assert!(
            !c.passed && c.message.contains("revision 100, before the marker written at revision 118"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_restore_missing_the_marker_from_before_fails() {
        let mut d = drill();
        d.restored_before = None;
        let c = judge(&d);
        assert!(!c.passed && c.message.contains("lacks /hadrill/r/dr/before"), "{}", c.message);
        d.restored_before = Some("other".into());
        let c = judge(&d);
        assert!(!c.passed && c.message.contains("expected \"t-1\""), "{}", c.message);
    }

    #[test]
    fn a_restore_holding_the_marker_from_after_fails() {
        let mut d = drill();
        d.restored_after = Some("t-2".into());
        let c = judge(&d);
        assert!(!c.passed && c.message.contains("not the snapshot's point in time"), "{}", c.message);
    }
}
