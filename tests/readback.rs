//! Reading transform output back with the `parquet` crate: the exact physical schema,
//! compression, statistics, sort order and the values of the seed example.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int32Type, TimestampMicrosecondType};
use clap::Parser;
use meterflow::cli::{Cli, Command};
use meterflow::commands;
use meterflow::reading::reason::Reason;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};

/// Generates a fleet plus the seed example and transforms it; returns the output directory.
fn transformed(dir: &Path) -> PathBuf {
    let input = dir.join("in.jsonl");
    let generate = Cli::parse_from([
        "meterflow",
        "generate",
        "--devices",
        "30",
        "--hours",
        "30",
        "--seed",
        "5",
        "--with-seed-example",
        "--output",
        input.to_str().unwrap(),
    ]);
    let Command::Generate(args) = generate.command else {
        unreachable!()
    };
    commands::generate::generate_file(&args).unwrap();

    let output = dir.join("out");
    let transform = Cli::parse_from([
        "meterflow",
        "transform",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--rows-per-file",
        "2000",
        "--epoch-readings",
        "3000",
    ]);
    let Command::Transform(args) = transform.command else {
        unreachable!()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = commands::transform::transform(&args, &runtime).unwrap();
    assert!(summary.rows > 0 && summary.files > 1);
    // At the end of the input every accepted reading has become exactly one row, and every
    // reading is accounted for: accepted, a duplicate, or a reading-level dead letter.
    assert_eq!(summary.accepted, summary.rows);
    let message_level = summary.dead_letters_for(Reason::InvalidJson)
        + summary.dead_letters_for(Reason::MissingMeasurements);
    assert_eq!(
        summary.readings,
        summary.accepted + summary.duplicates + summary.dead_letter_total() - message_level,
        "{summary:?}"
    );
    output
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for day in std::fs::read_dir(dir).unwrap() {
        let day = day.unwrap().path();
        if day
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("date=")
        {
            files.extend(std::fs::read_dir(&day).unwrap().map(|f| f.unwrap().path()));
        }
    }
    files.sort();
    files
}

#[test]
fn every_file_has_the_exact_schema_compression_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let output = transformed(dir.path());
    let files = parquet_files(&output);
    assert!(
        files.len() >= 3,
        "30 hours span two dates, and small epochs make several files"
    );
    let expected = [
        ("device_id", PhysicalType::INT32, Repetition::REQUIRED, None),
        (
            "device_name",
            PhysicalType::BYTE_ARRAY,
            Repetition::REQUIRED,
            Some(LogicalType::String),
        ),
        (
            "time",
            PhysicalType::INT64,
            Repetition::REQUIRED,
            Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
        ),
        ("duration", PhysicalType::FLOAT, Repetition::OPTIONAL, None),
        (
            "delta_energy",
            PhysicalType::FLOAT,
            Repetition::OPTIONAL,
            None,
        ),
    ];
    for file in &files {
        let reader = SerializedFileReader::new(File::open(file).unwrap()).unwrap();
        let metadata = reader.metadata();
        let schema = metadata.file_metadata().schema_descr();
        assert_eq!(schema.num_columns(), expected.len());
        for (i, (name, physical, repetition, logical)) in expected.iter().enumerate() {
            let column = schema.column(i);
            assert_eq!(column.name(), *name);
            assert_eq!(column.physical_type(), *physical, "{name}");
            assert_eq!(
                column.self_type().get_basic_info().repetition(),
                *repetition,
                "{name}"
            );
            assert_eq!(column.logical_type_ref(), logical.as_ref(), "{name}");
        }
        for group in metadata.row_groups() {
            for column in group.columns() {
                assert!(matches!(column.compression(), Compression::ZSTD(_)));
                assert!(
                    column.statistics().is_some(),
                    "statistics for {}",
                    column.column_path()
                );
            }
            let sorting = group.sorting_columns().expect("sorting columns declared");
            assert_eq!(
                sorting.iter().map(|c| c.column_idx).collect::<Vec<_>>(),
                vec![0, 2]
            );
        }
    }
}

fn read(file: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn rows_are_sorted_partitioned_by_utc_date_and_hold_the_seed_example() {
    let dir = tempfile::tempdir().unwrap();
    let output = transformed(dir.path());
    let mut seed_rows = Vec::new();
    for file in parquet_files(&output) {
        let date = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("date=")
            .to_owned();
        let mut previous: Option<(i32, i64)> = None;
        for batch in read(&file) {
            let ids = batch.column(0).as_primitive::<Int32Type>();
            let times = batch.column(2).as_primitive::<TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                let key = (ids.value(i), times.value(i));
                assert!(
                    previous.is_none_or(|p| p < key),
                    "{file:?} not sorted at {key:?}"
                );
                previous = Some(key);
                assert_eq!(meterflow::timestamp::date_of(times.value(i)), date);
                if ids.value(i) == 123456 {
                    seed_rows.push((
                        batch.column(1).as_string::<i32>().value(i).to_owned(),
                        meterflow::timestamp::format_micros(times.value(i)),
                        batch
                            .column(3)
                            .as_primitive::<Float32Type>()
                            .is_valid(i)
                            .then(|| batch.column(3).as_primitive::<Float32Type>().value(i)),
                        batch
                            .column(4)
                            .as_primitive::<Float32Type>()
                            .is_valid(i)
                            .then(|| batch.column(4).as_primitive::<Float32Type>().value(i)),
                    ));
                }
            }
        }
    }
    assert_eq!(
        seed_rows,
        vec![
            (
                "Test Device".into(),
                "2022-07-11T02:15:00Z".into(),
                None,
                None
            ),
            (
                "Test Device".into(),
                "2022-07-11T02:20:00Z".into(),
                Some(5.0),
                Some(2.33f32)
            ),
        ]
    );
}
