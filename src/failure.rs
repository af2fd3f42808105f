//! How a command failed: the one error type of the binary's modules, which decides the exit
//! code.

/// How a command failed; decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad command line (exit 2).
    Usage(String),
    /// Bad config or deployment (exit 2).
    Config(String),
    /// Something failed while running (exit 1).
    Runtime(String),
    /// A deployment was refused: IoT Edge's status code and why (exit 1).
    Rejected(u16, String),
}
