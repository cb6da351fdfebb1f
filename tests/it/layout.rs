//! The shape of the code itself (ARCHITECTURE.md, "Invariants"): no import
//! circle between files of different folders. A circle inside one folder
//! (a service's files sharing its state) is fine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `src/stt/mod.rs` -> `stt`, `src/lib.rs` -> ``.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Which files each file names through `crate::` or `super::` paths
/// (unit tests left out: they may reach anywhere).
fn imports(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .find_map(|i| modules.get(&path[..i]).cloned())
    };
    let path_re = regex::Regex::new(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)").unwrap();
    let group_re =
        regex::Regex::new(r"use (crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^}]*)\}").unwrap();
    let child_re =
        regex::Regex::new(r"(?m)^\s*(?:pub(?:\([a-z]+\))? )?use ([a-z_][a-z0-9_]*)::").unwrap();
    let mut graph = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        // `super` of `stt/mod.rs` is the crate; of `stt/server.rs`, `stt`.
        let here = module_of(src, file);
        let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
        let base_of = |root: &str| {
            if root == "crate" {
                Vec::new()
            } else {
                parent.clone()
            }
        };
        let mut targets = BTreeSet::new();
        let mut add = |path: Vec<String>| {
            if let Some(t) = resolve(&path)
                && &t != file
            {
                targets.insert(t);
            }
        };
        for m in path_re.captures_iter(&code) {
            let mut path = base_of(&m[1]);
            path.extend(m[2].split("::").skip(1).map(str::to_owned));
            add(path);
        }
        // `use child::x` in a module file: its own submodules.
        for m in child_re.captures_iter(&code) {
            let mut path = here.clone();
            path.push(m[1].to_owned());
            if modules.contains_key(&path) {
                add(path);
            }
        }
        for m in group_re.captures_iter(&code) {
            let mut path = base_of(&m[1]);
            path.extend(m[2].split("::").skip(1).map(str::to_owned));
            for item in m[3].split(',') {
                let first = item.trim().split("::").next().unwrap_or_default();
                if !first.is_empty() && first.chars().next().is_some_and(char::is_lowercase) {
                    let mut p = path.clone();
                    p.push(first.to_owned());
                    add(p);
                }
            }
        }
        graph.insert(file.clone(), targets);
    }
    graph
}

/// The files reachable from `from`.
fn reach(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>, from: &Path) -> BTreeSet<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_path_buf()];
    while let Some(f) = todo.pop() {
        for t in graph.get(&f).into_iter().flatten() {
            if seen.insert(t.clone()) {
                todo.push(t.clone());
            }
        }
    }
    seen
}

#[test]
fn no_import_circle_crosses_a_folder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = imports(&src);
    assert!(graph.len() > 50, "only {} files read", graph.len());
    // The reader finds what it should: config knows the services.
    assert!(graph[&src.join("config.rs")].contains(&src.join("stt/mod.rs")));
    let mut circles = Vec::new();
    for (file, targets) in &graph {
        for t in targets {
            if t.parent() != file.parent() && reach(&graph, t).contains(file) {
                circles.push(format!(
                    "{} -> {} -> ... -> {}",
                    file.display(),
                    t.display(),
                    file.display()
                ));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles across folders:\n{}",
        circles.join("\n")
    );
}
