//! Journal version 2 against version 1: round trips, texts that stay
//! strings, escapes inside embedded frames, and the fast path agreeing with
//! serde on every line.

use super::super::journal::{parse_upstream_text_fast, read_header, replay, Header, JournalWriter, Record};
use crate::cli::settings::Settings;
use crate::engine::{ConnId, Input};
use crate::time::Timestamp;

const FRAME: &str = r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"k":{"t":0,"o":"1.0","x":false}}}"#;

fn header(version: u32) -> Header {
    Header { version, ..Header::new(Settings { pins: vec![], ..Settings::default() }, Timestamp(5), false) }
}

/// The record lines (header skipped) a writer of `version` writes for one
/// frame of `text` at now 123 on conn 7.
fn written(version: u32, text: &str) -> String {
    let mut w = JournalWriter::new(Vec::new(), &header(version)).unwrap();
    w.input(Timestamp(123), &Input::UpstreamText { conn: ConnId(7), text: text.into() }).unwrap();
    let all = String::from_utf8(w.into_inner()).unwrap();
    let mut lines = all.lines();
    let head: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(head["version"], version);
    lines.collect::<Vec<_>>().join("\n")
}

fn record(text: &str) -> Record {
    Record {
        now: 123,
        input: Some(Input::UpstreamText { conn: ConnId(7), text: text.into() }),
        timeout: false,
        end: false,
        ..serde_json::from_str(r#"{"now":0}"#).unwrap()
    }
}

/// Both readers (fast path and serde) read `line` as `text`'s record.
fn reads_back(line: &str, text: &str) {
    assert_eq!(parse_upstream_text_fast(line.as_bytes()), Some(record(text)), "fast path: {line}");
    assert_eq!(serde_json::from_str::<Record>(line).unwrap(), record(text), "serde: {line}");
}

#[test]
fn version_2_embeds_a_json_frame_and_reads_it_back_exactly() {
    let line = written(2, FRAME);
    assert_eq!(line, format!(r#"{{"now":123,"input":{{"type":"upstream_text","conn":7,"json":{FRAME}}}}}"#));
    reads_back(&line, FRAME);
}

#[test]
fn version_1_still_writes_and_reads_an_escaped_string() {
    let line = written(1, FRAME);
    assert!(line.contains(r#""text":"{\"stream\""#), "{line}");
    reads_back(&line, FRAME);
}

#[test]
fn headers_of_both_versions_read_and_others_are_refused() {
    for version in [1, 2] {
        let text = serde_json::to_string(&header(version)).unwrap();
        assert_eq!(read_header(&text).unwrap().version, version);
    }
    assert_eq!(Header::new(Settings::default(), Timestamp(1), false).version, 2, "writers write version 2");
    for version in [0, 3] {
        let text = serde_json::to_string(&header(version)).unwrap();
        assert!(read_header(&text).is_err(), "version {version}");
    }
}

#[test]
fn a_text_that_is_not_a_json_object_stays_a_string() {
    for text in [
        "not json",
        "{\"unclosed\":1",
        "{\"a\":1} trailing",
        " {\"a\":1}",
        "{\"a\":1} ",
        "{\"a\":\n1}",
        "[1,2]",
        "123",
        "\"a string\"",
        "",
        "{}{}",
        "{\"a\":\"\\x\"}",
    ] {
        let line = written(2, text);
        assert!(line.contains("\"text\":"), "{text:?} stays a string: {line}");
        assert!(!line.contains("\"json\":"), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record(text), "{text:?}");
        if let Some(fast) = parse_upstream_text_fast(line.as_bytes()) {
            assert_eq!(fast, record(text), "{text:?}");
        }
    }
}

#[test]
fn a_frame_nested_near_the_depth_limit_stays_a_string() {
    let deep = format!("{}{}", "{\"a\":".repeat(127), "}".repeat(127));
    let line = written(2, &deep);
    assert!(line.contains("\"text\":"), "a 127-deep object embedded would not parse as a line");
    let shallow = format!("{}1{}", "{\"a\":".repeat(60), "}".repeat(60));
    let line = written(2, &shallow);
    assert!(line.contains("\"json\":"));
    reads_back(&line, &shallow);
}

#[test]
fn escapes_inside_an_embedded_frame_are_kept_byte_for_byte() {
    for text in [
        r#"{"s":"a\"b\\c\/d\n\t\r\b\f"}"#,
        r#"{"s":"\u00e9\u0041\ud83d\ude00"}"#,
        "{\"s\":\"é😀\"}",
        r#"{"k":{"x":true,"n":null,"f":1.5e-7,"a":[1,{"b":[]}]}}"#,
        "{ \"spaced\" : [ 1 , 2 ]\t}",
        "{\"cr\":1\r}",
        "{}",
    ] {
        let line = written(2, text);
        assert!(line.contains("\"json\":"), "{text:?} is embedded: {line}");
        reads_back(&line, text);
    }
}

#[test]
fn the_fast_path_declines_lines_it_could_misread() {
    // A second member after the embedded object: serde reads `{"a":1}`.
    let line = r#"{"now":123,"input":{"type":"upstream_text","conn":7,"json":{"a":1},"x":{}}}"#;
    assert_eq!(parse_upstream_text_fast(line.as_bytes()), None);
    assert_eq!(serde_json::from_str::<Record>(line).unwrap(), record(r#"{"a":1}"#));
    // Whitespace around the object: serde drops it, so the fast path declines.
    let line = r#"{"now":123,"input":{"type":"upstream_text","conn":7,"json": {"a":1} }}"#;
    assert_eq!(parse_upstream_text_fast(line.as_bytes()), None);
    assert_eq!(serde_json::from_str::<Record>(line).unwrap(), record(r#"{"a":1}"#));
    // Invalid embedded JSON: no fast reading, and serde refuses the line.
    let line = r#"{"now":123,"input":{"type":"upstream_text","conn":7,"json":{"a":}}}"#;
    assert_eq!(parse_upstream_text_fast(line.as_bytes()), None);
    assert!(serde_json::from_str::<Record>(line).is_err());
    // A `json` member on another input type is not a frame.
    let line = r#"{"now":123,"input":{"type":"client_text","client":1,"json":{}}}"#;
    assert!(serde_json::from_str::<Record>(line).is_err());
}

#[test]
fn other_inputs_and_records_read_as_before() {
    for line in [
        r#"{"now":1,"input":{"type":"client_connected","client":3}}"#,
        r#"{"now":2,"input":{"type":"client_text","client":3,"text":"{\"json\":{}}"}}"#,
        r#"{"now":3,"timeout":true}"#,
        r#"{"now":4,"input":null}"#,
        r#"{"now":5,"end":true}"#,
    ] {
        let rec: Record = serde_json::from_str(line).unwrap();
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_value(&rec).unwrap()["now"], value["now"]);
        if let Some(input) = value.get("input").filter(|v| !v.is_null()) {
            assert_eq!(rec.input, Some(serde_json::from_value::<Input>(input.clone()).unwrap()));
        } else {
            assert_eq!(rec.input, None);
        }
    }
}

/// One journal in each version, the same inputs: identical replay output.
#[test]
fn both_versions_replay_to_the_same_bytes() {
    let run = |version: u32| -> (String, String) {
        let settings = Settings { pins: vec!["binance:spot:BTCUSDT:1m".into()], ..Settings::default() };
        let head = Header { version, ..Header::new(settings, Timestamp(1_000_000_000), true) };
        let mut w = JournalWriter::new(Vec::new(), &head).unwrap();
        w.input(Timestamp(2_000_000_000), &Input::ClientConnected { client: crate::engine::ClientId(1) }).unwrap();
        let sub = r#"{"type":"subscribe","series":["binance:spot:BTCUSDT:1m"]}"#;
        w.input(Timestamp(2_000_000_001), &Input::ClientText { client: crate::engine::ClientId(1), text: sub.into() })
            .unwrap();
        for (i, close) in ["1.5", "2.25", "\\u0033"].iter().enumerate() {
            let text = FRAME.replace(r#""o":"1.0""#, &format!(r#""o":"{close}","c":"{close}""#));
            let at = Timestamp(3_000_000_000 + i as u64);
            w.input(at, &Input::UpstreamText { conn: ConnId(1), text }).unwrap();
        }
        w.end(Timestamp(9_000_000_000)).unwrap();
        let journal = w.into_inner();
        let (replayer, _) = replay(&journal[..], Box::new(crate::store::MemoryStore::new()), Vec::new()).unwrap();
        let (_, _, out) = replayer.into_parts();
        (String::from_utf8(journal).unwrap(), String::from_utf8(out).unwrap())
    };
    let (v1, out1) = run(1);
    let (v2, out2) = run(2);
    assert!(v1.contains("\"text\":") && !v1.contains("\"json\":"));
    assert!(v2.contains("\"json\":"));
    assert!(!out1.is_empty());
    assert_eq!(out1, out2);
}

proptest::proptest! {
    /// Any text a writer is given: the line it writes reads back as the same
    /// record by serde, and the fast path reads it the same or declines.
    #[test]
    fn any_text_round_trips_through_both_readers(
        text in r#"\{("[a-z\\"é]{0,6}":("[a-z\\/\\"\\\\ ]{0,6}"|[0-9]{1,3}|\{\}|\[\]|true),?){0,4}\}|.{0,30}|[{}\[\]":,a\\ \t\n]{0,30}"#,
        version in 1u32..=2,
    ) {
        let line = written(version, &text);
        proptest::prop_assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record(&text));
        if let Some(fast) = parse_upstream_text_fast(line.as_bytes()) {
            proptest::prop_assert_eq!(fast, record(&text));
        }
        if version == 2 && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()
            && text.starts_with('{') && text.ends_with('}') && !text.contains('\n')
        {
            proptest::prop_assert!(line.contains("\"json\":"), "{}", line);
            proptest::prop_assert!(parse_upstream_text_fast(line.as_bytes()).is_some());
        }
    }
}
