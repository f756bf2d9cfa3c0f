//! Which partition a keyed record lands on.
//!
//! Sagaflow's producers use librdkafka's `murmur2_random` partitioner, the
//! Java client's default: a keyed record goes to
//! `(murmur2(key) & 0x7fffffff) % partitions`. A process that must know,
//! without producing, where a saga's records go (the orchestrator's facade
//! handing a saga start straight to the partition's owner) computes it
//! here; `tests/partition.rs` checks it against the producer's own choice.

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed
/// `0x9747b28c`, over `data`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `partitions` a record keyed `key` is produced to.
/// `None` when there are no partitions.
pub fn partition_for(key: &[u8], partitions: i32) -> Option<i32> {
    let n = u32::try_from(partitions).ok().filter(|n| *n > 0)?;
    // The quotient is below `partitions`, an i32.
    Some(((murmur2(key) & 0x7fff_ffff) % n) as i32)
}

/// How many partitions `topic` has, from one metadata request of
/// `producer`'s client (made on a blocking thread); `Ok(0)` while the topic
/// is not in the metadata yet.
pub async fn partitions_of(
    producer: &crate::Producer,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<usize, String> {
    let producer = producer.clone();
    let t = topic.to_owned();
    use rdkafka::producer::Producer as _;
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&t), timeout)
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|mt| mt.name() == t && mt.error().is_none())
                    .map_or(0, |mt| mt.partitions().len())
            })
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_partitions_is_no_partition() {
        assert_eq!(partition_for(b"k", 0), None);
        assert_eq!(partition_for(b"k", -3), None);
        assert_eq!(partition_for(b"k", 1), Some(0));
    }

    #[test]
    fn every_tail_length_is_hashed_and_results_stay_in_range() {
        // Keys of 0 to 8 bytes cover each remainder of the 4-byte loop
        // twice; distinct keys must not collapse onto one hash.
        let keys: Vec<Vec<u8>> = (0..=8).map(|n| (1..=n as u8).collect()).collect();
        let hashes: std::collections::BTreeSet<u32> = keys.iter().map(|k| murmur2(k)).collect();
        assert_eq!(hashes.len(), keys.len());
        for k in &keys {
            for n in 1..=16 {
                let p = partition_for(k, n).unwrap();
                assert!((0..n).contains(&p));
            }
        }
    }
}
