//! `nixpipe-activate --reboot` boots the new generation once: real VMs
//! that boot through their boot loader (systemd-boot under OVMF, GRUB under
//! SeaBIOS, entries laid out as NixOS lays them out), real reboots, and a
//! reset from outside where a watchdog or a person would press it. Every
//! VM starts on generation 1 ("first"); the deploy makes generation 2.

use nixpipe_tests::Testbed;
use serde_json::Value;

const SYSTEMD_BOOT: &str = "boot.loader.systemd-boot.enable = true;";
const GRUB: &str = "boot.loader.grub.enable = true;";

/// A configuration of web1 that boots through `loader`, with `module`.
fn config(tb: &Testbed, name: &str, loader: &str, module: &str) -> String {
    let settings = format!("virtualisation.useBootLoader = true; boot.loader.timeout = 0; {loader} {module}");
    tb.vm_config(name, &settings).display().to_string()
}

/// The VM of the first configuration, started with its monitor at
/// web1.monitor; its record.
fn started(tb: &Testbed, loader: &str) -> Value {
    let first = config(tb, "first", loader, "testbed.webPage = \"first\";");
    let start = format!(
        "nixpipe-eval --vm-runner -f {first} --nixpkgs \"$NIXPKGS\" | QEMU_OPTS='{}' nixpipe-vm start",
        tb.monitor_opts("web1")
    );
    tb.sh(&start).ok().json_lines().remove(0)
}

/// The deploy of `config` as a boot once, the window `seconds`.
fn deploy(target: &str, config: &str, seconds: u64) -> String {
    format!(
        "nixpipe-eval --vm -f {config} --nixpkgs \"$NIXPKGS\" | nixpipe-copy --to {target} \
         | nixpipe-activate --on {target} --reboot --confirm-timeout {seconds} boot"
    )
}

/// What the VM booted, and what its profile holds.
fn booted(tb: &Testbed, vm: &Value) -> (String, String) {
    let run = tb.in_vm(vm, "readlink -f /run/booted-system; readlink /nix/var/nix/profiles/system").ok();
    let mut lines = run.stdout.lines().map(str::to_owned);
    (lines.next().unwrap(), lines.next().unwrap())
}

fn toplevel(run: &nixpipe_tests::Run) -> String {
    run.stdout.split_whitespace().last().unwrap().to_owned()
}

#[test]
fn under_systemd_boot_a_generation_that_comes_back_is_kept_and_made_the_default() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let vm = started(&tb, SYSTEMD_BOOT);
    let target = vm["targetHost"].as_str().unwrap();
    let second = config(&tb, "second", SYSTEMD_BOOT, "testbed.webPage = \"second\";");
    let run = tb.sh(&deploy(target, &second, 180)).ok();
    assert!(
        run.stderr.contains(&format!(
            "rebooting {target} into generation 2 once (nixos-generation-2.conf); its boot default stays generation 1"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("{target} came back on generation 2: it is the boot default now")));
    assert_eq!(booted(&tb, &vm), (toplevel(&run), "system-2-link".into()));
    let loader = tb.in_vm(&vm, "cat /boot/loader/loader.conf").ok();
    assert!(loader.stdout.contains("default nixos-generation-2.conf"), "{}", loader.stdout);
}

#[test]
fn under_grub_a_generation_that_comes_back_is_kept_and_made_the_default() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let vm = started(&tb, GRUB);
    let target = vm["targetHost"].as_str().unwrap();
    let second = config(&tb, "second", GRUB, "testbed.webPage = \"second\";");
    let run = tb.sh(&deploy(target, &second, 180)).ok();
    let entry = "NixOS - All configurations>NixOS - Configuration 2 (";
    assert!(run.stderr.contains(&format!("rebooting {target} into generation 2 once ({entry}")), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{target} came back on generation 2: it is the boot default now")));
    let new = toplevel(&run);
    assert_eq!(booted(&tb, &vm), (new.clone(), "system-2-link".into()));
    // The default entry ("NixOS - Default") boots it, and GRUB cleared the
    // one-time entry when it booted it.
    let grub =
        tb.in_vm(&vm, "sed -n '/NixOS - Default/,/}/p' /boot/grub/grub.cfg; grub-editenv /boot/grub/grubenv list").ok();
    assert!(grub.stdout.contains(&format!("init={new}/init")), "{}", grub.stdout);
    assert!(grub.stdout.contains("next_entry=\n") || !grub.stdout.contains("next_entry=N"), "{}", grub.stdout);
}

#[test]
fn a_generation_whose_sshd_never_starts_is_left_and_the_reset_boots_the_previous_one() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let vm = started(&tb, SYSTEMD_BOOT);
    let target = vm["targetHost"].as_str().unwrap();
    let (first, _) = booted(&tb, &vm);
    let silent = config(&tb, "silent", SYSTEMD_BOOT, "services.openssh.enable = false;");
    let deploy = tb.in_background("deploy", &deploy(target, &silent, 60));
    deploy.wait_for(
        "its boot default is still generation 1: its next boot (a watchdog, a power cycle, a reset) boots that",
        300,
    );
    // The new generation booted, without sshd; the watchdog resets it.
    tb.reset_vm("web1");
    let run = deploy.finish(300);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().ends_with(&format!(
            "{target} booted generation 2 once and did not come back on it within 60 s; its boot default stayed \
             generation 1: it runs that again, the profile is back on it and generation 2 is deleted"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(booted(&tb, &vm), (first, "system-1-link".into()));
    let entries = tb.in_vm(&vm, "ls /boot/loader/entries; ls /nix/var/nix/profiles").ok();
    assert!(
        !entries.stdout.contains("generation-2") && !entries.stdout.contains("system-2-link"),
        "{}",
        entries.stdout
    );
}

#[test]
fn a_generation_that_panics_at_boot_is_left_by_grub_itself() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let vm = started(&tb, GRUB);
    let target = vm["targetHost"].as_str().unwrap();
    let (first, _) = booted(&tb, &vm);
    let panics = config(&tb, "panics", GRUB, "boot.kernelParams = [ \"vm.panic=1\" ];");
    let run = tb.sh(&deploy(target, &panics, 180));
    // Its kernel panics, reboots, and GRUB boots the default: generation 1.
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().ends_with(&format!(
            "{target} booted generation 2 once and came back running {first}; its boot default stayed generation 1: \
             it runs that again, the profile is back on it and generation 2 is deleted"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(booted(&tb, &vm), (first, "system-1-link".into()));
    let grub =
        tb.in_vm(&vm, "grep -c 'Configuration 2 ' /boot/grub/grub.cfg; grub-editenv /boot/grub/grubenv list").ok();
    assert!(grub.stdout.starts_with("0\n") && !grub.stdout.contains("next_entry=N"), "{}", grub.stdout);
}

#[test]
fn with_the_deployer_killed_during_the_wait_the_next_reset_still_boots_the_previous_generation() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let vm = started(&tb, SYSTEMD_BOOT);
    let target = vm["targetHost"].as_str().unwrap();
    let (first, _) = booted(&tb, &vm);
    let second = config(&tb, "second", SYSTEMD_BOOT, "testbed.webPage = \"second\";");
    let deploy = tb.in_background("deploy", &deploy(target, &second, 180));
    deploy.wait_for(&format!("rebooting {target}: waiting for it to answer"), 300);
    deploy.kill();
    // It boots the new generation this once, and nobody makes it the
    // default: a reset later boots the previous one.
    tb.until_in_vm(&vm, &format!("[ \"$(readlink -f /run/booted-system)\" != {first} ]"), 180);
    tb.reset_vm("web1");
    tb.until_in_vm(&vm, &format!("[ \"$(readlink -f /run/booted-system)\" = {first} ]"), 180);
}

#[test]
fn a_host_without_a_boot_loader_is_refused_a_reboot_with_a_confirmation_window() {
    let tb = Testbed::new();
    let host = tb.host("web1");
    let system = tb.system("web1");
    let run = tb.sh(&format!(
        "nixpipe-copy --to {t} {system} | nixpipe-activate --on {t} --reboot --confirm-timeout 60 boot",
        t = host.target()
    ));
    assert_eq!(run.code, 1);
    // (A host under EFI firmware says it did not boot through systemd-boot.)
    let line = run.error_line();
    let refused = format!(
        "nixpipe-activate: {system}: {} cannot boot a generation once, so --reboot --confirm-timeout could not fall \
         back: it ",
        host.target()
    );
    assert!(line.starts_with(&refused), "{line}");
    assert!(
        line.ends_with(
            "no /boot/grub/grub.cfg); nothing changed (without --confirm-timeout, --reboot makes the new generation \
             the boot default)"
        ) || line.contains("and has no /boot/grub/grub.cfg; nothing changed"),
        "{line}"
    );
    let profile = host.exec("readlink /nix/var/nix/profiles/system || echo none");
    assert_eq!(String::from_utf8_lossy(&profile.stdout).trim(), "none");
}
