//! Builds you can follow: on a terminal (a real one, tmux's, read back with
//! capture-pane) every step that builds shows one status area read from
//! Nix's JSON log and ends in one summary line; a failing build is named
//! with the last lines of its log; without a terminal Nix's own lines stay.

use nixpipe_tests::Testbed;
use std::time::{Duration, Instant};

/// A configuration of web1 with `filler` extra paths and `packages` (Nix
/// expressions of pkgs) in its system; its path.
fn config(tb: &Testbed, name: &str, filler: u32, packages: &str) -> String {
    let path = tb.path().join(format!("{name}.nix"));
    let seed: u32 = std::process::id() ^ Instant::now().elapsed().subsec_nanos();
    let text = format!(
        "{{ pkgs, lib, ... }}: {{ imports = [ {}/web1/configuration.nix ]; testbed.closure = lib.mkForce {filler}; \
         testbed.payloadBytes = {}; environment.systemPackages = [ {packages} ]; }}\n",
        nixpipe_tests::fixtures().display(),
        1000 + seed % 1000,
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A name of this test run alone: a derivation named with it is built (or
/// fetched) by this run, never found built by another.
fn of_this_run(tb: &Testbed, name: &str) -> String {
    format!("{name}-{}", tb.path().file_name().unwrap().to_string_lossy().replace('.', "-"))
}

/// A terminal of 160 columns running `command` in the deployer's
/// environment: tmux on a socket of its own.
struct Terminal<'a> {
    tb: &'a Testbed,
}

impl<'a> Terminal<'a> {
    fn run(tb: &'a Testbed, command: &str) -> Terminal<'a> {
        std::fs::write(tb.path().join("typed.sh"), format!("{command}\necho \"EXIT=$?\"\nsleep 600\n")).unwrap();
        tb.sh("TERM=xterm tmux -S tmux.sock new-session -d -x 160 -y 50 'bash typed.sh'").ok();
        Terminal { tb }
    }

    /// What the terminal shows, with its scrollback.
    fn screen(&self) -> String {
        self.tb.sh("tmux -S tmux.sock capture-pane -p -S -").ok().stdout
    }

    /// The screen once it shows `text` (at most 240 s).
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the terminal never showed {text:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal<'_> {
    fn drop(&mut self) {
        let _ = self.tb.command("tmux").args(["-S", "tmux.sock", "kill-server"]).current_dir(self.tb.path()).output();
    }
}

#[test]
fn a_build_of_many_derivations_shows_what_runs_and_ends_in_one_summary_line() {
    let tb = Testbed::new();
    let slow = format!(
        "(pkgs.runCommand \"{}\" {{ }} \"echo compiling; sleep 4; echo linking; mkdir -p $out\")",
        of_this_run(&tb, "slow-compile")
    );
    let config = config(&tb, "many", 30, &slow);
    let terminal = Terminal::run(&tb, &format!("nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\""));

    // While the slow build runs: the status, and its line with its log.
    let during = terminal.wait_for("compiling");
    assert!(during.contains("1 running"), "{during}");
    assert!(during.lines().any(|l| l.trim_start().starts_with("slow-compile-")), "{during}");

    let after = terminal.wait_for("EXIT=");
    assert!(after.contains("EXIT=0"), "{after}");
    let summary = after.lines().find(|l| l.starts_with("nixpipe-eval: built ")).unwrap_or_else(|| panic!("{after}"));
    let built: u32 = summary["nixpipe-eval: built ".len()..].split(',').next().unwrap().parse().unwrap();
    assert!(built >= 10 && summary.contains(", substituted 0, fetched 0 B in "), "{summary}");
    assert!(!after.contains("building '/nix/store/"), "Nix's raw lines are not shown: {after}");
    assert!(!after.contains("will be built"), "{after}");
}

#[test]
fn a_failing_build_is_named_with_the_last_lines_of_its_log_and_where_the_whole_log_is() {
    let tb = Testbed::new();
    let broken = format!(
        "(pkgs.runCommand \"{}\" {{ }} \"echo first words; echo last words; exit 3\")",
        of_this_run(&tb, "broken-thing")
    );
    let config = config(&tb, "broken", 2, &broken);
    let terminal = Terminal::run(&tb, &format!("nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\""));

    let after = terminal.wait_for("EXIT=");
    assert!(after.contains("EXIT=1"), "{after}");
    let named = after.lines().find(|l| l.contains("the build of /nix/store/") && l.contains("-broken-thing-"));
    assert!(named.is_some(), "{after}");
    assert!(after.contains("  | first words") && after.contains("  | last words"), "{after}");
    assert!(after.lines().any(|l| l.contains("its whole log: nix log /nix/store/")), "{after}");
}

#[test]
fn a_path_substituted_from_a_cache_is_counted_with_its_bytes() {
    let tb = Testbed::new();
    // A path of this run alone: no other test (or run) holds it.
    let fetched = format!(
        "(pkgs.runCommand \"{}\" {{ }} \"mkdir -p $out; head -c 200000 /dev/urandom > $out/data\")",
        of_this_run(&tb, "from-the-cache")
    );
    let config = config(&tb, "cached", 1, &fetched);
    // The path built once, put in a binary cache, gone from the store.
    let path =
        tb.build(&format!("'<nixpkgs/nixos>' -A config.environment.systemPackages --arg configuration {config}"));
    let path = path.lines().next().unwrap().to_owned();
    tb.sh(&format!(
        "nix --extra-experimental-features nix-command copy --to file://$PWD/cache {path} && nix-store --delete {path}"
    ))
    .ok();
    let terminal = Terminal::run(
        &tb,
        &format!(
            "nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\" --option substituters file://$PWD/cache --option require-sigs false"
        ),
    );

    let after = terminal.wait_for("EXIT=");
    assert!(after.contains("EXIT=0"), "{after}");
    let summary = after.lines().find(|l| l.starts_with("nixpipe-eval: built ")).unwrap_or_else(|| panic!("{after}"));
    assert!(summary.contains("substituted 1,") && !summary.contains("fetched 0 B"), "{summary}");
}

#[test]
fn builds_on_another_host_are_shown_the_same_way() {
    let tb = Testbed::new();
    let builder = tb.host("builder");
    let slow = format!(
        "(pkgs.runCommand \"{}\" {{ }} \"echo compiling there; sleep 3; mkdir -p $out\")",
        of_this_run(&tb, "built-there")
    );
    let config = config(&tb, "there", 5, &slow);
    let terminal =
        Terminal::run(&tb, &format!("nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\" --build-on {}", builder.target()));

    let during = terminal.wait_for("compiling there");
    assert!(during.contains("1 running"), "{during}");
    let after = terminal.wait_for("EXIT=");
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(after.lines().any(|l| l.starts_with("nixpipe-eval: built ")), "{after}");
    assert!(!after.contains("building '/nix/store/"), "{after}");
}

#[test]
fn without_a_terminal_nixs_own_lines_stay_as_they_are() {
    let tb = Testbed::new();
    let config = config(&tb, "piped", 3, "");

    let run = tb.sh(&format!("nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\" 2>&1 | cat")).ok();

    assert!(run.stdout.contains("building '/nix/store/"), "{}", run.stdout);
    assert!(!run.stdout.contains("nixpipe-eval: built "), "{}", run.stdout);
}
