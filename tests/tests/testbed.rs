//! The testbed itself: hosts are separate machines in all that matters to
//! a deployment, and leave nothing behind.

use nixpipe_tests::{Host, Init, Testbed, DEPLOY_PASSWORD};

#[test]
fn a_host_has_its_own_hostname_store_and_users() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let db1 = tb.host("db1");

    let run = tb
        .sh(&format!("ssh $NIX_SSHOPTS -p {} root@127.0.0.1 'hostname; ls /nix/store 2>/dev/null | wc -l'", web1.port))
        .ok();
    assert_eq!(run.stdout, "web1\n0\n");
    assert_eq!(db1.sh("hostname").trim(), "db1");

    let sudo = format!(
        "ssh $NIX_SSHOPTS -p {} deploy@127.0.0.1 'echo \"{DEPLOY_PASSWORD}\" | sudo -S -p \"\" id -u'",
        web1.port
    );
    assert_eq!(tb.sh(&sudo).ok().stdout.trim(), "0");
}

/// Stops `host` after it wrote to its /nix, /var/lib and /etc, and checks
/// that nothing of it is left: directory, sshd, processes, cgroups, and
/// what systemd's services made in /tmp.
fn assert_stopping_leaves_nothing(host: Host) {
    let dir = host.dir().to_owned();
    let port = host.port;
    host.sh("mkdir -p /nix/store/x && echo hi > /var/lib/mark && echo '{}' > /etc/nixos/nixpipe-testbed-mark.nix");
    assert!(!std::path::Path::new("/etc/nixos/nixpipe-testbed-mark.nix").exists(), "a host's /etc is its own");
    let boot_id = host.sh("cat /proc/sys/kernel/random/boot_id").trim().replace('-', "");
    let systemd = host.kind.init == Init::Systemd;

    drop(host);

    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "sshd still listens");
    let left = std::process::Command::new("pgrep").args(["-f", &dir.display().to_string()]).output().unwrap();
    assert!(left.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&left.stdout));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let cgroups = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "3", "-name"])
        .arg(format!("*{name}"))
        .output()
        .unwrap();
    assert!(cgroups.stdout.is_empty(), "cgroups left: {}", String::from_utf8_lossy(&cgroups.stdout));
    if systemd {
        let private = format!("systemd-private-{boot_id}-");
        let left: Vec<_> = std::fs::read_dir("/tmp").unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(!left.iter().any(|name| name.to_string_lossy().starts_with(&private)), "{private}* left in /tmp");
    }
}

#[test]
fn a_stopped_host_leaves_nothing_behind() {
    let tb = Testbed::new();
    assert_stopping_leaves_nothing(tb.host("web1"));
}

#[test]
fn a_stopped_systemd_host_leaves_nothing_behind() {
    let tb = Testbed::new();
    assert_stopping_leaves_nothing(tb.systemd_host("web1"));
}

#[test]
fn the_stand_in_nixpkgs_has_the_entry_points_of_real_nixpkgs() {
    let tb = Testbed::new();
    let nixos = r#"'<nixpkgs/nixos>' --arg configuration "$FIXTURES/web1/configuration.nix""#;

    let system = tb.build(&format!("{nixos} -A system"));
    assert_eq!(tb.build(&format!("{nixos} -A config.system.build.toplevel")), system);
    let vm_system = tb.build(&format!("{nixos} -A config.virtualisation.vmVariant.system.build.toplevel"));
    assert_ne!(vm_system, system, "the VM variant is another system");
    let vm = tb.build(&format!("{nixos} -A vm"));
    assert_eq!(std::fs::read_link(format!("{vm}/system")).unwrap().to_str(), Some(&*vm_system));
    assert!(std::path::Path::new(&format!("{vm}/bin/run-web1-vm")).exists());

    let files = ["nixos-version", "etc/hostname", "init", "bin/switch-to-configuration", "specialisation", "system"];
    for file in files.into_iter().chain(["kernel", "initrd", "kernel-modules"]) {
        assert!(std::path::Path::new(&format!("{system}/{file}")).exists(), "{file}");
    }
    // testbed.closure = 3 extra paths, plus busybox, bash (sw/bin/sh),
    // hello, system-path, the kernel, the initrd and the toplevel.
    let closure = tb.sh(&format!("nix-store --query --requisites {system}")).ok().stdout_lines().len();
    assert_eq!(closure, 10);
}

#[test]
fn the_stand_in_nixpkgs_offers_lib_nixos_system_to_flakes() {
    let tb = Testbed::new();
    std::fs::create_dir(tb.path().join("flake")).unwrap();
    std::fs::write(
        tb.path().join("flake/flake.nix"),
        r#"{
          inputs.nixpkgs.url = "path:NIXPKGS";
          outputs = { self, nixpkgs }: {
            nixosConfigurations.web1 = nixpkgs.lib.nixosSystem {
              system = "x86_64-linux";
              modules = [ { networking.hostName = "web1"; } ];
            };
          };
        }"#
        .replace("NIXPKGS", &nixpipe_tests::nixpkgs().display().to_string()),
    )
    .unwrap();

    let run =
        tb.sh("cd flake && nix build --no-link --json .#nixosConfigurations.web1.config.system.build.toplevel").ok();

    assert!(run.stdout.contains("-nixos-system-web1-"), "{}", run.stdout);
}

#[test]
fn a_systemd_host_boots_real_systemd_with_its_own_store_and_users() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");

    let run = tb
        .sh(&format!(
            "ssh $NIX_SSHOPTS -p {} root@127.0.0.1 'hostname; ps -o comm= -p 1; ls /nix/store 2>/dev/null | wc -l; systemd-run --quiet --wait --collect --unit=probe true && echo unit-ran'",
            web1.port
        ))
        .ok();
    assert_eq!(run.stdout, "web1\nsystemd\n0\nunit-ran\n");
    let sudo = format!(
        "ssh $NIX_SSHOPTS -p {} deploy@127.0.0.1 'echo \"{DEPLOY_PASSWORD}\" | sudo -S -p \"\" id -u'",
        web1.port
    );
    assert_eq!(tb.sh(&sudo).ok().stdout.trim(), "0");
}

#[test]
fn a_missing_prerequisite_is_one_line_naming_it_and_its_package() {
    let testbed = nixpipe_tests::bin_dir().join("nixpipe-testbed");

    let run =
        std::process::Command::new(testbed).args(["web1", "--", "true"]).env("PATH", "/nonexistent").output().unwrap();

    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8(run.stderr).unwrap();
    let [line] = stderr.lines().collect::<Vec<_>>()[..] else { panic!("one line: {stderr}") };
    assert!(line.starts_with("nixpipe-testbed: missing ssh (openssh-client), "), "{line}");
    assert!(line.ends_with("scripts/setup.sh installs them (make test and make demo run it)"), "{line}");
}

#[test]
fn a_systemd_host_reboots_into_its_system_profile_on_the_same_disk() {
    let tb = Testbed::new();
    let web1 = tb.systemd_host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system} | nixpipe-activate --on {t} boot")).ok();
    let started = web1.sh("cut -d' ' -f22 /proc/1/stat");

    web1.sh("systemctl reboot");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let pid1_started = || {
        let run =
            tb.sh(&format!("ssh {} -p {} root@127.0.0.1 cut -d\\' \\' -f22 /proc/1/stat", tb.nix_sshopts(), web1.port));
        Some(run.stdout).filter(|_| run.code == 0)
    };
    while !matches!(pid1_started(), Some(now) if now != started) {
        assert!(std::time::Instant::now() < deadline, "web1 did not come back");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    assert_eq!(web1.sh("readlink /run/booted-system").trim(), system);
    assert_eq!(web1.sh("readlink /run/current-system").trim(), system);
    assert!(web1.has(&system), "the same disk");
}
