//! The `.feather` format (Arrow IPC file, freqtrade's default): checks the
//! lengths the Arrow reader would trust, decodes inside `catch_unwind`, and turns
//! the `date` and OHLCV columns of any integer, float or timestamp type into raw
//! rows. A damaged file is an error, never a panic or an unbounded allocation.

use std::fs;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use super::row::{RawRow, RawTimeUnit, RawTimes};
use super::{io_error, ImportError};

/// The OHLCV columns of a feather file, by name (freqtrade's names).
const DATE_COLUMN: &str = "date";
const VALUE_COLUMNS: [&str; 5] = ["open", "high", "low", "close", "volume"];

/// Reads a feather file from memory. arrow-ipc is not hardened against damaged
/// files: some bad offsets panic, and a damaged compressed-length prefix can make
/// it allocate without bound, which aborts the process. So the lengths it trusts
/// are checked first ([`check_ipc_lengths`]) and any panic left is caught and
/// turned into an error: a damaged file must never take the server down.
pub(super) fn read_feather_rows(path: &Path) -> Result<Vec<RawRow>, ImportError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let arrow = |message: String| ImportError::Arrow {
        path: path.to_path_buf(),
        message,
    };
    check_ipc_lengths(&bytes).map_err(arrow)?;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_feather(path, &bytes)
    }));
    decoded.unwrap_or_else(|_| {
        Err(arrow(
            "the Arrow reader failed on malformed data (the file is damaged)".to_string(),
        ))
    })
}

fn decode_feather(path: &Path, bytes: &[u8]) -> Result<Vec<RawRow>, ImportError> {
    let arrow = |e: arrow_schema::ArrowError| ImportError::Arrow {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader =
        arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None).map_err(arrow)?;
    let schema = reader.schema();
    for column in std::iter::once(DATE_COLUMN).chain(VALUE_COLUMNS) {
        if schema.index_of(column).is_err() {
            let column = static_column_name(column);
            return Err(ImportError::MissingColumn {
                path: path.to_path_buf(),
                column,
            });
        }
    }
    let mut times = RawTimes {
        values: Vec::new(),
        unit: None,
    };
    let mut values: Vec<[Option<f64>; 5]> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow)?;
        append_batch(path, &batch, &mut times, &mut values)?;
    }
    Ok(times
        .into_seconds()
        .into_iter()
        .zip(values)
        .map(|(time, values)| RawRow { time, values })
        .collect())
}

/// LZ4 cannot expand data by more than about 255 times (a match's length grows
/// by 255 per extra byte), so a compressed buffer declaring more is damaged.
const MAX_LZ4_EXPANSION: i64 = 256;

/// Checks, with arrow-ipc's own flatbuffer accessors, the lengths that
/// arrow-ipc uses before it validates them: every footer block must lie inside
/// the file, every buffer inside its block's body, and every compressed buffer
/// must declare a decompressed size that LZ4 could produce from it. Files that
/// are not Arrow IPC at all are left for the reader to reject with its message.
fn check_ipc_lengths(bytes: &[u8]) -> Result<(), String> {
    let n = bytes.len();
    if n < 10 || &bytes[n - 6..] != b"ARROW1" {
        return Ok(());
    }
    let footer_len = i32::from_le_bytes([bytes[n - 10], bytes[n - 9], bytes[n - 8], bytes[n - 7]]);
    let footer_start = usize::try_from(footer_len)
        .ok()
        .and_then(|len| (n - 10).checked_sub(len))
        .ok_or_else(|| format!("footer length {footer_len} does not fit in the file"))?;
    let footer = arrow_ipc::root_as_footer(&bytes[footer_start..n - 10])
        .map_err(|e| format!("damaged footer: {e}"))?;
    let blocks = footer.recordBatches().into_iter().flatten();
    for block in blocks.chain(footer.dictionaries().into_iter().flatten()) {
        check_block(bytes, block)?;
    }
    Ok(())
}

fn check_block(bytes: &[u8], block: &arrow_ipc::Block) -> Result<(), String> {
    let range = |start: i64, len: i64, within: usize| -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= within).then_some(start..end)
    };
    let damaged = || format!("block at offset {} lies outside the file", block.offset());
    let meta = range(
        block.offset(),
        i64::from(block.metaDataLength()),
        bytes.len(),
    )
    .ok_or_else(damaged)?;
    let body_start = i64::try_from(meta.end).map_err(|_| damaged())?;
    let body = range(body_start, block.bodyLength(), bytes.len()).ok_or_else(damaged)?;
    let meta = &bytes[meta];
    // An encapsulated message: [0xFFFFFFFF] <i32 length> <flatbuffer>.
    let skip = if meta.starts_with(&[0xff; 4]) { 8 } else { 4 };
    let message = arrow_ipc::root_as_message(meta.get(skip..).unwrap_or_default())
        .map_err(|e| format!("damaged message at offset {}: {e}", block.offset()))?;
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    let Some(batch) = batch else { return Ok(()) };
    let compressed = batch.compression().is_some();
    let body = &bytes[body];
    for buffer in batch.buffers().into_iter().flatten() {
        let at = range(buffer.offset(), buffer.length(), body.len()).ok_or_else(|| {
            format!(
                "buffer at offset {} lies outside its block",
                buffer.offset()
            )
        })?;
        if !compressed || at.len() < 8 {
            continue;
        }
        let prefix: [u8; 8] = body[at.start..at.start + 8].try_into().unwrap_or_default();
        let declared = i64::from_le_bytes(prefix);
        // -1 marks a buffer stored uncompressed.
        let possible = MAX_LZ4_EXPANSION
            .saturating_mul(buffer.length())
            .saturating_add(1024);
        if declared < -1 || declared > possible {
            return Err(format!(
                "a compressed buffer of {} bytes declares {declared} bytes decompressed",
                buffer.length()
            ));
        }
    }
    Ok(())
}

fn static_column_name(column: &str) -> &'static str {
    std::iter::once(DATE_COLUMN)
        .chain(VALUE_COLUMNS)
        .find(|c| *c == column)
        .unwrap_or(DATE_COLUMN)
}

/// Appends one record batch, looking columns up by name (order does not matter).
fn append_batch(
    path: &Path,
    batch: &RecordBatch,
    times: &mut RawTimes,
    values: &mut Vec<[Option<f64>; 5]>,
) -> Result<(), ImportError> {
    let column = |name: &'static str| {
        batch
            .column_by_name(name)
            .ok_or(ImportError::MissingColumn {
                path: path.to_path_buf(),
                column: name,
            })
    };
    let (batch_times, unit) = time_column(path, column(DATE_COLUMN)?.as_ref())?;
    match (times.unit, unit, times.values.is_empty()) {
        (_, _, true) => times.unit = unit,
        (a, b, false) if a != b => {
            return Err(ImportError::Arrow {
                path: path.to_path_buf(),
                message: "record batches disagree on the type of the date column".to_string(),
            })
        }
        _ => {}
    }
    times.values.extend(batch_times);
    let mut columns = Vec::with_capacity(VALUE_COLUMNS.len());
    for name in VALUE_COLUMNS {
        columns.push(float_column(path, name, column(name)?.as_ref())?);
    }
    values.extend((0..batch.num_rows()).map(|i| {
        [
            columns[0][i],
            columns[1][i],
            columns[2][i],
            columns[3][i],
            columns[4][i],
        ]
    }));
    Ok(())
}

/// Raw times of a `date` column and their unit (`None` = infer, for plain integers).
fn time_column(
    path: &Path,
    array: &dyn Array,
) -> Result<(Vec<Option<i64>>, Option<RawTimeUnit>), ImportError> {
    let (raw, unit) = match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => (
            ints::<TimestampSecondType>(array),
            Some(RawTimeUnit::Seconds),
        ),
        DataType::Timestamp(TimeUnit::Millisecond, _) => (
            ints::<TimestampMillisecondType>(array),
            Some(RawTimeUnit::Millis),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => (
            ints::<TimestampMicrosecondType>(array),
            Some(RawTimeUnit::Micros),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => (
            ints::<TimestampNanosecondType>(array),
            Some(RawTimeUnit::Nanos),
        ),
        DataType::Date64 => (
            ints_of(array.as_primitive::<arrow_array::types::Date64Type>()),
            Some(RawTimeUnit::Millis),
        ),
        DataType::Date32 => {
            let days = array.as_primitive::<arrow_array::types::Date32Type>();
            let secs = days
                .iter()
                .map(|d| d.map(|d| i64::from(d) * 86_400))
                .collect();
            (secs, Some(RawTimeUnit::Seconds))
        }
        DataType::Int64 => (ints::<Int64Type>(array), None),
        DataType::Int32 => (ints::<Int32Type>(array), None),
        DataType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>();
            (
                v.iter()
                    .map(|x| x.and_then(|x| i64::try_from(x).ok()))
                    .collect(),
                None,
            )
        }
        DataType::UInt32 => (ints::<UInt32Type>(array), None),
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>();
            let raw = v
                .iter()
                .map(|x| {
                    x.map(f64::floor)
                        .filter(|f| f.is_finite() && f.abs() < 9.0e18)
                        .map(|f| f as i64)
                })
                .collect();
            (raw, None)
        }
        other => {
            return Err(ImportError::ColumnType {
                path: path.to_path_buf(),
                column: DATE_COLUMN,
                data_type: other.to_string(),
            })
        }
    };
    Ok((raw, unit))
}

fn ints<T>(array: &dyn Array) -> Vec<Option<i64>>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    ints_of(array.as_primitive::<T>())
}

fn ints_of<T>(array: &arrow_array::PrimitiveArray<T>) -> Vec<Option<i64>>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    array.iter().map(|v| v.map(Into::into)).collect()
}

/// A price or volume column as floats; integer columns are widened.
fn float_column(
    path: &Path,
    name: &'static str,
    array: &dyn Array,
) -> Result<Vec<Option<f64>>, ImportError> {
    fn widen<T>(array: &dyn Array) -> Vec<Option<f64>>
    where
        T: ArrowPrimitiveType,
        T::Native: Into<f64>,
    {
        array
            .as_primitive::<T>()
            .iter()
            .map(|v| v.map(Into::into))
            .collect()
    }
    Ok(match array.data_type() {
        DataType::Float64 => widen::<Float64Type>(array),
        DataType::Float32 => widen::<Float32Type>(array),
        DataType::Int32 => widen::<Int32Type>(array),
        DataType::Int16 => widen::<Int16Type>(array),
        DataType::Int8 => widen::<Int8Type>(array),
        DataType::UInt32 => widen::<UInt32Type>(array),
        DataType::UInt16 => widen::<UInt16Type>(array),
        DataType::UInt8 => widen::<UInt8Type>(array),
        // 64-bit integers: exact up to 2^53, which covers any price or volume.
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|x| x as f64))
            .collect(),
        DataType::UInt64 => array
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map(|x| x as f64))
            .collect(),
        other => {
            return Err(ImportError::ColumnType {
                path: path.to_path_buf(),
                column: name,
                data_type: other.to_string(),
            })
        }
    })
}
