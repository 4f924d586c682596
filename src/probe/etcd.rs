//! etcd probes: a snapshot of every member's status (the cluster view), with deadlines.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::target::etcd::{describe, EtcdTarget};

/// One member's `Status` answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub revision: i64,
    pub db_size: i64,
    pub version: String,
    pub errors: Vec<String>,
}

impl MemberStatus {
    /// A `Status` answer as hadrill records it.
    pub fn from_response(endpoint: &str, s: &etcd_client::StatusResponse) -> Result<Self, String> {
        let header = s.header().ok_or("status answer without header")?;
        Ok(MemberStatus {
            endpoint: endpoint.to_string(),
            member_id: header.member_id(),
            leader: s.leader(),
            raft_term: s.raft_term(),
            raft_index: s.raft_index(),
            revision: header.revision(),
            db_size: s.db_size(),
            version: s.version().to_string(),
            errors: s.errors().to_vec(),
        })
    }
}

/// A member as the member list shows it, with its status or why it had none.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberView {
    pub id: u64,
    /// Empty for a member that was added but never started.
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
    pub status: Result<MemberStatus, String>,
}

/// Every member of the cluster at one moment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterView {
    /// The endpoint that answered the member list.
    pub listed_by: String,
    pub members: Vec<MemberView>,
    /// Given endpoints that answered nothing, with the error.
    pub unreachable_endpoints: Vec<(String, String)>,
}

impl ClusterView {
    pub fn name_of(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| if m.name.is_empty() { format!("{id:x}") } else { m.name.clone() })
            .unwrap_or_else(|| format!("{id:x}"))
    }

    /// The leader as seen by a majority of the answering members, if any.
    pub fn leader(&self) -> Option<u64> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for m in &self.members {
            if let Ok(s) = &m.status {
                if s.leader != 0 {
                    *votes.entry(s.leader).or_default() += 1;
                }
            }
        }
        let quorum = self.members.len() / 2 + 1;
        votes.into_iter().find(|(_, n)| *n >= quorum).map(|(id, _)| id)
    }
}

/// Asks every endpoint for its status, then the member list, and tries the advertised client
/// URLs of members no given endpoint covered. Fails only when no endpoint answers at all.
pub async fn cluster_view(target: &EtcdTarget) -> Result<ClusterView, String> {
    let mut statuses: BTreeMap<u64, MemberStatus> = BTreeMap::new();
    let mut unreachable = Vec::new();
    let answers = futures::future::join_all(target.endpoints.iter().map(|e| status_of(target, e))).await;
    for (e, r) in target.endpoints.iter().zip(answers) {
        match r {
            Ok(s) => {
                statuses.insert(s.member_id, s);
            }
            Err(err) => unreachable.push((e.clone(), err)),
        }
    }
    // the member list from the first endpoint that answers it
    let mut list = None;
    for s in statuses.values() {
        if let Ok(mut c) = target.member_client(&s.endpoint).await {
            match c.member_list().await {
                Ok(l) => {
                    list = Some((s.endpoint.clone(), l));
                    break;
                }
                Err(_) => continue,
            }
        }
    }
    let Some((listed_by, list)) = list else {
        let why = unreachable.iter().map(|(e, m)| format!("{e}: {m}")).collect::<Vec<_>>().join("; ");
        return Err(if why.is_empty() { "no endpoint answered the member list".into() } else { why });
    };
    let mut members = Vec::new();
    for m in list.members() {
        let mut status = statuses.remove(&m.id()).ok_or_else(|| "no given endpoint is this member".to_string());
        if status.is_err() {
            // not among the given endpoints: try what it advertises
            let mut last = "no client URL advertised (never started?)".to_string();
            for url in m.client_urls() {
                match status_of(target, url).await {
                    Ok(s) if s.member_id == m.id() => {
                        status = Ok(s);
                        break;
                    }
                    Ok(s) => last = format!("{url} answered as member {:x}", s.member_id),
                    Err(e) => last = format!("{url}: {e}"),
                }
            }
            if status.is_err() {
                status = Err(last);
            }
        }
        members.push(MemberView {
            id: m.id(),
            name: m.name().to_string(),
            client_urls: m.client_urls().to_vec(),
            peer_urls: m.peer_urls().to_vec(),
            is_learner: m.is_learner(),
            status,
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(ClusterView { listed_by, members, unreachable_endpoints: unreachable })
}

/// One member's status through its own endpoint, bounded by the target's request timeout.
pub async fn status_of(target: &EtcdTarget, endpoint: &str) -> Result<MemberStatus, String> {
    let deadline = target.request_timeout + target.connect_timeout;
    let fut = async {
        let mut c = target.member_client(endpoint).await.map_err(|e| e.to_string())?;
        let s = c.status().await.map_err(|e| describe(&e))?;
        MemberStatus::from_response(endpoint, &s)
    };
    match tokio::time::timeout(deadline + Duration::from_millis(200), fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no status answer within {deadline:?}")),
    }
}

/// Deletes every key under `prefix` through the cluster (require-leader); how many were
/// deleted. Used to remove what hadrill wrote: probe keys, markers.
pub async fn delete_prefix(etcd: &EtcdTarget, prefix: &str) -> Result<i64, String> {
    let deadline = etcd.request_timeout * 2;
    let fut = async {
        let mut c = etcd.cluster_client(true).await.map_err(|e| e.to_string())?;
        let r = c
            .delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .map_err(|e| crate::target::etcd::describe(&e))?;
        Ok(r.deleted())
    };
    tokio::time::timeout(deadline, fut).await.unwrap_or_else(|_| Err(format!("no answer within {deadline:?}")))
}
