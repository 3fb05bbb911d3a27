//! The testbed itself: hosts are separate machines in all that matters to
//! a deployment, and leave nothing behind.

use nixpipe_tests::{Testbed, DEPLOY_PASSWORD};

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

#[test]
fn a_stopped_host_leaves_nothing_behind() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let dir = web1.dir().to_owned();
    let port = web1.port;
    web1.sh("mkdir -p /nix/store/x && echo hi > /var/lib/mark");

    drop(web1);

    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "sshd still listens");
    let sshds = std::process::Command::new("pgrep").args(["-f", &dir.display().to_string()]).output().unwrap();
    assert!(sshds.stdout.is_empty(), "processes left: {}", String::from_utf8_lossy(&sshds.stdout));
}
