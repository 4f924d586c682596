//! The disaster-recovery drill against the target's etcd: a marker key, a snapshot streamed
//! from one member into a 0600 file of a scratch directory journaled in the ledger,
//! `snapshot status`, a second marker, `snapshot restore` into the scratch directory, a
//! scratch etcd on loopback started from it, the markers read back from it. The scratch
//! member is stopped, the directory (the snapshot holds every Secret of the cluster) removed
//! and the markers deleted whatever happens; `hadrill recover` does the same after a kill.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::AsyncWriteExt;

use super::{CaseState, RunContext, StepEnd};
use crate::check::dr::{self, Drill};
use crate::check::CheckOutcome;
use crate::fault::{self, Fault};
use crate::target::EtcdTarget;

const SCRATCH_NAME: &str = "hadrill-dr";
const SCRATCH_READY: Duration = Duration::from_secs(30);
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// The local binaries the drill needs: `etcd` for the scratch member, and `etcdutl` (3.5+)
/// or `etcdctl` (3.4) for `snapshot status` and `snapshot restore`.
#[derive(Debug, Clone)]
pub struct Tools {
    pub etcd: PathBuf,
    pub ctl: PathBuf,
}

impl Tools {
    pub fn find() -> Result<Tools, String> {
        let which = crate::rig::net::which;
        let etcd = which("etcd")
            .ok_or("needs `etcd` on this machine's PATH to start the scratch member the snapshot is restored into")?;
        let ctl = which("etcdutl").or_else(|| which("etcdctl")).ok_or(
            "needs `etcdutl` or `etcdctl` on this machine's PATH for `snapshot status` and `snapshot restore`",
        )?;
        Ok(Tools { etcd, ctl })
    }
}

fn err(m: impl Into<String>) -> StepEnd {
    StepEnd::Error(m.into())
}

/// Runs the drill; `within` bounds the snapshot download.
pub async fn check(ctx: &RunContext, within: Duration, st: &mut CaseState) -> Result<CheckOutcome, StepEnd> {
    let Some(etcd) = ctx.target.etcd.clone() else {
        return Err(StepEnd::Skip("needs etcd: give --etcd-endpoints or use --rig".into()));
    };
    let tools = Tools::find().map_err(StepEnd::Skip)?;
    let prefix = super::quorum::case_prefix(ctx, st);
    let dir = std::env::temp_dir().join(format!(
        "hadrill-dr-{}-{:06x}",
        ctx.ledger.run_id(),
        st.rng.random::<u32>() & 0xff_ffff
    ));
    let g = fault::inject(&ctx.ledger, Fault::DrScratch { dir: dir.clone() })
        .await
        .map_err(|e| err(crate::exit::chain(&e)))?;
    st.log(format!("scratch directory {} (journaled; removed at the end of the case)", dir.display()));
    st.guards.push(g);
    let r = drill(ctx, &etcd, &tools, &dir, &prefix, within, st).await;
    match crate::probe::etcd::delete_prefix(&etcd, &prefix).await {
        Ok(n) => st.timeline.record("probe:cleanup", format!("deleted {n} marker keys under {prefix}")),
        Err(e) => {
            let m = format!("could not delete the marker keys under {prefix} (`etcdctl del --prefix {prefix}`): {e}");
            st.timeline.record("probe:cleanup", m.clone());
            st.log(m);
        }
    }
    r
}

async fn drill(
    ctx: &RunContext,
    etcd: &EtcdTarget,
    tools: &Tools,
    dir: &Path,
    prefix: &str,
    within: Duration,
    st: &mut CaseState,
) -> Result<CheckOutcome, StepEnd> {
    let token = format!("{:016x}", st.rng.random::<u64>());
    let before_key = format!("{prefix}before");
    let after_key = format!("{prefix}after");
    (ctx.progress)(&st.name, "writing the marker before the snapshot");
    let before_revision =
        put(etcd, &before_key, &token).await.map_err(|e| err(format!("cannot write {before_key}: {e}")))?;
    st.timeline.record("dr", format!("marker {before_key} written at revision {before_revision}"));

    (ctx.progress)(&st.name, "streaming a snapshot");
    let file = dir.join("snapshot.db");
    let t = Instant::now();
    let (member, bytes) = snapshot(etcd, &file, within).await.map_err(err)?;
    let snapshot_seconds = t.elapsed().as_secs_f64();
    st.timeline.record("dr", format!("snapshot of {bytes} bytes from {member} in {snapshot_seconds:.2}s"));

    let out = run(&tools.ctl, &["snapshot", "status", path(&file), "-w", "json"]).await.map_err(err)?;
    let status = dr::parse_status(&out).map_err(err)?;
    st.timeline.record("dr", format!("snapshot status: revision {}, {} keys", status.revision, status.total_key));

    put(etcd, &after_key, &token).await.map_err(|e| err(format!("cannot write {after_key}: {e}")))?;
    st.timeline.record("dr", format!("marker {after_key} written after the snapshot"));

    (ctx.progress)(&st.name, "restoring the snapshot into a scratch member");
    let t = Instant::now();
    let restored = dir.join("restored");
    let (client_port, peer_port) = free_ports().map_err(err)?;
    let peer = format!("http://127.0.0.1:{peer_port}");
    let client = format!("http://127.0.0.1:{client_port}");
    run(
        &tools.ctl,
        &[
            "snapshot",
            "restore",
            path(&file),
            "--name",
            SCRATCH_NAME,
            "--data-dir",
            path(&restored),
            "--initial-cluster",
            &format!("{SCRATCH_NAME}={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ],
    )
    .await
    .map_err(err)?;
    let scratch = Scratch::start(tools, dir, &restored, &client, &peer).await.map_err(err)?;
    let restore_seconds = t.elapsed().as_secs_f64();
    st.timeline
        .record("dr", format!("scratch member from the snapshot answers on {client} after {restore_seconds:.2}s"));

    let target = EtcdTarget::new(vec![client.clone()], None).map_err(|e| err(e.to_string()))?;
    let restored_before = get(&target, &before_key).await.map_err(|e| err(format!("scratch member {client}: {e}")))?;
    let restored_after = get(&target, &after_key).await.map_err(|e| err(format!("scratch member {client}: {e}")))?;
    scratch.stop().await;
    Ok(dr::judge(&Drill {
        status,
        before_revision,
        before_key,
        before_value: token,
        restored_before,
        after_key,
        restored_after,
        snapshot_bytes: bytes,
        snapshot_seconds,
        restore_seconds,
    }))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

async fn put(etcd: &EtcdTarget, key: &str, value: &str) -> Result<i64, String> {
    let fut = async {
        let mut c = etcd.cluster_client(true).await.map_err(|e| e.to_string())?;
        let r = c.put(key, value, None).await.map_err(|e| crate::target::etcd::describe(&e))?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    };
    tokio::time::timeout(etcd.request_timeout * 2, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", etcd.request_timeout * 2)))
}

async fn get(etcd: &EtcdTarget, key: &str) -> Result<Option<String>, String> {
    let fut = async {
        let mut c = etcd.member_client(&etcd.endpoints[0]).await.map_err(|e| e.to_string())?;
        let r = c.get(key, None).await.map_err(|e| crate::target::etcd::describe(&e))?;
        Ok(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    };
    tokio::time::timeout(etcd.request_timeout * 2, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", etcd.request_timeout * 2)))
}

/// Streams a snapshot from the first member that gives one into `file` (created 0600).
/// Returns the member and the byte count.
async fn snapshot(etcd: &EtcdTarget, file: &Path, within: Duration) -> Result<(String, u64), String> {
    let end = Instant::now() + within;
    let mut errors = Vec::new();
    for ep in &etcd.endpoints {
        let left = end.saturating_duration_since(Instant::now());
        let attempt = async {
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(file)
                .await
                .map_err(|e| format!("create {}: {e}", file.display()))?;
            let mut c = etcd.member_client(ep).await.map_err(|e| e.to_string())?;
            let mut s = c.snapshot().await.map_err(|e| crate::target::etcd::describe(&e))?;
            let mut n = 0u64;
            while let Some(m) = s.message().await.map_err(|e| crate::target::etcd::describe(&e))? {
                f.write_all(m.blob()).await.map_err(|e| format!("write {}: {e}", file.display()))?;
                n += m.blob().len() as u64;
            }
            f.sync_all().await.map_err(|e| format!("sync {}: {e}", file.display()))?;
            Ok::<_, String>(n)
        };
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(n)) if n > 0 => return Ok((ep.clone(), n)),
            Ok(Ok(_)) => errors.push(format!("{ep}: empty snapshot")),
            Ok(Err(e)) => errors.push(format!("{ep}: {e}")),
            Err(_) => errors.push(format!("{ep}: not complete within {within:?}")),
        }
        if Instant::now() >= end {
            break;
        }
    }
    Err(format!("no member gave a snapshot: {}", errors.join("; ")))
}

/// Runs a local tool to completion within [`TOOL_DEADLINE`]; its stdout, or an error naming
/// the command and its stderr.
async fn run(prog: &Path, args: &[&str]) -> Result<String, String> {
    let shown = format!("{} {}", prog.display(), args.join(" "));
    let child = tokio::process::Command::new(prog)
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TOOL_DEADLINE, child)
        .await
        .map_err(|_| format!("`{shown}` did not finish within {TOOL_DEADLINE:?}"))?
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{shown}` exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two distinct free loopback ports (both listeners are held until both are known).
fn free_ports() -> Result<(u16, u16), String> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"));
    let (a, b) = (bind()?, bind()?);
    let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    Ok((port(&a)?, port(&b)?))
}

/// The scratch member: a child of this process that dies with it (parent-death signal), and
/// is also found by its data directory if it outlives it.
struct Scratch {
    child: tokio::process::Child,
}

impl Scratch {
    async fn start(tools: &Tools, dir: &Path, data: &Path, client: &str, peer: &str) -> Result<Scratch, String> {
        let log = dir.join("etcd.log");
        let logf = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let errf = logf.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(&tools.etcd);
        cmd.arg("--name")
            .arg(SCRATCH_NAME)
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(errf)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child =
            cmd.spawn().map_err(|e| format!("cannot start the scratch etcd ({}): {e}", tools.etcd.display()))?;
        let mut s = Scratch { child };
        let target = EtcdTarget::new(vec![client.to_string()], None).map_err(|e| e.to_string())?;
        let end = Instant::now() + SCRATCH_READY;
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!(
                    "the scratch etcd restored from the snapshot exited with {status}: {}",
                    crate::rig::process::tail(&log, 5)
                ));
            }
            let why = match crate::probe::etcd::status_of(&target, client).await {
                Ok(_) => return Ok(s),
                Err(e) => e,
            };
            if Instant::now() >= end {
                s.stop().await;
                return Err(format!(
                    "the scratch etcd restored from the snapshot does not answer within {SCRATCH_READY:?}: {why}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Creates the scratch directory, 0700 (the snapshot in it holds every Secret).
pub fn create_scratch(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| format!("create {}: {e}", dir.display()))
}

/// Stops any scratch member left in `dir` (found by its `--data-dir`) and removes `dir`.
/// Removing what is already gone succeeds.
pub async fn remove_scratch(dir: &Path) -> Result<(), String> {
    let procs = crate::rig::process::etcd_with_arg_prefix(&format!("--data-dir={}/", dir.display()));
    let stuck = crate::rig::process::stop_all(&procs, Duration::from_secs(5)).await;
    if !stuck.is_empty() {
        return Err(format!("scratch etcd pid(s) {stuck:?} in {} do not stop", dir.display()));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}
