//! `hadrill rig up|status|down`: the local rig of real etcd members, and in kube mode a whole
//! HA control plane (apiservers behind HAProxy, controller-managers, schedulers).

use std::path::PathBuf;

use super::Global;
use crate::exit::{Code, Fatal};
use crate::rig::{self, Isolation, RigSpec};

#[derive(Debug, clap::Subcommand)]
pub enum RigCmd {
    /// Start N etcd members with mutual TLS and write the target file; with the Kubernetes
    /// server binaries (--kube-bin, or on PATH) also 3 apiservers behind HAProxy, 2
    /// controller-managers and 2 schedulers.
    Up {
        #[arg(long, default_value_t = 3, value_name = "N")]
        members: usize,
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Isolation::Auto)]
        isolation: Isolation,
        /// Directory of kube-apiserver, kube-controller-manager and kube-scheduler (the
        /// Kubernetes server release's bin directory; kube-apiserver alone, as in envtest's
        /// assets, runs no controller-managers or schedulers); default: PATH, when
        /// kube-apiserver is there.
        #[arg(long, value_name = "DIR")]
        kube_bin: Option<PathBuf>,
        /// Only etcd, even when the Kubernetes binaries are on PATH.
        #[arg(long, conflicts_with = "kube_bin")]
        no_kube: bool,
    },
    /// Show the members, their pids and health.
    Status {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Stop every member and remove the rig's files, namespaces and rules (safe to repeat).
    Down {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn rig(_g: &Global, cmd: RigCmd) -> Result<Code, Fatal> {
    let rt = super::runtime()?;
    match cmd {
        RigCmd::Up { members, dir, isolation, kube_bin, no_kube } => {
            if !(1..=7).contains(&members) {
                return Err(Fatal::usage(format!("--members {members} is out of range (1 to 7)")));
            }
            let dir = dir.unwrap_or_else(rig::default_dir);
            let kube = kube_binaries(kube_bin.as_deref(), no_kube, isolation)?;
            if let Some(b) = &kube {
                eprintln!("hadrill: kube mode with the binaries in {} ({})", b.dir.display(), b.runs());
                for a in b.absent() {
                    eprintln!("hadrill: {}", a.note());
                }
            }
            let st = rt.block_on(rig::up_with_kube(&RigSpec { dir: dir.clone(), members, isolation }, kube)).map_err(
                |e| {
                    if e.is_usage() {
                        Fatal::usage(crate::exit::chain(&e))
                    } else {
                        Fatal::unreachable(crate::exit::chain(&e))
                    }
                },
            )?;
            print!("{}", rig::describe(&st));
            if st.kube.is_none() {
                println!(
                    "kube mode: off (give --kube-bin DIR with the Kubernetes server binaries to add a control plane)"
                );
            }
            println!("target file: {}", dir.join("target.yaml").display());
            println!("run against it: hadrill run --config {}", dir.join("target.yaml").display());
            Ok(Code::Ok)
        }
        RigCmd::Status { dir } => {
            let dir = dir.unwrap_or_else(rig::default_dir);
            let st = rig::status(&dir).map_err(|e| Fatal::usage(crate::exit::chain(&e)))?;
            print!("{}", rig::describe(&st));
            print!("{}", rt.block_on(rig::lifecycle::health(&st)));
            Ok(Code::Ok)
        }
        RigCmd::Down { dir } => {
            let dir = dir.unwrap_or_else(rig::default_dir);
            let r = rt.block_on(rig::down(&dir)).map_err(|e| Fatal::failed(crate::exit::chain(&e)))?;
            for s in &r.stopped {
                println!("stopped {s}");
            }
            for s in &r.removed {
                println!("removed {s}");
            }
            println!("rig {} is down", dir.display());
            Ok(Code::Ok)
        }
    }
}

/// The Kubernetes binaries for kube mode: those in `--kube-bin` (an error when kube-apiserver
/// is not there), else those on PATH when kube-apiserver is there and namespaces can be used.
pub(super) fn kube_binaries(
    given: Option<&std::path::Path>,
    off: bool,
    isolation: Isolation,
) -> Result<Option<rig::kube::Binaries>, Fatal> {
    if off {
        return Ok(None);
    }
    match given {
        Some(d) => rig::kube::Binaries::find(Some(d)).map(Some).map_err(|e| Fatal::usage(e.to_string())),
        // from PATH only where kube mode can run: root, namespaces (else etcd only, as before)
        None if isolation == Isolation::Loopback
            || !nix::unistd::geteuid().is_root()
            || rig::net::which("ip").is_none() =>
        {
            Ok(None)
        }
        None => rig::kube::Binaries::on_path().map_err(|e| {
            Fatal::usage(format!("kube-apiserver is on PATH but kube mode cannot run: {e} (or give --no-kube)"))
        }),
    }
}
