//! Progress for long client verbs: a bar or spinner on stderr when stderr is
//! a terminal and the output is a table, nothing otherwise (a pipe or a
//! log gets the plain lines alone, never `\r` or escape sequences). Lines
//! the verb prints go to stdout around the bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
