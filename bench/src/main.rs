//! `make bench`: nixpipe-copy side by side with nix-copy-closure,
//! `nix copy --to ssh-ng://` and a plain tar over ssh, on the same closures
//! and fresh testbed hosts, in one run; and nixpipe-eval of a network of
//! machines against one nix-build per machine; a fleet copy, upload once
//! with --via against a copy per host; and the whole deploy against
//! nixos-rebuild-ng's steps. Prints tables and the ratios the issues set as
//! goals. A benchmark, not a test: it never fails on a number, it reports
//! it. `nixpipe-bench copy`, `eval`, `fleet`, `status` or `deploy` runs one
//! part.

use nixpipe_tests::proxy::{Link, Proxy, Uplink};
use nixpipe_tests::{Host, Release, Testbed};
use std::time::{Duration, Instant};

/// Each way, through the proxy: 40 ms round trips.
const DELAY: Duration = Duration::from_millis(20);

fn main() {
    let part = std::env::args().nth(1).unwrap_or_default();
    if part.is_empty() || part == "copy" {
        copy();
    }
    if part.is_empty() || part == "eval" {
        eval();
    }
    if part.is_empty() || part == "fleet" {
        fleet();
    }
    if part.is_empty() || part == "status" {
        status();
    }
    if part.is_empty() || part == "deploy" {
        deploy();
    }
}

/// What nixos-rebuild-ng does to deploy a built system to a target host
/// (nixpkgs' nixos-rebuild-ng: process.py's one ControlMaster connection
/// for everything, nix-copy-closure, `nix-env --set` of the profile, and
/// switch-to-configuration through systemd-run where systemd runs), as a
/// script: $1 the target, $2 its port, $3 the system, $4 `sudo` or empty.
const NIXOS_REBUILD_NG: &str = r#"set -e
ctl=$(mktemp -d)
opts="$NIX_SSHOPTS -p $2 -o ControlMaster=auto -o ControlPath=$ctl/%C -o ControlPersist=60"
NIX_SSHOPTS="$opts" nix-copy-closure --to "$1" "$3"
ssh $opts "$1" $4 nix-env -p /nix/var/nix/profiles/system --set "$3"
ssh $opts "$1" "if [ -d /run/systemd/system ]; then $4 systemd-run -E LOCALE_ARCHIVE -E NIXOS_INSTALL_BOOTLOADER --collect --no-ask-password --pipe --quiet --service-type=exec --unit=nixos-rebuild-switch-to-configuration --wait $3/bin/switch-to-configuration switch; else $4 $3/bin/switch-to-configuration switch; fi"
ssh $opts -O exit "$1" 2>/dev/null || true
rm -rf "$ctl""#;

/// One row of the whole-deploy table: where the host is, and what it has.
struct DeployCase {
    name: &'static str,
    systemd: bool,
    /// Behind 40 ms round trips.
    slow: bool,
    /// The host runs the previous system already (a small change).
    warm: bool,
    /// As `deploy`, sudo to root (without a password).
    sudo: bool,
    /// The system holds this many more small paths.
    paths: u32,
}

/// The everyday deploy, nixpipe's `nixpipe-copy | nixpipe-activate`
/// against nixos-rebuild-ng's steps ([`NIXOS_REBUILD_NG`]), each to its
/// own fresh host, interleaved rounds, medians; the system built already
/// for both (evaluating and building is the same Nix work for either).
fn deploy() {
    let rounds = env_or("BENCH_ROUNDS", 5);
    let paths = env_or("BENCH_SMALL_PATHS", 1000);
    let tb = Testbed::new();
    let cases = [
        DeployCase { name: "loopback, cold", systemd: false, slow: false, warm: false, sudo: false, paths: 0 },
        DeployCase { name: "loopback, warm", systemd: false, slow: false, warm: true, sudo: false, paths: 0 },
        DeployCase { name: "40 ms RTT, cold", systemd: false, slow: true, warm: false, sudo: false, paths: 0 },
        DeployCase { name: "40 ms RTT, warm", systemd: false, slow: true, warm: true, sudo: false, paths: 0 },
        DeployCase { name: "systemd host, warm", systemd: true, slow: false, warm: true, sudo: false, paths: 0 },
        DeployCase {
            name: "deploy user with sudo, warm",
            systemd: false,
            slow: false,
            warm: true,
            sudo: true,
            paths: 0,
        },
        DeployCase {
            name: "1000 small paths at 40 ms, cold",
            systemd: false,
            slow: true,
            warm: false,
            sudo: false,
            paths,
        },
        DeployCase {
            name: "1000 small paths at 40 ms, warm",
            systemd: false,
            slow: true,
            warm: true,
            sudo: false,
            paths,
        },
    ];
    println!("\n## The whole deploy of a built system: medians of {rounds} interleaved rounds, each to a fresh host\n");
    println!("| deploy | nixos-rebuild-ng's steps | nixpipe-copy \\| nixpipe-activate | ratio |\n|---|---:|---:|---:|");
    for case in &cases {
        let (before, after) = deploy_systems(&tb, case.paths);
        let mut times: [Vec<f64>; 2] = Default::default();
        for _ in 0..rounds {
            for (i, nixpipe) in [false, true].into_iter().enumerate() {
                times[i].push(time_deploy(&tb, case, &before, &after, nixpipe));
            }
        }
        let [script, nixpipe] = times.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        println!("| {} | {script:.2} s | {nixpipe:.2} s | {:.2}x |", case.name, nixpipe / script);
    }
    deploy_floor(&tb);
}

/// The system a warm host runs and the one deployed, with `paths` small
/// paths more in both (the change is small either way).
fn deploy_systems(tb: &Testbed, paths: u32) -> (String, String) {
    let many = match paths {
        0 => String::new(),
        n => format!(
            r#"environment.systemPackages = [ (pkgs.runCommand "many" {{}} "mkdir -p $out/bin; ln -s ${{pkgs.filler {{ count = {n}; bytes = 1000; seed = "deploy"; }}}} $out/bin/many") ];"#
        ),
    };
    let before = tb.system_with("web1", &format!(r#"system.nixos.version = "1"; {many}"#));
    let after = tb.system_with("web1", &format!(r#"system.nixos.version = "2"; {many}"#));
    (before, after)
}

/// One deploy of `after` to a fresh host (running `before` when warm), by
/// nixpipe or by the script; checked on the host, then timed.
fn time_deploy(tb: &Testbed, case: &DeployCase, before: &str, after: &str, nixpipe: bool) -> f64 {
    let host = if case.systemd { tb.systemd_host("web1") } else { tb.host("web1") };
    if case.sudo {
        // As NixOS hosts deployed by a user other than root have it.
        host.sh("echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >> /etc/sudoers");
        host.sh("echo 'trusted-users = root deploy' >> /etc/nix/nix.conf");
        host.start_nix_daemon();
    }
    if case.warm {
        let t = host.target();
        tb.sh(&format!("NIXPIPE_SSH_SHARE=no nixpipe-copy --to {t} {before} | NIXPIPE_SSH_SHARE=no nixpipe-activate --on {t} switch")).ok();
    }
    let proxy = case.slow.then(|| Proxy::start(host.port, Link::Delay(DELAY)));
    let port = proxy.as_ref().map_or(host.port, |p| p.port);
    let user = if case.sudo { "deploy" } else { "root" };
    // The host's real key, whatever port it is reached on.
    let sshopts = format!("{} -o HostKeyAlias=[127.0.0.1]:{}", tb.nix_sshopts(), host.port);
    let command = match nixpipe {
        true => format!(
            "export NIX_SSHOPTS='{sshopts}'; nixpipe-copy --to {user}@127.0.0.1:{port} {after} | nixpipe-activate --on {user}@127.0.0.1:{port} switch >/dev/null"
        ),
        false => {
            let sudo = if case.sudo { "sudo" } else { "" };
            format!("NIX_SSHOPTS='{sshopts}' bash -c '{}' nixos-rebuild {user}@127.0.0.1 {port} {after} '{sudo}' >/dev/null 2>&1", NIXOS_REBUILD_NG.replace('\'', r"'\''"))
        }
    };
    let seconds = time(tb, &command);
    let runs = host.sh("readlink /run/current-system");
    assert_eq!(runs.trim(), after, "{}: the deploy did not switch the host ({command})", case.name);
    seconds
}

/// The floor of any deploy over ssh: one login, and one command on a
/// connection already open; on loopback and at 40 ms.
fn deploy_floor(tb: &Testbed) {
    let host = tb.host("web1");
    let proxy = Proxy::start(host.port, Link::Delay(DELAY));
    let sshopts = format!("{} -o HostKeyAlias=[127.0.0.1]:{}", tb.nix_sshopts(), host.port);
    let ctl = tb.path().join("floor-%C");
    let shared = format!("-o ControlMaster=auto -o ControlPath={} -o ControlPersist=30", ctl.display());
    println!("\n| the floor | loopback | 40 ms RTT |\n|---|---:|---:|");
    let row = |name: &str, options: &str, open_first: bool| {
        let at = |port: u16| {
            let ssh = format!("ssh {sshopts} {options} -p {port} root@127.0.0.1 true");
            if open_first {
                time(tb, &ssh);
            }
            time(tb, &ssh)
        };
        println!("| {name} | {:.3} s | {:.3} s |", at(host.port), at(proxy.port));
    };
    row("ssh HOST true, a new login", "", false);
    // Its first login opens the shared connection; the one after is timed.
    row("ssh HOST true, over an open connection", &shared, true);
}

/// nixpipe-status on `count` hosts behind 40 ms round trips, each running
/// a system, against one `ssh HOST readlink /run/current-system` per host
/// all at once: the least any tool could do to know what runs.
fn status() {
    let count = env_or("BENCH_HOSTS", 16);
    let tb = Testbed::new();
    let system = tb.system("web1");
    let hosts: Vec<Host> = (1..=count).map(|i| tb.host(&format!("web{i}"))).collect();
    let _proxies: Vec<Proxy> = hosts
        .iter()
        .map(|host| {
            let proxy = Proxy::start(host.port, Link::Delay(DELAY));
            tb.alias_at(&host.hostname, host, "root", proxy.port);
            proxy
        })
        .collect();
    let records = format!("for i in $(seq 1 {count}); do printf 'web%s\\t%s\\n' $i {system}; done");
    tb.sh(&format!("{records} | nixpipe-copy --jobs 16 | nixpipe-activate --jobs 16 switch >/dev/null")).ok();
    let rows = [
        ("nixpipe-status --jobs 16", time(&tb, &format!("{records} | nixpipe-status --jobs 16 >/dev/null"))),
        (
            "ssh HOST readlink /run/current-system, all at once",
            time(
                &tb,
                &format!(
                    "for i in $(seq 1 {count}); do ssh $NIX_SSHOPTS web$i readlink /run/current-system >/dev/null & done; wait"
                ),
            ),
        ),
        ("nixpipe-status --jobs 1", time(&tb, &format!("{records} | nixpipe-status --jobs 1 >/dev/null"))),
    ];
    println!("\n## nixpipe-status: {count} hosts, 40 ms round trips\n");
    table(&rows);
}

/// `count` hosts (and a relay) behind 40 ms round trips, the deployer's
/// uplink to all of them one shared, limited line: the same closure to
/// every host by nixpipe-copy --via the relay, by nixpipe-copy straight to
/// each, and by one nix-copy-closure per host, all at once. Wall time and
/// the bytes the deployer sent.
fn fleet() {
    let count = env_or("BENCH_HOSTS", 16);
    let mbit = env_or("BENCH_UPLINK_MBIT", 80);
    let paths = env_or("BENCH_FLEET_PATHS", 100);
    let tb = Testbed::new();
    let closure = tb.filler(paths, 200_000, "-bench-fleet");
    let closure_bytes: u64 = tb
        .sh(&format!("nix-store --query --size $(nix-store --query --requisites {closure})"))
        .ok()
        .stdout
        .lines()
        .map(|l| l.trim().parse::<u64>().unwrap())
        .sum();
    let all =
        |command: &str| format!("for i in $(seq 1 {count}); do printf 'web%s\\t%s\\n' $i {closure}; done | {command}");
    let rows = [
        ("nixpipe-copy, one host", fleet_run(&tb, 1, Some(mbit), &format!("nixpipe-copy --to root@web1 {closure}"))),
        (
            "nixpipe-copy --via the relay",
            fleet_run(
                &tb,
                count,
                Some(mbit),
                &tb.with_agent(&all("nixpipe-copy --via relay --jobs 16 --to 'root@{name}' >/dev/null")),
            ),
        ),
        (
            "nixpipe-copy to each host (--jobs 16)",
            fleet_run(&tb, count, Some(mbit), &all("nixpipe-copy --jobs 16 --to 'root@{name}' >/dev/null")),
        ),
        (
            "nix-copy-closure per host, all at once",
            fleet_run(
                &tb,
                count,
                Some(mbit),
                &format!("for i in $(seq 1 {count}); do nix-copy-closure --to root@web$i {closure} & done; wait"),
            ),
        ),
        (
            "nixpipe-copy to each host, no link limits (what this machine's 2 cores can do)",
            fleet_run(&tb, count, None, &all("nixpipe-copy --jobs 16 --to 'root@{name}' >/dev/null")),
        ),
    ];
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "\n## A fleet: {count} hosts, 40 ms round trips, the deployer's uplink {mbit} Mbit/s shared, a {paths}-path closure of {:.1} MiB\n",
        mib(closure_bytes)
    );
    println!("| how | seconds | vs one host | MiB the deployer sent | vs the closure |\n|---|---:|---:|---:|---:|");
    for (name, (seconds, sent)) in &rows {
        println!(
            "| {name} | {seconds:.2} | {:.2}x | {:.1} | {:.2}x |",
            seconds / rows[0].1 .0,
            mib(*sent),
            *sent as f64 / closure_bytes as f64
        );
    }
    println!(
        "\n- --via: the deployer sent {:.2}x the closure (goal: about 1x); wall time {:.2}x one host (goal: at most 2x); \
         nix-copy-closure per host took {:.1}x as long",
        rows[1].1 .1 as f64 / closure_bytes as f64,
        rows[1].1 .0 / rows[0].1 .0,
        rows[3].1 .0 / rows[1].1 .0
    );
}

/// Runs `command` against `count` fresh hosts web1.. and a relay, each
/// behind its own 40 ms proxy on one shared uplink of `mbit` Mbit/s (or
/// reached directly when None); the relay reaches the hosts directly.
/// Seconds taken and bytes sent up.
fn fleet_run(tb: &Testbed, count: u32, mbit: Option<u32>, command: &str) -> (f64, u64) {
    let uplink = mbit.map(|mbit| Uplink::new(u64::from(mbit) * 1_000_000 / 8));
    let behind = |host: &Host, name: &str| match &uplink {
        None => {
            tb.alias(name, host, "root");
            None
        }
        Some(uplink) => {
            let proxy = Proxy::start(host.port, Link::Uplink { delay: DELAY, uplink: uplink.clone() });
            tb.alias_at(name, host, "root", proxy.port);
            Some(proxy)
        }
    };
    let relay = tb.host("relay");
    let mut proxies = vec![behind(&relay, "relay")];
    let hosts: Vec<Host> = (1..=count).map(|i| tb.host(&format!("web{i}"))).collect();
    for host in &hosts {
        proxies.push(behind(host, &host.hostname));
        relay.alias(&host.hostname, host);
    }
    let seconds = time(tb, command);
    (seconds, uplink.map_or(0, |uplink| uplink.sent()))
}

/// A network of `count` machines evaluated and built by one nixpipe-eval,
/// against one `nix-build '<nixpkgs/nixos>'` per machine; both warm (built
/// once before), so that evaluation is what is measured.
fn eval() {
    let count = env_or("BENCH_MACHINES", 20);
    let tb = Testbed::new();
    let dir = tb.path().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let mut network = String::from("{\n");
    for i in 0..count {
        let machine = format!("{{ networking.hostName = \"m{i}\"; testbed.closure = 2; }}\n");
        std::fs::write(dir.join(format!("m{i}.nix")), &machine).unwrap();
        network.push_str(&format!("  m{i} = import ./m{i}.nix;\n"));
    }
    std::fs::write(dir.join("network.nix"), network + "}\n").unwrap();
    let ours = format!("nixpipe-eval --network {}/network.nix --nixpkgs \"$NIXPKGS\" >/dev/null", dir.display());
    let theirs = format!(
        "for i in $(seq 0 {}); do nix-build --no-out-link -I nixpkgs=\"$NIXPKGS\" '<nixpkgs/nixos>' -A system \
         --arg configuration {}/m$i.nix >/dev/null; done",
        count - 1,
        dir.display()
    );
    tb.sh(&ours).ok();
    let rows = [
        ("nixpipe-eval --network (one evaluation, one build)", time(&tb, &ours)),
        ("nix-build per machine", time(&tb, &theirs)),
    ];
    println!("\n## Evaluating {count} machines (built before, so evaluation is what is measured)\n");
    table(&rows);
    println!("\n- nixpipe-eval / {count} nix-build calls = {:.2}x (goal: under 0.3x)", rows[0].1 / rows[1].1);
}

fn copy() {
    let small_paths: u32 = env_or("BENCH_SMALL_PATHS", 1000);
    let big_mib: u32 = env_or("BENCH_BIG_MIB", 1024);
    let tb = Testbed::new();
    // `nix copy` of Nix 2.34 runs from sid's root: the best copy any Nix
    // offers today, next to this machine's own Nix.
    let sid = tb.path().join("sid-nix");
    Release::Sid.install_nix_wrappers(&sid).expect("sid's root (scripts/release-root.sh)");
    let new_nix = Tool::NixCopySshNg(Some(sid.display().to_string()));
    let old_nix = Tool::NixCopySshNg(None);
    let nix_version = |tool: &Tool| {
        let path = match tool {
            Tool::NixCopySshNg(Some(bin)) => format!("PATH={bin}:$PATH "),
            _ => String::new(),
        };
        tb.sh(&format!("{path}nix --version")).ok().stdout.split_whitespace().last().unwrap_or("?").to_owned()
    };
    let (old_version, new_version) = (nix_version(&old_nix), nix_version(&new_nix));
    let small = tb.filler(small_paths, 1000, "-bench-small");
    // Eight paths of an eighth each: one closure of about big_mib MiB.
    let big = tb.filler(8, big_mib * 1024 * 128, "-bench-big");
    let programs = tb.build("-E 'with import <nixpkgs> {}; runCommand \"programs\" {} \"cp -a /usr/bin $out\"'");
    let programs_mib = tb.sh(&format!("du -sm {programs} | cut -f1")).ok().stdout.trim().to_owned();
    let old_copy = format!("nix copy --to ssh-ng:// (Nix {old_version})");
    let new_copy = format!("nix copy --to ssh-ng:// (Nix {new_version})");

    println!("\n## Cold copy, {small_paths} paths of 1 kB, 40 ms round trips (TCP proxy, 20 ms each way)\n");
    let slow = [
        ("nixpipe-copy --protocol serve", time_cold(&tb, &small, Some(DELAY), Tool::Nixpipe("serve")).0),
        ("nixpipe-copy --protocol daemon", time_cold(&tb, &small, Some(DELAY), Tool::Nixpipe("daemon")).0),
        ("nix-copy-closure", time_cold(&tb, &small, Some(DELAY), Tool::NixCopyClosure).0),
        (old_copy.as_str(), time_cold(&tb, &small, Some(DELAY), old_nix.clone()).0),
        (new_copy.as_str(), time_cold(&tb, &small, Some(DELAY), new_nix.clone()).0),
    ];
    table(&slow);

    println!(
        "\n## Cold copy, {big_mib} MiB closure of 8 paths, loopback: wall time and the whole machine's CPU time (/proc/stat), medians of {} interleaved rounds\n",
        env_or("BENCH_ROUNDS", 3)
    );
    let web1 = tb.host("bench");
    let serve_command = format!("{} {big}", Tool::Nixpipe("serve").command(&tb, &web1, None));
    let peak_kib = peak_memory_kib(&tb, &serve_command);
    drop(web1);
    let tools = [
        ("nixpipe-copy --protocol serve", Tool::Nixpipe("serve")),
        ("nixpipe-copy --protocol daemon", Tool::Nixpipe("daemon")),
        ("nix-copy-closure", Tool::NixCopyClosure),
        (old_copy.as_str(), old_nix.clone()),
        (new_copy.as_str(), new_nix.clone()),
        ("tar piped into ssh (the floor)", Tool::Tar),
    ];
    let rounds = env_or("BENCH_ROUNDS", 3);
    let fast = medians_of_rounds(&tools, rounds, |tool| time_cold(&tb, &big, None, tool.clone()));
    println!(
        "| tool | seconds | CPU seconds | seconds vs nix-copy-closure | CPU vs nix-copy-closure | seconds vs tar |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let (ncc, tar) = (fast[2].1, fast[5].1);
    for (name, (seconds, cpu)) in &fast {
        println!(
            "| {name} | {seconds:.2} | {cpu:.2} | {:.2}x | {:.2}x | {:.2}x |",
            seconds / ncc.0,
            cpu / ncc.1,
            seconds / tar.0
        );
    }

    println!("\n## Warm copy (everything present), {small_paths}-path closure, loopback\n");
    let web1 = tb.host("bench");
    tb.sh(&format!("{} {small}", Tool::Nixpipe("serve").command(&tb, &web1, None))).ok();
    let warm_time = |tool: Tool| time(&tb, &format!("{} {small}", tool.command(&tb, &web1, None)));
    let warm = [
        ("nixpipe-copy --protocol serve", warm_time(Tool::Nixpipe("serve"))),
        ("nixpipe-copy --protocol daemon", warm_time(Tool::Nixpipe("daemon"))),
        ("nixpipe-copy --protocol auto", warm_time(Tool::Nixpipe("auto"))),
        ("nix-copy-closure", warm_time(Tool::NixCopyClosure)),
        (old_copy.as_str(), warm_time(old_nix.clone())),
        (new_copy.as_str(), warm_time(new_nix.clone())),
        (
            "ssh HOST true (the connection alone)",
            time(&tb, &format!("ssh {} -p {} root@127.0.0.1 true", tb.nix_sshopts(), web1.port)),
        ),
    ];
    table(&warm);
    drop(web1);

    println!("\n## Warm copy, {small_paths}-path closure, 40 ms round trips: how many round trips after ssh's own\n");
    let web1 = tb.host("bench");
    tb.sh(&format!("{} {small}", Tool::Nixpipe("serve").command(&tb, &web1, None))).ok();
    let proxy = Proxy::start(web1.port, Link::Delay(DELAY));
    let slow_warm = |tool: Tool| time(&tb, &format!("{} {small}", tool.command(&tb, &web1, Some(&proxy))));
    let ssh_alone = time(
        &tb,
        &format!(
            "ssh {} -o HostKeyAlias=[127.0.0.1]:{} -p {} root@127.0.0.1 true",
            tb.nix_sshopts(),
            web1.port,
            proxy.port
        ),
    );
    let rtt = 2.0 * DELAY.as_secs_f64();
    let warm_slow = [
        ("nixpipe-copy --protocol serve", slow_warm(Tool::Nixpipe("serve"))),
        ("nixpipe-copy --protocol daemon", slow_warm(Tool::Nixpipe("daemon"))),
        ("nixpipe-copy --protocol auto", slow_warm(Tool::Nixpipe("auto"))),
        ("nix-copy-closure", slow_warm(Tool::NixCopyClosure)),
        (new_copy.as_str(), slow_warm(new_nix.clone())),
        ("ssh HOST true (the connection alone)", ssh_alone),
    ];
    println!("| tool | seconds | round trips after ssh's |\n|---|---:|---:|");
    for (name, seconds) in &warm_slow {
        println!("| {name} | {seconds:.2} | {:.1} |", (seconds - ssh_alone) / rtt);
    }
    drop(proxy);
    drop(web1);

    println!("\n## --compress: none or zstd, on real programs (a copy of /usr/bin, {programs_mib} MiB)\n");
    let shaped = Link::Shaped { delay: DELAY, bytes_per_second: 100_000_000 / 8 };
    let compress = [
        ("none, loopback", time_cold_link(&tb, &programs, None, "none")),
        ("zstd, loopback", time_cold_link(&tb, &programs, None, "zstd")),
        ("none, 100 Mbit/s and 40 ms RTT", time_cold_link(&tb, &programs, Some(shaped.clone()), "none")),
        ("zstd, 100 Mbit/s and 40 ms RTT", time_cold_link(&tb, &programs, Some(shaped), "zstd")),
    ];
    table(&compress);

    println!("\n## Against the goals\n");
    for (i, protocol) in ["serve", "daemon"].iter().enumerate() {
        println!(
            "- {small_paths} small paths at 40 ms RTT, --protocol {protocol}: nix-copy-closure / nixpipe-copy = {:.1}x (goal: at least 20x); nix copy ssh-ng of Nix {new_version} / nixpipe-copy = {:.2}x (goal: at least 1.2x)",
            slow[2].1 / slow[i].1,
            slow[4].1 / slow[i].1
        );
        let (seconds, cpu) = fast[i].1;
        println!(
            "- {big_mib} MiB on loopback, --protocol {protocol}: wall {:.2}x nix-copy-closure's, CPU {:.2}x its (goal: at most 1x each); {:.2}x tar's wall time (goal: at most 1.3x)",
            seconds / ncc.0,
            cpu / ncc.1,
            seconds / tar.0
        );
        println!(
            "- warm copy at 40 ms RTT, --protocol {protocol}: {:.1} round trips after ssh's own (goal: one)",
            (warm_slow[i].1 - ssh_alone) / rtt
        );
    }
    println!(
        "- peak memory of nixpipe-copy on the {big_mib} MiB copy: {:.1} MiB (goal: bounded by buffers)",
        peak_kib as f64 / 1024.0
    );
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone)]
enum Tool {
    /// With this --protocol.
    Nixpipe(&'static str),
    NixCopyClosure,
    /// `nix copy` of this machine's Nix, or of the one whose wrappers are
    /// in this directory.
    NixCopySshNg(Option<String>),
    Tar,
}

impl Tool {
    /// The command line that copies to `host`, through `proxy` if given;
    /// the closure's root path goes at the end.
    fn command(&self, tb: &Testbed, host: &Host, proxy: Option<&Proxy>) -> String {
        let port = proxy.map_or(host.port, |p| p.port);
        // The host's real key, whatever port it is reached on.
        let sshopts = format!("{} -o HostKeyAlias=[127.0.0.1]:{}", tb.nix_sshopts(), host.port);
        match self {
            Tool::Nixpipe(protocol) => {
                format!("env NIX_SSHOPTS='{sshopts}' nixpipe-copy --protocol {protocol} --to root@127.0.0.1:{port}")
            }
            Tool::NixCopyClosure => format!("env NIX_SSHOPTS='{sshopts} -p {port}' nix-copy-closure --to root@127.0.0.1"),
            Tool::NixCopySshNg(bin) => format!(
                "env {}NIX_SSHOPTS='{sshopts} -p {port}' nix copy --no-check-sigs --to ssh-ng://root@127.0.0.1",
                bin.as_ref().map(|bin| format!("PATH={bin}:$PATH ")).unwrap_or_default()
            ),
            Tool::Tar => format!(
                "f() {{ tar -C / -cf - $(nix-store --query --requisites \"$1\") \
                 | ssh {sshopts} -p {port} root@127.0.0.1 'mkdir -p /var/lib/floor && tar -C /var/lib/floor -xf -'; }}; f"
            ),
        }
    }
}

/// Copies `path` with `tool` to a fresh host, optionally behind a delaying
/// proxy; the seconds it took, and the CPU seconds the whole machine spent.
fn time_cold(tb: &Testbed, path: &str, delay: Option<Duration>, tool: Tool) -> (f64, f64) {
    let host = tb.host("bench");
    let proxy = delay.map(|d| Proxy::start(host.port, Link::Delay(d)));
    let before = machine_cpu_seconds();
    let seconds = time(tb, &format!("{} {path}", tool.command(tb, &host, proxy.as_ref())));
    (seconds, machine_cpu_seconds() - before)
}

/// CPU time every process of the machine spent so far, from /proc/stat:
/// user, nice, system, irq, softirq and steal, not idle or iowait.
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu = stat.lines().next().expect("the cpu line");
    let ticks: Vec<u64> = cpu.split_whitespace().skip(1).map(|n| n.parse().unwrap_or(0)).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    busy as f64 / clock_ticks_per_second()
}

/// The unit of /proc/stat, `getconf CLK_TCK`.
fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("getconf CLK_TCK says a number")
}

/// nixpipe-copy with `--compress how` to a fresh host, through `link`.
fn time_cold_link(tb: &Testbed, path: &str, link: Option<Link>, how: &str) -> f64 {
    let host = tb.host("bench");
    let proxy = link.map(|l| Proxy::start(host.port, l));
    time(tb, &format!("{} --compress {how} {path}", Tool::Nixpipe("auto").command(tb, &host, proxy.as_ref())))
}

fn time(tb: &Testbed, command: &str) -> f64 {
    let started = Instant::now();
    tb.sh(command).ok();
    started.elapsed().as_secs_f64()
}

/// The peak resident memory (KiB) of one command.
fn peak_memory_kib(tb: &Testbed, command: &str) -> u64 {
    let run = tb.sh(&format!("/usr/bin/time -f 'peak-rss-kib %M' {command}")).ok();
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib "))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("GNU time's report")
}

/// Runs every tool once per round, the tools interleaved so that a slow
/// spell of a shared machine falls on all of them; the median wall and CPU
/// seconds of each.
fn medians_of_rounds<'a>(
    tools: &[(&'a str, Tool)],
    rounds: u32,
    mut run: impl FnMut(&Tool) -> (f64, f64),
) -> Vec<(&'a str, (f64, f64))> {
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); tools.len()];
    for _ in 0..rounds.max(1) {
        for (i, (_, tool)) in tools.iter().enumerate() {
            runs[i].push(run(tool));
        }
    }
    tools
        .iter()
        .zip(runs)
        .map(|((name, _), runs)| {
            let median = |pick: fn(&(f64, f64)) -> f64| {
                let mut values: Vec<f64> = runs.iter().map(pick).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            (*name, (median(|r| r.0), median(|r| r.1)))
        })
        .collect()
}

fn table(rows: &[(&str, f64)]) {
    let base = rows[0].1;
    println!("| tool | seconds | vs the first |\n|---|---:|---:|");
    for (name, seconds) in rows {
        println!("| {name} | {seconds:.2} | {:.2}x |", seconds / base);
    }
}
