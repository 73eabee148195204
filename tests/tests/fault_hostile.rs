//! T22 hostile builds and T23 container audit (issue 6), through the whole real path: a
//! coordinator, two agents, RabbitMQ, Docker.
//!
//! Three source packages made here, built by the same cluster one after another:
//! - `lockstep-hostile`: its build tries to get out — TCP to the coordinator's port on 127.0.0.1,
//!   a DNS lookup, writes to `/etc`, `/usr`, `/` and `/build`, mount, unshare, ptrace, setuid,
//!   reading the agents' keys and state dirs, the Docker socket, a fork bomb, a memory bomb
//!   (twice the memory limit) and a bounded disk bomb (200 MB). Every step may fail; the build
//!   records what it managed in a report shipped inside its `.deb`, which the test reads back.
//!   Nothing gets out, so both builders agree and it ships: the report is the evidence.
//! - `lockstep-hostile-out`: leaves a symlink to an agent's key, a hard link, a FIFO, a `..`
//!   name, a device node attempt and a `../../` write among its outputs: FAILED
//!   (`hostile-output`) on both builders, the key never read.
//! - `lockstep-after`: a normal package built afterwards by the same agents: ships.
//!
//! The host is checked afterwards (the files the build tried to write, the keys' bytes, the work
//! dirs, leftover containers), and every container the agents created is inspected through the
//! Docker API for its hardening settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lockstep_agent::runtime::ContainerRole;
use lockstep_proto::v1::{State, StatusEntry};
use lockstep_proto::Sha256Digest;
use lockstep_tests::{synthetic_package, synthetic_package_rules, Cluster, ClusterOptions};

const MEMORY: i64 = 512 << 20;
const PIDS: i64 = 256;

/// The hostile build. `@…@` placeholders are filled in by the test.
const HOSTILE_SH: &str = r#"#!/bin/bash
# Lockstep T22: a build that tries to get out. Every step may fail; what it managed is recorded
# in $1 (shipped in the .deb), details go to the build log.
set -u
R="$1"
: > "$R"
rec() { echo "$1=$2" >> "$R"; echo "lockstep-hostile: $1=$2" >&2; }

# Network: the coordinator's port on 127.0.0.1, a name that resolves on the host, interfaces.
if timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/@PORT@' 2>/dev/null; then rec net_tcp_coordinator open; else rec net_tcp_coordinator blocked; fi
if timeout 10 getent hosts @NAME@ >/dev/null 2>&1; then rec dns resolved; else rec dns failed; fi
rec interfaces "$(ls /sys/class/net | tr '\n' ' ')"

# Writes outside the build directory.
for p in /etc/lockstep-hostile /usr/lockstep-hostile /lockstep-hostile /build/lockstep-hostile /build/escape.deb; do
  if (echo pwned > "$p") 2>/dev/null; then rec "write:$p" ok; else rec "write:$p" refused; fi
done

# mount, namespaces, ptrace, host processes.
if mount -t tmpfs none /mnt 2>/dev/null; then rec mount ok; else rec mount refused; fi
if unshare --user --map-root-user true 2>/dev/null; then rec unshare_user ok; else rec unshare_user refused; fi
if unshare --mount true 2>/dev/null; then rec unshare_mount ok; else rec unshare_mount refused; fi
if chroot / true 2>/dev/null; then rec chroot ok; else rec chroot refused; fi
# PTRACE_ATTACH (16, syscall 101 on x86_64) to a process of the build's own (it stays inside the
# container; attaching to pid 1 would stop the build until its time limit, which is contained too).
sleep 60 & victim=$!
rec ptrace_own_process "$(perl -e 'print syscall(101, 16, $ARGV[0], 0, 0) == 0 ? "attached" : "refused"' $victim)"
kill -9 $victim 2>/dev/null; wait $victim 2>/dev/null
if grep -qs -e dockerd -e containerd -e fault_hostile /proc/[0-9]*/cmdline; then rec host_processes visible; else rec host_processes hidden; fi

# Privileges and setuid.
rec uid "$(id -u)"
rec cap_eff "$(awk '/^CapEff/ {print $2}' /proc/self/status)"
rec no_new_privs "$(awk '/^NoNewPrivs/ {print $2}' /proc/self/status)"
if cp /usr/bin/id ./suid-id && chmod u+s ./suid-id; then rec setuid_copy_euid "$(./suid-id -u)"; else rec setuid_copy_euid none; fi
rm -f ./suid-id
rec setuid_root "$(perl -e '$> = 0; print $> == 0 ? "gained" : "refused"')"
su_bin=$(find / -xdev -perm -4000 -user root -type f 2>/dev/null | head -n 1)
echo "lockstep-hostile: a setuid-root binary in the image: ${su_bin:-none}" >&2
if su -c true root </dev/null 2>/dev/null; then rec su ok; else rec su refused; fi

# The agents' keys and state dirs, the production state dir, the Docker socket.
for p in @SECRETS@ /var/lib/lockstep-agent /var/run/docker.sock /run/docker.sock; do
  if [ -e "$p" ]; then rec "visible:$p" yes; else rec "visible:$p" no; fi
done

# Fork bomb, bounded: fork until refused, then kill the children.
rec fork_bomb "$(perl -e 'my @k; for (1..5000) { my $p = fork(); last unless defined $p; if (!$p) { sleep 120; exit 0 } push @k, $p } print STDERR "lockstep-hostile: forked ", scalar(@k), " processes\n"; kill "KILL", @k; waitpid($_, 0) for @k; print scalar(@k) < 5000 ? "limited" : "unlimited"')"

# Memory bomb: 1 GiB in one string, twice the container's memory limit.
perl -e '$x = "x" x (1024 * 1024 * 1024); print length($x), "\n"' >/dev/null 2>&1
st=$?
echo "lockstep-hostile: memory bomb exit status $st" >&2
if [ "$st" = 0 ]; then rec memory_bomb survived; else rec memory_bomb stopped; fi

# Disk bomb, bounded: 200 MB into the build tree (no quota there: docs/reliability.md).
if dd if=/dev/zero of=./disk-bomb bs=1M count=200 status=none 2>/dev/null; then rec disk_bomb_200M written; else rec disk_bomb_200M refused; fi
rm -f ./disk-bomb
rec done yes
"#;

const HOSTILE_RULES: &str = "#!/usr/bin/make -f
build build-arch build-indep: debian/build-stamp
debian/build-stamp:
\tbash debian/hostile.sh debian/report.txt
\ttouch $@
clean:
\trm -rf debian/tmp debian/files debian/build-stamp debian/report.txt
binary binary-arch binary-indep: build
\tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/share/lockstep-hostile
\tcp debian/report.txt debian/tmp/usr/share/lockstep-hostile/report.txt
\tdpkg-gencontrol -Pdebian/tmp
\tdpkg-deb --root-owner-group --build debian/tmp ..
";

/// Builds a proper `.deb`, then leaves hostile entries next to it in the output directory.
const HOSTILE_OUT_RULES: &str = "#!/usr/bin/make -f
build build-arch build-indep:
\t@true
clean:
\trm -rf debian/tmp debian/files
binary binary-arch binary-indep: build
\tmkdir -p debian/tmp/DEBIAN debian/tmp/usr/share/lockstep-hostile-out
\techo ok > debian/tmp/usr/share/lockstep-hostile-out/ok.txt
\tdpkg-gencontrol -Pdebian/tmp
\tdpkg-deb --root-owner-group --build debian/tmp ..
\tln -s @KEY@ ../evil_1.0_amd64.deb
\tln ../lockstep-hostile-out_1.0_*.deb ../twin_1.0_amd64.deb
\tmkfifo ../fifo_1.0_amd64.deb
\techo x > '../..evil.deb'
\t-mknod ../dev_1.0_amd64.deb c 1 3
\t-touch ../../escape_1.0_amd64.deb
";

fn report_of(cluster: &Cluster, row: &StatusEntry) -> BTreeMap<String, String> {
    let deb = row
        .artifacts
        .iter()
        .find(|a| a.name.starts_with("lockstep-hostile_") && a.name.ends_with(".deb"))
        .expect("the hostile package's .deb");
    let path = cluster
        .coordinator
        .archive
        .blob_path(&deb.sha256)
        .expect("the .deb is archived");
    let out = tempfile::tempdir().expect("tempdir");
    let st = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(&path)
        .arg(out.path())
        .status()
        .expect("dpkg-deb runs");
    assert!(st.success());
    let text = std::fs::read_to_string(out.path().join("usr/share/lockstep-hostile/report.txt"))
        .expect("the report is in the .deb");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn sha_of(p: &Path) -> Sha256Digest {
    Sha256Digest::of(&std::fs::read(p).expect("readable"))
}

async fn wait_failures(c: &Cluster, source: &str, n: usize) -> StatusEntry {
    let started = Instant::now();
    loop {
        let rows = c.coordinator.status(Some(source)).expect("status");
        if let Some(r) = rows.first() {
            if r.failures.len() >= n && r.state != State::Pending {
                return r.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{source}: fewer than {n} failures: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_builds_are_contained_and_containers_are_hardened() {
    let t0 = Instant::now();
    let c = Cluster::start(
        "hostile",
        ClusterOptions {
            agents: 2,
            threshold: 2,
            max_build: Duration::from_secs(300),
            memory_bytes: Some(MEMORY),
            pids_limit: Some(PIDS),
            ..Default::default()
        },
    )
    .await
    .expect("cluster starts");
    let port = c.url.rsplit(':').next().expect("a port").to_string();
    let keys: Vec<_> = c
        .agents
        .iter()
        .map(|a| a.state_dir.join("key.asc"))
        .collect();
    let key_sums: Vec<_> = keys.iter().map(|k| sha_of(k)).collect();
    let mut secrets: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    secrets.extend(c.agents.iter().map(|a| a.state_dir.display().to_string()));
    // A name the host resolves (the test only looks it up; nothing connects to it).
    let name = "deb.debian.org";
    let host_resolves = std::net::ToSocketAddrs::to_socket_addrs(&(name, 80)).is_ok();
    let host_files = [
        "/etc/lockstep-hostile",
        "/usr/lockstep-hostile",
        "/lockstep-hostile",
    ];
    for f in host_files {
        assert!(!Path::new(f).exists(), "{f} exists before the test");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let script = HOSTILE_SH
        .replace("@PORT@", &port)
        .replace("@NAME@", name)
        .replace("@SECRETS@", &secrets.join(" "));
    let hostile = synthetic_package_rules(
        dir.path(),
        "lockstep-hostile",
        "1.0",
        HOSTILE_RULES,
        &[("debian/hostile.sh", &script)],
    )
    .expect("package");
    let out_rules = HOSTILE_OUT_RULES.replace("@KEY@", &keys[0].display().to_string());
    let hostile_out =
        synthetic_package_rules(dir.path(), "lockstep-hostile-out", "1.0", &out_rules, &[])
            .expect("package");
    let after = synthetic_package(dir.path(), "lockstep-after", "1.0", "true").expect("package");
    for dsc in [&hostile, &hostile_out, &after] {
        let out = c.cli(&["enqueue", "--dsc", dsc.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // 1. The containment attempts: contained, so both builders agree and the report ships.
    let rows = c
        .wait_decided("lockstep-hostile", Duration::from_secs(600))
        .await
        .expect("decided");
    let row = &rows[0];
    assert_eq!(
        row.state,
        State::Ship,
        "the hostile build got different results on two builders (something leaked): {row:#?}"
    );
    let report = report_of(&c, row);
    eprintln!("hostile build report: {report:#?}");
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or("(missing)");
    let mut expected: Vec<(String, &str)> = vec![
        ("done".into(), "yes"),
        ("net_tcp_coordinator".into(), "blocked"),
        ("dns".into(), "failed"),
        ("interfaces".into(), "lo"),
        ("mount".into(), "refused"),
        ("unshare_user".into(), "refused"),
        ("unshare_mount".into(), "refused"),
        ("chroot".into(), "refused"),
        ("host_processes".into(), "hidden"),
        ("uid".into(), "1000"),
        ("cap_eff".into(), "0000000000000000"),
        ("no_new_privs".into(), "1"),
        ("setuid_copy_euid".into(), "1000"),
        ("setuid_root".into(), "refused"),
        ("su".into(), "refused"),
        ("fork_bomb".into(), "limited"),
        ("memory_bomb".into(), "stopped"),
        // Within its limit: the build dir has no quota (a known limit, docs/reliability.md).
        ("disk_bomb_200M".into(), "written"),
    ];
    for f in host_files {
        expected.push((format!("write:{f}"), "refused"));
    }
    expected.push(("write:/build/lockstep-hostile".into(), "refused"));
    expected.push(("write:/build/escape.deb".into(), "refused"));
    for s in secrets.iter().map(String::as_str).chain([
        "/var/lib/lockstep-agent",
        "/var/run/docker.sock",
        "/run/docker.sock",
    ]) {
        expected.push((format!("visible:{s}"), "no"));
    }
    let mut contained = 0;
    for (k, want) in &expected {
        assert_eq!(get(k), *want, "hostile step {k}; report {report:#?}");
        contained += 1;
    }
    eprintln!(
        "ptrace of the build's own process (inside the container): {}",
        get("ptrace_own_process")
    );

    // 2. Hostile outputs: refused on both builders, the key never read.
    let row = wait_failures(&c, "lockstep-hostile-out", 2).await;
    assert_eq!(row.state, State::Failed, "{row:#?}");
    assert!(row.builders.is_empty(), "no attestation: {row:#?}");
    assert_eq!(row.failures.len(), 2, "{row:#?}");
    for f in &row.failures {
        assert_eq!(f.kind, "hostile-output", "{f:#?}");
    }
    for (k, sum) in keys.iter().zip(&key_sums) {
        assert!(
            !c.coordinator.archive.has_blob(sum),
            "{} reached the archive",
            k.display()
        );
    }

    // 3. The agents stay healthy: a normal package built afterwards ships.
    let rows = c
        .wait_decided("lockstep-after", Duration::from_secs(600))
        .await
        .expect("decided");
    assert_eq!(rows[0].state, State::Ship, "{:#?}", rows[0]);

    // The host is unchanged.
    for f in host_files {
        assert!(!Path::new(f).exists(), "the build wrote {f} on the host");
    }
    for (k, sum) in keys.iter().zip(&key_sums) {
        assert_eq!(&sha_of(k), sum, "{} changed", k.display());
    }
    for a in &c.agents {
        // Only the agent's apt lists cache stays (the agent's, not a job's).
        let left: Vec<_> = std::fs::read_dir(a.state_dir.join("work"))
            .expect("work dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.ends_with("apt-lists"))
            .collect();
        assert!(left.is_empty(), "{}: work dirs left: {left:?}", a.name);
    }

    // T23: every container, as Docker describes it.
    let mut audited = 0;
    for (rt, a) in c.runtimes.iter().zip(&c.agents) {
        assert!(
            rt.live_containers().is_empty(),
            "{}: containers left",
            a.name
        );
        let audits = rt.container_audits();
        let refreshes = audits
            .iter()
            .filter(|au| au.role == ContainerRole::AptLists)
            .count();
        assert_eq!(refreshes, 1, "{}: one apt lists refresh", a.name);
        let listings = audits
            .iter()
            .filter(|au| au.role == ContainerRole::Listing)
            .count();
        assert_eq!(listings, 1, "{}: the build image listed once", a.name);
        assert_eq!(
            audits.len(),
            8,
            "{}: 3 jobs × (deps + build) + refresh + listing",
            a.name
        );
        let work = a.state_dir.join("work");
        for audit in &audits {
            let hc = audit.inspect.host_config.as_ref().expect("HostConfig");
            let config = audit.inspect.config.as_ref().expect("Config");
            let what = format!(
                "{} {:?} container of job {}",
                a.name, audit.role, audit.job_id
            );
            assert_eq!(hc.privileged, Some(false), "{what}");
            assert_eq!(
                hc.cap_drop.as_deref(),
                Some(&["ALL".to_owned()][..]),
                "{what}"
            );
            assert!(
                hc.security_opt
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o == "no-new-privileges")),
                "{what}"
            );
            assert_eq!(hc.pids_limit, Some(PIDS), "{what}");
            assert_eq!(hc.memory, Some(MEMORY), "{what}");
            assert_eq!(hc.memory_swap, Some(MEMORY), "{what}: no swap");
            assert_ne!(hc.pid_mode.as_deref(), Some("host"), "{what}");
            assert_ne!(hc.ipc_mode.as_deref(), Some("host"), "{what}");
            assert!(hc.binds.as_ref().is_none_or(|b| b.is_empty()), "{what}");
            assert!(hc.devices.as_ref().is_none_or(|d| d.is_empty()), "{what}");
            let mounts = audit.inspect.mounts.clone().unwrap_or_default();
            let lists_mounts: Vec<_> = mounts
                .iter()
                .filter(|m| m.destination.as_deref() == Some("/var/lib/apt/lists"))
                .collect();
            // The deps step also gets the agent's apt lists cache (read-only, checked below)
            // and its layer directory.
            let expected = if audit.role == ContainerRole::Deps {
                3
            } else {
                1
            };
            assert_eq!(mounts.len(), expected, "{what}: {mounts:?}");
            let lists_expected = usize::from(matches!(
                audit.role,
                ContainerRole::Deps | ContainerRole::AptLists
            ));
            assert_eq!(lists_mounts.len(), lists_expected, "{what}: {mounts:?}");
            for m in &lists_mounts {
                let source = m.source.clone().unwrap_or_default();
                assert!(
                    Path::new(&source).starts_with(work.join("apt-lists")),
                    "{what}: lists from {source}"
                );
            }
            for m in &mounts {
                let source = m.source.clone().unwrap_or_default();
                assert!(
                    Path::new(&source).starts_with(&work),
                    "{what}: mounts {source}, outside the job's work dir"
                );
                assert!(!source.contains("docker.sock"), "{what}");
            }
            match audit.role {
                ContainerRole::Build => {
                    assert_eq!(hc.network_mode.as_deref(), Some("none"), "{what}");
                    assert_eq!(hc.readonly_rootfs, Some(true), "{what}");
                    assert!(hc.cap_add.as_ref().is_none_or(|c| c.is_empty()), "{what}");
                    assert_eq!(config.user.as_deref(), Some("1000:1000"), "{what}");
                    assert_eq!(config.network_disabled, Some(true), "{what}");
                }
                ContainerRole::Listing => {
                    assert_eq!(hc.network_mode.as_deref(), Some("none"), "{what}");
                    assert_eq!(hc.readonly_rootfs, Some(true), "{what}");
                    assert_eq!(
                        mounts.iter().filter(|m| m.rw != Some(false)).count(),
                        1,
                        "{what}: only its output directory: {mounts:?}"
                    );
                }
                ContainerRole::Deps | ContainerRole::AptLists => {
                    // Root with the few capabilities apt needs; the deps step's source and
                    // lists mounted read-only.
                    let caps = hc.cap_add.clone().unwrap_or_default();
                    for cap in &caps {
                        assert!(
                            ![
                                "SYS_ADMIN",
                                "SYS_PTRACE",
                                "NET_ADMIN",
                                "MKNOD",
                                "SYS_MODULE"
                            ]
                            .iter()
                            .any(|bad| cap.ends_with(bad)),
                            "{what}: {cap}"
                        );
                    }
                    // One writable mount each: the refresh's new lists directory, the deps
                    // step's layer directory.
                    assert_eq!(
                        mounts.iter().filter(|m| m.rw != Some(false)).count(),
                        1,
                        "{what}: {mounts:?}"
                    );
                }
            }
            audited += 1;
        }
    }
    eprintln!(
        "T22/T23 figures: jobs 3, hostile behaviours checked {contained} (+ 6 hostile outputs), \
         escaped 0, containers audited {audited}, host resolves {name}: {host_resolves}, \
         wall {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    c.stop().await;
}
