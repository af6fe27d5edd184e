//! The join service, served by the gateway that holds the consortium root key.
//!
//! A request is checked in this order: token id form (16 lowercase hex digits), per-token-id
//! rate limit, shape (protocol version, names, endpoints, sizes), then one store transaction that looks the invite up, verifies the proof
//! of possession against the stored verifier key and the connection's TLS exporter value,
//! checks expiry, uses left and org, signs the org CA from the CSR, and consumes the invite.
//! Refusals are answered with a typed reason; nothing is consumed by a refused request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fedgw_certs::token::{self, JoinToken, JoinTranscript};
use fedgw_certs::{CertificateAuthority, pki};
use fedgw_proto::v1::join_response::Outcome;
use fedgw_proto::v1::{
    self as pb, Admitted, ConsortiumInfo, GatewayEndpoint, JoinRequest, JoinResponse, Pending,
    Refusal as RefusalMsg, RefusalReason,
};
use sha2::Digest;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::limiter::{JoinLimiter, TokenId};
use crate::config::{Admission, Config};
use crate::listener::ConnInfo;
use crate::membership::{Membership, SignAs};
use crate::metrics::Metrics;
use crate::store::{self, Invite, Member, Redeemed, Refusal, Store, StoreError};

/// Largest CSR accepted, in bytes.
pub const MAX_CSR_BYTES: usize = 4096;
/// Most advertised endpoints in one request.
pub const MAX_ADVERTISE: usize = 8;
/// Longest invite lifetime.
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most uses one invite may allow.
pub const MAX_INVITE_USES: u32 = 1000;

/// Everything the join service needs.
pub struct JoinService {
    /// The durable store.
    pub store: Arc<Store>,
    /// The consortium root CA (cert and key).
    pub root: Arc<CertificateAuthority>,
    /// Consortium name, domain and admission policy.
    pub consortium: ConsortiumInfo,
    /// The genesis file, if the consortium has one.
    pub genesis: Option<Vec<u8>>,
    /// This gateway, as joiners should dial it.
    pub gateway: GatewayEndpoint,
    /// Per-token-id attempt limiter.
    pub limiter: JoinLimiter,
    /// Metrics.
    pub metrics: Metrics,
    /// Membership: the admission policy's inputs, and where the member record goes.
    pub membership: Membership,
    /// The consortium's admission policy.
    pub policy: Admission,
}

impl std::fmt::Debug for JoinService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinService")
            .field("consortium", &self.consortium)
            .finish_non_exhaustive()
    }
}

fn refused(reason: RefusalReason, detail: &str) -> JoinResponse {
    JoinResponse {
        outcome: Some(Outcome::Refused(RefusalMsg {
            reason: reason.into(),
            detail: detail.to_owned(),
        })),
    }
}

fn refusal_reason(r: Refusal) -> (RefusalReason, &'static str) {
    match r {
        Refusal::UnknownToken => (RefusalReason::UnknownToken, "unknown_token"),
        Refusal::BadProof => (RefusalReason::BadProof, "bad_proof"),
        Refusal::Expired => (RefusalReason::TokenExpired, "expired"),
        Refusal::Used => (RefusalReason::TokenUsed, "used"),
        Refusal::WrongOrg => (RefusalReason::WrongOrg, "wrong_org"),
        Refusal::AlreadyMember => (RefusalReason::AlreadyMember, "already_member"),
        Refusal::BadRequest => (RefusalReason::BadRequest, "bad_request"),
    }
}

/// Checks the request's shape; the error is the refusal detail.
fn check_shape(req: &JoinRequest) -> Result<(), String> {
    use fedgw_certs::names::validate_label;
    if req.version != fedgw_proto::JOIN_PROTOCOL_VERSION {
        return Err(format!("unsupported join protocol version {}", req.version));
    }
    validate_label("org", &req.org).map_err(|e| e.to_string())?;
    validate_label("site", &req.site).map_err(|e| e.to_string())?;
    if req.csr_der.is_empty() || req.csr_der.len() > MAX_CSR_BYTES {
        return Err("CSR missing or too large".into());
    }
    if req.advertise.is_empty() || req.advertise.len() > MAX_ADVERTISE {
        return Err(format!("advertise 1 to {MAX_ADVERTISE} endpoints"));
    }
    for a in &req.advertise {
        crate::config::validate_advertise(a)?;
    }
    if !req.fabric_msp_id.is_empty() {
        crate::fabric::validate_msp_id(&req.fabric_msp_id).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The member (other than `org`) whose Fabric MSP ID (its published one, or the default
/// `<Org>MSP`) is `msp_id`, if any: two orgs with one MSP ID would be one identity to Fabric.
pub fn msp_id_taken_by(m: &Membership, org: &str, msp_id: &str) -> Option<String> {
    m.read(|v| {
        v.members()
            .iter()
            .filter(|(o, _)| o.as_str() != org)
            .find(|(o, rec)| {
                let theirs = if rec.fabric_msp_id.is_empty() {
                    crate::fabric::default_msp_id(o)
                } else {
                    rec.fabric_msp_id.clone()
                };
                theirs == msp_id
            })
            .map(|(o, _)| o.clone())
    })
}

/// Approvals a join needs under `policy` with `members` active member orgs: none for
/// `operator`, more than half for `majority`, every member for `all`.
pub fn approvals_needed(policy: Admission, members: usize) -> usize {
    match policy {
        Admission::Operator => 0,
        Admission::Majority => members / 2 + 1,
        Admission::All => members,
    }
}

/// Whether `candidate` still lacks approvals under `policy`; `None` when it may be admitted.
pub fn pending_approvals(m: &Membership, candidate: &str, policy: Admission) -> Option<Pending> {
    let (members, approved_by) = m.read(|v| (v.members().len(), v.approvals_for(candidate)));
    let needed = approvals_needed(policy, members);
    (approved_by.len() < needed).then(|| Pending {
        approvals: u32::try_from(approved_by.len()).unwrap_or(u32::MAX),
        needed: u32::try_from(needed).unwrap_or(u32::MAX),
        approved_by,
    })
}

impl JoinService {
    async fn handle(&self, info: ConnInfo, req: JoinRequest) -> JoinResponse {
        let now_instant = Instant::now();
        // a fixed-size id or nothing: any other id is refused before it is stored anywhere
        let Some(token_id) = TokenId::parse(&req.token_id) else {
            self.metrics.join("bad_request");
            return refused(
                RefusalReason::BadRequest,
                "token id must be 16 lowercase hex digits",
            );
        };
        if !self.limiter.allowed(token_id, now_instant) {
            self.metrics.join("rate_limited");
            debug!(remote = %info.remote, "join attempt rate-limited");
            return refused(
                RefusalReason::RateLimited,
                "too many failed attempts for this token",
            );
        }
        if let Err(detail) = check_shape(&req) {
            // not charged: a malformed request tests no secret
            self.metrics.join("bad_request");
            return refused(RefusalReason::BadRequest, &detail);
        }
        let wanted = if req.fabric_msp_id.is_empty() {
            crate::fabric::default_msp_id(&req.org)
        } else {
            req.fabric_msp_id.clone()
        };
        if msp_id_taken_by(&self.membership, &req.org, &wanted).is_some() {
            self.metrics.join("bad_request");
            return refused(
                RefusalReason::BadRequest,
                &format!(
                    "the Fabric MSP ID {wanted} is already a member's; join with another \
                     (--msp-id)"
                ),
            );
        }
        let store = self.store.clone();
        let root = self.root.clone();
        let consortium = self.consortium.clone();
        let membership = self.membership.clone();
        let policy = self.policy;
        let binding = info.channel_binding;
        let result = tokio::task::spawn_blocking(move || {
            let transcript = JoinTranscript {
                token_id: &req.token_id,
                org: &req.org,
                site: &req.site,
                csr_der: &req.csr_der,
                advertise: &req.advertise,
                fabric_msp_id: &req.fabric_msp_id,
                channel_binding: &binding,
            };
            let now = SystemTime::now();
            let outcome = store.redeem(
                &req.token_id,
                &req.org,
                now,
                |key| token::verify_join_proof(key, &transcript, &req.proof),
                || pending_approvals(&membership, &req.org, policy),
                || {
                    let cert = root
                        .sign_org_ca(
                            &req.csr_der,
                            &consortium.name,
                            &req.org,
                            &consortium.domain,
                            now,
                        )
                        .map_err(|e| debug!(error = %e, "org CA signing refused"))
                        .ok()?;
                    let record = membership
                        .seal(
                            &req.org,
                            "",
                            pb::record_body::Body::Member(pb::MemberRecord {
                                org_ca_der: cert.to_vec(),
                                fabric_msp_id: req.fabric_msp_id.clone(),
                                admitted_unix: i64::try_from(store::unix(now)).unwrap_or(0),
                            }),
                            SignAs::Root,
                        )
                        .map_err(|e| warn!(error = %e, "cannot sign the member record"))
                        .ok()?;
                    let key = crate::membership::storage_key(&record)?;
                    let audit = store::AuditEvent {
                        kind: "member".to_owned(),
                        org: req.org.clone(),
                        subject: String::new(),
                        signer: "root".to_owned(),
                        record_hash: <sha2::Sha256 as sha2::Digest>::digest(&record).into(),
                        record_key: Some(key.clone()),
                    };
                    Some(store::Admission {
                        member: Member {
                            org: req.org.clone(),
                            org_ca_pem: pki::certs_to_pem(std::slice::from_ref(&cert)),
                            site: req.site.clone(),
                            advertise: req.advertise.clone(),
                            admitted_unix: store::unix(now),
                        },
                        records: vec![(key, record.clone())],
                        audit: vec![audit],
                        out: (cert, record),
                    })
                },
            );
            (req.org, outcome)
        })
        .await;
        let (org, outcome) = match result {
            Ok((org, Ok(outcome))) => (org, outcome),
            Ok((_, Err(e))) => {
                warn!(error = %e, "join: store failure");
                return refused(RefusalReason::Unspecified, "internal error");
            }
            Err(e) => {
                warn!(error = %e, "join: task failed");
                return refused(RefusalReason::Unspecified, "internal error");
            }
        };
        match outcome {
            Redeemed::Refused(r) => {
                let (reason, label) = refusal_reason(r);
                // only attempts against a stored invite are charged: an unknown id would only
                // fill the table (see the limiter)
                if r != Refusal::UnknownToken {
                    self.limiter.charge(token_id, now_instant);
                }
                self.metrics.join(label);
                info!(org = %org, reason = label, "join refused");
                refused(reason, &r.to_string())
            }
            Redeemed::Pending(p) => {
                self.metrics.join("pending");
                debug!(org = %org, approvals = p.approvals, needed = p.needed, "join pending");
                JoinResponse {
                    outcome: Some(Outcome::Pending(p)),
                }
            }
            Redeemed::Admitted((cert, record)) => {
                // persisted with the admission; now into the view and out to every peer
                if let Err(e) = self.membership.ingest(vec![record], None).await {
                    warn!(error = %e, org = %org, "member record not applied");
                }
                self.metrics.join("admitted");
                info!(org = %org, "org admitted");
                let (genesis, genesis_sha256) = match &self.genesis {
                    Some(g) => (g.clone(), sha2::Sha256::digest(g).to_vec()),
                    None => (vec![], vec![]),
                };
                let snapshot = self
                    .membership
                    .read(|v| v.snapshot().iter().map(|b| b.as_ref().clone()).collect());
                JoinResponse {
                    outcome: Some(Outcome::Admitted(Admitted {
                        consortium: Some(self.consortium.clone()),
                        org_ca_der: cert.to_vec(),
                        root_ca_der: self.root.cert().to_vec(),
                        genesis,
                        genesis_sha256,
                        gateways: vec![self.gateway.clone()],
                        snapshot,
                    })),
                }
            }
        }
    }
}

#[tonic::async_trait]
impl fedgw_proto::v1::join_server::Join for JoinService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let info = request
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("connection info missing"))?;
        Ok(Response::new(self.handle(info, request.into_inner()).await))
    }
}

/// Errors creating an invite.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// Only the data dir holding the consortium root key can issue invites.
    #[error("this gateway does not hold the consortium root key; invites come from the founder")]
    NotRootHolder,
    /// The org name is invalid.
    #[error(transparent)]
    Name(#[from] fedgw_certs::names::NameError),
    /// The lifetime or use count is out of range.
    #[error("{0}")]
    Range(String),
    /// The org is already a member.
    #[error("org {0:?} is already a member")]
    AlreadyMember(String),
    /// The advertised endpoint is not usable in a token.
    #[error(
        "advertised endpoint {0:?} is not usable in a token (port 0 is only known while `fedgw run` is up)"
    )]
    Endpoint(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The root certificate could not be read.
    #[error(transparent)]
    Pki(#[from] fedgw_certs::PkiError),
}

/// What an invite admits.
#[derive(Debug, Clone)]
pub struct InviteSpec {
    /// The org it admits.
    pub org: String,
    /// How long it stays valid.
    pub ttl: Duration,
    /// How many joins it allows.
    pub uses: u32,
}

/// Creates an invite valid `spec.ttl` from `now` for `spec.uses` joins of `spec.org` at
/// `endpoint`, stores its verifier key, and returns the token (which holds the only copy of the
/// secret) and its expiry in Unix seconds.
pub fn create_invite(
    store: &Store,
    config: &Config,
    root_cert: &[u8],
    endpoint: &str,
    spec: &InviteSpec,
    now: SystemTime,
) -> Result<(JoinToken, u64), InviteError> {
    let InviteSpec { org, ttl, uses } = spec;
    let (org, ttl, uses) = (org.as_str(), *ttl, *uses);
    if !config.root_holder {
        return Err(InviteError::NotRootHolder);
    }
    fedgw_certs::names::validate_label("org", org)?;
    if ttl.is_zero() || ttl > MAX_INVITE_TTL {
        return Err(InviteError::Range(format!(
            "--ttl must be between 1s and {}",
            humantime::format_duration(MAX_INVITE_TTL)
        )));
    }
    if uses == 0 || uses > MAX_INVITE_USES {
        return Err(InviteError::Range(format!(
            "--uses must be between 1 and {MAX_INVITE_USES}"
        )));
    }
    if store.members()?.iter().any(|m| m.org == org) {
        return Err(InviteError::AlreadyMember(org.to_owned()));
    }
    let pin = pki::spki_sha256(root_cert)?;
    let token = JoinToken::generate(endpoint, pin)
        .map_err(|_| InviteError::Endpoint(endpoint.to_owned()))?;
    let expires_unix = store::expiry(now, ttl);
    store.put_invite(
        &token.id,
        &Invite {
            org: org.to_owned(),
            verifier_key: store::encode_key(&token.verifier_key()),
            expires_unix,
            uses_left: uses,
            created_unix: store::unix(now),
        },
    )?;
    Ok((token, expires_unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_needed_per_policy() {
        let cases = [
            (Admission::Operator, 3, 0),
            (Admission::Majority, 1, 1),
            (Admission::Majority, 2, 2),
            (Admission::Majority, 3, 2),
            (Admission::Majority, 4, 3),
            (Admission::All, 1, 1),
            (Admission::All, 4, 4),
        ];
        for (policy, members, needed) in cases {
            assert_eq!(
                approvals_needed(policy, members),
                needed,
                "{policy:?} with {members}"
            );
        }
    }
}
