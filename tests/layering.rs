//! The library's layering, checked from its sources: the top-level modules import each other
//! without a cycle, the WAL imports nothing above it but the clock, and the client needs only
//! the wire types. ARCHITECTURE.md ("Layers") draws the same graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The library's top-level modules (the binary's `cli/` is not one) and, for each, the other
/// top-level modules its code names through `crate::` (comments left out).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let declared = lib.contains(&format!("mod {name};"));
        if declared && name != "lib" && name != "main" {
            graph.insert(name, BTreeSet::new());
        }
    }
    assert!(graph.len() > 8, "found the modules: {graph:?}");
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for m in &modules {
        let mut files = Vec::new();
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{m}.rs")));
        }
        for f in files {
            // The code without its comments, as one string: a `use crate::{...}` may span lines.
            let text: String = std::fs::read_to_string(&f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join(" ");
            for n in crate_paths(&text) {
                if n != *m && modules.contains(n) {
                    graph.get_mut(m).unwrap().insert(n.to_string());
                }
            }
        }
    }
    graph
}

/// The first segment of every `crate::` path in `code`, those of a `crate::{a, b::c}` group
/// included.
fn crate_paths(code: &str) -> Vec<&str> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                // The group's top level, up to its closing brace.
                let mut depth = 0;
                let mut start = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            start = false;
                            let name = &group[j..j + ident(&group[j..])];
                            out.push(name);
                        }
                        _ => {}
                    }
                }
            }
            None => out.push(&rest[..ident(rest)]),
        }
    }
    out
}

/// A cycle in `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        stack.push(u.to_string());
        for v in &graph[u] {
            match state.get(v.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == v).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m.as_str()) {
            if let Some(c) = visit(m, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_library_s_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    if let Some(c) = find_cycle(&graph) {
        panic!("import cycle: {}\n(graph: {graph:#?})", c.join(" -> "));
    }
}

#[test]
fn the_wal_imports_nothing_above_it_and_the_client_needs_only_the_wire_types() {
    let graph = module_graph();
    let names = |m: &str| graph[m].iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(names("wal"), ["clock", "fail_stop"], "the WAL's imports");
    assert_eq!(names("clock"), Vec::<&str>::new(), "the clock's imports");
    assert_eq!(
        names("fail_stop"),
        Vec::<&str>::new(),
        "fail_stop's imports"
    );
    assert_eq!(names("client"), ["wire"], "the client's imports");
}

#[test]
fn every_module_imports_only_modules_below_it_in_architecture_md_s_layers() {
    // The order of ARCHITECTURE.md's "Layers", top to bottom.
    let layers = [
        "server",
        "client",
        "replay",
        "runtime",
        "alerts",
        "catalog",
        "recovery",
        "checkpoint",
        "scheduler",
        "handlers",
        "wire",
        "config",
        "job",
        "datadir",
        "error",
        "idmap",
        "wal",
        "clock",
        "fail_stop",
    ];
    let graph = module_graph();
    let listed: BTreeSet<&str> = layers.iter().copied().collect();
    let found: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(
        found, listed,
        "a module is missing from the layers (or gone)"
    );
    for (i, m) in layers.iter().enumerate() {
        for dep in &graph[*m] {
            let at = layers.iter().position(|l| l == dep).unwrap();
            assert!(at > i, "{m} imports {dep}, which is not below it");
        }
    }
}

#[test]
fn crate_paths_are_found_across_lines_and_in_nested_groups() {
    let code =
        "use crate::{\n    wal::{io, reader},\n    job::State,\n clock}; let x = crate::config::X;";
    assert_eq!(crate_paths(code), ["wal", "job", "clock", "config"]);
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    }
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}
