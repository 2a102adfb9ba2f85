//! Daemon flags from a file, the way K3s reads `/etc/rancher/k3s/config.yaml`:
//! `gantry init|join|run --config FILE` (or `GANTRY_CONFIG`, or
//! `/etc/gantry/config.toml` when it exists) is a TOML table whose keys are
//! the verbs' long flags (`listen = "10.0.0.1:7400"`, `labels = {zigbee =
//! "true"}`, `node-grace = "2s"`). A flag on the command line wins over the
//! file. One file serves a gateway's whole life: a key another daemon verb
//! takes (`peer` and `token` for `join`) is ignored by the others; a key no
//! daemon verb takes is refused by name, before anything is written.
//!
//! The file is turned into flags before clap parses them, so every value
//! goes through the same parser, with the same errors, as on the command
//! line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::Cli;

/// Read when neither `--config` nor `GANTRY_CONFIG` names a file.
pub const DEFAULT_CONFIG: &str = "/etc/gantry/config.toml";
const DAEMON_VERBS: [&str; 3] = ["init", "join", "run"];

/// `args` with the config file's keys added as flags the command line does
/// not give; unchanged for any other verb, or when there is no file.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(verb_at) = verb_index(&args) else {
        return Ok(args);
    };
    let verb = args[verb_at].to_string_lossy().to_string();
    let (path, explicit) = match given_path(&args[verb_at + 1..]) {
        Some(path) => (path, true),
        None => match std::env::var_os("GANTRY_CONFIG") {
            Some(path) => (PathBuf::from(path), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        },
    };
    if !explicit && !path.exists() {
        return Ok(args);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let flags = flags_from(&text, &path, &verb)?;
    let mut out = args;
    for (key, value) in flags {
        let given = out[verb_at + 1..].iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{key}") || a.starts_with(&format!("--{key}=")))
        });
        if !given {
            out.push(OsString::from(format!("--{key}={value}")));
        }
    }
    Ok(out)
}

/// Where the verb is, when it is a daemon verb: the first word that is
/// neither an option nor the value of a global option (`gantry logs run`
/// is the logs of a workload named run).
fn verb_index(args: &[OsString]) -> Option<usize> {
    const GLOBAL_VALUES: [&str; 4] = ["--server", "-o", "--output", "--log-format"];
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let text = arg.to_string_lossy();
        if GLOBAL_VALUES.contains(&text.as_ref()) {
            i += 2;
            continue;
        }
        if text.starts_with('-') {
            i += 1;
            continue;
        }
        return DAEMON_VERBS.contains(&text.as_ref()).then_some(i);
    }
    None
}

fn given_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
    }
    None
}

/// The long flags a daemon verb takes.
fn longs(verb: &str) -> Vec<String> {
    let cli = Cli::command();
    cli.find_subcommand(verb)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The file's keys that `verb` takes, with their values as flag text.
pub fn flags_from(text: &str, path: &Path, verb: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the config file {} is not valid TOML: {e}", path.display()))?;
    let mine = longs(verb);
    let any: Vec<String> = DAEMON_VERBS.iter().flat_map(|v| longs(v)).collect();
    let mut flags = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if flag == "config" || !any.contains(&flag) {
            return Err(format!(
                "unknown key '{key}' in the config file {}: keys are the long flags of gantry init, join and run (like listen, labels or node-grace)",
                path.display()
            ));
        }
        if !mine.contains(&flag) {
            continue;
        }
        let value = flag_text(&value).ok_or_else(|| {
            format!(
                "key '{key}' in the config file {}: give a string, number, boolean, list or table",
                path.display()
            )
        })?;
        flags.push((flag, value));
    }
    Ok(flags)
}

/// A value as the flag would be typed: lists comma-joined, tables as
/// `k=v,...` (labels).
fn flag_text(value: &toml::Value) -> Option<String> {
    use toml::Value;
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(flag_text)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        Value::Table(t) => t
            .iter()
            .map(|(k, v)| flag_text(v).map(|v| format!("{k}={v}")))
            .collect::<Option<Vec<_>>>()?
            .join(","),
        Value::Datetime(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_flags_the_command_line_does_not_give() {
        let text = "name = \"from-file\"\nlisten = \"127.0.0.1:0\"\nlabels = {room = \"cellar\", zigbee = \"true\"}\ndevices = [\"/dev/ttyUSB0\", \"/dev/ttyACM0\"]\nnode_grace = \"2s\"\npeer = \"10.0.0.1:7400\"\n";
        let flags = flags_from(text, Path::new("c.toml"), "init").unwrap();
        assert!(flags.contains(&("labels".into(), "room=cellar,zigbee=true".into())));
        assert!(flags.contains(&("devices".into(), "/dev/ttyUSB0,/dev/ttyACM0".into())));
        assert!(flags.contains(&("node-grace".into(), "2s".into())));
        assert!(
            !flags.iter().any(|(k, _)| k == "peer"),
            "a join key, ignored by init"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let file = file.to_string_lossy().to_string();
        let args = expand(os(&[
            "gantry", "init", "--config", &file, "--name", "gw-flag",
        ]))
        .unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert!(
            args.contains(&"--listen=127.0.0.1:0".to_string()),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.contains("from-file")),
            "the flag wins: {args:?}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_refused_by_name() {
        let e = flags_from(
            "listen = \"x\"\nlisten-port = 7400\n",
            Path::new("c.toml"),
            "run",
        )
        .unwrap_err();
        assert!(e.contains("unknown key 'listen-port'"), "{e}");
        let e = flags_from("listen = ", Path::new("c.toml"), "init").unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = expand(os(&["gantry", "run", "--config", "/nonexistent/c.toml"])).unwrap_err();
        assert!(
            e.contains("cannot read the config file /nonexistent/c.toml"),
            "{e}"
        );
        // Other verbs never read it, whatever words follow.
        for other in [
            &["gantry", "status", "--config", "/nonexistent/c.toml"][..],
            &["gantry", "logs", "run", "--config", "/nonexistent/c.toml"][..],
            &["gantry", "-o", "json", "get", "nodes"][..],
        ] {
            assert_eq!(expand(os(other)).unwrap(), os(other));
        }
        let e = expand(os(&[
            "gantry",
            "--server",
            "x:1",
            "run",
            "--config=/nonexistent/c.toml",
        ]))
        .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
