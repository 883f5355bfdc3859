//! The one definition of "which entity does this path belong to" and "does a scope cover a
//! path", used by SAS rules and tokens, policy grants and denies, CBS bindings, the
//! management (ATOM) API and the REST messaging API.
//!
//! A path is an entity name followed by a recognised suffix:
//!
//! ```text
//! path   := entity [ "/subscriptions" [ "/" sub [ "/rules" [ "/" rule ] ] ] ] [ tail ]
//! tail   := ( "/" "$"segment )*          ($deadletterqueue, $transfer, $management, ...)
//! ```
//!
//! Entity names may contain `/`, but never a segment starting with `$` and never a segment
//! named `subscriptions` after the first ([`check_entity_name`]), so
//! the split is unique without looking at the broker's entity set: the entity ends before the
//! first `$` segment or the first `subscriptions` segment that is not the first segment.
//!
//! A scope covers a path iff the scope is the namespace (`""`), or both resolve to the same
//! entity and the scope's segments are a prefix of the path's. `orders/archive` is another
//! entity than `orders`, so a scope `orders` never covers it; a topic scope covers its
//! subscriptions and their rules; a subscription scope covers its own sub-queues and rules.
//! Comparisons ignore ASCII case. Nothing here decodes `%XX`: callers pass decoded paths.

/// A path split at its entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The queue or topic (lower case).
    pub entity: String,
    /// The segments after the entity (lower case): `subscriptions/s/$deadletterqueue`, ...
    pub rest: Vec<String>,
}

impl Resolved {
    /// The subscription the path names, if any.
    pub fn subscription(&self) -> Option<&str> {
        match self.rest.as_slice() {
            [s, name, ..] if s == "subscriptions" && !name.starts_with('$') => Some(name),
            _ => None,
        }
    }
}

fn is_dollar(seg: &str) -> bool {
    seg.starts_with('$')
}

/// Split a host-less path into its entity and recognised suffix; `None` if it has no entity
/// (empty, empty segments) or an unrecognised suffix (`q/$deadletterqueue/x`,
/// `t/subscriptions/s/x`).
pub fn resolve(path: &str) -> Option<Resolved> {
    let path = path.trim_matches('/').to_ascii_lowercase();
    if path.is_empty() {
        return None;
    }
    let segs: Vec<&str> = path.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let end = segs
        .iter()
        .enumerate()
        .position(|(i, s)| is_dollar(s) || (i > 0 && *s == "subscriptions"))
        .unwrap_or(segs.len());
    if end == 0 {
        return None;
    }
    let (entity, rest) = segs.split_at(end);
    // Suffix grammar: [subscriptions [sub [rules [rule]]]] then only `$` segments.
    let mut i = 0;
    if rest.first() == Some(&"subscriptions") {
        i = 1;
        if rest.get(1).is_some_and(|s| !is_dollar(s)) {
            i = 2;
            if rest.get(2) == Some(&"rules") {
                i = 3;
                // Rule names may start with `$` (`$Default`).
                if rest.get(3).is_some() {
                    i = 4;
                }
            }
        }
    }
    let tail = rest.get(i..).unwrap_or_default();
    if !tail.iter().all(|s| is_dollar(s)) {
        return None;
    }
    // A collection (`subscriptions`, `rules`) has no sub-queues.
    if !tail.is_empty() && (i == 1 || i == 3) {
        return None;
    }
    Some(Resolved {
        entity: entity.join("/"),
        rest: rest.iter().map(|s| s.to_string()).collect(),
    })
}

/// Does `scope` (a host-less path, `""` = the namespace) cover `path`?
pub fn covers(scope: &str, path: &str) -> bool {
    let scope = scope.trim_matches('/');
    if scope.is_empty() || scope.eq_ignore_ascii_case(path.trim_matches('/')) {
        // The namespace, or exactly the path (also a namespace-level resource such as
        // `$Resources/queues` or `$namespaceinfo`, which belongs to no entity).
        return true;
    }
    let (Some(s), Some(p)) = (resolve(scope), resolve(path)) else {
        return false;
    };
    s.entity == p.entity && p.rest.starts_with(&s.rest)
}

/// Queue and topic names must keep [`resolve`] unambiguous: no segment after the first may be
/// named `subscriptions` (`$` segments are refused by `keybus_core::validate_entity_name`).
pub fn check_entity_name(name: &str) -> Result<(), String> {
    if name
        .split('/')
        .skip(1)
        .any(|s| s.eq_ignore_ascii_case("subscriptions"))
    {
        return Err(format!(
            "entity name '{name}' may not have a segment named Subscriptions"
        ));
    }
    Ok(())
}

/// The entity a path belongs to (lower case), if it resolves.
pub fn entity_of(path: &str) -> Option<String> {
    resolve(path).map(|r| r.entity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(covers("", "anything/at/all"));
        assert!(covers("$Resources/queues", "$resources/queues"));
        assert!(covers("$namespaceinfo", "$NamespaceInfo"));
        assert!(!covers("$resources/queues", "$resources/topics"));
        assert!(!covers("$resources", "$resources/queues"));
        assert!(covers("orders", "orders"));
        assert!(covers("orders", "Orders"));
        assert!(covers("orders", "orders/$DeadLetterQueue"));
        assert!(covers("orders", "orders/$deadletterqueue/$management"));
        assert!(covers("orders", "orders/$transfer/$deadletterqueue"));
        assert!(covers("orders", "orders/$management"));
        assert!(!covers("orders", "orders/archive"));
        assert!(!covers("orders", "orders/archive/$deadletterqueue"));
        assert!(!covers("orders", "orders/anything"));
        assert!(!covers("orders", "ordersx"));
        assert!(!covers("orders/archive", "orders"));
        assert!(covers("orders/archive", "orders/archive/$deadletterqueue"));
        assert!(covers("t", "t/subscriptions/s"));
        assert!(covers("t", "t/Subscriptions/s/$DeadLetterQueue"));
        assert!(covers("t", "t/subscriptions/s/rules/r"));
        assert!(covers("t", "t/subscriptions"));
        assert!(covers("t", "t/subscriptions/s/rules"));
        assert!(covers(
            "t/subscriptions/s",
            "t/subscriptions/s/rules/$default"
        ));
        assert!(covers(
            "t/subscriptions/s",
            "t/subscriptions/s/$deadletterqueue"
        ));
        assert!(!covers("t/subscriptions/s", "t/subscriptions/s2"));
        assert!(!covers("t/subscriptions/s", "t"));
        assert!(!covers("t/subscriptions/s", "t/subscriptions"));
        assert!(!covers("q/$deadletterqueue", "q"));
        assert!(covers(
            "q/$deadletterqueue",
            "q/$deadletterqueue/$management"
        ));
        assert!(!covers("q", "q/$deadletterqueue/x"));
        assert!(!covers("t", "t/subscriptions/s/x"));
        assert!(!covers("orders", "orders%2farchive"));
        assert!(!covers("orders", ""));
        // A first segment named `subscriptions` is an entity name, not a collection.
        assert!(covers("subscriptions", "subscriptions/subscriptions/s"));
        assert_eq!(entity_of("a/b/Subscriptions/s").as_deref(), Some("a/b"));
        assert_eq!(entity_of("$cbs"), None);
    }

    // ----------------------------------------------------------- reference matcher

    /// Written plainly from the definition: the scope names a node (an entity, one of its
    /// sub-queues, a subscription, ...); the path is inside it when it is the same entity and
    /// continues the scope's node with one of the known ways down.
    fn reference(scope: &str, path: &str) -> bool {
        // A scope names exactly the path it is (a namespace-level resource too).
        if scope
            .trim_matches('/')
            .eq_ignore_ascii_case(path.trim_matches('/'))
        {
            return true;
        }
        let scope = scope.to_lowercase();
        let path = path.to_lowercase();
        let scope = scope.trim_matches('/');
        let path = path.trim_matches('/');
        if scope.is_empty() {
            return true;
        }
        match (split_ref(scope), split_ref(path)) {
            (Some((se, sr)), Some((pe, pr))) => {
                se == pe && pr.len() >= sr.len() && sr.iter().zip(pr.iter()).all(|(a, b)| a == b)
            }
            _ => false,
        }
    }

    fn split_ref(path: &str) -> Option<(String, Vec<String>)> {
        let segs: Vec<String> = path.split('/').map(String::from).collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        let mut entity = Vec::new();
        let mut k = 0;
        while k < segs.len() {
            let s = &segs[k];
            if s.starts_with('$') || (k > 0 && s == "subscriptions") {
                break;
            }
            entity.push(s.clone());
            k += 1;
        }
        if entity.is_empty() {
            return None;
        }
        let rest: Vec<String> = segs[k..].to_vec();
        let all_dollar = |from: usize| rest.iter().skip(from).all(|x| x.starts_with('$'));
        let ok = match rest.first().map(String::as_str) {
            None => true,
            Some(first) if first.starts_with('$') => all_dollar(0),
            Some("subscriptions") => match rest.get(1) {
                // The collection of subscriptions.
                None => true,
                Some(sub) if sub.starts_with('$') => false,
                Some(_) => match rest.get(2).map(String::as_str) {
                    None => true,
                    // The collection of rules, or one rule (`$Default` included).
                    Some("rules") => rest.get(3).is_none() || all_dollar(4),
                    Some(_) => all_dollar(2),
                },
            },
            Some(_) => false,
        };
        ok.then(|| (entity.join("/"), rest))
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("orders".to_string()),
            Just("Orders".to_string()),
            Just("archive".to_string()),
            Just("ord".to_string()),
            Just("ordersx".to_string()),
            Just("$DeadLetterQueue".to_string()),
            Just("$deadletterqueue".to_string()),
            Just("$Transfer".to_string()),
            Just("$management".to_string()),
            Just("Subscriptions".to_string()),
            Just("subscriptions".to_string()),
            Just("Rules".to_string()),
            Just("rules".to_string()),
            Just("s1".to_string()),
            Just("$Default".to_string()),
            Just("orders%2Farchive".to_string()),
            Just("%2F".to_string()),
            Just("".to_string()),
            "[a-zA-Z0-9._%$-]{1,6}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 0..7).prop_map(|v| v.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn covers_equals_reference(scope in path(), p in path()) {
            prop_assert_eq!(covers(&scope, &p), reference(&scope, &p), "scope={} path={}", scope, p);
        }

        /// Scopes built from a path and the paths below it: everything under an entity is
        /// covered by the entity, and another entity sharing its prefix is not.
        #[test]
        fn derived_paths(base in path(), extra in path(), suffix in prop_oneof![
            Just(""), Just("/$DeadLetterQueue"), Just("/Subscriptions/s1"),
            Just("/Subscriptions/s1/$DeadLetterQueue"), Just("/Subscriptions/s1/Rules/r1"),
            Just("/$management"),
        ]) {
            let p = format!("{base}{suffix}");
            prop_assert_eq!(covers(&base, &p), reference(&base, &p));
            let other = format!("{base}/{extra}");
            prop_assert_eq!(covers(&base, &other), reference(&base, &other));
            prop_assert_eq!(covers(&base.to_uppercase(), &p), reference(&base, &p));
        }
    }
}
