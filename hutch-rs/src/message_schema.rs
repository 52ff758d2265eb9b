//! How `#[consumer]` records the JSON Schema of its message type for
//! AsyncAPI documents, without requiring one.
//!
//! The attribute cannot know hutch-rs's features, nor whether the message
//! type implements `schemars::JsonSchema`. It writes
//! `hutch_rs::__private::message_schema!(T)`, a `macro_rules!` macro
//! defined here twice: with the `asyncapi` feature it expands to a function
//! that asks for the schema; without it, to `()`, so nothing of schemars is
//! compiled into the application and its code compiles unchanged.
//!
//! Whether `T` implements `JsonSchema` is decided by autoref
//! specialisation: `T` is concrete where the macro expands, so method
//! resolution on `&&SchemaProbe<T>` finds [`DeriveJsonSchema`] (implemented
//! for `&SchemaProbe<T>` where `T: JsonSchema`) first, and falls back to
//! [`NoJsonSchema`] (implemented for every `SchemaProbe<T>`, one reference
//! further down) when the bound does not hold. A type without a schema is
//! therefore no compile error, and the document says it has none.

/// With the `asyncapi` feature: a function that writes `$body`'s JSON
/// Schema into a generator, or returns `None` when `$body` does not
/// implement `schemars::JsonSchema`.
#[cfg(feature = "asyncapi")]
#[doc(hidden)]
#[macro_export]
macro_rules! __hutch_rs_message_schema {
    ($body:ty) => {{
        fn __hutch_rs_message_schema(
            generator: &mut $crate::__private::schemars::SchemaGenerator,
        ) -> ::core::option::Option<$crate::__private::schemars::Schema> {
            #[allow(unused_imports)]
            use $crate::__private::{DeriveJsonSchema as _, NoJsonSchema as _};
            (&&$crate::__private::SchemaProbe::<$body>::new()).message_schema(generator)
        }
        __hutch_rs_message_schema as $crate::__private::MessageSchemaFn
    }};
}

/// Without the `asyncapi` feature: nothing.
#[cfg(not(feature = "asyncapi"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __hutch_rs_message_schema {
    ($body:ty) => {
        ()
    };
}

#[cfg(feature = "asyncapi")]
pub use probe::*;

#[cfg(feature = "asyncapi")]
mod probe {
    use std::marker::PhantomData;

    use schemars::{JsonSchema, Schema, SchemaGenerator};

    /// The function `message_schema!` generates: the message type's
    /// schema (usually a `$ref` into the generator's definitions), or
    /// `None` when the type has no `JsonSchema` implementation.
    pub type MessageSchemaFn = fn(&mut SchemaGenerator) -> Option<Schema>;

    /// A value standing for the type `T`, on which method resolution picks
    /// [`DeriveJsonSchema`] or [`NoJsonSchema`].
    #[derive(Debug)]
    pub struct SchemaProbe<T>(PhantomData<fn() -> T>);

    impl<T> SchemaProbe<T> {
        /// The probe of `T`.
        #[must_use]
        pub const fn new() -> Self {
            Self(PhantomData)
        }
    }

    impl<T> Default for SchemaProbe<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Chosen when `T: JsonSchema`: the schema schemars derives.
    pub trait DeriveJsonSchema {
        /// `T`'s schema.
        fn message_schema(&self, generator: &mut SchemaGenerator) -> Option<Schema>;
    }

    impl<T: JsonSchema> DeriveJsonSchema for &SchemaProbe<T> {
        fn message_schema(&self, generator: &mut SchemaGenerator) -> Option<Schema> {
            Some(generator.subschema_for::<T>())
        }
    }

    /// Chosen otherwise: no schema.
    pub trait NoJsonSchema {
        /// `None`.
        fn message_schema(&self, generator: &mut SchemaGenerator) -> Option<Schema>;
    }

    impl<T> NoJsonSchema for SchemaProbe<T> {
        fn message_schema(&self, _generator: &mut SchemaGenerator) -> Option<Schema> {
            None
        }
    }
}

#[cfg(all(test, feature = "asyncapi"))]
mod tests {
    use schemars::SchemaGenerator;

    #[derive(schemars::JsonSchema)]
    #[schemars(crate = "crate::__private::schemars")]
    #[allow(dead_code)]
    struct WithSchema {
        order_id: u64,
    }

    #[allow(dead_code)]
    struct WithoutSchema;

    #[test]
    fn a_type_with_json_schema_gets_its_schema_and_one_without_gets_none() {
        let mut generator = SchemaGenerator::default();
        let with = crate::__hutch_rs_message_schema!(WithSchema)(&mut generator);
        assert!(with.is_some());
        assert!(
            generator.definitions().contains_key("WithSchema"),
            "{:?}",
            generator.definitions()
        );
        let without = crate::__hutch_rs_message_schema!(WithoutSchema)(&mut generator);
        assert!(without.is_none());
        let builtin = crate::__hutch_rs_message_schema!(u32)(&mut generator).unwrap();
        assert_eq!(builtin.get("type"), Some(&serde_json::json!("integer")));
    }
}
