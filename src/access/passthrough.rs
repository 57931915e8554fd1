//! Which engine API calls pass through to an engine without the admin token.
//!
//! Passthrough is opt-in per prefix (`acestream.passthrough`). By default only the read-only
//! service calls `get_version` and `get_status` are open; everything else (`/webui/*`,
//! `/server/api*`, `/ace/stat/*`, ...) needs the admin token, and `/ace/cmd/*` (engine control:
//! `method=stop` ends a viewer's session) always does. A path with a `..` segment is refused
//! before any of that, and the client's `Authorization` and `Cookie` never reach an engine.

use crate::error::EdgeError;

/// Engine control: never open without the admin token, whatever `passthrough` lists.
const CONTROL_PREFIX: &str = "/ace/cmd/";

/// One opened call: a path prefix, and optionally the one `method=` query value it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughRule {
    /// Requests whose path starts with this.
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

    fn matches(&self, path: &str, method: Option<&str>) -> bool {
        path.starts_with(&self.prefix) && self.method.as_deref().is_none_or(|m| Some(m) == method)
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

/// Where a request stands with the admin token, for a path no rule opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// No `admin_token` is configured: only the rules open engine calls.
    NoToken,
    /// A token is configured and the request carries it.
    Authorized,
    /// A token is configured and the request does not carry it.
    Unauthorized,
}

/// Decides a passthrough request: `Ok` to forward it, else the error to answer.
pub fn check(
    rules: &[PassthroughRule],
    path: &str,
    query: Option<&str>,
    admin: Admin,
) -> Result<(), EdgeError> {
    let decoded: String = form_urlencoded::parse(path.as_bytes())
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    if path
        .split('/')
        .chain(decoded.split('/'))
        .any(|seg| seg == "..")
    {
        return Err(EdgeError::BadRequest(
            "a path with '..' is not passed on".into(),
        ));
    }
    let method = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "method")
            .map(|(_, v)| v.into_owned())
    });
    let control = path.starts_with(CONTROL_PREFIX);
    if !control && rules.iter().any(|r| r.matches(path, method.as_deref())) {
        return Ok(());
    }
    match admin {
        Admin::Authorized => Ok(()),
        Admin::Unauthorized => Err(EdgeError::Unauthorized),
        Admin::NoToken => Err(EdgeError::Forbidden(format!(
            "{path} is not passed to the engines: list it in acestream.passthrough, or set acestream.admin_token and send it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<PassthroughRule> {
        default_rules()
            .iter()
            .map(|r| PassthroughRule::parse(r).unwrap())
            .collect()
    }

    #[test]
    fn only_opened_calls_pass_without_a_token() {
        let r = rules();
        let svc = "/webui/api/service";
        assert!(check(&r, svc, Some("method=get_version"), Admin::NoToken).is_ok());
        let api = "/server/api";
        assert!(check(
            &r,
            api,
            Some("api_version=3&method=get_status"),
            Admin::Unauthorized
        )
        .is_ok());
        assert_eq!(
            check(&r, svc, Some("method=shutdown"), Admin::Unauthorized),
            Err(EdgeError::Unauthorized)
        );
        assert!(matches!(
            check(&r, "/server/api", None, Admin::NoToken),
            Err(EdgeError::Forbidden(_))
        ));
        assert!(
            check(&r, "/server/api", None, Admin::Authorized).is_ok(),
            "with the token"
        );
        // Engine control is never opened, and `..` never passes.
        let open_all = PassthroughRule::parse("/ace/").unwrap_err();
        assert!(open_all.contains("engine control"));
        assert_eq!(
            check(&r, "/ace/cmd/x/y", Some("method=stop"), Admin::Unauthorized),
            Err(EdgeError::Unauthorized)
        );
        for p in ["/webui/../ace/cmd/x", "/webui/%2e%2e/x", "/webui/%2E%2E/x"] {
            assert!(
                matches!(
                    check(&r, p, None, Admin::Authorized),
                    Err(EdgeError::BadRequest(_))
                ),
                "{p}"
            );
        }
        assert!(PassthroughRule::parse("webui").is_err());
        assert!(PassthroughRule::parse("/x?y=1").is_err());
        assert_eq!(
            PassthroughRule::parse("/ace/stat/").unwrap().method,
            None,
            "a prefix opens everything under it"
        );
    }
}
