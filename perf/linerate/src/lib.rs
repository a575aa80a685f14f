//! The line-rate perf harness for fulcrum (see perf/README.md): an AF_XDP
//! generator, an XDP sink, the RFC 2544 search, the peers it compares on
//! the namespace lab, and the report.

pub mod generator;
pub mod peers;
pub mod report;
pub mod search;
pub mod sink;
