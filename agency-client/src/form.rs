//! The referral form as a file: reading a referral JSON file with errors
//! that name the field and the expected type but never the value (a value
//! in the wrong field can be a personal identity number), and the form's
//! JSON Schema, generated from the same Rust types that serde reads, so the
//! two cannot drift apart.
//!
//! The schema checks the form's shape (fields, types, names of choices);
//! [`ReferralNotice::validate`] checks the rules beyond it (a personal
//! identity number's checksum, phone numbers, lengths), which
//! `agency-client validate` runs too.

use referral_proto::notice::ReferralNotice;

/// The committed copy of [`schema_text`], which integrators download
/// (`agency-client schema` prints the same).
pub const SCHEMA_FILE: &str = "agency-client/schema/referral.schema.json";

/// A referral file that is not a referral notice: where, and what was
/// expected, never the value found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", where_(.field))]
pub struct FormError {
    /// The field's path, e.g. `subject.personal_identity_number` or
    /// `children[0].age`; None for a file that is not JSON at all.
    pub field: Option<String>,
    pub problem: String,
}

fn where_(field: &Option<String>) -> String {
    match field {
        Some(f) if !f.is_empty() && f != "." => format!("field {f}: "),
        _ => String::new(),
    }
}

/// Parses a referral notice from JSON text (not yet validated: see
/// [`ReferralNotice::validate`]).
pub fn parse(text: &str) -> Result<ReferralNotice, FormError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let notice = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        without_value(e.inner(), Some(path))
    })?;
    de.end().map_err(|e| without_value(&e, None))?;
    Ok(notice)
}

/// serde_json's message with anything it quotes from the input left out.
/// A syntax error quotes nothing but where it is; a data error ("invalid
/// type: string \"19850312-2387\", expected u32") is rewritten to the kind
/// of value found and what was expected.
fn without_value(e: &serde_json::Error, field: Option<String>) -> FormError {
    use serde_json::error::Category;
    let at = if e.line() == 0 { String::new() } else { format!(" at line {} column {}", e.line(), e.column()) };
    let full = e.to_string();
    let message = full.strip_suffix(&at).unwrap_or(&full);
    let problem = match e.classify() {
        Category::Data => referral_proto::text::serde_problem_without_value(message),
        Category::Syntax | Category::Eof | Category::Io => message.to_owned(),
    };
    let field = if matches!(e.classify(), Category::Data) { field } else { None };
    FormError { field, problem: format!("{problem}{at}") }
}

/// The referral form's JSON Schema (draft 2020-12), from the Rust types.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(ReferralNotice);
    schema.insert("$id".into(), "urn:referral-broker:referral-notice:1".into());
    schema.insert(
        "description".into(),
        "A referral notice as agency-client reads it from a file (`send --referral`, `validate`). \
         This schema gives the form's shape; `agency-client validate` also checks the rules beyond it \
         (a personal identity number's checksum, phone numbers, lengths)."
            .into(),
    );
    schema.to_value()
}

/// [`schema`] as the committed file holds it: pretty JSON and a newline.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).expect("a JSON value prints");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const PIN: &str = "19850312-2387";

    fn example() -> Value {
        serde_json::from_str(include_str!("../examples/referral.json")).unwrap()
    }

    fn parsed(v: &Value) -> Result<ReferralNotice, FormError> {
        parse(&serde_json::to_string_pretty(v).unwrap())
    }

    /// The error without its position (`at line L column C`).
    fn problem(v: &Value) -> String {
        let e = parsed(v).unwrap_err().to_string();
        e.split(" at line ").next().unwrap().to_owned()
    }

    /// A value of the wrong type is named by its field and what was
    /// expected; the value itself (here a personal identity number in a
    /// number field, and a number where a string belongs) is never shown.
    #[test]
    fn errors_name_the_field_and_type_never_the_value() {
        let mut v = example();
        v["children"][0]["age"] = json!(PIN);
        assert_eq!(
            parsed(&v).unwrap_err().to_string(),
            "field children[0].age: wrong type: expected u32, found a string (not shown) at line 4 column 28"
        );

        let mut v = example();
        v["subject"]["personal_identity_number"] = json!(198503122387_u64);
        assert_eq!(
            problem(&v),
            "field subject.personal_identity_number: wrong type: expected a string, found an integer (not shown)"
        );
        assert!(!parsed(&v).unwrap_err().to_string().contains("198503122387"));

        let mut v = example();
        v["respond_by"] = json!(PIN);
        assert_eq!(
            problem(&v),
            "field respond_by: invalid value (not shown): expected an RFC 3339 time such as 2026-11-29T08:15:00Z"
        );

        let mut v = example();
        v["urgency"] = json!(PIN);
        assert_eq!(
            problem(&v),
            "field urgency: not one of the choices (value not shown): expected one of `immediate`, `urgent`, `routine`"
        );

        // A quote of ", expected " in the value cannot pass for the expectation.
        let mut v = example();
        v["risk"]["level"] = json!(format!("{PIN}, expected x"));
        let e = parsed(&v).unwrap_err().to_string();
        assert!(!e.contains(PIN) && e.starts_with("field risk.level: not one of the choices"), "{e}");

        let mut v = example();
        v["subject"]["shoe_size"] = json!(PIN);
        let e = parsed(&v).unwrap_err().to_string();
        assert!(e.starts_with("field subject.shoe_size: unknown field `shoe_size`, expected one of `name`"), "{e}");
        assert!(!e.contains(PIN), "{e}");

        let mut v = example();
        v.as_object_mut().unwrap().remove("urgency");
        let e = parsed(&v).unwrap_err().to_string();
        assert!(e.starts_with("missing field `urgency` at line "), "{e}");
    }

    #[test]
    fn syntax_errors_say_where_and_quote_nothing() {
        let e = parse("{\"subject\": {\"name\": \"x\",}").unwrap_err();
        assert_eq!(e.to_string(), "trailing comma at line 1 column 26");
        let e = parse(&format!("{} {PIN}", example())).unwrap_err();
        assert!(e.to_string().starts_with("trailing characters at line 1"), "{e}");
        assert_eq!(e.field, None);
    }

    /// The committed schema is what the code generates: regenerate it with
    /// `agency-client schema > agency-client/schema/referral.schema.json`.
    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let committed = include_str!("../schema/referral.schema.json");
        assert!(committed == schema_text(), "{SCHEMA_FILE} is stale: run `agency-client schema > {SCHEMA_FILE}`");
    }

    fn validator() -> (boon::Schemas, boon::SchemaIndex) {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.enable_format_assertions();
        compiler.add_resource("urn:referral-broker:referral-notice:1", schema()).unwrap();
        let index = compiler.compile("urn:referral-broker:referral-notice:1", &mut schemas).unwrap();
        (schemas, index)
    }

    /// Every example referral in the repository passes the schema (and
    /// serde and the rules).
    #[test]
    fn every_example_referral_validates_against_the_schema() {
        let (schemas, index) = validator();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut examples =
            vec![root.join("agency-client/examples/referral.json"), root.join("fuzz/corpus/notice/referral.json")];
        examples.retain(|p| p.exists());
        assert!(!examples.is_empty());
        for path in &examples {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            if let Err(e) = schemas.validate(&v, index) {
                panic!("{} fails the schema: {e}", path.display());
            }
            parsed(&v).unwrap().validate().unwrap();
        }
        let library = serde_json::to_value(referral_proto::notice::example_notice()).unwrap();
        assert!(schemas.validate(&library, index).is_ok());
    }

    /// The schema and serde agree on what is a referral form: each of these
    /// changes to the example is refused by both, or (the last ones)
    /// accepted by both.
    #[test]
    fn the_schema_refuses_what_serde_refuses() {
        let (schemas, index) = validator();
        type Change = fn(&mut Value);
        let refused: Vec<(&str, Change)> = vec![
            ("number for a string", |v| v["subject"]["personal_identity_number"] = json!(198503122387_u64)),
            ("string for a number", |v| v["children"][0]["age"] = json!("4")),
            ("negative age", |v| v["children"][0]["age"] = json!(-1)),
            ("age beyond u32", |v| v["children"][0]["age"] = json!(1_u64 << 32)),
            ("fractional age", |v| v["children"][0]["age"] = json!(4.5)),
            ("string for a boolean", |v| v["subject"]["protected_identity"] = json!("no")),
            ("unknown urgency", |v| v["urgency"] = json!("whenever")),
            ("unknown channel", |v| v["safe_contact"]["channel"] = json!("pigeon")),
            ("enum in the wrong case", |v| v["legal_basis"]["kind"] = json!("OSL_10_18C")),
            ("unknown support", |v| v["requested_support"] = json!(["contact_within_48h"])),
            ("unknown field", |v| v["subject"]["shoe_size"] = json!(42)),
            ("unknown top-level field", |v| v["extra"] = json!(true)),
            ("missing required field", |v| drop(v.as_object_mut().unwrap().remove("sender_contact"))),
            ("missing nested field", |v| drop(v["sender_contact"].as_object_mut().unwrap().remove("phone"))),
            ("null for a required enum", |v| v["victim_aware"] = json!(null)),
            ("not a time", |v| v["respond_by"] = json!("tomorrow")),
            ("a list for an object", |v| v["risk"] = json!([])),
        ];
        for (what, change) in refused {
            let mut v = example();
            change(&mut v);
            assert!(parsed(&v).is_err(), "serde accepts {what}");
            assert!(schemas.validate(&v, index).is_err(), "the schema accepts {what}");
        }
        let accepted: Vec<(&str, Change)> = vec![
            ("optional fields left out", |v| {
                for f in ["children", "requested_support", "respond_by", "free_text"] {
                    v.as_object_mut().unwrap().remove(f);
                }
            }),
            ("null for an optional time", |v| v["respond_by"] = json!(null)),
            ("renamed choices", |v| {
                v["legal_basis"]["kind"] = json!("osl_10_18c");
                v["risk"]["tool"] = json!("check_10");
            }),
            ("a time with an offset", |v| v["respond_by"] = json!("2026-11-30T09:15:00+01:00")),
        ];
        for (what, change) in accepted {
            let mut v = example();
            change(&mut v);
            assert!(parsed(&v).is_ok(), "serde refuses {what}");
            if let Err(e) = schemas.validate(&v, index) {
                panic!("the schema refuses {what}: {e}");
            }
        }
    }
}
