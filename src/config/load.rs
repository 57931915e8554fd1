//! Reading the file: YAML into the wire types, every problem with its key path and line.
//!
//! Each serde error is recorded and its key dropped, then the document is read again, so one run
//! reports every problem (up to [`MAX_PROBLEMS`]); Pingora's half is read from the same document.

use super::validate::validate;
use super::wire::FileWire;
use super::LoadedConfig;
use pingora::server::configuration::ServerConf;
use std::fmt;

/// One problem in the configuration, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `acestream.engines[0].port`, or the file path for I/O problems.
    pub path: String,
    /// What is wrong, in words.
    pub reason: String,
    /// The line of the file it is on, when it can be told.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// Every problem found in one configuration file, and what looks like a mistake besides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// At least one problem.
    pub problems: Vec<ConfigProblem>,
    /// Not errors, but probably mistakes (see [`super::LoadedConfig::warnings`]): shown with the
    /// errors, so one run tells everything.
    pub warnings: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                path: path.into(),
                reason: reason.into(),
                line: None,
            }],
            warnings: Vec::new(),
        }
    }
}

/// Most problems collected from one file before giving up (each pass drops the key at fault).
const MAX_PROBLEMS: usize = 64;

/// Validates configuration text (the content of a YAML file), reporting every problem at once,
/// each with its key path, its line and a reason in words.
pub fn load_str(text: &str) -> Result<LoadedConfig, ConfigError> {
    let mut doc: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Null
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let mut err = ConfigError::one("(document)", strip_location(&e.to_string()));
            err.problems[0].line = e.location().map(|l| l.line());
            err
        })?
    };
    if doc.is_null() {
        doc = serde_yaml::Value::Mapping(Default::default());
    }
    let mut problems = Vec::new();
    // Our section: every serde error, one per key. Each pass records the error and drops the
    // key at fault (so its default applies), then tries again.
    let acestream = loop {
        match serde_path_to_error::deserialize::<_, FileWire>(doc.clone()) {
            Ok(file) => break Some(file.acestream),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let key_path = describe_path(&path, &inner);
                let reason = humanize(&key_path, &strip_path_prefix(&inner, &path));
                problems.push(ConfigProblem {
                    line: line_of(text, &key_path),
                    path: key_path.clone(),
                    reason,
                });
                if problems.len() >= MAX_PROBLEMS || !drop_key(&mut doc, &key_path) {
                    break None;
                }
            }
        }
    };
    let acestream = acestream.and_then(|a| match validate(a) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.extend(e.problems.into_iter().map(|mut p| {
                p.line = line_of(text, &p.path);
                p
            }));
            None
        }
    });
    // Pingora's half: its keys at the top level, read from the same document (so an error names
    // the key and line instead of printing the whole file).
    let mut pingora_doc = doc.clone();
    if let serde_yaml::Value::Mapping(m) = &mut pingora_doc {
        m.remove("acestream");
    }
    let server = match serde_path_to_error::deserialize::<_, ServerConf>(pingora_doc) {
        Ok(conf) => Some(conf),
        Err(e) => {
            let path = e.path().to_string();
            problems.push(ConfigProblem {
                line: line_of(text, &path),
                reason: humanize(
                    &path,
                    &strip_path_prefix(&e.into_inner().to_string(), &path),
                ),
                path,
            });
            None
        }
    };
    match (acestream, server) {
        (Some(acestream), Some(server)) if problems.is_empty() => Ok(LoadedConfig {
            warnings: unknown_top_level_keys(&doc, text),
            server,
            acestream,
        }),
        _ => Err(ConfigError {
            problems,
            warnings: unknown_top_level_keys(&doc, text),
        }),
    }
}

/// Top-level keys neither Pingora nor we know: Pingora would ignore them silently.
fn unknown_top_level_keys(doc: &serde_yaml::Value, text: &str) -> Vec<ConfigProblem> {
    let known: Vec<String> = match serde_yaml::to_value(ServerConf::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let serde_yaml::Value::Mapping(m) = doc else {
        return Vec::new();
    };
    m.keys()
        .filter_map(|k| k.as_str())
        .filter(|k| *k != "acestream" && !known.iter().any(|n| n == k))
        .map(|k| {
            let mut names: Vec<&str> = known.iter().map(String::as_str).collect();
            names.push("acestream");
            let reason = match did_you_mean(k, &names) {
                Some(near) => format!(
                    "not a Pingora setting and not `acestream`: ignored; did you mean {near}?"
                ),
                None => "not a Pingora setting and not `acestream`: ignored (a typo?)".into(),
            };
            ConfigProblem {
                path: k.to_string(),
                reason,
                line: line_of(text, k),
            }
        })
        .collect()
}

/// Removes the key a problem is about, at the level right under `acestream` (or the top level),
/// so the next pass gets further. False if there is nothing left to remove.
fn drop_key(doc: &mut serde_yaml::Value, key_path: &str) -> bool {
    let mut parts = key_path.split(['.', '[']);
    let first = parts.next().unwrap_or("");
    let serde_yaml::Value::Mapping(top) = doc else {
        return false;
    };
    if first != "acestream" {
        return top.remove(first).is_some();
    }
    match parts.next() {
        Some(key) => match top.get_mut("acestream") {
            Some(serde_yaml::Value::Mapping(ace)) => ace.remove(key).is_some(),
            _ => top.remove("acestream").is_some(),
        },
        None => top.remove("acestream").is_some(),
    }
}

/// The line (1-based) a key path is on, found by walking its keys down the text: each key is
/// looked for after the line of its parent. `None` when the text does not show it plainly.
fn line_of(text: &str, key_path: &str) -> Option<usize> {
    let keys: Vec<&str> = key_path
        .split('.')
        .map(|k| k.split('[').next().unwrap_or(k))
        .filter(|k| !k.is_empty() && !k.starts_with('('))
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for key in keys {
        let at = (from..lines.len()).find(|&i| {
            let l = lines[i];
            let pattern = format!("{key}:");
            l.match_indices(&pattern).any(|(pos, _)| {
                pos == 0
                    || l[..pos]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-')
            })
        })?;
        found = Some(at + 1);
        from = at;
    }
    found
}

/// serde_yaml's messages end with their own location; the problem carries the line already.
fn strip_location(reason: &str) -> String {
    match reason.find(" at line ") {
        Some(i) => reason[..i].to_string(),
        None => reason.to_string(),
    }
}

/// The known name closest to `key` by edit distance, if it is close enough to be a typo of it
/// (at most a third of its letters, at least 2, apart).
pub(super) fn did_you_mean<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Every key of the `acestream:` section, as its wire form knows them (serde names them all when
/// it meets one it does not know).
pub fn acestream_keys() -> Vec<String> {
    let Err(e) = serde_yaml::from_str::<FileWire>("acestream: {\"\": 0}") else {
        return Vec::new();
    };
    let text = e.to_string();
    let Some((_, list)) = text.split_once("expected one of ") else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// serde's "unknown field `x`, expected one of `a`, `b`, …" as a user wants it: the key it
/// probably meant, not the whole list.
fn unknown_key(reason: &str) -> Option<String> {
    let rest = reason.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    Some(match did_you_mean(key, &expected) {
        Some(near) => format!("unknown key `{key}`: did you mean {near}?"),
        None => format!(
            "unknown key `{key}` (the {} keys of this section are in docs/reference.md under Configuration)",
            expected.len()
        ),
    })
}

/// Serde's words for types, in a user's words.
fn humanize(key_path: &str, reason: &str) -> String {
    let reason = strip_location(reason);
    if let Some(unknown) = unknown_key(&reason) {
        return unknown;
    }
    if key_path.ends_with("port") && reason.contains("u16") {
        return "a port is a whole number 1–65535".to_string() + &got(&reason);
    }
    reason
        .replace("expected u16", "expected a whole number 0–65535")
        .replace("expected u64", "expected a whole number (0 or more)")
        .replace("expected usize", "expected a whole number (0 or more)")
        .replace("expected u32", "expected a whole number (0 or more)")
        .replace("expected a sequence", "expected a list (`[a, b]`)")
        .replace("expected a boolean", "expected true or false")
}

/// ", got X" from a serde "invalid value: integer `X`" message.
fn got(reason: &str) -> String {
    reason
        .split('`')
        .nth(1)
        .map(|v| format!(", got {v}"))
        .unwrap_or_default()
}

/// An unknown key is reported at the path of the key itself, not of its parent map.
fn describe_path(path: &str, reason: &str) -> String {
    let base = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            let key = &rest[..end];
            return if base.is_empty() {
                key.to_string()
            } else if base == key || base.ends_with(&format!(".{key}")) {
                // Some deserializers already put the unknown key in the path.
                base
            } else {
                format!("{base}.{key}")
            };
        }
    }
    if base.is_empty() {
        "(document)".to_string()
    } else {
        base
    }
}

/// serde_yaml already starts its message with the path; we print the path once, in front.
fn strip_path_prefix(reason: &str, path: &str) -> String {
    reason
        .strip_prefix(path)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(reason)
        .to_string()
}
