//! nixpipe-copy's two protocols: what `--protocol auto` chooses, and a
//! target whose Nix has dropped `nix-store --serve` (NixOS/nix#16185).
//! Every other copy scenario runs over each protocol in the matrix
//! (scripts/test.sh sets NIXPIPE_COPY_PROTOCOL).

use nixpipe_tests::{Host, Testbed};

/// How a Nix without `nix-store --serve` refuses it: as any flag it does
/// not know (a Nix built without it).
const UNKNOWN_FLAG: &str = "error: unrecognised flag '--serve'\nTry 'nix-store --help' for more information.";
/// As NixOS/nix#16185 makes it refuse: "no longer supported", pointing at
/// the daemon protocol.
const NO_LONGER_SUPPORTED: &str =
    "error: 'nix-store --serve' is no longer supported; use 'nix-daemon --stdio' (the ssh-ng:// store) instead";

/// Puts a stand-in for `program` (nix-store or nix-daemon) first on the
/// PATH of every ssh session on `host`: a sh script of `body`, which
/// reaches the real nix-store as /run/nixpipe-real/nix-store. A stand-in is
/// there to make the real Nix lack or break what a test needs it to.
fn stand_in(host: &Host, program: &str, body: &str) {
    std::fs::write(host.dir().join(program), format!("#!/bin/sh\n{body}\n")).unwrap();
    host.sh(&format!(
        "mkdir -p /run/nixpipe-real && ln -sfn /usr/bin/nix /run/nixpipe-real/nix-store
mountpoint -q /usr/local/bin || mount -t tmpfs -o mode=755 nixpipe-stand-in /usr/local/bin
install -m 755 {}/{program} /usr/local/bin/{program}",
        host.dir().display()
    ));
}

/// Makes `host` a Nix without the serve protocol: its nix-store refuses
/// `--serve` with `message` on stderr and exit 1, and is the real one
/// otherwise; nix-daemon stays real.
fn without_serve(host: &Host, message: &str) {
    std::fs::write(host.dir().join("no-serve-message"), format!("{message}\n")).unwrap();
    let body = format!(
        r#"for arg; do
    if [ "$arg" = --serve ]; then
        cat {}/no-serve-message >&2
        exit 1
    fi
done
exec /run/nixpipe-real/nix-store "$@""#,
        host.dir().display()
    );
    stand_in(host, "nix-store", &body);
}

fn closure_of(host: &Host, path: &str) -> String {
    host.sh(&format!("nix-store --query --requisites {path} | sort"))
}

/// auto to a host whose nix-store refuses `--serve` with `message`: every
/// path arrives over the daemon protocol, and a rerun copies nothing.
fn auto_copies_over_the_daemon_protocol_to(message: &str, seed: &str) {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    without_serve(&web1, message);
    let chain = tb.filler(10, 10_000, seed);
    let t = web1.target();

    let first = tb.sh(&format!("nixpipe-copy --json --to {t} {chain}")).ok().json_lines();
    let again = tb.sh(&format!("nixpipe-copy --json --to {t} {chain}")).ok().json_lines();

    assert_eq!(first[0]["copy"]["copiedPaths"], 10);
    assert_eq!(again[0]["copy"]["copiedPaths"], 0);
    assert_eq!(closure_of(&web1, &chain), tb.sh(&format!("nix-store --query --requisites {chain} | sort")).ok().stdout);
    web1.assert_store_sound();
}

#[test]
fn auto_copies_over_the_daemon_protocol_to_a_nix_without_serve() {
    auto_copies_over_the_daemon_protocol_to(UNKNOWN_FLAG, "-no-serve");
}

#[test]
fn auto_copies_over_the_daemon_protocol_to_a_nix_that_says_serve_is_no_longer_supported() {
    auto_copies_over_the_daemon_protocol_to(NO_LONGER_SUPPORTED, "-serve-removed");
}

#[test]
fn auto_chooses_by_what_nix_store_does_not_by_what_it_says() {
    auto_copies_over_the_daemon_protocol_to("nix-store: --serve went fishing today", "-serve-fishing");
}

#[test]
fn auto_copies_from_a_nix_without_serve_to_one_with_it() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(5, 5000, "-from-no-serve");
    tb.sh(&format!("nixpipe-copy --to {} {chain}", build1.target())).ok();
    without_serve(&build1, NO_LONGER_SUPPORTED);
    // Gone from here, so the bytes can only come from build1.
    tb.sh(&format!("nix-store --delete $(nix-store --query --requisites {chain})")).ok();

    tb.sh(&format!("nixpipe-copy --from {} --to {} {chain}", build1.target(), web1.target())).ok();

    assert_eq!(closure_of(&web1, &chain), closure_of(&build1, &chain));
    web1.assert_store_sound();
}

#[test]
fn serve_asked_of_a_nix_without_it_is_one_line_and_copies_nothing() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    without_serve(&web1, UNKNOWN_FLAG);
    let chain = tb.filler(2, 100, "-serve-gone");

    let run = tb.sh(&format!("nixpipe-copy --protocol serve --to {} {chain}", web1.target()));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("unrecognised flag '--serve'"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(!web1.has(&chain));
}

#[test]
fn both_protocols_copy_the_same_closure_byte_for_byte() {
    let tb = Testbed::new();
    let (web1, web2) = (tb.host("web1"), tb.host("web2"));
    let odd = tb.build("-E 'with import <nixpkgs> {}; oddities'");

    tb.sh(&format!("nixpipe-copy --protocol serve --to {} {odd}", web1.target())).ok();
    tb.sh(&format!("nixpipe-copy --protocol daemon --to {} {odd}", web2.target())).ok();

    let dump = |host: &Host| host.sh(&format!("nix-store --dump {odd} | sha256sum"));
    assert_eq!(dump(&web1), dump(&web2));
    assert_eq!(dump(&web1), tb.sh(&format!("nix-store --dump {odd} | sha256sum")).ok().stdout);
    web2.assert_store_sound();
}

#[test]
fn an_unknown_protocol_is_bad_usage() {
    let tb = Testbed::new();

    let run = tb.sh("nixpipe-copy --protocol ftp --to root@web1 /nix/store/36m5mhfn262qgji13vrgp907an576qjz-x");

    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("invalid value 'ftp' for '--protocol <PROTOCOL>'"), "{}", run.stderr);
}

/// Gives `host`'s deploy user, who is not root, what a deployer has: the
/// testbed's ssh key and known hosts, and nixpipe-copy in its home. Its home.
fn deployer_who_is_not_root(tb: &Testbed, host: &Host) -> std::path::PathBuf {
    let home = host.dir().join("home/deploy");
    for dir in [".ssh", "bin", "lib"] {
        std::fs::create_dir_all(home.join(dir)).unwrap();
    }
    let ssh = home.join(".ssh");
    for file in ["id_ed25519", "known_hosts"] {
        std::fs::copy(tb.path().join(file), ssh.join(file)).unwrap();
    }
    std::fs::write(ssh.join("config"), nixpipe_tests::ssh_config(&ssh)).unwrap();
    install_with_its_libraries(&nixpipe_tests::bin_dir().join("nixpipe-copy"), &home);
    host.sh(&format!("chown -R deploy: {}", home.display()));
    home
}

/// Installs `program` as `home`/bin/NAME, run by this machine's own loader
/// and libraries copied into `home`/lib: the host may run an older Debian,
/// whose glibc is older than the one `program` was linked against here.
fn install_with_its_libraries(program: &std::path::Path, home: &std::path::Path) {
    let ldd = std::process::Command::new("ldd").arg(program).output().unwrap();
    let mut loader = None;
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", or the
        // loader's "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
        let Some(file) = line.split_whitespace().rev().nth(1).filter(|f| f.starts_with('/')) else { continue };
        let name = std::path::Path::new(file).file_name().unwrap();
        std::fs::copy(file, home.join("lib").join(name)).unwrap();
        if !line.contains("=>") {
            loader = Some(home.join("lib").join(name));
        }
    }
    let name = program.file_name().unwrap().to_str().unwrap();
    std::fs::copy(program, home.join("lib").join(name)).unwrap();
    let wrapper = format!(
        "#!/bin/sh\nexec {} --library-path {lib} {lib}/{name} \"$@\"\n",
        loader.expect("ldd names the loader").display(),
        lib = home.join("lib").display()
    );
    let bin = home.join("bin").join(name);
    std::fs::write(&bin, wrapper).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn a_user_who_is_not_root_copies_into_the_local_store_through_its_daemon() {
    let tb = Testbed::new();
    let (src, web1) = (tb.host("src"), tb.host("web1"));
    let chain = tb.filler(5, 5000, "-local-user");
    tb.sh(&format!("nixpipe-copy --to {} {chain}", src.target())).ok();
    // A multi-user Nix whose trusted users include deploy: its store is
    // root's, written only by the daemon.
    web1.sh("echo 'trusted-users = root deploy' >> /etc/nix/nix.conf");
    web1.start_nix_daemon();
    let home = deployer_who_is_not_root(&tb, &web1);
    let protocol = std::env::var("NIXPIPE_COPY_PROTOCOL").unwrap_or_else(|_| "auto".into());

    web1.sh(&format!(
        "su deploy -c \"NIX_SSHOPTS='-F {h}/.ssh/config' {h}/bin/nixpipe-copy --protocol {protocol} --from {} --to local {chain}\"",
        src.target(),
        h = home.display()
    ));

    assert_eq!(closure_of(&web1, &chain), closure_of(&src, &chain));
    assert_eq!(web1.sh(&format!("stat -c %U {chain}")).trim(), "root", "written by the daemon");
    web1.assert_store_sound();
}

#[test]
fn a_source_whose_closure_leaves_out_the_path_asked_for_is_an_error_naming_it() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(3, 100, "-left-out");
    tb.sh(&format!("nixpipe-copy --to {} {chain}", build1.target())).ok();
    tb.sh(&format!("nix-store --delete $(nix-store --query --requisites {chain})")).ok();
    // build1's nix-store answers every closure without the path asked for.
    stand_in(
        &build1,
        "nix-store",
        r#"case "$*" in
    *--requisites*) last=; for a; do last=$a; done; /run/nixpipe-real/nix-store "$@" | grep -vxF "$last" ;;
    *) exec /run/nixpipe-real/nix-store "$@" ;;
esac"#,
    );

    let run =
        tb.sh(&format!("nixpipe-copy --protocol daemon --from {} --to {} {chain}", build1.target(), web1.target()));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains(&format!("left {chain} out of its closure")), "{}", run.stderr);
    assert_eq!(run.stdout, "", "no record for a path that is not there");
    assert!(!web1.has(&chain));
}

#[test]
fn a_peer_that_breaks_the_protocol_is_named_with_what_it_sent_at_once() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(1, 100, "-peer-breaks");
    // build1's nix-store --serve greets, answers the closure query with a
    // path outside the store, and stays on the line.
    stand_in(
        &build1,
        "nix-store",
        r#"for arg; do
    if [ "$arg" = --serve ]; then
        head -c 16 >/dev/null
        printf '\313\356\122\124\000\000\000\000\005\002\000\000\000\000\000\000'
        printf '\001\000\000\000\000\000\000\000\013\000\000\000\000\000\000\000/etc/passwd\000\000\000\000\000'
        exec sleep 600
    fi
done
exec /run/nixpipe-real/nix-store "$@""#,
    );

    let started = std::time::Instant::now();
    let run =
        tb.sh(&format!("nixpipe-copy --protocol serve --from {} --to {} {chain}", build1.target(), web1.target()));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("broke the protocol") && error.contains("/etc/passwd"), "{error}");
    assert!(!error.contains("signal"), "{error}");
    assert!(started.elapsed().as_secs() < 4, "it waited {:?}", started.elapsed());
}

#[test]
fn a_daemon_that_never_answers_is_given_up_on_after_the_timeout() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let chain = tb.filler(1, 100, "-silent-daemon");
    // web1's nix-daemon takes the connection and never says a word.
    stand_in(&web1, "nix-daemon", "exec sleep 600");
    let started = std::time::Instant::now();

    let run = tb.sh(&format!("nixpipe-copy --protocol daemon --timeout 3 --to {} {chain}", web1.target()));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("gave no sign of life for 3 s (--timeout)"), "{}", run.stderr);
    assert!(started.elapsed().as_secs() < 15, "{:?}", started.elapsed());
}

/// The words of a NAR, as Nix writes them: each a length, then its bytes
/// padded to 8.
fn nar_words(words: &[&[u8]]) -> Vec<u8> {
    let mut nar = Vec::new();
    for word in words {
        nar.extend((word.len() as u64).to_le_bytes());
        nar.extend(*word);
        nar.extend(vec![0; (8 - word.len() % 8) % 8]);
    }
    nar
}

/// A path that `host`'s `nix-store --serve` serves with `nar` as its NAR
/// (the fake peer nixpipe-fake-serve, with the NAR's true size and hash):
/// its store path.
fn served_by_a_fake_peer(host: &Host, nar: &[u8], name: &str) -> String {
    let path = format!("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-{name}");
    std::fs::write(host.dir().join("fake.nar"), nar).unwrap();
    // Once per host: the peer of the case before may still be running from
    // this file, and a running program cannot be written over ("Text file
    // busy").
    let peer = host.dir().join("fake-serve");
    if !peer.exists() {
        std::fs::copy(nixpipe_tests::bin_dir().join("nixpipe-fake-serve"), &peer).unwrap();
    }
    let body = format!(
        r#"for arg; do
    [ "$arg" = --serve ] && exec {dir}/fake-serve {dir}/fake.nar {path}
done
exec /run/nixpipe-real/nix-store "$@""#,
        dir = host.dir().display()
    );
    stand_in(host, "nix-store", &body);
    path
}

/// Every file in the cache directory `dir`, as `nar`, `narinfo` or its name.
fn cache_files(tb: &Testbed, dir: &std::path::Path) -> Vec<String> {
    let files = tb.sh(&format!("cd {} && find . -type f", dir.display())).ok().stdout;
    let mut kinds: Vec<String> = files
        .lines()
        .map(|f| match f {
            _ if f.ends_with(".narinfo") => "narinfo".to_owned(),
            _ if f.starts_with("./nar/") => "nar".to_owned(),
            _ => f.to_owned(),
        })
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn a_nar_nested_twenty_thousand_directories_deep_reaches_a_cache_whole_and_nothing_else_is_left() {
    let tb = Testbed::new();
    let build1 = tb.host("build1");
    let depth = 20_000;
    let mut words: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for _ in 0..depth {
        words.extend([&b"entry"[..], b"(", b"name", b"d", b"node", b"(", b"type", b"directory"]);
    }
    words.push(b")");
    for _ in 0..depth {
        words.extend([&b")"[..], b")"]);
    }
    let path = served_by_a_fake_peer(&build1, &nar_words(&words), "deep");
    let cache = tb.path().join("deep-cache");

    tb.sh(&format!("nixpipe-copy --protocol serve --from {} --to file://{} {path}", build1.target(), cache.display()))
        .ok();

    assert_eq!(cache_files(&tb, &cache), ["./nix-cache-info", "nar", "narinfo"]);
}

#[test]
fn a_cache_takes_no_nar_whose_entries_nix_would_refuse() {
    let tb = Testbed::new();
    let build1 = tb.host("build1");
    let entry = |name: &'static [u8]| -> Vec<&'static [u8]> {
        vec![b"entry", b"(", b"name", name, b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")"]
    };
    let cases: [&[&'static [u8]]; 8] =
        [&[b".."], &[b"."], &[b"/"], &[b"a/b"], &[b"a\0b"], &[b""], &[b"a", b"a"], &[b"b", b"a"]];
    for (n, names) in cases.into_iter().enumerate() {
        let mut words: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
        for name in names {
            words.extend(entry(name));
        }
        words.push(b")");
        let path = served_by_a_fake_peer(&build1, &nar_words(&words), &format!("bad{n}"));
        let cache = tb.path().join(format!("bad-cache-{n}"));

        let run = tb.sh(&format!(
            "nixpipe-copy --protocol serve --from {} --to file://{} {path}",
            build1.target(),
            cache.display()
        ));

        assert_eq!(run.code, 1, "{names:?}: {}", run.stderr);
        assert!(run.error_line().contains("not a NAR"), "{names:?}: {}", run.stderr);
        assert_eq!(cache_files(&tb, &cache), ["./nix-cache-info"], "{names:?}: nothing of it is in the cache");
    }
}
