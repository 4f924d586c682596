//! The rig's network: one network namespace per member, a veth pair from each to a bridge in
//! the root namespace that holds the gateway address, and the teardown of all of it by the
//! rig id prefix (so that a half-built rig is removed as well as a whole one).
//!
//! Names: rig id `hdXXXXXX` (hashed from the rig directory), namespace `hdXXXXXX-m1`, bridge
//! `hdXXXXXX-br`, veth `hdXXXXXX-m1` (root side) and `hdXXXXXX-m1c` (member side): all
//! within the 15 characters an interface name may have.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::node::NodeAccess;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("rig network: {0}")]
    Command(#[from] crate::node::NodeError),
    #[error("find a free /24 for the rig network: every 10.213.X.0/24 overlaps a route of this machine")]
    NoSubnet,
    #[error("take the network lock {path}: {message}")]
    Lock { path: String, message: String },
    #[error("network namespaces {0} already exist (left by an earlier rig in this directory? run `hadrill rig down --dir` on it)")]
    Exists(String),
}

/// Deadline of every `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// The first two octets of the rig subnets.
const NET: [u8; 2] = [10, 213];
/// Address of member i (1-based) is `.10+i`; the gateway is `.1`.
const MEMBER_BASE: u8 = 10;

/// The rig id: `hd` and 6 hex digits of an FNV-1a hash of the directory (stable across builds).
pub fn rig_id(dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("hd{:06x}", (h ^ (h >> 32)) & 0xff_ffff)
}

pub fn netns_name(id: &str, member: &str) -> String {
    format!("{id}-{member}")
}
pub fn bridge_name(id: &str) -> String {
    format!("{id}-br")
}
pub fn veth_root(id: &str, member: &str) -> String {
    format!("{id}-{member}")
}
pub fn veth_member(id: &str, member: &str) -> String {
    format!("{id}-{member}c")
}

/// The addresses of a rig network on 10.213.`third`.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub third: u8,
}

impl Subnet {
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.third, 1)
    }
    /// Member `index` (0-based).
    pub fn member(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.third, MEMBER_BASE + 1 + index as u8)
    }
    pub fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", NET[0], NET[1], self.third)
    }
}

/// Parses `a.b.c.d/len` (or a bare address, /32). None for `default` and anything else.
pub fn parse_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    if len > 32 {
        return None;
    }
    Some((a.parse().ok()?, len))
}

/// Whether two prefixes share an address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    (u32::from(a.0) & mask) == (u32::from(b.0) & mask)
}

/// The first 10.213.X.0/24, starting at `start`, that overlaps none of `used` (the default
/// route does not count).
pub fn free_subnet(used: &[(Ipv4Addr, u8)], start: u8) -> Option<Subnet> {
    (0..=255u16).map(|i| start.wrapping_add(i as u8)).filter(|x| *x != 0 && *x != 255).find_map(|x| {
        let net = (Ipv4Addr::new(NET[0], NET[1], x, 0), 24);
        (!used.iter().any(|u| u.1 > 0 && overlaps(*u, net))).then_some(Subnet { third: x })
    })
}

/// The destinations of `ip -4 route` (all tables) and the prefixes of `ip -4 addr`.
async fn used_prefixes() -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    let mut out = Vec::new();
    let routes = ip(&["ip", "-4", "route", "show", "table", "all"]).await?;
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let mut first = words.next().unwrap_or_default();
        if matches!(first, "local" | "broadcast" | "unicast" | "blackhole" | "unreachable" | "prohibit" | "throw") {
            first = words.next().unwrap_or_default();
        }
        out.extend(parse_prefix(first));
    }
    let addrs = ip(&["ip", "-4", "-o", "addr", "show"]).await?;
    for line in addrs.lines() {
        let mut words = line.split_whitespace();
        if words.any(|w| w == "inet") {
            out.extend(words.next().and_then(parse_prefix));
        }
    }
    Ok(out)
}

async fn ip(argv: &[&str]) -> Result<String, NetError> {
    Ok(NodeAccess::Local { netns: None }.exec(argv, IP_TIMEOUT).await?.stdout)
}

/// Serializes subnet choice and bridge creation between rigs started at the same time.
async fn lock() -> Result<Flock<File>, NetError> {
    let dir = if Path::new("/run/lock").is_dir() { Path::new("/run/lock").to_path_buf() } else { std::env::temp_dir() };
    let path = dir.join("hadrill-rig-net.lock");
    let fail = |m: String| NetError::Lock { path: path.display().to_string(), message: m };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| fail(e.to_string()))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, e)) => return Err(fail(format!("held by another rig for 30s ({e})"))),
        }
    }
}

/// What [`create`] built.
#[derive(Debug, Clone)]
pub struct Built {
    pub subnet: Subnet,
    /// Per member, in order: (namespace, address).
    pub members: Vec<(String, Ipv4Addr)>,
}

/// Creates the bridge and, per member, a namespace with loopback up and a veth to the
/// bridge. On error the caller tears down by prefix.
pub async fn create(id: &str, members: &[String]) -> Result<Built, NetError> {
    let prefix = format!("{id}-");
    let existing = list_netns(&prefix).await?;
    if !existing.is_empty() {
        return Err(NetError::Exists(existing.join(", ")));
    }
    let br = bridge_name(id);
    let subnet = {
        let _lock = lock().await?;
        let used = used_prefixes().await?;
        let start = u8::from_str_radix(&id[id.len() - 2..], 16).unwrap_or(1);
        let subnet = free_subnet(&used, start).ok_or(NetError::NoSubnet)?;
        ip(&["ip", "link", "add", &br, "type", "bridge"]).await?;
        let gw = format!("{}/24", subnet.gateway());
        ip(&["ip", "addr", "add", &gw, "dev", &br]).await?;
        ip(&["ip", "link", "set", &br, "up"]).await?;
        subnet
    };
    if bridged_traffic_is_filtered() {
        // br_netfilter hands bridged frames to the FORWARD chain (where Docker sets DROP):
        // let member-to-member traffic across our own bridge through
        let comment = rule_comment(id);
        ip(&[
            "iptables",
            "-w",
            "5",
            "-I",
            "FORWARD",
            "-i",
            &br,
            "-o",
            &br,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ])
        .await?;
    }
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let ns = netns_name(id, m);
        let (vr, vm) = (veth_root(id, m), veth_member(id, m));
        let addr = subnet.member(i);
        let cidr = format!("{addr}/24");
        ip(&["ip", "netns", "add", &ns]).await?;
        ip(&["ip", "-n", &ns, "link", "set", "lo", "up"]).await?;
        ip(&["ip", "link", "add", &vr, "type", "veth", "peer", "name", &vm, "netns", &ns]).await?;
        ip(&["ip", "link", "set", &vr, "master", &br, "up"]).await?;
        ip(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &vm]).await?;
        ip(&["ip", "-n", &ns, "link", "set", &vm, "up"]).await?;
        out.push((ns, addr));
    }
    Ok(Built { subnet, members: out })
}

/// Adds one more host to a rig network that [`create`] built: a namespace `id-short` with
/// loopback up, a veth `id-short` / `id-shortc` to the bridge, `addr`/24 on it, and a default
/// route through the gateway (components that pick their address from the default route
/// find this one). `short` is at most 5 characters (interface names have 15).
pub async fn add_host(id: &str, short: &str, addr: Ipv4Addr) -> Result<String, NetError> {
    let ns = netns_name(id, short);
    let (vr, vm) = (veth_root(id, short), veth_member(id, short));
    let o = addr.octets();
    let gw = Ipv4Addr::new(o[0], o[1], o[2], 1).to_string();
    let cidr = format!("{addr}/24");
    ip(&["ip", "netns", "add", &ns]).await?;
    ip(&["ip", "-n", &ns, "link", "set", "lo", "up"]).await?;
    ip(&["ip", "link", "add", &vr, "type", "veth", "peer", "name", &vm, "netns", &ns]).await?;
    ip(&["ip", "link", "set", &vr, "master", &bridge_name(id), "up"]).await?;
    ip(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &vm]).await?;
    ip(&["ip", "-n", &ns, "link", "set", &vm, "up"]).await?;
    ip(&["ip", "-n", &ns, "route", "add", "default", "via", &gw]).await?;
    Ok(ns)
}

/// Whether bridged frames go through iptables (br_netfilter loaded and enabled) and iptables
/// is there to let ours through.
fn bridged_traffic_is_filtered() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").map(|s| s.trim() == "1").unwrap_or(false)
        && which("iptables").is_some()
}

/// The comment that marks the root namespace's iptables rules of rig `id`.
pub fn rule_comment(id: &str) -> String {
    format!("hadrill-rig {id}")
}

/// The `iptables -D` argument lists that delete the FORWARD rules of rig `id`, from the
/// output of `iptables -S FORWARD`.
pub fn rule_deletions(listing: &str, id: &str) -> Vec<Vec<String>> {
    let quoted = format!("\"{}\"", rule_comment(id));
    listing
        .lines()
        .filter(|l| l.starts_with("-A FORWARD ") && l.contains(&quoted))
        .map(|l| {
            let rest = l.replacen("-A FORWARD ", "", 1).replace(&quoted, "\u{0}");
            let mut args: Vec<String> = vec!["-D".into(), "FORWARD".into()];
            args.extend(rest.split_whitespace().map(|w| if w == "\u{0}" { rule_comment(id) } else { w.to_string() }));
            args
        })
        .collect()
}

/// Network namespaces whose name starts with `prefix`.
pub async fn list_netns(prefix: &str) -> Result<Vec<String>, NetError> {
    let text = ip(&["ip", "netns", "list"]).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Interfaces of the root namespace whose name starts with `prefix`.
pub async fn list_links(prefix: &str) -> Result<Vec<String>, NetError> {
    let text = ip(&["ip", "-o", "link", "show"]).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Pids of the processes in a namespace.
pub async fn netns_pids(ns: &str) -> Result<Vec<i32>, NetError> {
    let text = ip(&["ip", "netns", "pids", ns]).await?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Deletes every namespace and root interface of the rig `id` (namespace deletion takes
/// its veth end, addresses, iptables rules and qdiscs with it). Returns what it removed;
/// errors are collected, not fatal, so that the rest is still removed.
pub async fn teardown(id: &str) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{id}-");
    let (mut removed, mut problems) = (Vec::new(), Vec::new());
    if which("ip").is_none() {
        return (removed, problems);
    }
    match list_netns(&prefix).await {
        Ok(list) => {
            for ns in list {
                match ip(&["ip", "netns", "del", &ns]).await {
                    Ok(_) => removed.push(format!("network namespace {ns}")),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    if which("iptables").is_some() {
        match ip(&["iptables", "-w", "5", "-S", "FORWARD"]).await {
            Ok(listing) => {
                for del in rule_deletions(&listing, id) {
                    let mut argv: Vec<&str> = vec!["iptables", "-w", "5"];
                    argv.extend(del.iter().map(String::as_str));
                    match ip(&argv).await {
                        Ok(_) => removed.push(format!("iptables rule FORWARD {}", del[2..].join(" "))),
                        Err(e) => problems.push(e.to_string()),
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    match list_links(&prefix).await {
        Ok(mut list) => {
            // veths first, the bridge last
            list.sort_by_key(|n| n.ends_with("-br"));
            for l in list {
                match ip(&["ip", "link", "del", &l]).await {
                    Ok(_) => removed.push(format!("interface {l}")),
                    // a veth goes away with its namespace's end: gone by now is fine
                    Err(_) if !link_exists(&l).await => {}
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    (removed, problems)
}

async fn link_exists(name: &str) -> bool {
    ip(&["ip", "link", "show", name]).await.is_ok()
}

/// The absolute path of `prog` found on PATH.
pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        let id = rig_id(Path::new("/tmp/.tmpAbCdEf/some/long/rig/directory"));
        assert!(id.starts_with("hd") && id.len() == 8, "{id}");
        for n in [bridge_name(&id), veth_root(&id, "m7"), veth_member(&id, "m7"), netns_name(&id, "m7")] {
            assert!(n.len() <= 15, "{n} is longer than 15");
        }
        assert_eq!(rig_id(Path::new("/a")), rig_id(Path::new("/a")));
        assert_ne!(rig_id(Path::new("/tmp/rig-a")), rig_id(Path::new("/tmp/rig-b")));
    }

    #[test]
    fn subnet_avoids_routes_of_the_machine() {
        let used: Vec<_> = ["10.213.5.0/24", "10.213.6.128/25", "192.0.2.0/24", "0.0.0.0/0"]
            .iter()
            .map(|s| parse_prefix(s).unwrap())
            .collect();
        assert_eq!(free_subnet(&used, 5), Some(Subnet { third: 7 }));
        assert_eq!(free_subnet(&used, 9), Some(Subnet { third: 9 }));
        // a /16 covering all of them leaves nothing
        let all = vec![parse_prefix("10.213.0.0/16").unwrap()];
        assert_eq!(free_subnet(&all, 1), None);
        // a host route inside one /24 takes that /24
        let host = vec![parse_prefix("10.213.9.77").unwrap()];
        assert_eq!(free_subnet(&host, 9), Some(Subnet { third: 10 }));
        assert!(parse_prefix("default").is_none());
    }

    #[test]
    fn only_the_rigs_own_rules_are_deleted() {
        let listing = "-P FORWARD DROP\n\
            -A FORWARD -i hd00aa11-br -o hd00aa11-br -m comment --comment \"hadrill-rig hd00aa11\" -j ACCEPT\n\
            -A FORWARD -i hd00aa12-br -o hd00aa12-br -m comment --comment \"hadrill-rig hd00aa12\" -j ACCEPT\n\
            -A FORWARD -i docker0 -j ACCEPT\n";
        let d = rule_deletions(listing, "hd00aa11");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0],
            [
                "-D",
                "FORWARD",
                "-i",
                "hd00aa11-br",
                "-o",
                "hd00aa11-br",
                "-m",
                "comment",
                "--comment",
                "hadrill-rig hd00aa11",
                "-j",
                "ACCEPT"
            ]
        );
        assert!(rule_deletions(listing, "hd00aa13").is_empty());
    }

    #[test]
    fn addresses_of_a_subnet() {
        let s = Subnet { third: 42 };
        assert_eq!(s.gateway().to_string(), "10.213.42.1");
        assert_eq!(s.member(0).to_string(), "10.213.42.11");
        assert_eq!(s.member(6).to_string(), "10.213.42.17");
        assert_eq!(s.cidr(), "10.213.42.0/24");
    }
}
