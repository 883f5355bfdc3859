//! Management request paths: `$namespaceinfo`, `$Resources/{queues,topics}`, `{path}`,
//! `{topic}/Subscriptions[/{sub}[/Rules[/{rule}]]]` (segment names case-insensitive), split
//! into a [`Target`] once percent-decoded; and the names new entities may have.

use super::MAX_CHILD_NAME;
use crate::http::common::{HttpError, bad, percent_decode};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    NamespaceInfo,
    /// `$Resources/Queues` or `$Resources/Topics`.
    List {
        topics: bool,
    },
    /// A queue or a topic.
    Entity(String),
    Subscriptions(String),
    Subscription(String, String),
    Rules(String, String),
    Rule(String, String, String),
}

impl Target {
    /// The path tokens are checked against (as the SDKs sign it).
    pub fn auth_path(&self) -> String {
        match self {
            Target::NamespaceInfo => "$namespaceinfo".into(),
            Target::List { topics: false } => "$Resources/Queues".into(),
            Target::List { topics: true } => "$Resources/Topics".into(),
            Target::Entity(p) => p.clone(),
            Target::Subscriptions(t) => format!("{t}/Subscriptions"),
            Target::Subscription(t, s) => format!("{t}/Subscriptions/{s}"),
            Target::Rules(t, s) => format!("{t}/Subscriptions/{s}/Rules"),
            Target::Rule(t, s, r) => format!("{t}/Subscriptions/{s}/Rules/{r}"),
        }
    }
}

fn check_path(path: &str) -> Result<(), HttpError> {
    keybus_core::validate_entity_name(path).map_err(|m| bad(format!("invalid path: {m}")))
}

pub(super) fn check_child(kind: &str, name: &str, allow_default: bool) -> Result<(), HttpError> {
    if allow_default && name.eq_ignore_ascii_case("$Default") {
        return Ok(());
    }
    if name.is_empty() || name.len() > MAX_CHILD_NAME {
        return Err(bad(format!(
            "the {kind} name '{name}' must be 1 to {MAX_CHILD_NAME} characters"
        )));
    }
    check_path(name)
}

fn is(seg: &str, name: &str) -> bool {
    seg.eq_ignore_ascii_case(name)
}

/// Split a request path (as received, percent-encoded) into its target.
pub fn parse_target(raw: &str) -> Result<Target, HttpError> {
    let path = percent_decode(raw.strip_prefix('/').unwrap_or(raw))?;
    if path.is_empty() {
        return Err(HttpError::NotFound("no entity path given".into()));
    }
    if is(&path, "$namespaceinfo") {
        return Ok(Target::NamespaceInfo);
    }
    if let Some((first, rest)) = path.split_once('/')
        && is(first, "$Resources")
    {
        return match rest {
            r if is(r, "queues") => Ok(Target::List { topics: false }),
            r if is(r, "topics") => Ok(Target::List { topics: true }),
            _ => Err(HttpError::NotFound(format!(
                "unknown resource collection '{rest}': use $Resources/Queues or $Resources/Topics"
            ))),
        };
    }
    // The JavaScript client lists with a trailing slash (`{topic}/Subscriptions/`).
    let (path, trailing) = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => (p.to_string(), true),
        _ => (path, false),
    };
    let segs: Vec<&str> = path.split('/').collect();
    let n = segs.len();
    let join = |k: usize| segs.get(..k).map(|s| s.join("/")).unwrap_or_default();
    let seg = |k: usize| segs.get(k).copied().unwrap_or_default().to_string();
    let at = |k: usize, name: &str| segs.get(k).is_some_and(|s| is(s, name));
    let target = if n >= 5 && at(n - 2, "Rules") && at(n - 4, "Subscriptions") {
        Target::Rule(join(n - 4), seg(n - 3), seg(n - 1))
    } else if n >= 4 && at(n - 1, "Rules") && at(n - 3, "Subscriptions") {
        Target::Rules(join(n - 3), seg(n - 2))
    } else if n >= 3 && at(n - 2, "Subscriptions") {
        Target::Subscription(join(n - 2), seg(n - 1))
    } else if n >= 2 && at(n - 1, "Subscriptions") {
        Target::Subscriptions(join(n - 1))
    } else {
        Target::Entity(path.clone())
    };
    if trailing && !matches!(target, Target::Subscriptions(_) | Target::Rules(..)) {
        return Err(bad(format!("invalid path: '{path}/' ends with a slash")));
    }
    match &target {
        Target::Entity(p) | Target::Subscriptions(p) => check_path(p)?,
        Target::Subscription(t, s) | Target::Rules(t, s) => {
            check_path(t)?;
            check_child("subscription", s, false)?;
        }
        Target::Rule(t, s, r) => {
            check_path(t)?;
            check_child("subscription", s, false)?;
            check_child("rule", r, true)?;
        }
        Target::NamespaceInfo | Target::List { .. } => {}
    }
    Ok(target)
}

/// Names of entities created through the API: letters, digits, `.`, `-`, `_` (and `/` in
/// queue and topic paths), as Service Bus allows.
pub fn check_new_name(name: &str, slashes: bool) -> Result<(), HttpError> {
    let ok = name.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (slashes && c == '/')
    });
    if slashes
        && name
            .split('/')
            .any(|seg| is(seg, "Subscriptions") || is(seg, "Rules"))
    {
        return Err(bad(format!(
            "the path '{name}' may not have a segment named Subscriptions or Rules"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "the name '{name}' may contain only letters, digits, '.', '-', '_'{}",
            if slashes { " and '/'" } else { "" }
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn targets() {
        let t = |p: &str| parse_target(p).unwrap();
        assert_eq!(t("/$namespaceinfo"), Target::NamespaceInfo);
        assert_eq!(t("/$Resources/queues"), Target::List { topics: false });
        assert_eq!(t("/$resources/Topics"), Target::List { topics: true });
        assert_eq!(t("/orders"), Target::Entity("orders".into()));
        // Python percent-encodes slashes in names; JavaScript sends them as they are.
        assert_eq!(t("/q%2Fa"), Target::Entity("q/a".into()));
        assert_eq!(t("/q/a"), Target::Entity("q/a".into()));
        assert_eq!(t("/t/subscriptions"), Target::Subscriptions("t".into()));
        assert_eq!(t("/t/Subscriptions/"), Target::Subscriptions("t".into()));
        assert_eq!(
            t("/t/Subscriptions/s/Rules/"),
            Target::Rules("t".into(), "s".into())
        );
        assert_eq!(
            t("/a%2Fb/Subscriptions/s"),
            Target::Subscription("a/b".into(), "s".into())
        );
        assert_eq!(
            t("/t/subscriptions/s/rules"),
            Target::Rules("t".into(), "s".into())
        );
        assert_eq!(
            t("/t/Subscriptions/s/Rules/$Default"),
            Target::Rule("t".into(), "s".into(), "$Default".into())
        );
        assert_eq!(
            Target::Rule("t".into(), "s".into(), "r".into()).auth_path(),
            "t/Subscriptions/s/Rules/r"
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "/..",
            "/a/../b",
            "/a%2F..%2Fb",
            "/%2E%2E",
            "/a//b",
            "/%2Fa",
            "/a%2F",
            "/a/",
            "/t/Subscriptions/s/",
            "/a%5Cb",
            "/a@b",
            "/a%3Fb",
            "/a%23b",
            "/a*",
            "/$x",
            "/a/$b",
            "/a%zz",
            "/a%",
            "/a%C3",
            "/a%00b",
            "/t/Subscriptions/..",
            "/t/Subscriptions/$x",
            "/t/Subscriptions/s/Rules/$x",
            "/t/Subscriptions/s/Rules/..",
        ] {
            assert!(
                matches!(parse_target(p), Err(HttpError::BadRequest(_))),
                "{p}: {:?}",
                parse_target(p)
            );
        }
        let long = format!("/t/Subscriptions/{}", "s".repeat(51));
        assert!(matches!(parse_target(&long), Err(HttpError::BadRequest(_))));
        assert!(matches!(parse_target("/"), Err(HttpError::NotFound(_))));
        assert!(matches!(
            parse_target("/$Resources/other"),
            Err(HttpError::NotFound(_))
        ));
        assert!(check_new_name("a-b.c_d/e", true).is_ok());
        assert!(check_new_name("a/b", false).is_err());
        assert!(check_new_name("a%2Fb", true).is_err());
        assert!(check_new_name("a b", true).is_err());
        assert!(check_new_name("t/subscriptions/x", true).is_err());
    }
}
