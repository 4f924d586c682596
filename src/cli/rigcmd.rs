//! `hadrill rig up|status|down`: the local rig of real etcd members.

use std::path::PathBuf;

use super::Global;
use crate::exit::{Code, Fatal};
use crate::rig::{self, Isolation, RigSpec};

#[derive(Debug, clap::Subcommand)]
pub enum RigCmd {
    /// Start N etcd members with mutual TLS and write the target file.
    Up {
        #[arg(long, default_value_t = 3, value_name = "N")]
        members: usize,
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Isolation::Auto)]
        isolation: Isolation,
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
        RigCmd::Up { members, dir, isolation } => {
            if !(1..=7).contains(&members) {
                return Err(Fatal::usage(format!("--members {members} is out of range (1 to 7)")));
            }
            let dir = dir.unwrap_or_else(rig::default_dir);
            let st = rt
                .block_on(rig::up(&RigSpec { dir: dir.clone(), members, isolation }))
                .map_err(|e| if e.is_usage() { Fatal::usage(crate::exit::chain(&e)) } else { Fatal::unreachable(crate::exit::chain(&e)) })?;
            print!("{}", rig::describe(&st));
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
