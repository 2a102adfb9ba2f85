//! Small hand-written clusters checking each rule of the placement pipeline end to end.

use gantry_scheduler::testing::{node, running, workload, GI, MI};
use gantry_scheduler::{
    plan, ClusterView, InstanceRef, NodeView, PendingInstance, Placement, Plan, Resources,
};
use serde::de::{value::Error, IntoDeserializer};
use serde::Deserialize;

fn view(nodes: Vec<NodeView>) -> ClusterView {
    ClusterView {
        nodes,
        running: Vec::new(),
    }
}

fn placed(p: &Plan, name: &str, replica: u32) -> Option<u64> {
    p.node_of(&InstanceRef::new(name, replica))
}

fn refusal_text(p: &Plan) -> String {
    assert_eq!(p.unplaceable.len(), 1, "{p:#?}");
    p.unplaceable[0].reason.to_string()
}

#[test]
fn refusal_matches_the_installer_example() {
    let v = view(vec![
        node(1, 2000, GI),
        node(2, 2000, GI),
        node(3, 2000, 100 * MI).with_label("zigbee", "true"),
    ]);
    let w = workload("bridge", 100, 256 * MI).with_selector("zigbee", "true");
    assert_eq!(
        refusal_text(&plan(&v, &[w.replica(0)])),
        "0/3 gateways fit: 2 lack label zigbee=true, 1 has too little memory (needs 256Mi, 100Mi free)"
    );
}

#[test]
fn refusal_names_every_failing_constraint() {
    let mut down = node(1, 4000, 4 * GI).with_device("/dev/ttyUSB0");
    down.ready = false;
    let mut cordoned = node(2, 4000, 4 * GI).with_device("/dev/ttyUSB0");
    cordoned.cordoned = true;
    let v = view(vec![
        down,
        cordoned,
        node(3, 1500, 4 * GI).with_device("/dev/ttyUSB0"),
        node(4, 250, 4 * GI),
    ]);
    let w = workload("modbus", 2000, GI).with_device("/dev/ttyUSB0");
    assert_eq!(
        refusal_text(&plan(&v, &[w.replica(0)])),
        "0/4 gateways fit: 1 is not ready, 1 is cordoned, 1 lacks device /dev/ttyUSB0, \
         2 have too little cpu (needs 2, 1500m free)"
    );
}

#[test]
fn spread_node_keeps_replicas_apart_and_explains_the_overflow() {
    let v = view(vec![node(1, 4000, 4 * GI), node(2, 4000, 4 * GI)]);
    let w = workload("agent", 100, 64 * MI).with_spread_node();
    let p = plan(&v, &[w.replica(0), w.replica(1), w.replica(2)]);
    assert_eq!(placed(&p, "agent", 0), Some(1));
    assert_eq!(placed(&p, "agent", 1), Some(2));
    assert_eq!(
        refusal_text(&p),
        "0/2 gateways fit: 2 already run a replica (spread: node)"
    );
}

#[test]
fn spread_node_counts_running_replicas() {
    let mut v = view(vec![node(1, 4000, 4 * GI), node(2, 4000, 4 * GI)]);
    v.running
        .push(running("agent", 0, 1, Resources::new(100, MI), 0));
    let w = workload("agent", 100, 64 * MI).with_spread_node();
    assert_eq!(placed(&plan(&v, &[w.replica(1)]), "agent", 1), Some(2));
}

#[test]
fn spread_prefers_the_emptiest_and_binpack_the_fullest() {
    let mut v = view(vec![node(1, 4000, 4 * GI), node(2, 4000, 4 * GI)]);
    v.running
        .push(running("other", 0, 1, Resources::new(2000, 2 * GI), 0));
    let spread = workload("s", 100, MI);
    let binpack = workload("b", 100, MI).with_placement(Placement::Binpack);
    assert_eq!(placed(&plan(&v, &[spread.replica(0)]), "s", 0), Some(2));
    assert_eq!(placed(&plan(&v, &[binpack.replica(0)]), "b", 0), Some(1));
}

#[test]
fn spread_fills_gateways_evenly() {
    let v = view(vec![
        node(1, 4000, 4 * GI),
        node(2, 4000, 4 * GI),
        node(3, 4000, 4 * GI),
    ]);
    let w = workload("w", 500, 512 * MI);
    let pending: Vec<PendingInstance> = (0..6).map(|r| w.replica(r)).collect();
    let p = plan(&v, &pending);
    for id in 1..=3 {
        assert_eq!(p.placements.iter().filter(|a| a.node == id).count(), 2);
    }
}

#[test]
fn ties_go_to_the_lower_gateway_id() {
    let v = view(vec![
        node(9, 1000, GI),
        node(3, 1000, GI),
        node(5, 1000, GI),
    ]);
    assert_eq!(
        placed(&plan(&v, &[workload("w", 1, 1).replica(0)]), "w", 0),
        Some(3)
    );
}

#[test]
fn previous_gateway_is_preferred_while_it_fits() {
    let mut v = view(vec![node(1, 4000, 4 * GI), node(2, 4000, 4 * GI)]);
    v.running
        .push(running("other", 0, 2, Resources::new(1000, GI), 0));
    let w = workload("w", 100, MI);
    let p = plan(&v, &[w.replica(0).with_previous_node(2)]);
    assert_eq!(placed(&p, "w", 0), Some(2));
}

#[test]
fn previous_gateway_is_ignored_when_it_no_longer_passes() {
    let mut gone = node(2, 4000, 4 * GI);
    gone.ready = false;
    let v = view(vec![node(1, 4000, 4 * GI), gone]);
    let p = plan(
        &v,
        &[workload("w", 100, MI).replica(0).with_previous_node(2)],
    );
    assert_eq!(placed(&p, "w", 0), Some(1));
}

#[test]
fn higher_priority_gets_the_room_first() {
    let v = view(vec![node(1, 1000, GI)]);
    let low = workload("a-low", 800, MI);
    let high = workload("z-high", 800, MI).with_priority(10);
    let p = plan(&v, &[low.replica(0), high.replica(0)]);
    assert_eq!(placed(&p, "z-high", 0), Some(1));
    assert_eq!(p.unplaceable[0].instance, InstanceRef::new("a-low", 0));
}

#[test]
fn instances_on_unknown_gateways_hold_no_capacity() {
    let mut v = view(vec![node(1, 1000, GI)]);
    v.running
        .push(running("ghost", 0, 42, Resources::new(1000, GI), 0));
    assert_eq!(
        placed(&plan(&v, &[workload("w", 1000, GI).replica(0)]), "w", 0),
        Some(1)
    );
}

#[test]
fn an_empty_cluster_refuses_with_a_clear_reason() {
    let p = plan(&ClusterView::default(), &[workload("w", 1, 1).replica(0)]);
    assert_eq!(
        refusal_text(&p),
        "0/0 gateways fit: the cluster has no gateways"
    );
}

#[test]
fn placement_parses_from_lowercase_and_defaults_to_spread() {
    let parse = |s: &str| {
        Placement::deserialize(s.into_deserializer() as serde::de::value::StrDeserializer<'_, Error>)
    };
    assert_eq!(parse("spread"), Ok(Placement::Spread));
    assert_eq!(parse("binpack"), Ok(Placement::Binpack));
    assert!(parse("Binpack").is_err());
    assert_eq!(Placement::default(), Placement::Spread);
}

#[test]
fn instances_that_request_nothing_still_spread_and_binpack_still_packs() {
    let v = view(vec![
        node(1, 2000, GI),
        node(2, 2000, GI),
        node(3, 2000, GI),
    ]);
    let w = workload("web", 0, 0);
    let pending: Vec<PendingInstance> = (0..6).map(|r| w.replica(r)).collect();
    let p = plan(&v, &pending);
    let mut per_node = [0; 3];
    for r in 0..6 {
        let n = placed(&p, "web", r).expect("placed");
        per_node[(n - 1) as usize] += 1;
    }
    assert_eq!(per_node, [2, 2, 2]);

    let packed = workload("batch", 0, 0).with_placement(Placement::Binpack);
    let pending: Vec<PendingInstance> = (0..3).map(|r| packed.replica(r)).collect();
    let p = plan(&v, &pending);
    let nodes: Vec<u64> = (0..3)
        .map(|r| placed(&p, "batch", r).expect("placed"))
        .collect();
    assert_eq!(nodes, vec![1, 1, 1]);
}
