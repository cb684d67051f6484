//! Fuzz target of the binary's configuration loader: a typo, a half-edited file or a stray
//! environment variable must end in an error that names the problem, never a panic, and a
//! configuration it accepts must be one it writes back and reads again unchanged.
//!
//! Run briefly by the test command and for as long as asked by `scripts/fuzz`.

#[path = "../bus/src/fuzz/driver.rs"]
mod driver;

use std::path::Path;

use proptest::prelude::*;

use crate::config::{Config, ENV_PREFIX};
use driver::fuzz;

/// Every key of the configuration, as dotted paths, from the defaults themselves so new keys
/// are fuzzed without a list to keep.
fn keys() -> Vec<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, v, out);
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &toml::Value::try_from(Config::default()).unwrap(),
        &mut out,
    );
    out.push("collector.no_such_key".into());
    out
}

/// TOML values of every type, and the strings the loader parses further (durations, sizes,
/// addresses, enums), valid and not.
fn value() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "0",
        "-1",
        "1",
        "4",
        "1025",
        "18446744073709551615",
        "9223372036854775807",
        "-9223372036854775808",
        "1e400",
        "nan",
        "-inf",
        "0.5",
        "true",
        "false",
        "\"\"",
        "\"5s\"",
        "\"0s\"",
        "\"18446744073709551615s\"",
        "\"99999999999999999999days\"",
        "\"16MiB\"",
        "\"1.5 GiB\"",
        "\"-1 KiB\"",
        "\"1e30 B\"",
        "\"127.0.0.1:0\"",
        "\"[::1]:65536\"",
        "\"embedded\"",
        "\"kinesis\"",
        "\"json\"",
        "\"always\"",
        "\"/tmp/x\"",
        "[]",
        "[1, \"a\"]",
        "{}",
        "{ a = 1 }",
        "1979-05-27T07:32:00Z",
        "\"\\u0000\"",
    ]);
    prop_oneof![
        4 => tokens.prop_map(str::to_string),
        1 => ".{0,12}".prop_map(|s| format!("{s:?}")),
        1 => "[0-9]{1,25}",
        1 => ".{0,8}",
    ]
}

/// Text from a real configuration's keys: dotted keys or tables, repeated, misspelt, mixed
/// with arbitrary text.
fn toml_text(keys: Vec<String>) -> impl Strategy<Value = String> {
    let line = prop_oneof![
        6 => (prop::sample::select(keys.clone()), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(keys).prop_map(|k| format!("[{k}]")),
        1 => ".{0,20}",
    ];
    let structured = prop::collection::vec(line, 0..8).prop_map(|l| l.join("\n"));
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tidewater.example.toml"),
    )
    .unwrap();
    let example: Vec<String> = example.lines().map(str::to_string).collect();
    // The example file with some lines dropped, repeated or given another value.
    let edited = prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, value()), 1..4)
        .prop_map(move |edits| {
            let mut lines = example.clone();
            for (at, op, v) in edits {
                let at = at.index(lines.len());
                match op {
                    0 => {
                        lines.remove(at);
                    }
                    1 => lines.insert(at, lines[at].clone()),
                    _ => {
                        if let Some((k, _)) = lines[at].split_once(" = ") {
                            lines[at] = format!("{k} = {v}");
                        }
                    }
                }
            }
            lines.join("\n")
        });
    prop_oneof![1 => ".{0,200}", 3 => structured, 3 => edited]
}

fn environment(keys: Vec<String>) -> impl Strategy<Value = Vec<(String, String)>> {
    let var = prop_oneof![
        4 => prop::sample::select(keys)
            .prop_map(|k| format!("{ENV_PREFIX}{}", k.to_uppercase().replace('.', "__"))),
        1 => ".{0,10}".prop_map(|k| format!("{ENV_PREFIX}{k}")),
    ];
    let raw = prop_oneof![value(), ".{0,10}"];
    prop::collection::vec((var, raw), 0..3)
}

#[test]
fn config_load_errs_or_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewater.toml");
    let keys = keys();
    let input = (prop::option::of(toml_text(keys.clone())), environment(keys));
    fuzz("config_load_errs_or_round_trips", input, |(text, env)| {
        if let Some(text) = &text {
            std::fs::write(&path, text).unwrap();
        }
        let file = text.as_ref().map(|_| path.as_path());
        let config = match Config::load(file, env) {
            Ok(config) => config,
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        let written = toml::to_string(&config)
            .map_err(|e| TestCaseError::fail(format!("accepted but cannot be written: {e}")))?;
        std::fs::write(&path, &written).unwrap();
        let again = match Config::load(Some(&path), []) {
            Ok(again) => again,
            // TOML integers are i64, and the toml crate writes a larger u64 all the same: a
            // count set that high from the environment is accepted but cannot be written.
            Err(e) if e.to_string().contains("number too large to fit") => return Ok(()),
            Err(e) => {
                let why = format!("written back, then refused: {e:#}");
                return Err(TestCaseError::fail(why));
            }
        };
        prop_assert_eq!(toml::to_string(&again).unwrap(), written);
        Ok(())
    });
}

/// Found by `config_load_errs_or_round_trips`: figment's value parser panicked on an escape
/// after a non-ASCII character, so this variable crashed start-up instead of being refused.
#[test]
fn regression_env_escape_after_non_ascii_is_an_error() {
    let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let e = Config::load(None, env("TIDEWATER_ADMIN__ADDR", "\"¡\\\\\"")).unwrap_err();
    assert!(e.to_string().contains("admin.addr"), "{e}");
    let c = Config::load(None, env("TIDEWATER_LOG__LEVEL", "é\\n")).unwrap();
    assert_eq!(c.log.level, "é\\n");
}
