//! The output schema (contract §1) and a day's rows → Arrow record batches.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Int32Array, TimestampMicrosecondArray};
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

/// The schema of the batches handed to the Parquet writer: [`schema`], except that
/// `device_name` comes as keys into the day's distinct names. The writer is created with
/// [`schema`] and encodes each name through its key, so files carry the exact schema while
/// no name is copied row by row on the way.
pub fn layout_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let exact = schema();
            let mut fields: Vec<Field> =
                exact.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[1] = Field::new(
                "device_name",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            );
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Lays a day's rows out as one record batch of [`layout_schema`], moving the columns.
pub fn to_record_batch(rows: DayRows) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(rows.device_id)),
        Arc::new(rows.device_name),
        Arc::new(TimestampMicrosecondArray::from(rows.time).with_timezone("UTC")),
        Arc::new(rows.duration),
        Arc::new(rows.delta_energy),
    ];
    RecordBatch::try_new(layout_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, DictionaryArray, Float32Array};
    use arrow::datatypes::{Float32Type, Int32Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
    use parquet::arrow::ArrowWriter;

    fn two_rows() -> DayRows {
        DayRows {
            day: 0,
            device_id: vec![7, 7],
            time: vec![1, 2],
            duration: Float32Array::from(vec![None, Some(5.0)]),
            delta_energy: Float32Array::from(vec![None, None]),
            device_name: vec!["a", "bc"]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        }
    }

    #[test]
    fn columns_move_into_the_layout_schema_with_nulls() {
        let batch = to_record_batch(two_rows()).unwrap();
        assert_eq!(batch.schema(), layout_schema());
        for column in [0, 2, 3, 4] {
            assert_eq!(layout_schema().field(column), schema().field(column));
        }
        assert_eq!(batch.num_rows(), 2);
        let time = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(time.values().to_vec(), vec![1, 2]);
        let duration = batch.column(3).as_primitive::<Float32Type>();
        assert!(duration.is_null(0));
        assert_eq!(duration.value(1), 5.0);
        assert_eq!(batch.column(4).null_count(), 2);
        assert_eq!(batch.column(0).null_count(), 0);
    }

    #[test]
    fn a_writer_of_the_exact_schema_stores_keyed_names_as_strings() {
        let mut file = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut file, schema(), None).unwrap();
        writer.write(&to_record_batch(two_rows()).unwrap()).unwrap();
        writer.close().unwrap();
        let mut reader = ParquetRecordBatchReader::try_new(bytes::Bytes::from(file), 16).unwrap();
        let read = reader.next().unwrap().unwrap();
        assert_eq!(read.schema(), schema());
        let names = read.column(1).as_string::<i32>();
        assert_eq!((names.value(0), names.value(1)), ("a", "bc"));
    }
}
