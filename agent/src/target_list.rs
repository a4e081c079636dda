//! The configured target list: from `--target` flags (or `PATHPULSE_TARGETS`) or from the
//! file's `targets`, each entry a SPEC with options (see [`crate::options`]), with the
//! problems of every entry named by key (`targets[2].dscp`).

use crate::options::{build, expand};
use crate::target::TargetSpec;

/// (key, value) or (key, reason) pairs.
type Pairs = Vec<(String, String)>;

/// The targets of a configuration: from the flags (or `PATHPULSE_TARGETS`) when given,
/// else from the file. On the command line a `KEY=VALUE` piece belongs to the SPEC before
/// it (clap splits `--target icmp:10.0.0.2,dscp=46` at the comma). In the file an entry
/// is a SPEC string or a table with `spec` and option keys. Returns the targets, how
/// many entries were written, and the problems as (key, reason).
pub fn resolve(
    flags: &[String],
    file: Option<Vec<toml::Value>>,
) -> (Vec<TargetSpec>, usize, Vec<(String, String)>) {
    let mut errs: Vec<(String, String)> = Vec::new();
    // (entry, SPEC, option pairs)
    let mut entries: Vec<(String, String, Pairs)> = Vec::new();
    if !flags.is_empty() {
        for piece in flags {
            for part in piece.split(',') {
                // A SPEC never contains `=`.
                let is_option = part.contains('=');
                match (is_option, entries.last_mut()) {
                    (true, Some((_, _, pairs))) => {
                        let (k, v) = part.split_once('=').unwrap_or((part, ""));
                        pairs.push((k.trim().to_string(), v.to_string()));
                    }
                    (true, None) => errs.push((
                        "targets[0]".into(),
                        format!("option `{part}` comes before any SPEC"),
                    )),
                    (false, _) => {
                        let key = format!("targets[{}]", entries.len());
                        entries.push((key, part.to_string(), Vec::new()));
                    }
                }
            }
        }
    } else {
        for (i, v) in file.unwrap_or_default().into_iter().enumerate() {
            let key = format!("targets[{i}]");
            match v {
                toml::Value::String(s) => entries.push((key, s, Vec::new())),
                toml::Value::Table(t) => {
                    let mut spec = None;
                    let mut pairs = Vec::new();
                    for (k, v) in t {
                        let text = match v {
                            toml::Value::String(s) => s,
                            toml::Value::Integer(n) => n.to_string(),
                            toml::Value::Boolean(b) => b.to_string(),
                            other => {
                                errs.push((
                                    format!("{key}.{k}"),
                                    format!("`{other}` is not a string, a number or a boolean"),
                                ));
                                continue;
                            }
                        };
                        if k == "spec" {
                            spec = Some(text);
                        } else {
                            pairs.push((k, text));
                        }
                    }
                    match spec {
                        Some(s) => entries.push((key, s, pairs)),
                        None => errs.push((
                            format!("{key}.spec"),
                            "a target table needs `spec = \"SPEC\"`".into(),
                        )),
                    }
                }
                other => errs.push((
                    key,
                    format!("`{other}` is neither a SPEC string nor a table with `spec`"),
                )),
            }
        }
    }
    let written = entries.len();
    let mut targets: Vec<TargetSpec> = Vec::new();
    for (key, spec, pairs) in entries {
        match build(&spec, &pairs) {
            Ok(t) => {
                for t in expand(t) {
                    if targets
                        .iter()
                        .any(|o| o.label == t.label && o.probe == t.probe)
                    {
                        errs.push((
                            key.clone(),
                            format!(
                                "`{spec}` is listed twice (same probe and `dst` label `{}`; give one a `label=`)",
                                t.label
                            ),
                        ));
                    } else {
                        targets.push(t);
                    }
                }
            }
            Err(es) => {
                for (k, e) in es {
                    let k = if k.is_empty() {
                        key.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    errs.push((k, e));
                }
            }
        }
    }
    // The running configuration keeps the list for the agent's life: no growth slack
    // (about 1 MB of it at 10,000 targets).
    targets.shrink_to_fit();
    (targets, written, errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_tables_give_the_same_targets_and_keys_in_errors() {
        let flags = vec![
            "icmp:10.0.0.2".to_string(),
            "dscp=46".to_string(),
            "size=100".into(),
            "10.0.0.3".into(),
        ];
        let (t, n, e) = resolve(&flags, None);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            (n, t[0].options.dscp, t[0].options.size, t[1].options.dscp),
            (2, Some(46), Some(100), None)
        );
        let file: toml::Table = toml::from_str(
            "targets = [\"10.0.0.3\", { spec = \"icmp:10.0.0.2\", dscp = 46, size = 100 }, { spec = \"stamp:10.0.0.4\", ttl = 0 }, { dscp = 1 }]",
        )
        .expect("toml");
        let entries = file["targets"].as_array().expect("array").clone();
        let (t, n, e) = resolve(&[], Some(entries));
        assert_eq!((n, t.len()), (3, 2));
        assert_eq!(t[1].options.dscp, Some(46));
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["targets[3].spec", "targets[2].ttl"], "{e:?}");
        let (_, _, e) = resolve(&["dscp=4".to_string()], None);
        assert_eq!(e[0].0, "targets[0]");
        let (_, _, e) = resolve(
            &["10.0.0.2".to_string(), "10.0.0.2,dscp=46".to_string()],
            None,
        );
        assert!(e[0].1.contains("listed twice"), "{e:?}");
    }
}
