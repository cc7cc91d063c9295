//! Throughput of the stages a file goes through on its way to the mirrors.
//!
//! Run with `scripts/bench-pipeline.sh` (or `cargo bench --bench pipeline`);
//! results and how to read them are in docs/PERFORMANCE.md. Plain SHA-256 is
//! measured in the same run as the peer the other stages are compared with:
//! absolute numbers depend on the machine, ratios much less.
//!
//! Every stage runs over a 4 MiB buffer (the chunker's maximum chunk size),
//! except the chunker, which gets 64 MiB so that it finds a few dozen cut
//! points. The buffers are pseudo-random: incompressible, and with cut
//! points where real data of high entropy would have them.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use lode::chunk::ChunkerParams;
use lode::chunk::share::{self, Params, Share};
use lode::crypto::{self, ChunkKey, RootSecret};

const MIB: usize = 1024 * 1024;
/// The unit every stage but the chunker works on: one maximum-size chunk.
const CHUNK_BYTES: usize = 4 * MIB;
/// Input of the chunker benchmark.
const STREAM_BYTES: usize = 64 * MIB;

/// Deterministic, incompressible bytes (splitmix64).
fn random_bytes(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn configure(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("pipeline");
    // One iteration takes milliseconds to a fraction of a second: flat
    // sampling keeps the run short without dropping below 10 samples.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g
}

fn chunk_stages(c: &mut Criterion) {
    let data = random_bytes(CHUNK_BYTES, 1);
    let secret = RootSecret::from_bytes([7; 32]);
    let conv = secret.convergence();
    let params = Params::new(2, 3).expect("2-of-3 is valid");

    let sealed = share::seal_chunk(&conv, params, &data);
    assert_eq!(sealed.shares.len(), 3);
    // Shares 1 (the second data shard) and 2 (the parity shard): share 0 is
    // missing, so opening must run Reed-Solomon reconstruction.
    let degraded = sealed.shares[1..].to_vec();
    assert_eq!(
        share::open_chunk(&sealed.key, params, &degraded).expect("opens"),
        data
    );
    let key = ChunkKey::from_bytes([9; 32]);

    let mut g = configure(c);
    g.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    g.bench_function("sha256", |b| b.iter(|| crypto::sha256(black_box(&data))));
    g.bench_function("aes_siv_seal", |b| {
        b.iter(|| key.seal(&[b"lode bench"], black_box(&data)))
    });
    g.bench_function("rs_encode_2of3", |b| {
        b.iter(|| share::encode(params, black_box(&data)))
    });
    g.bench_function("seal_chunk_2of3", |b| {
        b.iter(|| share::seal_chunk(&conv, params, black_box(&data)))
    });
    // Four chunks of a file, as the upload hands them to sealing: one at
    // a time, and together (their AES-SIV interleaved).
    let four: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(CHUNK_BYTES, 10 + i)).collect();
    let four_keys: Vec<ChunkKey> = four
        .iter()
        .map(|c| share::chunk_key(&conv, params, c))
        .collect();
    // Each iteration seals its own copies: sealing is in place.
    let batch = || {
        four_keys
            .iter()
            .cloned()
            .zip(four.iter().cloned())
            .collect::<Vec<_>>()
    };
    g.throughput(Throughput::Bytes(4 * CHUNK_BYTES as u64));
    g.bench_function("seal_4_chunks_one_by_one", |b| {
        b.iter_batched(
            batch,
            |chunks| {
                chunks
                    .into_iter()
                    .map(|(key, body)| share::seal_chunk_keyed(key, params, body))
                    .collect::<Vec<_>>()
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("seal_4_chunks_together", |b| {
        b.iter_batched(
            batch,
            |chunks| share::seal_chunks_keyed(params, chunks),
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    // The read path: both data shares, ids already checked, decrypted in
    // the shares' own buffers (as fetched: each share's bytes unshared),
    // with no join.
    let whole = sealed.shares[..2].to_vec();
    g.bench_function("open_verified_chunk_parts_2of3", |b| {
        b.iter_batched(
            || {
                whole
                    .iter()
                    .map(|s| Share::parse(s.as_bytes().to_vec()).expect("parses"))
                    .collect::<Vec<_>>()
            },
            |shares| share::open_verified_chunk_parts(&sealed.key, params, shares).expect("opens"),
            BatchSize::LargeInput,
        )
    });
    // A rebuild from parity, as the read path opens it: tag checked.
    g.bench_function("open_chunk_2of3_rebuild", |b| {
        b.iter(|| share::open_chunk(&sealed.key, params, black_box(&degraded)).expect("opens"))
    });
    g.finish();
}

fn chunker(c: &mut Criterion) {
    let data = random_bytes(STREAM_BYTES, 2);
    let chunker = ChunkerParams::new(0);
    let count = chunker.chunks(Cursor::new(&data)).count();
    assert!(count > 1, "64 MiB of random bytes yields several chunks");

    let mut g = configure(c);
    g.throughput(Throughput::Bytes(STREAM_BYTES as u64));
    g.bench_function("chunker_64mib", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for chunk in chunker.chunks(Cursor::new(black_box(&data))) {
                total += chunk.expect("reading memory cannot fail").len();
            }
            assert_eq!(total, STREAM_BYTES);
        })
    });
    g.finish();
}

criterion_group!(benches, chunk_stages, chunker);
criterion_main!(benches);
