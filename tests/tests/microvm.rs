//! nixpipe-microvm against testbed hosts: microvm.nix's layout link by link
//! after install, update, an unchanged reinstall and remove; the restart
//! policies; list. What starts and stops VMs runs on a host booting real
//! systemd with microvm.nix's units, and is read from its journal.

use nixpipe_tests::{Host, Testbed};
use std::process::Command;

const DIR: &str = "/var/lib/microvms/web1";
const ROOTS: &str = "/nix/var/nix/gcroots/microvm";

/// web1's runner, as nixpipe-eval --microvm-runner gives it: a record.
fn runner(tb: &Testbed, version: &str) -> String {
    let config = tb.path().join(format!("vm-{version}.nix"));
    let module = format!(
        "{{ imports = [ {}/web1/configuration.nix ]; system.nixos.version = \"{version}\"; }}\n",
        nixpipe_tests::fixtures().display()
    );
    std::fs::write(&config, module).unwrap();
    let run = tb.sh(&format!(r#"nixpipe-eval --microvm-runner -f {} --nixpkgs "$NIXPKGS""#, config.display()));
    run.ok().stdout.trim().to_owned()
}

fn path(record: &str) -> &str {
    record.split_once('\t').unwrap().1
}

fn install(tb: &Testbed, host: &Host, record: &str, flags: &str) -> nixpipe_tests::Run {
    tb.sh(&format!("nixpipe-microvm install --on {} {flags} $'{}'", host.target(), record.replace('\t', "\\t")))
}

fn readlink(host: &Host, link: &str) -> String {
    host.sh(&format!("readlink {link} || true")).trim().to_owned()
}

/// The links of the VM's directory and its GC roots, and what they point at.
fn layout(host: &Host) -> Vec<String> {
    host.sh(&format!("for l in {DIR}/* {ROOTS}/*; do echo \"$l -> $(readlink $l)\"; done"))
        .lines()
        .map(str::to_owned)
        .collect()
}

const UNIT: &str = "microvm@web1.service";

/// A host booting systemd, with microvm.nix's units.
fn vm_host(tb: &Testbed) -> Host {
    let host = tb.systemd_host("host");
    host.install_microvm_units();
    host
}

/// How many times web1's runner started.
fn starts(host: &Host) -> usize {
    host.journal_count(UNIT, "running web1")
}

#[test]
fn install_lays_a_vm_out_as_microvm_nix_does() {
    let tb = Testbed::new();
    let host = vm_host(&tb);
    host.sh("echo 'microvm:x:870:870::/var/lib/microvms:/bin/sh' >> /etc/passwd && echo 'kvm:x:870:' >> /etc/group");
    let first = runner(&tb, "1");

    let run = install(&tb, &host, &first, "").ok();

    assert_eq!(run.stdout.trim(), first);
    assert_eq!(
        layout(&host),
        [
            format!("{DIR}/current -> {}", path(&first)),
            format!("{ROOTS}/booted-web1 -> {DIR}/booted"),
            format!("{ROOTS}/old-web1 -> {DIR}/old"),
            format!("{ROOTS}/web1 -> {DIR}/current"),
        ]
    );
    assert!(host.has(path(&first)), "the runner's closure was copied");
    assert_eq!(host.sh(&format!("stat -c '%U:%G %a' /var/lib/microvms {DIR}")), "microvm:kvm 775\nmicrovm:kvm 755\n");
    assert_eq!(host.sh(&format!("stat -c '%U:%G' {DIR}/current")).trim(), "microvm:kvm");
    assert_eq!(starts(&host), 0, "not running: no restart");
    assert_eq!(host.exec(&format!("systemctl is-active {UNIT}")).status.code(), Some(3));
}

#[test]
fn an_update_keeps_the_old_runner_and_shows_the_difference() {
    let tb = Testbed::new();
    let host = tb.host("host");
    let (first, second) = (runner(&tb, "1"), runner(&tb, "2"));
    install(&tb, &host, &first, "").ok();

    let run = install(&tb, &host, &second, "").ok();

    assert_eq!(readlink(&host, &format!("{DIR}/current")), path(&second));
    assert_eq!(readlink(&host, &format!("{DIR}/old")), path(&first));
    assert!(run.stderr.contains(&format!("web1 | {} -> {}", path(&first), path(&second))), "{}", run.stderr);
    assert!(run.stderr.contains("web1 | [U] nixos-system-web1: 1 -> 2"), "{}", run.stderr);
    let roots = host.gc_roots();
    assert!(roots.contains(&format!("{DIR}/current -> {}", path(&second))), "{roots:?}");
    assert!(roots.contains(&format!("{DIR}/old -> {}", path(&first))), "{roots:?}");
}

#[test]
fn an_unchanged_reinstall_touches_nothing_and_leaves_no_stray_link() {
    let tb = Testbed::new();
    let host = tb.host("host");
    let first = runner(&tb, "1");
    install(&tb, &host, &first, "").ok();
    let before = host.sh(&format!("ls -lid --time-style=full-iso {DIR}/* {ROOTS}/*"));

    let run = install(&tb, &host, &first, "").ok();

    assert_eq!(host.sh(&format!("ls -lid --time-style=full-iso {DIR}/* {ROOTS}/*")), before);
    assert_eq!(host.sh(&format!("ls -A {DIR}")).trim(), "current");
    assert!(!run.stderr.contains("->"), "no difference shown: {}", run.stderr);
}

#[test]
fn restarts_follow_the_policy() {
    let tb = Testbed::new();
    let host = vm_host(&tb);
    let (first, second) = (runner(&tb, "1"), runner(&tb, "2"));
    install(&tb, &host, &first, "--restart always").ok(); // now running, booted from the first
    let restarts = || starts(&host);
    assert_eq!(restarts(), 1);

    install(&tb, &host, &second, "--restart never").ok();
    assert_eq!(restarts(), 1, "never");
    assert_eq!(readlink(&host, &format!("{DIR}/booted")), path(&first));

    install(&tb, &host, &second, "--restart auto").ok();
    assert_eq!(restarts(), 2, "auto: running, booted from another runner");
    assert_eq!(readlink(&host, &format!("{DIR}/booted")), path(&second));

    install(&tb, &host, &second, "--restart auto").ok();
    assert_eq!(restarts(), 2, "auto: booted from the current runner");

    install(&tb, &host, &second, "--restart always").ok();
    assert_eq!(restarts(), 3, "always, even unchanged");
}

#[test]
fn list_tells_current_outdated_and_not_booted() {
    let tb = Testbed::new();
    let host = vm_host(&tb);
    let (first, second) = (runner(&tb, "1"), runner(&tb, "2"));
    install(&tb, &host, &first, "--restart always").ok();
    let list = || tb.sh(&format!("nixpipe-microvm list --on {}", host.target())).ok().stdout;

    assert_eq!(list(), format!("web1\tcurrent\t{}\n", path(&first)));
    install(&tb, &host, &second, "--restart never").ok();
    assert_eq!(list(), format!("web1\toutdated\t{}\n", path(&second)));
    host.sh("systemctl stop microvm@web1.service");
    let json = tb.sh(&format!("nixpipe-microvm list --on {} --json", host.target())).ok();
    let [vm] = &json.json_lines()[..] else { panic!("one VM") };
    assert_eq!(vm["state"], "not booted");
    assert_eq!(vm["running"], false);
}

#[test]
fn remove_stops_the_vm_and_drops_its_links_and_roots_but_keeps_its_state() {
    let tb = Testbed::new();
    let host = vm_host(&tb);
    let first = runner(&tb, "1");
    install(&tb, &host, &first, "--restart always").ok();
    host.sh(&format!("echo disk > {DIR}/state.img"));

    tb.sh(&format!("nixpipe-microvm remove --on {} web1", host.target())).ok();

    assert!(host.journal(UNIT).contains("shutting down web1"), "stopped with its runner's shutdown");
    assert_eq!(host.exec(&format!("systemctl is-active {UNIT}")).status.code(), Some(3));
    assert_eq!(host.sh(&format!("ls -A {DIR}")).trim(), "state.img");
    assert_eq!(host.sh(&format!("ls -A {ROOTS}")).trim(), "");
    tb.sh(&format!("nixpipe-microvm remove --on {} --purge web1", host.target())).ok();
    assert_eq!(host.sh("ls -A /var/lib/microvms").trim(), "");
    let again = tb.sh(&format!("nixpipe-microvm remove --on {} web1", host.target()));
    assert_eq!(again.code, 1);
    assert!(again.error_line().contains("has no MicroVM 'web1'"), "{}", again.stderr);
}

#[test]
fn build_on_host_builds_the_runner_there() {
    let tb = Testbed::new();
    let host = tb.host("host");
    let drv =
        tb.sh(r#"nixpipe-eval --microvm-runner --drv -f "$FIXTURES/web1/configuration.nix" --nixpkgs "$NIXPKGS""#);
    let drv = drv.ok().stdout.trim().to_owned();

    let run = install(&tb, &host, &drv, "--build-on-host").ok();

    let runner = run.stdout.trim().split_once('\t').unwrap().1.to_owned();
    assert!(runner.ends_with("-microvm-qemu-web1"), "{runner}");
    assert_eq!(readlink(&host, &format!("{DIR}/current")), runner);
}

/// Puts `path`'s closure into `vm`'s store without registering it: what a
/// VM sees of the host's store shared with it (virtiofs).
fn share_store(tb: &Testbed, vm: &Host, path: &str) {
    let store = vm.dir().join("nix/store");
    std::fs::create_dir_all(&store).unwrap();
    for p in tb.sh(&format!("nix-store --query --requisites {path}")).ok().stdout.lines() {
        assert!(Command::new("cp").arg("-a").arg(p).arg(&store).status().unwrap().success());
    }
}

#[test]
fn switch_registers_the_closure_in_the_vm_and_passes_each_action_through() {
    let tb = Testbed::new();
    let vm = tb.host("web1");
    let record = runner(&tb, "1");
    let system = std::fs::read_link(format!("{}/share/microvm/system", path(&record))).unwrap();
    let system = system.to_str().unwrap().to_owned();
    share_store(&tb, &vm, &system);
    assert!(!vm.has(&system), "in the VM's store, not in its database");

    for action in ["dry-activate", "test", "boot", "switch"] {
        let run =
            tb.sh(&format!("nixpipe-microvm switch --vm {} {action} $'{}'", vm.target(), record.replace('\t', "\\t")));
        assert_eq!(run.ok().stdout, format!("web1\t{system}\n"));
    }

    assert!(vm.has(&system));
    vm.assert_store_sound();
    let actions: Vec<String> = vm.switch_log().iter().map(|l| l.split(' ').next().unwrap().to_owned()).collect();
    assert_eq!(actions, ["action=dry-activate", "action=test", "action=boot", "action=switch"]);
    assert_eq!(vm.system_profile().as_deref(), Some(&*system));
}

#[test]
fn switch_refuses_a_vm_with_another_name_before_writing_to_it() {
    let tb = Testbed::new();
    let vm = tb.host("db1");
    let record = runner(&tb, "1");
    let system = std::fs::read_link(format!("{}/share/microvm/system", path(&record))).unwrap();
    share_store(&tb, &vm, system.to_str().unwrap());

    let run = tb.sh(&format!("nixpipe-microvm switch --vm {} switch $'{}'", vm.target(), record.replace('\t', "\\t")));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("is host 'db1', not 'web1'; nothing changed"), "{}", run.stderr);
    assert!(!vm.has(system.to_str().unwrap()), "nothing registered");
    assert!(vm.switch_log().is_empty());
}

#[test]
fn a_vm_name_that_escapes_the_state_directory_is_refused_by_every_verb_and_nothing_is_removed() {
    let tb = Testbed::new();
    let host = tb.host("host");
    host.sh("mkdir -p /var/lib/victim && echo keep > /var/lib/victim/data");
    let first = runner(&tb, "1");
    let t = host.target();

    let remove = tb.sh(&format!("nixpipe-microvm remove --on {t} --purge ../victim"));
    let install = tb.sh(&format!("nixpipe-microvm install --on {t} $'../victim\\t{}'", path(&first)));

    for run in [&remove, &install] {
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains("bad name \"../victim\""), "{}", run.stderr);
    }
    assert_eq!(host.sh("cat /var/lib/victim/data"), "keep\n");
    assert!(!host.sh("ls /var/lib").contains("microvms"), "nothing installed");
}

#[test]
fn a_vm_name_too_long_for_its_gc_roots_is_refused_before_anything_changes() {
    let tb = Testbed::new();
    let host = tb.host("host");
    let first = runner(&tb, "1");
    let long = "v".repeat(240);

    let run = tb.sh(&format!("nixpipe-microvm install --on {} $'{long}\\t{}'", host.target(), path(&first)));

    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.error_line().contains("VM name is longer than 236 characters"), "{}", run.stderr);
    assert!(!host.sh("ls /var/lib").contains("microvms"), "nothing installed");
    assert!(!host.has(path(&first)), "nothing copied");
}

#[test]
fn list_into_a_pipe_that_closes_exits_quietly() {
    let tb = Testbed::new();
    let host = tb.host("host");
    let first = runner(&tb, "1");
    let p = path(&first);
    tb.sh(&format!("printf 'web1\\t{p}\\nweb2\\t{p}\\n' | nixpipe-microvm install --on {}", host.target())).ok();

    // `true` reads nothing and is gone before the list comes back.
    let run = tb.sh(&format!("nixpipe-microvm list --on {} | true; echo \"exit ${{PIPESTATUS[0]}}\"", host.target()));

    assert_eq!(run.stdout, "exit 0\n");
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn with_passwordless_sudo_the_password_never_reaches_the_commands_input() {
    let tb = Testbed::new();
    let vm = tb.host("web1");
    vm.sh("echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >> /etc/sudoers");
    vm.start_nix_daemon();
    let record = runner(&tb, "1");
    let system = std::fs::read_link(format!("{}/share/microvm/system", path(&record))).unwrap();
    let system = system.to_str().unwrap().to_owned();
    share_store(&tb, &vm, &system);

    // On a terminal (script gives it one), the password typed: sudo never
    // asks for it, and nix-store --load-db reads only the database.
    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --return --command \
             \"printf 'web1\\t%s\\n' {} | nixpipe-microvm switch --vm {} --ask-sudo-password test\" /dev/null",
            path(&record),
            vm.target_as("deploy"),
        ),
        &format!("{}\n", nixpipe_tests::DEPLOY_PASSWORD),
    );

    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(vm.has(&system), "registered from the database alone");
    vm.assert_store_sound();
    assert_eq!(vm.switch_log().len(), 1);
}

#[test]
fn a_microvm_boots_for_real_restarts_only_for_a_new_runner_and_is_switched_over_ssh() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let host = vm_host(&tb);
    let port = nixpipe_tests::vm::free_port();
    // web1 as a MicroVM that boots: its ssh forwarded to 127.0.0.1:port of
    // the host (which shares this machine's network), a page served.
    let runner_of = |page: &str| {
        let module = format!(
            "testbed.microvmBoots = true; testbed.webPage = \"{page}\"; microvm.forwardPorts = \
             [ {{ from = \"host\"; host.address = \"127.0.0.1\"; host.port = {port}; guest.port = 22; }} ];"
        );
        let config = tb.vm_config(&format!("micro-{page}"), &module);
        let run = tb.sh(&format!("nixpipe-eval --microvm-runner -f {} --nixpkgs \"$NIXPKGS\"", config.display()));
        run.ok().stdout.trim().to_owned()
    };
    let first = runner_of("first");
    install(&tb, &host, &first, "").ok();
    // A first install starts nothing (microvm.nix's autostart would).
    host.sh(&format!("systemctl start {UNIT}"));
    tb.know_vm_at(port);
    let vm = format!("root@127.0.0.1:{port}");
    let in_vm = |command: &str| tb.sh(&format!("ssh $NIX_SSHOPTS -p {port} root@127.0.0.1 '{command}'")).ok().stdout;
    let system_of = |record: &str| std::fs::read_link(format!("{}/share/microvm/system", path(record))).unwrap();
    assert_eq!(in_vm("readlink /run/current-system").trim(), system_of(&first).to_str().unwrap());
    assert_eq!(starts(&host), 1);

    // The same runner again: the VM keeps running.
    install(&tb, &host, &first, "").ok();
    assert_eq!(starts(&host), 1);

    // A new runner, installed without a restart, then switched in place.
    let second = runner_of("second");
    install(&tb, &host, &second, "--restart never").ok();
    let run = tb.sh(&format!("nixpipe-microvm switch --vm {vm} test $'{}'", second.replace('\t', "\\t"))).ok();
    assert!(run.stderr.contains("web1 | restarting the following units: testbed-web.service"), "{}", run.stderr);
    assert_eq!(in_vm("readlink /run/current-system").trim(), system_of(&second).to_str().unwrap());
    assert_eq!(in_vm(&nixpipe_tests::vm::fetch("http://localhost/")), "second");
    assert_eq!(starts(&host), 1, "switched in place, not restarted");

    // Its links say it booted the first runner; the VM itself says it runs
    // the second one's system.
    let listed = |flags: &str| tb.sh(&format!("nixpipe-microvm list --on {} {flags}", host.target())).ok().stdout;
    assert!(listed("").starts_with("web1\toutdated\t"), "{}", listed(""));
    let asked = listed(&format!("--vm {vm} --json"));
    let asked: serde_json::Value = serde_json::from_str(asked.trim()).unwrap();
    assert_eq!(asked["state"], "current");
    assert_eq!(asked["runs"].as_str(), system_of(&second).to_str());
}
