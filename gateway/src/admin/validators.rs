//! The admin calls about QBFT/IBFT validators: propose a node's addition or removal, approve an
//! open proposal, withdraw it. Each publishes one record signed by this org; the vote keeper
//! (`chain/validators/keeper.rs`) does the rest once the approvals are in.

use fedgw_certs::ids::NodeKey;
use fedgw_proto::v1 as pb;
use pb::record_body::Body;
use tonic::{Request, Response, Status};

use super::members::publish_status;
use super::service::AdminService;
use crate::chain::validators;
use crate::membership::SignAs;

fn node_key(org: &str, name: &str) -> Result<NodeKey, Status> {
    fedgw_certs::names::validate_label("org", org)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    fedgw_certs::names::validate_label("name", name)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(NodeKey::new(org, name))
}

fn needs_validators(svc: &AdminService) -> Result<(), Status> {
    if validators::votes_on(svc.config.consensus) {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "the consortium's consensus is {}: only qbft and ibft have a validator set to vote on",
        svc.config.consensus.name()
    )))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `ProposeValidator`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn propose(
    svc: &AdminService,
    request: Request<pb::ProposeValidatorRequest>,
) -> Result<Response<pb::ProposeValidatorResponse>, Status> {
    needs_validators(svc)?;
    let req = request.into_inner();
    let key = node_key(&req.org, &req.name)?;
    let enode_id = svc
        .membership
        .read(|v| v.node(&key.org, &key.name).and_then(|n| n.node.enode_id));
    let Some(enode_id) = enode_id else {
        return Err(Status::not_found(format!(
            "no node {key} with an enode id in this gateway's view: register it first (fedgw node add)"
        )));
    };
    let body = Body::Validator(pb::ValidatorProposal {
        add: req.add,
        enode_id: enode_id.as_bytes().to_vec(),
    });
    svc.membership
        .publish(&key.org, &key.name, body, SignAs::Org)
        .await
        .map_err(publish_status)?;
    let policy = svc.config.admission;
    let (seq, needed) = svc.membership.read(|v| {
        let seq = validators::proposals(v, policy)
            .into_iter()
            .find(|p| p.node == key)
            .map_or(0, |p| p.seq);
        (seq, validators::approvals_needed(policy, v.members().len()))
    });
    Ok(Response::new(pb::ProposeValidatorResponse {
        seq,
        needed: to_u32(needed),
    }))
}

/// `ApproveValidator`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn approve(
    svc: &AdminService,
    request: Request<pb::ApproveValidatorRequest>,
) -> Result<Response<pb::ApproveValidatorResponse>, Status> {
    needs_validators(svc)?;
    let req = request.into_inner();
    let key = node_key(&req.org, &req.name)?;
    let policy = svc.config.admission;
    let open = svc.membership.read(|v| {
        validators::proposals(v, policy)
            .into_iter()
            .find(|p| p.node == key)
    });
    let Some(open) = open else {
        // an approval names a proposal, so a typo never counts as one
        return Err(Status::failed_precondition(format!(
            "there is no open validator proposal about {key} at this gateway: \
             open one with `fedgw chain validator add|remove {key}`, or wait until it arrives"
        )));
    };
    let me = svc.membership.me().org.clone();
    let body = Body::ValidatorVote(pb::ValidatorVote {
        proposal_seq: open.seq,
    });
    let name = format!("{}.{}", key.org, key.name);
    svc.membership
        .publish(&me, &name, body, SignAs::Org)
        .await
        .map_err(publish_status)?;
    let now = svc.membership.read(|v| {
        validators::proposals(v, policy)
            .into_iter()
            .find(|p| p.node == key)
    });
    let (approvals, needed) = now.map_or((0, open.needed), |p| (p.approvals.len(), p.needed));
    Ok(Response::new(pb::ApproveValidatorResponse {
        approvals: to_u32(approvals),
        needed: to_u32(needed),
    }))
}

/// `WithdrawValidator`: see the `Admin` service in proto/fedgw/v1/admin.proto.
pub(super) async fn withdraw(
    svc: &AdminService,
    request: Request<pb::WithdrawValidatorRequest>,
) -> Result<Response<pb::WithdrawValidatorResponse>, Status> {
    let req = request.into_inner();
    let key = node_key(&req.org, &req.name)?;
    let open = svc
        .membership
        .read(|v| v.validator_proposals().into_iter().any(|p| p.node == key));
    if !open {
        return Err(Status::not_found(format!(
            "there is no open validator proposal about {key} at this gateway"
        )));
    }
    let body = Body::Tombstone(pb::TombstoneRecord {
        kind: pb::RecordKind::Validator.into(),
    });
    svc.membership
        .publish(&key.org, &key.name, body, SignAs::Org)
        .await
        .map_err(publish_status)?;
    Ok(Response::new(pb::WithdrawValidatorResponse {}))
}
