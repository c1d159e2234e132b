//! The output schema (DESIGN §1) and a day's rows → Arrow record batches.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int32Array, StringArray, TimestampMicrosecondArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::deltas::DayRows;

/// The exact output schema: column order, types and nullability are the contract.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("device_id", DataType::Int32, false),
                Field::new("device_name", DataType::Utf8, false),
                Field::new(
                    "time",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("duration", DataType::Float32, true),
                Field::new("delta_energy", DataType::Float32, true),
            ]))
        })
        .clone()
}

/// Lays a day's rows out as one record batch of [`schema`], moving the columns (the names
/// buffer becomes the string column without a copy).
pub fn to_record_batch(rows: DayRows) -> Result<RecordBatch, ArrowError> {
    let offsets = OffsetBuffer::new(ScalarBuffer::from(rows.name_offsets));
    let names = StringArray::try_new(offsets, Buffer::from(rows.name_bytes.into_bytes()), None)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(rows.device_id)),
        Arc::new(names),
        Arc::new(TimestampMicrosecondArray::from(rows.time).with_timezone("UTC")),
        Arc::new(rows.duration),
        Arc::new(rows.delta_energy),
    ];
    RecordBatch::try_new(schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Float32Array};
    use arrow::datatypes::{Float32Type, TimestampMicrosecondType};

    #[test]
    fn columns_move_into_the_exact_schema_with_nulls() {
        let rows = DayRows {
            day: 0,
            device_id: vec![7, 7],
            time: vec![1, 2],
            duration: Float32Array::from(vec![None, Some(5.0)]),
            delta_energy: Float32Array::from(vec![None, None]),
            name_offsets: vec![0, 1, 3],
            name_bytes: "abc".into(),
        };
        let batch = to_record_batch(rows).unwrap();
        assert_eq!(batch.schema(), schema());
        assert_eq!(batch.num_rows(), 2);
        let time = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(time.values().to_vec(), vec![1, 2]);
        let duration = batch.column(3).as_primitive::<Float32Type>();
        assert!(duration.is_null(0));
        assert_eq!(duration.value(1), 5.0);
        assert_eq!(batch.column(4).null_count(), 2);
        assert_eq!(batch.column(1).as_string::<i32>().value(1), "bc");
        assert_eq!(batch.column(0).null_count(), 0);
    }
}
