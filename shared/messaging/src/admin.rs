use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::base_config;

/// Creates the topics that do not exist yet; existing ones are left as they are, so running it
/// on every start is safe. Returns once every partition of `topics` has a leader: right after a
/// creation the broker may still answer `NotLeaderForPartition`, and a caller that produces or
/// reads offsets at once would fail.
pub async fn ensure_topics(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .context("creating topics")?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    wait_for_leaders(&admin, topics).await?;
    Ok(created)
}

async fn wait_for_leaders(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for topic in topics {
        loop {
            let ready = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map(|m| {
                    m.topics().iter().all(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("topic {topic} has partitions without a leader after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
