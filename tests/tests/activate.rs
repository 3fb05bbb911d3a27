//! nixpipe-activate's safety net, end to end on testbed hosts: rollback,
//! dropped connections, the lock, magic rollback, sudo with one password,
//! and the ways to choose what is activated.

use nixpipe_tests::proxy::{Link, Proxy};
use nixpipe_tests::{Host, Run, SecretWatch, Testbed, DEPLOY_PASSWORD, MEASURING_MEMORY};
use std::thread;
use std::time::{Duration, Instant};

/// Copies `system` to `host` and switches to it, as root.
fn deploy(tb: &Testbed, host: &Host, system: &str) {
    let t = host.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system} | nixpipe-activate --on {t} --no-hostname-check switch")).ok();
}

/// Waits until switch-to-configuration has logged `lines` calls on `host`.
fn wait_for_switches(host: &Host, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.switch_log().len() < lines {
        assert!(Instant::now() < deadline, "switch-to-configuration did not run on {}", host.hostname);
        thread::sleep(Duration::from_millis(50));
    }
}

/// Switches `host` (running a system already) to `system` with
/// `--confirm-timeout 3`, through a proxy that refuses new connections
/// `after` the switch started, as a new system that locks ssh out does;
/// `extra` ssh options on top of the testbed's.
fn switch_then_lock_out(tb: &Testbed, host: &Host, system: &str, extra: &str, after: Duration) -> Run {
    let proxy = Proxy::start(host.port, Link::Delay(Duration::ZERO));
    let sshopts = format!("{} -o HostKeyAlias=[127.0.0.1]:{} {extra}", tb.nix_sshopts(), host.port);
    thread::scope(|s| {
        let run = s.spawn(|| {
            tb.sh(&format!(
                "NIX_SSHOPTS='{sshopts}' nixpipe-activate --on root@127.0.0.1:{} --confirm-timeout 3 switch $'{}\\t{system}'",
                proxy.port, host.hostname
            ))
        });
        wait_for_switches(host, 2);
        thread::sleep(after);
        proxy.refuse_new_connections();
        run.join().unwrap()
    })
}

/// The transient units nixpipe-activate's jobs ran as on `host` (a
/// systemd host), by its journal, and what the journal says of the last.
fn activation_units(host: &Host) -> (Vec<String>, String) {
    let units = host.sh("journalctl --no-pager -F UNIT; journalctl --no-pager -F _SYSTEMD_UNIT");
    let mut units: Vec<String> =
        units.lines().filter(|u| u.starts_with("nixpipe-activate-")).map(str::to_owned).collect();
    units.sort();
    units.dedup();
    let journal = units.last().map(|u| host.journal(u)).unwrap_or_default();
    (units, journal)
}

/// web1 (booting systemd) running a good system, with a system whose
/// switch fails copied.
fn running_good_with_bad_copied(tb: &Testbed) -> (Host, String, String) {
    let web1 = tb.systemd_host("web1");
    let good = tb.system("web1");
    let bad = tb.system_with("web1", "testbed.switchFails = true;");
    deploy(tb, &web1, &good);
    tb.sh(&format!("nixpipe-copy --to {} {bad}", web1.target())).ok();
    (web1, good, bad)
}

#[test]
fn a_failed_switch_rolls_back_to_the_previous_generation_and_exits_1() {
    let tb = Testbed::new();
    let (web1, good, bad) = running_good_with_bad_copied(&tb);
    let t = web1.target();

    let run = tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{bad}'"));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("switch-to-configuration switch failed"), "{error}");
    assert!(error.ends_with("rolled back: the previous generation is active again"), "{error}");
    assert!(run.stdout.is_empty());
    assert_eq!(web1.system_profile().as_deref(), Some(&*good));
    let generations = web1.sh("ls /nix/var/nix/profiles | grep ^system-");
    assert_eq!(generations.trim(), "system-1-link", "the failed generation is deleted");
    let log = web1.switch_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log[1].starts_with(&format!("action=switch toplevel={bad} ")), "{log:?}");
    assert!(log[2].starts_with(&format!("action=switch toplevel={good} ")), "re-activated: {log:?}");
    assert_eq!(web1.sh("readlink /run/current-system").trim(), good);
}

#[test]
fn killing_ssh_mid_switch_still_completes_the_switch_and_reports_it() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let slow = tb.system_with("web1", "testbed.switchSleep = 3;");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {slow}")).ok();
    let port = web1.port;
    let killer = thread::spawn({
        let log = web1.dir().join("var-lib/nixpipe-testbed/switch.log");
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !log.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            // The deployer's ssh to this host, as a dropped link kills it.
            std::process::Command::new("pkill").args(["-KILL", "-f", &format!("^ssh .*-p {port} ")]).status().unwrap()
        }
    });

    let run = tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{slow}'"));

    assert!(killer.join().unwrap().success(), "an ssh was killed mid-switch");
    let run = run.ok();
    assert!(run.stderr.contains("lost the connection"), "{}", run.stderr);
    assert_eq!(run.stdout, format!("web1\t{slow}\n"));
    assert_eq!(web1.system_profile().as_deref(), Some(&*slow));
    assert_eq!(web1.switch_log().len(), 1, "switched once, not again");
    assert_eq!(web1.sh("readlink /run/current-system").trim(), slow);
    let (units, journal) = activation_units(&web1);
    assert_eq!(units.len(), 1, "one job, its unit outliving the connection: {units:?}");
    assert!(journal.contains("Deactivated successfully"), "{journal}");
}

#[test]
fn on_a_host_with_systemd_the_switch_runs_as_a_transient_unit() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let system = tb.system("web1");
    let t = web1.target();

    tb.sh(&format!("nixpipe-copy --to {t} {system} | nixpipe-activate --on {t} switch")).ok();

    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
    assert_eq!(web1.switch_log().len(), 1);
    let (units, journal) = activation_units(&web1);
    let [unit] = &units[..] else { panic!("one unit: {units:?}") };
    assert!(journal.contains("Deactivated successfully"), "the job ran to its end as {unit}: {journal}");
    assert_eq!(web1.sh(&format!("systemctl list-units --all --no-legend {unit}")), "", "collected");
}

#[test]
fn a_second_activation_fails_fast_and_says_who_holds_the_lock() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let slow = tb.system_with("web1", "testbed.switchSleep = 6;");
    let other = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {slow} {other}")).ok();
    let first = thread::scope(|s| {
        let first = s.spawn(|| tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{slow}'")));
        wait_for_switches(&web1, 1);

        let second = tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{other}'"));

        assert_eq!(second.code, 1);
        assert!(!first.is_finished(), "fails at once, without waiting for the lock");
        let error = second.error_line();
        assert!(error.contains(&format!("another nixpipe activation is running on {t}: ")), "{error}");
        assert!(error.contains("(nixpipe-activate pid ") && error.ends_with("; nothing changed"), "{error}");
        first.join().unwrap()
    });
    first.ok();
    assert_eq!(web1.system_profile().as_deref(), Some(&*slow));
    assert_eq!(web1.switch_log().len(), 1);
}

#[test]
fn the_host_rolls_itself_back_when_no_new_connection_can_confirm() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let good = tb.system("web1");
    let locks_us_out = tb.system_with("web1", r#"system.nixos.version = "2"; testbed.switchSleep = 2;"#);
    deploy(&tb, &web1, &good);
    tb.sh(&format!("nixpipe-copy --to {} {locks_us_out}", web1.target())).ok();
    // A shared connection that stays up, as deploy-rs users had (#106): the
    // confirmation must not ride on it.
    let shared = format!("-o ControlMaster=auto -o ControlPath={}/cm-%C -o ControlPersist=60", tb.path().display());

    let run = switch_then_lock_out(&tb, &web1, &locks_us_out, &shared, Duration::ZERO);

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("no new connection confirmed the switch within 3 s"), "{error}");
    assert!(error.ends_with("rolled back: the previous generation is active again"), "{error}");
    assert_eq!(web1.system_profile().as_deref(), Some(&*good));
    let log = web1.switch_log();
    assert!(log[2].starts_with(&format!("action=switch toplevel={good} ")), "re-activated: {log:?}");
}

#[test]
fn a_switch_confirmed_over_a_new_connection_stays() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {t} --confirm-timeout 10 --json switch $'web1\\t{system}'")).ok();

    let [record] = &run.json_lines()[..] else { panic!("one record: {}", run.stdout) };
    assert_eq!(record["result"], "activated");
    assert_eq!(record["rolledBack"], false);
    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
    assert_eq!(web1.switch_log().len(), 1);
}

#[test]
fn json_reports_the_previous_system_and_the_rollback_of_a_failed_switch() {
    let tb = Testbed::new();
    let (web1, good, bad) = running_good_with_bad_copied(&tb);
    let t = web1.target();

    let run = tb.sh(&format!("nixpipe-activate --on {t} --json switch $'web1\\t{bad}'"));

    assert_eq!(run.code, 1);
    let [record] = &run.json_lines()[..] else { panic!("one record: {}", run.stdout) };
    assert_eq!(record["name"], "web1");
    assert_eq!(record["path"], bad);
    assert_eq!(record["target"], t);
    assert_eq!(record["action"], "switch");
    assert_eq!(record["previous"], good);
    assert_eq!(record["result"], "failed");
    assert_eq!(record["rolledBack"], true);
}

#[test]
fn test_and_dry_activate_leave_the_system_profile_alone() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();

    tb.sh(&format!("nixpipe-activate --on {t} dry-activate $'web1\\t{system}'")).ok();
    tb.sh(&format!("nixpipe-activate --on {t} test $'web1\\t{system}'")).ok();

    assert_eq!(web1.system_profile(), None);
    let log = web1.switch_log();
    assert!(log[0].starts_with("action=dry-activate ") && log[1].starts_with("action=test "), "{log:?}");
    assert_eq!(web1.sh("readlink /run/current-system").trim(), system);
}

#[test]
fn specialisation_activates_it_and_the_profile_gets_the_system() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system_with("web1", r#"specialisation.gpu.configuration = { system.nixos.version = "gpu"; };"#);
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();
    let gpu = web1.sh(&format!("readlink -f {system}/specialisation/gpu")).trim().to_owned();

    tb.sh(&format!("nixpipe-activate --on {t} --specialisation gpu switch $'web1\\t{system}'")).ok();
    let missing = tb.sh(&format!("nixpipe-activate --on {t} --specialisation nogpu switch $'web1\\t{system}'"));

    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
    assert_eq!(
        web1.switch_log(),
        [format!("action=switch toplevel={gpu} uid=0 tty=no arch={}", std::env::consts::ARCH)]
    );
    assert_eq!(missing.code, 1);
    assert!(missing.error_line().ends_with("has no specialisation 'nogpu' (it has: gpu)"), "{}", missing.stderr);
}

#[test]
fn rollback_goes_back_one_generation_and_activates_it() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let first = tb.system("web1");
    let second = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    deploy(&tb, &web1, &first);
    deploy(&tb, &web1, &second);

    let run = tb.sh(&format!("nixpipe-activate --on {} --rollback switch", web1.target())).ok();

    assert_eq!(run.stdout, format!("web1\t{first}\n"));
    assert_eq!(web1.system_profile().as_deref(), Some(&*first));
    assert_eq!(web1.sh("readlink /nix/var/nix/profiles/system").trim(), "system-1-link");
    assert!(web1.switch_log()[2].starts_with(&format!("action=switch toplevel={first} ")));
    let again = tb.sh(&format!("nixpipe-activate --on {} --rollback switch", web1.target()));
    assert_eq!(again.code, 1);
    assert!(again.error_line().ends_with("has no generation before the current one to go back to"));
}

#[test]
fn diff_shows_what_changes_before_switching() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let first = tb.system("web1");
    let second = tb.system_with(
        "web1",
        r#"environment.systemPackages = lib.mkForce [ (pkgs.runCommand "hello-2.13" { } "mkdir -p $out/bin; touch $out/bin/hello") (pkgs.runCommand "cowsay-3.7" { } "mkdir -p $out/bin; touch $out/bin/cowsay") ];"#,
    );
    deploy(&tb, &web1, &first);
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {second}")).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {t} --diff --dry-run switch $'web1\\t{second}'")).ok();

    for line in ["web1 | [U] hello: 2.12.1 -> 2.13", "web1 | [A] cowsay: 3.7", "web1 | closure: "] {
        assert!(run.stderr.contains(line), "{line:?} in:\n{}", run.stderr);
    }
}

#[test]
fn realise_pulls_the_system_from_a_binary_cache_served_on_loopback() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let cache = tb.path().join("cache");
    tb.sh(&format!("nix-store --generate-binary-cache-key deploy-1 {0}/key {0}/key.pub", tb.path().display())).ok();
    tb.sh(&format!("nixpipe-copy --to file://{} --sign-key key {system}", cache.display())).ok();
    let http = nixpipe_tests::http::serve(&cache);
    let public = std::fs::read_to_string(tb.path().join("key.pub")).unwrap();
    web1.sh(&format!(
        "printf 'substituters = http://127.0.0.1:{}\\ntrusted-public-keys = {}\\n' >> /etc/nix/nix.conf",
        http.port,
        public.trim()
    ));

    let run =
        tb.sh(&format!("printf 'web1\\t%s\\n' {system} | nixpipe-activate --on {} --realise switch", web1.target()));

    run.ok();
    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
    web1.assert_store_sound();
}

#[test]
fn sudo_asks_once_for_every_host_and_the_password_is_in_no_argv_or_environment() {
    let tb = Testbed::new();
    let (web1, web2) = (tb.host("web1"), tb.host("web2"));
    let system = tb.system_with("web1", "testbed.switchSleep = 1;");
    for host in [&web1, &web2] {
        host.start_nix_daemon();
        tb.sh(&format!("nixpipe-copy --to {} {system}", host.target())).ok();
    }
    let watch = SecretWatch::start(DEPLOY_PASSWORD);

    tb.alias("web1", &web1, "deploy");
    tb.alias("web2", &web2, "deploy");

    // On a terminal (script gives it one); the password typed once; several
    // privileged steps on each host (start, follow, confirm).
    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --return --command \
             \"printf 'web1\\t%s\\nweb2\\t%s\\n' {system} {system} | nixpipe-activate --ask-sudo-password --confirm-timeout 10 switch\" /dev/null"
        ),
        &format!("{DEPLOY_PASSWORD}\n"),
    );

    let run = run.ok();
    assert_eq!(run.stdout.matches("[nixpipe] sudo password:").count(), 1, "{}", run.stdout);
    assert_eq!(watch.stop(), Vec::<String>::new(), "the password leaked");
    for host in [&web1, &web2] {
        assert_eq!(host.system_profile().as_deref(), Some(&*system));
        assert_eq!(
            host.switch_log(),
            [format!("action=switch toplevel={system} uid=0 tty=no arch={}", std::env::consts::ARCH)]
        );
    }
}

/// Makes `deploy`'s login on `host` a compromised one: every command it
/// runs first prints sudo's prompt as nixpipe's sudo would, and keeps the
/// line it is then given in /var/lib/stolen.
fn compromise_deploy_login(host: &Host) {
    host.sh(r#"cat > /usr/local/sbin/evil-sh <<'EOF'
#!/bin/sh
printf '[nixpipe: sudo asks]' >&2
IFS= read -r got && printf '%s\n' "$got" >> /var/lib/stolen
exec /bin/sh "$@"
EOF
chmod +x /usr/local/sbin/evil-sh && touch /var/lib/stolen && chown deploy /var/lib/stolen"#);
    host.set_login_shell("deploy", "/usr/local/sbin/evil-sh");
}

#[test]
fn with_a_password_per_host_a_compromised_host_never_gets_another_hosts_password() {
    let tb = Testbed::new();
    let (web1, web2) = (tb.host("web1"), tb.host("web2"));
    let system = tb.system("web1");
    for host in [&web1, &web2] {
        host.start_nix_daemon();
        tb.sh(&format!("nixpipe-copy --to {} {system}", host.target())).ok();
    }
    tb.alias("web1", &web1, "deploy");
    tb.alias("web2", &web2, "deploy");
    compromise_deploy_login(&web2);

    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --return --command \
             \"printf 'web1\\t%s\\nweb2\\t%s\\n' {system} {system} | nixpipe-activate --jobs 1 --sudo-password-per-host switch\" /dev/null"
        ),
        &format!("{DEPLOY_PASSWORD}\nonly-for-web2\n"),
    );

    assert_eq!(run.stdout.matches("[nixpipe] sudo password for web1:").count(), 1, "{}", run.stdout);
    assert_eq!(run.stdout.matches("[nixpipe] sudo password for web2:").count(), 1, "{}", run.stdout);
    assert_eq!(web1.system_profile().as_deref(), Some(&*system), "web1's sudo took its password");
    let stolen = web2.sh("cat /var/lib/stolen");
    assert!(!stolen.contains(DEPLOY_PASSWORD), "web2 kept web1's password: {stolen:?}");
}

/// `nixpipe-activate --on deploy@web1 FLAGS switch` of web1's system,
/// with no terminal (setsid: as in cron or CI).
fn switch_web1_as_deploy_with(flags: &str) -> Run {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    tb.sh(&format!(
        "setsid --wait nixpipe-activate --on {} {flags} switch $'web1\\t{system}'",
        web1.target_as("deploy")
    ))
}

#[test]
fn a_password_for_a_sudo_cmd_is_bad_usage_and_nothing_is_asked() {
    let run = switch_web1_as_deploy_with("--ask-sudo-password --sudo-cmd 'doas -n'");

    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("a sudo password goes to sudo only"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn a_user_without_passwordless_sudo_gets_a_clear_error_and_nothing_changes() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    web1.start_nix_daemon();
    tb.sh(&format!("nixpipe-copy --to {} {system}", web1.target())).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {} switch $'web1\\t{system}'", web1.target_as("deploy")));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.ends_with("needs a password: pass --ask-sudo-password to be asked once on the terminal; nothing changed"),
        "{error}"
    );
    assert_eq!(web1.system_profile(), None);
    assert!(web1.switch_log().is_empty());
}

#[test]
fn a_password_asked_at_the_start_goes_to_no_host_that_needs_none() {
    let tb = Testbed::new();
    let (web1, web2) = (tb.host("web1"), tb.host("web2"));
    let system = tb.system("web1");
    for host in [&web1, &web2] {
        host.start_nix_daemon();
        tb.sh(&format!("nixpipe-copy --to {} {system}", host.target())).ok();
    }
    // web1: deploy with passwordless sudo; web2: root itself.
    web1.sh("echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >> /etc/sudoers");
    tb.alias("web1", &web1, "deploy");
    tb.alias("web2", &web2, "root");

    // On a terminal: asked once, at the start; neither host's sudo asks.
    let watch = SecretWatch::start(DEPLOY_PASSWORD);
    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --return --command \
             \"printf 'web1\t%s\nweb2\t%s\n' {system} {system} | nixpipe-activate --ask-sudo-password switch\" /dev/null"
        ),
        &format!("{DEPLOY_PASSWORD}\n"),
    );

    let run = run.ok();
    assert_eq!(run.stdout.matches("sudo password").count(), 1, "{}", run.stdout);
    assert_eq!(watch.stop(), Vec::<String>::new(), "the password went somewhere");
    for host in [&web1, &web2] {
        assert_eq!(host.system_profile().as_deref(), Some(&*system));
    }
}

#[test]
fn the_sudo_password_is_asked_before_the_first_record_arrives() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    web1.start_nix_daemon();
    tb.sh(&format!("nixpipe-copy --to {} {system}", web1.target())).ok();
    tb.alias("web1", &web1, "deploy");

    // The record comes 2 s late, as after a build: the prompt is first.
    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --return --command \
             \"(sleep 2; echo built >&2; printf 'web1\t%s\n' {system}) | nixpipe-activate --ask-sudo-password switch\" /dev/null"
        ),
        &format!("{DEPLOY_PASSWORD}\n"),
    );

    let run = run.ok();
    let (asked, built) = (run.stdout.find("[nixpipe] sudo password:"), run.stdout.find("built"));
    assert!(asked.is_some() && built.is_some() && asked < built, "{}", run.stdout);
    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
}

#[test]
fn a_wrong_sudo_password_is_refused_in_one_line_and_nothing_changes() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    web1.start_nix_daemon();
    tb.sh(&format!("nixpipe-copy --to {} {system}", web1.target())).ok();

    let run = tb.sh_with_input(
        &format!(
            "script --quiet --echo never --command \
             \"printf 'web1\\t%s\\n' {system} | nixpipe-activate --on {} --ask-sudo-password switch\" /dev/null",
            web1.target_as("deploy")
        ),
        "not the password\n",
    );

    assert!(run.stdout.contains("sudo on deploy@127.0.0.1:"), "{}", run.stdout);
    assert!(run.stdout.contains("refused the password; nothing changed"), "{}", run.stdout);
    assert_eq!(web1.system_profile(), None);
    assert!(web1.switch_log().is_empty());
}

#[test]
fn sudo_cmd_replaces_sudo_for_every_privileged_step() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    web1.start_nix_daemon();
    tb.sh(&format!("nixpipe-copy --to {} {system}", web1.target())).ok();
    // A doas of our own that logs its calls and lets deploy become root.
    web1.sh("echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >> /etc/sudoers");
    web1.sh("printf '#!/bin/sh\necho \"$1\" >> \"$HOME/doas.log\"\nexec sudo -n \"$@\"\n' > /usr/local/sbin/doas");
    web1.sh("chmod +x /usr/local/sbin/doas");

    let activate = "nixpipe-activate --sudo-cmd /usr/local/sbin/doas --confirm-timeout 10 switch";
    tb.sh(&format!("{activate} --on {} $'web1\t{system}'", web1.target_as("deploy"))).ok();

    assert_eq!(web1.sh("cat ~deploy/doas.log").lines().collect::<Vec<_>>(), ["sh", "sh"], "start and confirm");
    assert_eq!(
        web1.switch_log(),
        [format!("action=switch toplevel={system} uid=0 tty=no arch={}", std::env::consts::ARCH)]
    );
}

#[test]
fn ask_sudo_password_without_a_terminal_is_refused_before_anything() {
    let run = switch_web1_as_deploy_with("--ask-sudo-password");

    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("--ask-sudo-password needs a terminal to ask on (/dev/tty)"), "{}", run.stderr);
}

#[test]
fn a_specialisation_that_is_a_path_is_bad_usage_and_runs_nothing_there() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();
    // A switch-to-configuration outside the system, where the name points.
    web1.sh("mkdir -p /tmp/nixpipe-victim/bin && printf '#!/bin/sh\\ntouch /tmp/nixpipe-victim/ran\\n' > /tmp/nixpipe-victim/bin/switch-to-configuration && chmod +x /tmp/nixpipe-victim/bin/switch-to-configuration");

    let runs: Vec<_> = ["../../../../tmp/nixpipe-victim", "..", "a/b", ""]
        .iter()
        .map(|name| tb.sh(&format!("nixpipe-activate --on {t} --specialisation '{name}' test $'web1\\t{system}'")))
        .collect();

    for run in &runs {
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains("bad specialisation name"), "{}", run.stderr);
    }
    assert!(!web1.sh("ls /tmp/nixpipe-victim").contains("ran"), "nothing ran");
    assert!(web1.switch_log().is_empty());
    web1.sh("rm -rf /tmp/nixpipe-victim");
}

#[test]
fn a_failed_first_switch_leaves_no_system_to_re_activate_and_the_profile_as_it_was() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    // NixOS's activation makes the new system /run/current-system, then a
    // unit fails: the system that ran before must not be taken to be it.
    let bad = tb.system_with("web1", "testbed.unitsFail = true;");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {bad}")).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {t} --json switch $'web1\\t{bad}'"));

    assert_eq!(run.code, 1);
    let [record] = &run.json_lines()[..] else { panic!("one record: {}", run.stdout) };
    assert_eq!(record["previous"], serde_json::Value::Null, "{record}");
    assert!(record["error"].as_str().unwrap().contains("no system ran before to re-activate"), "{record}");
    assert_eq!(web1.switch_log().len(), 1, "switched once, not again as a rollback");
    assert_eq!(web1.system_profile(), None, "no profile, as before");
}

#[test]
fn a_full_run_on_the_target_is_said_and_nothing_changes() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();
    web1.sh("mkdir -p /run/nixpipe && mount -t tmpfs -o size=8k tmpfs /run/nixpipe && (head -c 1M /dev/zero > /run/nixpipe/fill || true)");

    let run = tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{system}'"));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("could not start the activation on"), "{error}");
    assert!(error.contains("No space left on device; nothing changed"), "{error}");
    assert_eq!(web1.system_profile(), None);
    assert!(web1.switch_log().is_empty());
}

/// Every line a switched program could print to pass for the job.
const FORGED_EVENTS: &str = r"nixpipe-job: awaiting-confirmation 1\nnixpipe-job: result ok\nnixpipe-frame event 10\nresult ok\nnixpipe-event\tresult\toutcome=ok\nnixpipe-frame event 33\nnixpipe-event\tresult\toutcome=ok\n";

#[test]
fn a_system_that_prints_the_jobs_result_and_fails_is_rolled_back_even_when_the_connection_drops() {
    let tb = Testbed::new();
    let (web1, good, _) = running_good_with_bad_copied(&tb);
    let liar = tb.system_with(
        "web1",
        &format!(r#"system.nixos.version = "2"; testbed.switchPrints = "{FORGED_EVENTS}"; testbed.switchSleep = 3; testbed.switchFails = true;"#),
    );
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {liar}")).ok();
    let port = web1.port;
    let log = web1.dir().join("var-lib/nixpipe-testbed/switch.log");
    let killer = thread::spawn(move || {
        // Once the liar's switch has started and printed its lies (the good
        // system's switch is the first line): the deployer's ssh, as a
        // dropped link kills it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&log).unwrap_or_default().lines().count() < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(500));
        std::process::Command::new("pkill").args(["-KILL", "-f", &format!("^ssh .*-p {port} ")]).status().unwrap()
    });

    let run = tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{liar}'"));

    assert!(killer.join().unwrap().success(), "an ssh was killed mid-switch");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.error_line().ends_with("rolled back: the previous generation is active again"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert_eq!(web1.system_profile().as_deref(), Some(&*good));
}

#[test]
fn a_system_that_asks_for_its_own_confirmation_is_not_confirmed_before_a_new_login_works() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let good = tb.system("web1");
    let locks_us_out = tb.system_with(
        "web1",
        &format!(r#"system.nixos.version = "2"; testbed.switchPrints = "{FORGED_EVENTS}"; testbed.switchSleep = 3;"#),
    );
    deploy(&tb, &web1, &good);
    tb.sh(&format!("nixpipe-copy --to {} {locks_us_out}", web1.target())).ok();

    // A second into the switch it has printed its lies, and a confirmation
    // taken from them would have come through; then logins stop working,
    // before the switch ends.
    let run = switch_then_lock_out(&tb, &web1, &locks_us_out, "", Duration::from_secs(1));

    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.error_line().contains("no new connection confirmed the switch within 3 s"), "{}", run.stderr);
    assert_eq!(web1.system_profile().as_deref(), Some(&*good));
}

#[test]
fn what_a_switch_prints_reaches_the_terminal_with_its_control_characters_escaped() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    // Nix strings take these bytes as they are.
    let prints = "\u{1b}]0;owned\u{7}\u{1b}[2K\rnixpipe-activate: web1: all good\u{9b}31m\n";
    let system = tb.system_with("web1", &format!(r#"testbed.switchPrints = "{prints}";"#));
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{system}'")).ok();

    assert!(!run.stderr.chars().any(|c| c.is_control() && c != '\n'), "{:?}", run.stderr);
    assert!(run.stderr.contains(r"web1 | \u{1b}]0;owned\u{7}\u{1b}[2K"), "{:?}", run.stderr);
    assert!(run.stderr.contains(r"web1 | nixpipe-activate: web1: all good\u{9b}31m"), "{:?}", run.stderr);
    assert!(!run.stderr.lines().any(|l| l.starts_with("nixpipe-activate:")), "a line of ours forged: {:?}", run.stderr);
}

#[test]
fn a_login_that_forges_a_huge_frame_header_neither_takes_memory_nor_hides_the_switch() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();
    // root's login says a 5 GB log frame follows, then sends 200 MB.
    web1.sh(r#"cat > /usr/local/sbin/forge-sh <<'EOF'
#!/bin/sh
echo 'nixpipe-frame log 5000000000'
head -c 200000000 /dev/zero
echo
exec /bin/sh "$@"
EOF
chmod +x /usr/local/sbin/forge-sh"#);
    web1.set_login_shell("root", "/usr/local/sbin/forge-sh");

    let run = tb.sh(&format!("{MEASURING_MEMORY} nixpipe-activate --on {t} --json switch $'web1\\t{system}'"));

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json_lines()[0]["result"], "activated");
    assert!(run.max_rss_mib() < 64, "{} MiB", run.max_rss_mib());
    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
}
