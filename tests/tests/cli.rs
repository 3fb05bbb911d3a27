//! What every command promises before it does anything: help with an
//! example pipeline, a version, exit 2 for bad usage and unbuilt features.

use nixpipe_tests::Testbed;

const COMMANDS: [&str; 5] = ["nixpipe-eval", "nixpipe-copy", "nixpipe-activate", "nixpipe-bundle", "nixpipe-microvm"];

#[test]
fn every_command_has_help_with_an_example_pipeline_and_a_version() {
    let tb = Testbed::new();
    for cmd in COMMANDS {
        let help = tb.sh(&format!("{cmd} --help")).ok();
        assert!(help.stdout.contains("Example"), "{cmd}: {}", help.stdout);
        assert!(help.stdout.contains(" | nixpipe-"), "{cmd} --help shows no pipeline");
        let version = tb.sh(&format!("{cmd} --version")).ok();
        assert_eq!(version.stdout.trim(), format!("{cmd} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn activate_refuses_flags_that_make_no_sense_together() {
    let tb = Testbed::new();
    let path = "/nix/store/36m5mhfn262qgji13vrgp907an576qjz-x";
    for (line, why) in [
        (
            format!("nixpipe-activate --on web1 --rollback switch {path}"),
            "--rollback and --restore-bundle take no records",
        ),
        ("nixpipe-activate --rollback switch".into(), "--on <TARGET>"),
        (format!("nixpipe-activate --specialisation gpu boot {path}"), "--specialisation cannot be used with boot"),
        (
            format!("nixpipe-activate --confirm-timeout 30 boot {path}"),
            "--confirm-timeout and --check need switch, test or --reboot",
        ),
        (format!("nixpipe-activate --reboot test {path}"), "--reboot needs boot or switch"),
        (format!("nixpipe-activate --confirm-timeout 0 switch {path}"), "0 is not in 1.."),
    ] {
        let run = tb.sh(&line);
        assert_eq!(run.code, 2, "{line}");
        assert!(run.stderr.contains(why), "{line}: {}", run.stderr);
    }
}

#[test]
fn a_runner_record_without_the_vm_name_is_bad_usage() {
    let tb = Testbed::new();

    let run = tb.sh("nixpipe-microvm install --on root@127.0.0.1:1 /nix/store/36m5mhfn262qgji13vrgp907an576qjz-runner");

    assert_eq!(run.code, 2);
    assert!(run.error_line().ends_with("a runner record needs the VM's NAME"), "{}", run.stderr);
}

#[test]
fn a_bad_target_is_bad_usage() {
    let tb = Testbed::new();
    let run =
        tb.sh("nixpipe-copy --to='-oProxyCommand=touch /tmp/pwned' /nix/store/36m5mhfn262qgji13vrgp907an576qjz-x");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("a host cannot start with '-'"), "{}", run.stderr);
}

#[test]
fn no_records_at_all_is_an_error_not_a_silent_success() {
    let tb = Testbed::new();
    let run = tb.sh("true | nixpipe-copy --to local");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no records on stdin"), "{}", run.stderr);
}

#[test]
fn a_missing_configuration_file_is_bad_usage() {
    let tb = Testbed::new();
    let run = tb.sh("nixpipe-eval -f does-not-exist.nix");
    assert_eq!(run.code, 2);
    assert!(run.stderr.starts_with("nixpipe-eval: does-not-exist.nix: No such file"), "{}", run.stderr);
}

#[test]
fn an_evaluation_error_exits_1_after_nix_says_why() {
    let tb = Testbed::new();
    std::fs::write(tb.path().join("broken.nix"), "{ ... }: { networking.hostName = 42 + \"x\"; }").unwrap();
    let run = tb.sh(r#"nixpipe-eval -f broken.nix --nixpkgs "$NIXPKGS""#);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("error:"), "Nix's own message is shown: {}", run.stderr);
    assert!(run.stderr.trim_end().ends_with("evaluation failed (Nix's message is above)"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn copy_options_that_cannot_work_are_bad_usage_and_nothing_is_read() {
    let tb = Testbed::new();
    std::fs::write(tb.path().join("not-a-key"), "hello\n").unwrap();
    let path = "/nix/store/36m5mhfn262qgji13vrgp907an576qjz-x";
    for (line, says) in [
        (format!("nixpipe-copy --to s3://bucket {path}"), "use `nix copy --to s3://bucket`"),
        (format!("nixpipe-copy -s --to file:///tmp/cache {path}"), "file:///tmp/cache is a binary cache"),
        (
            format!("nixpipe-copy --sign-key not-a-key --to local {path}"),
            "not a secret key from nix-store --generate-binary-cache-key",
        ),
        (format!("nixpipe-copy --sign-key missing.sec --to local {path}"), "cannot read signing key missing.sec"),
    ] {
        let run = tb.sh(&line);
        assert_eq!(run.code, 2, "{line}");
        // clap says "error: ..." for a bad value, we say "nixpipe-copy: ...": one line either way.
        assert_eq!(run.stderr.lines().filter(|l| l.contains(says)).count(), 1, "{line}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn a_record_named_local_is_refused_and_the_deployer_is_not_activated() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let profile = || std::fs::read_link("/nix/var/nix/profiles/system").ok();
    let before = profile();

    let run = tb.sh(&format!("printf 'local\\t{system}\\n' | nixpipe-activate --no-hostname-check switch"));

    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.error_line().contains("`local` is a target, not a machine name: use --on local"), "{}", run.stderr);
    assert_eq!(profile(), before, "this machine's system profile is untouched");
}

#[test]
fn every_usage_error_is_one_line_naming_the_flag() {
    let tb = Testbed::new();
    for (line, says) in [
        ("nixpipe-copy --bogus", "nixpipe-copy: unexpected argument '--bogus' found (--help for more)"),
        (
            "nixpipe-activate --confirm-timeout x switch",
            "nixpipe-activate: invalid value 'x' for '--confirm-timeout <SECONDS>'",
        ),
        (
            "nixpipe-microvm remove",
            "nixpipe-microvm: the following required arguments were not provided: --on <TARGET> <NAME>",
        ),
        ("nixpipe-eval --system", "nixpipe-eval: a value is required for '--system <SYSTEM>'"),
        ("nixpipe-bundle --config", "nixpipe-bundle: a value is required for '--config <DIR|FILE>'"),
    ] {
        let run = tb.sh(line);
        assert_eq!(run.code, 2, "{line}");
        let [error] = run.stderr.lines().collect::<Vec<_>>()[..] else { panic!("{line}: one line: {}", run.stderr) };
        assert!(error.starts_with(says), "{line}: {error}");
    }
}

#[test]
fn a_malformed_nix_sshopts_is_bad_usage_for_every_command() {
    let tb = Testbed::new();
    let path = "/nix/store/36m5mhfn262qgji13vrgp907an576qjz-x";
    for line in [
        format!("nixpipe-copy --to web1 {path}"),
        format!("nixpipe-activate --on web1 switch {path}"),
        format!("nixpipe-status --on web1 {path}"),
        format!("nixpipe-microvm install --on web1 {path}"),
    ] {
        let run = tb.sh(&format!("NIX_SSHOPTS=\"-o 'unterminated\" {line}"));
        assert_eq!(run.code, 2, "{line}: {}", run.stderr);
        assert!(run.error_line().ends_with("NIX_SSHOPTS: unbalanced quotes"), "{line}: {}", run.stderr);
    }
}
