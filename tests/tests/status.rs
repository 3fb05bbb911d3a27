//! nixpipe-status: what each host runs against its record, in one
//! read-only round trip per host; --changed for deploying only the hosts
//! that drifted.

use nixpipe_tests::{Host, Testbed, MEASURING_MEMORY};

/// web1 and web2, booting systemd and known by name, both running the
/// same first system; web1's next system, and the records of both next
/// systems: web1's changed, web2's the one it runs.
fn web1_drifted_web2_current(tb: &Testbed) -> ([Host; 2], String, String) {
    let first = tb.system("web1");
    let hosts = ["web1", "web2"].map(|name| {
        let host = tb.systemd_host(name);
        tb.alias(name, &host, "root");
        tb.sh(&format!("nixpipe-copy --to {name} $'{name}\\t{first}' | nixpipe-activate switch")).ok();
        host
    });
    let next = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    let records = format!("web1\\t{next}\\nweb2\\t{first}\\n");
    (hosts, next, records)
}

#[test]
fn status_tells_what_each_host_runs_against_its_record() {
    let tb = Testbed::new();
    let (_hosts, _, records) = web1_drifted_web2_current(&tb);

    let run = tb.sh(&format!("printf '{records}' | nixpipe-status --jobs 2 --json")).ok();

    let mut facts: Vec<String> = run
        .json_lines()
        .iter()
        .map(|r| {
            format!("{} runs={} generation={} needsReboot={}", r["name"], r["runs"], r["generation"], r["needsReboot"])
        })
        .collect();
    facts.sort();
    assert_eq!(
        facts,
        [r#""web1" runs=false generation=1 needsReboot=null"#, r#""web2" runs=true generation=1 needsReboot=null"#]
    );
    assert!(run.stderr.contains(&format!("web1 | runs {}, not ", tb.system("web1"))), "{}", run.stderr);
    assert!(run.stderr.contains("web2 | runs it; profile generation 1"), "{}", run.stderr);
}

#[test]
fn changed_deploys_exactly_the_hosts_that_drifted() {
    let tb = Testbed::new();
    let ([web1, web2], next, records) = web1_drifted_web2_current(&tb);

    let run = tb.sh(&format!("printf '{records}' | nixpipe-status --changed | nixpipe-copy | nixpipe-activate switch"));

    let run = run.ok();
    assert_eq!(run.stdout_lines(), [format!("web1\t{next}")]);
    assert_eq!((web1.switch_log().len(), web2.switch_log().len()), (2, 1), "web2 was not touched");
}

#[test]
fn a_host_whose_booted_kernel_is_not_the_running_ones_needs_a_reboot() {
    let tb = Testbed::new();
    let ([web1, _web2], _, _) = web1_drifted_web2_current(&tb);
    // What the boot of the first system left: NixOS links /run/booted-system at boot.
    web1.sh(&format!("ln -sfn {} /run/booted-system", tb.system("web1")));
    let new_kernel = tb.system_with("web1", r#"system.nixos.version = "3"; boot.kernelVersion = "6.12.1";"#);
    tb.sh(&format!("nixpipe-copy --to web1 $'web1\\t{new_kernel}' | nixpipe-activate switch")).ok();

    let run = tb.sh(&format!("nixpipe-status --json $'web1\\t{new_kernel}'")).ok();

    let record = &run.json_lines()[0];
    assert_eq!((record["runs"].as_bool(), record["needsReboot"].as_bool()), (Some(true), Some(true)));
    assert_eq!(record["booted"].as_str(), Some(tb.system("web1").as_str()));
    assert_eq!(record["generation"], 2);
    assert!(run.stderr.contains("web1 | runs it; profile generation 2; reboot needed"), "{}", run.stderr);
}

#[test]
fn an_unreachable_host_is_named_and_exits_1_and_only_changed_passes_it_on() {
    let tb = Testbed::new();
    let (_hosts, _, records) = web1_drifted_web2_current(&tb);
    // db9 answers nobody.
    let records = records.replace("web2\\t", "db9\\t");

    let status = tb.sh(&format!("printf '{records}' | nixpipe-status"));
    let changed = tb.sh(&format!("printf '{records}' | nixpipe-status --changed"));

    assert_eq!((status.code, changed.code), (1, 1));
    assert!(status.error_line().starts_with("nixpipe-status: db9: cannot reach db9"), "{}", status.stderr);
    let names = |run: &nixpipe_tests::Run| -> Vec<String> {
        run.stdout_lines().iter().map(|l| l.split('\t').next().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&status), ["web1"]);
    assert_eq!(names(&changed).len(), 2, "web1 drifted; db9 may have: {:?}", changed.stdout);
}

#[test]
fn garbage_on_stdin_is_one_line_and_asks_no_host() {
    let tb = Testbed::new();

    let run = tb.sh("echo 'not a record' | nixpipe-status");

    assert_eq!(run.code, 2);
    assert!(run.error_line().starts_with("nixpipe-status: "), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn what_a_host_says_reaches_the_terminal_with_its_control_characters_escaped() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    tb.alias("web1", &web1, "root");
    let system = tb.system("web1");
    // A running system whose name sets the terminal's title, writes its
    // clipboard (OSC 52), erases the line and forges one of ours.
    web1.sh(r#"d="$(printf '/nix/store/x\033]0;owned\007\033]52;c;Zm9v\007\033[2K\r\033[8mweb1: runs it')" && mkdir -p "$d" && ln -sfn "$d" /run/current-system"#);

    let run = tb.sh(&format!("nixpipe-status $'web1\\t{system}'"));

    assert!(
        !run.stderr.contains('\u{1b}') && !run.stderr.contains('\u{7}') && !run.stderr.contains('\r'),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains(r"\u{1b}]52;c;Zm9v"), "{:?}", run.stderr);
}

#[test]
fn a_login_that_prints_a_flood_before_the_answer_costs_no_memory() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    tb.alias("web1", &web1, "root");
    let system = tb.system("web1");
    tb.sh(&format!("nixpipe-copy --to web1 $'web1\\t{system}' | nixpipe-activate switch")).ok();
    // root's login prints 300 MB on stdout (and 30 MB on stderr) before
    // every command it runs.
    web1.sh(r#"cat > /usr/local/sbin/flood-sh <<'EOF'
#!/bin/sh
head -c 300000000 /dev/zero | tr '\0' x
echo
head -c 30000000 /dev/zero | tr '\0' y >&2
echo >&2
exec /bin/sh "$@"
EOF
chmod +x /usr/local/sbin/flood-sh"#);
    web1.set_login_shell("root", "/usr/local/sbin/flood-sh");

    let run = tb.sh(&format!("{MEASURING_MEMORY} nixpipe-status --json $'web1\\t{system}'")).ok();

    assert_eq!(run.json_lines()[0]["runs"], true);
    assert!(run.max_rss_mib() < 64, "{} MiB", run.max_rss_mib());
}

#[test]
fn a_host_whose_login_hangs_is_named_after_the_timeout_and_the_others_finish() {
    let tb = Testbed::new();
    let (web1, web2) = (tb.host("web1"), tb.host("web2"));
    let system = tb.system("web1");
    for (name, host) in [("web1", &web1), ("web2", &web2)] {
        tb.alias(name, host, "root");
        // Each on a login of its own: a shared connection would still let
        // status in with the shell of before.
        let deploy = format!("nixpipe-copy --to {name} $'{name}\\t{system}' | nixpipe-activate switch");
        tb.sh(&format!("export NIXPIPE_SSH_SHARE=no; {deploy}")).ok();
    }
    web2.sh("printf '#!/bin/sh\\nsleep 600\\nexec /bin/sh \"$@\"\\n' > /usr/local/sbin/hung-sh && chmod +x /usr/local/sbin/hung-sh");
    web2.set_login_shell("root", "/usr/local/sbin/hung-sh");
    let started = std::time::Instant::now();

    let run = tb.sh(&format!("printf 'web1\\t{system}\\nweb2\\t{system}\\n' | nixpipe-status --jobs 2 --timeout 3"));

    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, format!("web1\t{system}\n"), "the healthy host's record");
    assert!(
        run.stderr.contains("nixpipe-status: web2: web2 gave no sign of life for 3 s (--timeout)"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}

#[test]
fn a_port_that_accepts_and_never_speaks_is_given_up_on() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    // Takes the connection, says nothing, keeps it open. (The testbed's
    // ssh configuration sets ConnectTimeout 10, which nixpipe keeps; where
    // none is set it gives 30.)
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let started = std::time::Instant::now();

    let run = tb.sh(&format!("nixpipe-status --on root@127.0.0.1:{port} $'web1\\t{system}'"));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains(&format!("cannot reach root@127.0.0.1:{port}")), "{}", run.stderr);
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    drop(holder);
}
