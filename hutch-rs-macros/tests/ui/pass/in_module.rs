mod orders {
    pub mod receipts {
        #[derive(serde::Deserialize)]
        pub struct OrderPlaced {
            pub order_id: u64,
        }

        // Fully qualified, without any `use`.
        #[hutch_rs::consumer(routing_key = "orders.placed")]
        async fn send_receipt(
            msg: hutch_rs::Message<OrderPlaced>,
        ) -> Result<(), hutch_rs::BoxError> {
            let _ = msg.order_id;
            Ok(())
        }
    }
}

fn main() {
    let consumers = hutch_rs::consumers();
    assert_eq!(consumers.len(), 1);
    let module = format!("{}::orders::receipts", module_path!());
    assert_eq!(consumers[0].module_path(), module);
    assert_eq!(
        consumers[0].qualified_name(),
        format!("{module}::send_receipt")
    );
}
