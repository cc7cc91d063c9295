//! Jobs: the live set a pool accepts shares for, and the built-in source.

use std::collections::VecDeque;
use std::sync::Arc;

use super::header::{Job, sha256d};

/// Jobs kept alive for late shares, newest last.
const KEEP: usize = 8;

/// The jobs a pool currently accepts shares for.
#[derive(Debug, Default, Clone)]
pub struct JobBook {
    jobs: VecDeque<Arc<Job>>,
}

impl JobBook {
    /// Add a job. A `clean` job retires every earlier one (a new block was
    /// found, so their shares are stale).
    pub fn push(&mut self, job: Job) -> Arc<Job> {
        if job.clean {
            self.jobs.clear();
        }
        let job = Arc::new(job);
        self.jobs.push_back(job.clone());
        while self.jobs.len() > KEEP {
            self.jobs.pop_front();
        }
        job
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.iter().rev().find(|j| j.id == id).cloned()
    }

    pub fn current(&self) -> Option<Arc<Job>> {
        self.jobs.back().cloned()
    }

    /// Every live job, oldest first.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<Job>> {
        self.jobs.iter()
    }
}

/// Size of the extranonce1 a mirror gives each session.
pub const EXTRANONCE1_SIZE: usize = 4;
/// Size of the extranonce2 a miner rolls.
pub const EXTRANONCE2_SIZE: usize = 4;

/// A mirror's own job source, for private grids and tests: real header and
/// coinbase layout, with a synthetic chain. The coinbase commits to the
/// mirror's identity (in the scriptSig tag and an OP_RETURN output), so
/// work done for one mirror is worthless to another.
pub struct BuiltinJobs {
    mirror_id: [u8; 32],
    /// Unknown to miners: each job's coinbase carries a tag made from it,
    /// so no miner can work out a job before it is sent.
    secret: [u8; 32],
    height: u32,
    serial: u64,
}

impl BuiltinJobs {
    /// Jobs for `mirror_id`, made unforeseeable by `secret` (a fresh
    /// random one each time a pool starts).
    pub fn new(mirror_id: [u8; 32], secret: [u8; 32]) -> BuiltinJobs {
        BuiltinJobs {
            mirror_id,
            secret,
            height: 1,
            serial: 0,
        }
    }

    /// The next job. `new_block` moves the synthetic chain on (a clean job
    /// with a new prevhash); otherwise the same block gets fresh ntime.
    pub fn next(&mut self, now: u32, new_block: bool) -> Job {
        if new_block {
            self.height += 1;
        }
        self.serial += 1;
        let mut seed = b"lode builtin chain".to_vec();
        seed.extend_from_slice(&self.mirror_id);
        seed.extend_from_slice(&self.height.to_le_bytes());
        let prevhash = sha256d(&seed);
        let branch = (0..2u8)
            .map(|i| {
                let mut s = seed.clone();
                s.push(i);
                sha256d(&s)
            })
            .collect();

        // scriptSig: height push, tag push, then the extranonces, then a
        // trailing push of "/lode/" and the job's own tag; its length
        // covers all of them. The tag makes each job's work its own, and
        // one no miner can work out before the job is sent (from the
        // secret and the serial): the difficulty a job goes out at is set
        // then (`Session::send_job`), and a miner that could hash the next
        // job ahead would raise or lower its difficulty to suit the hashes
        // it found.
        let height = self.height.to_le_bytes();
        let mut tag = b"lode".to_vec();
        tag.extend_from_slice(&self.mirror_id[..8]);
        let mut suffix = b"\x0e/lode/".to_vec();
        let mut tag_seed = b"lode builtin job tag".to_vec();
        tag_seed.extend_from_slice(&self.secret);
        tag_seed.extend_from_slice(&self.serial.to_le_bytes());
        suffix.extend_from_slice(&sha256d(&tag_seed)[..8]);
        let script_len = 1 + 3 + 1 + tag.len() + EXTRANONCE1_SIZE + EXTRANONCE2_SIZE + suffix.len();
        let mut coinb1 = Vec::new();
        coinb1.extend_from_slice(&1u32.to_le_bytes()); // tx version
        coinb1.push(1); // one input
        coinb1.extend_from_slice(&[0; 32]); // null prevout
        coinb1.extend_from_slice(&[0xff; 4]);
        coinb1.push(script_len as u8);
        coinb1.push(3);
        coinb1.extend_from_slice(&height[..3]);
        coinb1.push(tag.len() as u8);
        coinb1.extend_from_slice(&tag);
        let mut coinb2 = suffix;
        coinb2.extend_from_slice(&[0xff; 4]); // sequence
        coinb2.push(1); // one output
        coinb2.extend_from_slice(&0u64.to_le_bytes()); // value
        coinb2.push(34); // script length
        coinb2.push(0x6a); // OP_RETURN
        coinb2.push(32);
        coinb2.extend_from_slice(&self.mirror_id);
        coinb2.extend_from_slice(&0u32.to_le_bytes()); // lock time
        Job {
            id: format!("{:x}", self.serial),
            prevhash,
            coinb1,
            coinb2,
            branch,
            version: 0x2000_0000,
            nbits: 0x1d00_ffff,
            ntime: now,
            clean: new_block,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_jobs_retire_old_ones() {
        let mut src = BuiltinJobs::new([1; 32], [9; 32]);
        let mut book = JobBook::default();
        let a = book.push(src.next(100, true));
        let b = book.push(src.next(101, false));
        assert!(book.get(&a.id).is_some() && book.get(&b.id).is_some());
        let c = book.push(src.next(102, true));
        assert!(book.get(&a.id).is_none() && book.get(&b.id).is_none());
        assert_eq!(book.current().unwrap().id, c.id);
        assert_ne!(a.prevhash, c.prevhash);
        assert_eq!(a.prevhash, b.prevhash);
    }

    /// Every job of the built-in source is work of its own, even within a
    /// block; a copy of a job with another id and ntime is the same work.
    #[test]
    fn each_builtin_job_is_new_work() {
        let mut src = BuiltinJobs::new([4; 32], [9; 32]);
        let a = src.next(100, true);
        let b = src.next(130, false);
        assert_eq!(a.prevhash, b.prevhash);
        assert_ne!(a.work(), b.work());
        // Another secret, another job: nobody without it can foresee one.
        let mut other = BuiltinJobs::new([4; 32], [8; 32]);
        assert_ne!(other.next(100, true).work(), a.work());
        let again = Job {
            id: "other".into(),
            ntime: 160,
            clean: false,
            ..a.clone()
        };
        assert_eq!(a.work(), again.work());
        let rolled = Job {
            version: a.version | 0x0000_2000,
            ..a.clone()
        };
        assert_eq!(a.work(), rolled.work(), "rolled bits are the miner's");
        let other_block = Job {
            nbits: a.nbits - 1,
            ..a.clone()
        };
        assert_ne!(a.work(), other_block.work());
    }

    #[test]
    fn coinbase_script_length_covers_the_extranonces() {
        let job = BuiltinJobs::new([2; 32], [9; 32]).next(5, true);
        let script_len = job.coinb1[41] as usize;
        let script_in_coinb1 = job.coinb1.len() - 42;
        let script_in_coinb2 = 15; // the "/lode/" and tag push
        assert_eq!(
            script_len,
            script_in_coinb1 + EXTRANONCE1_SIZE + EXTRANONCE2_SIZE + script_in_coinb2
        );
    }
}
