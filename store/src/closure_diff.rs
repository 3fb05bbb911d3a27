//! What changes between two systems, by package name and version, as nvd
//! shows it: packages upgraded or downgraded, added, removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Package name → versions, in one closure.
type Packages = BTreeMap<String, BTreeSet<String>>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClosureDiff {
    /// name, versions before, versions after
    pub changed: Vec<(String, String, String)>,
    pub added: Vec<(String, String)>,
    pub removed: Vec<(String, String)>,
    pub paths_before: usize,
    pub paths_after: usize,
    pub paths_added: usize,
    pub paths_removed: usize,
}

impl ClosureDiff {
    /// Compares two closures given as store paths.
    pub fn new(before: &[&str], after: &[&str]) -> ClosureDiff {
        let (old, new) = (packages(before), packages(after));
        let mut diff = ClosureDiff {
            paths_before: before.len(),
            paths_after: after.len(),
            paths_added: after.iter().filter(|p| !before.contains(p)).count(),
            paths_removed: before.iter().filter(|p| !after.contains(p)).count(),
            ..ClosureDiff::default()
        };
        for name in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
            match (old.get(name), new.get(name)) {
                (Some(o), Some(n)) if o != n => diff.changed.push((name.clone(), versions(o), versions(n))),
                (None, Some(n)) => diff.added.push((name.clone(), versions(n))),
                (Some(o), None) => diff.removed.push((name.clone(), versions(o))),
                _ => {}
            }
        }
        diff
    }
}

impl fmt::Display for ClosureDiff {
    /// One change per line: `[U] name: 1.0 -> 1.1`, `[A] name: 1.0`, `[R] ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, before, after) in &self.changed {
            writeln!(f, "[U] {name}: {before} -> {after}")?;
        }
        for (name, version) in &self.added {
            writeln!(f, "[A] {name}: {version}")?;
        }
        for (name, version) in &self.removed {
            writeln!(f, "[R] {name}: {version}")?;
        }
        write!(
            f,
            "closure: {} -> {} paths ({} added, {} removed)",
            self.paths_before, self.paths_after, self.paths_added, self.paths_removed
        )
    }
}

fn packages(paths: &[&str]) -> Packages {
    let mut packages = Packages::new();
    for path in paths {
        let name = path.rsplit('/').next().unwrap_or(path);
        let name = name.split_once('-').map_or(name, |(_hash, name)| name);
        let (pname, version) = split_name(name);
        packages.entry(pname.to_owned()).or_default().insert(version.to_owned());
    }
    packages
}

/// Splits as Nix's builtins.parseDrvName does: the version starts after the
/// first dash that is not followed by a letter.
fn split_name(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

fn versions(set: &BTreeSet<String>) -> String {
    let shown: Vec<&str> = set.iter().map(|v| if v.is_empty() { "<none>" } else { v }).collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_as_nix_does() {
        assert_eq!(split_name("hello-2.12.1"), ("hello", "2.12.1"));
        assert_eq!(split_name("nixos-system-web1-24.05"), ("nixos-system-web1", "24.05"));
        assert_eq!(split_name("system-path"), ("system-path", ""));
        assert_eq!(split_name("etc-hosts"), ("etc-hosts", ""));
    }

    #[test]
    fn shows_upgrades_additions_and_removals() {
        let before = ["/nix/store/aaa-hello-2.10", "/nix/store/bbb-bash-5.2", "/nix/store/ccc-old-1"];
        let after = ["/nix/store/ddd-hello-2.12", "/nix/store/bbb-bash-5.2", "/nix/store/eee-new-3"];
        let diff = ClosureDiff::new(&before, &after);
        assert_eq!(
            diff.to_string(),
            "[U] hello: 2.10 -> 2.12\n[A] new: 3\n[R] old: 1\nclosure: 3 -> 3 paths (2 added, 2 removed)"
        );
    }
}
