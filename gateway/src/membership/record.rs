//! One membership record: decoding, signature and signer checks, field validation and the
//! authorisation rules (who may sign what). Pure: takes bytes and returns values.
//!
//! | kind        | key (kind/org/name)          | signed by            |
//! |-------------|------------------------------|----------------------|
//! | member      | `member/<org>/`              | the root             |
//! | revocation  | `revocation/<org>/`          | the root             |
//! | gateway     | `gateway/<org>/<site>`       | `<org>`'s CA         |
//! | node        | `node/<org>/<node>`          | `<org>`'s CA         |
//! | vote        | `vote/<voter>/<candidate>`   | `<voter>`'s CA       |
//! | raft        | `raft/<org>/<node>`          | any member's CA      |
//! | validator   | `validator/<org>/<node>`     | any member's CA      |
//! | validator-vote | `validator-vote/<voter>/<org>.<node>` | `<voter>`'s CA |
//! | cert        | `cert/<org>/<serial hex>`    | `<org>`'s CA         |
//!
//! A tombstone replaces a gateway, node, vote, raft, validator or validator-vote record (same
//! key, higher seq) and is signed like the record it deletes. A validator proposal is, like a
//! raft record, signed by another org than the node's: the proposing org. Member and revocation records are never deleted. A raft record is
//! the one kind an org signs about another org's node: the site that added the node to the raft
//! cluster publishes its raft id; the view checks that the signer is a member and that the node
//! exists with that enode id.

use std::sync::Arc;
use std::time::SystemTime;

use fedgw_certs::envelope::{EnvelopeError, Signer, SignerVerifier};
use fedgw_certs::ids::GatewayId;
use fedgw_certs::names::validate_label;
use fedgw_proto::domain::Node;
use fedgw_proto::v1 as pb;
use prost::Message;
use sha2::Digest;

/// The envelope payload type of every record.
pub const PAYLOAD_TYPE: &str = "fedgw.v1.RecordBody";
/// Largest encoded envelope accepted, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024;
/// Most advertised endpoints in a gateway record.
pub const MAX_ADVERTISE: usize = 8;
pub use fedgw_proto::domain::MAX_LIST;

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An admitted org (root-signed).
    Member,
    /// A revoked org (root-signed).
    Revocation,
    /// A site's gateway.
    Gateway,
    /// A chain node.
    Node,
    /// An approval vote for a pending join.
    Vote,
    /// A node's raft id, published by the site that added it to the raft cluster.
    Raft,
    /// An open proposal to add a node to, or remove it from, the QBFT/IBFT validator set.
    Validator,
    /// An org's approval of a validator proposal.
    ValidatorVote,
    /// A certificate the org's CA issued (certificate transparency).
    Cert,
}

impl Kind {
    /// The key prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Member => "member",
            Kind::Revocation => "revocation",
            Kind::Gateway => "gateway",
            Kind::Node => "node",
            Kind::Vote => "vote",
            Kind::Raft => "raft",
            Kind::Validator => "validator",
            Kind::ValidatorVote => "validator-vote",
            Kind::Cert => "cert",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Some(match s {
            "member" => Kind::Member,
            "revocation" => Kind::Revocation,
            "gateway" => Kind::Gateway,
            "node" => Kind::Node,
            "vote" => Kind::Vote,
            "raft" => Kind::Raft,
            "validator" => Kind::Validator,
            "validator-vote" => Kind::ValidatorVote,
            "cert" => Kind::Cert,
            _ => return None,
        })
    }

    /// From the wire enum value; `None` for unspecified or unknown values.
    pub fn from_pb(k: i32) -> Option<Self> {
        Some(match pb::RecordKind::try_from(k).ok()? {
            pb::RecordKind::Member => Kind::Member,
            pb::RecordKind::Revocation => Kind::Revocation,
            pb::RecordKind::Gateway => Kind::Gateway,
            pb::RecordKind::Node => Kind::Node,
            pb::RecordKind::Vote => Kind::Vote,
            pb::RecordKind::Raft => Kind::Raft,
            pb::RecordKind::Validator => Kind::Validator,
            pb::RecordKind::ValidatorVote => Kind::ValidatorVote,
            pb::RecordKind::Cert => Kind::Cert,
            pb::RecordKind::Unspecified => return None,
        })
    }

    /// The wire enum value.
    pub fn to_pb(self) -> pb::RecordKind {
        match self {
            Kind::Member => pb::RecordKind::Member,
            Kind::Revocation => pb::RecordKind::Revocation,
            Kind::Gateway => pb::RecordKind::Gateway,
            Kind::Node => pb::RecordKind::Node,
            Kind::Vote => pb::RecordKind::Vote,
            Kind::Raft => pb::RecordKind::Raft,
            Kind::Validator => pb::RecordKind::Validator,
            Kind::ValidatorVote => pb::RecordKind::ValidatorVote,
            Kind::Cert => pb::RecordKind::Cert,
        }
    }

    /// Whether only the root may sign this kind.
    pub fn root_only(self) -> bool {
        matches!(self, Kind::Member | Kind::Revocation)
    }

    /// Ingest order inside a batch: what others depend on first.
    pub fn priority(self) -> u8 {
        match self {
            Kind::Member => 0,
            Kind::Revocation => 1,
            Kind::Gateway => 2,
            Kind::Vote => 3,
            Kind::Node => 4,
            // after the node it names
            Kind::Raft => 5,
            Kind::Validator => 6,
            Kind::ValidatorVote => 7,
            Kind::Cert => 8,
        }
    }
}

/// `(kind, org, name)`, written `kind/org/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// The kind.
    pub kind: Kind,
    /// The origin org.
    pub org: String,
    /// The name within (kind, org); empty for member and revocation records.
    pub name: String,
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.org, self.name)
    }
}

impl RecordKey {
    /// Parses `kind/org/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '/');
        let kind = Kind::from_str(parts.next()?)?;
        let org = parts.next()?.to_owned();
        let name = parts.next()?.to_owned();
        Some(Self { kind, org, name })
    }
}

/// A record's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// See [`pb::MemberRecord`].
    Member(pb::MemberRecord),
    /// See [`pb::RevocationRecord`].
    Revocation(pb::RevocationRecord),
    /// See [`pb::GatewayRecord`].
    Gateway(pb::GatewayRecord),
    /// A node record ([`pb::NodeRecord`]), checked into a [`Node`].
    Node(Node),
    /// See [`pb::VoteRecord`].
    Vote(pb::VoteRecord),
    /// See [`pb::RaftRecord`].
    Raft(pb::RaftRecord),
    /// See [`pb::ValidatorProposal`].
    Validator(pb::ValidatorProposal),
    /// See [`pb::ValidatorVote`].
    ValidatorVote(pb::ValidatorVote),
    /// See [`pb::CertRecord`], checked by [`check_cert`].
    Cert(pb::CertRecord),
    /// The record was deleted.
    Tombstone,
}

/// A record whose signature, signer and fields check out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its key.
    pub key: RecordKey,
    /// Its version.
    pub seq: u64,
    /// Its content.
    pub body: Body,
    /// Who signed it.
    pub signer: Signer,
    /// The encoded envelope, as received (relayed byte for byte).
    pub bytes: Arc<Vec<u8>>,
    /// SHA-256 of `bytes`.
    pub hash: [u8; 32],
}

/// Why a record was refused. Each has a stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The envelope exceeds [`MAX_ENVELOPE_BYTES`].
    #[error("record too large")]
    TooLarge,
    /// The envelope or payload does not decode.
    #[error("record does not decode")]
    Decode,
    /// The payload type is not [`PAYLOAD_TYPE`].
    #[error("unexpected payload type")]
    PayloadType,
    /// The signer is not trusted or the signature does not verify.
    #[error("signature: {0}")]
    Signature(#[from] EnvelopeError),
    /// A field is out of range or malformed.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// The signer may not sign this record.
    #[error("not authorised: {0}")]
    Unauthorised(String),
    /// The record's org is not an admitted member (or its member record has not arrived yet).
    #[error("org {0:?} is not a member")]
    NotMember(String),
    /// The record's org is revoked.
    #[error("org {0:?} is revoked")]
    Revoked(String),
    /// A newer (or the same) version is already held.
    #[error("stale: seq {got} <= held {held}")]
    Stale {
        /// The received seq.
        got: u64,
        /// The held seq.
        held: u64,
    },
    /// The same seq with different content: the signer equivocated.
    #[error("equivocation at seq {0}")]
    Equivocation(u64),
    /// The enode id belongs to another org's node.
    #[error("enode id already registered by {0}")]
    EnodeTaken(String),
    /// A well-known public demo key.
    #[error("refusing a well-known demo key ({0})")]
    DemoKey(&'static str),
    /// A raft record names a node the view does not hold.
    #[error("raft record for an unknown node")]
    UnknownNode,
    /// A raft record's enode id differs from the node's record.
    #[error("raft record enode id does not match the node's")]
    EnodeMismatch,
}

impl Reject {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Decode => "decode",
            Reject::PayloadType => "payload_type",
            Reject::Signature(_) => "signature",
            Reject::Invalid(_) => "invalid",
            Reject::Unauthorised(_) => "unauthorised",
            Reject::NotMember(_) => "not_member",
            Reject::Revoked(_) => "revoked",
            Reject::Stale { .. } => "stale",
            Reject::Equivocation(_) => "equivocation",
            Reject::EnodeTaken(_) => "enode_taken",
            Reject::DemoKey(_) => "demo_key",
            Reject::UnknownNode => "unknown_node",
            Reject::EnodeMismatch => "enode_mismatch",
        }
    }
}

fn invalid(msg: impl Into<String>) -> Reject {
    Reject::Invalid(msg.into())
}

/// Resolves signer certificates; callers may cache (the result depends only on the bytes and the
/// validity period).
pub trait SignerLookup {
    /// Identifies a signer certificate; see [`SignerVerifier::identify`].
    fn identify(&self, cert: &[u8]) -> Result<(Signer, Vec<u8>), EnvelopeError>;
}

impl SignerLookup for (SignerVerifier, SystemTime) {
    fn identify(&self, cert: &[u8]) -> Result<(Signer, Vec<u8>), EnvelopeError> {
        self.0.identify(cert, self.1)
    }
}

/// Decodes and checks one encoded envelope: size, payload type, signer, signature, fields and
/// who may sign it. Version, membership and uniqueness are the view's business.
pub fn verify(bytes: &[u8], signers: &impl SignerLookup, domain: &str) -> Result<Verified, Reject> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(Reject::TooLarge);
    }
    let env = pb::Envelope::decode(bytes).map_err(|_| Reject::Decode)?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(Reject::PayloadType);
    }
    let [cert] = env.signer_chain.as_slice() else {
        return Err(Reject::Signature(EnvelopeError::ChainLength));
    };
    let (signer, key) = signers.identify(cert)?;
    SignerVerifier::verify(&key, &env.payload_type, &env.payload, &env.signature)?;
    let rec = pb::RecordBody::decode(env.payload.as_slice()).map_err(|_| Reject::Decode)?;
    let (key, body) = check_body(&rec, domain)?;
    authorise(&key, &body, &signer)?;
    Ok(Verified {
        key,
        seq: rec.seq,
        body,
        signer,
        hash: sha2::Sha256::digest(bytes).into(),
        bytes: Arc::new(bytes.to_vec()),
    })
}

fn check_body(rec: &pb::RecordBody, domain: &str) -> Result<(RecordKey, Body), Reject> {
    use pb::record_body::Body as B;
    validate_label("org", &rec.org).map_err(|e| invalid(e.to_string()))?;
    if rec.seq == 0 {
        return Err(invalid("seq must be positive"));
    }
    let body = rec.body.as_ref().ok_or_else(|| invalid("empty body"))?;
    let (kind, body) = match body {
        B::Member(m) => {
            check_member(m, &rec.org, domain)?;
            (Kind::Member, Body::Member(m.clone()))
        }
        B::Revocation(r) => {
            if r.reason.len() > 256 {
                return Err(invalid("revocation reason longer than 256 bytes"));
            }
            (Kind::Revocation, Body::Revocation(r.clone()))
        }
        B::Gateway(g) => {
            check_gateway(g)?;
            (Kind::Gateway, Body::Gateway(g.clone()))
        }
        B::Node(n) => (Kind::Node, Body::Node(check_node(n)?)),
        B::Vote(v) => (Kind::Vote, Body::Vote(*v)),
        B::Raft(r) => {
            if r.raft_id == 0 || r.raft_id > u32::from(u16::MAX) {
                return Err(invalid("raft id must be 1 to 65535"));
            }
            if r.enode_id.len() != 64 {
                return Err(invalid("enode id must be 64 bytes"));
            }
            (Kind::Raft, Body::Raft(r.clone()))
        }
        B::Validator(p) => {
            if p.enode_id.len() != 64 {
                return Err(invalid("enode id must be 64 bytes"));
            }
            (Kind::Validator, Body::Validator(p.clone()))
        }
        B::ValidatorVote(v) => {
            if v.proposal_seq == 0 {
                return Err(invalid(
                    "a validator vote names the proposal's positive seq",
                ));
            }
            (Kind::ValidatorVote, Body::ValidatorVote(*v))
        }
        B::Cert(c) => {
            check_cert(c, &rec.name, &rec.org, domain)?;
            (Kind::Cert, Body::Cert(c.clone()))
        }
        B::Tombstone(t) => {
            let kind = Kind::from_pb(t.kind).ok_or_else(|| invalid("tombstone of unknown kind"))?;
            if kind.root_only() || kind == Kind::Cert {
                return Err(invalid(
                    "member, revocation and cert records cannot be deleted",
                ));
            }
            (kind, Body::Tombstone)
        }
    };
    if kind.root_only() {
        if !rec.name.is_empty() {
            return Err(invalid("member and revocation records have no name"));
        }
    } else if kind == Kind::ValidatorVote {
        // `<node org>.<node name>`: the node whose proposal the vote approves
        let (org, node) = split_node_name(&rec.name)
            .ok_or_else(|| invalid("a validator vote's name is <org>.<node>"))?;
        validate_label("org", org).map_err(|e| invalid(e.to_string()))?;
        validate_label("name", node).map_err(|e| invalid(e.to_string()))?;
    } else if kind == Kind::Gateway {
        // `<site>` or `<site>.<replica>` (docs/DESIGN.md section 14)
        if GatewayId::from_record_name(&rec.org, &rec.name).is_none() {
            return Err(invalid(
                "a gateway record's name is <site> or <site>.<replica>",
            ));
        }
    } else {
        validate_label("name", &rec.name).map_err(|e| invalid(e.to_string()))?;
    }
    Ok((
        RecordKey {
            kind,
            org: rec.org.clone(),
            name: rec.name.clone(),
        },
        body,
    ))
}

/// Splits a validator vote's name, `<node org>.<node name>`, at its only dot.
pub fn split_node_name(name: &str) -> Option<(&str, &str)> {
    let (org, node) = name.split_once('.')?;
    (!node.contains('.')).then_some((org, node))
}

fn check_member(m: &pb::MemberRecord, org: &str, domain: &str) -> Result<(), Reject> {
    // the member's CA must be a CA for exactly this org's subtree
    let ok = fedgw_certs::envelope::org_of_org_ca(&m.org_ca_der, domain).is_some_and(|o| o == org);
    if !ok {
        return Err(invalid(
            "member CA is not constrained to the member's subtree",
        ));
    }
    // empty: the default; otherwise it lands unquoted in Fabric policies and YAML
    if !m.fabric_msp_id.is_empty() && crate::fabric::validate_msp_id(&m.fabric_msp_id).is_err() {
        return Err(invalid("member record has an invalid Fabric MSP ID"));
    }
    Ok(())
}

/// Most names in a cert record.
pub const MAX_CERT_SANS: usize = 32;

/// Checks a cert record: its name is its serial (lowercase hex), the SHA-256 is 32 bytes, at
/// most [`MAX_CERT_SANS`] names of at most 253 bytes, and every DNS name lies in the org's
/// subtree `<org>.<domain>` (the org CA's name constraint: anything else it cannot have issued).
fn check_cert(c: &pb::CertRecord, name: &str, org: &str, domain: &str) -> Result<(), Reject> {
    if c.serial != name
        || !c
            .serial
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(invalid(
            "cert record name must be its serial in lowercase hex",
        ));
    }
    if c.spki_sha256.len() != 32 {
        return Err(invalid("cert record SPKI hash must be 32 bytes"));
    }
    if c.subject.len() > 253 || c.sans.len() > MAX_CERT_SANS || c.sans.iter().any(|s| s.len() > 253)
    {
        return Err(invalid(format!(
            "cert record names too long or more than {MAX_CERT_SANS}"
        )));
    }
    let subtree = fedgw_certs::names::org_subtree(org, domain);
    let dns = c.sans.iter().filter(|s| !s.contains(':'));
    for s in dns {
        if !(s == &subtree || s.ends_with(&format!(".{subtree}"))) {
            return Err(invalid(format!(
                "cert record name {s:?} is outside {subtree}"
            )));
        }
    }
    Ok(())
}

fn check_gateway(g: &pb::GatewayRecord) -> Result<(), Reject> {
    if g.advertise.is_empty() || g.advertise.len() > MAX_ADVERTISE {
        return Err(invalid(format!(
            "gateway must advertise 1 to {MAX_ADVERTISE} endpoints"
        )));
    }
    for a in &g.advertise {
        fedgw_certs::token::validate_endpoint(a)
            .map_err(|_| invalid(format!("bad endpoint {a:?}")))?;
    }
    Ok(())
}

/// Checks a node record once, as it is read: its shapes by [`Node::try_from`], its site, roles
/// and allowed orgs as consortium labels.
fn check_node(n: &pb::NodeRecord) -> Result<Node, Reject> {
    let node = Node::try_from(n).map_err(|e| invalid(e.to_string()))?;
    for r in &node.roles {
        validate_label("role", r).map_err(|e| invalid(e.to_string()))?;
    }
    for o in &node.allowed_orgs {
        validate_label("org", o).map_err(|e| invalid(e.to_string()))?;
    }
    validate_label("site", &node.site).map_err(|e| invalid(e.to_string()))?;
    Ok(node)
}

fn authorise(key: &RecordKey, body: &Body, signer: &Signer) -> Result<(), Reject> {
    match (key.kind.root_only(), signer) {
        (true, Signer::Root) => Ok(()),
        (true, Signer::Org(o)) => Err(Reject::Unauthorised(format!(
            "{} records are root-signed, not by {o}",
            key.kind.as_str()
        ))),
        (false, Signer::Org(o)) if *o == key.org => Ok(()),
        // whichever member added the node to the raft cluster signs its id; the view checks
        // that the signer is an unrevoked member
        // likewise the org that proposes a validator change, or deletes a proposal once done
        (false, Signer::Org(_)) if matches!(key.kind, Kind::Raft | Kind::Validator) => Ok(()),
        (false, Signer::Org(o)) => Err(Reject::Unauthorised(format!(
            "{o} may not sign records about {}",
            key.org
        ))),
        (false, Signer::Root) => {
            // the root speaks for the consortium, not for an org's nodes or votes
            let _ = body;
            Err(Reject::Unauthorised(format!(
                "the root may not sign {} records",
                key.kind.as_str()
            )))
        }
    }
}

/// Builds and signs an envelope for `body` about (`org`, `name`) at `seq`.
pub fn seal(
    signer: &fedgw_certs::envelope::EnvelopeSigner,
    org: &str,
    name: &str,
    seq: u64,
    body: pb::record_body::Body,
) -> Result<Vec<u8>, EnvelopeError> {
    let payload = pb::RecordBody {
        org: org.to_owned(),
        name: name.to_owned(),
        seq,
        body: Some(body),
    }
    .encode_to_vec();
    let signature = signer.sign(PAYLOAD_TYPE, &payload)?;
    Ok(pb::Envelope {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload,
        signer_chain: vec![signer.cert().to_vec()],
        signature,
    }
    .encode_to_vec())
}

/// The audit-trail entry of an accepted record: its kind (`tombstone.<kind>` for a deletion),
/// org, name, signer (`root` or the org) and envelope hash.
pub fn audit_event(v: &Verified) -> crate::store::AuditEvent {
    let kind = match v.body {
        Body::Tombstone => format!("tombstone.{}", v.key.kind.as_str()),
        _ => v.key.kind.as_str().to_owned(),
    };
    crate::store::AuditEvent {
        kind,
        org: v.key.org.clone(),
        subject: v.key.name.clone(),
        signer: match &v.signer {
            Signer::Root => "root".to_owned(),
            Signer::Org(o) => o.clone(),
        },
        record_hash: v.hash,
        record_key: Some(v.key.to_string()),
    }
}

#[cfg(test)]
mod tests;
