//! The layering of `src/` stays: the leaf runtime modules (router, security, pipeline, tls,
//! spool, file_ref, health) never import the config, the admin server or the gateway; sinks
//! never import sources or the admin server; reload never imports the gateway (it is the
//! other way round). docs/architecture.md draws the layers.

use std::path::{Path, PathBuf};

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            rust_files(&entry.expect("entry").path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// `(file, line)` of every use of `crate::<module>` in the given paths under `src/`.
fn uses(paths: &[&str], module: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for p in paths {
        let dir = src.join(p);
        rust_files(&dir, &mut files);
        rust_files(&src.join(format!("{p}.rs")), &mut files);
    }
    assert!(!files.is_empty(), "no files under {paths:?}");
    let needle = format!("crate::{module}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let hit = code.match_indices(&needle).any(|(at, _)| {
                let next = code[at + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if hit {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

fn assert_none(paths: &[&str], modules: &[&str]) {
    for module in modules {
        let found = uses(paths, module);
        assert!(
            found.is_empty(),
            "{paths:?} must not import crate::{module}:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn leaf_runtime_modules_do_not_import_config_or_anything_above_them() {
    assert_none(
        &[
            "router", "security", "pipeline", "tls", "spool", "file_ref", "health",
        ],
        &[
            "config", "admin", "gateway", "reload", "topology", "sources", "sinks",
        ],
    );
}

#[test]
fn sinks_do_not_import_sources_or_the_admin_server() {
    assert_none(&["sinks"], &["sources", "admin", "gateway", "reload"]);
}

#[test]
fn sources_do_not_import_the_admin_server() {
    assert_none(&["sources"], &["admin", "gateway", "reload"]);
}

#[test]
fn reload_and_topology_do_not_import_the_gateway() {
    assert_none(&["reload", "topology"], &["gateway", "admin"]);
}

/// The top-level modules of `src/` and, for each, the others it names as `crate::<module>`
/// outside its tests.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        modules.entry(name).or_insert_with(Vec::new).extend(files);
    }
    let names: Vec<String> = modules.keys().cloned().collect();
    let mut graph = std::collections::BTreeMap::new();
    for (name, files) in &modules {
        let mut edges = std::collections::BTreeSet::new();
        for file in files {
            let in_tests = file.components().any(|c| c.as_os_str() == "tests")
                || file.file_name().is_some_and(|f| f == "tests.rs");
            if in_tests {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("read");
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (at, _) in code.match_indices("crate::") {
                    let rest = &code[at + "crate::".len()..];
                    let target: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if target != *name && names.contains(&target) {
                        edges.insert(target);
                    }
                }
            }
        }
        graph.insert(name.clone(), edges);
    }
    graph
}

#[test]
fn no_import_circle_between_the_modules_of_src() {
    let graph = module_graph();
    // Depth-first search; a module met again while still on the path closes a circle.
    fn visit(
        m: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        done: &mut std::collections::BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_owned());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in &graph[m] {
            if let Some(circle) = visit(next, graph, done, path) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut done, &mut Vec::new()) {
            panic!("import circle in src/: {}", circle.join(" -> "));
        }
    }
}
