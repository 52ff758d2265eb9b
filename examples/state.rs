//! Handlers with state: an order consumer writes each order to a SQLite
//! database through a connection pool given to the builder, reads the
//! tenant from a header with an extractor of its own, and publishes a
//! follow-up that a second consumer handles. An order without a tenant is
//! refused by the extractor: retried, then dead-lettered. With a private
//! broker when HUTCH_URI is not set.
//!
//! ```sh
//! cargo run --example state
//! ```

use std::time::Duration;

use hutch_rs::{
    BoxError, Context, Error, Failure, FromDelivery, Hutch, Message, Outcome, PublishOptions,
    RequiredState, State, consumer,
};
use serde::{Deserialize, Serialize};
use sqlx::{Sqlite, SqlitePool, Transaction, sqlite::SqlitePoolOptions};
use tokio::sync::Semaphore;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    total_cents: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderStored {
    order_id: i64,
    tenant: String,
}

// ANCHOR: state
/// The application's database. A pool is a handle already (cloning it
/// shares its connections); the newtype names what it is for, so that a
/// second pool, of the same type, could be given as another state value.
#[derive(Clone)]
struct Db(SqlitePool);
// ANCHOR_END: state

// ANCHOR: tenant
/// The tenant an order belongs to, from its `x-tenant` header.
struct Tenant(String);

impl FromDelivery for Tenant {
    type Rejection = BoxError;

    async fn from_delivery(ctx: &Context) -> Result<Self, BoxError> {
        // A refusal is the message's failure, like a handler's `Err`:
        // retried, then dead-lettered with this text. The handler is not
        // called.
        let tenant = ctx
            .header_text("x-tenant")
            .ok_or("the order has no x-tenant header")?;
        Ok(Tenant(tenant.to_owned()))
    }
}
// ANCHOR_END: tenant

// ANCHOR: tx
/// A transaction on the database, begun before the handler runs. Dropped
/// without `commit` (the handler failed, or a later extractor refused) it
/// rolls back.
struct Tx(Transaction<'static, Sqlite>);

impl FromDelivery for Tx {
    type Rejection = BoxError;

    async fn from_delivery(ctx: &Context) -> Result<Self, BoxError> {
        let Db(pool) = ctx.state::<Db>().ok_or("no Db was given")?;
        Ok(Tx(pool.begin().await?))
    }

    // Reads `Db` from the state: declared, `start` refuses to run without
    // one instead of every message failing.
    fn required_state(required: &mut RequiredState) {
        required.state::<Db>();
    }
}
// ANCHOR_END: tx

// ANCHOR: consumers
/// Stores each order, then announces it. Extractors follow the message, in
/// any order.
#[consumer(
    routing_key = "orders.placed",
    max_attempts = 2,
    retry_min_delay = "200ms"
)]
async fn store_order(
    msg: Message<OrderPlaced>,
    tenant: Tenant,
    Tx(mut tx): Tx,
    ctx: Context,
) -> Result<(), BoxError> {
    // A retried or redelivered order is stored once.
    sqlx::query(
        "INSERT INTO orders (order_id, tenant, customer, total_cents) VALUES (?, ?, ?, ?)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(msg.order_id)
    .bind(&tenant.0)
    .bind(&msg.customer)
    .bind(msg.total_cents)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    println!("stored   order {} of tenant {}", msg.order_id, tenant.0);

    // The instance running this consumer: the broker, exchange and
    // namespace the application's builder set. Published after the commit,
    // so that whoever handles the follow-up finds the row.
    let stored = OrderStored {
        order_id: msg.order_id,
        tenant: tenant.0,
    };
    ctx.hutch().publish("orders.stored", &stored).await?;
    Ok(())
}

/// Handles the follow-up, reading the order back through the shared pool.
#[consumer(routing_key = "orders.stored")]
async fn ship_order(msg: Message<OrderStored>, State(Db(pool)): State<Db>) -> Result<(), BoxError> {
    let (customer, total_cents): (String, i64) =
        sqlx::query_as("SELECT customer, total_cents FROM orders WHERE order_id = ?")
            .bind(msg.order_id)
            .fetch_one(&pool)
            .await?;
    println!(
        "shipping order {} to {customer} ({}), {:.2} EUR",
        msg.order_id,
        msg.tenant,
        total_cents as f64 / 100.0
    );
    SHIPPED.add_permits(1);
    Ok(())
}
// ANCHOR_END: consumers

/// A database with the `orders` table, in memory. It lives as long as its
/// connection, hence a pool of one connection kept forever; a database file
/// or server takes a real pool.
async fn in_memory_db() -> Result<SqlitePool, sqlx::Error> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await?;
    sqlx::query(
        "CREATE TABLE orders (
            order_id INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL,
            customer TEXT NOT NULL,
            total_cents INTEGER NOT NULL
        )",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// One permit per order shipped, so that `main` knows when all were.
static SHIPPED: Semaphore = Semaphore::const_new(0);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let private_broker = match std::env::var("HUTCH_URI") {
        Ok(_) => None,
        Err(_) => {
            println!("HUTCH_URI is not set: starting a private RabbitMQ node (about 10 s)...");
            Some(tokio::task::spawn_blocking(hutch_rs::testing::Broker::start).await??)
        }
    };

    let pool = in_memory_db().await?;

    let mut builder = Hutch::builder().namespace("state-example");
    if let Some(broker) = &private_broker {
        builder = builder.uri(broker.amqp_uri());
    }

    // Forgetting the pool is an error at start, before anything is
    // declared, not a failure of every message.
    match builder.clone().build()?.start().await {
        Err(error @ Error::MissingState { .. }) => println!("without the pool: {error}"),
        Err(error) => return Err(error.into()),
        Ok(_) => return Err("start must refuse to run without the pool".into()),
    }

    let (dead_lettered, mut dead_letters) = tokio::sync::mpsc::unbounded_channel();
    let report = move |failure: Failure| {
        let dead_lettered = dead_lettered.clone();
        async move {
            println!(
                "refused  attempt {} of {}: {} -> {:?}",
                failure.attempt(),
                failure.consumer(),
                failure.error(),
                failure.outcome()
            );
            if let Outcome::DeadLettered { .. } = failure.outcome() {
                let _ = dead_lettered.send(());
            }
            Ok::<_, BoxError>(())
        }
    };

    // ANCHOR: builder
    let hutch = builder
        .state(Db(pool.clone())) // one value per type; each call gets a clone
        .on_error(report)
        .build()?;
    // ANCHOR_END: builder
    let running = hutch.start().await?;

    let orders = [(1, "ada", 1_999), (2, "grace", 4_250), (3, "linus", 990)];
    for (order_id, customer, total_cents) in orders {
        let order = OrderPlaced {
            order_id,
            customer: customer.to_owned(),
            total_cents,
        };
        let tenant = if order_id == 2 { "globex" } else { "acme" };
        hutch
            .publish_with(
                "orders.placed",
                &order,
                PublishOptions::new().header("x-tenant", tenant),
            )
            .await?;
    }
    // No tenant: the extractor refuses it on both attempts.
    let orphan = OrderPlaced {
        order_id: 4,
        customer: "nobody".to_owned(),
        total_cents: 100,
    };
    hutch.publish("orders.placed", &orphan).await?;

    let (shipped, dead) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            SHIPPED.acquire_many(orders.len() as u32),
            dead_letters.recv()
        )
    })
    .await?;
    shipped?.forget();
    dead.ok_or("the error hook went away")?;
    running.shutdown().await?;
    hutch.close().await?;

    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT order_id, tenant FROM orders ORDER BY order_id")
            .fetch_all(&pool)
            .await?;
    println!("in the database: {stored:?}");
    pool.close().await;
    Ok(())
}

// ANCHOR: tests
// Consumer functions and extractors stay plain code: these tests need no
// broker (`cargo test -p hutch-rs-examples --example state`).
#[cfg(test)]
mod tests {
    use super::*;
    use hutch_rs::amqp::LongString;

    #[tokio::test]
    async fn the_tenant_comes_from_the_header() -> Result<(), BoxError> {
        // Connects only when something is published through it.
        let hutch = Hutch::builder().build()?;
        let msg = Message::new(()).with_header("x-tenant", LongString::from("acme"));
        let ctx = Context::for_message(&hutch, &msg);
        assert_eq!(Tenant::from_delivery(&ctx).await?.0, "acme");

        let without = Context::for_message(&hutch, &Message::new(()));
        assert!(Tenant::from_delivery(&without).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn an_order_is_shipped_from_the_database() -> Result<(), BoxError> {
        let pool = in_memory_db().await?;
        sqlx::query("INSERT INTO orders VALUES (7, 'acme', 'ada', 1999)")
            .execute(&pool)
            .await?;
        let msg = Message::new(OrderStored {
            order_id: 7,
            tenant: "acme".to_owned(),
        })
        .with_routing_key("orders.stored");
        // The extractors are arguments like any other.
        ship_order(msg, State(Db(pool))).await
    }
}
// ANCHOR_END: tests
