//! Identities: the edge device's key, the module keys derived from it, connection strings.
//!
//! There is no cloud identity service: the edge device holds one symmetric key (configured, or
//! generated on first start and kept in `{data_dir}/device.key`) and every module's key is
//! derived from it, so module keys never need to be stored and survive restarts unchanged.

use std::fs;
use std::io;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::fsutil::{self, Access};

/// Length of generated keys: 256 bits, the size of the keys IoT Hub itself issues.
pub const GENERATED_KEY_BYTES: usize = 32;
/// IoT Hub refuses symmetric keys shorter than 16 bytes once base64-decoded …
pub const KEY_MIN_BYTES: usize = 16;
/// … and longer than 64 bytes; we apply the same bounds so keys stay portable to a real hub.
pub const KEY_MAX_BYTES: usize = 64;
/// File under the data directory that keeps the generated device key, base64 encoded.
pub const DEVICE_KEY_FILE: &str = "device.key";
/// A base64 key of [`KEY_MAX_BYTES`] is 88 characters; anything far larger is not a key file.
const DEVICE_KEY_FILE_MAX_BYTES: u64 = 1024;

const _: () = assert!(KEY_MIN_BYTES <= GENERATED_KEY_BYTES && GENERATED_KEY_BYTES <= KEY_MAX_BYTES);

/// IoT Hub's limit on device and module ids.
pub const ID_MAX_CHARS: usize = 128;
/// Besides ASCII letters and digits, the characters IoT Hub allows in device and module ids.
/// None of them is `/`, `+` or `#`, so an id can sit in an MQTT topic unencoded.
pub const ID_SPECIAL_CHARS: &str = "-.%_*?!(),:=@$'";

/// Checks a device or module id against IoT Hub's rules; the error says which rule failed.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it must not be empty");
    }
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || ID_SPECIAL_CHARS.as_bytes().contains(&byte);
    if !id.bytes().all(allowed) {
        return Err("only ASCII letters, digits and -.%_*?!(),:=@$' are allowed");
    }
    // All bytes are ASCII now, so bytes == characters.
    if id.len() > ID_MAX_CHARS {
        return Err("it is longer than 128 characters");
    }
    Ok(())
}

/// A fresh random key of [`GENERATED_KEY_BYTES`] from the OS generator.
///
/// # Panics
/// If the operating system's random number generator fails, which leaves no safe way to run.
pub fn generate_key() -> Vec<u8> {
    try_generate_key().expect("the operating system's random number generator failed")
}

fn try_generate_key() -> io::Result<Vec<u8>> {
    let mut key = vec![0u8; GENERATED_KEY_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| io::Error::other("the operating system's random number generator failed"))?;
    Ok(key)
}

/// A module's key: HMAC-SHA256 keyed with the device key over the module id's bytes (32 bytes).
pub fn derive_module_key(device_key: &[u8], module_id: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, device_key);
    hmac::sign(&key, module_id.as_bytes()).as_ref().to_vec()
}

/// A name replaced by a keyed hash: HMAC-SHA256 keyed with `key` (a per-device secret), the
/// first 16 bytes in unpadded base64url. Unlike IoT Edge's unsalted SHA-256, a dictionary of
/// common module names cannot reverse it without the key.
pub fn pseudonym(key: &[u8], name: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, name.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
}

/// The SAS resource (audience) of an identity: `{hub}/devices/{d}` or `{hub}/devices/{d}/modules/{m}`.
pub fn sas_resource(iothub_hostname: &str, device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(module_id) => format!("{iothub_hostname}/devices/{device_id}/modules/{module_id}"),
        None => format!("{iothub_hostname}/devices/{device_id}"),
    }
}

/// `HostName=..;DeviceId=..[;ModuleId=..];SharedAccessKey=<base64>;GatewayHostName=..`, the
/// form Azure IoT SDKs accept (e.g. in `EdgeHubConnectionString`).
pub fn connection_string(
    iothub_hostname: &str,
    device_id: &str,
    module_id: Option<&str>,
    key: &[u8],
    gateway_hostname: &str,
) -> String {
    let module_part = module_id.map(|module_id| format!(";ModuleId={module_id}")).unwrap_or_default();
    format!(
        "HostName={iothub_hostname};DeviceId={device_id}{module_part};SharedAccessKey={};GatewayHostName={gateway_hostname}",
        BASE64.encode(key)
    )
}

/// Checks a decoded key against IoT Hub's length bounds; the message says what is wrong.
pub fn check_key_length(key: &[u8]) -> Result<(), String> {
    if (KEY_MIN_BYTES..=KEY_MAX_BYTES).contains(&key.len()) {
        Ok(())
    } else {
        Err(format!("decodes to {} bytes; IoT Hub keys are {KEY_MIN_BYTES} to {KEY_MAX_BYTES} bytes", key.len()))
    }
}

/// Reads `{data_dir}/device.key`, or creates it (and `data_dir`) with a fresh key on first start.
///
/// The file holds the key in base64 with mode 0600 and is written atomically, so a crash during
/// first start leaves either no key or a whole one. An existing file that is not a valid key is
/// an error rather than silently replaced: every module's key derives from it.
pub fn load_or_create_device_key(data_dir: &Path) -> io::Result<Vec<u8>> {
    let path = data_dir.join(DEVICE_KEY_FILE);
    match fsutil::read_bounded(&path, DEVICE_KEY_FILE_MAX_BYTES) {
        Ok(contents) => return parse_key_file(&path, &contents),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(with_path(&path, error)),
    }
    fs::create_dir_all(data_dir).map_err(|error| with_path(data_dir, error))?;
    let key = try_generate_key()?;
    let mut contents = BASE64.encode(&key);
    contents.push('\n');
    fsutil::write_atomic(&path, contents.as_bytes(), Access::OwnerOnly).map_err(|error| with_path(&path, error))?;
    Ok(key)
}

fn parse_key_file(path: &Path, contents: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a valid device key: {reason}; fix or delete it", path.display()),
        )
    };
    // Tolerate the trailing newline an editor adds.
    let text = contents.trim_ascii();
    let key = BASE64.decode(text).map_err(|_| invalid("not standard base64".to_owned()))?;
    check_key_length(&key).map_err(invalid)?;
    Ok(key)
}

/// io errors do not carry the path; ours must, so the user knows which file to look at.
fn with_path(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::testdir::TestDir;

    /// base64 "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=".
    const DEVICE_KEY: &[u8] = b"abcdefghijklmnopqrstuvwxyz123456";

    #[test]
    fn module_key_is_hmac_of_module_id() {
        // python3: base64.b64encode(hmac.new(DEVICE_KEY, b"filter", hashlib.sha256).digest())
        let table = [
            ("filter", "936erhmNHYdoGw7kv2i5jYCYDQYqe4lDhvvnLD/QXGI="),
            ("$edgeHub", "/jqbty8AosGE9dBheT1gojjpV8Uo1UJ2dV+dn5lD0RY="),
        ];
        for (module_id, expected) in table {
            assert_eq!(BASE64.encode(derive_module_key(DEVICE_KEY, module_id)), expected);
        }
    }

    #[test]
    fn module_keys_differ_per_module_and_device() {
        let a = derive_module_key(DEVICE_KEY, "a");
        assert_ne!(a, derive_module_key(DEVICE_KEY, "b"));
        assert_ne!(a, derive_module_key(b"another-device-key-0123456789abc", "a"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn connection_strings_for_modules_and_devices() {
        let key = b"0123456789abcdef";
        assert_eq!(
            connection_string("hub.azure-devices.net", "gw", Some("filter"), key, "gateway.local"),
            "HostName=hub.azure-devices.net;DeviceId=gw;ModuleId=filter;SharedAccessKey=MDEyMzQ1Njc4OWFiY2RlZg==;GatewayHostName=gateway.local"
        );
        assert_eq!(
            connection_string("hub.azure-devices.net", "sensor-7", None, key, "gateway.local"),
            "HostName=hub.azure-devices.net;DeviceId=sensor-7;SharedAccessKey=MDEyMzQ1Njc4OWFiY2RlZg==;GatewayHostName=gateway.local"
        );
    }

    #[test]
    fn sas_resources_for_modules_and_devices() {
        assert_eq!(sas_resource("h", "d", Some("m")), "h/devices/d/modules/m");
        assert_eq!(sas_resource("h", "d", None), "h/devices/d");
    }

    #[test]
    fn generated_keys_are_random_and_full_length() {
        let (a, b) = (generate_key(), generate_key());
        assert_eq!(a.len(), GENERATED_KEY_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn device_key_is_created_once_then_reused() {
        let dir = TestDir::new("identity");
        let data_dir = dir.path().join("nested/data");
        let first = load_or_create_device_key(&data_dir).unwrap();
        let second = load_or_create_device_key(&data_dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), GENERATED_KEY_BYTES);
        let stored = fs::read_to_string(data_dir.join(DEVICE_KEY_FILE)).unwrap();
        assert_eq!(BASE64.decode(stored.trim()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(data_dir.join(DEVICE_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn existing_device_key_file_is_read() {
        let dir = TestDir::new("identity-existing");
        fs::write(dir.path().join(DEVICE_KEY_FILE), "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=\n").unwrap();
        assert_eq!(load_or_create_device_key(dir.path()).unwrap(), DEVICE_KEY);
    }

    #[test]
    fn invalid_device_key_file_is_an_error_naming_the_file() {
        let table = ["not base64!", "", "YWJj", &"QUFB".repeat(30)];
        for contents in table {
            let dir = TestDir::new("identity-invalid");
            let path = dir.path().join(DEVICE_KEY_FILE);
            fs::write(&path, contents).unwrap();
            let error = load_or_create_device_key(dir.path()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{contents:?}");
            assert!(error.to_string().contains(&path.display().to_string()), "{error}");
            // The bad file is left for the operator to inspect, never overwritten.
            assert_eq!(fs::read_to_string(&path).unwrap(), contents);
        }
    }

    #[test]
    fn key_length_bounds_follow_iot_hub() {
        assert!(check_key_length(&[0; KEY_MIN_BYTES]).is_ok());
        assert!(check_key_length(&[0; KEY_MAX_BYTES]).is_ok());
        assert!(check_key_length(&[0; KEY_MIN_BYTES - 1]).is_err());
        assert!(check_key_length(&[0; KEY_MAX_BYTES + 1]).is_err());
    }
}
