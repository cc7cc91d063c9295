//! A minimal Stratum v1 miner for tests: speaks the protocol by hand and
//! grinds nonces with lode's header builder, so tests can send both good
//! shares and every kind of bad one.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use lode::pool::{Difficulty, Job, build_header, hash_meets, sha256d};
use serde_json::{Value, json};

pub struct TestMiner {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    /// The difficulty of jobs sent from now on.
    pub difficulty: f64,
    /// The difficulty each job came at: its shares are checked and
    /// credited at that one.
    job_difficulty: std::collections::HashMap<String, f64>,
    pub job: Option<Job>,
}

impl TestMiner {
    pub fn connect(addr: &str) -> TestMiner {
        let stream = TcpStream::connect(addr).expect("connect to pool");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        TestMiner {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_id: 1,
            extranonce1: vec![],
            extranonce2_size: 0,
            difficulty: 1.0,
            job_difficulty: Default::default(),
            job: None,
        }
    }

    /// How long a read waits before it gives up (20 s from `connect`).
    pub fn set_read_timeout(&self, limit: Duration) {
        self.writer.set_read_timeout(Some(limit)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The next line, or `None` if the pool closed the connection.
    pub fn read_line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("pool sends JSON")),
        }
    }

    fn absorb(&mut self, msg: &Value) {
        match msg["method"].as_str() {
            Some("mining.notify") => {
                if let Ok(lode::pool::stratum::ServerMessage::Notify(job)) =
                    lode::pool::stratum::parse_server(&msg.to_string())
                {
                    self.job_difficulty.insert(job.id.clone(), self.difficulty);
                    self.job = Some(job);
                }
            }
            Some("mining.set_difficulty") => self.difficulty = msg["params"][0].as_f64().unwrap(),
            _ => {}
        }
    }

    /// Send a request and wait for its response (absorbing notifications).
    pub fn call(&mut self, method: &str, params: Value) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"id": id, "method": method, "params": params}).to_string() + "\n";
        self.writer.write_all(line.as_bytes()).ok()?;
        loop {
            let msg = self.read_line()?;
            if msg["id"].as_u64() == Some(id) {
                return Some(msg);
            }
            self.absorb(&msg);
        }
    }

    pub fn subscribe(&mut self) {
        let r = self
            .call("mining.subscribe", json!(["test-miner"]))
            .expect("subscribe reply");
        self.extranonce1 = data_encoding::HEXLOWER
            .decode(r["result"][1].as_str().unwrap().as_bytes())
            .unwrap();
        self.extranonce2_size = r["result"][2].as_u64().unwrap() as usize;
    }

    pub fn authorize(&mut self, worker: &str) -> Value {
        self.call("mining.authorize", json!([worker, "x"]))
            .expect("authorize reply")
    }

    /// Read until a job has arrived.
    pub fn wait_job(&mut self) -> Job {
        while self.job.is_none() {
            let msg = self.read_line().expect("pool closed before sending a job");
            self.absorb(&msg);
        }
        self.job.clone().unwrap()
    }

    /// Read until a job other than `than` has arrived; `None` if none came
    /// within the read timeout.
    pub fn wait_new_job(&mut self, than: &Job) -> Option<Job> {
        loop {
            if let Some(job) = self.job.as_ref().filter(|j| j.id != than.id) {
                return Some(job.clone());
            }
            let msg = self.read_line()?;
            self.absorb(&msg);
        }
    }

    /// The difficulty `job` came at (the current one for a job not seen).
    pub fn difficulty_of(&self, job: &Job) -> f64 {
        self.job_difficulty
            .get(&job.id)
            .copied()
            .unwrap_or(self.difficulty)
    }

    /// A nonce from `start` on whose header meets (or, with `meet` false,
    /// misses) the difficulty `job` came at.
    pub fn grind(&self, job: &Job, extranonce2: &[u8], start: u32, meet: bool) -> u32 {
        let target = Difficulty::from_f64(self.difficulty_of(job))
            .unwrap()
            .target();
        (start..)
            .find(|&n| {
                let h = sha256d(&build_header(
                    job,
                    &self.extranonce1,
                    extranonce2,
                    job.ntime,
                    n,
                    job.version,
                ));
                hash_meets(&h, &target) == meet
            })
            .unwrap()
    }

    pub fn submit(
        &mut self,
        worker: &str,
        job_id: &str,
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
    ) -> Option<Value> {
        let params = json!([
            worker,
            job_id,
            data_encoding::HEXLOWER.encode(extranonce2),
            format!("{ntime:08x}"),
            format!("{nonce:08x}")
        ]);
        self.call("mining.submit", params)
    }
}

/// The error code of a response, or `None` if it succeeded.
pub fn error_code(r: &Value) -> Option<i64> {
    r["error"][0].as_i64()
}
