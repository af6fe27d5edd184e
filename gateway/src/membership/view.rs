//! The membership view: every accepted record indexed by key, with the derived facts the rest
//! of the gateway reads (members, revoked orgs, gateways, nodes, votes, enode owners) and the
//! per-origin digests the sync protocol compares. Pure: no IO, no clocks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use fedgw_certs::envelope::Signer;
use fedgw_proto::domain::Node;
use fedgw_proto::enode::EnodeId;
use fedgw_proto::v1 as pb;
use sha2::Digest;

use super::GatewayId;
use super::record::{Body, Kind, RecordKey, Reject, Verified};
use crate::config::Consensus;

/// How many replicas a site may have; record seqs are spread over them modulo this.
pub const SEQ_REPLICAS: u64 = 16;

/// `seq` rounded up to the next value congruent to `replica_index` modulo [`SEQ_REPLICAS`]
/// (`seq` itself when it already is).
pub fn seq_for_replica(seq: u64, replica_index: u8) -> u64 {
    let want = u64::from(replica_index) % SEQ_REPLICAS;
    let have = seq % SEQ_REPLICAS;
    seq.saturating_add((want + SEQ_REPLICAS - have) % SEQ_REPLICAS)
}

/// One held record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Version.
    pub seq: u64,
    /// SHA-256 of the envelope.
    pub hash: [u8; 32],
    /// Content.
    pub body: Body,
    /// Who signed it.
    pub signer: Signer,
    /// The envelope, for relaying.
    pub bytes: Arc<Vec<u8>>,
    /// The view revision at which this entry was applied ([`View::changed_since`]).
    pub rev: u64,
}

/// Count and XOR-hash of one origin's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginSum {
    /// Records held for the origin.
    pub count: u64,
    /// XOR of SHA-256(key ‖ seq ‖ envelope hash).
    pub hash: [u8; 32],
}

fn entry_hash(key: &RecordKey, seq: u64, env_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(key.to_string().as_bytes());
    h.update(seq.to_be_bytes());
    h.update(env_hash);
    h.finalize().into()
}

fn xor(a: &mut [u8; 32], b: &[u8; 32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// What to do with a verified record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New or newer: store, apply, forward.
    Accept,
    /// Already held byte for byte: nothing to do.
    Duplicate,
    /// Refused.
    Reject(Reject),
}

/// A node as the view reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Owning org.
    pub org: String,
    /// Node name.
    pub name: String,
    /// Version.
    pub seq: u64,
    /// The node its record announces, checked when the record was read.
    pub node: Node,
}

impl NodeView {
    /// The node's consortium key, `org/name`.
    pub fn key(&self) -> fedgw_certs::ids::NodeKey {
        fedgw_certs::ids::NodeKey::new(&self.org, &self.name)
    }
}

/// An open validator proposal as the view reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalView {
    /// The node the proposal is about.
    pub node: fedgw_certs::ids::NodeKey,
    /// The proposal's seq (approvals name it).
    pub seq: u64,
    /// `true`: add the node to the validator set; `false`: remove it.
    pub add: bool,
    /// The node's 64-byte enode id.
    pub enode_id: Vec<u8>,
    /// The proposing org (the signer).
    pub proposer: String,
}

/// The membership view.
#[derive(Debug, Default, Clone)]
pub struct View {
    records: BTreeMap<RecordKey, Entry>,
    hashes: HashSet<[u8; 32]>,
    origins: BTreeMap<String, OriginSum>,
    enode_owner: HashMap<EnodeId, (String, String)>,
    revoked: BTreeSet<String>,
    /// Keys dropped since the last [`View::take_dropped`] (a revoked org's own records).
    dropped: Vec<RecordKey>,
    /// Counts applied records; each held entry carries the revision it was applied at.
    rev: u64,
    /// Revision → the key applied at it, for every held entry: what changed since a revision
    /// is a range of this map, whatever the view's size.
    revs: BTreeMap<u64, RecordKey>,
    /// Set by the owner when it replaces the view by one rebuilt from the store: revisions of
    /// two generations are not comparable.
    generation: u64,
    /// The consortium's consensus: validator records are refused unless it has a validator set.
    consensus: Consensus,
}

/// Checks for well-known demo identities (the public qubernetes "7nodes" keys).
fn demo_key(n: &Node) -> Option<&'static str> {
    if n.enode_id
        .as_ref()
        .is_some_and(fedgw_proto::demo_keys::is_demo_enode)
    {
        return Some("qubernetes 7nodes enode id");
    }
    if n.tessera_keys
        .iter()
        .any(fedgw_proto::demo_keys::is_demo_tessera_key)
    {
        return Some("qubernetes 7nodes Tessera key");
    }
    None
}

impl View {
    /// An empty view for a consortium with `consensus` (every member's is the founder's, sent
    /// with the join). [`View::default`] is a view for consensus `none`.
    pub fn new(consensus: Consensus) -> Self {
        View {
            consensus,
            ..View::default()
        }
    }

    /// Decides whether `v` may enter the view.
    pub fn check(&self, v: &Verified) -> Verdict {
        if let Some(held) = self.records.get(&v.key) {
            if v.seq == held.seq {
                return if v.hash == held.hash {
                    Verdict::Duplicate
                } else {
                    Verdict::Reject(Reject::Equivocation(v.seq))
                };
            }
            if v.seq < held.seq {
                return Verdict::Reject(Reject::Stale {
                    got: v.seq,
                    held: held.seq,
                });
            }
        }
        match v.key.kind {
            Kind::Member => {
                if self.revoked.contains(&v.key.org) {
                    return Verdict::Reject(Reject::Revoked(v.key.org.clone()));
                }
            }
            Kind::Revocation => {}
            Kind::Gateway
            | Kind::Node
            | Kind::Vote
            | Kind::Raft
            | Kind::Validator
            | Kind::ValidatorVote
            | Kind::Cert => {
                if self.revoked.contains(&v.key.org) {
                    return Verdict::Reject(Reject::Revoked(v.key.org.clone()));
                }
                if !self.is_member(&v.key.org) {
                    return Verdict::Reject(Reject::NotMember(v.key.org.clone()));
                }
            }
        }
        if matches!(v.key.kind, Kind::Validator | Kind::ValidatorVote)
            && !self.consensus.has_validator_set()
        {
            return Verdict::Reject(Reject::NoValidatorSet(self.consensus.name()));
        }
        if matches!(v.key.kind, Kind::Raft | Kind::Validator) {
            // signed by whichever member added (or proposed) the node: that org must be one now
            if let Signer::Org(o) = &v.signer {
                if self.revoked.contains(o) {
                    return Verdict::Reject(Reject::Revoked(o.clone()));
                }
                if !self.is_member(o) {
                    return Verdict::Reject(Reject::NotMember(o.clone()));
                }
            }
            if let Some(reject) = self.raft_node_check(v) {
                return Verdict::Reject(reject);
            }
        }
        if let Body::Node(n) = &v.body {
            if let Some(what) = demo_key(n) {
                return Verdict::Reject(Reject::DemoKey(what));
            }
            if let Some(id) = &n.enode_id
                && let Some((org, _)) = self.enode_owner.get(id)
                && *org != v.key.org
            {
                return Verdict::Reject(Reject::EnodeTaken(org.clone()));
            }
        }
        Verdict::Accept
    }

    /// A raft record must name a node the view holds, with the same enode id. A node deleted
    /// since (its tombstone held) still takes its raft record: the id names the member to
    /// remove, and a gateway that catches up receives the tombstone before the raft record, so
    /// refusing it there would leave two views that never agree.
    fn raft_node_check(&self, v: &Verified) -> Option<Reject> {
        let enode_id = match &v.body {
            Body::Raft(r) => &r.enode_id,
            Body::Validator(p) => &p.enode_id,
            _ => return None,
        };
        let node = RecordKey {
            kind: Kind::Node,
            org: v.key.org.clone(),
            name: v.key.name.clone(),
        };
        match self.records.get(&node).map(|e| &e.body) {
            Some(Body::Node(n))
                if n.enode_id.as_ref().map(|e| e.as_bytes().as_slice())
                    == Some(enode_id.as_slice()) =>
            {
                None
            }
            Some(Body::Node(_)) => Some(Reject::EnodeMismatch),
            Some(Body::Tombstone) => None,
            _ => Some(Reject::UnknownNode),
        }
    }

    /// Applies an accepted record (after [`Self::check`] said [`Verdict::Accept`]).
    pub fn apply(&mut self, v: Verified) {
        let sum = self.origins.entry(v.key.org.clone()).or_default();
        if let Some(old) = self.records.get(&v.key) {
            self.revs.remove(&old.rev);
            self.hashes.remove(&old.hash);
            xor(&mut sum.hash, &entry_hash(&v.key, old.seq, &old.hash));
            sum.count -= 1;
            if let Body::Node(n) = &old.body
                && let Some(id) = &n.enode_id
                && self.enode_owner.get(id) == Some(&(v.key.org.clone(), v.key.name.clone()))
            {
                self.enode_owner.remove(id);
            }
        }
        xor(&mut sum.hash, &entry_hash(&v.key, v.seq, &v.hash));
        sum.count += 1;
        self.hashes.insert(v.hash);
        match &v.body {
            Body::Node(Node {
                enode_id: Some(id), ..
            }) => {
                self.enode_owner
                    .insert(*id, (v.key.org.clone(), v.key.name.clone()));
            }
            Body::Revocation(_) => {
                self.revoked.insert(v.key.org.clone());
            }
            _ => {}
        }
        let revoked = matches!(v.body, Body::Revocation(_)).then(|| v.key.org.clone());
        self.rev += 1;
        self.revs.insert(self.rev, v.key.clone());
        self.records.insert(
            v.key,
            Entry {
                seq: v.seq,
                hash: v.hash,
                body: v.body,
                signer: v.signer,
                bytes: v.bytes,
                rev: self.rev,
            },
        );
        if let Some(org) = revoked {
            self.drop_revoked(&org);
        }
    }

    /// Drops the gateway, node, vote and raft records about `org` and the raft records it
    /// signed about other orgs' nodes (its member and revocation records stay; the site that
    /// acts on the raft cluster next publishes those raft ids again). A gateway that loads its store after the revocation refuses
    /// those records ([`Reject::Revoked`]), so a gateway that saw the revocation live must not
    /// keep them either: both then hold the same records and agree on the digest.
    fn drop_revoked(&mut self, org: &str) {
        let signer = Signer::Org(org.to_owned());
        let keys: Vec<RecordKey> = self
            .records
            .iter()
            .filter(|(k, e)| {
                (k.org == org && !k.kind.root_only())
                    || (matches!(k.kind, Kind::Raft | Kind::Validator) && e.signer == signer)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(old) = self.records.remove(&key) else {
                continue;
            };
            self.revs.remove(&old.rev);
            self.hashes.remove(&old.hash);
            if let Some(sum) = self.origins.get_mut(&key.org) {
                xor(&mut sum.hash, &entry_hash(&key, old.seq, &old.hash));
                sum.count -= 1;
                if sum.count == 0 {
                    self.origins.remove(&key.org);
                }
            }
            if let Body::Node(n) = &old.body
                && let Some(id) = &n.enode_id
                && self.enode_owner.get(id) == Some(&(key.org.clone(), key.name.clone()))
            {
                self.enode_owner.remove(id);
            }
            self.dropped.push(key);
        }
    }

    /// The keys dropped since the last call (to delete them from the store too).
    pub fn take_dropped(&mut self) -> Vec<RecordKey> {
        std::mem::take(&mut self.dropped)
    }

    /// Whether an envelope with this SHA-256 is held: the same bytes were verified and applied
    /// before, so a copy needs no signature check.
    pub fn holds(&self, envelope_hash: &[u8; 32]) -> bool {
        self.hashes.contains(envelope_hash)
    }

    /// The view's revision: it grows with every applied record.
    pub fn rev(&self) -> u64 {
        self.rev
    }

    /// The generation: revisions are comparable only within one (see [`Self::set_generation`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks a view rebuilt from scratch as replacing one of `generation - 1`, so readers that
    /// track revisions know to start over.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The keys of the records applied after revision `rev` and still held, oldest first: a
    /// key applied twice is listed once. A record dropped since (a revoked org's) is not
    /// listed; the revocation record that dropped it is. Costs the number of keys listed.
    pub fn changed_since(&self, rev: u64) -> impl Iterator<Item = &RecordKey> + '_ {
        self.revs.range(rev.saturating_add(1)..).map(|(_, key)| key)
    }

    /// The node `org`/`name` if it is held, not deleted, and its org is an active member.
    pub fn node(&self, org: &str, name: &str) -> Option<NodeView> {
        if !self.is_member(org) {
            return None;
        }
        let key = RecordKey {
            kind: Kind::Node,
            org: org.to_owned(),
            name: name.to_owned(),
        };
        let entry = self.records.get(&key)?;
        match &entry.body {
            Body::Node(n) => Some(NodeView {
                seq: entry.seq,
                node: n.clone(),
                org: key.org,
                name: key.name,
            }),
            _ => None,
        }
    }

    /// The node (org, name) whose record holds the enode id `id`, if any.
    pub fn enode_owner(&self, id: &EnodeId) -> Option<&(String, String)> {
        self.enode_owner.get(id)
    }

    /// The held record for a key.
    pub fn get(&self, key: &RecordKey) -> Option<&Entry> {
        self.records.get(key)
    }

    /// The next seq for a key published by the replica with index `replica_index` (0 to 15):
    /// `max(held + 1, now_ms)` rounded up to the next value congruent to the index modulo 16
    /// ([`SEQ_REPLICAS`]), so two replicas of a site never sign the same seq for one key.
    pub fn next_seq(&self, key: &RecordKey, now_ms: u64, replica_index: u8) -> u64 {
        let held = self.records.get(key).map_or(0, |e| e.seq);
        seq_for_replica((held + 1).max(now_ms), replica_index)
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether `org` has a member record and is not revoked.
    pub fn is_member(&self, org: &str) -> bool {
        !self.revoked.contains(org)
            && self.records.contains_key(&RecordKey {
                kind: Kind::Member,
                org: org.to_owned(),
                name: String::new(),
            })
    }

    /// The revoked orgs.
    pub fn revoked(&self) -> &BTreeSet<String> {
        &self.revoked
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&RecordKey, &Entry)> {
        self.records
            .iter()
            .filter(move |(k, e)| k.kind == kind && !matches!(e.body, Body::Tombstone))
    }

    /// Active members: (org, member record), sorted by org.
    pub fn members(&self) -> Vec<(String, pb::MemberRecord)> {
        self.of_kind(Kind::Member)
            .filter(|(k, _)| !self.revoked.contains(&k.org))
            .filter_map(|(k, e)| match &e.body {
                Body::Member(m) => Some((k.org.clone(), m.clone())),
                _ => None,
            })
            .collect()
    }

    /// Gateways of active members, one per replica (each replica publishes its own record,
    /// named [`GatewayId::record_name`]), sorted by id: the replicas of a site are adjacent,
    /// its first gateway first.
    pub fn gateways(&self) -> Vec<(GatewayId, pb::GatewayRecord)> {
        self.of_kind(Kind::Gateway)
            .filter(|(k, _)| self.is_member(&k.org))
            .filter_map(|(k, e)| match &e.body {
                Body::Gateway(g) => {
                    Some((GatewayId::from_record_name(&k.org, &k.name)?, g.clone()))
                }
                _ => None,
            })
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect()
    }

    /// The sites of active members with their replicas' records (by replica, the first
    /// gateway first), keyed by [`GatewayId::site_id`].
    pub fn sites(&self) -> BTreeMap<GatewayId, Vec<(GatewayId, pb::GatewayRecord)>> {
        let mut out: BTreeMap<GatewayId, Vec<_>> = BTreeMap::new();
        for (id, g) in self.gateways() {
            out.entry(id.site_id()).or_default().push((id, g));
        }
        out
    }

    /// The replicas of `site` (any replica's id names the site), by replica.
    pub fn replicas_of(&self, site: &GatewayId) -> Vec<(GatewayId, pb::GatewayRecord)> {
        self.site_gateways(site)
            .map(|(id, g)| (id, g.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect()
    }

    /// How many replicas `site` has (any replica's id names the site); asked for each new
    /// tunnel stream, so it reads only that org's `Gateway` records and copies none.
    pub fn replica_count(&self, site: &GatewayId) -> usize {
        self.site_gateways(site).count()
    }

    /// The `Gateway` records of `site`'s replicas, read from the range of the record map that
    /// holds its org's gateway records named `<site>` or `<site>.<replica>` (record keys order
    /// by kind, org, then name, and every such name starts with the site).
    fn site_gateways<'a>(
        &'a self,
        site: &'a GatewayId,
    ) -> impl Iterator<Item = (GatewayId, &'a pb::GatewayRecord)> + 'a {
        let start = RecordKey {
            kind: Kind::Gateway,
            org: site.org.clone(),
            name: site.site.clone(),
        };
        let member = self.is_member(&site.org);
        self.records
            .range(start..)
            .take_while(move |(k, _)| {
                member
                    && k.kind == Kind::Gateway
                    && k.org == site.org
                    && k.name.starts_with(site.site.as_str())
            })
            .filter_map(move |(k, e)| match &e.body {
                Body::Gateway(g) => GatewayId::from_record_name(&k.org, &k.name)
                    .filter(|id| id.same_site(site))
                    .map(|id| (id, g)),
                _ => None,
            })
    }

    /// Nodes of active members, sorted by (org, name).
    pub fn nodes(&self) -> Vec<NodeView> {
        self.of_kind(Kind::Node)
            .filter(|(k, _)| self.is_member(&k.org))
            .filter_map(|(k, e)| match &e.body {
                Body::Node(n) => Some(NodeView {
                    org: k.org.clone(),
                    name: k.name.clone(),
                    seq: e.seq,
                    node: n.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Published raft ids of active members' nodes, deleted nodes included: `(node, raft id,
    /// enode id)`, sorted by node.
    pub fn raft_ids(&self) -> Vec<(fedgw_certs::ids::NodeKey, u16, Vec<u8>)> {
        self.of_kind(Kind::Raft)
            .filter(|(k, _)| self.is_member(&k.org))
            .filter_map(|(k, e)| match &e.body {
                Body::Raft(r) => Some((
                    fedgw_certs::ids::NodeKey::new(&k.org, &k.name),
                    u16::try_from(r.raft_id).ok()?,
                    r.enode_id.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Open validator proposals about active members' nodes, sorted by node.
    pub fn validator_proposals(&self) -> Vec<ProposalView> {
        self.of_kind(Kind::Validator)
            .filter(|(k, _)| self.is_member(&k.org))
            .filter_map(|(k, e)| match (&e.body, &e.signer) {
                (Body::Validator(p), Signer::Org(by)) => Some(ProposalView {
                    node: fedgw_certs::ids::NodeKey::new(&k.org, &k.name),
                    seq: e.seq,
                    add: p.add,
                    enode_id: p.enode_id.clone(),
                    proposer: by.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Certificates published by active members (certificate transparency): (org, record),
    /// sorted by (org, serial).
    pub fn certs(&self) -> Vec<(String, pb::CertRecord)> {
        self.of_kind(Kind::Cert)
            .filter(|(k, _)| self.is_member(&k.org))
            .filter_map(|(k, e)| match &e.body {
                Body::Cert(c) => Some((k.org.clone(), c.clone())),
                _ => None,
            })
            .collect()
    }

    /// Active members whose vote approves the proposal about `node` at `proposal_seq`, sorted.
    pub fn validator_approvals(
        &self,
        node: &fedgw_certs::ids::NodeKey,
        proposal_seq: u64,
    ) -> Vec<String> {
        let name = format!("{}.{}", node.org, node.name);
        self.of_kind(Kind::ValidatorVote)
            .filter(|(k, e)| {
                k.name == name
                    && self.is_member(&k.org)
                    && matches!(&e.body, Body::ValidatorVote(v) if v.proposal_seq == proposal_seq)
            })
            .map(|(k, _)| k.org.clone())
            .collect()
    }

    /// Active members that voted to approve `candidate`, sorted.
    pub fn approvals_for(&self, candidate: &str) -> Vec<String> {
        self.of_kind(Kind::Vote)
            .filter(|(k, e)| {
                k.name == candidate
                    && self.is_member(&k.org)
                    && matches!(&e.body, Body::Vote(v) if v.approve)
            })
            .map(|(k, _)| k.org.clone())
            .collect()
    }

    /// Candidates with at least one approval who are not members (pending joins).
    pub fn candidates(&self) -> BTreeSet<String> {
        self.of_kind(Kind::Vote)
            .map(|(k, _)| k.name.clone())
            .filter(|c| !self.is_member(c) && !self.revoked.contains(c))
            .collect()
    }

    /// Per-origin sums, sorted by origin.
    pub fn origin_sums(&self) -> &BTreeMap<String, OriginSum> {
        &self.origins
    }

    /// SHA-256 over every (origin, count, hash): equal on two gateways means equal views.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        for (origin, sum) in &self.origins {
            h.update((origin.len() as u64).to_be_bytes());
            h.update(origin.as_bytes());
            h.update(sum.count.to_be_bytes());
            h.update(sum.hash);
        }
        h.finalize().into()
    }

    /// Every (key, seq) held for `origin`.
    pub fn inventory(&self, origin: &str) -> Vec<(RecordKey, u64)> {
        self.records
            .iter()
            .filter(|(k, _)| k.org == origin)
            .map(|(k, e)| (k.clone(), e.seq))
            .collect()
    }

    /// The envelopes for `origin` that a peer holding `theirs` lacks or holds older.
    pub fn newer_than(&self, origin: &str, theirs: &HashMap<RecordKey, u64>) -> Vec<Arc<Vec<u8>>> {
        self.records
            .iter()
            .filter(|(k, e)| k.org == origin && theirs.get(*k).is_none_or(|s| *s < e.seq))
            .map(|(_, e)| e.bytes.clone())
            .collect()
    }

    /// Every envelope, in ingest priority order (members first).
    pub fn snapshot(&self) -> Vec<Arc<Vec<u8>>> {
        let mut all: Vec<_> = self.records.iter().collect();
        all.sort_by_key(|(k, _)| k.kind.priority());
        all.into_iter().map(|(_, e)| e.bytes.clone()).collect()
    }
}

#[cfg(test)]
mod tests;
