//! `acestream.passthrough` entries: which engine API calls a rule opens (the check itself is
//! [`crate::access::passthrough::check`]).

/// Engine control: never open without the admin token, whatever `passthrough` lists.
pub const CONTROL_PREFIX: &str = "/ace/cmd/";

/// One opened call: a path prefix, and optionally the one `method=` query value it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughRule {
    /// The path it opens (see [`PassthroughRule::matches`]).
    pub prefix: String,
    /// If set, the query's `method` must be exactly this.
    pub method: Option<String>,
}

impl PassthroughRule {
    /// Parses `/path/prefix` or `/path?method=name`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (prefix, query) = match text.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (text, None),
        };
        if !prefix.starts_with('/') {
            return Err(format!("'{text}' must start with '/'"));
        }
        if prefix.starts_with(CONTROL_PREFIX) || CONTROL_PREFIX.starts_with(prefix) {
            return Err(format!(
                "'{text}' would open engine control ({CONTROL_PREFIX}*), which always needs the admin token"
            ));
        }
        let method = match query {
            None => None,
            Some(q) => match q.strip_prefix("method=") {
                Some(m) if !m.is_empty() && !m.contains('&') => Some(m.to_string()),
                _ => {
                    return Err(format!(
                        "'{text}': the only query allowed is ?method=<name>"
                    ))
                }
            },
        };
        Ok(PassthroughRule {
            prefix: prefix.to_string(),
            method,
        })
    }

    /// Whether a request for `path` with the query's `method` value is opened by this rule. A
    /// rule with a method opens exactly its path; one without opens its path and what lies
    /// under it as whole segments (`/webui/api/service` opens `/webui/api/service/x`, never
    /// `/webui/api/serviceX`).
    pub fn matches(&self, path: &str, method: Option<&str>) -> bool {
        let Some(rest) = path.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        match &self.method {
            Some(m) => rest.is_empty() && Some(m.as_str()) == method,
            None => rest.is_empty() || self.prefix.ends_with('/') || rest.starts_with('/'),
        }
    }
}

/// The default: the two read-only service calls, where engines answer them
/// (`/webui/api/service?method=get_version`, `/server/api?...&method=get_status`).
pub fn default_rules() -> Vec<String> {
    vec![
        "/webui/api/service?method=get_version".into(),
        "/server/api?method=get_status".into(),
    ]
}
