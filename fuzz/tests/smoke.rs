//! The CI smoke of every fuzz target: the committed corpus, then seeded
//! random cases mutated from it (bit flips, byte inserts and deletes,
//! splices, truncation, dictionary words) and fully random bytes. No
//! coverage guidance (that is `scripts/fuzz.sh`), but it runs on stable
//! with no tools, in about a minute, and a crash it finds is written to
//! `fuzz/artifacts/<target>/` and fails the test.
//!
//! `FUZZ_CASES` sets the random cases per target (default 10,000; fewer
//! for the slow `state_machine`), `FUZZ_SEED` the seed, `FUZZ_TARGETS` a
//! comma-separated subset. Prints one line per target:
//! `fuzz: target=<name> cases=<n> crashes=<c>` (n counts corpus files too).

use std::cell::RefCell;
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Random cases per target unless `FUZZ_CASES` says otherwise.
const DEFAULT_CASES: u64 = 10_000;
/// `state_machine` applies up to 48 commands to a state and its twin, with
/// checks after each, per case (about 1 ms each in the dev profile here):
/// fewer cases keep it well inside its 15 s with a loaded machine.
const DEFAULT_CASES_STATE_MACHINE: u64 = 5_000;
const DEFAULT_SEED: u64 = 0x6761_6e74_7279_0001;
/// Inputs stay small: the parsers' costs are linear or worse in length.
const MAX_LEN: usize = 16 * 1024;
/// Stop a target after this many crashes: more rarely tell anything new.
const MAX_CRASHES: u64 = 5;

/// Words that make mutated text more likely to mean something to a parser.
const DICTIONARY: &[&[u8]] = &[
    b": ",
    b"\n- ",
    b"---\n",
    b"&a ",
    b"*a",
    b"<<: ",
    b"\"",
    b"'",
    b"{",
    b"}",
    b"[",
    b"]",
    b"99999999999999999999",
    b"18446744073709551615",
    b"Gi",
    b"Ti",
    b"Mi",
    b"Ki",
    b"ms",
    b"m",
    b"h",
    b".",
    b"=",
    b",",
    b"-1",
    b"0",
    b"null",
    b"true",
    b"name: web\n",
    b"image: x\n",
    b"replicas: ",
    b"memory: ",
    b"cpu: ",
    b"services:\n",
    b"kind: Deployment\n",
    b"apiVersion: apps/v1\n",
    b"node-grace=",
    b"heartbeat-interval=",
    b"\\u0000",
    b"\xff",
    b"{\"",
    b"\":",
    b"Normal",
    b"Membership",
    b"Blank",
];

/// xorshift64*: small, seedable and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if corpus.is_empty() || rng.below(10) == 0 {
        let len = rng.below(512);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = *[0u8, 0xff, b'\n', b':', b'-', b'9', b' ', b'"', 0x80]
                    .get(rng.below(9))
                    .unwrap_or(&0);
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                data.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let chunk = data[at..at + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, chunk);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => data.truncate(rng.below(len)),
            7 => {
                let word = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, word.iter().copied());
            }
            _ => {
                // Small numbers in binary encodings: lengths, tags, varints.
                if len > 0 {
                    let at = rng.below(len);
                    data[at] = data[at].wrapping_add(rng.byte() % 5).wrapping_sub(2);
                }
            }
        }
    }
    data.truncate(MAX_LEN);
    data
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).expect("read corpus file"))
        .collect()
}

thread_local! {
    /// The last panic's message on this thread, for the crash report.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `target` on `data`; the panic message when it panics.
fn run_one(target: fn(&[u8]), data: &[u8]) -> Option<String> {
    match panic::catch_unwind(AssertUnwindSafe(|| target(data))) {
        Ok(()) => None,
        Err(_) => Some(
            LAST_PANIC
                .with(|m| m.borrow_mut().take())
                .unwrap_or_else(|| "(no message)".into()),
        ),
    }
}

fn report_crash(name: &str, data: &[u8], message: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(name);
    let path = dir.join(format!("crash-{:016x}", fnv64(data)));
    std::fs::create_dir_all(&dir).expect("create artifacts dir");
    std::fs::write(&path, data).expect("write crash input");
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let _ = writeln!(
        std::io::stderr(),
        "fuzz: CRASH target={name} input={} ({} bytes)\n  panic: {message}\n  hex: {hex}",
        path.display(),
        data.len()
    );
}

/// Corpus then random cases for one target: (cases run, crashes).
fn run_target(name: &str, target: fn(&[u8]), seed: u64) -> (u64, u64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let seeds = corpus(&dir);
    let random = env_u64("FUZZ_CASES").unwrap_or(if name == "state_machine" {
        DEFAULT_CASES_STATE_MACHINE
    } else {
        DEFAULT_CASES
    });
    let mut rng = Rng::new(seed ^ fnv64(name.as_bytes()));
    let (mut cases, mut crashes) = (0u64, 0u64);
    let inputs = seeds
        .iter()
        .cloned()
        .map(Some)
        .chain((0..random).map(|_| None));
    for input in inputs {
        let data = input.unwrap_or_else(|| mutate(&mut rng, &seeds));
        cases += 1;
        if let Some(message) = run_one(target, &data) {
            crashes += 1;
            report_crash(name, &data, &message);
            if crashes >= MAX_CRASHES {
                break;
            }
        }
    }
    (cases, crashes)
}

#[test]
fn smoke() {
    let seed = env_u64("FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let only: Option<Vec<String>> = std::env::var("FUZZ_TARGETS")
        .ok()
        .map(|s| s.split(',').map(|t| t.trim().to_string()).collect());
    // Quiet while the targets run (a crash is reported with its message);
    // the previous hook comes back before any assertion of this test.
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        LAST_PANIC.with(|m| *m.borrow_mut() = Some(message));
    }));
    let mut failed = Vec::new();
    for (name, target) in gantry_fuzz::TARGETS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == name)) {
            continue;
        }
        let started = std::time::Instant::now();
        let (cases, crashes) = run_target(name, target, seed);
        // Straight to the streams: libtest would swallow `println!` of a
        // passing test, and these lines are the smoke's report.
        let _ = writeln!(
            std::io::stdout(),
            "fuzz: target={name} cases={cases} crashes={crashes}"
        );
        let _ = writeln!(
            std::io::stderr(),
            "  ({name}: {:.1} s, seed {seed:#x})",
            started.elapsed().as_secs_f64()
        );
        if crashes > 0 {
            failed.push(name);
        }
    }
    panic::set_hook(previous);
    assert!(
        failed.is_empty(),
        "crashes in {failed:?}: inputs under fuzz/artifacts/, see the log above"
    );
}
