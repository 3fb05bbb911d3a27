//! Installing nixpipe: `make install` puts every file where the FHS and
//! each shell look for it, and the flake (package.nix, as nixpkgs packages
//! Rust) evaluates with the stand-in nixpkgs as its input. Building the
//! flake needs real nixpkgs' Rust toolchain: not here (see the README).

use nixpipe_tests::Testbed;
use std::path::Path;

const COMMANDS: [&str; 7] = [
    "nixpipe-eval",
    "nixpipe-copy",
    "nixpipe-activate",
    "nixpipe-bundle",
    "nixpipe-microvm",
    "nixpipe-status",
    "nixpipe-vm",
];

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn make_install_puts_each_file_where_the_fhs_and_each_shell_look_and_the_commands_run() {
    let tb = Testbed::new();
    let stage = tb.path().join("stage");
    tb.sh(&format!(
        "make -s -C {} install-files BUILT={} DESTDIR={} PREFIX=/usr/local",
        repository().display(),
        nixpipe_tests::bin_dir().display(),
        stage.display()
    ))
    .ok();

    let usr = stage.join("usr/local");
    for command in COMMANDS {
        for file in [
            format!("bin/{command}"),
            format!("share/man/man1/{command}.1"),
            format!("share/bash-completion/completions/{command}"),
            format!("share/zsh/site-functions/_{command}"),
            format!("share/fish/vendor_completions.d/{command}.fish"),
        ] {
            assert!(usr.join(&file).is_file(), "{file} is not installed");
        }
        let version = tb.sh(&format!("{}/bin/{command} --version", usr.display())).ok();
        assert_eq!(version.stdout, format!("{command} 0.1.0\n"));
        // Each shell takes its completion as it is installed.
        tb.sh(&format!(
            "bash -c 'source {0}/share/bash-completion/completions/{command} && complete -p {command}'",
            usr.display()
        ))
        .ok();
        tb.sh(&format!("fish --no-execute {}/share/fish/vendor_completions.d/{command}.fish", usr.display())).ok();
    }
    assert!(usr.join("share/man/man7/nixpipe.7").is_file());
}

#[test]
fn the_flake_evaluates_its_package_apps_overlay_and_dev_shell() {
    let tb = Testbed::new();
    let flake = tb.path().join("flake");
    std::fs::create_dir(&flake).unwrap();
    tb.sh(&format!(
        "cd {} && cp -r flake.nix package.nix Cargo.lock man completions {}",
        repository().display(),
        flake.display()
    ))
    .ok();
    let nix = |args: &str| {
        let command = format!(
            "cd {} && nix --extra-experimental-features 'nix-command flakes' {args} \
             --override-input nixpkgs \"path:$NIXPKGS\" --no-write-lock-file",
            flake.display()
        );
        tb.sh(&command).ok().stdout
    };

    assert_eq!(nix("eval --raw .#packages.x86_64-linux.default.name"), "nixpipe-0.1.0");
    assert_eq!(nix("eval --raw .#packages.x86_64-linux.default.meta.mainProgram"), "nixpipe-eval");
    let apps: Vec<String> =
        serde_json::from_str(&nix("eval --json .#apps.x86_64-linux --apply builtins.attrNames")).unwrap();
    let mut expected: Vec<String> = COMMANDS.iter().map(|c| c.to_string()).collect();
    expected.push("default".into());
    expected.sort();
    assert_eq!(apps, expected);
    let program = nix("eval --raw .#apps.x86_64-linux.nixpipe-vm.program");
    assert!(program.starts_with("/nix/store/") && program.ends_with("-nixpipe-0.1.0/bin/nixpipe-vm"), "{program}");
    let show = nix("flake show --json");
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert!(show["overlays"]["default"].is_object(), "{show}");
    assert!(show["devShells"]["x86_64-linux"]["default"].is_object(), "{show}");
}
