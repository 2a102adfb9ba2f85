//! Cloud sync in the state machine: attaching, connection transitions, and
//! committing a hub revision exactly once with local workloads kept safe.

use std::collections::BTreeSet;

use super::spec::WorkloadSpec;
use super::{rejected, ChangeSet, CloudLink, NodeId, Response, Source, State, StateKey};

/// Why a delivery is refused when the link it came on was replaced by a
/// new `cloud attach`: the link ends instead of answering the hub.
pub const STALE_LINK: &str = "the cloud link that carried this revision was replaced";

/// Where a hub revision comes from and what it is, besides its workloads.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub revision: u64,
    pub full: bool,
    pub epoch: u64,
    pub attachment: Option<u64>,
}

impl State {
    pub(super) fn cloud_attach(
        &mut self,
        at: u64,
        link: CloudLink,
        changes: &mut ChangeSet,
    ) -> Response {
        let (hub, site) = (link.hub.clone(), link.site.clone());
        let what = if link.mqtt.is_some() {
            "MQTT broker"
        } else {
            "hub"
        };
        if hub.trim().is_empty() || site.trim().is_empty() {
            return rejected("cloud attach needs a hub address and a site name");
        }
        let hub_link_ok = !link.token_sealed.is_empty() && link.hub_ca_sha256.len() == 64;
        if link.mqtt.is_none() && !hub_link_ok {
            return rejected("cloud attach needs the site's token");
        }
        let cloud = &mut self.meta.cloud;
        // The same publisher (hub, or broker and topics) keeps counting.
        let same_site = cloud.link.as_ref().is_some_and(|l| {
            l.hub == hub
                && l.site == site
                && l.hub_ca_sha256 == link.hub_ca_sha256
                && l.mqtt.as_ref().map(|m| &m.prefix) == link.mqtt.as_ref().map(|m| &m.prefix)
        });
        if !same_site {
            // Another hub's or site's revisions mean nothing here; the first
            // delivery from revision 0 is a full snapshot.
            cloud.acked_revision = 0;
            cloud.hub_epoch = 0;
            cloud.refused.clear();
        }
        cloud.attachment += 1;
        cloud.link = Some(link);
        cloud.connected = false;
        cloud.reported_by = None;
        cloud.since_ms = at;
        changes.insert(StateKey::Meta);
        self.event(
            at,
            "cloud-attached",
            format!("attached to {what} {hub} as site {site}"),
            changes,
        );
        Response::Ok
    }

    pub(super) fn cloud_detach(&mut self, at: u64, changes: &mut ChangeSet) -> Response {
        let Some(link) = self.meta.cloud.link.take() else {
            return rejected("this site is not attached to a cloud hub");
        };
        let cloud = &mut self.meta.cloud;
        cloud.connected = false;
        cloud.reported_by = None;
        cloud.since_ms = at;
        changes.insert(StateKey::Meta);
        self.event(
            at,
            "cloud-detached",
            format!(
                "detached from hub {} (site {}); cloud workloads keep running",
                link.hub, link.site
            ),
            changes,
        );
        Response::Ok
    }

    pub(super) fn set_cloud_connection(
        &mut self,
        at: u64,
        connected: bool,
        node: NodeId,
        reason: Option<&str>,
        changes: &mut ChangeSet,
    ) -> Response {
        let cloud = &mut self.meta.cloud;
        if cloud.link.is_none() {
            return rejected("this site is not attached to a cloud hub");
        }
        if cloud.connected == connected && cloud.reported_by == Some(node) {
            return Response::Ok;
        }
        let changed = cloud.connected != connected;
        cloud.connected = connected;
        cloud.reported_by = Some(node);
        if changed {
            cloud.since_ms = at;
        }
        changes.insert(StateKey::Meta);
        if changed {
            let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
            let word = if connected {
                "connected"
            } else {
                "disconnected"
            };
            self.event(at, "cloud-link", format!("cloud link {word}{why}"), changes);
        }
        Response::Ok
    }

    /// Commits one hub revision. A revision at or below the acknowledged one
    /// is a redelivery and changes nothing; a malformed one changes nothing
    /// either. Names owned by a local workload are refused one by one, the
    /// rest is committed.
    pub(super) fn apply_cloud_revision(
        &mut self,
        at: u64,
        delivery: Delivery,
        upserts: &[WorkloadSpec],
        deletes: &[String],
        changes: &mut ChangeSet,
    ) -> Response {
        let Delivery {
            revision,
            full,
            epoch,
            attachment,
        } = delivery;
        if self.meta.cloud.link.is_none() {
            return rejected("this site is not attached to a cloud hub");
        }
        if attachment.is_some_and(|a| a != self.meta.cloud.attachment) {
            return rejected(STALE_LINK);
        }
        // Another epoch: the hub's store was recreated or restored, and its
        // revisions count from a new start. Only a full snapshot can say
        // what it wants now; it replaces what the old history acked.
        let new_epoch = epoch != 0 && epoch != self.meta.cloud.hub_epoch;
        if new_epoch && !full {
            return rejected(format!(
                "revision {revision} is a delta from a new hub epoch; a full snapshot must come first"
            ));
        }
        if !new_epoch && revision <= self.meta.cloud.acked_revision {
            return Response::CloudRevision {
                revision,
                applied: false,
                refused: Vec::new(),
            };
        }
        let mut names = BTreeSet::new();
        for spec in upserts {
            if let Err(e) = spec.validate() {
                return rejected(format!("cloud workload '{}': {}", spec.name, e.0));
            }
            if !names.insert(spec.name.as_str()) {
                return rejected(format!(
                    "cloud workload '{}' is listed twice in revision {revision}",
                    spec.name
                ));
            }
        }
        let mut gone: Vec<String> = deletes.to_vec();
        if full {
            gone.extend(
                self.workloads
                    .values()
                    .filter(|w| w.source == Source::Cloud && !names.contains(w.spec.name.as_str()))
                    .map(|w| w.spec.name.clone()),
            );
            self.meta.cloud.refused.clear();
        }
        for name in &gone {
            self.meta.cloud.refused.remove(name);
            let owned_by_cloud = self
                .workloads
                .get(name)
                .is_some_and(|w| w.source == Source::Cloud);
            if owned_by_cloud {
                self.remove_workload(at, name, changes);
            }
        }
        let mut refused = Vec::new();
        for spec in upserts {
            let local = self
                .workloads
                .get(&spec.name)
                .is_some_and(|w| w.source == Source::Local);
            if local {
                let reason = format!(
                    "workload '{}' is owned by a local workload on the site; the cloud workload of that name is refused",
                    spec.name
                );
                self.meta
                    .cloud
                    .refused
                    .insert(spec.name.clone(), reason.clone());
                refused.push((spec.name.clone(), reason));
                continue;
            }
            self.meta.cloud.refused.remove(&spec.name);
            self.upsert_workload(at, spec, Source::Cloud, changes);
        }
        self.meta.cloud.acked_revision = revision;
        if new_epoch {
            self.meta.cloud.hub_epoch = epoch;
        }
        changes.insert(StateKey::Meta);
        let kind = if full { "snapshot" } else { "delta" };
        self.event(
            at,
            "cloud-revision",
            format!(
                "cloud revision {revision} committed ({kind}: {} upserts, {} deletes, {} refused)",
                upserts.len(),
                gone.len(),
                refused.len()
            ),
            changes,
        );
        Response::CloudRevision {
            revision,
            applied: true,
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::parse_manifest;
    use super::super::*;

    fn req(at: u64, command: Command) -> Request {
        Request::new(at, command)
    }

    fn apply(state: &mut State, command: Command) -> Response {
        state.apply(&req(100, command), &mut ChangeSet::new())
    }

    fn attached() -> State {
        let mut state = State::default();
        assert_eq!(
            apply(
                &mut state,
                Command::CloudAttach {
                    hub: "127.0.0.1:9".into(),
                    site: "s1".into(),
                    hub_ca_sha256: "ab".repeat(32),
                    token_sealed: "00".into(),
                    keepalive_ms: None,
                    mqtt: None,
                }
            ),
            Response::Ok
        );
        state
    }

    fn specs(text: &str) -> Vec<WorkloadSpec> {
        parse_manifest(text).unwrap()
    }

    fn revision(
        state: &mut State,
        revision: u64,
        full: bool,
        text: &str,
        deletes: &[&str],
    ) -> Response {
        let upserts = if text.is_empty() {
            Vec::new()
        } else {
            specs(text)
        };
        apply(
            state,
            Command::ApplyCloudRevision {
                revision,
                full,
                upserts,
                deletes: deletes.iter().map(|d| d.to_string()).collect(),
                epoch: 0,
                attachment: None,
            },
        )
    }

    #[test]
    fn a_revision_is_committed_once_with_its_number() {
        let mut state = attached();
        let r = revision(&mut state, 1, true, "name: a\nimage: i:1\n", &[]);
        assert!(matches!(r, Response::CloudRevision { applied: true, .. }));
        assert_eq!(state.meta.cloud.acked_revision, 1);
        assert_eq!(state.workloads["a"].source, Source::Cloud);
        assert_eq!(state.workloads["a"].generation, 1);
        // Redelivery of the same revision (or an older one) changes nothing.
        let before = state.clone();
        let r = revision(&mut state, 1, true, "name: a\nimage: i:2\n", &[]);
        assert_eq!(
            r,
            Response::CloudRevision {
                revision: 1,
                applied: false,
                refused: vec![]
            }
        );
        assert_eq!(state, before);
        // A delta updates and deletes.
        revision(
            &mut state,
            2,
            false,
            "name: a\nimage: i:2\n---\nname: b\nimage: i\n",
            &[],
        );
        assert_eq!(state.workloads["a"].generation, 2);
        revision(&mut state, 3, false, "", &["b"]);
        assert!(!state.workloads.contains_key("b"));
        assert!(state.instances_of("b").next().is_none());
        assert_eq!(state.meta.cloud.acked_revision, 3);
    }

    #[test]
    fn a_full_snapshot_replaces_cloud_workloads_and_keeps_local_ones() {
        let mut state = attached();
        revision(
            &mut state,
            1,
            false,
            "name: a\nimage: i\n---\nname: b\nimage: i\n",
            &[],
        );
        apply(
            &mut state,
            Command::ApplyWorkloads {
                workloads: specs("name: mine\nimage: i\n"),
                source: Source::Local,
            },
        );
        revision(&mut state, 5, true, "name: b\nimage: i\n", &[]);
        let names: Vec<&str> = state.workloads.keys().map(String::as_str).collect();
        assert_eq!(names, ["b", "mine"]);
    }

    #[test]
    fn a_clash_with_a_local_workload_refuses_that_name_and_commits_the_rest() {
        let mut state = attached();
        apply(
            &mut state,
            Command::ApplyWorkloads {
                workloads: specs("name: web\nimage: local:1\n"),
                source: Source::Local,
            },
        );
        let r = revision(
            &mut state,
            1,
            false,
            "name: web\nimage: cloud:1\n---\nname: db\nimage: i\n",
            &[],
        );
        let Response::CloudRevision {
            refused, applied, ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert!(applied);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].1.contains("owned by a local workload"));
        assert_eq!(state.workloads["web"].source, Source::Local);
        assert_eq!(state.workloads["web"].spec.image, "local:1");
        assert_eq!(state.workloads["db"].source, Source::Cloud);
        assert!(state.meta.cloud.refused.contains_key("web"));
        // A cloud delete of a refused name clears the refusal, not the local workload.
        revision(&mut state, 2, false, "", &["web"]);
        assert!(state.meta.cloud.refused.is_empty());
        assert_eq!(state.workloads["web"].source, Source::Local);
        // And the local side is refused a name the cloud owns.
        let r = apply(
            &mut state,
            Command::ApplyWorkloads {
                workloads: specs("name: db\nimage: x\n"),
                source: Source::Local,
            },
        );
        assert!(
            matches!(r, Response::Rejected { reason } if reason.contains("owned by the cloud"))
        );
    }

    #[test]
    fn malformed_revisions_and_unattached_sites_change_nothing() {
        let mut state = attached();
        let mut bad = specs("name: a\nimage: i\n");
        bad[0].image = "has space".into();
        let before = state.clone();
        let r = apply(
            &mut state,
            Command::ApplyCloudRevision {
                revision: 1,
                full: true,
                upserts: bad,
                deletes: vec![],
                epoch: 0,
                attachment: None,
            },
        );
        assert!(matches!(r, Response::Rejected { .. }));
        assert_eq!(state, before);
        let mut plain = State::default();
        let r = revision(&mut plain, 1, true, "name: a\nimage: i\n", &[]);
        assert!(matches!(r, Response::Rejected { .. }));
        assert_eq!(plain, State::default());
    }

    #[test]
    fn attach_detach_and_connection_transitions() {
        let mut state = attached();
        revision(&mut state, 4, true, "name: a\nimage: i\n", &[]);
        let conn = |connected| Command::SetCloudConnection {
            connected,
            node: 1,
            reason: None,
        };
        apply(&mut state, conn(true));
        assert!(state.meta.cloud.connected);
        let events = state.events.len();
        apply(&mut state, conn(true));
        assert_eq!(state.events.len(), events, "no transition, no event");
        // Re-attaching to the same site keeps the revision; another resets it.
        let attach = |site: &str| Command::CloudAttach {
            hub: "127.0.0.1:9".into(),
            site: site.into(),
            hub_ca_sha256: "ab".repeat(32),
            token_sealed: "00".into(),
            keepalive_ms: None,
            mqtt: None,
        };
        apply(&mut state, attach("s1"));
        assert_eq!(state.meta.cloud.acked_revision, 4);
        assert!(!state.meta.cloud.connected);
        apply(&mut state, attach("s2"));
        assert_eq!(state.meta.cloud.acked_revision, 0);
        assert_eq!(apply(&mut state, Command::CloudDetach), Response::Ok);
        assert!(state.meta.cloud.link.is_none());
        assert!(state.workloads.contains_key("a"), "cloud workloads stay");
        assert!(matches!(
            apply(&mut state, Command::CloudDetach),
            Response::Rejected { .. }
        ));
    }

    fn delivery(revision: u64, full: bool, text: &str, epoch: u64, attachment: u64) -> Command {
        Command::ApplyCloudRevision {
            revision,
            full,
            upserts: specs(text),
            deletes: vec![],
            epoch,
            attachment: Some(attachment),
        }
    }

    #[test]
    fn a_new_hub_epoch_starts_the_count_again_with_a_full_snapshot() {
        let mut state = attached();
        let attachment = state.meta.cloud.attachment;
        assert_eq!(attachment, 1);
        let r = apply(
            &mut state,
            delivery(57, true, "name: old\nimage: i\n", 7, attachment),
        );
        assert!(matches!(r, Response::CloudRevision { applied: true, .. }));
        assert_eq!(state.meta.cloud.hub_epoch, 7);
        // The same epoch: a low revision is a redelivery.
        let r = apply(
            &mut state,
            delivery(3, true, "name: new\nimage: i\n", 7, attachment),
        );
        assert!(matches!(r, Response::CloudRevision { applied: false, .. }));
        // The hub lost its store: epoch 9 at revision 3, a full snapshot,
        // replaces what the old history had.
        let r = apply(
            &mut state,
            delivery(3, true, "name: new\nimage: i\n", 9, attachment),
        );
        assert!(
            matches!(r, Response::CloudRevision { applied: true, .. }),
            "{r:?}"
        );
        assert_eq!(state.meta.cloud.acked_revision, 3);
        assert_eq!(state.meta.cloud.hub_epoch, 9);
        assert!(state.workloads.contains_key("new"));
        assert!(!state.workloads.contains_key("old"));
        // A delta from yet another epoch cannot say what to drop: refused.
        let before = state.clone();
        let r = apply(
            &mut state,
            delivery(4, false, "name: x\nimage: i\n", 11, attachment),
        );
        assert!(matches!(r, Response::Rejected { .. }));
        assert_eq!(state, before);
    }

    #[test]
    fn a_delivery_from_a_replaced_link_changes_nothing() {
        let mut state = attached();
        let old = state.meta.cloud.attachment;
        let r = apply(
            &mut state,
            Command::CloudAttach {
                hub: "127.0.0.1:10".into(),
                site: "s1".into(),
                hub_ca_sha256: "cd".repeat(32),
                token_sealed: "00".into(),
                keepalive_ms: None,
                mqtt: None,
            },
        );
        assert_eq!(r, Response::Ok);
        assert_eq!(state.meta.cloud.hub_epoch, 0);
        let before = state.clone();
        let r = apply(
            &mut state,
            delivery(500, true, "name: a\nimage: i\n", 5, old),
        );
        assert_eq!(
            r,
            Response::Rejected {
                reason: super::STALE_LINK.into()
            }
        );
        assert_eq!(state, before);
        let now = state.meta.cloud.attachment;
        let r = apply(&mut state, delivery(1, true, "name: a\nimage: i\n", 5, now));
        assert!(matches!(r, Response::CloudRevision { applied: true, .. }));
    }
}
