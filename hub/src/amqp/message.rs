//! AMQP messages to and from the hub's protocol-neutral form: message properties mapped onto
//! the same system and application properties MQTT's property bag carries (so a message from
//! an AMQP module routes to an MQTT module and back unchanged), and the CBS put-token request
//! and its answer. Pure code.

use bytes::Bytes;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp_types::primitives::{Binary, SimpleValue, Symbol, Value};

use crate::message::Properties as HubProperties;

/// The application property that names a module's output (`sendOutputEvent`).
pub const OUTPUT_NAME: &str = "iothub-outputname";
/// The message annotation that names a module input.
pub const INPUT_NAME: &str = "x-opt-input-name";

/// A message decoded from a transfer's bytes.
pub type AmqpMessage = Message<Body<Value>>;

/// Decodes a complete message (all its transfer frames' payloads).
pub fn decode(bytes: &[u8]) -> Result<AmqpMessage, String> {
    serde_amqp::from_slice::<Deserializable<AmqpMessage>>(bytes).map(|d| d.0).map_err(|e| e.to_string())
}

/// Encodes a message for a transfer.
pub fn encode(message: &AmqpMessage) -> Vec<u8> {
    // A message built by the hub from strings, binaries and ints always serializes.
    serde_amqp::to_vec(&Serializable(message)).unwrap_or_default()
}

/// A message id or correlation id as IoT Hub's string form (a UUID as its hyphenated text).
pub fn id_text(id: &MessageId) -> String {
    match id {
        MessageId::String(s) => s.clone(),
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A simple value as the text an MQTT property bag would carry.
pub fn simple_text(value: &SimpleValue) -> Option<String> {
    Some(match value {
        SimpleValue::String(s) => s.clone(),
        SimpleValue::Symbol(s) => s.as_str().to_string(),
        SimpleValue::Bool(b) => b.to_string(),
        SimpleValue::Ubyte(n) => n.to_string(),
        SimpleValue::Ushort(n) => n.to_string(),
        SimpleValue::Uint(n) => n.to_string(),
        SimpleValue::Ulong(n) => n.to_string(),
        SimpleValue::Byte(n) => n.to_string(),
        SimpleValue::Short(n) => n.to_string(),
        SimpleValue::Int(n) => n.to_string(),
        SimpleValue::Long(n) => n.to_string(),
        SimpleValue::Uuid(u) => uuid_text(u.as_inner()),
        SimpleValue::Null => String::new(),
        _ => return None,
    })
}

/// The body bytes: data sections concatenated, or a binary or string amqp-value.
pub fn body_bytes(message: &AmqpMessage) -> Bytes {
    match &message.body {
        Body::Data(batch) => {
            let mut out = Vec::new();
            for data in batch.iter() {
                out.extend_from_slice(&data.0);
            }
            Bytes::from(out)
        }
        Body::Value(AmqpValue(Value::Binary(b))) => Bytes::copy_from_slice(b),
        Body::Value(AmqpValue(Value::String(s))) => Bytes::copy_from_slice(s.as_bytes()),
        _ => Bytes::new(),
    }
}

/// The hub's properties of a telemetry message: `message-id` → `$.mid`, `correlation-id` →
/// `$.cid`, `content-type` → `$.ct`, `content-encoding` → `$.ce`, application property
/// `iothub-outputname` → `$.on`, other application properties as they are (in text form).
pub fn to_hub_properties(message: &AmqpMessage) -> HubProperties {
    let mut out = HubProperties::default();
    if let Some(p) = &message.properties {
        if let Some(id) = &p.message_id {
            out.set_system("$.mid", &id_text(id));
        }
        if let Some(id) = &p.correlation_id {
            out.set_system("$.cid", &id_text(id));
        }
        if let Some(ct) = &p.content_type {
            out.set_system("$.ct", ct.as_str());
        }
        if let Some(ce) = &p.content_encoding {
            out.set_system("$.ce", ce.as_str());
        }
    }
    if let Some(app) = &message.application_properties {
        for (key, value) in app.0.iter() {
            let Some(text) = simple_text(value) else { continue };
            if key == OUTPUT_NAME {
                out.set_system("$.on", &text);
            } else if !key.starts_with("$.") && out.application.iter().all(|(k, _)| k != key) {
                out.application.push((key.clone(), text));
            }
        }
    }
    out
}

/// The AMQP message for a module input or a C2D message: the inverse of
/// [`to_hub_properties`], every other system property as an application property under its
/// wire name (as edgeHub passes `$.cdid`, `$.cmid` on), the input name as `x-opt-input-name`.
pub fn from_hub_properties(bag: &HubProperties, input: Option<&str>, payload: &[u8]) -> AmqpMessage {
    let mut properties = Properties::default();
    let mut app = ApplicationProperties::default();
    for (key, value) in &bag.system {
        match key.as_str() {
            "$.mid" => properties.message_id = Some(MessageId::String(value.clone())),
            "$.cid" => properties.correlation_id = Some(MessageId::String(value.clone())),
            "$.ct" => properties.content_type = Some(Symbol::from(value.as_str())),
            "$.ce" => properties.content_encoding = Some(Symbol::from(value.as_str())),
            _ => {
                app.0.insert(key.clone(), SimpleValue::String(value.clone()));
            }
        }
    }
    for (key, value) in &bag.application {
        app.0.insert(key.clone(), SimpleValue::String(value.clone()));
    }
    let annotations = input.map(|name| {
        let mut a = MessageAnnotations::default();
        a.0.insert(OwnedKey::Symbol(Symbol::from(INPUT_NAME)), Value::String(name.to_string()));
        a
    });
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: annotations,
        properties: Some(properties),
        application_properties: Some(app),
        body: data_body(payload),
        footer: None,
    }
}

/// A message annotation as text (`operation`, `resource` of twin requests).
pub fn annotation_text(message: &AmqpMessage, key: &str) -> Option<String> {
    let annotations = message.message_annotations.as_ref()?;
    let value = annotations.0.get(&OwnedKey::Symbol(Symbol::from(key)))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// An application property as a number (`IoThub-status` of method answers), read from an
/// int or from its text.
pub fn application_int(message: &AmqpMessage, key: &str) -> Option<i32> {
    let value = message.application_properties.as_ref()?.0.get(key)?;
    match value {
        SimpleValue::Int(n) => Some(*n),
        SimpleValue::Long(n) => i32::try_from(*n).ok(),
        SimpleValue::Uint(n) => i32::try_from(*n).ok(),
        SimpleValue::Ulong(n) => i32::try_from(*n).ok(),
        SimpleValue::Short(n) => Some(i32::from(*n)),
        SimpleValue::Ushort(n) => Some(i32::from(*n)),
        other => simple_text(other)?.trim().parse().ok(),
    }
}

/// The correlation id as text, if the message has one.
pub fn correlation_text(message: &AmqpMessage) -> Option<String> {
    message.properties.as_ref()?.correlation_id.as_ref().map(id_text)
}

fn data_body(payload: &[u8]) -> Body<Value> {
    Body::Data(vec![Data(Binary::from(payload.to_vec()))].into())
}

/// A message on the twin receiving link: an answer (correlation id = the request's,
/// annotation `status`, and `version` after a PATCH) or, without correlation id, a desired
/// patch (annotation `version`).
pub fn twin_message(correlation: Option<&str>, status: Option<u16>, version: Option<u64>, body: &[u8]) -> AmqpMessage {
    let mut annotations = MessageAnnotations::default();
    if let Some(status) = status {
        annotations.0.insert(OwnedKey::Symbol(Symbol::from("status")), Value::Int(i32::from(status)));
    }
    if let Some(version) = version {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        annotations.0.insert(OwnedKey::Symbol(Symbol::from("version")), Value::Long(version));
    }
    let properties =
        Properties { correlation_id: correlation.map(|c| MessageId::String(c.to_string())), ..Properties::default() };
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: Some(annotations),
        properties: Some(properties),
        application_properties: None,
        body: data_body(body),
        footer: None,
    }
}

/// A direct-method call: correlation id = the hub's GUID-shaped request id (as edgeHub sends
/// it, a string), application property `IoThub-methodname`, the JSON payload as data.
pub fn method_request(rid: &str, name: &str, payload: &[u8]) -> AmqpMessage {
    let mut app = ApplicationProperties::default();
    app.0.insert(METHOD_NAME.into(), SimpleValue::String(name.to_string()));
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id: Some(MessageId::String(rid.to_string())),
            ..Properties::default()
        }),
        application_properties: Some(app),
        body: data_body(payload),
        footer: None,
    }
}

/// The application property naming the method of a call.
pub const METHOD_NAME: &str = "IoThub-methodname";
/// The application property carrying a method answer's status.
pub const METHOD_STATUS: &str = "IoThub-status";

/// A CBS put-token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutToken {
    pub audience: String,
    pub token: String,
}

/// Reads a CBS request: `Ok` a put-token, `Err` why it is not one (answered 400).
pub fn put_token(message: &AmqpMessage) -> Result<PutToken, String> {
    let app = message.application_properties.as_ref().ok_or("no application properties")?;
    let text = |key: &str| app.0.get(key).and_then(simple_text);
    match text("operation").as_deref() {
        Some("put-token") => {}
        other => return Err(format!("operation {other:?} is not put-token")),
    }
    let audience = text("name").ok_or("no name (audience)")?;
    let token = match &message.body {
        Body::Value(AmqpValue(Value::String(s))) => s.clone(),
        _ => return Err("the body is no string token".into()),
    };
    Ok(PutToken { audience, token })
}

/// The answer to a CBS request: `correlation-id` = the request's `message-id`,
/// `status-code` and `status-description`.
pub fn cbs_reply(request: &AmqpMessage, status: i32, description: &str) -> AmqpMessage {
    let properties = Properties {
        correlation_id: request.properties.as_ref().and_then(|p| p.message_id.clone()),
        ..Properties::default()
    };
    let mut app = ApplicationProperties::default();
    app.0.insert("status-code".into(), SimpleValue::Int(status));
    app.0.insert("status-description".into(), SimpleValue::String(description.to_string()));
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(properties),
        application_properties: Some(app),
        body: Body::Value(AmqpValue(Value::Null)),
        footer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> AmqpMessage {
        let mut app = ApplicationProperties::default();
        app.0.insert(OUTPUT_NAME.into(), SimpleValue::String("out1".into()));
        app.0.insert("temp".into(), SimpleValue::Int(21));
        Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(MessageId::String("m1".into())),
                correlation_id: Some(MessageId::Ulong(7)),
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                ..Properties::default()
            }),
            application_properties: Some(app),
            body: Body::Data(vec![Data(Binary::from(b"{\"a\":1}".to_vec()))].into()),
            footer: None,
        }
    }

    #[test]
    fn telemetry_properties_map_like_mqtt() {
        let decoded = decode(&encode(&telemetry())).unwrap();
        let p = to_hub_properties(&decoded);
        assert_eq!(p.system("$.mid"), Some("m1"));
        assert_eq!(p.system("$.cid"), Some("7"));
        assert_eq!(p.system("$.ct"), Some("application/json"));
        assert_eq!(p.system("$.ce"), Some("utf-8"));
        assert_eq!(p.system("$.on"), Some("out1"));
        assert_eq!(p.application, vec![("temp".to_string(), "21".to_string())]);
        assert_eq!(&body_bytes(&decoded)[..], b"{\"a\":1}");
    }

    #[test]
    fn inputs_carry_the_same_properties_back() {
        let mut bag = HubProperties::parse("%24.mid=m1&%24.ct=text%2Fplain&%24.cdid=gw&k=v").unwrap();
        bag.remove_system("$.on");
        let m = decode(&encode(&from_hub_properties(&bag, Some("in1"), b"hi"))).unwrap();
        let back = to_hub_properties(&m);
        assert_eq!(back.system("$.mid"), Some("m1"));
        assert_eq!(back.system("$.ct"), Some("text/plain"));
        assert!(back.application.contains(&("k".to_string(), "v".to_string())));
        let input = m.message_annotations.as_ref().and_then(|a| a.0.get(&OwnedKey::Symbol(INPUT_NAME.into())));
        assert_eq!(input, Some(&Value::String("in1".into())));
        assert_eq!(&body_bytes(&m)[..], b"hi");
    }

    #[test]
    fn put_token_and_reply() {
        let mut app = ApplicationProperties::default();
        app.0.insert("operation".into(), SimpleValue::String("put-token".into()));
        app.0.insert("name".into(), SimpleValue::String("hub/devices/d".into()));
        let request = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties { message_id: Some(MessageId::String("r1".into())), ..Properties::default() }),
            application_properties: Some(app),
            body: Body::Value(AmqpValue(Value::String("SharedAccessSignature sr=x".into()))),
            footer: None,
        };
        let request = decode(&encode(&request)).unwrap();
        assert_eq!(
            put_token(&request),
            Ok(PutToken { audience: "hub/devices/d".into(), token: "SharedAccessSignature sr=x".into() })
        );
        let reply = decode(&encode(&cbs_reply(&request, 200, "OK"))).unwrap();
        assert_eq!(reply.properties.unwrap().correlation_id, Some(MessageId::String("r1".into())));
        assert!(put_token(&telemetry()).is_err());
    }
}
