//! Recovery: while the client consumes a steady trickle, the broker's app is
//! stopped (which closes every connection) for about two seconds and
//! started again. T0 is when the AMQP port accepts TCP connections again;
//! from then on, markers go out every 10 ms on a fresh connection; T1 is the
//! client's first marker delivery. Both are Unix-epoch nanoseconds of this
//! machine's clock.

use std::{
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use lapin::{Connection, ConnectionProperties, options::BasicPublishOptions};

use crate::{
    Error,
    broker::PATIENCE,
    child::{ClientProcess, MARKER, READY},
    cli::Impl,
    scenario::{Bench, Scenario},
    stats::{Better, Results},
    workload::{
        EXCHANGE, MARKER_SEQ, Payload, RECOVERY_KEY, RECOVERY_QUEUE, persistent_json, unix_nanos,
    },
};

/// The trickle before the outage: one message every 50 ms, for a second.
const TRICKLE_PERIOD: Duration = Duration::from_millis(50);
const TRICKLE_FOR: Duration = Duration::from_secs(1);
/// How long the app stays stopped (after `stop_app` returned).
const OUTAGE: Duration = Duration::from_secs(2);
/// The markers after the outage.
const MARKER_PERIOD: Duration = Duration::from_millis(10);
/// How often the port is tried while the app starts.
const PORT_POLL: Duration = Duration::from_millis(2);

pub(super) fn run(
    bench: &Bench<'_>,
    implementation: Impl,
    results: &mut Results,
) -> Result<(), Error> {
    let broker = bench.broker;
    broker.purge(RECOVERY_QUEUE)?;
    let mut client = ClientProcess::spawn(&bench.client(Scenario::Recovery, implementation)?)?;
    client.expect(READY, PATIENCE)?;

    let uri = broker.uri();
    let port = SocketAddr::from(([127, 0, 0, 1], broker.amqp_port()));
    let stop_trickle = AtomicBool::new(false);
    let stop_markers = AtomicBool::new(false);
    let (t0, t1) = thread::scope(|scope| -> Result<(u64, u64), Error> {
        // The trickle's connection dies with the outage, which ends it; its
        // error is expected and dropped.
        let trickle = scope.spawn(|| publish_every(&uri, TRICKLE_PERIOD, 0, &stop_trickle));
        thread::sleep(TRICKLE_FOR);
        broker.ctl("stop_app")?;
        stop_trickle.store(true, Ordering::Relaxed);
        let _ = trickle.join();
        if TcpStream::connect(port).is_ok() {
            return Err("the AMQP port still accepts connections after stop_app".into());
        }
        thread::sleep(OUTAGE);

        // Polled from before start_app, which returns only once the app
        // has started, later than its listener opens.
        let port_open = scope.spawn(move || {
            while TcpStream::connect(port).is_err() {
                thread::sleep(PORT_POLL);
            }
            unix_nanos()
        });
        broker.ctl("start_app")?;
        let t0 = port_open.join().map_err(|_| "the port poller panicked")?;
        let markers = scope.spawn(|| publish_every(&uri, MARKER_PERIOD, MARKER_SEQ, &stop_markers));
        let first_marker = client.expect(MARKER, PATIENCE);
        stop_markers.store(true, Ordering::Relaxed);
        markers
            .join()
            .map_err(|_| "the marker publisher panicked")??;
        Ok((t0, first_marker?.parse()?))
    })?;
    client.finish()?;
    broker.purge(RECOVERY_QUEUE)?;

    let recovery_ms = t1.saturating_sub(t0) as f64 / 1e6;
    results.record(
        "recovery: port open → first delivery ms",
        Better::Lower,
        implementation,
        recovery_ms,
    );
    eprintln!("    {implementation}: first delivery {recovery_ms:.0} ms after the port opened");
    Ok(())
}

/// Publishes a persistent message every `period` (not awaiting confirms:
/// the channel is not in confirm mode) from a fresh connection until `stop`;
/// the first message's `seq` is `first_seq`. Connecting is retried every
/// `period`, as the broker may accept TCP before AMQP.
fn publish_every(
    uri: &str,
    period: Duration,
    first_seq: u64,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connection = loop {
            match Connection::connect(uri, ConnectionProperties::default()).await {
                Ok(connection) => break connection,
                Err(_) if !stop.load(Ordering::Relaxed) => tokio::time::sleep(period).await,
                Err(error) => return Err(error.into()),
            }
        };
        let channel = connection.create_channel().await?;
        let mut seq = first_seq;
        while !stop.load(Ordering::Relaxed) {
            let body = serde_json::to_vec(&Payload::new(seq, unix_nanos()))?;
            channel
                .basic_publish(
                    EXCHANGE.into(),
                    RECOVERY_KEY.into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent_json(),
                )
                .await?;
            seq += 1;
            tokio::time::sleep(period).await;
        }
        connection.close(200, "done".into()).await?;
        Ok(())
    })
}
