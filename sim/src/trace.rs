//! The run's trace: every event that matters (leader changes, applied
//! indexes, container starts and stops, client results, faults) with its
//! simulated time, hashed in order. Two runs of one seed must give the same
//! hash; `--trace` also prints the lines.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::clock::sim_ms;

struct Inner {
    hasher: Sha256,
    events: u64,
    print: bool,
}

/// A shared, ordered trace.
#[derive(Clone)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

impl Trace {
    pub fn new(print: bool) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                hasher: Sha256::new(),
                events: 0,
                print,
            })),
        }
    }

    /// Records `text` at the current simulated time.
    pub fn event(&self, text: impl AsRef<str>) {
        let line = format!("{:>9} {}", sim_ms(), text.as_ref());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.hasher.update(line.as_bytes());
        inner.hasher.update(b"\n");
        inner.events += 1;
        if inner.print {
            println!("{line}");
        }
    }

    pub fn events(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).events
    }

    /// The hash of everything recorded so far.
    pub fn hash(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        hex::encode(inner.hasher.clone().finalize())
    }
}
