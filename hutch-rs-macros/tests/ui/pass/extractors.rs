//! Extractors after the message, in any order, as many as a handler needs;
//! the generated entry point builds them and calls the function.

use hutch_rs::{
    BoxError, Context, FromDelivery, Hutch, Message, RequiredState, State, consumer,
};

#[derive(Clone)]
struct Db(&'static str);

#[derive(Clone)]
struct Settings {
    limit: u64,
}

/// A user's extractor: the tenant from a header, refused without one.
struct Tenant(String);

impl FromDelivery for Tenant {
    type Rejection = BoxError;

    async fn from_delivery(ctx: &Context) -> Result<Self, BoxError> {
        let tenant = ctx.header_text("x-tenant").ok_or("no x-tenant header")?;
        Ok(Tenant(tenant.to_owned()))
    }
}

/// A user's extractor that reads state, and says so.
struct Limit(u64);

impl FromDelivery for Limit {
    type Rejection = &'static str;

    async fn from_delivery(ctx: &Context) -> Result<Self, &'static str> {
        ctx.state::<Settings>()
            .map(|settings| Limit(settings.limit))
            .ok_or("no settings")
    }

    fn required_state(required: &mut RequiredState) {
        required.state::<Settings>();
    }
}

#[consumer(routing_key = "a")]
async fn with_state(msg: Message<u64>, State(db): State<Db>) -> Result<(), BoxError> {
    let _ = (msg, db.0);
    Ok(())
}

#[consumer(routing_key = "b")]
async fn context_first(
    _msg: Message<u64>,
    ctx: Context,
    State(db): State<Db>,
    tenant: Tenant,
) -> Result<(), BoxError> {
    let _ = (ctx.hutch().exchange(), db, tenant.0);
    Ok(())
}

#[consumer(routing_key = "c")]
async fn many(
    _msg: Message<u64>,
    _a: State<Db>,
    _b: Context,
    _c: Tenant,
    _d: Limit,
    _e: State<Settings>,
    _f: Context,
    _g: State<Db>,
    _h: Tenant,
    _i: Limit,
) -> Result<(), BoxError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    // Still ordinary functions a test can call.
    let hutch = Hutch::builder().build().unwrap();
    let msg = Message::new(3_u64).with_header("x-tenant", hutch_rs::amqp::LongString::from("acme"));
    let ctx = Context::for_message(&hutch, &msg);
    let tenant = Tenant::from_delivery(&ctx).await.unwrap();
    assert_eq!(tenant.0, "acme");
    context_first(msg, ctx, State(Db("test")), tenant)
        .await
        .unwrap();
    assert_eq!(hutch_rs::consumers().len(), 3);
}
