//! ssh runs every remote command through the login user's shell: each step
//! works, and runs only what it means to, whatever that shell is.

use nixpipe_tests::Testbed;

/// Copy through a relay (--via), activate as a user with sudo, and install
/// a MicroVM, with `shell` as root's and deploy's login shell on every host.
fn every_step_works_with_the_login_shell(shell: &str) {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let relay = tb.host("relay");
    for host in [&web1, &relay] {
        host.set_login_shell("root", shell);
        host.set_login_shell("deploy", shell);
    }
    web1.sh("echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >> /etc/sudoers");
    web1.start_nix_daemon();
    tb.alias("relay", &relay, "root");
    relay.alias("web1", &web1);
    tb.know_host_key("web1", &web1);
    let system = tb.system("web1");
    let runner = tb.sh(r#"nixpipe-eval --microvm-runner -f "$FIXTURES/web1/configuration.nix" --nixpkgs "$NIXPKGS""#);
    let runner = runner.ok().stdout.trim().to_owned();

    tb.sh(&tb.with_agent(&format!("nixpipe-copy --via relay --to root@web1 {system}"))).ok();
    tb.sh(&format!("nixpipe-activate --on {} switch $'web1\\t{system}'", web1.target_as("deploy"))).ok();
    tb.sh(&format!("nixpipe-microvm install --on {} $'{}'", web1.target(), runner.replace('\t', "\\t"))).ok();

    assert!(relay.has(&system) && web1.has(&system));
    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
    assert_eq!(web1.switch_log().len(), 1);
    let current = web1.sh("readlink /var/lib/microvms/web1/current");
    assert_eq!(current.trim(), runner.split_once('\t').unwrap().1);
    // A shell running pieces of a script made its links in root's home.
    assert_eq!(web1.sh("find ~ -maxdepth 1 -type l"), "", "nothing ran in root's home");
}

#[test]
fn every_step_works_when_the_login_shell_is_sh() {
    every_step_works_with_the_login_shell("/bin/sh");
}

#[test]
fn every_step_works_when_the_login_shell_is_tcsh() {
    every_step_works_with_the_login_shell("/usr/bin/tcsh");
}

#[test]
fn every_step_works_when_the_login_shell_is_fish() {
    every_step_works_with_the_login_shell("/usr/bin/fish");
}
