//! nixpipe-activate and today's NixOS activation (switch-to-configuration-ng),
//! end to end on testbed hosts booting systemd: the GC window between copy
//! and activate, the platform check, switch inhibitors, each exit status of
//! the switch, NixOS's own lock, `check` and NIXOS_INSTALL_BOOTLOADER, and
//! whether a reboot is needed.

use nixpipe_tests::proxy::{Link, Proxy};
use nixpipe_tests::{Host, Run, Testbed, BOOT_FALLBACK};

/// A host booting systemd, running `running`, with `next` copied to it.
fn running_with_copied(tb: &Testbed, running: &str, next: &str) -> Host {
    let web1 = tb.systemd_host("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {running} | nixpipe-activate --on {t} switch")).ok();
    tb.sh(&format!("nixpipe-copy --to {t} $'web1\\t{next}'")).ok();
    web1
}

fn activate(tb: &Testbed, host: &Host, flags: &str, system: &str) -> Run {
    tb.sh(&format!("nixpipe-activate --on {} {flags} $'web1\\t{system}'", host.target()))
}

fn activate_as_deploy(tb: &Testbed, host: &Host, flags: &str, system: &str) -> Run {
    tb.sh(&format!("nixpipe-activate --on {} {flags} $'web1\\t{system}'", host.target_as("deploy")))
}

fn running(host: &Host) -> String {
    host.sh("readlink /run/current-system").trim().to_owned()
}

#[test]
fn a_copied_system_survives_a_garbage_collection_until_it_is_activated() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let system = tb.system("web1");

    tb.sh(&format!("nixpipe-copy --to {} $'web1\\t{system}'", web1.target())).ok();
    web1.sh("nix-store --gc >/dev/null 2>&1");
    assert!(web1.has(&system), "the GC root kept it");
    assert!(
        web1.gc_roots().contains(&format!("/nix/var/nix/gcroots/nixpipe/web1 -> {system}")),
        "{:?}",
        web1.gc_roots()
    );
    activate(&tb, &web1, "switch", &system).ok();

    assert_eq!(running(&web1), system);
    assert!(!web1.dir().join("nix/var/nix/gcroots/nixpipe/web1").exists(), "the profile holds it now");
}

#[test]
fn without_a_gc_root_a_garbage_collection_takes_the_copy_and_activation_refuses() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let system = tb.system("web1");

    tb.sh(&format!("nixpipe-copy --no-gc-root --to {} $'web1\\t{system}'", web1.target())).ok();
    web1.sh("nix-store --gc >/dev/null 2>&1");
    let run = activate(&tb, &web1, "switch", &system);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("is not on"), "{}", run.stderr);
    assert_eq!(web1.system_profile(), None);
}

#[test]
fn a_system_for_another_platform_is_refused_and_nothing_changes() {
    let tb = Testbed::new();
    let arm = tb.system_with("web1", r#"testbed.systemFile = "aarch64-linux";"#);
    let web1 = tb.systemd_host("web1");
    tb.sh(&format!("nixpipe-copy --to {} {arm}", web1.target())).ok();

    let run = activate(&tb, &web1, "switch", &arm);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("is built for aarch64-linux, and") && error.contains("x86_64-linux"), "{error}");
    assert!(error.ends_with("nothing changed"), "{error}");
    assert!(web1.switch_log().is_empty());
    assert_eq!(web1.system_profile(), None);
}

#[test]
fn changed_switch_inhibitors_refuse_a_switch_naming_them_and_change_nothing() {
    let tb = Testbed::new();
    let old = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "dbus"; kernel = "6.1"; };"#);
    let new = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "broker"; kernel = "6.1"; };"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json switch", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("is inhibited: dbus changed"), "{error}");
    assert!(error.contains("--reboot boot") && error.contains("--if-inhibited boot"), "{error}");
    assert_eq!(run.json_lines()[0]["switchInhibitors"], serde_json::json!(["dbus"]));
    assert_eq!(running(&web1), old);
    assert_eq!(web1.system_profile().as_deref(), Some(old.as_str()));
    assert_eq!(web1.switch_log().len(), 1, "only the first deployment's switch");
}

#[test]
fn if_inhibited_boot_makes_the_inhibited_system_the_boot_default_instead() {
    let tb = Testbed::new();
    let old = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "dbus"; };"#);
    let new = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "broker"; };"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--if-inhibited boot --json switch", &new).ok();

    assert!(
        run.stderr.contains("switch inhibited (dbus changed): making it the boot default instead"),
        "{}",
        run.stderr
    );
    let record = &run.json_lines()[0];
    assert_eq!((record["action"].as_str(), record["result"].as_str()), (Some("boot"), Some("activated")));
    assert_eq!(web1.system_profile().as_deref(), Some(new.as_str()));
    assert_eq!(running(&web1), old, "activated at the next boot");
    assert!(web1.switch_log()[1].starts_with(&format!("action=boot toplevel={new} ")));
}

#[test]
fn a_failed_pre_switch_check_puts_the_profile_back_and_activates_nothing() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.preSwitchCheckFails = true;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json switch", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("before activating anything"), "{error}");
    assert!(error.ends_with("the profile is back on the previous generation"), "{error}");
    assert_eq!(run.json_lines()[0]["rolledBack"], false);
    assert_eq!(web1.system_profile().as_deref(), Some(old.as_str()));
    assert_eq!(running(&web1), old);
    assert_eq!(web1.switch_log().len(), 2, "nothing re-activated: {:?}", web1.switch_log());
}

#[test]
fn failed_units_are_named_and_roll_the_system_back_by_default() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with(
        "web1",
        r#"system.nixos.version = "2"; testbed.unitsFail = true; testbed.failedUnits = [ "nginx.service" "acme.service" ];"#,
    );
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json switch", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("left units failed: nginx.service, acme.service; rolled back"), "{error}");
    let record = &run.json_lines()[0];
    assert_eq!((record["result"].as_str(), record["rolledBack"].as_bool()), (Some("units-failed"), Some(true)));
    assert_eq!(record["failedUnits"], serde_json::json!(["nginx.service", "acme.service"]));
    assert_eq!(running(&web1), old);
    assert_eq!(web1.system_profile().as_deref(), Some(old.as_str()));
}

#[test]
fn keep_on_unit_failure_keeps_the_new_system_and_says_so() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.unitsFail = true;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--keep-on-unit-failure --json switch", &new);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("testbed-broken.service; kept (--keep-on-unit-failure)"), "{}", run.stderr);
    let record = &run.json_lines()[0];
    assert_eq!((record["result"].as_str(), record["rolledBack"].as_bool()), (Some("units-failed"), Some(false)));
    assert_eq!(running(&web1), new);
    assert_eq!(web1.system_profile().as_deref(), Some(new.as_str()));
}

#[test]
fn a_changed_init_interface_is_a_reboot_needed_not_a_failure() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.initInterfaceVersion = "systemd-2";"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json switch", &new).ok();

    let record = &run.json_lines()[0];
    assert_eq!((record["result"].as_str(), record["needsReboot"].as_bool()), (Some("reboot-needed"), Some(true)));
    assert!(run.stderr.contains("the init interface changed"), "{}", run.stderr);
    assert_eq!(web1.system_profile().as_deref(), Some(new.as_str()), "the boot default");
    assert_eq!(running(&web1), old, "nothing activated");
    assert!(!web1.dir().join("nix/var/nix/gcroots/nixpipe/web1").exists(), "the profile holds it now");
}

#[test]
fn a_changed_init_interface_on_test_activates_nothing_and_does_not_promise_a_reboot() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.initInterfaceVersion = "systemd-2";"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json test", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.contains("test does not make it the boot default: a reboot boots the running system again"),
        "{error}"
    );
    assert!(!run.stderr.contains("reboot it to activate it"), "{}", run.stderr);
    let record = &run.json_lines()[0];
    assert_eq!((record["result"].as_str(), record["needsReboot"].as_bool()), (Some("refused"), None), "{record}");
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)), "nothing points at it");
}

#[test]
fn a_changed_init_interface_on_dry_activate_changes_nothing_and_says_why() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.initInterfaceVersion = "systemd-2";"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json dry-activate", &new);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("only a boot can start it"), "{}", run.stderr);
    assert_eq!(run.json_lines()[0]["result"], "refused");
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
}

#[test]
fn exit_1_after_activating_is_a_full_rollback_decided_by_what_the_host_shows() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    // What an interrupted switch's leftover in /run/nixos/reload-list does to
    // stc-ng: "Error: Failed to get unit ...", exit 1, after activating.
    let new = tb.system_with(
        "web1",
        r#"system.nixos.version = "2"; testbed.stopsUnits = [ "nginx.service" ]; testbed.errorAfterActivating = "Failed to get unit nginx.service";"#,
    );
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--json switch", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("(exit 1) after it had begun activating; rolled back"), "{error}");
    assert_eq!(run.json_lines()[0]["rolledBack"], true);
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old.clone())));
    let log = web1.switch_log();
    assert_eq!(log.len(), 3, "the system before activated again: {log:?}");
    assert!(log[2].starts_with(&format!("action=switch toplevel={old} ")), "{log:?}");
}

#[test]
fn exit_1_from_the_boot_loader_before_activating_puts_only_the_profile_back() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.bootloaderFails = true;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "switch", &new);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("(exit 1) before activating anything"), "{}", run.stderr);
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
    assert_eq!(web1.switch_log().len(), 2, "nothing re-activated");
}

#[test]
fn a_failed_activation_script_exit_2_is_a_full_rollback() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.switchFails = true;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "switch", &new);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("(exit 2) after it had begun activating; rolled back"), "{}", run.stderr);
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
    assert_eq!(web1.switch_log().len(), 3);
}

#[test]
fn an_exit_status_nobody_documents_is_taken_as_maybe_activated_and_rolled_back_fully() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    // The Perl switch-to-configuration's die: errno, anywhere.
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.dieWithErrno = 13;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "switch", &new);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("(exit 13, which may come after activating); rolled back"), "{}", run.stderr);
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
    assert_eq!(web1.switch_log().len(), 3, "the system before re-activated");
}

#[test]
fn failed_user_units_are_named_with_the_system_units() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with(
        "web1",
        r#"system.nixos.version = "2"; testbed.failedUserUnits = [ "syncthing.service" ]; testbed.unitsFail = true; testbed.failedUnits = [ "nginx.service" ];"#,
    );
    let only_user =
        tb.system_with("web1", r#"system.nixos.version = "3"; testbed.failedUserUnits = [ "pipewire.service" ];"#);
    let web1 = running_with_copied(&tb, &old, &new);
    tb.sh(&format!("nixpipe-copy --to {} {only_user}", web1.target())).ok();

    let both = activate(&tb, &web1, "--json switch", &new);
    let user = activate(&tb, &web1, "--json switch", &only_user);

    assert_eq!(both.json_lines()[0]["failedUnits"], serde_json::json!(["syncthing.service", "nginx.service"]));
    assert_eq!(user.json_lines()[0]["failedUnits"], serde_json::json!(["pipewire.service"]));
    assert!(user.error_line().contains("left units failed: pipewire.service; rolled back"), "{}", user.stderr);
    assert_eq!(running(&web1), old);
}

#[test]
fn a_system_that_adds_a_switch_inhibitor_switches_as_nixos_lets_it() {
    let tb = Testbed::new();
    let old = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "dbus"; };"#);
    let new = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "dbus"; kernel = "6.12"; };"#);
    let web1 = running_with_copied(&tb, &old, &new);

    activate(&tb, &web1, "switch", &new).ok();

    assert_eq!(running(&web1), new);
}

#[test]
fn dry_activate_is_not_inhibited_as_nixos_skips_the_check_for_it() {
    let tb = Testbed::new();
    let old = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "dbus"; };"#);
    let new = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "broker"; };"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "dry-activate", &new).ok();

    assert!(run.stderr.contains("Not checking switch inhibitors (action = dry-activate)"), "{}", run.stderr);
    assert!(run.stderr.contains("would activate the configuration..."), "{}", run.stderr);
    assert_eq!(running(&web1), old);
}

#[test]
fn a_host_that_only_emulates_a_platform_is_not_switched_to_it() {
    let tb = Testbed::new();
    tb.build_aarch64_here();
    let old = tb.system("web1");
    let arm = tb.system_with("web1", r#"nixpkgs.system = "aarch64-linux";"#);
    let web1 = running_with_copied(&tb, &old, &arm);
    // As NixOS's boot.binfmt.emulatedSystems leaves it; qemu-user is
    // registered with binfmt_misc on this machine (make test does it).
    web1.sh("echo 'extra-platforms = aarch64-linux' >> /etc/nix/nix.conf");

    let run = activate(&tb, &web1, "switch", &arm);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("is built for aarch64-linux"), "{error}");
    assert!(error.contains("aarch64-linux only under emulation (extra-platforms); nothing changed"), "{error}");
    assert_eq!(web1.switch_log().len(), 1, "its switch never ran");
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
}

#[test]
fn the_hosts_log_and_our_steps_come_in_the_order_they_happened() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.switchFails = true;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "switch", &new);

    let lines: Vec<&str> = run.stderr.lines().collect();
    let at = |what: &str, from: usize| {
        from + lines[from..].iter().position(|l| l.contains(what)).unwrap_or_else(|| panic!("{what}: {}", run.stderr))
    };
    let switching = at(&format!("switch-to-configuration switch {new}"), 0);
    let failed = at("Failed to run activate script", switching);
    let rolling = at("rolling back", failed);
    let back = at(&format!("switch-to-configuration switch {old}"), rolling);
    at("activating the configuration...", back);
}

#[test]
fn a_busy_nixos_lock_is_waited_for_and_its_holder_named() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);
    // Another switch-to-configuration (nixos-rebuild, an auto-upgrade) holds it for 3 s.
    web1.sh("(flock /run/nixos/switch-to-configuration.lock sleep 3 </dev/null >/dev/null 2>&1 &); sleep 0.3");

    let run = activate(&tb, &web1, "switch", &new).ok();

    assert!(run.stderr.contains("waiting for NixOS's switch lock, held by pid"), "{}", run.stderr);
    assert!(run.stderr.contains("sleep 3"), "the holder's command: {}", run.stderr);
    assert_eq!(running(&web1), new);
}

#[test]
fn a_nixos_lock_held_past_the_lock_timeout_changes_nothing_and_names_its_holder() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);
    web1.sh("(flock /run/nixos/switch-to-configuration.lock sleep 6 </dev/null >/dev/null 2>&1 &); sleep 0.3");

    let run = activate(&tb, &web1, "--lock-timeout 1 --json switch", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("NixOS's own lock on") && error.contains("sleep 6"), "{error}");
    assert!(error.ends_with("nothing activated"), "{error}");
    assert_eq!(run.json_lines()[0]["rolledBack"], false);
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
    assert_eq!(web1.switch_log().len(), 1, "only the first deployment switched");
}

#[test]
fn check_runs_the_pre_switch_checks_only() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);

    activate(&tb, &web1, "check", &new).ok();

    assert!(web1.switch_log()[1].starts_with(&format!("action=check toplevel={new} ")));
    assert_eq!(running(&web1), old);
    assert_eq!(web1.system_profile().as_deref(), Some(old.as_str()));
}

#[test]
fn check_on_a_system_without_the_action_is_one_clear_line() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.hasCheckAction = false;"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "check", &new);

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("has no check action"), "{}", run.stderr);
    assert_eq!(web1.system_profile().as_deref(), Some(old.as_str()));
}

#[test]
fn install_bootloader_passes_nixos_install_bootloader_only_when_asked() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);

    activate(&tb, &web1, "--install-bootloader boot", &new).ok();

    let log = web1.switch_log();
    assert!(!log[0].contains("bootloader="), "{log:?}");
    assert!(
        log[1].starts_with(&format!("action=boot toplevel={new} ")) && log[1].contains(" bootloader=1 "),
        "{log:?}"
    );
    let run = activate(&tb, &web1, "--install-bootloader test", &new);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn a_switch_says_when_the_booted_kernel_is_not_the_new_one() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let same_kernel = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let new_kernel = tb.system_with("web1", r#"system.nixos.version = "3"; boot.kernelVersion = "6.12.1";"#);
    let web1 = running_with_copied(&tb, &old, &same_kernel);
    tb.sh(&format!("nixpipe-copy --to {} {new_kernel}", web1.target())).ok();
    // What the boot of `old` left: NixOS links /run/booted-system at boot.
    web1.sh(&format!("ln -sfn {old} /run/booted-system"));

    let same = activate(&tb, &web1, "--json switch", &same_kernel).ok();
    let changed = activate(&tb, &web1, "--json switch", &new_kernel).ok();

    assert_eq!(same.json_lines()[0]["needsReboot"], false);
    assert_eq!(changed.json_lines()[0]["needsReboot"], true);
    assert!(changed.stderr.contains("reboot needed:"), "{}", changed.stderr);
}

/// PID 1's start time on `host`: another after a restart.
fn pid1_started(host: &Host) -> String {
    host.sh("cut -d' ' -f22 /proc/1/stat").trim().to_owned()
}

#[test]
fn boot_with_reboot_restarts_the_host_into_the_new_system_and_checks_it() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);
    let before = pid1_started(&web1);

    let run = activate(&tb, &web1, "--reboot --json boot", &new).ok();

    let record = &run.json_lines()[0];
    assert_eq!((record["result"].as_str(), record["rebooted"].as_bool()), (Some("activated"), Some(true)));
    assert_ne!(pid1_started(&web1), before, "it really restarted");
    assert_eq!(running(&web1), new);
    assert_eq!(web1.sh("readlink /run/booted-system").trim(), new);
}

#[test]
fn an_inhibited_switch_with_reboot_boots_the_new_system() {
    let tb = Testbed::new();
    let old = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "dbus"; };"#);
    let new = tb.system_with("web1", r#"system.switch.inhibitors = { dbus = "broker"; };"#);
    let web1 = running_with_copied(&tb, &old, &new);

    activate(&tb, &web1, "--if-inhibited boot --reboot switch", &new).ok();

    assert_eq!(running(&web1), new);
    assert_eq!(web1.sh("readlink /run/booted-system").trim(), new);
}

#[test]
fn a_host_that_comes_back_on_the_old_system_is_an_error_naming_both() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);
    web1.sh(&format!("touch {BOOT_FALLBACK}"));

    let run = activate(&tb, &web1, "--reboot boot", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains(&format!("came back from its reboot running {old}, not {new}")), "{error}");
    assert_eq!(running(&web1), old);
}

#[test]
fn a_container_cannot_boot_a_generation_once_so_a_reboot_with_a_confirmation_window_is_refused() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);

    let run = activate(&tb, &web1, "--reboot --confirm-timeout 60 boot", &new);

    // Without a boot loader of its own, nothing would boot the previous
    // generation at its next boot: the rollback this window promises.
    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.contains("cannot boot a generation once, so --reboot --confirm-timeout could not fall back"),
        "{error}"
    );
    assert!(error.contains("nothing changed"), "{error}");
    assert_eq!(web1.system_profile().as_deref(), Some(old.as_str()));
    assert_eq!(running(&web1), old);
}

#[test]
fn a_host_that_never_comes_back_is_named_within_the_reboot_timeout() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied(&tb, &old, &new);
    // Its network never comes back: the proxy takes no new connection once
    // the reboot was asked for.
    let proxy = Proxy::start(web1.port, Link::Delay(std::time::Duration::ZERO));
    let sshopts = format!("{} -o HostKeyAlias=[127.0.0.1]:{}", tb.nix_sshopts(), web1.port);
    let before = web1.boot();

    let run = std::thread::scope(|s| {
        let run = s.spawn(|| {
            tb.sh(&format!(
                "NIX_SSHOPTS='{sshopts}' nixpipe-activate --on root@127.0.0.1:{} --reboot --reboot-timeout 8 boot $'web1\\t{new}'",
                proxy.port
            ))
        });
        // Once it went down for the reboot.
        while web1.boot() == before {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        proxy.refuse_new_connections();
        run.join().unwrap()
    });

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.contains(&format!("root@127.0.0.1:{} did not answer within 8 s of its reboot", proxy.port)),
        "{error}"
    );
}

/// [`running_with_copied`], with the nix-daemon that lets `deploy` at the store.
fn running_with_copied_for_deploy(tb: &Testbed, running: &str, next: &str) -> Host {
    let host = running_with_copied(tb, running, next);
    host.start_nix_daemon();
    host
}

/// Polkit's answer on `host` when `deploy` asks to start a unit as root
/// (what run0 and systemd-run ask): YES or NO. polkitd is restarted: a
/// running one would read the new rule a moment later, on its own.
fn polkit_answers_deploy(host: &Host, answer: &str) {
    host.sh(&format!(
        "mkdir -p /etc/polkit-1/rules.d && cat >/etc/polkit-1/rules.d/50-deploy.rules <<'EOF'
polkit.addRule(function(action, subject) {{
  if (action.id == 'org.freedesktop.systemd1.manage-units' && subject.user == 'deploy') return polkit.Result.{answer};
}});
EOF
systemctl restart polkit.service"
    ));
}

const SYSTEMD_RUN: &str = "--sudo-cmd 'systemd-run --uid=0 --pipe --wait --quiet'";

#[test]
fn systemd_run_becomes_root_where_polkit_lets_the_user_in() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied_for_deploy(&tb, &old, &new);
    polkit_answers_deploy(&web1, "YES");

    activate_as_deploy(&tb, &web1, &format!("{SYSTEMD_RUN} --confirm-timeout 20 switch"), &new).ok();

    assert_eq!(running(&web1), new);
    assert!(web1.switch_log()[1].contains(" uid=0 "), "{:?}", web1.switch_log());
}

#[test]
fn run0_becomes_root_where_polkit_lets_the_user_in_and_is_named_where_systemd_has_none() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied_for_deploy(&tb, &old, &new);
    polkit_answers_deploy(&web1, "YES");

    let run = activate_as_deploy(&tb, &web1, "--sudo-cmd run0 switch", &new);

    // run0 came with systemd 256: trixie and sid have it, bookworm not.
    match web1.exec("command -v run0").status.success() {
        true => assert_eq!((run.code, running(&web1)), (0, new), "{}", run.stderr),
        false => {
            assert_eq!(run.code, 1);
            let error = run.error_line();
            assert!(error.contains("run0 is not on deploy@") && error.ends_with("nothing changed"), "{error}");
            assert_eq!(running(&web1), old);
        }
    }
}

#[test]
fn a_user_polkit_refuses_is_told_in_one_line_and_nothing_changes() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied_for_deploy(&tb, &old, &new);
    polkit_answers_deploy(&web1, "NO");

    let run = activate_as_deploy(&tb, &web1, &format!("{SYSTEMD_RUN} switch"), &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.contains("systemd-run on deploy@") && error.contains("does not let this user become root"),
        "{error}"
    );
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
}

#[test]
fn doas_becomes_root_for_a_user_sudo_would_ask_a_password_of() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied_for_deploy(&tb, &old, &new);
    web1.sh("echo 'permit nopass deploy as root' >/etc/doas.conf");

    activate_as_deploy(&tb, &web1, "--sudo-cmd 'doas -n' --confirm-timeout 20 switch", &new).ok();

    assert_eq!(running(&web1), new);
}

#[test]
fn a_doas_that_asks_to_authenticate_is_told_in_one_line_and_nothing_changes() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let web1 = running_with_copied_for_deploy(&tb, &old, &new);
    web1.sh("echo 'permit deploy as root' >/etc/doas.conf");

    let run = activate_as_deploy(&tb, &web1, "--sudo-cmd 'doas -n' switch", &new);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("doas on deploy@") && error.contains("asks this user to authenticate"), "{error}");
    assert_eq!((running(&web1), web1.system_profile()), (old.clone(), Some(old)));
}
