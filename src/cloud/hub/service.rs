//! The tonic `Hub` service: the edge link (`Link`) and the admin RPCs. Thin:
//! decoding, validation of manifests, and errors to gRPC codes; the rules
//! live in `sites` and `session`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use gantry_proto::hub::v1::hub_server::Hub;
use gantry_proto::hub::v1::site_message::Msg as In;
use gantry_proto::hub::v1::{
    ApplyRequest, DeleteRequest, HubMessage, JsonDocument, SiteMessage, SiteTokenReply,
    SiteTokenRequest, StatusRequest,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::session::{wire_len, Session};
use super::sites::{HubError, Sites};

/// A site must say Hello this soon after opening the link.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HubService {
    pub sites: Arc<Sites>,
    /// Cancelled when the hub stops; ends every live link.
    pub closing: tokio_util::sync::CancellationToken,
}

fn status_from(error: HubError) -> Status {
    match error {
        HubError::Unauthenticated => Status::unauthenticated(error.to_string()),
        HubError::UnknownSite(_) | HubError::NoWorkload { .. } => {
            Status::not_found(error.to_string())
        }
        HubError::BadSiteName(_) => Status::invalid_argument(error.to_string()),
        HubError::Refused(_) => Status::failed_precondition(error.to_string()),
        HubError::Store(_) | HubError::Writer(_) => Status::internal(error.to_string()),
    }
}

fn document(value: serde_json::Value) -> Result<Response<JsonDocument>, Status> {
    Ok(Response::new(JsonDocument {
        json: value.to_string(),
    }))
}

/// The hidden `--unchecked` path: documents kept as they are, with only a
/// name, so tests can make the hub send a desired state a site must refuse.
fn unchecked_documents(text: &str) -> Result<Vec<(String, String)>, Status> {
    let mut docs = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .map_err(|e| Status::invalid_argument(format!("document {}: {e}", index + 1)))?;
        if value.is_null() {
            continue;
        }
        let name = value["name"]
            .as_str()
            .ok_or_else(|| Status::invalid_argument(format!("document {}: no name", index + 1)))?
            .to_string();
        docs.push((name, value.to_string()));
    }
    Ok(docs)
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<HubMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Hub for HubService {
    type LinkStream = LinkStream;

    async fn link(
        &self,
        request: Request<Streaming<SiteMessage>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let site = match crate::api::auth::principal(&request) {
            Some(crate::api::auth::Principal::Site(site)) => site.clone(),
            _ => return Err(Status::unauthenticated("no site token")),
        };
        let token = crate::api::auth::bearer(request.metadata().as_ref())
            .unwrap_or_default()
            .to_string();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello"))??;
        let hello = match first.as_ref().and_then(|m| m.msg.as_ref()) {
            Some(In::Hello(hello)) => hello.clone(),
            _ => return Err(Status::invalid_argument("a link starts with Hello")),
        };
        if hello.site != site {
            return Err(Status::permission_denied(format!(
                "the token is for site '{site}', the Hello names '{}'",
                hello.site
            )));
        }
        let opened = match self
            .sites
            .open_session(&hello.site, hello.acked_revision, hello.epoch)
            .await
        {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(site = %hello.site, error = %e, "link refused");
                return Err(status_from(e));
            }
        };
        if let Some(first) = &first {
            self.sites.count_bytes(&hello.site, wire_len(first), 0);
        }
        tracing::info!(site = %hello.site, session = opened.session, acked = hello.acked_revision, "site connected");
        let (tx, rx) = mpsc::channel(16);
        let session = Session {
            sites: self.sites.clone(),
            site: hello.site,
            opened,
            inbound,
            outbound: tx,
            closing: self.closing.clone(),
            token,
        };
        tokio::spawn(session.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<JsonDocument>, Status> {
        let request = request.into_inner();
        let docs = if request.unchecked {
            unchecked_documents(&request.manifest)?
        } else {
            let specs = crate::manifest::parse(&request.manifest)
                .map_err(|e| Status::invalid_argument(e.0))?;
            specs
                .iter()
                .map(|s| {
                    serde_json::to_string(s)
                        .map(|json| (s.name.clone(), json))
                        .map_err(|e| Status::internal(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let applied = if request.all_sites {
            if !request.site.is_empty() {
                return Err(Status::invalid_argument(
                    "a site and all sites at once: name one or the other",
                ));
            }
            self.sites.apply_all(&docs).await
        } else {
            self.sites.apply(&request.site, &docs).await
        };
        document(applied.map_err(status_from)?)
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<JsonDocument>, Status> {
        let request = request.into_inner();
        document(
            self.sites
                .delete(&request.site, &request.name)
                .await
                .map_err(status_from)?,
        )
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<JsonDocument>, Status> {
        document(self.sites.status())
    }

    async fn site_token(
        &self,
        request: Request<SiteTokenRequest>,
    ) -> Result<Response<SiteTokenReply>, Status> {
        let request = request.into_inner();
        let token = self
            .sites
            .set_token(&request.site, Duration::from_millis(request.grace_ms))
            .await
            .map_err(status_from)?;
        Ok(Response::new(SiteTokenReply {
            site: request.site,
            token: token.to_string(),
        }))
    }
}
