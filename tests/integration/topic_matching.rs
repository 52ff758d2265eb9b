//! `hutch_rs::testing::topic_matches`, the in-memory broker's topic
//! routing, proved identical to RabbitMQ's: thousands of generated (binding
//! pattern, routing key) pairs, wildcards, empty words and long keys among
//! them, each routed by a real node and compared with the function.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use hutch_rs::testing::topic_matches;
use hutch_rs_tests::{init_logging, raw_channel, unique};
use lapin::{
    BasicProperties, ExchangeKind,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};

/// A small deterministic generator (SplitMix64): the same pairs on every
/// run, so that a mismatch can be replayed.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }

    /// `count` words from `words`, joined with dots.
    fn text(&mut self, words: &[&str], count: usize) -> String {
        (0..count)
            .map(|_| self.pick(words))
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// The longest routing key or binding key AMQP carries.
const MAX_KEY: usize = 255;

fn patterns(generator: &mut Generator, count: usize) -> Vec<String> {
    let mut patterns: BTreeSet<String> = [
        "", "#", "*", ".", "..", "#.#", "*.*", "#.*", "*.#", "a.#", "#.a", "a.*.b", "a.#.b",
        "#.*.#", "*.#.*", "a*", "#a", "*.", ".#",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let words = ["a", "b", "", "*", "#", "*", "#", "a*", "#b", "ab"];
    while patterns.len() < count {
        let pattern = match generator.below(10) {
            // Long: many words, up to the length limit.
            // Long: many words, up to the length limit, mostly `*` so that
            // some match the long keys, and up to two `#` (see below).
            0 => {
                let count = 20 + generator.below(100);
                let mut words: Vec<&str> = (0..count)
                    .map(|_| generator.pick(&["*", "*", "*", "a", "b", ""]))
                    .collect();
                for _ in 0..generator.below(3) {
                    let at = generator.below(words.len() + 1);
                    words.insert(at, "#");
                }
                let long = words.join(".");
                long[..long.len().min(MAX_KEY)]
                    .trim_end_matches('.')
                    .to_owned()
            }
            _ => {
                let count = generator.below(7);
                generator.text(&words, count)
            }
        };
        // At most two `#` words: RabbitMQ's own matching backtracks over
        // every `#`, so its cost grows with the key's words to the power
        // of the pattern's `#`s. Measured on 3.10, one publish of a
        // 120-word key against one binding `#.#.#.#.z` took 17.7 s, and
        // five `#`s over 20 s (`#.#.z`: 15 ms); with a few such patterns
        // among 240 the test never finished. Our matcher has no such cost
        // (it is linear in each), but the node must answer.
        if pattern.split('.').filter(|word| *word == "#").count() <= 2 {
            patterns.insert(pattern);
        }
    }
    patterns.into_iter().collect()
}

fn routing_keys(generator: &mut Generator, patterns: &[String], count: usize) -> Vec<String> {
    let mut keys: BTreeSet<String> = [
        "", ".", "..", "a", "b", "a.b", "a..b", "a.", ".a", "a*", "#",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let words = ["a", "b", "", "c", "ab", "a*"];
    let long_patterns: Vec<&String> = patterns
        .iter()
        .filter(|pattern| pattern.split('.').count() >= 20)
        .collect();
    while keys.len() < count {
        let key = match generator.below(8) {
            0 => {
                let count = 30 + generator.below(120);
                let long = generator.text(&["a", "b", ""], count);
                long[..long.len().min(MAX_KEY)].to_owned()
            }
            // Long and made to fit a long pattern, so that long pairs do
            // not all come out "no route".
            1..=3 if !long_patterns.is_empty() => {
                let pattern = long_patterns[generator.below(long_patterns.len())];
                let long = instance(generator, pattern);
                long[..long.len().min(MAX_KEY)].to_owned()
            }
            _ => {
                let count = 1 + generator.below(8);
                generator.text(&words, count)
            }
        };
        keys.insert(key);
    }
    keys.into_iter().collect()
}

/// A routing key `pattern` matches, or nearly: each `*` becomes a word,
/// each `#` none to three words, and one time in four one word changes.
fn instance(generator: &mut Generator, pattern: &str) -> String {
    let mut words = Vec::new();
    for word in pattern.split('.') {
        match word {
            "*" => words.push(generator.pick(&["a", "b", ""])),
            "#" => {
                for _ in 0..generator.below(4) {
                    words.push(generator.pick(&["a", "b", ""]));
                }
            }
            literal => words.push(literal),
        }
    }
    if generator.below(4) == 0 && !words.is_empty() {
        let at = generator.below(words.len());
        words[at] = "c";
    }
    words.join(".")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_matching_agrees_with_rabbitmq_on_twelve_thousand_pairs() {
    init_logging();
    let mut generator = Generator(0x6875_7463_6821);
    let patterns = patterns(&mut generator, 240);
    let keys = routing_keys(&mut generator, &patterns, 50);
    let (connection, channel) = raw_channel().await;
    let exchange = unique("topic-differential");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");

    // One exclusive queue per pattern.
    let mut queues = Vec::new();
    for pattern in &patterns {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("bind with {pattern:?}: {error}"));
        queues.push(queue.name().clone());
    }

    // Every key once, its index as the body; confirmed, so routed.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let mut confirms = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        confirms.push(
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    index.to_string().as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in join_all(confirms).await {
        assert!(confirm.expect("confirm").is_ack());
    }

    let mut mismatches = Vec::new();
    let mut matched = 0;
    // Pairs of a long pattern (20 words or more) that RabbitMQ routed.
    let mut long_matched = 0;
    for (pattern, queue) in patterns.iter().zip(&queues) {
        let mut routed = BTreeSet::new();
        while let Some(message) = channel
            .basic_get(queue.clone(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            let index: usize = std::str::from_utf8(&message.delivery.data)
                .expect("utf-8")
                .parse()
                .expect("an index");
            routed.insert(index);
        }
        for (index, key) in keys.iter().enumerate() {
            let by_rabbitmq = routed.contains(&index);
            matched += usize::from(by_rabbitmq);
            if by_rabbitmq && pattern.split('.').count() >= 20 {
                long_matched += 1;
            }
            if topic_matches(pattern, key) != by_rabbitmq {
                mismatches.push(format!(
                    "pattern {pattern:?}, key {key:?}: RabbitMQ {}",
                    if by_rabbitmq {
                        "routes"
                    } else {
                        "does not route"
                    }
                ));
            }
        }
    }
    let pairs = patterns.len() * keys.len();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete the exchange");
    connection.close(200, "done".into()).await.expect("close");
    eprintln!(
        "{pairs} pairs, {matched} routed by RabbitMQ ({long_matched} of them with a pattern of 20 words or more), {} disagree",
        mismatches.len()
    );
    assert!(pairs >= 10_000, "{pairs} pairs");
    // Both answers are well represented, long patterns included, or the
    // comparison proves little.
    assert!(long_matched > 0, "no long pattern matched any key");
    assert!(
        matched > pairs / 20 && matched < pairs / 2,
        "{matched} of {pairs} pairs routed"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {pairs} pairs disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
