//! The fault ledger: one JSON file per active fault, written and synced before the fault is
//! applied, removed after it is reverted. What is left after a crash is what `recover`
//! reverts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Fault;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("fault ledger {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fault ledger entry {path} is unreadable: {message}")]
    Corrupt { path: String, message: String },
}

/// One active fault, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub run_id: String,
    /// The hadrill process that injected it, and its start time (to tell a live run from a
    /// dead one).
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub created: DateTime<Utc>,
    pub description: String,
    pub revert: String,
    pub fault: Fault,
}

impl Entry {
    /// Whether the run that wrote this entry is still alive (then `recover` leaves it alone).
    pub fn owner_alive(&self) -> bool {
        match self.pid_start {
            Some(start) => super::process::alive(self.pid as i32, start),
            None => false,
        }
    }
}

/// A ledger directory, shared by every fault of one run.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
    run_id: String,
    seq: Arc<AtomicU64>,
}

impl Ledger {
    /// `$HADRILL_LEDGER`, else `/var/lib/hadrill/ledger` for root, else
    /// `$XDG_STATE_HOME/hadrill/ledger` (`~/.local/state/hadrill/ledger`).
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("HADRILL_LEDGER") {
            return PathBuf::from(d);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/hadrill/ledger");
        }
        let state = std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".local/state")
        });
        state.join("hadrill/ledger")
    }

    /// Opens (creating, mode 0700) the ledger directory.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| LedgerError::Io { path: dir.display().to_string(), source })?;
        let run_id = format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%S%3f"), std::process::id());
        Ok(Self { dir: dir.to_path_buf(), run_id, seq: Arc::new(AtomicU64::new(0)) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
        let p = path.display().to_string();
        move |source| LedgerError::Io { path: p.clone(), source }
    }

    /// Writes the entry for `fault` and syncs it (file and directory) before returning.
    pub fn write(&self, fault: &Fault) -> Result<Entry, LedgerError> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{:04}", self.run_id, n);
        let pid = std::process::id();
        let entry = Entry {
            id: id.clone(),
            run_id: self.run_id.clone(),
            pid,
            pid_start: super::process::start_time(pid as i32),
            created: Utc::now(),
            description: fault.describe(),
            revert: fault.revert_plan(),
            fault: fault.clone(),
        };
        let path = self.dir.join(format!("{id}.json"));
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let body = serde_json::to_vec_pretty(&entry).expect("ledger entries serialize");
        let mut f =
            fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(self.io(&tmp))?;
        f.write_all(&body).map_err(self.io(&tmp))?;
        f.sync_all().map_err(self.io(&tmp))?;
        fs::rename(&tmp, &path).map_err(self.io(&path))?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(self.io(&self.dir))?;
        Ok(entry)
    }

    /// Removes an entry once its fault is reverted. Removing a missing entry is not an error.
    pub fn remove(&self, id: &str) -> Result<(), LedgerError> {
        let path = self.dir.join(format!("{id}.json"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LedgerError::Io { path: path.display().to_string(), source: e }),
        }
    }

    /// Every entry on disk, oldest first. An unreadable file is returned as an error in place.
    pub fn entries(&self) -> Result<Vec<Result<Entry, LedgerError>>, LedgerError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LedgerError::Io { path: self.dir.display().to_string(), source: e }),
        };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|p| {
                let shown = p.display().to_string();
                let text = fs::read(&p).map_err(|source| LedgerError::Io { path: shown.clone(), source })?;
                serde_json::from_slice::<Entry>(&text)
                    .map_err(|e| LedgerError::Corrupt { path: shown, message: e.to_string() })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pause() -> Fault {
        Fault::Pause { what: "sleep".into(), pid: 1, start_time: 1 }
    }

    #[test]
    fn entries_are_written_synced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("ledger")).unwrap();
        let a = l.write(&pause()).unwrap();
        let b = l.write(&pause()).unwrap();
        let mode = fs::metadata(l.dir().join(format!("{}.json", a.id))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let got: Vec<_> = l.entries().unwrap().into_iter().map(|e| e.unwrap().id).collect();
        assert_eq!(got, vec![a.id.clone(), b.id.clone()], "oldest first");
        l.remove(&a.id).unwrap();
        l.remove(&a.id).unwrap();
        assert_eq!(l.entries().unwrap().len(), 1);
        assert!(b.owner_alive(), "this test process wrote it and is alive");
    }

    #[test]
    fn corrupt_entry_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        fs::write(dir.path().join("zz.json"), b"{not json").unwrap();
        let e = l.entries().unwrap();
        assert!(matches!(e[0], Err(LedgerError::Corrupt { .. })));
    }
}
