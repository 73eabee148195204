//! [`RuntimeConfig`]: the image to build in and the limits every build container gets.

use std::path::PathBuf;
use std::time::Duration;

/// Tag of the build image made by `containers/build-image`.
pub const DEFAULT_IMAGE: &str = "lockstep-build:bookworm";

/// Settings of the build runtime. Every limit here is applied to both containers of a job.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Local tag of the build image, e.g. `lockstep-build:bookworm`.
    pub image: String,
    /// The script that builds [`RuntimeConfig::image`] when it is missing (`containers/build-image`).
    pub image_recipe: PathBuf,
    /// Numeric uid (and gid) the build runs as: the image's `builder` user.
    pub build_uid: u32,
    /// Memory limit of each container, in bytes; swap is limited to the same value (no swap).
    pub memory_bytes: i64,
    /// Maximum number of processes and threads in each container (stops fork bombs).
    pub pids_limit: i64,
    /// Wall-clock limit of each step (dependency installation, then the build itself).
    pub max_build_time: Duration,
    /// Time between SIGTERM and SIGKILL when a container is stopped (timeout or cancellation).
    pub stop_grace: Duration,
    /// Bytes of build log kept per job: the first half and the last half, with a marker between.
    pub log_cap_bytes: usize,
    /// Size of the build container's `/tmp` tmpfs, in Docker's notation (`1g`, `512m`).
    pub tmpfs_size: String,
    /// Docker network of the dependency-installation step (`bridge` by default). The build step
    /// always runs with network `none`.
    pub deps_network: String,
    /// Free bytes the scratch filesystem (the agent's work dir) must have before a build starts.
    /// A build that fails while less than this is free is an infrastructure error (the disk
    /// filled up), not a verdict on the package: it is requeued for another agent, and nothing
    /// is uploaded.
    pub min_free_bytes: u64,
    /// Longest the agent reuses its cached apt package indices (`/var/lib/apt/lists`, refreshed
    /// by one `apt-get update` container, mounted read-only into each job's deps container)
    /// before refreshing them; zero turns the cache off (every deps container runs `apt-get
    /// update` itself). The cache is only used once the agent names its directory
    /// ([`super::Runtime::use_apt_lists_cache`]).
    pub apt_lists_max_age: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            image_recipe: PathBuf::from("containers/build-image"),
            build_uid: 1000,
            // 4 GiB: enough for C++ packages of moderate size with the default parallelism;
            // large packages need more and should raise it in the config file.
            memory_bytes: 4 << 30,
            // 4096 tasks: parallel compilers and test suites stay far below; a fork bomb hits it.
            pids_limit: 4096,
            // 2 hours: hello takes ~25 s; big packages on a 2-core buildd take an hour or more.
            // The AMQP consumer_timeout must stay above this.
            max_build_time: Duration::from_secs(2 * 60 * 60),
            // 10 s: enough for make to pass SIGTERM on; a hung build gets SIGKILL after it.
            stop_grace: Duration::from_secs(10),
            // 4 MiB: a full hello log is ~60 KiB; big packages' logs are kept head and tail.
            log_cap_bytes: 4 << 20,
            // 1 GiB of RAM-backed /tmp at most; builds write their trees under /build instead.
            tmpfs_size: "1g".to_owned(),
            deps_network: "bridge".to_owned(),
            // 2 GiB: hello needs a few MiB; a package that needs more fails over to an agent
            // with room, and operators of big builds raise it.
            min_free_bytes: 2 << 30,
            // 15 minutes: the coordinator's own indices are refreshed about as often; a busy
            // agent saves one `apt-get update` (~4 s, ~84 MB on bookworm) per job.
            apt_lists_max_age: Duration::from_secs(900),
        }
    }
}
