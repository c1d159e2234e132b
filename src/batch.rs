//! The output schema (DESIGN §1) and rows → Arrow record batches.

use std::sync::{Arc, OnceLock};

use arrow::array::{Float32Array, Int32Array, StringBuilder, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::deltas::Row;

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

/// Lays rows out as one record batch of [`schema`].
pub fn to_record_batch(rows: &[Row]) -> Result<RecordBatch, ArrowError> {
    let name_bytes = rows.iter().map(|r| r.device_name.len()).sum();
    let mut names = StringBuilder::with_capacity(rows.len(), name_bytes);
    for row in rows {
        names.append_value(&row.device_name);
    }
    let columns: Vec<arrow::array::ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.device_id).collect::<Int32Array>()),
        Arc::new(names.finish()),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.time).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(rows.iter().map(|r| r.duration).collect::<Float32Array>()),
        Arc::new(rows.iter().map(|r| r.delta_energy).collect::<Float32Array>()),
    ];
    RecordBatch::try_new(schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float32Type, TimestampMicrosecondType};

    #[test]
    fn rows_become_columns_with_nulls() {
        let rows = vec![
            Row { device_id: 7, time: 1, duration: None, delta_energy: None, device_name: "a".into() },
            Row { device_id: 7, time: 2, duration: Some(5.0), delta_energy: None, device_name: "b".into() },
        ];
        let batch = to_record_batch(&rows).unwrap();
        assert_eq!(batch.schema(), schema());
        assert_eq!(batch.num_rows(), 2);
        let time = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(time.values().to_vec(), vec![1, 2]);
        let duration = batch.column(3).as_primitive::<Float32Type>();
        assert!(duration.is_null(0));
        assert_eq!(duration.value(1), 5.0);
        assert_eq!(batch.column(4).null_count(), 2);
        assert_eq!(batch.column(1).as_string::<i32>().value(1), "b");
    }
}
