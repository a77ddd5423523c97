//! Integration tests of the `lameduck` binary: one test binary, one module per area.

mod gate;
mod support;
mod upstream;
