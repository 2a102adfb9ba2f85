//! The hub's policy table: sites on the link by their site token, every
//! other verb by a hub admin token. Same layer as the gateway's
//! (`api::auth`), its own credentials: a gateway's token means nothing
//! here, a site token opens nothing but its own link.

use std::sync::Arc;

use http::HeaderMap;
use tonic::Status;

use super::sites::Sites;
use crate::api::auth::{
    bearer, http_rule_for, rule_for, unauthenticated, Need, Policy, Principal, Rule,
};
use crate::tls::PeerInfo;

/// The metadata key in which a site names itself on the link.
pub const SITE_HEADER: &str = "x-gantry-site";

/// Every method of `hub.proto`.
pub const HUB_POLICY: &[Rule] = &[
    ("/gantry.hub.v1.Hub/Link", Need::Site, "link"),
    ("/gantry.hub.v1.Hub/Apply", Need::HubAdmin, "hub apply"),
    ("/gantry.hub.v1.Hub/Delete", Need::HubAdmin, "hub delete"),
    ("/gantry.hub.v1.Hub/Status", Need::HubAdmin, "hub status"),
    (
        "/gantry.hub.v1.Hub/SiteToken",
        Need::HubAdmin,
        "hub site-token",
    ),
];

/// Plain HTTP paths on the hub's port (`crate::web`): metrics name every
/// site, so they need a hub admin token.
pub const HUB_HTTP_POLICY: &[Rule] = &[
    ("/metrics", Need::HubAdmin, "reading metrics"),
    ("/healthz", Need::Anyone, "health"),
    ("/", Need::HubAdmin, "the web page"),
    ("/sites/*", Need::HubAdmin, "the web page"),
    ("/live", Need::HubAdmin, "the web page"),
    ("/live/*", Need::HubAdmin, "the web page"),
    ("/login", Need::Anyone, "sign-in"),
    ("/logout", Need::Anyone, "sign-out"),
];

#[derive(Clone)]
pub struct HubPolicy {
    pub sites: Arc<Sites>,
}

impl Policy for HubPolicy {
    fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        _peer: Option<&PeerInfo>,
    ) -> Result<Principal, Status> {
        let rule = rule_for(HUB_POLICY, path).or_else(|| http_rule_for(HUB_HTTP_POLICY, path));
        let Some((_, need, _)) = rule else {
            return Err(Status::unimplemented(format!("no method {path}")));
        };
        match need {
            Need::HubAdmin => {
                let token = bearer(headers).ok_or_else(|| {
                    unauthenticated(
                        "no hub admin token: pass --token, GANTRY_HUB_TOKEN or --data-dir of the hub",
                    )
                })?;
                if !self.sites.check_admin_token(token) {
                    return Err(unauthenticated("unknown hub admin token"));
                }
                Ok(Principal::HubAdmin)
            }
            Need::Site => {
                let site = headers
                    .get(SITE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| unauthenticated("the link names no site"))?;
                let token = bearer(headers).ok_or_else(|| unauthenticated("no site token"))?;
                if !self.sites.check_site_token(site, token) {
                    return Err(unauthenticated("unknown site or wrong token"));
                }
                Ok(Principal::Site(site.to_string()))
            }
            // `/healthz` (it says nothing but "up") and the sign-in form,
            // which checks the token itself.
            Need::Anyone => Ok(Principal::Anyone),
            Need::Member | Need::Token(_) => Err(Status::unimplemented("not a hub method")),
        }
    }
}
