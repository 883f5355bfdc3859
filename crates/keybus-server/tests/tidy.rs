//! Tidy checks, in the spirit of rust-analyzer's `tidy`: the server's parts keep their
//! boundaries and the crates their dependency direction (ARCHITECTURE.md, issue 11).
//!
//! - `runtime` uses neither `amqp` nor the HTTP side (`http*`, `atom`, `rest`);
//! - the HTTP side does not use `amqp`;
//! - no two top-level modules of the server import each other, nor any two files of `amqp`,
//!   and the ATOM and REST parts of `http` never use each other;
//! - no crate gains a dependency its row of the code map forbids.
//!
//! Imports are read as `crate::<module>` paths (and `super::<file>` inside `amqp/`) in the
//! code, comments stripped. The `KNOWN_*` lists would hold allowed exceptions; they are
//! empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module pairs (`from`, `to`) allowed although a rule forbids them, each with its reason.
/// Empty: keep it so.
const KNOWN_MODULE_EDGES: &[(&str, &str)] = &[];

/// Crate dependencies (`crate`, `dependency`) allowed although forbidden. Empty: keep it so.
const KNOWN_CRATE_DEPENDENCIES: &[(&str, &str)] = &[];

/// Which crates each crate must not depend on (its row of the code map).
const FORBIDDEN_DEPENDENCIES: &[(&str, &[&str])] = &[
    ("keybus-amqp", &["tokio", "keybus-*"]),
    ("keybus-core", &["tokio", "keybus-store", "keybus-server"]),
    ("keybus-store", &["keybus-server"]),
    (
        "keybus-cli",
        &["keybus-server", "keybus-core", "keybus-store"],
    ),
    (
        "keybus-client",
        &["keybus-server", "keybus-core", "keybus-store"],
    ),
    (
        "keybus-connect",
        &[
            "keybus-server",
            "keybus-core",
            "keybus-store",
            "keybus-auth",
        ],
    ),
    (
        "keybus-auth",
        &[
            "keybus-server",
            "axum",
            "hyper",
            "keybus-amqp",
            "keybus-core",
        ],
    ),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without `//` comments (doc comments name modules in prose).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every identifier that follows `prefix` (`crate::` → the modules the code names),
/// including those inside `use crate::{a, b::c}` groups.
fn named_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        // `keybus_crate::x` is not `crate::x`.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in split_top_level(inner) {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// `a, b::{c, d}, e` → `a`, `b::{c, d}`, `e`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The top-level module a source file belongs to (`None` for `lib.rs`, which wires all).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| canonical(name))
}

fn canonical(module: &str) -> String {
    module.to_string()
}

fn is_http(module: &str) -> bool {
    module.starts_with("http") || module == "atom" || module == "rest"
}

/// Top-level module → the top-level modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(from) = top_module(&src, &f) else {
            continue;
        };
        let deps = named_after(&code(&f), "crate::");
        let entry = graph.entry(from.clone()).or_default();
        entry.extend(deps.iter().map(|d| canonical(d)).filter(|d| *d != from));
    }
    graph
}

fn known(from: &str, to: &str) -> bool {
    KNOWN_MODULE_EDGES.contains(&(from, to))
}

/// Pairs of nodes that name each other, minus known ones.
fn mutual(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (a, deps) in graph {
        for b in deps {
            if a < b && graph.get(b).is_some_and(|d| d.contains(a)) && !(known(a, b) || known(b, a))
            {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}

#[test]
fn runtime_uses_neither_amqp_nor_http() {
    let graph = module_graph();
    let bad: Vec<_> = graph
        .get("runtime")
        .into_iter()
        .flatten()
        .filter(|m| (*m == "amqp" || is_http(m)) && !known("runtime", m))
        .collect();
    assert!(bad.is_empty(), "runtime uses {bad:?}");
}

#[test]
fn http_does_not_use_amqp() {
    let graph = module_graph();
    let bad: Vec<_> = graph
        .iter()
        .filter(|(m, deps)| is_http(m) && deps.contains("amqp") && !known(m, "amqp"))
        .map(|(m, _)| m)
        .collect();
    assert!(bad.is_empty(), "{bad:?} use amqp");
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let graph = module_graph();
    let cycles = mutual(&graph);
    assert!(cycles.is_empty(), "modules import each other: {cycles:?}");
}

#[test]
fn atom_and_rest_never_use_each_other() {
    let http = src_dir().join("http");
    for (part, other) in [("atom", "rest"), ("rest", "atom")] {
        let mut files = Vec::new();
        rust_files(&http.join(part), &mut files);
        assert!(!files.is_empty(), "http/{part}/ has files");
        for f in files {
            let c = code(&f);
            let named = named_after(&c, "crate::http::");
            assert!(
                !named.contains(other) && !c.contains(&format!("super::{other}")),
                "{} uses http::{other}",
                f.display()
            );
        }
    }
}

#[test]
fn no_two_amqp_files_import_each_other() {
    let dir = src_dir().join("amqp");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_stem()?.to_str().map(str::to_string))
        .collect();
    assert!(names.contains("state"), "amqp/state.rs holds the data");
    for f in &files {
        let Some(stem) = f.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        // mod.rs declares and re-exports its files: that is no dependency.
        if stem == "mod" {
            continue;
        }
        let c = code(f);
        let mut deps = named_after(&c, "super::");
        deps.extend(
            named_after(&c, "crate::amqp::")
                .into_iter()
                .filter(|d| names.contains(d)),
        );
        deps.retain(|d| d != stem && names.contains(d));
        graph.insert(stem.to_string(), deps);
    }
    // Which files depend on `state` is the design; `state` depends on none of the behaviour.
    let behaviour: Vec<_> = graph
        .get("state")
        .into_iter()
        .flatten()
        .filter(|d| !["errors", "events"].contains(&d.as_str()))
        .collect();
    assert!(behaviour.is_empty(), "amqp/state.rs uses {behaviour:?}");
    let cycles = mutual(&graph);
    assert!(
        cycles.is_empty(),
        "amqp files import each other: {cycles:?}"
    );
}

#[test]
fn the_parser_reads_paths_and_groups() {
    let c = "use crate::{amqp, runtime::{Broker, Entity}};\nlet x = crate::http::serve(); \
             keybus_crate::nope;";
    let got = named_after(c, "crate::");
    let want: BTreeSet<String> = ["amqp", "runtime", "http"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}

/// Dependency names of `[dependencies]` (and target-specific ones) of a crate's Cargo.toml.
fn dependencies(manifest: &Path) -> Option<BTreeSet<String>> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let mut out = BTreeSet::new();
    let mut add = |t: Option<&toml::Value>| {
        if let Some(deps) = t.and_then(toml::Value::as_table) {
            out.extend(deps.keys().cloned());
        }
    };
    add(table.get("dependencies"));
    if let Some(targets) = table.get("target").and_then(toml::Value::as_table) {
        for t in targets.values() {
            add(t.get("dependencies"));
        }
    }
    Some(out)
}

#[test]
fn no_crate_gains_a_forbidden_dependency() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut bad = Vec::new();
    for (name, forbidden) in FORBIDDEN_DEPENDENCIES {
        // A crate that does not exist (yet) on this branch has nothing to check.
        let Some(deps) = dependencies(&crates.join(name).join("Cargo.toml")) else {
            continue;
        };
        for dep in &deps {
            let hit = forbidden.iter().any(|f| match f.strip_suffix('*') {
                Some(prefix) => dep.starts_with(prefix),
                None => dep == f,
            });
            if hit && !KNOWN_CRATE_DEPENDENCIES.contains(&(name, dep.as_str())) {
                bad.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(bad.is_empty(), "forbidden dependencies: {bad:?}");
}

#[test]
fn the_known_exceptions_are_still_needed() {
    // An exception that no longer happens should leave the list.
    let graph = module_graph();
    let stale: Vec<_> = KNOWN_MODULE_EDGES
        .iter()
        .filter(|(a, b)| !graph.get(*a).is_some_and(|d| d.contains(*b)))
        .collect();
    assert!(stale.is_empty(), "no longer needed: {stale:?}");
}
