//! Integration tests of the `lameduck` binary: one test binary, one module per area.

mod agent;
mod agree;
mod chart;
mod cli;
mod clients;
mod cluster;
mod drain;
mod gate;
mod handoff;
mod hardening;
mod inject;
mod lint;
mod live_pod;
mod observability;
mod plan;
mod protocols;
mod rainbow;
mod rehearse;
mod support;
mod upstream;
