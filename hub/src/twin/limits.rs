//! Every bound of the twin core in one place, each with where its number comes from.

/// Compact-JSON bytes of one reported patch and of each whole document (desired, reported),
/// `$version` excluded: IoT Hub's 32 KB per section (cloud-reference §A3), measured as edgeHub's
/// `ReportedPropertiesValidator` does, on the compact serialisation.
pub const DOCUMENT_BYTES_MAX: usize = 32 * 1024;

/// Raw bytes of a patch before it is parsed: the largest MQTT publish IoT Hub accepts (256 KiB).
/// A patch within [`DOCUMENT_BYTES_MAX`] compact may be longer pretty-printed, so the compact
/// limit is checked after parsing and this one only bounds the parser's work.
pub const PATCH_TEXT_BYTES_MAX: usize = 256 * 1024;

/// Levels of objects and arrays below a document's root: IoT Hub's "maximum depth of 10" (its
/// example nests ten objects `one`…`ten` under the root, the last holding scalars).
pub const DEPTH_MAX: usize = 10;

/// UTF-8 bytes of a property name: IoT Hub's 1 KB.
pub const KEY_BYTES_MAX: usize = 1024;

/// UTF-8 bytes of a string value: IoT Hub's 4 KB.
pub const STRING_BYTES_MAX: usize = 4096;

/// Integer values IoT Hub stores exactly: [−2^52, 2^52−1].
pub const INTEGER_MIN: i64 = -(1 << 52);
/// See [`INTEGER_MIN`].
pub const INTEGER_MAX: i64 = (1 << 52) - 1;

/// Twins held, served and retired together. A deployment names a few dozen modules and a
/// gateway serves at most a few hundred leaf devices; at [`TWIN_FILE_BYTES_MAX`] each this
/// bounds the twin directory at 100 MiB (4 KiB per twin is typical).
pub const TWINS_MAX: usize = 1024;

/// UTF-8 bytes of a device id and of a module id: IoT Hub's 128 characters (ASCII).
pub const ID_PART_BYTES_MAX: usize = 128;

/// Highest `$version`: the largest integer a JSON reader using doubles (the Node SDK) reads
/// exactly. At 1000 changes a second it lasts 285,000 years; reaching it refuses changes.
pub const VERSION_MAX: u64 = (1 << 53) - 1;

/// Versions reserved by one write of the `versions` file: every version on disk stays below
/// the reserved ceiling, so a twin recreated after its file was damaged starts above any
/// version it ever had. One small write per 1024 changes across all twins.
pub const VERSION_LEASE: u64 = 1024;

/// Bytes of the file of one twin: desired, reported and the desired snapshot last delivered,
/// each at most [`DOCUMENT_BYTES_MAX`], plus the envelope (field names, versions, the identity
/// of at most 2 × [`ID_PART_BYTES_MAX`] + 1 bytes, escaped at most 6 times over, checksum line).
pub const TWIN_FILE_BYTES_MAX: usize = 3 * DOCUMENT_BYTES_MAX + ENVELOPE_BYTES_MAX;

/// Bytes of a twin file beyond its three documents; see [`TWIN_FILE_BYTES_MAX`].
pub const ENVELOPE_BYTES_MAX: usize = 4096;

/// Directory entries looked at on open: every twin file, a damaged copy of each, the leftover
/// temporary files of interrupted writes, and room for strays.
pub const DIR_ENTRIES_MAX: usize = 4 * TWINS_MAX;

const _: () = assert!((2 * ID_PART_BYTES_MAX + 1) * 6 + 512 <= ENVELOPE_BYTES_MAX);
const _: () = assert!(DOCUMENT_BYTES_MAX <= PATCH_TEXT_BYTES_MAX);
const _: () = assert!(VERSION_MAX + VERSION_LEASE < u64::MAX);
const _: () = assert!(STRING_BYTES_MAX < DOCUMENT_BYTES_MAX && KEY_BYTES_MAX < DOCUMENT_BYTES_MAX);
