//! Fuzz target `policy_decision`: the value a policy returns (`Decision::from_value`), from
//! JSON. Properties: no panic; an accepted decision written out (`to_json`) is accepted again
//! as the same decision.

use tollgate::policy::decision::Decision;

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = regorus::Value::from_json_str(text) else {
        return;
    };
    if let Ok(decision) = Decision::from_value(&value) {
        let written = decision.to_json().to_string();
        let again = regorus::Value::from_json_str(&written).expect("to_json is JSON");
        assert_eq!(
            Decision::from_value(&again).as_ref(),
            Ok(&decision),
            "{written}"
        );
    }
}
