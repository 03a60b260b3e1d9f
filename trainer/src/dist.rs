//! Data-parallel training over PyTorch's own engine, c10d (`trainer/cpp/dist.cpp`): a TCPStore
//! rendezvous, a Gloo (CPU) or NCCL (CUDA) process group, and c10d's `Reducer`, which averages the
//! gradients over the ranks in buckets while the backward pass runs, as `DistributedDataParallel` does.
//!
//! [`DistFlags`] are `main.py`'s flags (`--dist-url`, `--dist-backend`, `--world-size`, `--rank`,
//! `--multiprocessing-distributed`) plus `--nproc-per-node` and `--dist-timeout`; [`DistFlags::resolve`]
//! turns them and the launcher's environment into this process's [`Rank`]. [`ProcessGroup`] and
//! [`Reducer`] own their C++ objects.

use std::ffi::{CString, c_char};
use std::ptr::NonNull;
use std::time::Duration;

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::bridge::check;
use crate::error::{Result, TrainError};

mod ffi {
    use super::*;

    /// `imgtrain_dist` of dist.cpp.
    #[repr(C)]
    pub struct RawDist {
        _private: [u8; 0],
    }

    /// `imgtrain_reducer` of dist.cpp.
    #[repr(C)]
    pub struct RawReducer {
        _private: [u8; 0],
    }

    // Each returns NULL on success or a malloc'd message that imgtrain_bridge_free_error frees.
    unsafe extern "C" {
        pub fn imgtrain_dist_new(
            host: *const c_char,
            port: u16,
            rank: i32,
            world: i32,
            timeout_ms: i64,
            backend: i32,
            cuda_device: i8,
            out: *mut *mut RawDist,
        ) -> *mut c_char;
        pub fn imgtrain_dist_free(d: *mut RawDist);
        pub fn imgtrain_dist_broadcast(
            d: *mut RawDist,
            tensors: *const *const C_tensor,
            n: usize,
            root: i32,
        ) -> *mut c_char;
        pub fn imgtrain_dist_allreduce(d: *mut RawDist, t: *const C_tensor, op: i32)
        -> *mut c_char;
        pub fn imgtrain_dist_barrier(d: *mut RawDist) -> *mut c_char;
        pub fn imgtrain_reducer_new(
            d: *mut RawDist,
            params: *const *const C_tensor,
            n: usize,
            bucket_cap_bytes: i64,
            out: *mut *mut RawReducer,
        ) -> *mut c_char;
        pub fn imgtrain_reducer_before_forward(r: *mut RawReducer) -> *mut c_char;
        pub fn imgtrain_reducer_before_backward(r: *mut RawReducer) -> *mut c_char;
        pub fn imgtrain_reducer_free(r: *mut RawReducer);
    }
}

/// The collective backend: `--dist-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Gloo: CPU tensors (and the CPU tests).
    Gloo = 0,
    /// NCCL: CUDA tensors.
    Nccl = 1,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// `--dist-timeout`'s default: `torch.distributed`'s for Gloo (30 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The distributed flags as given; `None` means "not given".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DistFlags {
    /// `--dist-url`: `tcp://HOST:PORT` or `env://`.
    pub url: Option<String>,
    pub backend: Option<Backend>,
    /// `--world-size`: nodes with `--multiprocessing-distributed`, processes without.
    pub world_size: Option<usize>,
    /// `--rank`: the node's rank with `--multiprocessing-distributed`, the process's without.
    pub rank: Option<usize>,
    pub multiprocessing: bool,
    /// `--nproc-per-node`: processes per node with `--multiprocessing-distributed` (default: one per
    /// visible GPU; required on the CPU).
    pub nproc_per_node: Option<usize>,
    /// `--dist-timeout`: rendezvous and every collective give up after this long.
    pub timeout: Option<Duration>,
}

/// The environment variable through which `imgtrain --multiprocessing-distributed` tells each process
/// it starts its local rank (and that it is one of them).
pub const LOCAL_RANK_ENV: &str = "IMGTRAIN_LOCAL_RANK";
/// ... the number of processes on the node.
pub const NPROC_ENV: &str = "IMGTRAIN_NPROC_PER_NODE";
/// ... and the rendezvous address the launcher chose when no `--dist-url` was given.
pub const URL_ENV: &str = "IMGTRAIN_DIST_URL";

/// This process's place in a distributed run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rank {
    /// The rendezvous: rank 0 serves the store there.
    pub host: String,
    pub port: u16,
    /// Global rank and world size.
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this node, and their number (1 when each process is started
    /// separately, as by torchrun or srun, unless they say otherwise).
    pub local_rank: usize,
    pub local_world: usize,
    pub backend: Backend,
    #[serde(serialize_with = "secs")]
    pub timeout: Duration,
    /// Whether `imgtrain --multiprocessing-distributed` started this process (then the batch size and
    /// the loader threads given are the node's, divided among its processes as `main.py` does).
    pub spawned: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn bad<T>(what: &'static str, reason: impl Into<String>) -> Result<T> {
    Err(TrainError::Config {
        what,
        reason: reason.into(),
    })
}

/// `tcp://HOST:PORT` → (host, port). IPv6 hosts in brackets, as in URLs.
pub fn parse_tcp_url(url: &str) -> Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("tcp://") else {
        return bad(
            "--dist-url",
            format!("{url:?}: expected tcp://HOST:PORT or env://"),
        );
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() => (h, p),
        _ => {
            return bad(
                "--dist-url",
                format!("{url:?}: expected tcp://HOST:PORT (the host of rank 0 and a free port)"),
            );
        }
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.contains(['/', '@', '?', '#']) || host.contains(':') && !rest.starts_with('[') {
        return bad(
            "--dist-url",
            format!("{url:?}: {host:?} is not a host name"),
        );
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return bad(
                "--dist-url",
                format!("{url:?}: {port:?} is not a port number (1-65535)"),
            );
        }
    };
    Ok((host.to_owned(), port))
}

/// A number from the environment variable `name`, or an error naming it.
fn env_number(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>> {
    match env(name) {
        None => Ok(None),
        Some(v) => match v.trim().parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => bad(
                "--dist-url env://",
                format!("the environment variable {name}={v:?} is not a number"),
            ),
        },
    }
}

/// The first of `names` set in the environment, as a number.
fn env_first(env: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> Result<Option<usize>> {
    for name in names {
        if let Some(n) = env_number(env, name)? {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

impl DistFlags {
    /// Whether the run is distributed at all (`main.py`: `world_size > 1 or multiprocessing_distributed`,
    /// plus `--dist-url env://` under a launcher that sets a world size).
    pub fn distributed(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<bool> {
        let by_env = self.url.as_deref() == Some("env://")
            && self.world_size.is_none()
            && env_first(env, &["WORLD_SIZE", "SLURM_NTASKS"])?.is_some_and(|w| w > 1);
        Ok(self.multiprocessing || self.world_size.is_some_and(|w| w > 1) || by_env)
    }

    /// Checks what can be checked from the flags alone.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == Some(0) {
            return bad("--world-size", "must be at least 1");
        }
        if self.nproc_per_node == Some(0) {
            return bad("--nproc-per-node", "must be at least 1");
        }
        if self.nproc_per_node.is_some() && !self.multiprocessing {
            return bad(
                "--nproc-per-node",
                "only means something with --multiprocessing-distributed",
            );
        }
        if let Some(t) = self.timeout
            && t.is_zero()
        {
            return bad("--dist-timeout", "must be more than 0 seconds");
        }
        if let Some(url) = &self.url
            && url != "env://"
        {
            parse_tcp_url(url)?;
        }
        if let (Some(r), Some(w)) = (self.rank, self.world_size)
            && r >= w
        {
            let what = if self.multiprocessing {
                "nodes"
            } else {
                "processes"
            };
            return bad(
                "--rank",
                format!(
                    "{r} is not below --world-size {w} (the number of {what}; ranks count from 0)"
                ),
            );
        }
        Ok(())
    }

    /// This process's rank, world and rendezvous, from the flags and `env` (the environment: torchrun's
    /// and Slurm's variables, and those the launcher of `--multiprocessing-distributed` sets), or `None`
    /// for a run of one process. `cuda` says whether CUDA devices are visible (the default backend is
    /// NCCL then, Gloo otherwise).
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        cuda: bool,
    ) -> Result<Option<Rank>> {
        self.validate()?;
        if !self.distributed(env)? {
            return Ok(None);
        }
        let env_url = self.url.as_deref() == Some("env://");
        let spawned = env_number(env, LOCAL_RANK_ENV)?;
        if self.multiprocessing && spawned.is_none() {
            return bad(
                "--multiprocessing-distributed",
                "this process was not started by imgtrain's launcher",
            );
        }
        let backend = match self.backend {
            Some(Backend::Nccl) if !cuda => {
                return bad(
                    "--dist-backend",
                    "nccl needs CUDA devices and none is visible; use --dist-backend gloo on the CPU",
                );
            }
            Some(b) => b,
            None if cuda => Backend::Nccl,
            None => Backend::Gloo,
        };
        // Nodes (or processes) and this node's (or process's) rank, as given or from the environment.
        let world_size = match (self.world_size, env_url) {
            (Some(w), _) => w,
            (None, true) => env_first(env, &["WORLD_SIZE", "SLURM_NTASKS"])?.ok_or_else(|| {
                TrainError::Config {
                    what: "--world-size",
                    reason:
                        "not given, and --dist-url env:// found neither WORLD_SIZE nor SLURM_NTASKS"
                            .into(),
                }
            })?,
            (None, false) => 1,
        };
        let rank = match (self.rank, env_url) {
            (Some(r), _) => r,
            (None, true) => {
                env_first(env, &["RANK", "SLURM_PROCID"])?.ok_or_else(|| TrainError::Config {
                    what: "--rank",
                    reason: "not given, and --dist-url env:// found neither RANK nor SLURM_PROCID"
                        .into(),
                })?
            }
            (None, false) if world_size == 1 => 0,
            (None, false) => {
                return bad(
                    "--rank",
                    format!("needed with --world-size {world_size}: which one is this process?"),
                );
            }
        };
        if rank >= world_size {
            return bad(
                "--rank",
                format!("{rank} is not below the world size {world_size} (ranks count from 0)"),
            );
        }
        let (host, port) = match self.url.as_deref() {
            Some("env://") => {
                let host = env("MASTER_ADDR").ok_or_else(|| TrainError::Config {
                    what: "--dist-url env://",
                    reason: "MASTER_ADDR is not set (the host of rank 0)".into(),
                })?;
                let port = env("MASTER_PORT").ok_or_else(|| TrainError::Config {
                    what: "--dist-url env://",
                    reason: "MASTER_PORT is not set (a free port on MASTER_ADDR)".into(),
                })?;
                parse_tcp_url(&format!("tcp://{host}:{port}")).map_err(|_| TrainError::Config {
                    what: "--dist-url env://",
                    reason: format!(
                        "MASTER_ADDR={host:?} MASTER_PORT={port:?} is not a host and port"
                    ),
                })?
            }
            Some(url) => parse_tcp_url(url)?,
            None => match env(URL_ENV) {
                Some(url) if spawned.is_some() => parse_tcp_url(&url)?,
                _ => {
                    return bad(
                        "--dist-url",
                        "needed for a distributed run: tcp://HOST:PORT of rank 0, or env:// (MASTER_ADDR, \
                         MASTER_PORT)",
                    );
                }
            },
        };
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let plan = if let Some(local) = spawned {
            let nproc = env_number(env, NPROC_ENV)?.unwrap_or(1).max(1);
            if local >= nproc {
                return bad(
                    "--multiprocessing-distributed",
                    format!("local rank {local} is not below {nproc} processes per node"),
                );
            }
            Rank {
                host,
                port,
                rank: rank * nproc + local,
                world: world_size * nproc,
                local_rank: local,
                local_world: nproc,
                backend,
                timeout,
                spawned: true,
            }
        } else {
            let local_rank = env_first(env, &["LOCAL_RANK", "SLURM_LOCALID"])?.unwrap_or(0);
            let local_world =
                env_first(env, &["LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"])?.unwrap_or(1);
            Rank {
                host,
                port,
                rank,
                world: world_size,
                local_rank,
                local_world: local_world.max(local_rank + 1),
                backend,
                timeout,
                spawned: false,
            }
        };
        Ok(Some(plan))
    }
}

/// The process environment, as [`DistFlags::resolve`] reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// This process's global rank, when it is one of a distributed run (for error messages).
pub fn rank_of_process(flags: &DistFlags) -> Option<usize> {
    flags
        .resolve(&process_env, true)
        .ok()
        .flatten()
        .map(|r| r.rank)
}

/// Sends this process's standard output to `/dev/null`: only rank 0 prints progress (every rank's
/// errors still reach standard error).
pub fn silence_stdout() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    std::io::Write::flush(&mut std::io::stdout())?;
    // SAFETY: both descriptors are open; dup2 replaces fd 1 atomically.
    if unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A c10d process group this process belongs to.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: NonNull<ffi::RawDist>,
    rank: usize,
    world: usize,
    /// Where the collectives' tensors live: the CPU for Gloo, the rank's GPU for NCCL.
    device: Device,
}

/// A c10d reduction: `op` codes of `imgtrain_dist_allreduce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Min = 1,
    Max = 2,
}

fn pointers(tensors: &[Tensor]) -> Vec<*const C_tensor> {
    tensors.iter().map(|t| t.as_ptr()).collect()
}

impl ProcessGroup {
    /// Meets the other ranks at `plan`'s rendezvous (rank 0 serves it) and joins their process group on
    /// `device` (the CPU for Gloo, a CUDA device for NCCL).
    pub fn join(plan: &Rank, device: Device) -> Result<ProcessGroup> {
        let host = CString::new(plan.host.clone()).map_err(|_| TrainError::Config {
            what: "--dist-url",
            reason: format!("{:?}: a host name with a NUL byte", plan.host),
        })?;
        let cuda_device = match device {
            Device::Cuda(i) => i8::try_from(i).unwrap_or(i8::MAX),
            _ => -1,
        };
        let (rank, world) = (plan.rank, plan.world);
        let mut raw = std::ptr::null_mut();
        // SAFETY: `host` is a NUL-terminated string alive for the call; `raw` is a valid out-pointer.
        check("dist_new (joining the process group)", unsafe {
            ffi::imgtrain_dist_new(
                host.as_ptr(),
                plan.port,
                i32::try_from(rank).unwrap_or(i32::MAX),
                i32::try_from(world).unwrap_or(i32::MAX),
                i64::try_from(plan.timeout.as_millis()).unwrap_or(i64::MAX),
                plan.backend as i32,
                cuda_device,
                &mut raw,
            )
        })
        .map_err(|e| TrainError::Rendezvous {
            host: plan.host.clone(),
            port: plan.port,
            rank,
            world,
            message: match e {
                TrainError::Bridge { message, .. } => message,
                other => other.to_string(),
            },
        })?;
        let raw = NonNull::new(raw).expect("dist_new returns a group on success");
        Ok(ProcessGroup {
            raw,
            rank,
            world,
            device,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Copies rank `root`'s `tensors` into every rank's (in place, in buckets, as DDP's start does).
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let ptrs = pointers(tensors);
        // SAFETY: `ptrs` are live tensors of this call; the group is alive.
        check("dist_broadcast", unsafe {
            ffi::imgtrain_dist_broadcast(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), root as i32)
        })
    }

    /// Rank 0's `value`, on every rank.
    pub fn agree(&self, value: u64) -> Result<u64> {
        // The bits travel as an int64.
        let t = Tensor::from_slice(&[value as i64]).to_device(self.device);
        self.broadcast(std::slice::from_ref(&t), 0)
            .map_err(|e| TrainError::Collective {
                rank: self.rank,
                what: "agreeing on rank 0's seed".into(),
                message: e.to_string(),
            })?;
        let v = i64::try_from(&t.to_device(Device::Cpu)).map_err(|e| TrainError::Bridge {
            op: "dist_broadcast",
            message: e.to_string(),
        })?;
        Ok(v as u64)
    }

    /// Reduces `values` over the ranks with `op`; returns the result, the same on every rank.
    pub fn all_reduce(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_device(self.device);
        // SAFETY: `t` is a live tensor; the group is alive.
        check("dist_allreduce", unsafe {
            ffi::imgtrain_dist_allreduce(self.raw.as_ptr(), t.as_ptr(), op as i32)
        })?;
        Vec::<f64>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Double)).map_err(|e| {
            TrainError::Bridge {
                op: "dist_allreduce",
                message: e.to_string(),
            }
        })
    }

    /// [`ProcessGroup::all_reduce`] on host memory, without touching the device: through Gloo, which
    /// serves CPU tensors in NCCL runs too (as torch.distributed's default "cpu:gloo,cuda:nccl" group).
    pub fn all_reduce_host(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        // SAFETY: `t` is a live tensor; the group is alive.
        check("dist_allreduce", unsafe {
            ffi::imgtrain_dist_allreduce(self.raw.as_ptr(), t.as_ptr(), op as i32)
        })?;
        Vec::<f64>::try_from(&t).map_err(|e| TrainError::Bridge {
            op: "dist_allreduce",
            message: e.to_string(),
        })
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is alive.
        check("dist_barrier", unsafe {
            ffi::imgtrain_dist_barrier(self.raw.as_ptr())
        })
    }

    /// A reducer averaging the gradients of `params` over the ranks, with DDP's bucket cap.
    pub fn reducer(&self, params: &[Tensor], bucket_cap_bytes: i64) -> Result<Reducer> {
        let ptrs = pointers(params);
        let mut raw = std::ptr::null_mut();
        // SAFETY: `ptrs` are live tensors; the C++ reducer keeps its own references to them.
        check("reducer_new", unsafe {
            ffi::imgtrain_reducer_new(
                self.raw.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                bucket_cap_bytes,
                &mut raw,
            )
        })?;
        Ok(Reducer {
            raw: NonNull::new(raw).expect("reducer_new returns a reducer on success"),
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: owned, freed once; any reducer built on it holds its own reference to the group.
        unsafe { ffi::imgtrain_dist_free(self.raw.as_ptr()) }
    }
}

/// c10d's `Reducer`: call [`Reducer::before_forward`] before a training forward pass and
/// [`Reducer::before_backward`] after it; when backward returns, the gradients are the ranks' mean.
#[derive(Debug)]
pub struct Reducer {
    raw: NonNull<ffi::RawReducer>,
}

/// DDP's default `bucket_cap_mb` (25 MiB).
pub const BUCKET_CAP_BYTES: i64 = 25 * 1024 * 1024;

impl Reducer {
    /// Counts the iteration and, after the first, rebuilds the buckets in the order the gradients came
    /// (once; a collective).
    pub fn before_forward(&self) -> Result<()> {
        // SAFETY: the reducer is alive.
        check("reducer_before_forward", unsafe {
            ffi::imgtrain_reducer_before_forward(self.raw.as_ptr())
        })
    }

    /// Arms the gradient hooks for the coming backward pass.
    pub fn before_backward(&self) -> Result<()> {
        // SAFETY: the reducer is alive.
        check("reducer_before_backward", unsafe {
            ffi::imgtrain_reducer_before_backward(self.raw.as_ptr())
        })
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { ffi::imgtrain_reducer_free(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_tcp_url("tcp://10.1.2.3:23456").unwrap(),
            ("10.1.2.3".into(), 23456)
        );
        assert_eq!(
            parse_tcp_url("tcp://node0:29500/").unwrap(),
            ("node0".into(), 29500)
        );
        assert_eq!(
            parse_tcp_url("tcp://[::1]:29500").unwrap(),
            ("::1".into(), 29500)
        );
        for bad in [
            "10.1.2.3:23456",
            "tcp://10.1.2.3",
            "tcp://:23456",
            "tcp://host:0",
            "tcp://host:70000",
            "tcp://host:port",
            "file:///tmp/x",
            "tcp://a/b:1",
        ] {
            let e = parse_tcp_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("--dist-url: "), "{bad}: {e}");
        }
    }

    #[test]
    fn main_py_semantics() {
        let none = env_of(&[]);
        // One process: not distributed.
        assert_eq!(DistFlags::default().resolve(&none, false).unwrap(), None);
        // Two processes by hand.
        let flags = DistFlags {
            url: Some("tcp://127.0.0.1:29500".into()),
            world_size: Some(2),
            rank: Some(1),
            ..DistFlags::default()
        };
        let r = flags.resolve(&none, false).unwrap().unwrap();
        assert_eq!((r.rank, r.world, r.backend), (1, 2, Backend::Gloo));
        assert_eq!(
            flags.resolve(&none, true).unwrap().unwrap().backend,
            Backend::Nccl
        );
        // --multiprocessing-distributed: nodes x processes per node.
        let mp = DistFlags {
            url: Some("tcp://node0:29500".into()),
            world_size: Some(2),
            rank: Some(1),
            multiprocessing: true,
            ..DistFlags::default()
        };
        let spawned = env_of(&[(LOCAL_RANK_ENV, "3"), (NPROC_ENV, "4")]);
        let r = mp.resolve(&spawned, true).unwrap().unwrap();
        assert_eq!((r.rank, r.world, r.local_rank, r.local_world), (7, 8, 3, 4));
        let e = mp.resolve(&none, true).unwrap_err().to_string();
        assert!(e.contains("not started by imgtrain's launcher"), "{e}");
        // env://, as torchrun sets it.
        let torchrun = env_of(&[
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
            ("WORLD_SIZE", "16"),
            ("RANK", "9"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
        ]);
        let env_url = DistFlags {
            url: Some("env://".into()),
            ..DistFlags::default()
        };
        let r = env_url.resolve(&torchrun, true).unwrap().unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.rank, r.world, r.local_rank),
            ("10.0.0.1", 29400, 9, 16, 1)
        );
        // ... and as srun does.
        let slurm = env_of(&[
            ("MASTER_ADDR", "n1"),
            ("MASTER_PORT", "29400"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "2"),
            ("SLURM_LOCALID", "0"),
        ]);
        let r = env_url.resolve(&slurm, false).unwrap().unwrap();
        assert_eq!((r.rank, r.world), (2, 4));
    }

    #[test]
    fn bad_flags_name_themselves() {
        let none = env_of(&[]);
        let cases: Vec<(DistFlags, &str)> = vec![
            (
                DistFlags {
                    url: Some("tcp://h:1".into()),
                    world_size: Some(2),
                    rank: Some(2),
                    ..DistFlags::default()
                },
                "--rank: 2 is not below --world-size 2",
            ),
            (
                DistFlags {
                    world_size: Some(2),
                    rank: Some(0),
                    ..DistFlags::default()
                },
                "--dist-url: needed for a distributed run",
            ),
            (
                DistFlags {
                    url: Some("tcp://h:1".into()),
                    world_size: Some(2),
                    ..DistFlags::default()
                },
                "--rank: needed with --world-size 2",
            ),
            (
                DistFlags {
                    url: Some("env://".into()),
                    world_size: Some(2),
                    rank: Some(0),
                    ..DistFlags::default()
                },
                "--dist-url env://: MASTER_ADDR is not set",
            ),
            (
                DistFlags {
                    url: Some("udp://h:1".into()),
                    ..DistFlags::default()
                },
                "--dist-url: \"udp://h:1\": expected tcp://HOST:PORT or env://",
            ),
            (
                DistFlags {
                    url: Some("tcp://h:1".into()),
                    world_size: Some(2),
                    rank: Some(0),
                    backend: Some(Backend::Nccl),
                    ..DistFlags::default()
                },
                "--dist-backend: nccl needs CUDA devices",
            ),
            (
                DistFlags {
                    world_size: Some(0),
                    ..DistFlags::default()
                },
                "--world-size: must be at least 1",
            ),
            (
                DistFlags {
                    nproc_per_node: Some(2),
                    ..DistFlags::default()
                },
                "--nproc-per-node: only means something with --multiprocessing-distributed",
            ),
        ];
        for (flags, want) in cases {
            let e = flags.resolve(&none, false).unwrap_err().to_string();
            assert!(e.starts_with(want), "{flags:?}: {e}");
        }
        let e = DistFlags {
            url: Some("env://".into()),
            ..DistFlags::default()
        }
        .resolve(&env_of(&[("WORLD_SIZE", "two")]), false)
        .unwrap_err()
        .to_string();
        assert!(e.contains("WORLD_SIZE=\"two\" is not a number"), "{e}");
        let e = DistFlags {
            url: Some("env://".into()),
            world_size: Some(2),
            ..DistFlags::default()
        }
        .resolve(&env_of(&[("RANK", "x")]), false)
        .unwrap_err()
        .to_string();
        assert!(e.contains("RANK=\"x\" is not a number"), "{e}");
    }
}
