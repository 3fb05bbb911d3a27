//! Many hosts in one run: --jobs, --fail-fast, rolling --batch with
//! --check, one sudo prompt for all (see activate.rs), upload once with --via.

use nixpipe_tests::proxy::{Link, Proxy};
use nixpipe_tests::{Host, HostKind, Testbed};

/// Hosts web1..webN of `kind`, each with an ssh alias of its name.
fn hosts_of(tb: &Testbed, n: usize, kind: HostKind) -> Vec<Host> {
    (1..=n)
        .map(|i| {
            let host = tb.host_of(&format!("web{i}"), kind);
            tb.alias(&host.hostname, &host, "root");
            host
        })
        .collect()
}

/// Hosts web1..webN of the kind the run tests, for copies.
fn hosts(tb: &Testbed, n: usize) -> Vec<Host> {
    hosts_of(tb, n, HostKind::of_run().unwrap())
}

/// Hosts web1..webN booting systemd, each with `system` copied: what
/// activations run on.
fn fleet(tb: &Testbed, n: usize, system: &str) -> Vec<Host> {
    let hosts = hosts_of(tb, n, HostKind::systemd().unwrap());
    for host in &hosts {
        tb.sh(&format!("nixpipe-copy --to {} {system}", host.target())).ok();
    }
    hosts
}

fn records(hosts: &[Host], system: &str) -> String {
    hosts.iter().map(|h| format!("{}\\t{system}\\n", h.hostname)).collect()
}

#[test]
fn jobs_activates_every_host_and_a_failing_one_does_not_stop_the_others() {
    let tb = Testbed::new();
    let system = tb.system_with("web1", "testbed.switchSleep = 1;");
    let hosts = fleet(&tb, 3, &system);
    // web2's record names a host that nobody can reach.
    let input = records(&hosts, &system).replace("web2\\t", "db9\\t");

    let run = tb.sh(&format!("printf '{input}' | nixpipe-activate --jobs 3 switch"));

    assert_eq!(run.code, 1);
    let mut done = run.stdout_lines();
    done.sort();
    assert_eq!(done, [format!("web1\t{system}"), format!("web3\t{system}")]);
    assert!(run.error_line().starts_with("nixpipe-activate: db9: "), "{}", run.stderr);
    for (host, switched) in hosts.iter().zip([1, 0, 1]) {
        assert_eq!(host.switch_log().len(), switched, "{}", host.hostname);
    }
}

#[test]
fn a_fleet_run_ends_with_one_summary_naming_who_failed_and_whether_it_was_rolled_back() {
    let tb = Testbed::new();
    let good = tb.system("web1");
    let bad = tb.system_with("web1", "testbed.switchFails = true;");
    let hosts = fleet(&tb, 3, &good);
    tb.sh(&format!("nixpipe-copy --to {} {bad}", hosts[1].target())).ok();
    tb.sh(&format!("printf '{}' | nixpipe-activate switch", records(&hosts, &good))).ok();
    // web2 gets a system whose switch fails; db9 cannot be reached.
    let input = format!("web1\\t{good}\\nweb2\\t{bad}\\ndb9\\t{good}\\n");

    for json in ["", "--json"] {
        let run = tb.sh(&format!("printf '{input}' | nixpipe-activate {json} switch"));

        assert_eq!(run.code, 1);
        let summary: Vec<&str> = run.stderr.lines().skip_while(|l| !nixpipe_tests::is_summary(l)).collect();
        assert_eq!(summary[0], "nixpipe-activate: 1 of 3 succeeded, 2 failed:", "{}", run.stderr);
        let (web2, db9) =
            (summary.iter().find(|l| l.starts_with("  web2: ")), summary.iter().find(|l| l.starts_with("  db9: ")));
        assert!(web2.is_some_and(|l| l.ends_with(" (rolled back)")), "{}", run.stderr);
        assert!(db9.is_some_and(|l| l.contains("cannot reach") && l.ends_with(" (nothing changed)")), "{}", run.stderr);
        // stdout has records only, the failed ones too with --json.
        assert_eq!(run.stdout_lines().len(), if json.is_empty() { 1 } else { 3 }, "{}", run.stdout);
    }
}

#[test]
fn fail_fast_starts_no_more_hosts_after_a_failure() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let hosts = fleet(&tb, 3, &system);
    let input = records(&hosts, &system).replace("web1\\t", "db9\\t");

    let run = tb.sh(&format!("printf '{input}' | nixpipe-activate --jobs 1 --fail-fast --json switch"));

    assert_eq!(run.code, 1);
    let results: Vec<String> = run.json_lines().iter().map(|r| format!("{} {}", r["name"], r["result"])).collect();
    assert_eq!(results, [r#""db9" "refused""#, r#""web2" "skipped""#, r#""web3" "skipped""#]);
    assert!(hosts.iter().all(|h| h.switch_log().is_empty()));
}

#[test]
fn a_rolling_batch_stops_at_a_failed_check_which_rolls_that_host_back() {
    let tb = Testbed::new();
    let old = tb.system("web1");
    let new = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let hosts = fleet(&tb, 3, &old);
    for host in &hosts {
        tb.sh(&format!(
            "nixpipe-copy --to {0} {new} && nixpipe-activate --on {0} --no-hostname-check switch {old}",
            host.target()
        ))
        .ok();
    }

    // The health check fails on web2 only.
    let run = tb.sh(&format!(
        "printf '{}' | nixpipe-activate --batch 1 --check 'test \"$(hostname)\" != web2' --json switch",
        records(&hosts, &new)
    ));

    assert_eq!(run.code, 1);
    let results: Vec<String> =
        run.json_lines().iter().map(|r| format!("{} {} {}", r["name"], r["result"], r["rolledBack"])).collect();
    assert_eq!(results, [r#""web1" "activated" false"#, r#""web2" "failed" true"#, r#""web3" "skipped" false"#]);
    let running: Vec<String> = hosts.iter().map(|h| h.sh("readlink /run/current-system").trim().to_owned()).collect();
    assert_eq!(running, [new.clone(), old.clone(), old.clone()], "web2 rolled back, web3 never reached");
    assert_eq!(hosts[2].switch_log().len(), 1, "web3: only its first deployment");
}

#[test]
fn copy_jobs_copies_to_every_host_and_a_failing_one_does_not_stop_the_others() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let hosts = hosts(&tb, 3);
    let input = records(&hosts, &system).replace("web2\\t", "db9\\t");

    let run = tb.sh(&format!("printf '{input}' | nixpipe-copy --jobs 3"));

    assert_eq!(run.code, 1);
    let mut done = run.stdout_lines();
    done.sort();
    assert_eq!(done, [format!("web1\t{system}"), format!("web3\t{system}")]);
    assert!(run.error_line().starts_with("nixpipe-copy: db9: cannot reach db9"), "{}", run.stderr);
    assert!(hosts[0].has(&system) && hosts[2].has(&system) && !hosts[1].has(&system));
}

/// A relay and web1..webN that only the relay can reach, by name: the
/// deployer has no route to them, only their host keys.
fn behind_a_relay(tb: &Testbed, n: usize) -> (Host, Vec<Host>) {
    let relay = tb.host("relay");
    tb.alias("relay", &relay, "root");
    let targets: Vec<Host> = (1..=n).map(|i| tb.host(&format!("web{i}"))).collect();
    for target in &targets {
        relay.alias(&target.hostname, target);
        tb.know_host_key(&target.hostname, target);
    }
    (relay, targets)
}

#[test]
fn via_a_relay_every_target_gets_the_closure_without_a_byte_from_the_deployer() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (relay, targets) = behind_a_relay(&tb, 2);

    let run = tb.sh(&tb.with_agent(&format!(
        "printf 'web1\\t{system}\\nweb2\\t{system}\\n' | nixpipe-copy --via relay --to 'root@{{name}}' --json"
    )));

    let run = run.ok();
    let mut copied: Vec<String> =
        run.json_lines().iter().map(|r| format!("{} from {}", r["name"], r["copy"]["from"])).collect();
    copied.sort();
    assert_eq!(copied, [r#""web1" from "relay""#, r#""web2" from "relay""#]);
    for host in [&relay, &targets[0], &targets[1]] {
        assert!(host.has(&system), "{}", host.hostname);
        host.assert_store_sound();
    }
}

/// What a garbage collection on `host` leaves of the copy of `system`
/// named `name`: whether the system, and the GC root that kept it.
fn after_a_gc(host: &Host, name: &str, system: &str) -> (bool, bool) {
    host.sh("nix-store --gc >/dev/null 2>&1");
    let root = format!("/nix/var/nix/gcroots/nixpipe/{name} -> {system}");
    (host.has(system), host.gc_roots().contains(&root))
}

#[test]
fn via_a_relay_each_target_keeps_its_copy_as_a_gc_root_through_a_garbage_collection() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (_relay, targets) = behind_a_relay(&tb, 2);

    tb.sh(&tb.with_agent(&format!(
        "printf 'web1\\t{system}\\nweb2\\t{system}\\n' | nixpipe-copy --via relay --to 'root@{{name}}'"
    )))
    .ok();

    assert_eq!(after_a_gc(&targets[0], "web1", &system), (true, true));
    assert_eq!(after_a_gc(&targets[1], "web2", &system), (true, true));
}

#[test]
fn via_a_signed_cache_each_target_keeps_its_copy_as_a_gc_root_through_a_garbage_collection() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let targets = hosts(&tb, 2);
    tb.new_key("cache");
    let (key, cache) = (tb.path().join("cache.sec"), tb.path().join("cache"));

    tb.sh(&format!(
        "printf 'web1\\t{system}\\nweb2\\t{system}\\n' \\
         | nixpipe-copy --via file://{} --sign-key {} --to 'root@{{name}}'",
        cache.display(),
        key.display()
    ))
    .ok();

    assert_eq!(after_a_gc(&targets[0], "web1", &system), (true, true));
    assert_eq!(after_a_gc(&targets[1], "web2", &system), (true, true));
}

#[test]
fn via_a_relay_a_target_it_cannot_reach_fails_alone() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (relay, mut targets) = behind_a_relay(&tb, 2);
    // web2 goes down: the relay finds its port closed.
    drop(targets.pop());

    let run = tb.sh(&tb.with_agent(&format!(
        "printf 'web1\\t{system}\\nweb2\\t{system}\\n' | nixpipe-copy --via relay --to 'root@{{name}}'"
    )));

    assert_eq!(run.code, 1);
    assert_eq!(run.stdout_lines(), [format!("web1\t{system}")]);
    let error = run.error_line();
    assert!(error.starts_with("nixpipe-copy: web2: relay cannot reach root@web2: "), "{error}");
    assert!(targets[0].has(&system));
    assert!(relay.has(&system));
}

#[test]
fn via_a_relay_a_target_whose_host_key_the_deployer_does_not_know_gets_nothing() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (relay, _) = behind_a_relay(&tb, 0);
    let stranger = tb.host("web9");
    relay.alias("web9", &stranger);

    let run = tb.sh(&tb.with_agent(&format!("nixpipe-copy --via relay --to root@web9 {system}")));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("this machine knows no host key for web9"), "{error}");
    assert!(!stranger.has(&system));
}

#[test]
fn via_a_signed_cache_every_target_substitutes_and_nothing_is_sent_to_it_directly() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let targets = hosts(&tb, 2);
    tb.new_key("cache");
    let key = tb.path().join("cache.sec");
    let cache = tb.path().join("cache");

    let run = tb.sh(&format!(
        "printf 'web1\\t{system}\\nweb2\\t{system}\\n' \
         | nixpipe-copy --via file://{} --sign-key {} --to 'root@{{name}}' --json",
        cache.display(),
        key.display()
    ));

    let run = run.ok();
    assert!(!run.stderr.contains("not substituted"), "{}", run.stderr);
    let sent: Vec<String> = run.json_lines().iter().map(|r| r["copy"]["copiedPaths"].to_string()).collect();
    assert_eq!(sent, ["0", "0"]);
    for host in &targets {
        assert!(host.has(&system), "{}", host.hostname);
        host.assert_store_sound();
    }
}

#[test]
fn via_a_cache_without_a_signing_key_is_refused_before_anything() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let cache = tb.path().join("cache");

    let run = tb.sh(&format!("nixpipe-copy --via file://{} --to root@web1 {system}", cache.display()));

    assert_eq!(run.code, 2);
    assert!(run.error_line().ends_with("--via file:///DIR needs --sign-key: targets substitute signed paths only"));
    assert!(!cache.exists());
}

#[test]
fn via_a_relay_that_is_down_fails_in_one_line_and_nothing_moves() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (relay, targets) = behind_a_relay(&tb, 1);
    drop(relay);

    let run = tb.sh(&tb.with_agent(&format!("nixpipe-copy --via relay --to root@web1 {system}")));

    assert_eq!(run.code, 1);
    assert!(run
        .error_line()
        .starts_with("nixpipe-copy: upload to relay failed, nothing went further: cannot reach relay"));
    assert!(!targets[0].has(&system));
}

#[test]
fn via_a_relay_whose_connection_drops_mid_upload_the_targets_get_nothing() {
    let tb = Testbed::new();
    let chain = tb.filler(20, 100_000, "-via-cut");
    let (relay, targets) = behind_a_relay(&tb, 2);
    // About half of the 2 MB upload gets through.
    let proxy = Proxy::start(relay.port, Link::CutAfter(1_000_000));
    tb.alias_at("relay", &relay, "root", proxy.port);

    let run = tb.sh(&tb.with_agent(&format!(
        "printf 'web1\\t{chain}\\nweb2\\t{chain}\\n' | nixpipe-copy --via relay --to 'root@{{name}}'"
    )));

    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
    let error = run.error_line();
    assert_eq!(
        error,
        "nixpipe-copy: upload to relay failed, nothing went further: the ssh connection to relay dropped"
    );
    let closure = tb.sh(&format!("nix-store --query --requisites {chain}")).ok().stdout;
    for target in &targets {
        assert!(closure.lines().all(|path| !target.has(path)), "{}", target.hostname);
    }
    relay.assert_store_sound();
}

#[test]
fn via_a_relay_an_untrusted_target_user_gets_signed_paths_and_unsigned_ones_are_refused_in_one_line() {
    let tb = Testbed::new();
    let (signed, unsigned) = (tb.filler(2, 100, "-via-signed"), tb.filler(2, 100, "-via-unsigned"));
    let (_relay, targets) = behind_a_relay(&tb, 1);
    let public = tb.new_key("deploy");
    targets[0].sh(&format!("printf 'trusted-public-keys = {public}\\n' >> /etc/nix/nix.conf"));
    targets[0].start_nix_daemon();
    let copy = |args: &str| tb.sh(&tb.with_agent(&format!("nixpipe-copy --via relay --to deploy@web1 {args}")));

    let accepted = copy(&format!("--sign-key deploy.sec {signed}"));
    let refused = copy(&unsigned);

    assert_eq!(accepted.code, 0, "{}", accepted.stderr);
    assert!(targets[0].has(&signed));
    assert_eq!(refused.code, 1);
    let error = refused.error_line();
    assert!(error.contains("the relay's copy failed on relay (exit 1): error: cannot add path"), "{error}");
    // Nix's own words, which changed in 2.26.
    assert!(
        error.ends_with("because it lacks a valid signature")
            || error.ends_with("because it lacks a signature by a trusted key"),
        "{error}"
    );
    assert!(!targets[0].has(&unsigned));
    targets[0].assert_store_sound();
}

#[test]
fn on_a_terminal_each_host_has_a_progress_line_and_in_a_pipe_none() {
    let tb = Testbed::new();
    let system = tb.system_with("web1", "testbed.switchSleep = 1;");
    let hosts = fleet(&tb, 2, &system);
    let activate = format!("printf '{}' | nixpipe-activate --no-hostname-check switch", records(&hosts, &system));

    // A user's terminal has a TERM; CI runs with none.
    let on_terminal = tb
        .sh(&format!("TERM=xterm script --quiet --return --command \"{}\" /dev/null", activate.replace('"', "\\\"")))
        .ok();
    let in_a_pipe = tb.sh(&activate).ok();

    for host in &hosts {
        let line = format!("{} [", host.hostname);
        assert!(on_terminal.stdout.contains(&line), "{}", on_terminal.stdout);
        assert!(!in_a_pipe.stderr.contains(&line), "{}", in_a_pipe.stderr);
    }
}

#[test]
fn via_refuses_what_cannot_work_before_anything_moves() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let cache = tb.path().join("cache");
    tb.new_key("cache");
    let key = tb.path().join("cache.sec");

    for (flags, says) in [
        (
            "--via local --to root@web1".to_owned(),
            "--via local: this machine is where the copy starts; name a relay host",
        ),
        (
            "--via relay --to local".to_owned(),
            "--via HOST: the relay cannot reach `local`; copy to this machine without --via",
        ),
        ("--via relay --to file:///srv/other".to_owned(), "--via is for copies to stores, not to file:///srv/other"),
        (
            "--via relay --cache-url http://cache.example --to root@web1".to_owned(),
            "--cache-url is for --via file:///DIR",
        ),
        (
            format!("--via file://{} --sign-key {} --to file:///srv/other", cache.display(), key.display()),
            "--via is for copies to stores, not to file:///srv/other",
        ),
    ] {
        let run = tb.sh(&format!("nixpipe-copy {flags} {system}"));

        assert_eq!(run.code, 2, "{flags}");
        assert_eq!(run.error_line(), format!("nixpipe-copy: {says}"), "{flags}");
    }
    assert!(!cache.exists());
}

#[test]
fn via_a_relay_a_target_whose_host_key_the_deployer_revoked_gets_nothing() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (relay, targets) = behind_a_relay(&tb, 1);
    tb.revoke_host_key(&targets[0]);

    let run = tb.sh(&tb.with_agent(&format!("nixpipe-copy --via relay --to root@web1 {system}")));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.starts_with("nixpipe-copy: "), "{error}");
    assert!(run.stderr.contains("REVOKED") || error.contains("Host key verification failed"), "{}", run.stderr);
    assert!(!targets[0].has(&system), "a revoked host gets nothing");
    drop(relay);
}

#[test]
fn via_a_relay_the_agent_goes_no_further_than_the_relay() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let (relay, targets) = behind_a_relay(&tb, 1);
    // The relay's own ssh configuration would forward it on.
    relay.sh("printf 'Host *\\n  ForwardAgent yes\\n' >> ~/.ssh/config");
    // Every login on the target says whether it got an agent.
    targets[0].sh("mkdir -p ~/.ssh && printf 'echo \"agent=$SSH_AUTH_SOCK\" >> /var/lib/logins\\n' > ~/.ssh/rc");

    tb.sh(&tb.with_agent(&format!("nixpipe-copy --via relay --to root@web1 {system}"))).ok();

    assert!(targets[0].has(&system));
    let logins = targets[0].sh("cat /var/lib/logins");
    assert!(!logins.is_empty() && logins.lines().all(|l| l == "agent="), "{logins}");
}
