//! Admin calls for the audit trail and certificate transparency: `ListAudit` (`fedgw audit`),
//! `PublishCert` (`fedgw cert issue` while the gateway runs) and `ListCerts` (`fedgw certs`).

use fedgw_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::AdminService;
use crate::membership::certs::CertRecordError;
use crate::store::{AuditFilter, audit_entries};

pub(super) async fn list_audit(
    svc: &AdminService,
    request: Request<pb::ListAuditRequest>,
) -> Result<Response<pb::ListAuditResponse>, Status> {
    let r = request.into_inner();
    let some = |s: String| (!s.is_empty()).then_some(s);
    let filter = AuditFilter {
        since_ms: (r.since_ms > 0).then_some(r.since_ms),
        org: some(r.org),
        kind: some(r.kind),
        limit: (r.limit > 0).then_some(r.limit as usize),
    };
    let store = svc.store.clone();
    let entries = tokio::task::spawn_blocking(move || audit_entries(&store, &filter))
        .await
        .map_err(|e| Status::internal(format!("reading the audit trail failed: {e}")))?
        .map_err(|e| Status::internal(format!("reading the audit trail failed: {e}")))?;
    // the CLI decodes at most MAX_MESSAGE_BYTES: newest entries first, up to 7/8 of that
    let budget = fedgw_proto::MAX_MESSAGE_BYTES / 8 * 7;
    let (mut entries_json, mut used, mut truncated) = (Vec::new(), 0, false);
    for e in &entries {
        let Ok(j) = serde_json::to_string(e) else {
            continue;
        };
        used += j.len() + 8;
        if used > budget {
            truncated = true;
            break;
        }
        entries_json.push(j);
    }
    Ok(Response::new(pb::ListAuditResponse {
        entries_json,
        truncated,
    }))
}

pub(super) async fn publish_cert(
    svc: &AdminService,
    request: Request<pb::PublishCertRequest>,
) -> Result<Response<pb::PublishCertResponse>, Status> {
    let der = request.into_inner().cert_der;
    if der.len() > 16 * 1024 {
        return Err(Status::invalid_argument(
            "the certificate is larger than 16 KiB; pass one DER certificate",
        ));
    }
    let serial = crate::membership::certs::cert_record(&der)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .serial;
    match svc.membership.publish_cert(&der).await {
        Ok(published) => Ok(Response::new(pb::PublishCertResponse { serial, published })),
        Err(e @ CertRecordError::Parse) => Err(Status::invalid_argument(e.to_string())),
        Err(e) => Err(Status::failed_precondition(format!(
            "the cert record was refused: {}",
            crate::net::with_sources(&e)
        ))),
    }
}

pub(super) async fn list_certs(
    svc: &AdminService,
    request: Request<pb::ListCertsRequest>,
) -> Result<Response<pb::ListCertsResponse>, Status> {
    let org = request.into_inner().org;
    let certs = svc.membership.read(|v| v.certs());
    Ok(Response::new(pb::ListCertsResponse {
        certs: certs
            .into_iter()
            .filter(|(o, _)| org.is_empty() || *o == org)
            .map(|(org, cert)| pb::IssuedCert {
                org,
                cert: Some(cert),
            })
            .collect(),
    }))
}

pub(super) async fn audit_digest(
    svc: &AdminService,
    _request: Request<pb::AuditDigestRequest>,
) -> Result<Response<pb::AuditDigestResponse>, Status> {
    let store = svc.store.clone();
    let digest = tokio::task::spawn_blocking(move || store.records_digest())
        .await
        .map_err(|e| Status::internal(format!("reading the records failed: {e}")))?
        .map_err(|e| Status::internal(format!("reading the records failed: {e}")))?;
    Ok(Response::new(crate::federation::digest_msg(&digest)))
}
