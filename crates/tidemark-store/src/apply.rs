//! Batch validation shared by every engine: it runs before a transaction
//! opens, so an invalid batch never touches the store.

use crate::StoreError;
use tidemark_api::schema::{validate_key, InvalidInput};
use tidemark_api::{Op, Order, Schema};

/// Checks every order of a batch against the schema.
pub fn validate_batch(schema: &Schema, orders: &[Order]) -> Result<(), StoreError> {
    for (index, order) in orders.iter().enumerate() {
        let invalid = |error: InvalidInput| StoreError::Invalid {
            index,
            source_name: order.source.clone(),
            seq: order.seq,
            error: Box::new(error),
        };
        if order.source.is_empty() || order.source.len() > 128 {
            return Err(invalid(InvalidInput::Source(order.source.len())));
        }
        if order.seq == 0 {
            return Err(invalid(InvalidInput::ZeroSeq));
        }
        validate_key(&order.key).map_err(invalid)?;
        match order.op {
            Op::Upsert => schema
                .validate_fields(&order.table, &order.fields)
                .map_err(invalid)?,
            Op::Delete => {
                schema.table(&order.table).map_err(invalid)?;
                if !order.fields.is_empty() {
                    return Err(invalid(InvalidInput::DeleteWithFields));
                }
            }
        }
    }
    Ok(())
}
