//! A TCP proxy between a client and the broker that can black-hole the
//! traffic: while black-holed it forwards nothing and closes nothing, so
//! both peers see silence, as with a dead network path. Only heartbeats can
//! tell.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// A proxy on 127.0.0.1 forwarding to a local upstream port.
#[derive(Debug)]
pub struct BlackHoleProxy {
    port: u16,
    open: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl BlackHoleProxy {
    /// Listens on a free port and forwards every connection to `upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let open = watch::Sender::new(true);
        let accepting = tokio::spawn({
            let open = open.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, open.subscribe()));
                    tokio::spawn(pump(server_read, client_write, open.subscribe()));
                }
            }
        });
        Self {
            port,
            open,
            accepting,
        }
    }

    /// The AMQP URI that goes through the proxy.
    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops forwarding, in both directions, on every connection.
    pub fn black_hole(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to` while the path is open; while it is black-holed,
/// reads nothing (and drops what was in flight), closes nothing.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut open: watch::Receiver<bool>) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        if open.wait_for(|open| *open).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = open.wait_for(|open| !*open) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !*open.borrow() {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
