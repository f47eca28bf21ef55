//! The gateway's top-level modules form layers: no import circle between them, and the leaves
//! stay leaves. Reads `src/` as text: every `crate::<module>` reference outside test code is an
//! edge (doc links count too: a doc that needs another module is a dependency worth seeing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without its unit tests: `tests.rs` files, `tests/` folders and the
/// `#[cfg(test)] mod tests { .. }` that closes a file.
fn production_code(relative: &Path, text: &str) -> Option<String> {
    if relative
        .iter()
        .any(|part| part == "tests" || part == "tests.rs")
    {
        return None;
    }
    let end = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
    Some(text[..end].to_owned())
}

fn identifier_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Modules named by `crate::name` and by `use crate::{a, b::c}` groups.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find("};").unwrap_or(group.len())];
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        out.insert(identifier_at(&group[j..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(identifier_at(rest).to_owned());
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() || (name != "lib" && name != "main") {
            modules.insert(name);
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap().to_owned();
        let top = relative
            .iter()
            .next()
            .map(|p| {
                Path::new(p)
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap();
        if !modules.contains(&top) {
            continue;
        }
        let Some(text) = production_code(&relative, &std::fs::read_to_string(&file).unwrap())
        else {
            continue;
        };
        for target in referenced(&text) {
            if target != top && modules.contains(&target) {
                graph
                    .get_mut(&top)
                    .unwrap()
                    .entry(target)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    graph
}

/// A circle through `from`, if there is one: the modules on it, `from` first.
fn circle(graph: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &Graph,
        goal: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph[at].keys() {
            if next == goal {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, goal, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_two_top_level_modules_import_each_other_through_any_circle() {
    let graph = graph();
    let mut found = Vec::new();
    for module in graph.keys() {
        if let Some(path) = circle(&graph, module) {
            let steps: Vec<String> = path
                .iter()
                .zip(path.iter().cycle().skip(1))
                .map(|(a, b)| {
                    format!(
                        "{a} -> {b} ({})",
                        graph[a][b].iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            found.push(steps.join("\n  "));
        }
    }
    assert!(
        found.is_empty(),
        "import circles:\n  {}",
        found.join("\n\n  ")
    );
}

#[test]
fn the_leaves_import_only_what_they_may() {
    let graph = graph();
    let allowed: [(&str, &[&str]); 6] = [
        ("error", &[]),
        ("store", &["error"]),
        ("metrics", &["error"]),
        ("message", &["clock"]),
        ("devices", &["error"]),
        (
            "coldchain",
            &["clock", "devices", "error", "message", "store"],
        ),
    ];
    for (module, may) in allowed {
        let imports: Vec<&String> = graph[module]
            .keys()
            .filter(|m| !may.contains(&m.as_str()))
            .collect();
        assert!(
            imports.is_empty(),
            "{module} imports {imports:?}: {:?}",
            imports
                .iter()
                .map(|m| &graph[module][*m])
                .collect::<Vec<_>>()
        );
    }
}

/// Each component takes its own section (its config type lives with it); only the modules that
/// assemble the whole gateway see the whole `Config`.
#[test]
fn only_the_assembling_modules_import_config() {
    let graph = graph();
    let assembling = ["admin", "cli", "config", "daemon", "demo"];
    let importers: Vec<(&String, &BTreeSet<String>)> = graph
        .iter()
        .filter(|(module, _)| !assembling.contains(&module.as_str()))
        .filter_map(|(module, edges)| Some((module, edges.get("config")?)))
        .collect();
    assert!(
        importers.is_empty(),
        "components importing config: {importers:?}"
    );
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut graph: Graph = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph
            .entry(a.to_owned())
            .or_default()
            .entry(b.to_owned())
            .or_default();
        graph.entry(b.to_owned()).or_default();
    }
    assert_eq!(circle(&graph, "a").unwrap(), ["a", "b", "c"]);
    assert_eq!(circle(&graph, "d"), None);
    assert_eq!(
        referenced("use crate::{alerts::{self, X}, store::Store};\nlet x = crate::metrics::f();"),
        ["alerts", "metrics", "store"].map(str::to_owned).into()
    );
}
