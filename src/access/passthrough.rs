//! Which engine API calls pass through to an engine without the admin token.
//!
//! Passthrough is opt-in per prefix (`acestream.passthrough`). By default only the read-only
//! service calls `get_version` and `get_status` are open; everything else (`/webui/*`,
//! `/server/api*`, `/ace/stat/*`, ...) needs the admin token, and `/ace/cmd/*` (engine control:
//! `method=stop` ends a viewer's session) always does. A path with a `..` segment is refused
//! before any of that, and the client's `Authorization` and `Cookie` never reach an engine.

pub use crate::config::passthrough::{default_rules, PassthroughRule, CONTROL_PREFIX};
use crate::error::EdgeError;

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
    let params: Vec<(String, String)> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // A parameter given twice (`?method=get_version&method=stop`) opens nothing: the engine may
    // read the other one.
    let single = params
        .iter()
        .enumerate()
        .all(|(i, (k, _))| params[..i].iter().all(|(seen, _)| seen != k));
    let method = params
        .iter()
        .find(|(k, _)| k == "method")
        .map(|(_, v)| v.as_str());
    let control = path.starts_with(CONTROL_PREFIX);
    if !control && single && rules.iter().any(|r| r.matches(path, method)) {
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

    /// A rule opens its exact path (a method rule) or whole segments under it, never a longer
    /// name; a parameter given twice opens nothing (issue 26).
    #[test]
    fn exact_paths_and_single_parameters() {
        let r = rules();
        let no = |path: &str, query: &str| check(&r, path, Some(query), Admin::NoToken).is_err();
        assert!(no("/webui/api/serviceX", "method=get_version"));
        assert!(no("/webui/api/serviceX/y", "method=get_version"));
        assert!(no("/webui/api/service/more", "method=get_version"));
        assert!(no("/webui/api/service", "method=get_version&method=stop"));
        assert!(no("/webui/api/service", "method=stop&method=get_version"));
        assert!(no("/server/api", "method=get_status&x=1&x=2"));
        assert!(!no("/webui/api/service", "method=get_version&format=json"));
        let dir = vec![PassthroughRule::parse("/ace/stat").unwrap()];
        let open = |path: &str| check(&dir, path, None, Admin::NoToken).is_ok();
        assert!(open("/ace/stat"));
        assert!(open("/ace/stat/abc/def"));
        assert!(!open("/ace/statistics"));
        let slash = vec![PassthroughRule::parse("/ace/stat/").unwrap()];
        assert!(check(&slash, "/ace/stat/x", None, Admin::NoToken).is_ok());
    }
}
