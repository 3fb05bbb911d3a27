//! A Raspberry Pi deployment for real: an aarch64-linux system built on this
//! x86_64 machine through qemu-user, bundled, copied and switched on an
//! aarch64 host, whose programs run under qemu too (see Platform::Aarch64).

use nixpipe_tests::{Host, SecretWatch, Testbed, DEPLOY_PASSWORD};

const EVAL_PI: &str = r#"nixpipe-eval --system aarch64-linux -f "$FIXTURES/pi/configuration.nix" --nixpkgs "$NIXPKGS""#;

/// The ELF machine of the program at `path` on `host` (following links):
/// `aarch64` or `x86_64`, or `None` for a file that is not ELF.
fn elf_machine(host: &Host, path: &str) -> Option<&'static str> {
    // e_machine, the two bytes at offset 18, after the magic.
    let header = host.sh(&format!("od -An -tx1 -N20 $(readlink -f {path}) | tr -d ' \\n'"));
    match (header.get(..8), header.get(36..40)) {
        (Some("7f454c46"), Some("b700")) => Some("aarch64"),
        (Some("7f454c46"), Some("3e00")) => Some("x86_64"),
        _ => None,
    }
}

/// Every ELF file in the closure of `path` on `host`, with its machine.
fn programs_in_closure(host: &Host, path: &str) -> Vec<(String, &'static str)> {
    let files = host.sh(&format!("find $(nix-store --query --requisites {path}) -type f"));
    files.lines().filter_map(|f| elf_machine(host, f).map(|m| (f.to_owned(), m))).collect()
}

/// A Pi reached as `deploy@pi`, a trusted Nix user (the daemon runs) who
/// needs a password for sudo: what a Pi set up by hand looks like.
fn pi(tb: &Testbed) -> Host {
    let pi = tb.aarch64_host("pi");
    pi.sh("echo 'trusted-users = root deploy' >> /etc/nix/nix.conf");
    pi.start_nix_daemon();
    tb.alias("pi", &pi, "deploy");
    pi
}

#[test]
fn the_seed_pipeline_builds_for_the_pi_here_and_switches_it_there_with_one_password() {
    let tb = Testbed::new();
    tb.build_aarch64_here();
    let pi = pi(&tb);
    let watch = SecretWatch::start(DEPLOY_PASSWORD);

    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --return --command \
             '{EVAL_PI} | nixpipe-bundle --config \"$FIXTURES/pi\" --nixpkgs \"$NIXPKGS\" \
              | nixpipe-copy --to pi | nixpipe-activate --on pi --ask-sudo-password switch' /dev/null"
        ),
        &format!("{DEPLOY_PASSWORD}\n"),
    );

    let run = run.ok();
    assert_eq!(watch.stop(), Vec::<String>::new(), "the password leaked");
    assert_eq!(run.stdout.matches("[nixpipe] sudo password:").count(), 1, "{}", run.stdout);
    let bundle = pi.sh("readlink /etc/nixos/current-configuration").trim().to_owned();
    let toplevel = pi.sh(&format!("readlink {bundle}/toplevel")).trim().to_owned();
    assert_eq!(pi.sh(&format!("cat {toplevel}/system")), "aarch64-linux");
    assert_eq!(pi.switch_log(), [format!("action=switch toplevel={toplevel} uid=0 tty=no arch=aarch64")]);
    assert_eq!(pi.system_profile().as_deref(), Some(&*toplevel));
    let given = std::fs::read_to_string(nixpipe_tests::fixtures().join("pi/configuration.nix")).unwrap();
    assert_eq!(pi.sh("cat /etc/nixos/current-configuration/configuration.nix"), given);
    assert!(pi.has(pi.sh("readlink /etc/nixos/current-configuration/nixpkgs").trim()), "the pinned nixpkgs is there");
    assert_eq!(pi.sh("ls /nix/store | grep -c '[.]drv$' || true").trim(), "0", "nothing was built there");
    // bin/switch's interpreter, and every program of the system the bundle
    // brings, is built for the Pi (the pinned nixpkgs is source, not run).
    let interpreter = pi.sh(&format!("head -n1 {bundle}/bin/switch | sed 's/^#!//'"));
    assert_eq!(elf_machine(&pi, interpreter.trim()), Some("aarch64"), "{interpreter}");
    let programs = programs_in_closure(&pi, &toplevel);
    assert!(!programs.is_empty());
    assert!(programs.iter().all(|(_, machine)| *machine == "aarch64"), "{programs:?}");
}

#[test]
fn a_flake_machine_of_system_aarch64_linux_switches_on_the_pi_the_same_way() {
    let tb = Testbed::new();
    tb.build_aarch64_here();
    let pi = tb.aarch64_host("pi");
    let flake = tb.flake("pi");
    let t = pi.target();

    let run = tb
        .sh(&format!("nixpipe-eval {}#pi | nixpipe-copy --to {t} | nixpipe-activate --on {t} switch", flake.display()));

    let run = run.ok();
    let (_, toplevel) = run.stdout.trim().split_once('\t').expect("a record");
    assert_eq!(pi.switch_log(), [format!("action=switch toplevel={toplevel} uid=0 tty=no arch=aarch64")]);
}

#[test]
fn an_aarch64_system_is_refused_by_an_x86_64_host_before_anything_changes() {
    let tb = Testbed::new();
    tb.build_aarch64_here();
    let x86 = tb.host("pi");
    let t = x86.target();

    let run = tb.sh(&format!("{EVAL_PI} | nixpipe-copy --to {t} | nixpipe-activate --on {t} switch"));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("is built for aarch64-linux, and "), "{error}");
    assert!(
        error.contains(" runs ") && error.contains("x86_64-linux") && error.ends_with("; nothing changed"),
        "{error}"
    );
    assert!(x86.switch_log().is_empty());
    assert_eq!(x86.system_profile(), None);
}

#[test]
fn build_on_the_pi_builds_its_system_there_when_this_machine_cannot() {
    let tb = Testbed::new();
    let pi = tb.aarch64_host("pi");
    let t = pi.target();
    // A system no other test builds here.
    let config = tb.path().join("configuration.nix");
    let imports = nixpipe_tests::fixtures().join("pi/configuration.nix");
    let unique =
        format!("{{ imports = [ {} ]; testbed.switchPrints = \"{}\"; }}", imports.display(), tb.path().display());
    std::fs::write(&config, unique).unwrap();

    let run = tb.sh(&format!(
        r#"nixpipe-eval --system aarch64-linux --build-on {t} -f {} --nixpkgs "$NIXPKGS" | nixpipe-activate --on {t} switch"#,
        config.display()
    ));

    let run = run.ok();
    let (_, toplevel) = run.stdout.trim().split_once('\t').expect("a record");
    assert!(pi.has(toplevel));
    assert_ne!(tb.sh(&format!("nix-store --check-validity {toplevel}")).code, 0, "built there, not here");
    assert_eq!(pi.switch_log(), [format!("action=switch toplevel={toplevel} uid=0 tty=no arch=aarch64")]);
    assert_eq!(elf_machine(&pi, &format!("{toplevel}/sw/bin/sh")), Some("aarch64"));
}

#[test]
fn eval_for_a_platform_this_nix_cannot_build_names_the_missing_setting_and_builds_nothing() {
    let tb = Testbed::new();

    let run = tb.sh(EVAL_PI);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.starts_with("nixpipe-eval: pi: this machine's Nix builds for x86_64-linux"), "{error}");
    assert!(
        error.ends_with(
            ", not aarch64-linux: add `extra-platforms = aarch64-linux` to nix.conf with qemu-user registered for it \
             in binfmt_misc (on NixOS: boot.binfmt.emulatedSystems = [ \"aarch64-linux\" ]), or build on a machine \
             of that platform with --build-on TARGET; nothing was built"
        ),
        "{error}"
    );
    assert!(run.stdout.is_empty());
}
