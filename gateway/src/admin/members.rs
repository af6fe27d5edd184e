//! The admin calls about members: invites, the member list, approvals and revocations.

use std::time::{Duration, SystemTime};

use fedgw_proto::v1 as pb;
use pb::record_body::Body;
use tonic::{Request, Response, Status};

use super::service::AdminService;
use crate::join::server::{InviteError, InviteSpec, create_invite as create};
use crate::membership::record::Reject;
use crate::membership::{PublishError, SignAs};

/// The gRPC status of a record this gateway could not publish.
pub(super) fn publish_status(e: PublishError) -> Status {
    match e {
        PublishError::Rejected(r @ (Reject::EnodeTaken(_) | Reject::Stale { .. })) => {
            Status::already_exists(r.to_string())
        }
        PublishError::Rejected(r) => Status::invalid_argument(r.to_string()),
        e @ (PublishError::EmptyBody | PublishError::NoRootKey | PublishError::Sign(_)) => {
            Status::failed_precondition(crate::net::with_sources(&e))
        }
        PublishError::Store(e) => Status::internal(e.to_string()),
        PublishError::Batch(e) => Status::internal(format!("{e}")),
    }
}

fn status(e: InviteError) -> Status {
    match e {
        InviteError::NotRootHolder => Status::failed_precondition(e.to_string()),
        InviteError::Name(_) | InviteError::Range(_) | InviteError::Endpoint(_) => {
            Status::invalid_argument(e.to_string())
        }
        InviteError::AlreadyMember(_) => Status::already_exists(e.to_string()),
        InviteError::Store(_) | InviteError::Pki(_) => Status::internal(e.to_string()),
    }
}

/// `CreateInvite`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn create_invite(
    svc: &AdminService,
    request: Request<pb::CreateInviteRequest>,
) -> Result<Response<pb::CreateInviteResponse>, Status> {
    let req = request.into_inner();
    let candidate = req.org.clone();
    let (store, config, root_cert) = (svc.store.clone(), svc.config.clone(), svc.root_cert.clone());
    let endpoint = svc.advertise.first().cloned().unwrap_or_default();
    let (token, expires_unix) = tokio::task::spawn_blocking(move || {
        create(
            &store,
            &config,
            &root_cert,
            &endpoint,
            &InviteSpec {
                org: req.org,
                ttl: Duration::from_secs(req.ttl_secs),
                uses: req.uses,
            },
            SystemTime::now(),
        )
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(status)?;
    if svc.config.admission != crate::config::Admission::Operator {
        announce_candidate(svc, &candidate).await;
    }
    Ok(Response::new(pb::CreateInviteResponse {
        token: token.to_text().to_string(),
        token_id: token.id.clone(),
        expires_unix: i64::try_from(expires_unix).unwrap_or(i64::MAX),
    }))
}

/// `ListMembers`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn list_members(
    svc: &AdminService,
    _request: Request<pb::ListMembersRequest>,
) -> Result<Response<pb::ListMembersResponse>, Status> {
    let resp = svc.membership.read(|v| {
        let gateways = v.gateways();
        let info = |org: &str, status: &str, admitted_unix: i64, msp_id: &str| pb::MemberInfo {
            fabric_msp_id: msp_id.to_owned(),
            org: org.to_owned(),
            status: status.to_owned(),
            admitted_unix,
            gateways: gateways
                .iter()
                .filter(|(id, _)| id.org == org)
                .map(|(id, g)| pb::GatewayInfo {
                    site: id.site.clone(),
                    replica: id.replica.clone(),
                    replica_index: g.replica_index,
                    advertise: g.advertise.clone(),
                    outbound_only: g.outbound_only,
                })
                .collect(),
            approved_by: v.approvals_for(org),
        };
        let mut members: Vec<_> = v
            .members()
            .iter()
            .map(|(org, m)| info(org, "active", m.admitted_unix, &m.fabric_msp_id))
            .collect();
        members.extend(v.revoked().iter().map(|org| info(org, "revoked", 0, "")));
        members.sort_by(|a, b| a.org.cmp(&b.org));
        let pending = v
            .candidates()
            .iter()
            .map(|c| info(c, "pending", 0, ""))
            .collect();
        pb::ListMembersResponse {
            members,
            pending,
            consensus: svc.config.consensus.name().to_owned(),
        }
    });
    Ok(Response::new(resp))
}

/// `Approve`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn approve(
    svc: &AdminService,
    request: Request<pb::ApproveRequest>,
) -> Result<Response<pb::ApproveResponse>, Status> {
    let candidate = request.into_inner().org;
    fedgw_certs::names::validate_label("org", &candidate)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if svc.config.admission == crate::config::Admission::Operator {
        // the invite alone admits: no join ever waits for a vote
        return Err(Status::failed_precondition(format!(
            "the consortium's admission is operator: no join waits for approval, \
             so there is no pending join of {candidate} to approve"
        )));
    }
    let (member, revoked, pending) = svc.membership.read(|v| {
        (
            v.is_member(&candidate),
            v.revoked().contains(&candidate),
            v.candidates().contains(&candidate),
        )
    });
    if member {
        return Err(Status::already_exists(format!(
            "{candidate} is already a member"
        )));
    }
    if revoked {
        return Err(Status::failed_precondition(format!(
            "{candidate} is revoked"
        )));
    }
    if !pending {
        // a vote is only given for an announced invite, so a typo never counts as one
        return Err(Status::failed_precondition(format!(
            "there is no pending join of {candidate} at this gateway: \
             it was not invited, or the invite has not reached this gateway yet"
        )));
    }
    let me = svc.membership.me().org.clone();
    svc.membership
        .publish(
            &me,
            &candidate,
            Body::Vote(pb::VoteRecord { approve: true }),
            SignAs::Org,
        )
        .await
        .map_err(publish_status)?;
    Ok(Response::new(pb::ApproveResponse {}))
}

/// `Revoke`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn revoke(
    svc: &AdminService,
    request: Request<pb::RevokeRequest>,
) -> Result<Response<pb::RevokeResponse>, Status> {
    let req = request.into_inner();
    if !svc.membership.is_root_holder() {
        return Err(Status::failed_precondition(
            "only the gateway holding the consortium root key can revoke",
        ));
    }
    if req.org == svc.membership.me().org {
        return Err(Status::invalid_argument("an org cannot revoke itself"));
    }
    if !svc.membership.read(|v| v.is_member(&req.org)) {
        return Err(Status::not_found(format!(
            "{} is not an active member",
            req.org
        )));
    }
    svc.membership
        .publish(
            &req.org,
            "",
            Body::Revocation(pb::RevocationRecord { reason: req.reason }),
            SignAs::Root,
        )
        .await
        .map_err(publish_status)?;
    Ok(Response::new(pb::RevokeResponse {}))
}

/// Makes an invited org a pending join at every gateway, under an admission policy that
/// waits for votes: this org's vote record for it, not approving (`approve = false`), so
/// `fedgw members` lists it everywhere before anyone approved and `fedgw approve` can
/// tell a pending join from a typo. An existing vote of this org (an approval given before
/// the invite) is kept. The invite stands if the record cannot be published (logged).
pub(super) async fn announce_candidate(svc: &AdminService, candidate: &str) {
    use crate::membership::record::{Kind, RecordKey};
    let me = svc.membership.me().org.clone();
    let key = RecordKey {
        kind: Kind::Vote,
        org: me.clone(),
        name: candidate.to_owned(),
    };
    if svc.membership.read(|v| v.get(&key).is_some()) {
        return;
    }
    if let Err(e) = svc
        .membership
        .publish(
            &me,
            candidate,
            Body::Vote(pb::VoteRecord { approve: false }),
            SignAs::Org,
        )
        .await
    {
        tracing::warn!(org = %candidate, error = %e, "invited org not announced as a pending join");
    }
}
