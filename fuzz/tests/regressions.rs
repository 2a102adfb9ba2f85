//! Every finding of the fuzz targets, as a test that failed before its
//! fix. Found so far: a spec's memory figure written to the Raft log with
//! the one-decimal display format (`1M` applied as 1,000,038 bytes, and
//! 2^64-1 as an entry no gateway could read back); fixed by
//! `quantity::format_memory_exact`.

use gantry::cluster::TypeConfig;
use gantry::state::quantity::{format_memory, parse_memory};
use gantry::state::spec::parse_manifest;
use gantry::state::{Command, Request, Source};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

fn apply_entry(manifest: &str) -> Entry<TypeConfig> {
    let workloads = parse_manifest(manifest).expect("the manifest is accepted");
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 7),
        payload: EntryPayload::Normal(Request::new(
            1_700_000_000_000,
            Command::ApplyWorkloads {
                workloads,
                source: Source::Local,
            },
        )),
    }
}

fn memory_after_the_log(entry: &Entry<TypeConfig>) -> Result<u64, String> {
    let bytes = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
    let back: Entry<TypeConfig> = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    match back.payload {
        EntryPayload::Normal(Request {
            command: Command::ApplyWorkloads { workloads, .. },
            ..
        }) => Ok(workloads[0].memory_bytes()),
        other => Err(format!("unexpected payload {other:?}")),
    }
}

/// Found by `manifest` (input `name: web\nimage: x\nresources:\n  memory: 1M\n`,
/// panic "specs as JSON ... \"memory\":\"976.6Ki\" read back as ...
/// Memory(1000038)"). `spec::Memory` serialises with `format_memory`,
/// which rounds to one decimal of a binary unit, so a spec's memory changes
/// in the Raft log: `1M` is proposed as 1,000,000 bytes and every gateway
/// applies 1,000,038 (`500M` becomes 499,922,944; `1025` becomes 1024).
#[test]
fn memory_request_is_exact_after_the_raft_log() {
    for (text, bytes) in [("1M", 1_000_000u64), ("500M", 500_000_000), ("1025", 1025)] {
        let entry = apply_entry(&format!(
            "name: web\nimage: x\nresources:\n  memory: {text}\n"
        ));
        assert_eq!(
            memory_after_the_log(&entry),
            Ok(bytes),
            "memory: {text} after the log"
        );
    }
}

/// Found by `manifest` and `quantity` (input `18446744073709551615` as a
/// memory request; panic "memory 18446744073709551615 prints as
/// '16777216.0Ti', which does not parse: invalid memory '16777216.0Ti':
/// number too large"). The manifest is accepted, but the log entry that
/// carries it cannot be read back: `{"memory":"16777216.0Ti"}` fails to
/// deserialise wherever the entry is decoded (log reads, AppendEntries on
/// followers, a forwarded write on the leader).
#[test]
fn an_accepted_memory_request_never_makes_an_unreadable_log_entry() {
    let entry = apply_entry("name: web\nimage: x\nresources:\n  memory: 18446744073709551615\n");
    assert_eq!(memory_after_the_log(&entry), Ok(u64::MAX));
}

/// The formatter alone: whatever it prints parses again.
#[test]
fn format_memory_output_parses_for_every_value() {
    for bytes in [u64::MAX, u64::MAX - 1, u64::MAX - (1 << 30)] {
        let printed = format_memory(bytes);
        assert!(
            parse_memory(&printed).is_ok(),
            "{bytes} prints as '{printed}'"
        );
    }
}

/// The targets themselves on the inputs that found it.
#[test]
fn the_targets_pass_on_the_inputs_that_found_it() {
    gantry_fuzz::manifest(b"name: web\nimage: x\nresources:\n  memory: 1M\n");
    gantry_fuzz::manifest(b"name: web\nimage: x\nresources:\n  memory: 18446744073709551615\n");
    gantry_fuzz::quantity(b"18446744073709551615");
}
