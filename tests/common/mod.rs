//! Shared setup for lode's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use lode::crypto::RootSecret;
use lode::store::{Grid, GridConfig, MemoryStorage, Storage, Vault};
use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes: SHA-256 in counter mode over `seed`.
/// Stable across crate versions, unlike a library RNG's stream.
pub fn seeded_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

pub fn secret(byte: u8) -> RootSecret {
    RootSecret::from_bytes([byte; 32])
}

/// A vault over one in-memory store, 1-of-1.
pub fn single(byte: u8) -> (Vault, Arc<MemoryStorage>) {
    let store = Arc::new(MemoryStorage::new());
    (Vault::single(&secret(byte), store.clone()), store)
}

/// `n` stores made by `make`, named mem0, mem1, ...
pub fn named_stores<S>(n: usize, make: impl Fn(&str) -> S) -> Vec<Arc<S>> {
    (0..n).map(|i| Arc::new(make(&format!("mem{i}")))).collect()
}

/// A vault over three in-memory mirrors, 2-of-3, happy 3.
pub fn grid3(byte: u8) -> (Vault, Vec<Arc<MemoryStorage>>) {
    let stores = named_stores(3, MemoryStorage::named);
    let dyns: Vec<Arc<dyn Storage>> = stores
        .iter()
        .map(|s| s.clone() as Arc<dyn Storage>)
        .collect();
    let grid = Grid::new(dyns, GridConfig::default()).expect("valid grid");
    (Vault::new(&secret(byte), grid), stores)
}

/// The `mirror_id` of the mirror at `url`, which requests signed for it
/// name.
pub async fn mirror_id(url: &str) -> [u8; 32] {
    let info: lode::protocol::Info = reqwest::get(format!("{url}/v1/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    lode::protocol::parse_hex(&info.mirror_id.expect("the mirror names its id")).unwrap()
}

/// `GET /v1/info` for a stand-in mirror: free, named by `[0x11; 32]`.
pub async fn stand_in_info() -> axum::Json<lode::protocol::Info> {
    axum::Json(lode::protocol::Info {
        protocol: 1,
        software: "stand-in".into(),
        lease_seconds: 86_400,
        capacity_bytes: None,
        used_bytes: 0,
        price: 0.0,
        stratum_port: None,
        mirror_id: Some(lode::protocol::hex(&[0x11; 32])),
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A blocking TCP connection to `to` (a 127.0.0.1 address) from the
/// loopback address `from`, such as 127.0.0.2: a peer of its own to a
/// mirror that bounds the connections per peer address. The traffic stays
/// on the loopback interface.
pub fn connect_from(from: &str, to: &str) -> std::net::TcpStream {
    let from: std::net::IpAddr = from.parse().expect("a source address");
    assert!(from.is_loopback(), "{from} is not a loopback address");
    let to: std::net::SocketAddr = to.parse().expect("a socket address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(from, 0))?;
        socket.connect(to).await?.into_std()
    });
    let stream = stream.unwrap_or_else(|e| panic!("connecting to {to} from {from}: {e}"));
    stream.set_nonblocking(false).expect("a blocking socket");
    stream
}

// ---- real mirrors and the real binary ----

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LODE: &str = env!("CARGO_BIN_EXE_lode");

/// A `lode mirror serve` process on 127.0.0.1:0, killed on drop.
pub struct MirrorProc {
    child: Option<Child>,
    pub url: String,
    /// `127.0.0.1:port` of the Stratum endpoint, when started with one.
    pub stratum: Option<String>,
    pub data: PathBuf,
    args: Vec<String>,
}

impl MirrorProc {
    pub fn start(data: &Path, extra: &[&str]) -> MirrorProc {
        Self::start_on(
            data,
            "127.0.0.1:0",
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn start_on(data: &Path, listen: &str, args: Vec<String>) -> MirrorProc {
        let mut child = Command::new(LODE)
            .args(["mirror", "serve", "--data"])
            .arg(data)
            .args(["--listen", listen])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lode mirror serve");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read mirror address");
        let stratum = if args.iter().any(|a| a == "--stratum") {
            let mut l = String::new();
            out.read_line(&mut l).expect("read stratum address");
            Some(
                l.trim()
                    .rsplit("://")
                    .next()
                    .expect("stratum address")
                    .to_string(),
            )
        } else {
            None
        };
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected first line from mirror: {line:?}"))
            .to_string();
        MirrorProc {
            child: Some(child),
            url,
            stratum,
            data: data.to_path_buf(),
            args,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send `sig` (`-STOP`, `-CONT`) to the running mirror: stopped, it
    /// hangs as a mirror behind a link that drops packets does.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the mirror runs").to_string();
        let sent = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(sent.success(), "kill {sig} {pid}");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same address and data.
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger briefly after the kill.
            let attempt =
                std::panic::catch_unwind(|| Self::start_on(&self.data, &addr, self.args.clone()));
            match attempt {
                Ok(mut m) => {
                    self.child = m.child.take();
                    self.stratum = m.stratum.take();
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// Ids of the shares this mirror keeps as rows (at most 64 KiB each,
    /// in `small-shares.sqlite`), not as files.
    pub fn small_shares(&self) -> Vec<[u8; 32]> {
        let conn = rusqlite::Connection::open(self.data.join("small-shares.sqlite")).unwrap();
        let mut stmt = conn.prepare("SELECT id FROM shares").unwrap();
        stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|id| id.unwrap().try_into().unwrap())
            .collect()
    }

    /// Replace (`Some`) or drop (`None`) a small share's row behind the
    /// mirror's back, as a failing disk would.
    pub fn set_small_share(&self, id: &[u8; 32], bytes: Option<&[u8]>) {
        let conn = rusqlite::Connection::open(self.data.join("small-shares.sqlite")).unwrap();
        match bytes {
            Some(b) => conn
                .execute(
                    "UPDATE shares SET data = ?2 WHERE id = ?1",
                    rusqlite::params![&id[..], b],
                )
                .unwrap(),
            None => conn
                .execute("DELETE FROM shares WHERE id = ?1", [&id[..]])
                .unwrap(),
        };
    }

    /// Every share file on this mirror's disk: the files under `shares/`
    /// named by an id (64 hex digits; not the layout's version file).
    /// Small shares are rows: see `small_shares`.
    pub fn share_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if e
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data.join("shares"), &mut out);
        out
    }
}

impl Drop for MirrorProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `lode` identity in its own LODE_HOME.
pub struct Client {
    pub home: PathBuf,
}

impl Client {
    /// `lode init` in `dir`, then add `mirrors`.
    pub fn new(dir: &Path, mirrors: &[&str]) -> Client {
        let c = Client {
            home: dir.to_path_buf(),
        };
        c.ok(&["init"]);
        for m in mirrors {
            c.ok(&["mirrors", "add", m]);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(Path::new("."), args)
    }

    /// [`Client::run`] from the working directory `dir`.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.run_bounded(dir, args, Duration::from_secs(300))
    }

    /// [`Client::run`], failing the test if it takes longer than `limit`:
    /// for a command that must not hang (a sync that spins).
    pub fn run_within(&self, args: &[&str], limit: Duration) -> Output {
        self.run_bounded(Path::new("."), args, limit)
    }

    fn run_bounded(&self, dir: &Path, args: &[&str], limit: Duration) -> Output {
        self.run_logging(dir, args, limit, None)
    }

    /// [`Client::ok`] with the log filter `LODE_LOG=filter`, which a mount
    /// started so keeps (its log is `data/mount.log` in LODE_HOME).
    pub fn ok_logging(&self, args: &[&str], filter: &str) -> String {
        let out = self.run_logging(Path::new("."), args, Duration::from_secs(300), Some(filter));
        assert!(
            out.status.success(),
            "lode {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn run_logging(&self, dir: &Path, args: &[&str], limit: Duration, log: Option<&str>) -> Output {
        self.run_fed(dir, args, limit, log, None)
    }

    /// [`Client::run`] with `input` on its standard input.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        self.run_fed(
            Path::new("."),
            args,
            Duration::from_secs(300),
            None,
            Some(input),
        )
    }

    fn run_fed(
        &self,
        dir: &Path,
        args: &[&str],
        limit: Duration,
        log: Option<&str>,
        input: Option<&[u8]>,
    ) -> Output {
        let mut cmd = Command::new(LODE);
        cmd.current_dir(dir)
            .args(args)
            .env("LODE_HOME", &self.home)
            .env_remove("LODE_LOG")
            .stdin(match input {
                Some(_) => Stdio::piped(),
                None => Stdio::null(),
            });
        if let Some(filter) = log {
            cmd.env("LODE_LOG", filter);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lode");
        // Drained as they come: a command that prints more than a pipe
        // holds (64 KiB) would otherwise wait for this one forever.
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        // Fed on a thread of its own, within the deadline below; a command
        // that exits before reading it all is no failure of the feeding.
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            let bytes = bytes.to_vec();
            std::thread::spawn(move || {
                use std::io::Write as _;
                match stdin.write_all(&bytes) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        panic!("feeding lode's stdin: {e}")
                    }
                    _ => {}
                }
            });
        }
        // Bound every command in time: a hung client fails the test.
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Output {
                    status,
                    stdout: stdout.join().expect("stdout reader"),
                    stderr: stderr.join().expect("stderr reader"),
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("lode {args:?} did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lode {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Run and require failure; returns stdout + stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "lode {args:?} should have failed:\n{text}"
        );
        text
    }

    /// The slot key (hex) of the directory at `path` in this identity's
    /// tree, as a [`SlotRecorder`] sees it.
    pub fn slot_key(&self, path: &str) -> String {
        let cap: lode::caps::Cap = self.ok(&["share", path]).trim().parse().unwrap();
        match cap {
            lode::caps::Cap::DirRead(r) => lode::protocol::hex(&r.public_key),
            other => panic!("{path} is not a directory: {other}"),
        }
    }

    pub fn set_config(&self, key: &str, value: &str) {
        let path = self.home.join("config/config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(String::from)
            .collect();
        // Top-level keys must precede any table; the config has none.
        lines.insert(1, format!("{key} = {value}"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
}

/// Three mirrors on loopback (data in `dir/m0..m2`) and an identity in
/// `dir/home` that stores to them 2-of-3.
pub fn three_mirrors_and_client(dir: &Path) -> (Vec<MirrorProc>, Client) {
    three_mirrors_with(dir, &[])
}

/// Three mirrors started with `extra` arguments each, and an identity in
/// `dir/home` that stores across them.
pub fn three_mirrors_with(dir: &Path, extra: &[&str]) -> (Vec<MirrorProc>, Client) {
    let mirrors: Vec<MirrorProc> = (0..3)
        .map(|i| MirrorProc::start(&dir.join(format!("m{i}")), extra))
        .collect();
    let urls: Vec<&str> = mirrors.iter().map(|m| m.url.as_str()).collect();
    let client = Client::new(&dir.join("home"), &urls);
    (mirrors, client)
}

/// One mirror that charges (price 1) and runs its built-in pool at
/// difficulty 0.001, and an identity in `dir/home` that stores 1-of-1 on it
/// and has `bytes` of data stored, so its account needs funding.
pub fn charging_pool_mirror(dir: &Path, bytes: usize) -> (MirrorProc, Client) {
    let (mirror, client) = empty_charging_pool_mirror(dir);
    let f = write_file(dir, "stored.bin", &seeded_bytes("charged data", bytes));
    client.ok(&["put", f.to_str().unwrap(), "--to", "stored.bin"]);
    (mirror, client)
}

/// [`charging_pool_mirror`] with nothing stored yet: the account has
/// nothing to fund.
pub fn empty_charging_pool_mirror(dir: &Path) -> (MirrorProc, Client) {
    let mirror = MirrorProc::start(
        &dir.join("m"),
        &[
            "--stratum",
            "127.0.0.1:0",
            "--difficulty",
            "0.001",
            "--min-difficulty",
            "0.001",
            "--price",
            "1",
        ],
    );
    let client = Client::new(&dir.join("home"), &[&mirror.url]);
    client.set_config("k", "1");
    client.set_config("n", "1");
    client.set_config("happy", "1");
    (mirror, client)
}

/// `lode mirror serve --data DATA EXTRA…` expected to refuse to start:
/// its output once it exits. Fails the test if it is still running after
/// 10 s (then it started), and kills it.
pub fn serve_refused(data: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(LODE)
        .args(["mirror", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a mirror on {} started", data.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Write `bytes` to a new file in `dir`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub mod mount;
pub mod stratum_client;

// ---- in-process test doubles of a mirror ----

/// An axum app served on 127.0.0.1:0 from a thread of its own, until
/// dropped (then shut down gracefully and joined).
pub struct TestServer {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(app: axum::Router) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        TestServer {
            url,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Three mirrors, each behind a [`SlotRecorder`], and a client of the
/// three recorders.
pub fn three_recorded_mirrors(dir: &Path) -> (Vec<MirrorProc>, Vec<SlotRecorder>, Client) {
    let mirrors: Vec<MirrorProc> = (0..3)
        .map(|i| MirrorProc::start(&dir.join(format!("m{i}")), &[]))
        .collect();
    let proxies: Vec<SlotRecorder> = mirrors
        .iter()
        .map(|m| SlotRecorder::start(&m.url))
        .collect();
    let urls: Vec<&str> = proxies.iter().map(|p| p.url()).collect();
    let client = Client::new(&dir.join("home"), &urls);
    (mirrors, proxies, client)
}

/// A pass-through proxy in front of one mirror that records, in order,
/// the slot keys (hex) of the directory updates (`PUT /v1/slot/KEY`) it
/// forwards, and answers 503 to updates of the slots it is told to refuse
/// (as a mirror that went away would). Requests are signed over their
/// method and path, not the host, so the mirror takes them as from the
/// client.
pub struct SlotRecorder {
    pub server: TestServer,
    puts: Arc<std::sync::Mutex<Vec<String>>>,
    refused: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl SlotRecorder {
    pub fn start(upstream: &str) -> SlotRecorder {
        let puts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let (log, refusing) = (puts.clone(), refused.clone());
        let upstream = upstream.to_string();
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (client, upstream) = (client.clone(), upstream.clone());
            let (log, refusing) = (log.clone(), refusing.clone());
            async move {
                let (parts, body) = req.into_parts();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                if parts.method == axum::http::Method::PUT
                    && let Some(key) = path.strip_prefix("/v1/slot/")
                {
                    if refusing.lock().unwrap().contains(key) {
                        return axum::http::Response::builder()
                            .status(503)
                            .body(axum::body::Body::from("refused by the test"))
                            .unwrap();
                    }
                    log.lock().unwrap().push(key.to_string());
                }
                let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
                let mut out = client.request(
                    reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap(),
                    format!("{upstream}{path}"),
                );
                for (name, value) in &parts.headers {
                    if name != axum::http::header::HOST {
                        out = out.header(name.as_str(), value.as_bytes());
                    }
                }
                let resp = out.body(body).send().await.unwrap();
                let mut back = axum::http::Response::builder().status(resp.status().as_u16());
                for (name, value) in resp.headers() {
                    back = back.header(name.as_str(), value.as_bytes());
                }
                back.body(axum::body::Body::from(resp.bytes().await.unwrap()))
                    .unwrap()
            }
        });
        SlotRecorder {
            server: TestServer::start(app),
            puts,
            refused,
        }
    }

    /// Answer 503 to every update of the slot `key` (hex) from now on.
    pub fn refuse(&self, key: &str) {
        self.refused.lock().unwrap().insert(key.to_string());
    }

    /// Forward every update again.
    pub fn refuse_none(&self) {
        self.refused.lock().unwrap().clear();
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The slot keys updated so far, oldest first.
    pub fn puts(&self) -> Vec<String> {
        self.puts.lock().unwrap().clone()
    }
}
