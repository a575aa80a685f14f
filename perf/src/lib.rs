//! Perf harness for fulcrum (see perf/README.md).
