//! Progress for long client verbs: a bar or spinner on stderr when stderr is
//! a terminal and the output is a table, nothing otherwise (a pipe or a
//! log gets the plain lines alone, never `\r` or escape sequences). Lines
//! the verb prints go to stdout around the bar.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::OutputFormat;

pub struct Progress {
    bar: ProgressBar,
}

fn drawn(format: OutputFormat) -> bool {
    format.is_table() && std::io::stderr().is_terminal()
}

impl Progress {
    /// A byte count towards `total` (an upload).
    pub fn bytes(format: OutputFormat, total: u64, message: &str) -> Self {
        let bar = if drawn(format) {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(message.to_string());
        Self { bar }
    }

    /// A spinner with a message (waiting on the cluster).
    pub fn spinner(format: OutputFormat, message: &str) -> Self {
        let bar = if drawn(format) {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_message(message.to_string());
        Self { bar }
    }

    pub fn advance(&self, by: u64) {
        self.bar.inc(by);
    }

    /// Turns a byte bar into a spinner with `message` (the upload is done,
    /// the gateways are importing).
    pub fn then_wait(&self, message: &str) {
        if !self.bar.is_hidden() {
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                self.bar.set_style(style);
            }
            self.bar.enable_steady_tick(Duration::from_millis(120));
        }
        self.bar.set_message(message.to_string());
    }

    pub fn message(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }

    /// Takes the bar off the screen (before the verb's last answer).
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    /// Prints `line` on stdout without tearing the bar.
    pub fn say(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// One byte bar per gateway, for work that runs on several at once (a
/// pull with `--all`); nothing at all when not drawn.
pub struct GatewayBars {
    multi: Option<MultiProgress>,
    /// Each bar and whether its style shows a total yet.
    bars: BTreeMap<String, (ProgressBar, Option<bool>)>,
}

impl GatewayBars {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            multi: drawn(format)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: BTreeMap::new(),
        }
    }

    /// Moves `gateway`'s bar to `bytes` of `total` (a spinner with a byte
    /// count while the total is unknown).
    pub fn update(&mut self, gateway: &str, message: &str, bytes: u64, total: Option<u64>) {
        let Some(multi) = &self.multi else {
            return;
        };
        let (bar, styled) = self.bars.entry(gateway.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::no_length());
            bar.enable_steady_tick(Duration::from_millis(120));
            (bar, None)
        });
        let measured = total.is_some();
        if *styled != Some(measured) {
            *styled = Some(measured);
            let template = if measured {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
            } else {
                "{spinner} {msg} {bytes} {bytes_per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_message(message.to_string());
        bar.set_position(bytes);
    }

    /// Prints `line` on stdout without tearing the bars.
    pub fn say(&self, line: &str) {
        match &self.multi {
            Some(multi) => multi.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Takes `gateway`'s bar off the screen and prints `line` in its place.
    pub fn finish(&mut self, gateway: &str, line: &str) {
        if let Some((bar, _)) = self.bars.remove(gateway) {
            bar.finish_and_clear();
        }
        self.say(line);
    }
}

impl Drop for GatewayBars {
    fn drop(&mut self) {
        for (bar, _) in self.bars.values() {
            bar.finish_and_clear();
        }
    }
}
