//! nixpipe-bundle end to end: eval | bundle | copy | activate leaves the
//! configuration on the machine as a GC root, the machine builds nothing,
//! and the bundle before can be brought back.

use nixpipe_tests::{Host, Testbed};

/// Deploys `config_dir`'s configuration.nix as a bundle; the bundle's path.
fn deploy_bundle(tb: &Testbed, host: &Host, config_dir: &str) -> String {
    let t = host.target();
    let run = tb.sh(&format!(
        r#"nixpipe-eval -f {config_dir}/configuration.nix --nixpkgs "$NIXPKGS" \
           | nixpipe-bundle --config {config_dir} --nixpkgs "$NIXPKGS" \
           | nixpipe-copy --to {t} | nixpipe-activate --on {t} switch"#
    ));
    let run = run.ok();
    let (name, bundle) = run.stdout.trim().split_once('\t').expect("a record");
    assert_eq!(name, "web1");
    bundle.to_owned()
}

#[test]
fn a_bundle_deployment_keeps_the_configuration_as_a_gc_root_and_builds_nothing_there() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");

    let bundle = deploy_bundle(&tb, &web1, "$FIXTURES/web1");

    assert!(bundle.ends_with("-nixpipe-bundle-web1"), "{bundle}");
    assert_eq!(web1.sh("readlink /etc/nixos/current-configuration").trim(), bundle);
    let deployed = web1.sh("cat /etc/nixos/current-configuration/configuration.nix");
    let given = std::fs::read_to_string(nixpipe_tests::fixtures().join("web1/configuration.nix")).unwrap();
    assert_eq!(deployed, given, "byte for byte");
    let roots = web1.gc_roots();
    assert!(roots.contains(&format!("/etc/nixos/current-configuration -> {bundle}")), "{roots:?}");
    let toplevel = web1.sh(&format!("readlink {bundle}/toplevel")).trim().to_owned();
    assert_eq!(web1.system_profile().as_deref(), Some(&*toplevel));
    assert_eq!(
        web1.switch_log(),
        [format!("action=switch toplevel={toplevel} uid=0 tty=no arch={}", std::env::consts::ARCH)]
    );
    assert_eq!(web1.sh("ls /nix/store | grep -c '[.]drv$' || true").trim(), "0", "nothing was built there");
    let manifest: serde_json::Value = serde_json::from_str(&web1.sh(&format!("cat {bundle}/manifest.json"))).unwrap();
    assert_eq!(manifest["name"], "web1");
    assert_eq!(manifest["toplevel"], toplevel);
    assert_eq!(manifest["files"]["configuration.nix"].as_str().unwrap().len(), 64);
}

#[test]
fn a_second_bundle_replaces_the_first_which_can_be_restored() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let second_dir = tb.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let config = format!(
        "{{ imports = [ {}/web1/configuration.nix ]; system.nixos.version = \"2\"; }}\n",
        nixpipe_tests::fixtures().display()
    );
    std::fs::write(second_dir.join("configuration.nix"), config).unwrap();
    let first = deploy_bundle(&tb, &web1, "$FIXTURES/web1");
    let second = deploy_bundle(&tb, &web1, &second_dir.display().to_string());

    assert_eq!(web1.sh("readlink /etc/nixos/current-configuration").trim(), second);
    assert_eq!(web1.sh("readlink /etc/nixos/previous-configuration").trim(), first);
    let run = tb.sh(&format!("nixpipe-activate --on {} --restore-bundle switch", web1.target())).ok();

    assert_eq!(run.stdout, format!("web1\t{first}\n"));
    assert_eq!(web1.sh("readlink /etc/nixos/current-configuration").trim(), first);
    assert_eq!(web1.sh("readlink /etc/nixos/previous-configuration").trim(), second);
    let first_toplevel = web1.sh(&format!("readlink {first}/toplevel")).trim().to_owned();
    assert_eq!(web1.system_profile().as_deref(), Some(&*first_toplevel));
    assert_eq!(web1.sh("readlink /run/current-system").trim(), first_toplevel);
}

#[test]
fn restoring_without_a_previous_bundle_is_refused() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");

    let run = tb.sh(&format!("nixpipe-activate --on {} --restore-bundle switch", web1.target()));

    assert_eq!(run.code, 1);
    assert!(run.error_line().ends_with("has no previous bundle (/etc/nixos/previous-configuration) to restore"));
}

#[test]
fn a_single_file_configuration_is_carried_as_that_file() {
    let tb = Testbed::new();
    let system = tb.system("web1");

    let run = tb.sh(&format!(
        r#"printf 'web1\t%s\n' {system} | nixpipe-bundle --config "$FIXTURES/web1/configuration.nix" --nixpkgs "$NIXPKGS" --json"#
    ));

    let [record] = &run.ok().json_lines()[..] else { panic!("one record") };
    assert_eq!(record["toplevel"], system);
    let bundle = record["path"].as_str().unwrap();
    let given = std::fs::read(nixpipe_tests::fixtures().join("web1/configuration.nix")).unwrap();
    assert_eq!(std::fs::read(format!("{bundle}/configuration.nix")).unwrap(), given);
    assert_eq!(std::fs::read_link(format!("{bundle}/toplevel")).unwrap().to_str(), Some(&*system));
}

#[test]
fn without_a_nixpkgs_to_pin_bundle_is_refused_before_building() {
    let tb = Testbed::new();
    let system = tb.system("web1");

    let run = tb.sh(&format!(r#"printf 'web1\t%s\n' {system} | nixpipe-bundle --config "$FIXTURES/web1""#));

    assert_eq!(run.code, 2);
    assert_eq!(run.stdout, "");
    assert_eq!(run.error_line(), "nixpipe-bundle: no <nixpkgs> in NIX_PATH: give --nixpkgs PATH");
}
