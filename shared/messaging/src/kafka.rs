//! librdkafka client settings shared by every producer and consumer, so that the benchmark's
//! reference client and the services run with the same configuration.

use rdkafka::ClientConfig;

pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4");
    cfg
}

/// Idempotent producer with `acks=all`: a retried send never duplicates or reorders a record
/// within a partition.
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = base_config(bootstrap);
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .set("compression.type", "lz4");
    cfg
}

/// Manual commits only: an offset is committed after the effect of its record is durable in
/// Postgres, never on a timer.
pub fn consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut cfg = base_config(bootstrap);
    cfg.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "50");
    cfg
}
