//! `cargo xtask layers`: the module graph of every library crate has no
//! cycle, and the layers use only what is below them. The crate graph
//! itself is acyclic by cargo's own rule, so an upward import between
//! crates cannot compile; this check keeps each crate's modules as
//! layered as the crates are (a cycle through `crate::` paths compiles).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The crates whose modules are checked, and the nixpipe crates each may
/// use: store below host below deploy, the commands on top.
const LAYERS: [(&str, &[&str]); 11] = [
    ("store", &[]),
    ("host", &["nixpipe_store"]),
    ("deploy", &["nixpipe_store", "nixpipe_host"]),
    ("cli", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy"]),
    ("cmd-eval", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
    ("cmd-copy", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
    ("cmd-activate", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
    ("cmd-bundle", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
    ("cmd-microvm", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
    ("cmd-status", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
    ("cmd-vm", &["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"]),
];

const NIXPIPE_CRATES: [&str; 4] = ["nixpipe_store", "nixpipe_host", "nixpipe_deploy", "nixpipe_cli"];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Checks every crate; prints each graph with `show`. The problems found.
pub fn check(root: &Path, show: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (dir, allowed) in LAYERS {
        let sources = sources(&root.join(dir).join("src"));
        let graph = module_graph(&sources);
        if show {
            println!("{dir}:");
            for (module, uses) in &graph {
                println!("  {module} -> {}", uses.iter().cloned().collect::<Vec<_>>().join(" "));
            }
        }
        for cycle in cycles(&graph) {
            problems.push(format!("{dir}: modules in a cycle: {}", cycle.join(", ")));
        }
        for (module, text) in &sources {
            for used in NIXPIPE_CRATES.iter().filter(|c| !allowed.contains(c) && uses_crate(text, c)) {
                if format!("nixpipe_{}", dir.replace('-', "_")) != *used {
                    problems.push(format!("{dir}: {module} uses {used}, a layer above it"));
                }
            }
        }
    }
    problems
}

/// Every .rs file under `src`, by top-level module (`a/b.rs` is in `a`),
/// comments left out; the crate root is not a module of its own.
fn sources(src: &Path) -> BTreeMap<String, String> {
    let mut by_module: BTreeMap<String, String> = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let Some(rel) = path.strip_prefix(src).ok().and_then(|r| r.to_str()) else { continue };
            let Some(rel) = rel.strip_suffix(".rs") else { continue };
            let module = rel.split('/').next().unwrap_or(rel).to_owned();
            if ["lib", "main"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
            by_module.entry(module).or_default().push_str(&code);
        }
    }
    by_module
}

/// Which modules each module names through `crate::`.
fn module_graph(sources: &BTreeMap<String, String>) -> Graph {
    sources
        .iter()
        .map(|(module, text)| {
            let used =
                crate_paths(text).into_iter().filter(|used| used != module && sources.contains_key(used)).collect();
            (module.clone(), used)
        })
        .collect()
}

/// The first names after `crate::`, in paths and in `use crate::{a, b::c}`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => names.extend(top_level_names(&group[..closing_brace(group)])),
            None => names.extend(first_identifier(rest)),
        }
    }
    names
}

/// The index of the `}` that closes a group opened just before `group`.
fn closing_brace(group: &str) -> usize {
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    group.len()
}

/// `a, b::{c, d}, e` → a, b, e.
fn top_level_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices().chain([(group.len(), ',')]) {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.extend(first_identifier(group[start..i].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    names
}

fn first_identifier(text: &str) -> Option<String> {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_owned())
}

fn uses_crate(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The strongly connected components of more than one module (Tarjan's).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in &self.graph[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    self.low.insert(v, self.low[v].min(self.low[w]));
                } else if self.stack.contains(&w) {
                    self.low.insert(v, self.low[v].min(self.index[w]));
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().rposition(|&m| m == v).expect("on the stack");
                let component: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges.iter().map(|(m, uses)| (m.to_string(), uses.iter().map(|u| u.to_string()).collect())).collect()
    }

    #[test]
    fn finds_the_names_a_module_uses() {
        let text = "use crate::a::X;\nuse crate::{b, c::{D, E}, f::G};\nfn x() { crate::h::y(); nixpipe_crate::z(); }";
        assert_eq!(crate_paths(text), ["a", "b", "c", "f", "h"].map(String::from).into());
    }

    #[test]
    fn finds_cycles_and_only_cycles() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(cycles(&g), [["a", "b", "c"].map(String::from).to_vec()]);
        assert!(cycles(&graph(&[("a", &["b"]), ("b", &[])])).is_empty());
    }
}
